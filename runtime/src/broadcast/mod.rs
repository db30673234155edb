//! Broadcasts: one-off sends to an audience, run as one durable run per recipient.
//!
//! A broadcast file (`broadcasts/NAME.rhai`) is loaded with the project but never sends by
//! itself. [`Engine::schedule_broadcast`] pins the version it is given (stored
//! content-addressed like a workflow version) in a [`BroadcastRecord`] in `meta`; from then on
//! the broadcaster thread moves it along:
//!
//! 1. **scheduled** until its start time (the engine's clock);
//! 2. **snapshotting**: every contact (or every member of its audience segment) is written to
//!    the `recipients` tree in pages, each page in one batch with the record's cursor, so the
//!    audience is fixed and durable before anything is sent;
//! 3. **sending**: the snapshot is read in pages from the record's dispatch cursor; each
//!    recipient's worker starts a run with the deterministic id `bc-NAME-CONTACT`, whose sends
//!    take the bulk lane of the delivery stage, journaled and exactly once like any run. The
//!    cursor moves after the page's runs are written, and the flush that makes it durable
//!    covers them; a crash repeats at most one page, whose runs already exist and are not
//!    started twice;
//! 4. **completed**, or **paused** / **cancelled** by an operator between pages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::engine::{Engine, EngineError, Job};
use crate::model::{Contact, RunStatus, StepStatus};
use crate::project::WorkflowVersion;
use crate::store::{Write, WriteBatch};
use crate::sync::LockExt as _;

/// Where a broadcast is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastStatus {
    /// Waiting for its start time.
    Scheduled,
    /// Writing its audience snapshot.
    Snapshotting,
    /// Starting a run per recipient.
    Sending,
    /// Stopped by an operator; `resume` goes on where it stopped.
    Paused,
    /// Stopped for good by an operator.
    Cancelled,
    /// Every recipient's run is started.
    Completed,
}

impl BroadcastStatus {
    /// Scheduled, snapshotting or sending: the broadcaster has work to do.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            BroadcastStatus::Scheduled | BroadcastStatus::Snapshotting | BroadcastStatus::Sending
        )
    }
}

/// One scheduled broadcast, stored as JSON in `meta` under `broadcast:NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastRecord {
    /// The broadcast's name.
    pub name: String,
    /// The pinned script version (sha256 of the source run).
    pub hash: String,
    /// The file it came from.
    pub path: String,
    /// Where it is.
    pub status: BroadcastStatus,
    /// When it was scheduled.
    pub scheduled_at: i64,
    /// When sending starts (the snapshot is taken then).
    pub start_at: i64,
    /// The audience segment; `None`: every contact.
    pub audience: Option<String>,
    /// The channel of the generated send, when there is one.
    pub channel: Option<String>,
    /// The topic.
    pub topic: Option<String>,
    /// Recipients started per second at most.
    pub throttle_per_second: Option<u32>,
    /// The snapshot is complete.
    pub snapshot_done: bool,
    /// The last contact id the snapshot looked at.
    pub snapshot_after: Option<String>,
    /// Contacts in the snapshot.
    pub recipients: u64,
    /// Recipients whose run is started (the dispatch cursor).
    pub dispatched: u64,
    /// When the snapshot was taken and sending began.
    pub started_at: Option<i64>,
    /// When it completed or was cancelled.
    pub finished_at: Option<i64>,
    /// Status before a pause (to resume into).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_from: Option<BroadcastStatus>,
}

/// The `meta` key of a broadcast's record.
pub fn record_key(name: &str) -> String {
    format!("broadcast:{name}")
}

/// The run a broadcast starts for a contact.
pub fn run_id(broadcast: &str, contact: &str) -> String {
    format!("bc-{broadcast}-{contact}")
}

/// A seed list may name at most this many contacts.
pub const MAX_SEEDS: usize = 50;
/// Contacts looked at per snapshot page, and recipients started per dispatch page.
const PAGE: usize = 1000;
/// The broadcaster waits while a channel has this many bulk sends queued.
const MAX_QUEUED: usize = 20_000;

/// What the broadcaster shares with the API: one lock for record changes, a wake-up.
#[derive(Default)]
pub struct Broadcaster {
    lock: Mutex<()>,
    wake: Condvar,
    woken: Mutex<bool>,
    stop: AtomicBool,
}

impl Broadcaster {
    fn poke(&self) {
        *self.woken.locked() = true;
        self.wake.notify_all();
    }

    fn sleep(&self, timeout: Duration) {
        let mut woken = self.woken.locked();
        if !*woken {
            woken = self
                .wake
                .wait_timeout(woken, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *woken = false;
    }

    /// Stop the broadcaster thread (at its next page).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.poke();
    }
}

/// Counts of a broadcast's recipients by where their message is.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// Recipients in the snapshot.
    pub recipients: u64,
    /// Recipients whose run is started.
    pub started: u64,
    /// Messages waiting in the delivery stage (queued or to be retried).
    pub queued: u64,
    /// Messages the delivery policy deferred (quiet hours, a frequency cap), by rule.
    pub deferred: BTreeMap<String, u64>,
    /// Runs waiting for a local send time or another step.
    pub waiting: u64,
    /// Messages the provider accepted.
    pub sent: u64,
    /// Messages the delivery policy skipped, by rule and reason.
    pub skipped: BTreeMap<String, u64>,
    /// Sends that failed for good.
    pub failed: u64,
    /// Sends in the ambiguous window, parked for an operator.
    pub ambiguous: u64,
    /// Recipients erased or merged away before their run started.
    pub gone: u64,
}

impl Engine {
    /// The stored record of broadcast `name`, if it was ever scheduled.
    pub fn broadcast_record(&self, name: &str) -> Result<Option<BroadcastRecord>, EngineError> {
        Ok(match self.store.meta(&record_key(name))? {
            Some(json) => Some(
                serde_json::from_str(&json)
                    .map_err(|e| EngineError::Invalid(format!("broadcast record {name}: {e}")))?,
            ),
            None => None,
        })
    }

    /// Every scheduled broadcast's record.
    pub fn broadcast_records(&self) -> Result<Vec<BroadcastRecord>, EngineError> {
        let mut out = Vec::new();
        for (key, json) in self.store.meta_with_prefix("broadcast:")? {
            match serde_json::from_str(&json) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(key, error = %e, "unreadable broadcast record"),
            }
        }
        Ok(out)
    }

    fn put_record(&self, record: &BroadcastRecord, batch: &mut WriteBatch) {
        batch.push(Write::Meta {
            key: record_key(&record.name),
            value: serde_json::to_string(record).expect("a record serializes"),
        });
    }

    /// Schedule broadcast `name` as the project serves it now, pinned to that version:
    /// `start_at` (ms) overrides the file's `.send_at(...)`; without either it starts at once.
    /// A broadcast is scheduled once; a cancelled or completed one is not sent again.
    pub fn schedule_broadcast(
        &self,
        name: &str,
        start_at: Option<i64>,
    ) -> Result<BroadcastRecord, EngineError> {
        let state = self.state();
        let wf = state.broadcasts.get(name).cloned().ok_or_else(|| {
            EngineError::Invalid(format!(
                "no broadcast named \"{name}\" (files in broadcasts/ that pass herald check)"
            ))
        })?;
        let spec = wf.loaded.decl.broadcast.clone().unwrap_or_default();
        let _guard = self.broadcaster.lock.locked();
        if let Some(existing) = self.broadcast_record(name)? {
            return Err(EngineError::Invalid(format!(
                "broadcast \"{name}\" is already {} (a broadcast is sent once: copy it under a new name to send it again)",
                status_name(existing.status)
            )));
        }
        self.store_version(&wf)?;
        let now = self.clock.now_ms();
        let from_file = match spec.send_at {
            Some(herald_dsl::SendAt::At { at_ms }) => Some(at_ms),
            _ => None,
        };
        let record = BroadcastRecord {
            name: name.to_string(),
            hash: wf.hash.clone(),
            path: wf.path.clone(),
            status: BroadcastStatus::Scheduled,
            scheduled_at: now,
            start_at: start_at.or(from_file).unwrap_or(now),
            audience: spec.audience.clone(),
            channel: spec.channel.clone(),
            topic: spec.topic.clone(),
            throttle_per_second: spec.throttle_per_second,
            snapshot_done: false,
            snapshot_after: None,
            recipients: 0,
            dispatched: 0,
            started_at: None,
            finished_at: None,
            paused_from: None,
        };
        let mut batch = WriteBatch::new();
        self.put_record(&record, &mut batch);
        self.apply_durably(&batch)?;
        tracing::info!(
            broadcast = name,
            start_at = record.start_at,
            "broadcast scheduled"
        );
        drop(_guard);
        self.broadcaster.poke();
        Ok(record)
    }

    /// Pause, resume or cancel a broadcast (`action`: `pause`, `resume`, `cancel`).
    pub fn control_broadcast(
        &self,
        name: &str,
        action: &str,
    ) -> Result<BroadcastRecord, EngineError> {
        let _guard = self.broadcaster.lock.locked();
        let mut r = self.broadcast_record(name)?.ok_or_else(|| {
            EngineError::Invalid(format!("broadcast \"{name}\" is not scheduled"))
        })?;
        let before = r.status;
        match (action, r.status) {
            ("pause", s) if s.is_active() => {
                r.paused_from = Some(s);
                r.status = BroadcastStatus::Paused;
            }
            ("resume", BroadcastStatus::Paused) => {
                r.status = r.paused_from.take().unwrap_or(BroadcastStatus::Scheduled);
            }
            ("cancel", s) if s.is_active() || s == BroadcastStatus::Paused => {
                r.status = BroadcastStatus::Cancelled;
                r.finished_at = Some(self.clock.now_ms());
            }
            ("pause" | "resume" | "cancel", s) => {
                return Err(EngineError::Invalid(format!(
                    "broadcast \"{name}\" is {}: it cannot {action}",
                    status_name(s)
                )))
            }
            _ => {
                return Err(EngineError::Invalid(format!(
                    "unknown action \"{action}\": use pause, resume or cancel"
                )))
            }
        }
        let mut batch = WriteBatch::new();
        self.put_record(&r, &mut batch);
        self.apply_durably(&batch)?;
        tracing::info!(
            broadcast = name,
            from = status_name(before),
            to = status_name(r.status),
            "broadcast {action}"
        );
        drop(_guard);
        self.broadcaster.poke();
        Ok(r)
    }

    /// Start the broadcast's current file version for each seed contact now: a test send,
    /// outside the broadcast's snapshot and progress. Returns the run ids.
    pub fn test_broadcast(
        &self,
        name: &str,
        contacts: &[String],
    ) -> Result<Vec<String>, EngineError> {
        if contacts.is_empty() || contacts.len() > MAX_SEEDS {
            return Err(EngineError::Invalid(format!(
                "a seed list names 1 to {MAX_SEEDS} contacts, not {}",
                contacts.len()
            )));
        }
        let state = self.state();
        let wf = state
            .broadcasts
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::Invalid(format!("no broadcast named \"{name}\"")))?;
        for c in contacts {
            if self.live_contact(c)?.is_none() {
                return Err(EngineError::Invalid(format!("no contact \"{c}\"")));
            }
        }
        self.store_version(&wf)?;
        let batch = self.store.next_id()?;
        let mut runs = Vec::new();
        let (tx, rx) = mpsc::channel();
        for c in contacts {
            let run = format!("bc-{name}-seed{batch:x}-{c}");
            self.send_job(
                c,
                Job::Broadcast {
                    version: wf.clone(),
                    contact: c.clone(),
                    run: Some(run.clone()),
                    done: tx.clone(),
                },
            )?;
            runs.push(run);
        }
        drop(tx);
        for _ in 0..contacts.len() {
            if !rx.recv().map_err(|_| EngineError::Stopped)? {
                return Err(EngineError::Invalid(
                    "a seed send could not be started (see the log)".into(),
                ));
            }
        }
        self.flusher
            .commit_blocking()
            .map_err(EngineError::Invalid)?;
        Ok(runs)
    }

    /// Render what broadcast `name` sends `contact` (its arm, for A/B broadcasts).
    pub fn preview_broadcast(&self, name: &str, contact: &Contact) -> Result<Value, EngineError> {
        let state = self.state();
        let wf = state
            .broadcasts
            .get(name)
            .ok_or_else(|| EngineError::Invalid(format!("no broadcast named \"{name}\"")))?;
        let spec = wf.loaded.decl.broadcast.clone().unwrap_or_default();
        let (Some(channel), false) = (&spec.channel, spec.custom_run) else {
            return Err(EngineError::Invalid(format!(
                "broadcast \"{name}\" sends from its own fn run: preview its templates with herald preview"
            )));
        };
        let (template, arm) = match &spec.template {
            Some(t) => (t.clone(), None),
            None => {
                let arms: Vec<(String, u32)> =
                    spec.arms.iter().map(|(a, _)| (a.clone(), 1)).collect();
                let arm = crate::engine::pick_variant(&contact.id, name, &arms);
                let t = spec
                    .arms
                    .iter()
                    .find(|(a, _)| *a == arm)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default();
                (t, Some(arm))
            }
        };
        let trigger = json!({"type": "broadcast", "event": "broadcast",
            "properties": {"broadcast": name}, "timestamp": self.clock.now_ms()});
        let mut out = self.preview(&template, channel, contact, json!({}), trigger)?;
        out["broadcast"] = json!(name);
        out["arm"] = json!(arm);
        Ok(out)
    }

    /// Where each recipient's message is. Reads every started recipient's run (the analytics
    /// counters will make this incremental).
    pub fn broadcast_progress(&self, record: &BroadcastRecord) -> Result<Progress, EngineError> {
        let mut p = Progress {
            recipients: record.recipients,
            started: record.dispatched,
            ..Default::default()
        };
        let mut from = 0;
        loop {
            let page = self.store.recipients(&record.name, from, PAGE)?;
            let Some((last, _)) = page.last() else { break };
            from = last + 1;
            for (seq, contact) in page {
                if seq >= record.dispatched {
                    return Ok(p);
                }
                let live = self.live_contact(&contact)?;
                let run = match &live {
                    Some(c) => self.store.run(&run_id(&record.name, &c.id))?,
                    None => None,
                };
                let run = match run {
                    Some(r) => r,
                    None => match self.store.run(&run_id(&record.name, &contact))? {
                        Some(r) => r,
                        None => {
                            p.gone += 1;
                            continue;
                        }
                    },
                };
                count_run(&mut p, &run, &self.store.journal(&run.id)?);
            }
        }
        Ok(p)
    }

    /// Start the broadcaster thread.
    pub(crate) fn start_broadcaster(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("herald-broadcasts".into())
            .spawn(move || loop {
                let Some(engine) = me.upgrade() else { return };
                if engine.broadcaster.stop.load(Ordering::Acquire) {
                    return;
                }
                let next = match engine.broadcast_round() {
                    Ok(next) => next,
                    Err(EngineError::Stopped) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "broadcast step failed; it is tried again");
                        Duration::from_secs(1)
                    }
                };
                let b = engine.broadcaster.clone();
                drop(engine);
                b.sleep(next);
            })
            .expect("spawn the broadcaster")
    }

    /// One round over the active broadcasts: each does one page of its work. Returns how
    /// long to sleep before the next round (none while a broadcast has more pages).
    fn broadcast_round(&self) -> Result<Duration, EngineError> {
        let mut busy = false;
        for r in self.broadcast_records()? {
            if self.broadcaster.stop.load(Ordering::Acquire) {
                return Err(EngineError::Stopped);
            }
            busy |= match r.status {
                BroadcastStatus::Scheduled if r.start_at <= self.clock.now_ms() => {
                    self.advance_with(&r.name, BroadcastStatus::Scheduled, Vec::new(), |r| {
                        r.status = BroadcastStatus::Snapshotting;
                        r.started_at = Some(r.start_at.max(r.scheduled_at));
                    })?;
                    true
                }
                BroadcastStatus::Snapshotting => self.snapshot_page(&r)?,
                BroadcastStatus::Sending => self.dispatch_page(&r)?,
                _ => false,
            };
        }
        Ok(if busy {
            Duration::ZERO
        } else {
            Duration::from_millis(200)
        })
    }

    /// Change a broadcast's record under the lock if it is still in the status `expect`ed
    /// (an operator may have paused or cancelled it meanwhile), with `extra` writes in the
    /// same batch; durable before it returns. False when the status had changed.
    fn advance_with(
        &self,
        name: &str,
        expect: BroadcastStatus,
        extra: Vec<Write>,
        f: impl FnOnce(&mut BroadcastRecord),
    ) -> Result<bool, EngineError> {
        let _guard = self.broadcaster.lock.locked();
        let Some(mut r) = self.broadcast_record(name)? else {
            return Ok(false);
        };
        if r.status != expect {
            return Ok(false);
        }
        f(&mut r);
        let mut batch = WriteBatch::new();
        for w in extra {
            batch.push(w);
        }
        self.put_record(&r, &mut batch);
        self.apply_durably(&batch)?;
        Ok(true)
    }

    /// Look at the next page of contacts and add the audience's members to the snapshot.
    /// True while there is more to do.
    fn snapshot_page(&self, r: &BroadcastRecord) -> Result<bool, EngineError> {
        let ids = self.store.contact_ids(r.snapshot_after.as_deref(), PAGE)?;
        let mut members = Vec::new();
        for id in &ids {
            let Some(c) = self.store.contact(id)? else {
                continue;
            };
            if c.merged_into.is_some() {
                continue;
            }
            let member = match &r.audience {
                None => true,
                Some(segment) => self
                    .store
                    .audience(id)?
                    .is_some_and(|a| a.member_of().any(|s| s == segment)),
            };
            if member {
                members.push(c.id);
            }
        }
        let done = ids.len() < PAGE;
        let first = r.recipients;
        let added = members.len() as u64;
        let mut extra = Vec::new();
        if !members.is_empty() {
            extra.push(Write::Recipients {
                broadcast: r.name.clone(),
                first,
                contacts: members,
            });
        }
        let last = ids.last().cloned();
        let moved = self.advance_with(&r.name, BroadcastStatus::Snapshotting, extra, |r| {
            r.recipients += added;
            if last.is_some() {
                r.snapshot_after = last;
            }
            if done {
                r.snapshot_done = true;
                r.status = BroadcastStatus::Sending;
            }
        })?;
        if moved && done {
            tracing::info!(
                broadcast = r.name,
                recipients = r.recipients + added,
                "broadcast audience fixed; sending"
            );
        }
        Ok(moved)
    }

    /// Start the runs of the next page of recipients. True while there is more to do.
    fn dispatch_page(&self, r: &BroadcastRecord) -> Result<bool, EngineError> {
        // The bulk lane of its channel is full: let the delivery stage catch up first.
        if let Some(channel) = &r.channel {
            if let Some(s) = self.delivery.status().get(channel) {
                if s.queued.get("bulk").copied().unwrap_or(0) >= MAX_QUEUED {
                    std::thread::sleep(Duration::from_millis(20));
                    return Ok(true);
                }
            }
        }
        let limit = match r.throttle_per_second {
            Some(t) => (t as usize).clamp(1, PAGE),
            None => PAGE,
        };
        let page = self.store.recipients(&r.name, r.dispatched, limit)?;
        if page.is_empty() {
            let name = r.name.clone();
            let done = self.advance_with(&name, BroadcastStatus::Sending, Vec::new(), |r| {
                r.status = BroadcastStatus::Completed;
                r.finished_at = Some(self.clock.now_ms());
            })?;
            if done {
                tracing::info!(
                    broadcast = name,
                    recipients = r.dispatched,
                    "broadcast completed"
                );
            }
            return Ok(false);
        }
        let version = self.pinned_version(r)?;
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let n = page.len();
        for (_, contact) in &page {
            self.send_job(
                contact,
                Job::Broadcast {
                    version: version.clone(),
                    contact: contact.clone(),
                    run: None,
                    done: tx.clone(),
                },
            )?;
        }
        drop(tx);
        let mut failed = 0;
        for _ in 0..n {
            failed += usize::from(!rx.recv().map_err(|_| EngineError::Stopped)?);
        }
        if failed > 0 {
            // The cursor stays: the page is started again (its started runs are not).
            return Err(EngineError::Invalid(format!(
                "broadcast {}: {failed} of {n} runs could not be started",
                r.name
            )));
        }
        let next = page.last().map(|(s, _)| s + 1).unwrap_or(r.dispatched);
        // Durable with the runs written before it (the flush covers every earlier write).
        let moved = self.advance_with(&r.name, BroadcastStatus::Sending, Vec::new(), |r| {
            r.dispatched = next;
        })?;
        if let Some(t) = r.throttle_per_second {
            let due = Duration::from_secs_f64(n as f64 / t.max(1) as f64);
            if let Some(rest) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        Ok(moved)
    }

    /// The version a broadcast was scheduled with (the project may serve a newer one).
    fn pinned_version(&self, r: &BroadcastRecord) -> Result<Arc<WorkflowVersion>, EngineError> {
        if let Some(wf) = self.state().broadcasts.get(&r.name) {
            if wf.hash == r.hash {
                return Ok(wf.clone());
            }
        }
        let loaded = self.version(&r.hash).map_err(EngineError::Invalid)?;
        let stored = self.store.script(&r.hash)?.ok_or_else(|| {
            EngineError::Invalid(format!("script version {} is not stored", r.hash))
        })?;
        Ok(Arc::new(WorkflowVersion {
            hash: r.hash.clone(),
            path: stored.path,
            source: stored.source,
            loaded: (*loaded).clone(),
        }))
    }

    /// On the recipient's worker: start its run (once: the run id is the broadcast's and the
    /// contact's).
    pub(crate) fn start_broadcast_run(
        &self,
        version: &WorkflowVersion,
        contact: &str,
        run: Option<String>,
    ) -> Result<(), EngineError> {
        let Some(c) = self.live_contact(contact)? else {
            return Ok(());
        };
        let name = &version.loaded.decl.name;
        let seed = run.is_some();
        let id = run.unwrap_or_else(|| run_id(name, &c.id));
        let trigger = json!({"type": "broadcast", "event": "broadcast",
            "properties": {"broadcast": name, "seed": seed}, "timestamp": self.clock.now_ms()});
        self.start_run(version, &c, trigger, id, false)?;
        Ok(())
    }
}

fn count_run(p: &mut Progress, run: &crate::model::Run, journal: &[crate::model::Step]) {
    let sends = journal.iter().filter(|s| s.kind == "send");
    let mut any = false;
    for s in sends {
        any = true;
        match s.status {
            StepStatus::Done => match s.result.get("status").and_then(Value::as_str) {
                Some("skipped") => {
                    let key = format!(
                        "{}: {}",
                        s.result.get("rule").and_then(Value::as_str).unwrap_or(""),
                        s.result.get("reason").and_then(Value::as_str).unwrap_or("")
                    );
                    *p.skipped.entry(key).or_default() += 1;
                }
                _ => p.sent += 1,
            },
            StepStatus::Failed => p.failed += 1,
            StepStatus::Ambiguous => p.ambiguous += 1,
            StepStatus::Retrying
                if s.result.get("status").and_then(Value::as_str) == Some("deferred") =>
            {
                let rule = s.result.get("rule").and_then(Value::as_str).unwrap_or("");
                *p.deferred.entry(rule.to_string()).or_default() += 1;
            }
            _ => p.queued += 1,
        }
    }
    if !any {
        match run.status {
            RunStatus::Failed => p.failed += 1,
            RunStatus::Parked => p.ambiguous += 1,
            _ => p.waiting += 1,
        }
    }
}

/// The status as the API writes it.
pub fn status_name(s: BroadcastStatus) -> &'static str {
    match s {
        BroadcastStatus::Scheduled => "scheduled",
        BroadcastStatus::Snapshotting => "snapshotting",
        BroadcastStatus::Sending => "sending",
        BroadcastStatus::Paused => "paused",
        BroadcastStatus::Cancelled => "cancelled",
        BroadcastStatus::Completed => "completed",
    }
}
