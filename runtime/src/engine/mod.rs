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
use crate::config::{ChannelConfig, ChannelKind, EngineConfig};
use crate::delivery::{DeliveryStage, Outcome, QueuedSend, Sink};
use crate::metrics::Metrics;
use crate::model::{Contact, Event, InboxItem, Intent, Run, RunStatus, Step, StepStatus, WaitReg};
use crate::project::{Project, WorkflowVersion};
use crate::store::{Flusher, Store, StoreError, Timer, TimerTarget, Write, WriteBatch};
use crate::templates::Templates;

mod effects;
mod erasure;
pub use erasure::{suppression_key, Erasure, SUPPRESSION_PREFIX};
#[cfg(any(test, feature = "test-hooks"))]
pub mod hooks;
mod operators;
mod rendering;
mod replay;
mod runs;
mod timers;
mod triggers;
mod variants;
mod workers;

#[allow(unused_imports)]
use self::{
    effects::*, operators::*, rendering::*, replay::*, runs::*, timers::*, triggers::*,
    variants::*, workers::*,
};
pub use operators::{BulkResolve, DeadLetter, Matched};
pub use rendering::template_globals;
pub use timers::next_local_time;
pub use variants::{pick_variant, stable_point};
pub(crate) use workers::{
    audience_state, current_worker, log_segment_change, put_audience_state, shard_of,
};

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
    pub counts: Arc<crate::audience::behaviour::Specs>,
    /// Segments by an event name they read; `None` key: segments that may read any event.
    pub segments_by_event: HashMap<Option<String>, Vec<String>>,
    /// Whether any segment reads memberships (`in_segment`, `contact.segments`).
    pub segments_read_members: bool,
    /// WebAssembly connectors by channel name (for provider webhooks).
    pub plugins: BTreeMap<String, Arc<herald_plugin_host::LoadedPlugin>>,
    /// Topics, the default topic and the public URL (the policy, the preference page).
    pub consent: Arc<crate::consent::ConsentSettings>,
    /// Broadcasts by name, as the project's files say now (a scheduled one is pinned).
    pub broadcasts: BTreeMap<String, Arc<WorkflowVersion>>,
    /// How a goal event's credit is shared among the runs it converts.
    pub attribution: herald_config::Attribution,
    /// The project's timezone and hourly retention (`[analytics]`).
    pub days: crate::analytics::Days,
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
            let ch: Arc<dyn Channel> = match &cfg.kind {
                ChannelKind::Outbox {
                    path, idempotent, ..
                } => Arc::new(OutboxChannel::new(project.dir.join(path), *idempotent)),
                ChannelKind::Webhook {
                    url, timeout_ms, ..
                } => Arc::new(WebhookChannel::new(
                    url.clone(),
                    std::time::Duration::from_millis(*timeout_ms),
                    cfg.delivery.concurrency,
                )),
                ChannelKind::Plugin { plugin, grant, .. } => {
                    // Warm instances and concurrent calls follow the channel's delivery
                    // concurrency unless the grant sets them.
                    let mut grant = grant.clone();
                    let concurrency = cfg.delivery.concurrency;
                    grant.limits.max_concurrent_calls.get_or_insert(concurrency);
                    grant.limits.pool_size.get_or_insert(concurrency);
                    let ch = plugins.load(&project.dir, name, plugin, &grant)?;
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
            counts: Arc::new(crate::audience::behaviour::specs(
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
            broadcasts: project.broadcasts.clone(),
            plugins: loaded_plugins,
            attribution: project.config.analytics.attribution,
            days: crate::analytics::Days::from_config(&project.config.analytics),
            consent: Arc::new(crate::consent::ConsentSettings::from_config(
                &project.config,
            )),
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
    /// A send the delivery stage finished: record the result and continue the run. It goes
    /// through the worker's results queue, served before the next job of the main queue.
    Delivered(Box<Outcome>),
    /// Wakes a worker waiting on its main queue: results are waiting.
    Nudge,
    /// Erase a contact (on its worker, between its runs' activations).
    Erase {
        contact: String,
        reply: mpsc::Sender<Result<Option<Erasure>, EngineError>>,
    },
    /// Start a broadcast's run for a recipient (`run`: a seed send's run id); `done` is told
    /// once it is written.
    /// Start a broadcast's runs for recipients of one worker: (contact, run id for a seed
    /// send); `done` gets how many could not be started.
    Broadcast {
        version: Arc<WorkflowVersion>,
        recipients: Vec<(String, Option<String>)>,
        /// An A/B-tested broadcast's arm weights for these recipients, and their phase.
        arms: Option<(Value, &'static str)>,
        done: mpsc::Sender<usize>,
    },
    /// An operator sends a dead letter again.
    Retry {
        run: String,
        reply: mpsc::Sender<Result<(), EngineError>>,
    },
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

    /// One more of the record's events is done: true for the last one (the record may go).
    fn finish_one(&self) -> bool {
        self.remaining
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
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
    workers: Mutex<Vec<WorkerQueue>>,
    worker_count: usize,
    inflight: Mutex<HashSet<TimerTarget>>,
    /// The armed failpoint (test builds only; see `hooks`).
    #[cfg(any(test, feature = "test-hooks"))]
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
    /// traits, `update()` steps, erasure), per contact and per external id, so no writer loses
    /// another's change and writers of unrelated contacts do not wait for each other.
    pub contact_locks: crate::sync::StripedLocks,
    /// The keys that sign and verify unsubscribe links (stored in the data directory).
    pub(crate) links: RwLock<Arc<crate::consent::LinkKeys>>,
    /// `http://` and the address the daemon listens on.
    listen_url: RwLock<String>,
    /// Suppression keys of erased people ([`suppression_key`]): their data is not taken again.
    pub(crate) suppressed: RwLock<HashSet<String>>,
    /// Counts merges and erasures, raised after their batch is written (under their locks):
    /// a writer that saw it unchanged across taking its locks knows its lookups still hold.
    pub(crate) relinks: std::sync::atomic::AtomicU64,
    /// The run and segment gauges were counted at start without error, so a clean shutdown
    /// may save them as a checkpoint.
    counted: std::sync::atomic::AtomicBool,
    /// Accepted events the workers still owe (ingest waits at its limit).
    pub backlog: Backlog,
    /// Where sends wait for their channel and run concurrently.
    pub delivery: Arc<DeliveryStage>,
    /// The broadcasts' thread and the lock over their records.
    pub(crate) broadcaster: Arc<crate::broadcast::Broadcaster>,
    /// Marketing sends the caps let through whose results are not recorded yet.
    pub(crate) cap_holds: crate::consent::CapHolds,
    /// The analytics fold.
    pub analytics: Arc<crate::analytics::Folder>,
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

/// Build the Rhai engine the daemon uses, with limits from `[engine]`.
pub fn limits_from(config: &EngineConfig) -> Limits {
    Limits {
        max_operations: config.max_operations,
        activation_deadline: std::time::Duration::from_millis(config.activation_deadline_ms),
        ..Limits::default()
    }
}

/// Lock stripes for contacts (and as many for external ids).
const CONTACT_STRIPES: usize = 256;

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
        let suppressed = store
            .meta_with_prefix(SUPPRESSION_PREFIX)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let links = crate::consent::LinkKeys::load_or_create(store.as_ref(), clock.now_ms())?;
        let delivery = DeliveryStage::new(store.clone(), flusher.clone(), clock.clone());
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
            #[cfg(any(test, feature = "test-hooks"))]
            failpoint: hooks::failpoint_from_env(),
            timer_wake: tokio::sync::Notify::new(),
            threads: Mutex::new(Vec::new()),
            me: std::sync::OnceLock::new(),
            segment_sizes: Mutex::new(BTreeMap::new()),
            backfill: Mutex::new(Default::default()),
            contact_locks: crate::sync::StripedLocks::new(CONTACT_STRIPES),
            suppressed: RwLock::new(suppressed),
            links: RwLock::new(Arc::new(links)),
            listen_url: RwLock::new(format!("http://{}", project.config.server.listen)),
            relinks: std::sync::atomic::AtomicU64::new(0),
            counted: std::sync::atomic::AtomicBool::new(false),
            backlog,
            delivery,
            broadcaster: Default::default(),
            cap_holds: Default::default(),
            analytics: Default::default(),
        });
        engine.analytics.configure(engine.state().days);
        let _ = engine.me.set(Arc::downgrade(&engine));
        let sink: Arc<dyn Sink> = engine.clone();
        engine.delivery.set_sink(Arc::downgrade(&sink));
        engine.configure_delivery(&engine.state());
        engine.store_versions()?;
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..worker_count {
            let (queue, inbox) = WorkerQueue::new();
            senders.push(queue);
            let e = engine.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("herald-worker-{i}"))
                    .spawn(move || {
                        WORKER.with(|w| w.set(Some(i)));
                        e.worker(inbox)
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
        let left = engine.analytics.fold_left_behind(engine.store.as_ref())?;
        if left > 0 {
            tracing::info!(facts = left, "analytics facts left by the last run folded");
        }
        engine.recover()?;
        engine.start_backfill();
        let broadcasts = engine.start_broadcaster();
        engine.threads.locked().push(broadcasts);
        let fold = engine
            .analytics
            .start(Arc::downgrade(&engine.store), engine.clock.clone());
        engine.threads.locked().push(fold);
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
    pub(crate) fn compute_interest(&self) -> Result<(), EngineError> {
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
        self.configure_delivery(&new);
        self.analytics.configure(new.days);
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

    /// Store a script version (content-addressed) and keep it compiled.
    pub(crate) fn store_version(&self, wf: &WorkflowVersion) -> Result<(), EngineError> {
        self.store.put_script(&crate::model::ScriptVersion {
            hash: wf.hash.clone(),
            workflow: wf.loaded.decl.name.clone(),
            path: wf.path.clone(),
            source: wf.source.clone(),
            stored_at: self.clock.now_ms(),
        })?;
        let new = self
            .versions
            .locked()
            .insert(wf.hash.clone(), Arc::new(wf.loaded.clone()))
            .is_none();
        // Its goal and waits make their events matter to the engine from now on.
        if new {
            self.compute_interest()?;
        }
        Ok(())
    }

    /// The compiled script version `hash` (compiled from the store when not kept).
    pub(crate) fn version(&self, hash: &str) -> Result<Arc<LoadedWorkflow>, String> {
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

    /// The worker whose queue serves `contact`.
    pub(crate) fn worker_of(&self, contact: &str) -> usize {
        shard_of(contact, self.worker_count)
    }

    /// Hand `job` to worker `index` (its contacts are that worker's).
    pub(crate) fn send_job_to(&self, index: usize, job: Job) -> Result<(), EngineError> {
        let workers = self.workers.locked();
        workers
            .get(index)
            .ok_or(EngineError::Stopped)?
            .send(job)
            .map_err(|_| EngineError::Stopped)
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

    /// Give the delivery stage the channels of `state` with their delivery settings.
    fn configure_delivery(&self, state: &ProjectState) {
        let channels: Vec<_> = state
            .channels
            .iter()
            .map(|(name, ch)| {
                let delivery = state
                    .channel_config
                    .get(name)
                    .map(|c| c.delivery.clone())
                    .unwrap_or_default();
                (name.clone(), ch.clone(), delivery)
            })
            .collect();
        self.delivery.configure(&channels);
    }

    /// Stop the sends in flight (their results are recorded), then the workers after they
    /// finish what is queued, and flush.
    pub fn shutdown(&self) {
        self.broadcaster.stop();
        self.analytics.stop();
        self.delivery.shutdown();
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
            let saved = match self.store.checkpoint() {
                Some(c) => c.save(&self.metrics.run_counts(), &sizes),
                None => Ok(()),
            };
            if let Err(e) = saved {
                tracing::warn!(error = %e, "saving the shutdown checkpoint failed; the next start counts instead");
            }
        }
    }

    /// A crash test's failpoint (`hooks`); nothing at all in a build without test hooks.
    #[inline]
    fn failpoint(&self, _name: &str) {
        #[cfg(any(test, feature = "test-hooks"))]
        hooks::failpoint(self.failpoint.as_deref(), _name);
    }
}

impl Sink for Engine {
    fn delivered(&self, outcome: Outcome) {
        let contact = outcome.contact.clone();
        let key = outcome.key.clone();
        if self
            .send_job(&contact, Job::Delivered(Box::new(outcome)))
            .is_err()
        {
            // Stopping: the intent stays, and the next start settles the step.
            self.delivery.release(&key);
        }
    }

    fn decide(&self, send: &QueuedSend, message: &OutboundMessage) -> crate::consent::Decision {
        let state = self.state();
        let policy = crate::consent::Policy {
            store: self.store.as_ref(),
            settings: &state.consent,
            holds: Some((&self.cap_holds, &send.key)),
        };
        match policy.decide(message, send.intent.priority, self.clock.now_ms()) {
            Ok(d) => d,
            // Without the records the policy cannot say the send is allowed: it waits.
            Err(e) => crate::consent::Decision::Wait(format!("storage failed: {e}")),
        }
    }

    fn failpoint(&self, name: &str) {
        // "after_answer": killed once the provider's answer on the intent is durable, before
        // the contact's worker records the result.
        #[cfg(any(test, feature = "test-hooks"))]
        if name == "after_answer" && self.failpoint.as_deref() == Some(name) {
            let _ = self.flusher.commit_blocking();
        }
        Engine::failpoint(self, name);
    }
}

#[cfg(test)]
mod tests;

impl Engine {
    /// The base of the links the daemon puts in messages: `[server] public_url`, else the
    /// address it listens on.
    pub fn public_url(&self) -> String {
        match &self.state().consent.public_url {
            Some(u) => u.clone(),
            None => self.listen_url.read_locked().clone(),
        }
    }

    /// Where the daemon listens, once it does (the default public URL).
    pub fn set_listen_url(&self, url: String) {
        *self.listen_url.write_locked() = url;
    }

    /// Apply `batch` and wait until it is durable, sharing the group commit with every other
    /// writer (consent, suppression and other changes answered only once they are safe).
    pub fn apply_durably(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.store.apply(batch)?;
        self.flusher.commit_blocking().map_err(StoreError::Backend)
    }

    /// The keys that sign unsubscribe links (and verify them).
    pub fn link_keys(&self) -> Arc<crate::consent::LinkKeys> {
        self.links.read_locked().clone()
    }

    /// Add a link key that signs from now on; links signed before still verify.
    pub fn rotate_link_keys(&self) -> Result<u8, EngineError> {
        let (id, keys) =
            crate::consent::LinkKeys::rotate(self.store.as_ref(), self.clock.now_ms())?;
        *self.links.write_locked() = Arc::new(keys);
        Ok(id)
    }
}
