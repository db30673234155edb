//! The durable workflow engine.
//!
//! A run is re-executed from the top on every activation against its journal (replay, not
//! suspension). Recorded steps return their recorded result; the first unrecorded wait stores a
//! timer or a wait registration and ends the activation; the first unrecorded effect records
//! its intent durably, calls the channel, and records the result durably.
//!
//! Work is partitioned by contact over a fixed set of worker threads, so runs of one contact
//! never race each other.

use crate::sync::{LockExt as _, RwLockExt as _};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use herald_dsl::{
    build_engine, run_activation, with_host, ActivationEnd, Host, Interrupt, Limits,
    LoadedWorkflow, Reentry, StepCall, Trigger, WaitTarget,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::channels::{Channel, ChannelError, OutboundMessage, OutboxChannel, WebhookChannel};
use crate::clock::Clock;
use crate::config::{ChannelConfig, EngineConfig};
use crate::metrics::Metrics;
use crate::model::{Contact, Event, InboxItem, Intent, Run, RunStatus, Step, StepStatus, WaitReg};
use crate::project::{Project, WorkflowVersion};
use crate::store::{Flusher, Store, StoreError, Timer, TimerTarget};
use crate::templates::Templates;

/// Engine errors.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something the caller asked for does not exist or is not allowed.
    #[error("{0}")]
    Invalid(String),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    Stopped,
    /// A worker job panicked (a bug in Herald); the panic's message.
    #[error("internal error: {0}")]
    Panicked(String),
}

/// What the engine serves right now: swapped as a whole on reload.
pub struct ProjectState {
    /// Current version of each workflow.
    pub workflows: BTreeMap<String, Arc<WorkflowVersion>>,
    /// Templates.
    pub templates: Arc<Templates>,
    /// Channels by name.
    pub channels: BTreeMap<String, Arc<dyn Channel>>,
    /// Channel settings by name.
    pub channel_config: BTreeMap<String, ChannelConfig>,
    /// Segments by name.
    pub segments: BTreeMap<String, Arc<crate::project::SegmentVersion>>,
    /// Scoring settings and rules.
    pub scoring: Option<Arc<herald_dsl::LoadedScoring>>,
    /// Identifies the set of segment definitions (changes when any segment does).
    pub segments_key: u64,
    /// The counts segments make with literal arguments, kept in each contact's behaviour index.
    pub counts: Arc<crate::behaviour::Specs>,
    /// Segments by an event name they read; `None` key: segments that may read any event.
    pub segments_by_event: HashMap<Option<String>, Vec<String>>,
    /// Whether any segment reads memberships (`in_segment`, `contact.segments`).
    pub segments_read_members: bool,
    /// WebAssembly connectors by channel name (for provider webhooks).
    pub plugins: BTreeMap<String, Arc<herald_plugin_host::LoadedPlugin>>,
}

impl ProjectState {
    /// Build channels and state from a loaded project.
    pub fn from_project(
        project: &Project,
        plugins: &crate::channels::PluginLoader,
    ) -> Result<ProjectState, String> {
        let mut channels: BTreeMap<String, Arc<dyn Channel>> = BTreeMap::new();
        let mut loaded_plugins = BTreeMap::new();
        for (name, cfg) in &project.config.channels {
            let ch: Arc<dyn Channel> = match cfg {
                ChannelConfig::Outbox {
                    path, idempotent, ..
                } => Arc::new(OutboxChannel::new(project.dir.join(path), *idempotent)),
                ChannelConfig::Webhook {
                    url, timeout_ms, ..
                } => Arc::new(WebhookChannel::new(
                    url.clone(),
                    std::time::Duration::from_millis(*timeout_ms),
                )),
                ChannelConfig::Plugin { plugin, grant, .. } => {
                    let ch = plugins.load(&project.dir, name, plugin, grant)?;
                    loaded_plugins.insert(name.clone(), ch.plugin.clone());
                    Arc::new(ch)
                }
            };
            channels.insert(name.clone(), ch);
        }
        Ok(ProjectState {
            workflows: project.workflows.clone(),
            templates: project.templates.clone(),
            channels,
            channel_config: project.config.channels.clone(),
            segments: project.segments.clone(),
            segments_key: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for (name, s) in &project.segments {
                    (name, &s.hash).hash(&mut h);
                }
                h.finish()
            },
            counts: Arc::new(crate::behaviour::specs(
                project
                    .segments
                    .values()
                    .flat_map(|s| &s.loaded.deps.counts),
            )),
            segments_by_event: {
                let mut by: HashMap<Option<String>, Vec<String>> = HashMap::new();
                for (name, s) in &project.segments {
                    match &s.loaded.deps.events {
                        Some(events) => {
                            for e in events {
                                by.entry(Some(e.clone())).or_default().push(name.clone());
                            }
                        }
                        None => by.entry(None).or_default().push(name.clone()),
                    }
                }
                by
            },
            segments_read_members: project.segments.values().any(|s| {
                let d = &s.loaded.deps;
                !d.segments.is_empty() || d.reads_any(&["segments"])
            }),
            scoring: project.scoring.clone(),
            plugins: loaded_plugins,
        })
    }
}

pub(crate) enum Job {
    /// Re-evaluate segments and score of a contact (`None`: every segment that may change).
    Audience(String, Option<std::collections::BTreeSet<String>>),
    Inbox(Box<Queued>),
    /// Activate a run or re-evaluate an audience; with the due time of the timer that fired,
    /// if one did.
    Activate(TimerTarget, Option<i64>),
    Start {
        workflow: String,
        contact: String,
        properties: Value,
        reply: mpsc::Sender<Result<String, EngineError>>,
    },
    Resolve {
        run: String,
        step: u32,
        delivered: bool,
        reply: mpsc::Sender<Result<(), EngineError>>,
    },
    Barrier(mpsc::Sender<()>),
}

/// What a worker's current batch of jobs owes the store at its end.
#[derive(Default)]
struct Batch {
    /// Segment entries and exits, by segment, oldest first.
    changes: BTreeMap<String, Vec<crate::model::SegmentChange>>,
    /// Audience states evaluated in the batch (encoded), written after the changes they logged.
    states: HashMap<String, Vec<u8>>,
    /// Inbox records whose events were processed in the batch.
    tickets: Vec<Arc<Ticket>>,
}

thread_local! {
    /// The batch a worker thread is in, if any; other threads write at once.
    static BATCH: std::cell::RefCell<Option<Batch>> = const { std::cell::RefCell::new(None) };
}

fn begin_batch() {
    BATCH.with(|b| *b.borrow_mut() = Some(Batch::default()));
}

/// `f` on this thread's batch, if it is in one.
fn in_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> Option<R> {
    BATCH.with(|b| b.borrow_mut().as_mut().map(f))
}

/// Hand `value` to this thread's batch with `put`; outside a batch it comes back, for the
/// caller to write at once.
fn to_batch<T>(value: T, put: impl FnOnce(&mut Batch, T)) -> Option<T> {
    BATCH.with(|b| match b.borrow_mut().as_mut() {
        Some(b) => {
            put(b, value);
            None
        }
        None => Some(value),
    })
}

/// Log a segment change: with the worker's batch when in one (written at its end, one record
/// per segment), otherwise at once.
pub(crate) fn log_segment_change(
    store: &dyn Store,
    segment: &str,
    change: crate::model::SegmentChange,
) -> Result<(), StoreError> {
    let change = to_batch(change, |b, c| {
        b.changes.entry(segment.to_string()).or_default().push(c)
    });
    match change {
        Some(c) => store.log_segment_change(segment, &c),
        None => Ok(()),
    }
}

/// A contact's audience state as this thread last wrote it: the batch's unwritten copy first,
/// then the store.
pub(crate) fn audience_state(
    store: &dyn Store,
    contact: &str,
) -> Result<Option<crate::model::AudienceState>, StoreError> {
    let pending = in_batch(|b| b.states.get(contact).map(|s| crate::store::dec_audience(s)));
    match pending.flatten() {
        Some(s) => s.map(Some),
        None => store.audience(contact),
    }
}

/// Write a contact's audience state: with the worker's batch when in one (after the batch's
/// segment changes, so a crash never keeps a membership whose change was not logged: the
/// events are processed again and log it), otherwise at once.
pub(crate) fn put_audience_state(
    store: &dyn Store,
    contact: &str,
    state: &crate::model::AudienceState,
) -> Result<(), StoreError> {
    let encoded = to_batch(crate::store::enc_audience(state)?, |b, e| {
        b.states.insert(contact.to_string(), e);
    });
    match encoded {
        Some(e) => store.put_audience_encoded(contact, e),
        None => Ok(()),
    }
}

/// A set of event names; `None` stands for every name.
type EventNames = Option<HashSet<String>>;

/// An accepted event handed to the engine.
pub struct Queued {
    /// What the engine owes.
    pub item: InboxItem,
    /// The event, when the caller has it at hand.
    pub event: Option<Box<Event>>,
    /// The inbox record it belongs to.
    pub ticket: Arc<Ticket>,
}

/// One inbox record: removed once every event in it is processed.
pub struct Ticket {
    key: u64,
    remaining: std::sync::atomic::AtomicUsize,
}

impl Ticket {
    /// A record under `key` holding `events` events.
    pub fn new(key: u64, events: usize) -> Arc<Ticket> {
        Arc::new(Ticket {
            key,
            remaining: std::sync::atomic::AtomicUsize::new(events),
        })
    }
}

/// The shared part of the engine.
pub struct Engine {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Group commit.
    pub flusher: Arc<Flusher>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    pub(crate) rhai: rhai::Engine,
    pub(crate) limits: Limits,
    config: EngineConfig,
    state: RwLock<Arc<ProjectState>>,
    versions: Mutex<HashMap<String, Arc<LoadedWorkflow>>>,
    interest: RwLock<Option<HashSet<String>>>,
    /// Event names some stored workflow version waits for (`wait_for`) and has as a goal;
    /// `None`: any name. Events outside them skip the wait and goal lookups.
    waited: RwLock<(EventNames, EventNames)>,
    workers: Mutex<Vec<mpsc::Sender<Job>>>,
    worker_count: usize,
    inflight: Mutex<HashSet<TimerTarget>>,
    failpoint: Option<String>,
    timer_wake: tokio::sync::Notify,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    me: std::sync::OnceLock<std::sync::Weak<Engine>>,
    plugins: crate::channels::PluginLoader,
    /// Current size of each segment.
    pub(crate) segment_sizes: Mutex<BTreeMap<String, i64>>,
    /// Progress of segment backfills.
    pub backfill: Mutex<crate::audience::BackfillStatus>,
    /// Held while contact records are read and rewritten (ingest's identity resolution and
    /// traits, `update()` steps), so no writer loses another's change.
    pub(crate) contact_lock: Mutex<()>,
    /// The run and segment gauges were counted at start without error, so a clean shutdown
    /// may save them as a checkpoint.
    counted: std::sync::atomic::AtomicBool,
    /// Accepted events the workers still owe (ingest waits at its limit).
    pub backlog: Backlog,
}

/// Accepted events handed to the workers and not processed yet. Ingest waits for room before
/// it accepts a request, so memory holds at most about `limit` queued events (plus the
/// requests in flight); workers and start-up recovery never wait.
pub struct Backlog {
    queued: std::sync::atomic::AtomicUsize,
    limit: usize,
    drained: tokio::sync::Notify,
}

impl Backlog {
    /// A backlog that makes ingest wait at `limit` queued events (at least 1).
    pub fn new(limit: usize) -> Self {
        Backlog {
            queued: std::sync::atomic::AtomicUsize::new(0),
            limit: limit.max(1),
            drained: tokio::sync::Notify::new(),
        }
    }

    /// Events queued and not yet processed.
    pub fn queued(&self) -> usize {
        self.queued.load(std::sync::atomic::Ordering::Acquire)
    }

    fn add(&self, n: usize) {
        self.queued
            .fetch_add(n, std::sync::atomic::Ordering::AcqRel);
    }

    fn done(&self) {
        let before = self
            .queued
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if before == self.limit {
            self.drained.notify_waiters();
        }
    }

    /// Return once fewer than `limit` events are queued.
    pub async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a drain between the check and the wait wakes us.
            drained.as_mut().enable();
            if self.queued() < self.limit {
                return;
            }
            drained.await;
        }
    }
}

thread_local! {
    /// The index of the worker running on this thread, if it is one.
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the worker running on this thread, if it is one.
pub(crate) fn current_worker() -> Option<usize> {
    WORKER.with(|w| w.get())
}

pub(crate) fn shard_of(contact: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in contact.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % n as u64) as usize
}

/// Build the Rhai engine the daemon uses, with limits from `[engine]`.
pub fn limits_from(config: &EngineConfig) -> Limits {
    Limits {
        max_operations: config.max_operations,
        activation_deadline: std::time::Duration::from_millis(config.activation_deadline_ms),
        ..Limits::default()
    }
}

impl Engine {
    /// Create the engine and start its workers. Queued events and runs left `running` by a
    /// crash are picked up again.
    pub fn start(
        store: Arc<dyn Store>,
        flusher: Arc<Flusher>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        project: &Project,
        plugins: crate::channels::PluginLoader,
    ) -> Result<Arc<Engine>, EngineError> {
        let initial =
            ProjectState::from_project(project, &plugins).map_err(EngineError::Invalid)?;
        let config = project.config.engine.clone();
        let limits = limits_from(&config);
        let worker_count = config.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2)
        });
        let backlog = Backlog::new(config.max_backlog);
        let engine = Arc::new(Engine {
            store,
            flusher,
            clock,
            metrics,
            rhai: build_engine(&limits),
            limits,
            config,
            state: RwLock::new(Arc::new(initial)),
            plugins,
            versions: Mutex::new(HashMap::new()),
            interest: RwLock::new(None),
            waited: RwLock::new((None, None)),
            workers: Mutex::new(Vec::new()),
            worker_count,
            inflight: Mutex::new(HashSet::new()),
            failpoint: std::env::var("HERALD_FAILPOINT")
                .ok()
                .filter(|s| !s.is_empty()),
            timer_wake: tokio::sync::Notify::new(),
            threads: Mutex::new(Vec::new()),
            me: std::sync::OnceLock::new(),
            segment_sizes: Mutex::new(BTreeMap::new()),
            backfill: Mutex::new(Default::default()),
            contact_lock: Mutex::new(()),
            counted: std::sync::atomic::AtomicBool::new(false),
            backlog,
        });
        let _ = engine.me.set(Arc::downgrade(&engine));
        engine.store_versions()?;
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..worker_count {
            let (tx, rx) = mpsc::channel::<Job>();
            senders.push(tx);
            let e = engine.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("herald-worker-{i}"))
                    .spawn(move || {
                        WORKER.with(|w| w.set(Some(i)));
                        e.worker(rx)
                    })
                    .expect("spawn worker"),
            );
        }
        *engine.workers.locked() = senders;
        *engine.threads.locked() = threads;
        // Count before anything can change what is counted: no job is queued yet, the server
        // is not listening and no timer has fired. (After a clean shutdown this reads the
        // checkpoint; after a crash it scans, so that restart takes longer.)
        match engine.count_runs().and_then(|_| engine.count_segments()) {
            Ok(()) => engine
                .counted
                .store(true, std::sync::atomic::Ordering::Release),
            Err(e) => tracing::error!(error = %e, "counting runs and segment members failed"),
        }
        engine.recover()?;
        engine.start_backfill();
        Ok(engine)
    }

    /// How many workers share the contacts.
    pub(crate) fn worker_count(&self) -> usize {
        self.worker_count
    }

    /// The Rhai engine (shared with `herald check`).
    pub fn rhai(&self) -> &rhai::Engine {
        &self.rhai
    }

    /// What is being served.
    pub fn state(&self) -> Arc<ProjectState> {
        self.state.read_locked().clone()
    }

    fn store_versions(&self) -> Result<(), EngineError> {
        let state = self.state();
        let now = self.clock.now_ms();
        let mut versions = self.versions.locked();
        for wf in state.workflows.values() {
            self.store.put_script(&crate::model::ScriptVersion {
                hash: wf.hash.clone(),
                workflow: wf.loaded.decl.name.clone(),
                path: wf.path.clone(),
                source: wf.source.clone(),
                stored_at: now,
            })?;
            versions.insert(wf.hash.clone(), Arc::new(wf.loaded.clone()));
        }
        drop(versions);
        self.flusher
            .commit_blocking()
            .map_err(EngineError::Invalid)?;
        self.compute_interest()
    }

    /// Which event names can matter to any stored script version (its triggers, goal and
    /// waits). Events of other names are stored but skip the engine entirely.
    fn compute_interest(&self) -> Result<(), EngineError> {
        let mut names = HashSet::new();
        let mut all = false;
        let mut waited = Some(HashSet::new());
        let mut goals = HashSet::new();
        for v in self.store.scripts()? {
            match self.version(&v.hash) {
                Ok(w) => {
                    match w.interesting_events() {
                        Some(n) => names.extend(n),
                        None => all = true,
                    }
                    match (&mut waited, &w.waited_events) {
                        (Some(set), Some(n)) => set.extend(n.iter().cloned()),
                        _ => waited = None,
                    }
                    if let Some(g) = &w.decl.goal {
                        goals.insert(g.event.clone());
                    }
                }
                Err(_) => {
                    all = true;
                    waited = None;
                }
            }
        }
        *self.waited.write_locked() = (waited, Some(goals));
        match self.state().audience_interest() {
            Some(n) => names.extend(n),
            None => all = true,
        }
        *self.interest.write_locked() = (!all).then_some(names);
        Ok(())
    }

    /// Does an event of this name need the engine (a trigger, goal or wait may use it)?
    pub fn is_interesting(&self, event: &str) -> bool {
        match &*self.interest.read_locked() {
            None => true,
            Some(names) => names.contains(event),
        }
    }

    /// Serve a newly loaded project. Runs in flight keep their pinned versions.
    pub fn swap_project(&self, project: &Project) -> Result<Vec<String>, EngineError> {
        let old = self.state();
        let new = Arc::new(
            ProjectState::from_project(project, &self.plugins).map_err(EngineError::Invalid)?,
        );
        let mut changed = Vec::new();
        for (name, wf) in &new.workflows {
            if old.workflows.get(name).map(|o| &o.hash) != Some(&wf.hash) {
                changed.push(name.clone());
            }
        }
        for name in old.workflows.keys() {
            if !new.workflows.contains_key(name) {
                changed.push(name.clone());
            }
        }
        for (name, seg) in &new.segments {
            if old.segments.get(name).map(|o| &o.hash) != Some(&seg.hash) {
                changed.push(format!("segment:{name}"));
            }
        }
        *self.state.write_locked() = new;
        self.store_versions()?;
        if let Some(me) = self.me.get().and_then(|w| w.upgrade()) {
            // Sizes of segments new to this process come from their change logs (a segment
            // defined before, removed and added again); counted before the backfill starts.
            if let Err(e) = me.count_new_segments() {
                tracing::error!(error = %e, "counting segment members failed");
            }
            me.start_backfill();
        }
        Ok(changed)
    }

    fn version(&self, hash: &str) -> Result<Arc<LoadedWorkflow>, String> {
        if let Some(v) = self.versions.locked().get(hash) {
            return Ok(v.clone());
        }
        let stored = self
            .store
            .script(hash)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("script version {hash} is not stored"))?;
        let loaded =
            herald_dsl::load_workflow(&self.rhai, &stored.path, &stored.source).map_err(|d| {
                format!(
                    "script version {hash} no longer compiles: {}",
                    d.first().map(|d| d.message.clone()).unwrap_or_default()
                )
            })?;
        let loaded = Arc::new(loaded);
        self.versions
            .locked()
            .insert(hash.to_string(), loaded.clone());
        Ok(loaded)
    }

    pub(crate) fn send_job(&self, contact: &str, job: Job) -> Result<(), EngineError> {
        let workers = self.workers.locked();
        if workers.is_empty() {
            return Err(EngineError::Stopped);
        }
        workers[shard_of(contact, self.worker_count)]
            .send(job)
            .map_err(|_| EngineError::Stopped)
    }

    /// Hand accepted events to the workers (after they are durable).
    /// `Queued::event` carries the event itself when the caller has it, saving a read.
    pub fn submit_events(&self, items: Vec<Queued>) {
        for q in items {
            let contact = q.item.contact.clone();
            let seq = q.item.event_seq;
            self.backlog.add(1);
            if self.send_job(&contact, Job::Inbox(Box::new(q))).is_err() {
                self.backlog.done();
                tracing::warn!(seq, "engine stopped; event stays queued for the next start");
            }
        }
    }

    /// Start a workflow for a contact through the API; returns the run id once it is durable.
    pub fn start_manual(
        &self,
        workflow: &str,
        contact: &str,
        properties: Value,
    ) -> Result<String, EngineError> {
        let (tx, rx) = mpsc::channel();
        self.send_job(
            contact,
            Job::Start {
                workflow: workflow.into(),
                contact: contact.into(),
                properties,
                reply: tx,
            },
        )?;
        rx.recv().map_err(|_| EngineError::Stopped)?
    }

    /// Settle an ambiguous effect: `delivered` records it as done; otherwise it is sent again.
    pub fn resolve_step(&self, run: &Run, step: u32, delivered: bool) -> Result<(), EngineError> {
        let (tx, rx) = mpsc::channel();
        self.send_job(
            &run.contact,
            Job::Resolve {
                run: run.id.clone(),
                step,
                delivered,
                reply: tx,
            },
        )?;
        rx.recv().map_err(|_| EngineError::Stopped)?
    }

    /// Wait until every worker has finished what was queued before this call.
    pub fn barrier(&self) {
        let receivers: Vec<_> = {
            let workers = self.workers.locked();
            workers
                .iter()
                .filter_map(|w| {
                    let (tx, rx) = mpsc::channel();
                    w.send(Job::Barrier(tx)).ok().map(|_| rx)
                })
                .collect()
        };
        for rx in receivers {
            let _ = rx.recv();
        }
    }

    /// Wake the timer loop (after the clock moved).
    pub fn poke_timers(&self) {
        self.timer_wake.notify_one();
    }

    /// Dispatch due timers until `stop` resolves.
    pub async fn timer_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.dispatch_due() {
                tracing::error!(error = %e, "timer scan failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                _ = self.timer_wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Dispatch every due timer once; returns how many were dispatched.
    pub fn dispatch_due(&self) -> Result<usize, EngineError> {
        let now = self.clock.now_ms();
        let mut n = 0;
        loop {
            let due = self.store.due_timers(now, 1024)?;
            let mut fresh = 0;
            for t in &due {
                if self.inflight.locked().insert(t.target.clone()) {
                    fresh += 1;
                    if self
                        .send_job(&t.contact, Job::Activate(t.target.clone(), Some(t.due)))
                        .is_err()
                    {
                        self.inflight.locked().remove(&t.target);
                        return Ok(n);
                    }
                }
            }
            n += fresh;
            if due.len() < 1024 || fresh == 0 {
                return Ok(n);
            }
        }
    }

    /// Re-queue what a crash left behind: queued events, and runs caught mid-activation.
    fn recover(&self) -> Result<(), EngineError> {
        let inbox = self.store.inbox()?;
        if !inbox.is_empty() {
            tracing::info!(count = inbox.len(), "re-queueing accepted events");
        }
        for (key, items) in inbox {
            let ticket = Ticket::new(key, items.len());
            self.submit_events(
                items
                    .into_iter()
                    .map(|item| Queued {
                        item,
                        event: None,
                        ticket: ticket.clone(),
                    })
                    .collect(),
            );
        }
        for (key, intent) in self.store.intents()? {
            tracing::warn!(
                key,
                run = intent.run,
                step = intent.step,
                channel = intent.channel,
                "effect in the ambiguous window at start-up"
            );
            if let Some(run) = self.store.run(&intent.run)? {
                self.send_job(&run.contact, Job::Activate(TimerTarget::Run(run.id), None))?;
            }
        }
        Ok(())
    }

    /// Count stored runs by status for the metrics gauges (at start, before any work), and
    /// resume runs a crash left running. After a clean shutdown no run is running and the
    /// counts come from its checkpoint, so nothing is scanned.
    pub(crate) fn count_runs(&self) -> Result<(), EngineError> {
        if let Some(saved) = self.store.take_checkpointed_runs() {
            if saved.get(RunStatus::Running.as_str()).copied().unwrap_or(0) == 0 {
                let counts = RunStatus::ALL
                    .into_iter()
                    .filter_map(|s| saved.get(s.as_str()).map(|n| (s.as_str(), *n)))
                    .collect();
                self.metrics.set_run_counts(counts);
                tracing::info!(
                    "run, contact and timer counts restored from the shutdown checkpoint"
                );
                return Ok(());
            }
        }
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut running = Vec::new();
        self.store.scan_runs(&mut |r| {
            *counts.entry(r.status.as_str()).or_default() += 1;
            if r.status == RunStatus::Running {
                running.push((r.id.clone(), r.contact.clone()));
            }
            true
        })?;
        self.metrics.set_run_counts(counts);
        for (id, contact) in running {
            let _ = self.send_job(&contact, Job::Activate(TimerTarget::Run(id), None));
        }
        Ok(())
    }

    /// Stop the workers after they finish what is queued, and flush.
    pub fn shutdown(&self) {
        self.workers.locked().clear();
        let threads = std::mem::take(&mut *self.threads.locked());
        for t in threads {
            let _ = t.join();
        }
        let _ = self.flusher.commit_blocking();
        // After a panic the in-memory counts may have missed a change; the next start counts
        // from the data instead of trusting them.
        if self.metrics.worker_panics() > 0 {
            tracing::warn!("a worker job panicked in this process: no shutdown checkpoint, the next start counts");
        } else if self.counted.load(std::sync::atomic::Ordering::Acquire) {
            let sizes = self.segment_sizes.locked().clone();
            if let Err(e) = self
                .store
                .save_checkpoint(&self.metrics.run_counts(), &sizes)
            {
                tracing::warn!(error = %e, "saving the shutdown checkpoint failed; the next start counts instead");
            }
        }
    }

    fn failpoint(&self, name: &str) {
        if self.failpoint.as_deref() == Some(name) {
            tracing::warn!(failpoint = name, "failpoint reached: killing the process");
            // SAFETY: kill(2) on our own pid with SIGKILL has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    fn worker(self: Arc<Self>, rx: mpsc::Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            let mut batch = vec![job];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let mut barriers = Vec::new();
            begin_batch();
            for job in batch {
                match job {
                    Job::Barrier(tx) => barriers.push(tx),
                    other => self.handle(other),
                }
            }
            self.end_batch();
            // What a batch wrote becomes durable with the next group commit; the worker only
            // waits for it when someone asked (a barrier). Effects on the outside world wait
            // for their own intent to be durable, and accepted events stay in the inbox until
            // processed, so nothing depends on this flush finishing before the next batch.
            if barriers.is_empty() {
                self.flusher.request_flush();
            } else if let Err(e) = self.flusher.commit_blocking() {
                tracing::error!(error = %e, "flush failed");
            }
            for b in barriers {
                let _ = b.send(());
            }
        }
    }

    /// Runs `f`, catching a panic (a bug in Herald): it is logged with `what` (built only
    /// then), counted in `herald_worker_panics_total`, and returned as its message, so one bad
    /// job never takes a worker, and with it every contact hashed to that worker, down.
    fn guard<T>(&self, what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Result<T, String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            tracing::error!(
                job = what(),
                panic = message,
                "a worker job panicked; the worker goes on"
            );
            self.metrics.worker_panic();
            message
        })
    }

    fn handle(&self, job: Job) {
        match job {
            Job::Inbox(q) => {
                let seq = q.item.event_seq;
                let done = self.guard(
                    || format!("event {seq} (it stays queued for the next start)"),
                    || {
                        #[cfg(test)]
                        if q.event
                            .as_ref()
                            .is_some_and(|e| e.event == tests::PANIC_EVENT)
                        {
                            panic!("injected by a test");
                        }
                        self.process_event(*q)
                    },
                );
                if let Ok(Err(e)) = done {
                    tracing::error!(seq, error = %e, "processing event failed; it stays queued");
                }
                self.backlog.done();
            }
            Job::Activate(target, fired) => {
                let done = self.guard(
                    || format!("activation of {target}"),
                    || match &target {
                        TimerTarget::Audience(contact) => self.audience_timer(contact, fired),
                        TimerTarget::Run(run) => self.activate_fired(run, fired),
                    },
                );
                let failure = match done {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => {
                        tracing::error!(%target, error = %e, "activation failed; it is retried");
                        Some(Err(e.to_string()))
                    }
                    Err(panic) => Some(Ok(panic)),
                };
                if let Some(failure) = failure {
                    if let Err(e) = self.after_failed_activation(&target, failure) {
                        tracing::error!(%target, error = %e, "could not schedule the retry of a failed activation");
                    }
                }
                self.inflight.locked().remove(&target);
            }
            Job::Audience(contact, only) => {
                let done = self.guard(
                    || format!("audience of {contact}"),
                    || self.evaluate_audience(&contact, None, only.as_ref()),
                );
                if let Ok(Err(e)) = done {
                    tracing::error!(contact, error = %e, "audience evaluation failed");
                }
            }
            Job::Start {
                workflow,
                contact,
                properties,
                reply,
            } => {
                let result = self
                    .guard(
                        || format!("start of {workflow} for {contact}"),
                        || {
                            #[cfg(test)]
                            if workflow == tests::PANIC_EVENT {
                                panic!("injected by a test");
                            }
                            self.start_manual_inner(&workflow, &contact, properties)
                        },
                    )
                    .map_err(EngineError::Panicked)
                    .and_then(|r| r.map_err(EngineError::Invalid));
                let _ = reply.send(result);
            }
            Job::Resolve {
                run,
                step,
                delivered,
                reply,
            } => {
                let result = self
                    .guard(
                        || format!("step {step} of run {run}"),
                        || self.resolve_inner(&run, step, delivered),
                    )
                    .map_err(EngineError::Panicked)
                    .and_then(|r| r.map_err(EngineError::Invalid));
                let _ = reply.send(result);
            }
            Job::Barrier(tx) => {
                let _ = tx.send(());
            }
        }
    }

    /// An activation ended in an error (`Err`: its message) or a panic (`Ok`: its message)
    /// after its timer was taken: without a new timer, nothing would ever wake it again.
    /// A run that panicked is parked with the panic as its reason (retrying a bug only repeats
    /// it; parked runs are visible in the API and the metrics); after an error (storage, most
    /// likely) it is retried later. An audience re-evaluation is retried either way.
    fn after_failed_activation(
        &self,
        target: &TimerTarget,
        failure: Result<String, String>,
    ) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        let id = match target {
            TimerTarget::Run(run) => run.as_str(),
            TimerTarget::Audience(contact) => {
                let Some(mut st) = audience_state(self.store.as_ref(), contact)? else {
                    return Ok(());
                };
                if st.wake_at.is_none() {
                    let due = now + self.backoff(4);
                    self.store.set_timer(&Timer {
                        due,
                        target: target.clone(),
                        contact: contact.to_string(),
                    })?;
                    st.wake_at = Some(due);
                    put_audience_state(self.store.as_ref(), contact, &st)?;
                    crate::audience::forget_cached_state(contact);
                }
                return Ok(());
            }
        };
        let Some(mut run) = self.store.run(id)? else {
            return Ok(());
        };
        if run.status.is_terminal() {
            return Ok(());
        }
        let from = run.status;
        if let Some(t) = run.wake_at.take() {
            self.store
                .clear_timer(t, &TimerTarget::Run(run.id.clone()))?;
        }
        match failure {
            Ok(panic) => {
                let reason = format!("internal error: the activation panicked: {panic}");
                self.finish(&mut run, from, RunStatus::Parked, Some(reason), None)
            }
            Err(error) => {
                run.failed_activations += 1;
                if run.failed_activations >= crate::model::MAX_FAILED_ACTIVATIONS {
                    let reason = format!(
                        "internal error: {} activations in a row failed; the last: {error}",
                        run.failed_activations
                    );
                    return self.finish(&mut run, from, RunStatus::Parked, Some(reason), None);
                }
                let due = now + self.backoff(run.failed_activations + 2);
                self.set_run_timer(&mut run, due)?;
                run.updated_at = now;
                self.store.put_run(&run)?;
                Ok(())
            }
        }
    }

    pub(crate) fn live_contact(&self, id: &str) -> Result<Option<Contact>, StoreError> {
        let mut id = id.to_string();
        for _ in 0..16 {
            match self.store.contact(&id)? {
                Some(c) => match &c.merged_into {
                    Some(next) => id = next.clone(),
                    None => return Ok(Some(c)),
                },
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Process one accepted event; once every event of its inbox record is processed, the
    /// record goes. An error leaves the record, so the event is processed again at start-up
    /// (processing is idempotent: run ids are deterministic, the behaviour index is keyed by
    /// event, and scoring remembers the events it scored).
    fn process_event(&self, q: Queued) -> Result<(), EngineError> {
        if let Err(e) = self.process_event_inner(&q.item, q.event) {
            // Only this event stays queued (in a record of its own); the rest of its request's
            // record can go when they are done.
            let key = self.store.next_id()?;
            self.store.push_inbox(key, std::slice::from_ref(&q.item))?;
            self.complete(&q.ticket)?;
            return Err(e);
        }
        if self.failpoint.is_some() {
            // Make what processing wrote durable, then die before the inbox record goes.
            self.write_batch()?;
            let _ = self.flusher.commit_blocking();
            self.failpoint("after_event");
        }
        self.complete(&q.ticket)
    }

    /// Write what a worker's batch owes so far (the batch goes on): its segment changes, one
    /// record per segment, then the audience states that follow from them. sled recovers a
    /// prefix of its log, so a crash keeps a state only with the changes logged before it.
    pub(crate) fn write_batch(&self) -> Result<(), EngineError> {
        let (changes, states) = in_batch(|b| {
            (
                std::mem::take(&mut b.changes),
                std::mem::take(&mut b.states),
            )
        })
        .unwrap_or_default();
        for (segment, changes) in changes {
            self.store.log_segment_changes(&segment, &changes)?;
        }
        for (contact, state) in states {
            self.store.put_audience_encoded(&contact, state)?;
        }
        Ok(())
    }

    /// End a worker's batch: its changes and states are written, then the inbox records of its
    /// events may go, in that order. If a write fails, the records stay (the events are
    /// processed again at the next start, from the states last written) and the worker's
    /// cached states, which may be ahead of the store, are dropped.
    fn end_batch(&self) {
        let written = self.write_batch();
        let batch = BATCH.with(|b| b.borrow_mut().take());
        if let Err(e) = written {
            tracing::error!(error = %e, "writing a batch's segment changes and audience states failed; its events stay queued");
            crate::audience::forget_cached_states();
            return;
        }
        for t in batch.map(|b| b.tickets).unwrap_or_default() {
            if let Err(e) = self.complete_now(&t) {
                tracing::error!(error = %e, "removing a processed inbox record failed; its events are processed again at the next start");
            }
        }
    }

    /// One event of an inbox record is done; the last one removes the record (inside a
    /// worker's batch: when the batch ends).
    fn complete(&self, ticket: &Arc<Ticket>) -> Result<(), EngineError> {
        match to_batch(ticket.clone(), |b, t| b.tickets.push(t)) {
            Some(t) => self.complete_now(&t),
            None => Ok(()),
        }
    }

    fn complete_now(&self, ticket: &Ticket) -> Result<(), EngineError> {
        if ticket
            .remaining
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.store.remove_inbox(ticket.key)?;
        }
        Ok(())
    }

    fn process_event_inner(
        &self,
        item: &InboxItem,
        event: Option<Box<Event>>,
    ) -> Result<(), EngineError> {
        let Some(contact) = self.live_contact(&item.contact)? else {
            return Ok(());
        };
        let event = match event {
            Some(e) => *e,
            None => match self.store.event(&contact.id, item.event_seq)? {
                Some(e) => e,
                None => match self.store.event(&item.contact, item.event_seq)? {
                    Some(e) => e,
                    None => return Ok(()),
                },
            },
        };
        let (waited, goal) = {
            let w = self.waited.read_locked();
            (
                w.0.as_ref().is_none_or(|n| n.contains(&event.event)),
                w.1.as_ref().is_none_or(|n| n.contains(&event.event)),
            )
        };
        // 1. Runs waiting for this event.
        let waits = if waited {
            self.store.waits(&contact.id, &event.event)?
        } else {
            Vec::new()
        };
        for w in waits {
            if herald_dsl::decl::matches_filter(&w.filter, &event.properties) {
                self.resolve_wait(&contact, &w, &event)?;
            }
        }
        // 2. Goals of runs in flight.
        let runs = if goal {
            self.store.runs_of_contact(&contact.id)?
        } else {
            Vec::new()
        };
        for run in runs {
            if run.status.is_terminal() {
                continue;
            }
            let Ok(wf) = self.version(&run.script_hash) else {
                continue;
            };
            if let Some(goal) = &wf.decl.goal {
                if goal.event == event.event
                    && event.timestamp.max(event.received_at) - run.created_at <= goal.window_ms
                {
                    self.convert(run)?;
                }
            }
        }
        // 3. Triggers.
        let state = self.state();
        for wf in state.workflows.values() {
            if wf.loaded.decl.triggered_by(&event.event, &event.properties) {
                let run_id = format!("{}-{:016x}", wf.loaded.decl.name, event.seq);
                self.start_run(wf, &contact, event.script_value(), run_id, true)?;
            }
        }
        // 4. Score and segments.
        self.evaluate_audience_of(contact, Some(&event), None)?;
        Ok(())
    }

    fn resolve_wait(
        &self,
        contact: &Contact,
        w: &WaitReg,
        event: &Event,
    ) -> Result<(), EngineError> {
        let journal = self.store.journal(&w.run)?;
        if let Some(step) = journal.get(w.step as usize) {
            if step.status == StepStatus::Pending && step.kind == "wait_for" {
                let mut step = step.clone();
                step.status = StepStatus::Done;
                step.result = event.script_value();
                step.contact = Some(self.snapshot_of(contact));
                step.finished_at = Some(self.clock.now_ms());
                self.store.put_step(&w.run, &step)?;
            }
        }
        self.store.remove_wait(&contact.id, &event.event, &w.run)?;
        self.activate(&w.run)
    }

    fn convert(&self, mut run: Run) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        self.cancel_pending(&mut run)?;
        let from = run.status;
        run.status = RunStatus::Converted;
        run.converted_at = Some(now);
        run.updated_at = now;
        self.store.put_run(&run)?;
        self.metrics.run_status(Some(from), RunStatus::Converted);
        self.metrics.conversion(&run.workflow);
        tracing::debug!(run = run.id, workflow = run.workflow, "goal reached");
        Ok(())
    }

    /// Drop the timer and wait registration of a run that will not be activated again.
    fn cancel_pending(&self, run: &mut Run) -> Result<(), EngineError> {
        if let Some(t) = run.wake_at.take() {
            self.store
                .clear_timer(t, &TimerTarget::Run(run.id.clone()))?;
        }
        if let Some(last) = self.store.journal(&run.id)?.last() {
            if last.kind == "wait_for" && last.status == StepStatus::Pending {
                self.store.remove_wait(&run.contact, &last.name, &run.id)?;
            }
        }
        Ok(())
    }

    fn start_manual_inner(
        &self,
        workflow: &str,
        contact: &str,
        properties: Value,
    ) -> Result<String, String> {
        let state = self.state();
        let wf = state
            .workflows
            .get(workflow)
            .ok_or_else(|| format!("no workflow named \"{workflow}\""))?;
        let decl = &wf.loaded.decl;
        if !decl.triggers.is_empty() && !decl.triggers.contains(&Trigger::Manual) {
            return Err(format!(
                "workflow \"{workflow}\" has no manual trigger: add `.manual()` to its declaration"
            ));
        }
        let c = self
            .live_contact(contact)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no contact \"{contact}\""))?;
        let id = format!(
            "{}-m{:014x}",
            workflow,
            self.store.next_id().map_err(|e| e.to_string())?
        );
        let trigger = json!({"type": "manual", "event": "manual", "properties": properties, "timestamp": self.clock.now_ms()});
        self.start_run(wf, &c, trigger, id.clone(), false)
            .map_err(|e| e.to_string())?;
        self.flusher.commit_blocking()?;
        Ok(id)
    }

    pub(crate) fn start_run(
        &self,
        wf: &WorkflowVersion,
        contact: &Contact,
        trigger: Value,
        run_id: String,
        check_reentry: bool,
    ) -> Result<bool, EngineError> {
        let view = self.snapshot_of(contact);
        self.start_run_with_view(wf, contact, view, trigger, run_id, check_reentry)
    }

    /// [`start_run`](Self::start_run) with the contact's view given (`start_contact`).
    pub(crate) fn start_run_with_view(
        &self,
        wf: &WorkflowVersion,
        contact: &Contact,
        view: Value,
        trigger: Value,
        run_id: String,
        check_reentry: bool,
    ) -> Result<bool, EngineError> {
        if self.store.run(&run_id)?.is_some() {
            return Ok(false);
        }
        let now = self.clock.now_ms();
        let name = &wf.loaded.decl.name;
        if check_reentry {
            if let Some(prev) = self.store.entry(name, &contact.id)? {
                let allowed = match wf.loaded.decl.reentry {
                    Reentry::Once => false,
                    Reentry::Always => true,
                    Reentry::After { cooldown_ms } => now - prev.started_at >= cooldown_ms,
                };
                if !allowed {
                    return Ok(false);
                }
            }
        }
        let run = Run::new(
            run_id.clone(),
            name.clone(),
            wf.hash.clone(),
            contact.id.clone(),
            trigger,
            view,
            now,
        );
        self.store.create_run(&run)?;
        self.metrics.run_started(name);
        self.metrics.run_status(None, RunStatus::Running);
        tracing::debug!(
            run = run_id,
            workflow = name.as_str(),
            contact = contact.id.as_str(),
            "run started"
        );
        self.activate(&run_id)?;
        Ok(true)
    }

    fn resolve_inner(&self, run_id: &str, seq: u32, delivered: bool) -> Result<(), String> {
        let run = self
            .store
            .run(run_id)
            .map_err(|e| e.to_string())?
            .ok_or("no such run")?;
        if run.status != RunStatus::Parked {
            return Err(format!(
                "run {run_id} is {}, not parked",
                run.status.as_str()
            ));
        }
        let journal = self.store.journal(run_id).map_err(|e| e.to_string())?;
        let mut step = journal.get(seq as usize).cloned().ok_or("no such step")?;
        if !matches!(step.status, StepStatus::Ambiguous | StepStatus::Intent) {
            return Err(format!("step {seq} is not ambiguous"));
        }
        let now = self.clock.now_ms();
        if delivered {
            step.status = StepStatus::Done;
            step.result = json!({"message_id": step.idempotency_key, "resolved_by": "operator"});
            step.finished_at = Some(now);
        } else {
            step.status = StepStatus::Retrying;
            step.due_at = Some(now);
        }
        step.error = None;
        self.store
            .put_step(run_id, &step)
            .map_err(|e| e.to_string())?;
        if let Some(key) = &step.idempotency_key {
            self.store.remove_intent(key).map_err(|e| e.to_string())?;
        }
        let mut run = run;
        run.status = RunStatus::Waiting;
        run.reason = None;
        self.store.put_run(&run).map_err(|e| e.to_string())?;
        self.metrics
            .run_status(Some(RunStatus::Parked), RunStatus::Waiting);
        self.activate(run_id).map_err(|e| e.to_string())
    }

    /// Run one activation of a run.
    fn activate(&self, run_id: &str) -> Result<(), EngineError> {
        self.activate_fired(run_id, None)
    }

    /// Activate a run; `fired`: the due time of the timer that woke it, if one did. A fired
    /// timer the run no longer waits on (left by a failed write) goes, so it fires once, not
    /// again and again.
    fn activate_fired(&self, run_id: &str, fired: Option<i64>) -> Result<(), EngineError> {
        let run = self.store.run(run_id)?;
        let waits_on = run
            .as_ref()
            .filter(|r| !r.status.is_terminal())
            .and_then(|r| r.wake_at);
        if let Some(due) = fired.filter(|d| waits_on != Some(*d)) {
            self.store
                .clear_timer(due, &TimerTarget::Run(run_id.to_string()))?;
        }
        let Some(mut run) = run else {
            return Ok(());
        };
        if run.status.is_terminal() {
            return Ok(());
        }
        if let Some(t) = run.wake_at.take() {
            self.store
                .clear_timer(t, &TimerTarget::Run(run.id.clone()))?;
        }
        let from = run.status;
        let started = Instant::now();
        let workflow = match self.version(&run.script_hash) {
            Ok(w) => w,
            Err(msg) => {
                self.finish(&mut run, from, RunStatus::Parked, Some(msg), None)?;
                return Ok(());
            }
        };
        let journal = self.store.journal(&run.id)?;
        let state = RunState {
            now: self.clock.now_ms(),
            snapshot: run.start_contact.clone(),
            run: run.clone(),
            journal,
            cursor: 0,
            wake: None,
            logs: Vec::new(),
            store_error: None,
        };
        let shared = Rc::new(RefCell::new(state));
        let me = self
            .me
            .get()
            .and_then(|w| w.upgrade())
            .ok_or(EngineError::Stopped)?;
        let host: Box<dyn Host> = Box::new(RunHost {
            engine: me,
            state: shared.clone(),
        });
        // A panic under the script (a bug in a host function, most likely) parks the run with
        // the panic as its reason; `with_host` unbinds the host however the call ends.
        let end = match self.guard(
            || format!("activation of run {}", run.id),
            || {
                with_host(host, || {
                    #[cfg(test)]
                    if run.workflow == tests::PANIC_WORKFLOW && run.activations > 0 {
                        panic!("injected by a test");
                    }
                    run_activation(&self.rhai, &workflow.ast, &run.trigger, &self.limits)
                })
                .0
            },
        ) {
            Ok(end) => end,
            Err(panic) => {
                ActivationEnd::Parked(format!("internal error: the activation panicked: {panic}"))
            }
        };
        let state = Rc::try_unwrap(shared)
            .map_err(|_| EngineError::Invalid("host still referenced".into()))?
            .into_inner();
        self.metrics
            .activation(started.elapsed().as_micros() as u64);
        run.activations += 1;
        run.failed_activations = 0;
        run.logs.extend(state.logs);
        let excess = run.logs.len().saturating_sub(50);
        run.logs.drain(..excess);
        if let Some(e) = state.store_error {
            return Err(EngineError::Store(e));
        }
        match end {
            ActivationEnd::Completed => {
                self.finish(&mut run, from, RunStatus::Completed, None, None)?;
                self.after_completion(&run)?;
            }
            ActivationEnd::Suspended => {
                if let Some(due) = state.wake {
                    self.set_run_timer(&mut run, due)?;
                    if due <= self.clock.now_ms() {
                        self.timer_wake.notify_one();
                    }
                }
                self.finish(&mut run, from, RunStatus::Waiting, None, None)?;
            }
            ActivationEnd::Exited(reason) => {
                self.cancel_pending(&mut run)?;
                self.finish(
                    &mut run,
                    from,
                    RunStatus::Exited,
                    Some(reason).filter(|r| !r.is_empty()),
                    None,
                )?;
            }
            ActivationEnd::Parked(reason) => {
                tracing::warn!(run = run.id, reason, "run parked");
                self.finish(&mut run, from, RunStatus::Parked, Some(reason), None)?;
            }
            ActivationEnd::Failed { message, line, .. } => {
                tracing::warn!(
                    run = run.id,
                    workflow = run.workflow,
                    line,
                    message,
                    "run failed"
                );
                self.cancel_pending(&mut run)?;
                self.finish(&mut run, from, RunStatus::Failed, Some(message), line)?;
            }
        }
        Ok(())
    }

    /// Wake `run` at `due` (the caller stores the run).
    fn set_run_timer(&self, run: &mut Run, due: i64) -> Result<(), EngineError> {
        self.store.set_timer(&Timer {
            due,
            target: TimerTarget::Run(run.id.clone()),
            contact: run.contact.clone(),
        })?;
        run.wake_at = Some(due);
        Ok(())
    }

    fn finish(
        &self,
        run: &mut Run,
        from: RunStatus,
        to: RunStatus,
        reason: Option<String>,
        line: Option<usize>,
    ) -> Result<(), EngineError> {
        run.status = to;
        run.reason = reason;
        run.error_line = line;
        run.updated_at = self.clock.now_ms();
        self.store.put_run(run)?;
        if from != to {
            self.metrics.run_status(Some(from), to);
        }
        Ok(())
    }

    fn after_completion(&self, run: &Run) -> Result<(), EngineError> {
        let state = self.state();
        let Some(contact) = self.live_contact(&run.contact)? else {
            return Ok(());
        };
        for wf in state.workflows.values() {
            let chained = wf.loaded.decl.triggers.iter().any(
                |t| matches!(t, Trigger::WorkflowCompleted { workflow } if *workflow == run.workflow),
            );
            if chained {
                let trigger = json!({"type": "workflow_completed", "event": "workflow_completed",
                    "properties": {"workflow": run.workflow, "run": run.id}, "timestamp": self.clock.now_ms()});
                self.start_run(
                    wf,
                    &contact,
                    trigger,
                    format!("{}-after-{}", wf.loaded.decl.name, run.id),
                    true,
                )?;
            }
        }
        Ok(())
    }

    fn backoff(&self, attempts: u32) -> i64 {
        let base = self.config.backoff_ms.max(1) as f64
            * 2f64.powi(attempts.saturating_sub(1).min(20) as i32);
        let jitter = 0.5 + rand::random::<f64>();
        (base * jitter).min(3_600_000.0) as i64
    }
}

struct RunState {
    now: i64,
    snapshot: Value,
    run: Run,
    journal: Vec<Step>,
    cursor: usize,
    wake: Option<i64>,
    logs: Vec<String>,
    store_error: Option<StoreError>,
}

struct RunHost {
    engine: Arc<Engine>,
    state: Rc<RefCell<RunState>>,
}

fn merge_snapshot(snapshot: &mut Value, attrs: &Value) {
    if let (Some(s), Some(a)) = (snapshot.as_object_mut(), attrs.as_object()) {
        for (k, v) in a {
            if v.is_null() {
                s.remove(k);
            } else {
                s.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Deterministic arm choice: the same contact always gets the same arm of an experiment.
pub fn pick_variant(contact: &str, experiment: &str, arms: &[(String, u32)]) -> String {
    let digest = Sha256::digest(format!("{contact}\u{1f}{experiment}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    let total: u64 = arms.iter().map(|(_, w)| *w as u64).sum();
    let mut point = u64::from_be_bytes(b) % total.max(1);
    for (name, w) in arms {
        if point < *w as u64 {
            return name.clone();
        }
        point -= *w as u64;
    }
    arms.last().map(|(n, _)| n.clone()).unwrap_or_default()
}

/// The next instant at which the contact's local clock shows `hour:minute`.
pub fn next_local_time(now_ms: i64, timezone: Option<&str>, hour: u32, minute: u32) -> i64 {
    use chrono::{Duration, TimeZone, Utc};
    let tz: chrono_tz::Tz = timezone
        .and_then(|t| t.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default()
        .with_timezone(&tz);
    let mut date = now.date_naive();
    for _ in 0..3 {
        let Some(naive) = date.and_hms_opt(hour, minute, 0) else {
            break;
        };
        // In a DST gap the time does not exist that day: take the hour after.
        let candidate = tz.from_local_datetime(&naive).earliest().or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        });
        if let Some(c) = candidate {
            if c.timestamp_millis() > now_ms {
                return c.timestamp_millis();
            }
        }
        date = date.succ_opt().unwrap_or(date);
    }
    now_ms + 86_400_000
}

impl RunHost {
    fn store(&self) -> &dyn Store {
        self.engine.store.as_ref()
    }

    fn save(&self, st: &mut RunState, step: &Step) -> Result<(), Interrupt> {
        match self.store().put_step(&st.run.id, step) {
            Ok(()) => {
                let i = step.seq as usize;
                if i < st.journal.len() {
                    st.journal[i] = step.clone();
                } else {
                    st.journal.push(step.clone());
                }
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                st.store_error = Some(e);
                Err(Interrupt::Park(format!(
                    "storage failed while recording a step: {msg}"
                )))
            }
        }
    }

    /// Make the journal durable before going on (an effect's intent, its result).
    fn durable(&self) -> Result<(), Interrupt> {
        self.engine
            .flusher
            .commit_blocking()
            .map_err(|e| Interrupt::Park(format!("storage flush failed: {e}")))
    }

    fn new_step(&self, st: &RunState, call: &StepCall, line: Option<usize>, input: Value) -> Step {
        Step {
            seq: st.cursor as u32,
            kind: call.kind().to_string(),
            name: call.name(),
            input,
            status: StepStatus::Done,
            result: Value::Null,
            error: None,
            attempts: 0,
            due_at: None,
            contact: None,
            idempotency_key: None,
            line,
            started_at: st.now,
            finished_at: Some(st.now),
        }
    }

    fn fresh_snapshot(&self, st: &mut RunState) -> Value {
        match self.engine.live_contact(&st.run.contact) {
            Ok(Some(c)) => self.engine.snapshot_of(&c),
            _ => st.snapshot.clone(),
        }
    }

    fn replay(&self, st: &mut RunState, rec: Step, call: &StepCall) -> Result<Value, Interrupt> {
        if rec.kind != call.kind() || rec.name != call.name() {
            return Err(Interrupt::Park(format!(
                "non-determinism at step {}: the journal recorded `{} {}` but the script now calls `{} {}`",
                rec.seq,
                rec.kind,
                rec.name,
                call.kind(),
                call.name()
            )));
        }
        match rec.status {
            StepStatus::Done => {
                if let Some(c) = &rec.contact {
                    st.snapshot = c.clone();
                }
                st.cursor += 1;
                Ok(rec.result)
            }
            StepStatus::Failed => {
                st.cursor += 1;
                Err(Interrupt::Fail(
                    rec.error.unwrap_or_else(|| "step failed".into()),
                ))
            }
            StepStatus::Pending => {
                let due = rec.due_at.unwrap_or(i64::MAX);
                if st.now < due {
                    st.wake = Some(due);
                    return Err(Interrupt::Suspend);
                }
                // The wait is over (for wait_for: timed out).
                let mut step = rec;
                step.status = StepStatus::Done;
                step.result = Value::Null;
                step.finished_at = Some(st.now);
                let snap = self.fresh_snapshot(st);
                step.contact = Some(snap.clone());
                if step.kind == "wait_for" {
                    if let Err(e) =
                        self.store()
                            .remove_wait(&st.run.contact, &step.name, &st.run.id)
                    {
                        st.store_error = Some(e);
                    }
                }
                self.save(st, &step)?;
                st.snapshot = snap;
                st.cursor += 1;
                Ok(Value::Null)
            }
            StepStatus::Retrying => {
                let due = rec.due_at.unwrap_or(0);
                if st.now < due {
                    st.wake = Some(due);
                    return Err(Interrupt::Suspend);
                }
                self.call_channel(st, rec)
            }
            StepStatus::Intent => {
                let channel = rec
                    .input
                    .get("channel")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let idempotent = self
                    .engine
                    .state()
                    .channels
                    .get(&channel)
                    .is_some_and(|c| c.supports_idempotency());
                if idempotent {
                    tracing::info!(run = st.run.id, step = rec.seq, channel, "retrying an effect from the ambiguous window with the same idempotency key");
                    self.call_channel(st, rec)
                } else {
                    let mut step = rec;
                    step.status = StepStatus::Ambiguous;
                    step.error = Some("the process stopped after this effect's intent was recorded and before its result was; the channel does not support idempotency keys, so it was not retried".into());
                    self.save(st, &step)?;
                    self.engine.metrics.send(&channel, "ambiguous");
                    Err(Interrupt::Park(ambiguous_reason(&step)))
                }
            }
            StepStatus::Ambiguous => Err(Interrupt::Park(ambiguous_reason(&rec))),
        }
    }

    fn call_channel(&self, st: &mut RunState, mut step: Step) -> Result<Value, Interrupt> {
        let message: OutboundMessage = match serde_json::from_value(step.input.clone()) {
            Ok(m) => m,
            Err(e) => {
                return self.fail_step(st, step, format!("recorded message is unreadable: {e}"))
            }
        };
        let Some(channel) = self.engine.state().channels.get(&message.channel).cloned() else {
            return self.fail_step(
                st,
                step,
                format!("channel \"{}\" is not configured", message.channel),
            );
        };
        if step.status != StepStatus::Intent || step.attempts == 0 {
            step.status = StepStatus::Intent;
            step.attempts += 1;
            self.engine.failpoint("before_intent");
            self.save(st, &step)?;
            let key = message.idempotency_key.clone();
            let intent = Intent {
                run: st.run.id.clone(),
                step: step.seq,
                channel: message.channel.clone(),
                at: st.now,
            };
            if let Err(e) = self.store().put_intent(&key, &intent) {
                st.store_error = Some(e);
                return Err(Interrupt::Park(
                    "storage failed while recording an intent".into(),
                ));
            }
            self.durable()?;
        } else {
            step.attempts += 1;
        }
        self.engine.failpoint("after_intent");
        let result = channel.send(&message);
        self.engine.failpoint("after_send");
        let key = message.idempotency_key.clone();
        let outcome = match &result {
            Ok(_) => "sent",
            Err(ChannelError::Transient(_)) | Err(ChannelError::RateLimited { .. }) => "retry",
            Err(ChannelError::Ambiguous(_)) => "ambiguous",
            Err(_) => "failed",
        };
        self.engine.metrics.send(&message.channel, outcome);
        step.finished_at = Some(self.engine.clock.now_ms());
        let value = match result {
            Ok(d) => {
                if let Some(pid) = &d.provider_id {
                    // Provider callbacks name the provider's id: remember whose message it was.
                    let owner = json!({"contact": st.run.contact, "run": st.run.id, "step": step.seq, "key": key});
                    if let Err(e) = self.store().put_meta(
                        &format!("pmsg:{}:{pid}", message.channel),
                        &owner.to_string(),
                    ) {
                        st.store_error = Some(e);
                    }
                }
                step.status = StepStatus::Done;
                step.error = None;
                step.due_at = None;
                step.result = json!({
                    "message_id": key,
                    "channel": message.channel,
                    "template": message.template,
                    "operation": message.operation,
                    "provider_id": d.provider_id,
                    "detail": d.detail,
                });
                Ok(step.result.clone())
            }
            Err(ChannelError::Ambiguous(msg)) => {
                step.status = StepStatus::Ambiguous;
                step.error = Some(msg);
                Err(Interrupt::Park(ambiguous_reason(&step)))
            }
            Err(e @ (ChannelError::Transient(_) | ChannelError::RateLimited { .. }))
                if step.attempts < self.engine.config.max_attempts =>
            {
                let mut delay = self.engine.backoff(step.attempts);
                if let ChannelError::RateLimited { retry_after_ms, .. } = &e {
                    delay = delay.max(*retry_after_ms as i64);
                }
                let due = st.now + delay;
                step.status = StepStatus::Retrying;
                step.due_at = Some(due);
                step.error = Some(e.to_string());
                st.wake = Some(due);
                tracing::info!(run = st.run.id, step = step.seq, attempt = step.attempts, delay_ms = delay, error = %e, "channel call will be retried");
                Err(Interrupt::Suspend)
            }
            Err(e) => {
                step.status = StepStatus::Failed;
                let msg = if step.attempts > 1 {
                    format!("{e} (after {} attempts)", step.attempts)
                } else {
                    e.to_string()
                };
                step.error = Some(msg.clone());
                Err(Interrupt::Fail(format!(
                    "{} {} failed: {msg}",
                    step.kind, step.name
                )))
            }
        };
        self.save(st, &step)?;
        if step.status != StepStatus::Ambiguous {
            if let Err(e) = self.store().remove_intent(&key) {
                st.store_error = Some(e);
            }
        }
        self.durable()?;
        if value.is_ok() || step.status == StepStatus::Failed {
            st.cursor += 1;
        }
        value
    }

    fn fail_step(
        &self,
        st: &mut RunState,
        mut step: Step,
        msg: String,
    ) -> Result<Value, Interrupt> {
        step.status = StepStatus::Failed;
        step.error = Some(msg.clone());
        step.finished_at = Some(st.now);
        self.save(st, &step)?;
        st.cursor += 1;
        Err(Interrupt::Fail(msg))
    }

    fn effect(
        &self,
        st: &mut RunState,
        call: &StepCall,
        line: Option<usize>,
    ) -> Result<Value, Interrupt> {
        let state = self.engine.state();
        let key = format!("{}:{}", st.run.id, st.cursor);
        let (channel, template, operation, vars, payload) = match call {
            StepCall::Send {
                channel,
                template,
                vars,
            } => (channel, Some(template), None, vars.clone(), Value::Null),
            StepCall::Action {
                channel,
                operation,
                payload,
            } => (channel, None, Some(operation), Value::Null, payload.clone()),
            _ => unreachable!("effect() is only called for send and action"),
        };
        let mut step = self.new_step(st, call, line, json!({"channel": channel}));
        step.idempotency_key = Some(key.clone());
        step.status = StepStatus::Intent;
        step.finished_at = None;
        if !state.channels.contains_key(channel.as_str()) {
            return self.fail_step(
                st,
                step,
                format!("channel \"{channel}\" is not configured in herald.toml"),
            );
        }
        let to_attr = state
            .channel_config
            .get(channel.as_str())
            .and_then(|c| c.to_attribute());
        let to = to_attr
            .and_then(|a| st.snapshot.get(a))
            .and_then(|v| v.as_str())
            .map(String::from);
        let mut message = OutboundMessage {
            idempotency_key: key,
            channel: channel.clone(),
            template: template.cloned(),
            operation: operation.cloned(),
            run: st.run.id.clone(),
            workflow: st.run.workflow.clone(),
            contact: st.run.contact.clone(),
            to,
            subject: None,
            body: None,
            html: None,
            fields: Map::new(),
            payload,
        };
        if let Some(template) = template {
            let variants: Map<String, Value> = st
                .journal
                .iter()
                .filter(|s| s.kind == "variant" && s.status == StepStatus::Done)
                .map(|s| (s.name.clone(), s.result.clone()))
                .collect();
            let globals = template_globals(
                &st.snapshot,
                &st.run.trigger,
                &vars,
                &st.run.workflow,
                &st.run.id,
                variants,
            );
            match state.templates.render(template, channel, &globals) {
                Ok(r) => {
                    message.subject = r.subject;
                    message.body = Some(r.body);
                    message.html = r.html;
                    message.fields = r.fields;
                }
                Err(e) => return self.fail_step(st, step, e),
            }
        }
        step.input = serde_json::to_value(&message).unwrap_or(Value::Null);
        step.attempts = 0;
        self.call_channel(st, step)
    }

    fn perform(
        &self,
        st: &mut RunState,
        call: StepCall,
        line: Option<usize>,
    ) -> Result<Value, Interrupt> {
        self.engine.metrics.step(call.kind());
        let record = |st: &mut RunState,
                      this: &Self,
                      mut step: Step,
                      result: Value|
         -> Result<Value, Interrupt> {
            step.result = result.clone();
            this.save(st, &step)?;
            st.cursor += 1;
            Ok(result)
        };
        match &call {
            StepCall::Send { .. } | StepCall::Action { .. } => self.effect(st, &call, line),
            StepCall::Now => {
                let step = self.new_step(st, &call, line, Value::Null);
                record(st, self, step, json!(st.now))
            }
            StepCall::Random => {
                let step = self.new_step(st, &call, line, Value::Null);
                record(st, self, step, json!(rand::random::<f64>()))
            }
            StepCall::Variant { name, arms } => {
                let arm = pick_variant(&st.run.contact, name, arms);
                let input =
                    json!({"arms": arms.iter().map(|(n, w)| json!([n, w])).collect::<Vec<_>>()});
                let step = self.new_step(st, &call, line, input);
                record(st, self, step, json!(arm))
            }
            StepCall::Update { attrs } => {
                let contact_id = st.run.contact.clone();
                let guard = self.engine.contact_lock.locked();
                match self.engine.live_contact(&contact_id) {
                    Ok(Some(mut c)) => {
                        if let Some(map) = attrs.as_object() {
                            c.merge_attributes(map);
                            c.updated_at = st.now;
                            if let Err(e) = self.store().put_contact(&c) {
                                st.store_error = Some(e);
                                return Err(Interrupt::Park(
                                    "storage failed while updating the contact".into(),
                                ));
                            }
                            drop(guard);
                            // Segments reading these attributes re-evaluate after this job.
                            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                            let state = self.engine.state();
                            // Attribute rules of the scoring may change the score, and with it
                            // the segments that read score or stage.
                            let scored = state.scoring.as_ref().is_some_and(|sc| {
                                sc.rules.iter().any(|r| {
                                    matches!(&r.condition, Some(herald_dsl::RuleCondition::Attribute { attribute, .. }) if keys.contains(&attribute.as_str()))
                                })
                            });
                            let affected: std::collections::BTreeSet<String> = state
                                .segments
                                .iter()
                                .filter(|(_, s)| s.loaded.deps.reads_any(&keys))
                                .map(|(n, _)| n.clone())
                                .collect();
                            if scored || !affected.is_empty() {
                                let _ = self
                                    .engine
                                    .send_job(&c.id, Job::Audience(c.id.clone(), Some(affected)));
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        st.store_error = Some(e);
                        return Err(Interrupt::Park(
                            "storage failed while reading the contact".into(),
                        ));
                    }
                }
                merge_snapshot(&mut st.snapshot, attrs);
                let mut step = self.new_step(st, &call, line, attrs.clone());
                step.contact = Some(st.snapshot.clone());
                record(st, self, step, Value::Null)
            }
            StepCall::Wait { duration_ms } => self.pending(
                st,
                &call,
                line,
                json!({"duration_ms": duration_ms}),
                st.now + duration_ms,
            ),
            StepCall::WaitUntil { target } => {
                let due = match target {
                    WaitTarget::At(t) => *t,
                    WaitTarget::LocalTime { hour, minute } => {
                        let tz = st
                            .snapshot
                            .get("timezone")
                            .and_then(Value::as_str)
                            .map(String::from);
                        next_local_time(st.now, tz.as_deref(), *hour, *minute)
                    }
                };
                let input = match target {
                    WaitTarget::At(t) => json!({"at": t}),
                    WaitTarget::LocalTime { hour, minute } => {
                        json!({"local_time": format!("{hour:02}:{minute:02}"), "at": due})
                    }
                };
                self.pending(st, &call, line, input, due)
            }
            StepCall::WaitFor {
                event,
                filter,
                timeout_ms,
            } => {
                let due = st.now + timeout_ms;
                let reg = WaitReg {
                    run: st.run.id.clone(),
                    step: st.cursor as u32,
                    filter: filter.as_object().cloned().unwrap_or_default(),
                };
                if let Err(e) = self.store().put_wait(&st.run.contact, event, &reg) {
                    st.store_error = Some(e);
                    return Err(Interrupt::Park(
                        "storage failed while registering a wait".into(),
                    ));
                }
                self.pending(
                    st,
                    &call,
                    line,
                    json!({"event": event, "filter": filter, "timeout_ms": timeout_ms}),
                    due,
                )
            }
        }
    }

    fn pending(
        &self,
        st: &mut RunState,
        call: &StepCall,
        line: Option<usize>,
        input: Value,
        due: i64,
    ) -> Result<Value, Interrupt> {
        let mut step = self.new_step(st, call, line, input);
        step.status = StepStatus::Pending;
        step.due_at = Some(due);
        step.finished_at = None;
        self.save(st, &step)?;
        if due <= st.now {
            // A wait that is already over (zero duration, a past instant): finish it now.
            let rec = st.journal[st.cursor].clone();
            return self.replay(st, rec, call);
        }
        st.wake = Some(due);
        Err(Interrupt::Suspend)
    }
}

/// What a template sees: the contact (attributes, score, stage, segments), the trigger,
/// the `vars` passed to `send`, the workflow, and the A/B arms chosen so far in the run.
pub fn template_globals(
    contact: &Value,
    trigger: &Value,
    vars: &Value,
    workflow: &str,
    run: &str,
    variants: Map<String, Value>,
) -> Value {
    json!({
        "contact": contact,
        "trigger": trigger,
        "event": trigger,
        "vars": vars,
        "workflow": {"name": workflow, "run": run},
        "variants": variants,
    })
}

impl Engine {
    /// Render a template for a real contact, as `send` would (without sending).
    pub fn preview(
        &self,
        template: &str,
        channel: &str,
        contact: &Contact,
        vars: Value,
        trigger: Value,
    ) -> Result<Value, EngineError> {
        let state = self.state();
        let globals = template_globals(
            &self.snapshot_of(contact),
            &trigger,
            &vars,
            "preview",
            "preview",
            Map::new(),
        );
        let r = state
            .templates
            .render(template, channel, &globals)
            .map_err(EngineError::Invalid)?;
        let to = state
            .channel_config
            .get(channel)
            .and_then(|c| c.to_attribute())
            .and_then(|a| contact.attributes.get(a))
            .cloned();
        Ok(
            json!({"template": template, "channel": channel, "contact": contact.id, "to": to,
                  "subject": r.subject, "body": r.body, "html": r.html, "fields": r.fields}),
        )
    }
}

fn ambiguous_reason(step: &Step) -> String {
    format!(
        "ambiguous delivery at step {} ({} {}): the outcome of the channel call is unknown, so it was not repeated; \
         resolve with POST /v1/runs/<run>/steps/{}/resolve and {{\"delivered\": true|false}}",
        step.seq, step.kind, step.name, step.seq
    )
}

impl Host for RunHost {
    fn step(&mut self, call: StepCall, line: Option<usize>) -> Result<Value, Interrupt> {
        let state = self.state.clone();
        let mut st = state.borrow_mut();
        if st.store_error.is_some() {
            return Err(Interrupt::Park(
                "storage failed earlier in this activation".into(),
            ));
        }
        if let Some(rec) = st.journal.get(st.cursor).cloned() {
            return self.replay(&mut st, rec, &call);
        }
        self.perform(&mut st, call, line)
    }

    fn contact_attr(&mut self, key: &str) -> Value {
        let st = self.state.borrow();
        if key == "*" {
            return st.snapshot.clone();
        }
        st.snapshot.get(key).cloned().unwrap_or(Value::Null)
    }

    fn log(&mut self, message: &str) {
        let mut st = self.state.borrow_mut();
        if st.logs.len() < 100 {
            st.logs.push(message.chars().take(1000).collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event the test build's worker panics on, standing in for a bug.
    pub(super) const PANIC_EVENT: &str = "test_worker_panic";
    /// A workflow whose activations after the first panic in the test build.
    pub(super) const PANIC_WORKFLOW: &str = "test_activation_panic";

    /// A daemon on the test clock serving `workflows` (file name, source; a name with a
    /// directory, such as `segments/a.rhai`, is relative to the project).
    fn daemon_with(
        workflows: &[(&str, &str)],
    ) -> (tempfile::TempDir, crate::daemon::RunningDaemon) {
        let dir = tempfile::tempdir().unwrap();
        let wf = dir.path().join("workflows");
        std::fs::create_dir_all(&wf).unwrap();
        std::fs::write(
            dir.path().join("herald.toml"),
            "[auth]\nwrite_keys = [\"k\"]\nadmin_token = \"t\"\n",
        )
        .unwrap();
        for (name, source) in workflows {
            let path = if name.contains('/') {
                dir.path().join(name)
            } else {
                wf.join(name)
            };
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, source).unwrap();
        }
        let d = crate::daemon::RunningDaemon::start(crate::daemon::Options {
            project: dir.path().into(),
            listen: Some("127.0.0.1:0".into()),
            data: None,
            test_clock: true,
            watch: false,
        })
        .unwrap();
        (dir, d)
    }

    /// Ingest `body` (a `/v1/batch` body) and wait until the workers have processed it.
    fn ingest_now(d: &crate::daemon::RunningDaemon, body: Value) -> usize {
        let engine = &d.shared.engine;
        let (messages, _) = crate::ingest::parse_body(None, body.to_string().as_bytes()).unwrap();
        let (accepted, queued) = d.shared.ingestor.write(messages).unwrap();
        engine.flusher.commit_blocking().unwrap();
        engine.submit_events(queued);
        engine.barrier();
        accepted.accepted
    }

    fn runs_of(engine: &Engine, user: &str) -> Vec<Run> {
        let contact = engine
            .store
            .identity(crate::store::IdKind::User, user)
            .unwrap()
            .unwrap();
        engine.store.runs_of_contact(&contact).unwrap()
    }

    /// A daemon whose workflow `calm` waits a day after `go`, and the run `user`'s `go` started.
    fn waiting_run(user: &str) -> (tempfile::TempDir, crate::daemon::RunningDaemon, Run) {
        let (dir, d) = daemon_with(&[(
            "calm.rhai",
            "workflow(\"calm\").on_event(\"go\");\nfn run(contact, trigger) {\n    wait(days(1));\n}\n",
        )]);
        ingest_now(
            &d,
            json!({"batch": [{"type": "track", "userId": user, "event": "go"}]}),
        );
        let run = runs_of(&d.shared.engine, user).remove(0);
        assert_eq!(run.status, RunStatus::Waiting);
        (dir, d, run)
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_worker_goes_on_keeping_the_event_queued() {
        let boom = format!(
            "workflow(\"boom\").on_event(\"{PANIC_EVENT}\");\nfn run(contact, trigger) {{}}\n"
        );
        let (_dir, d) = daemon_with(&[
            ("boom.rhai", &boom),
            (
                "fine.rhai",
                "workflow(\"fine\").on_event(\"fine\");\nfn run(contact, trigger) {}\n",
            ),
        ]);
        let engine = d.shared.engine.clone();

        // Both events belong to one contact, so one worker takes them in order.
        let body = json!({"batch": [
            {"type": "track", "userId": "p1", "event": PANIC_EVENT},
            {"type": "track", "userId": "p1", "event": "fine"},
        ]})
        .to_string();
        let (messages, _) = crate::ingest::parse_body(None, body.as_bytes()).unwrap();
        let (accepted, queued) = d.shared.ingestor.write(messages).unwrap();
        assert_eq!(accepted.accepted, 2);
        engine.flusher.commit_blocking().unwrap();
        engine.submit_events(queued);
        engine.barrier();

        assert_eq!(engine.metrics.worker_panics(), 1);
        assert!(engine
            .metrics
            .render(&[])
            .contains("herald_worker_panics_total 1"));
        assert_eq!(
            engine.backlog.queued(),
            0,
            "the panicked job's backlog slot is released"
        );
        let contact = engine
            .store
            .identity(crate::store::IdKind::User, "p1")
            .unwrap()
            .unwrap();
        let runs = engine.store.runs_of_contact(&contact).unwrap();
        let summary: Vec<(&str, RunStatus)> = runs
            .iter()
            .map(|r| (r.workflow.as_str(), r.status))
            .collect();
        assert_eq!(
            summary,
            [("fine", RunStatus::Completed)],
            "the worker went on with the contact's next event"
        );
        let inbox = engine.store.inbox().unwrap();
        assert_eq!(
            inbox.len(),
            1,
            "the request's inbox record stays, so the next start processes the event again"
        );
        d.shutdown();
    }

    #[test]
    fn an_activation_that_panics_when_its_timer_fires_parks_the_run_instead_of_leaving_it_waiting()
    {
        let waits = |name: &str| {
            format!(
                "workflow(\"{name}\").on_event(\"go\");\nfn run(contact, trigger) {{\n    wait(days(1));\n}}\n"
            )
        };
        let (_dir, d) = daemon_with(&[
            ("boom.rhai", &waits(PANIC_WORKFLOW)),
            ("calm.rhai", &waits("calm")),
        ]);
        let engine = d.shared.engine.clone();
        assert_eq!(
            ingest_now(
                &d,
                json!({"batch": [{"type": "track", "userId": "p2", "event": "go"}]})
            ),
            1
        );
        let status = |engine: &Engine| {
            let mut s: Vec<(String, RunStatus)> = runs_of(engine, "p2")
                .into_iter()
                .map(|r| (r.workflow, r.status))
                .collect();
            s.sort_by(|a, b| a.0.cmp(&b.0));
            s
        };
        assert_eq!(
            status(&engine),
            [
                ("calm".to_string(), RunStatus::Waiting),
                (PANIC_WORKFLOW.to_string(), RunStatus::Waiting)
            ]
        );
        assert_eq!(engine.store.timer_count().unwrap(), 2);

        engine.clock.set_ms(engine.clock.now_ms() + 2 * 86_400_000);
        engine.dispatch_due().unwrap();
        engine.barrier();

        assert_eq!(engine.metrics.worker_panics(), 1);
        assert_eq!(
            status(&engine),
            [
                ("calm".to_string(), RunStatus::Completed),
                (PANIC_WORKFLOW.to_string(), RunStatus::Parked)
            ],
            "the panicking run is parked, the other one on the same worker completes"
        );
        let parked = runs_of(&engine, "p2")
            .into_iter()
            .find(|r| r.workflow == PANIC_WORKFLOW)
            .unwrap();
        assert_eq!(
            parked.reason.as_deref(),
            Some("internal error: the activation panicked: injected by a test")
        );
        assert_eq!(parked.wake_at, None);
        assert_eq!(
            engine.store.timer_count().unwrap(),
            0,
            "no timer left behind"
        );
        assert!(engine.inflight.locked().is_empty());
        d.shutdown();
    }

    #[test]
    fn a_batch_writes_its_segment_changes_before_the_audience_states_that_follow_from_them() {
        let (_dir, d) = daemon_with(&[(
            "segments/buyers.rhai",
            "segment(\"buyers\");\nfn matches(contact) {\n    count(\"buy\", days(30)) >= 1\n}\n",
        )]);
        let engine = d.shared.engine.clone();
        // The new segment's backfill (over no contacts) runs on its own thread: let it finish
        // before this test's contact exists.
        let started = Instant::now();
        while engine.backfill.locked().finished_at.is_none() {
            assert!(
                // A hang guard, not a timing claim.
                started.elapsed() < std::time::Duration::from_secs(120),
                "backfill finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let now = engine.clock.now_ms();
        let contact = crate::model::Contact::new("c_batch".into(), now);
        engine.store.put_contact(&contact).unwrap();
        let event = Event {
            seq: engine.store.next_id().unwrap(),
            kind: "track".into(),
            event: "buy".into(),
            properties: json!({}),
            message_id: None,
            timestamp: now,
            received_at: now,
            context: Value::Null,
        };
        engine.store.put_event(&contact.id, &event).unwrap();

        // This thread stands in for a worker in the middle of a batch.
        begin_batch();
        engine
            .evaluate_audience(&contact.id, Some(&event), None)
            .unwrap();
        assert!(
            engine.store.audience(&contact.id).unwrap().is_none(),
            "the state waits for the batch's end"
        );
        assert!(engine
            .store
            .segment_changes("buyers", 10)
            .unwrap()
            .is_empty());
        let pending = audience_state(engine.store.as_ref(), &contact.id)
            .unwrap()
            .unwrap();
        assert!(
            pending.segments["buyers"].member,
            "the batch reads its own state"
        );

        engine.end_batch();
        assert!(
            engine
                .store
                .audience(&contact.id)
                .unwrap()
                .unwrap()
                .segments["buyers"]
                .member
        );
        let changes = engine.store.segment_changes("buyers", 10).unwrap();
        assert_eq!(
            changes
                .iter()
                .map(|c| (c.contact.as_str(), c.entered))
                .collect::<Vec<_>>(),
            [("c_batch", true)]
        );
        d.shutdown();
    }

    #[test]
    fn a_timer_left_behind_by_a_failed_write_fires_once_and_goes() {
        let (_dir, d, run) = waiting_run("p4");
        let engine = d.shared.engine.clone();
        // A timer the run no longer waits on, as a crash between writing a new timer and the
        // run's record would leave.
        let orphan = engine.clock.now_ms() - 1;
        engine
            .store
            .set_timer(&Timer {
                due: orphan,
                target: TimerTarget::Run(run.id.clone()),
                contact: run.contact.clone(),
            })
            .unwrap();
        assert_eq!(engine.store.timer_count().unwrap(), 2);

        engine.dispatch_due().unwrap();
        engine.barrier();
        assert_eq!(
            engine.store.timer_count().unwrap(),
            1,
            "the orphan went, the run's own timer stays"
        );
        let again = engine.store.run(&run.id).unwrap().unwrap();
        assert_eq!(again.status, RunStatus::Waiting);
        assert_eq!(again.wake_at, run.wake_at);
        assert_eq!(engine.dispatch_due().unwrap(), 0, "nothing fires again");
        d.shutdown();
    }

    #[test]
    fn an_activation_failing_again_and_again_is_retried_later_then_parked() {
        let (_dir, d, run) = waiting_run("p5");
        let engine = d.shared.engine.clone();
        let id = run.id;
        let target = TimerTarget::Run(id.clone());
        let now = engine.clock.now_ms();
        for attempt in 1..crate::model::MAX_FAILED_ACTIVATIONS {
            engine
                .after_failed_activation(&target, Err("storage: disk on fire".into()))
                .unwrap();
            let run = engine.store.run(&id).unwrap().unwrap();
            assert_eq!(
                (run.status, run.failed_activations),
                (RunStatus::Waiting, attempt)
            );
            assert!(run.wake_at.unwrap() > now, "retried later");
            assert_eq!(
                engine.store.timer_count().unwrap(),
                1,
                "one timer, the retry"
            );
        }
        engine
            .after_failed_activation(&target, Err("storage: disk on fire".into()))
            .unwrap();
        let run = engine.store.run(&id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Parked);
        assert_eq!(
            run.reason.as_deref(),
            Some("internal error: 5 activations in a row failed; the last: storage: disk on fire")
        );
        assert_eq!(engine.store.timer_count().unwrap(), 0);
        d.shutdown();
    }

    #[test]
    fn a_manual_start_that_panics_answers_with_an_internal_error_not_shutting_down() {
        let (_dir, d) = daemon_with(&[(
            "fine.rhai",
            "workflow(\"fine\").manual();\nfn run(contact, trigger) {}\n",
        )]);
        let engine = d.shared.engine.clone();
        ingest_now(&d, json!({"batch": [{"type": "identify", "userId": "p3"}]}));
        let contact = engine
            .store
            .identity(crate::store::IdKind::User, "p3")
            .unwrap()
            .unwrap();
        let err = engine
            .start_manual(PANIC_EVENT, &contact, json!({}))
            .unwrap_err();
        assert!(
            matches!(&err, EngineError::Panicked(m) if m == "injected by a test"),
            "{err:?}"
        );
        let api = crate::api::ApiError::from(err);
        assert_eq!(
            (api.status, api.code),
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error"
            )
        );
        let run = engine.start_manual("fine", &contact, json!({})).unwrap();
        assert_eq!(
            engine.store.run(&run).unwrap().unwrap().status,
            RunStatus::Completed,
            "the worker serves the next start"
        );
        d.shutdown();
    }

    /// Counts wake-ups, so the test sees the waiter being woken, not just polled again.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn ingest_waits_at_the_backlog_limit_until_a_worker_drains_one() {
        use std::future::Future;
        use std::sync::atomic::Ordering::SeqCst;
        use std::task::{Context, Waker};
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let b = Backlog::new(2);
        assert!(std::pin::pin!(b.room()).poll(&mut cx).is_ready());
        b.add(2);
        let mut waiter = std::pin::pin!(b.room());
        assert!(
            waiter.as_mut().poll(&mut cx).is_pending(),
            "no room at the limit"
        );
        // Overshoot (a whole request is accepted at once), then drain back below the limit.
        b.add(1);
        b.done();
        assert_eq!(
            wakes.0.load(SeqCst),
            0,
            "not woken while still at the limit"
        );
        assert!(
            waiter.as_mut().poll(&mut cx).is_pending(),
            "still at the limit"
        );
        b.done();
        assert_eq!(
            wakes.0.load(SeqCst),
            1,
            "woken when the backlog drops below the limit"
        );
        assert!(waiter.as_mut().poll(&mut cx).is_ready());
        assert_eq!(b.queued(), 1);
    }

    #[test]
    fn variants_are_stable_per_contact_and_follow_weights() {
        let arms = vec![("a".to_string(), 1), ("b".to_string(), 1)];
        assert_eq!(
            pick_variant("c1", "x", &arms),
            pick_variant("c1", "x", &arms)
        );
        let b = (0..2000)
            .filter(|i| pick_variant(&format!("c{i}"), "x", &arms) == "b")
            .count();
        assert!((800..1200).contains(&b), "{b}");
        let skewed = vec![("control".to_string(), 9), ("treatment".to_string(), 1)];
        let t = (0..2000)
            .filter(|i| pick_variant(&format!("c{i}"), "y", &skewed) == "treatment")
            .count();
        assert!((100..320).contains(&t), "{t}");
    }

    #[test]
    fn local_times_follow_the_contacts_timezone() {
        // 2026-03-01T12:00:00Z; 09:00 in New York (UTC-5) is 14:00Z the same day.
        let now = 1_772_366_400_000;
        assert_eq!(
            next_local_time(now, Some("America/New_York"), 9, 0),
            now + 2 * 3_600_000
        );
        // 09:00 UTC has passed: tomorrow.
        assert_eq!(next_local_time(now, None, 9, 0), now + 21 * 3_600_000);
    }
}
