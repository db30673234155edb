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
//!
//! A broadcast with an A/B test (`.test_share(...)`, `.winner(...)`) sends in two passes over
//! the snapshot: the first starts the testers' runs (a deterministic share of the recipients,
//! each given one arm, evenly), then the broadcast is **testing** until the winner is decided
//! (`after` the last tester started, by the rate of the declared metric per message sent, or
//! earlier by an operator); the decision and each arm's numbers are stored in the record, and
//! the second pass starts the rest of the recipients' runs with the winning arm alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
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
    /// An A/B test's runs are started; the rest of the audience waits for its winner.
    Testing,
}

impl BroadcastStatus {
    /// Scheduled, snapshotting or sending: the broadcaster has work to do.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            BroadcastStatus::Scheduled
                | BroadcastStatus::Snapshotting
                | BroadcastStatus::Sending
                | BroadcastStatus::Testing
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
    /// The dispatch cursor of the current pass over the snapshot (every recipient before it
    /// was looked at; an A/B-tested broadcast makes two passes).
    pub dispatched: u64,
    /// When the snapshot was taken and sending began.
    pub started_at: Option<i64>,
    /// When it completed or was cancelled.
    pub finished_at: Option<i64>,
    /// Status before a pause (to resume into).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_from: Option<BroadcastStatus>,
    /// The A/B test, when the broadcast declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<AbTest>,
}

/// A broadcast's A/B test: a share of the audience receives the arms, the rest the winner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbTest {
    /// Percent of the recipients that test the arms.
    pub share: u32,
    /// `opened`, `clicked` or `converted`.
    pub metric: String,
    /// How long after the last tester's run started the winner is decided (ms).
    pub after_ms: i64,
    /// The arms, in the order ties are broken.
    pub arms: Vec<String>,
    /// When every tester's run was started (the test's clock starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testers_started_at: Option<i64>,
    /// The decision, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<TestDecision>,
}

impl AbTest {
    /// When the winner is decided unless an operator decides first.
    pub fn due_at(&self) -> Option<i64> {
        self.testers_started_at
            .map(|t| t.saturating_add(self.after_ms))
    }
}

/// How an A/B test was decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestDecision {
    /// The arm the rest of the audience receives.
    pub winner: String,
    /// When it was decided.
    pub decided_at: i64,
    /// `metric` (the declared rule when due), `sequential test` (the analytics' test picked
    /// a winner before then) or `operator` (`herald broadcast decide`).
    pub by: String,
    /// Each arm's numbers when it was decided.
    pub arms: BTreeMap<String, ArmResult>,
}

/// One arm's numbers among the testers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    /// Testers whose run took this arm and whose message has a result (sent, skipped or
    /// failed).
    pub testers: u64,
    /// Messages of this arm the provider accepted.
    pub sent: u64,
    /// Of those, how many reached the metric (unique per recipient).
    pub reached: u64,
    /// `reached / sent` (0 without sends).
    pub rate: f64,
}

/// Whether `contact` (as the snapshot names it) is among broadcast `name`'s testers: a
/// deterministic `share` percent of the recipients.
pub fn is_tester(name: &str, contact: &str, share: u32) -> bool {
    crate::engine::stable_point(contact, &format!("{name}\u{1f}test")) % 100 < u64::from(share)
}

/// The `meta` key of a broadcast's record.
pub fn record_key(name: &str) -> String {
    format!("broadcast:{name}")
}

/// The run a broadcast starts for a contact.
pub fn run_id(broadcast: &str, contact: &str) -> String {
    format!("bc-{broadcast}-{contact}")
}

/// Whether `id` is a run a broadcast started for a recipient ([`run_id`]: `bc-NAME-` and a
/// contact id, which workflow runs' ids never end with).
pub fn is_recipient_run(id: &str) -> bool {
    id.starts_with("bc-")
        && !id.contains("-after-")
        && id.rsplit_once('-').is_some_and(|(_, c)| {
            c.len() == 14 && c.starts_with("c_") && c[2..].bytes().all(|b| b.is_ascii_hexdigit())
        })
}

/// A seed list may name at most this many contacts.
pub const MAX_SEEDS: usize = 50;
/// Contacts looked at per snapshot page, and recipients started per dispatch page.
const PAGE: usize = 1000;
/// Recipients a worker starts in one job.
const RECIPIENTS_PER_JOB: usize = 100;
/// The broadcaster waits while a channel has this many bulk sends queued.
const MAX_QUEUED: usize = 20_000;

/// What the broadcaster shares with the API: one lock for record changes, a wake-up.
#[derive(Default)]
pub struct Broadcaster {
    lock: Mutex<()>,
    wakeup: crate::sync::Wakeup,
    stop: AtomicBool,
    /// Per broadcast (without a test), the progress of its first pages of recipients whose
    /// runs have all ended: a page of ended runs does not change (but for an operator's
    /// retry, which forgets it), so a big broadcast's progress reads only the rest.
    settled: Mutex<std::collections::HashMap<String, Settled>>,
}

/// See [`Broadcaster::settled`].
#[derive(Debug, Clone, Default)]
struct Settled {
    /// The schedule it belongs to (a broadcast scheduled again starts afresh).
    scheduled_at: i64,
    /// The first recipient (snapshot sequence) not in `part`.
    upto: u64,
    /// The progress of the recipients before it.
    part: Progress,
}

impl Broadcaster {
    /// Forget what is known of settled recipients (an operator changed a run that had
    /// ended).
    pub(crate) fn forget_progress(&self) {
        self.settled.locked().clear();
    }

    fn poke(&self) {
        self.wakeup.poke();
    }

    fn sleep(&self, timeout: Duration) {
        self.wakeup.sleep(timeout);
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
    /// Recipients waiting for an A/B test's winner.
    pub held: u64,
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
            test: match (spec.test_share, &spec.winner) {
                (Some(share), Some(rule)) => Some(AbTest {
                    share,
                    metric: rule.metric.clone(),
                    after_ms: rule.after_ms,
                    arms: spec.arms.iter().map(|(a, _)| a.clone()).collect(),
                    testers_started_at: None,
                    decision: None,
                }),
                _ => None,
            },
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
        let spec = wf.loaded.decl.broadcast.clone().unwrap_or_default();
        // Seeds of a tested broadcast see the arms as the testers do.
        let arms = spec.test_share.map(|_| {
            let names: Vec<String> = spec.arms.iter().map(|(a, _)| a.clone()).collect();
            (arm_weights(&names, None), "seed")
        });
        let batch = self.store.next_id()?;
        let mut runs = Vec::new();
        let (tx, rx) = mpsc::channel();
        for c in contacts {
            let run = format!("bc-{name}-seed{batch:x}-{c}");
            self.send_job(
                c,
                Job::Broadcast {
                    version: wf.clone(),
                    recipients: vec![(c.clone(), Some(run.clone()))],
                    arms: arms.clone(),
                    done: tx.clone(),
                },
            )?;
            runs.push(run);
        }
        drop(tx);
        for _ in 0..contacts.len() {
            if rx.recv().map_err(|_| EngineError::Stopped)? > 0 {
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
                // Once a test is decided, the rest of the audience gets the winner.
                let decided = self.broadcast_record(name)?.and_then(|r| {
                    let t = r.test?;
                    let d = t.decision?;
                    (!is_tester(name, &contact.id, t.share)).then_some(d.winner)
                });
                let arm = decided
                    .unwrap_or_else(|| crate::engine::pick_variant(&contact.id, name, &arms));
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
        let test = record.test.as_ref();
        // Start after the pages already settled (a broadcast without a test).
        let memo = match test {
            None => self.broadcaster.settled.locked().get(&record.name).cloned(),
            Some(_) => None,
        }
        .filter(|m| m.scheduled_at == record.scheduled_at && m.upto <= record.dispatched)
        .unwrap_or_default();
        let mut p = memo.part;
        p.recipients = record.recipients;
        let mut from = memo.upto;
        let mut settling = test.is_none();
        loop {
            let page = self.store.recipients(&record.name, from, PAGE)?;
            let Some((last, _)) = page.last() else { break };
            let full = page.len() == PAGE && *last < record.dispatched;
            from = last + 1;
            let mut page_settled = true;
            for (seq, contact) in page {
                // Whether this recipient's run is meant to be started by now.
                let (due, held) = match test {
                    None if seq >= record.dispatched => return Ok(p),
                    None => (true, false),
                    Some(t) => {
                        let tester = is_tester(&record.name, &contact, t.share);
                        match (&t.decision, tester) {
                            (None, true) => (
                                t.testers_started_at.is_some() || seq < record.dispatched,
                                false,
                            ),
                            (None, false) => (false, record.status != BroadcastStatus::Cancelled),
                            (Some(_), true) => (true, false),
                            (Some(_), false) => (
                                record.status == BroadcastStatus::Completed
                                    || seq < record.dispatched,
                                false,
                            ),
                        }
                    }
                };
                match self.recipient_run(&record.name, &contact)? {
                    Some(run) => {
                        page_settled &= matches!(
                            run.status,
                            RunStatus::Completed
                                | RunStatus::Converted
                                | RunStatus::Exited
                                | RunStatus::Failed
                        );
                        p.started += 1;
                        count_run(&mut p, &run, &self.store.journal(&run.id)?);
                    }
                    None if due => {
                        page_settled = false;
                        p.started += 1;
                        p.gone += 1;
                    }
                    None if held => p.held += 1,
                    None => page_settled = false,
                }
            }
            settling &= page_settled && full;
            if settling {
                self.broadcaster.settled.locked().insert(
                    record.name.clone(),
                    Settled {
                        scheduled_at: record.scheduled_at,
                        upto: from,
                        part: p.clone(),
                    },
                );
            }
        }
        Ok(p)
    }

    /// A recipient's run: under the contact it is now (after a merge) or the one the snapshot
    /// names.
    fn recipient_run(
        &self,
        broadcast: &str,
        contact: &str,
    ) -> Result<Option<crate::model::Run>, EngineError> {
        if let Some(c) = self.live_contact(contact)? {
            if let Some(r) = self.store.run(&run_id(broadcast, &c.id))? {
                return Ok(Some(r));
            }
        }
        Ok(self.store.run(&run_id(broadcast, contact))?)
    }

    /// Each arm's numbers among the testers of a broadcast's A/B test: which arm each
    /// tester's run took, whether its message was sent, and whether it reached the metric
    /// (a human open or click of that message, or the broadcast's goal). From the arms'
    /// analytics counters (folded first), or without analytics from every tester's run.
    pub fn test_results(
        &self,
        record: &BroadcastRecord,
    ) -> Result<BTreeMap<String, ArmResult>, EngineError> {
        let Some(t) = &record.test else {
            return Ok(BTreeMap::new());
        };
        let mut out: BTreeMap<String, ArmResult> = t
            .arms
            .iter()
            .map(|a| (a.clone(), ArmResult::default()))
            .collect();
        // With analytics, the arms' counters have it all (the testers are the arm's scope:
        // the rest's sends count apart); without, every tester's run and timeline is read.
        if self.store.notes_facts() {
            let store = self.store.as_ref();
            self.analytics.fold_all(store)?;
            for (arm, r) in out.iter_mut() {
                let scope = format!("arm:{}:{arm}", record.name);
                let n = crate::analytics::numbers(store, &scope, Default::default())?;
                let c = |m: &str| n.counts.get(m).copied().unwrap_or(0);
                r.testers = c("sent") + c("skipped") + c("failed");
                r.sent = c("sent");
                r.reached = c(&t.metric).min(r.sent);
                r.rate = if r.sent == 0 {
                    0.0
                } else {
                    r.reached as f64 / r.sent as f64
                };
            }
            return Ok(out);
        }
        let channel = record.channel.clone().unwrap_or_default();
        let hit_event = format!("{channel}_{}", t.metric);
        let fact_prefix = format!("engagement:{channel}:");
        let mut from = 0;
        loop {
            let page = self.store.recipients(&record.name, from, PAGE)?;
            let Some((last, _)) = page.last() else { break };
            from = last + 1;
            for (_, contact) in page {
                if !is_tester(&record.name, &contact, t.share) {
                    continue;
                }
                let Some(run) = self.recipient_run(&record.name, &contact)? else {
                    continue;
                };
                let journal = self.store.journal(&run.id)?;
                let Some(arm) = journal
                    .iter()
                    .find(|s| s.kind == "variant" && s.status == StepStatus::Done)
                    .and_then(|s| s.result.as_str())
                else {
                    continue;
                };
                let Some(result) = out.get_mut(arm) else {
                    continue;
                };
                let sends = || journal.iter().filter(|s| s.kind == "send");
                if sends().any(|s| matches!(s.status, StepStatus::Done | StepStatus::Failed)) {
                    result.testers += 1;
                }
                let sent = sends().any(|s| {
                    s.status == StepStatus::Done
                        && s.result.get("status").and_then(Value::as_str) != Some("skipped")
                });
                if !sent {
                    continue;
                }
                result.sent += 1;
                let reached = match t.metric.as_str() {
                    "converted" => run.converted_at.is_some(),
                    // Herald's own facts only (a client cannot send these messageIds).
                    _ => self.store.events_of(&run.contact)?.iter().any(|e| {
                        e.event == hit_event
                            && e.properties.get("run").and_then(Value::as_str) == Some(&run.id)
                            && e.message_id
                                .as_deref()
                                .is_some_and(|m| m.starts_with(&fact_prefix))
                    }),
                };
                result.reached += u64::from(reached);
            }
        }
        for r in out.values_mut() {
            r.rate = if r.sent == 0 {
                0.0
            } else {
                r.reached as f64 / r.sent as f64
            };
        }
        Ok(out)
    }

    /// The arm the sequential test picks among a testing broadcast's testers, from the
    /// analytics counters (none while analytics is off or the test is undecided).
    pub(crate) fn sequential_winner(
        &self,
        r: &BroadcastRecord,
    ) -> Result<Option<String>, EngineError> {
        let Some(t) = r.test.as_ref().filter(|t| t.decision.is_none()) else {
            return Ok(None);
        };
        if !self.store.notes_facts() {
            return Ok(None);
        }
        self.analytics.fold_all(self.store.as_ref())?;
        let arms: Vec<(String, String)> = t
            .arms
            .iter()
            .map(|a| (a.clone(), format!("arm:{}:{a}", r.name)))
            .collect();
        let data = crate::analytics::arm_data(self.store.as_ref(), &arms, &t.metric)?;
        Ok(crate::analytics::experiments::decide(
            &data,
            crate::analytics::experiments::ALPHA,
        ))
    }

    /// Decide a testing broadcast's A/B test now: `arm` when an operator names one, else the
    /// arm with the highest rate of the declared metric (a tie goes to the arm first by
    /// name). The rest of the audience then receives the winner.
    pub fn decide_broadcast(
        &self,
        name: &str,
        arm: Option<&str>,
    ) -> Result<BroadcastRecord, EngineError> {
        self.decide(name, arm, "operator")
    }

    fn decide(
        &self,
        name: &str,
        arm: Option<&str>,
        by: &str,
    ) -> Result<BroadcastRecord, EngineError> {
        let r = self.broadcast_record(name)?.ok_or_else(|| {
            EngineError::Invalid(format!("broadcast \"{name}\" is not scheduled"))
        })?;
        let Some(t) = &r.test else {
            return Err(EngineError::Invalid(format!(
                "broadcast \"{name}\" has no A/B test (declare .test_share(...) and .winner(...))"
            )));
        };
        if r.status != BroadcastStatus::Testing {
            return Err(EngineError::Invalid(format!(
                "broadcast \"{name}\" is {}: a test is decided once every tester's message is started (status testing)",
                status_name(r.status)
            )));
        }
        if let Some(a) = arm {
            if !t.arms.iter().any(|x| x == a) {
                return Err(EngineError::Invalid(format!(
                    "broadcast \"{name}\" has no arm \"{a}\" (its arms: {})",
                    t.arms.join(", ")
                )));
            }
        }
        let results = self.test_results(&r)?;
        let winner = match arm {
            Some(a) => a.to_string(),
            None => {
                let mut best: Option<(&String, f64)> = None;
                for a in &t.arms {
                    let rate = results.get(a).map(|x| x.rate).unwrap_or(0.0);
                    if best.is_none_or(|(_, b)| rate > b) {
                        best = Some((a, rate));
                    }
                }
                best.map(|(a, _)| a.clone()).unwrap_or_default()
            }
        };
        let now = self.clock.now_ms();
        let decision = TestDecision {
            winner: winner.clone(),
            decided_at: now,
            by: by.to_string(),
            arms: results,
        };
        let moved = self.advance_with(name, BroadcastStatus::Testing, Vec::new(), |r| {
            if let Some(t) = r.test.as_mut() {
                t.decision = Some(decision);
            }
            r.status = BroadcastStatus::Sending;
            r.dispatched = 0;
        })?;
        if !moved {
            return Err(EngineError::Invalid(format!(
                "broadcast \"{name}\" changed while its test was being decided; try again"
            )));
        }
        tracing::info!(
            broadcast = name,
            winner,
            by,
            "broadcast test decided; sending the winner to the rest"
        );
        self.broadcaster.poke();
        self.broadcast_record(name)?
            .ok_or_else(|| EngineError::Invalid(format!("broadcast \"{name}\" vanished")))
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
                BroadcastStatus::Testing => {
                    let due = r.test.as_ref().and_then(AbTest::due_at);
                    // Before its time, the sequential test may already say which arm wins.
                    if let Some(w) = self.sequential_winner(&r)? {
                        return match self.decide(&r.name, Some(&w), "sequential test") {
                            Ok(_) => Ok(Duration::ZERO),
                            Err(EngineError::Invalid(e)) => {
                                tracing::debug!(broadcast = r.name, e, "not decided");
                                Ok(Duration::from_millis(200))
                            }
                            Err(e) => Err(e),
                        };
                    }
                    match due {
                        Some(due) if due <= self.clock.now_ms() => {
                            match self.decide(&r.name, None, "metric") {
                                Ok(_) => true,
                                // An operator decided or paused it meanwhile.
                                Err(EngineError::Invalid(e)) => {
                                    tracing::debug!(broadcast = r.name, e, "not decided");
                                    false
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        _ => false,
                    }
                }
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
            if let Some(t) = r.test.as_ref().filter(|t| t.decision.is_none()) {
                // The testers' runs are all started: the test's clock starts.
                let now = self.clock.now_ms();
                let due = now.saturating_add(t.after_ms);
                let moved =
                    self.advance_with(&name, BroadcastStatus::Sending, Vec::new(), |r| {
                        r.status = BroadcastStatus::Testing;
                        r.dispatched = 0;
                        if let Some(t) = r.test.as_mut() {
                            t.testers_started_at = Some(now);
                        }
                    })?;
                if moved {
                    tracing::info!(
                        broadcast = name,
                        decided_at = due,
                        "broadcast testers started; the winner is decided then"
                    );
                }
                return Ok(false);
            }
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
        // An A/B test's first pass starts the testers with every arm; its second pass the
        // rest with the winner.
        // (weights, phase) of the runs, and (share, whether testers are wanted).
        let (arms, pass) = match &r.test {
            None => (None, None),
            Some(t) => match &t.decision {
                None => (
                    Some((arm_weights(&t.arms, None), "test")),
                    Some((t.share, true)),
                ),
                Some(d) => (
                    Some((arm_weights(&t.arms, Some(&d.winner)), "winner")),
                    Some((t.share, false)),
                ),
            },
        };
        let take =
            |c: &str| pass.is_none_or(|(share, testers)| is_tester(&r.name, c, share) == testers);
        // One job per worker with its recipients of the page, in the page's order.
        let mut by_worker: BTreeMap<usize, Vec<(String, Option<String>)>> = BTreeMap::new();
        let mut n = 0;
        for (_, contact) in page.iter().filter(|(_, c)| take(c)) {
            by_worker
                .entry(self.worker_of(contact))
                .or_default()
                .push((contact.clone(), None));
            n += 1;
        }
        // In jobs of a hundred, so the send results a worker serves between jobs wait little.
        let mut jobs = 0;
        for (worker, recipients) in by_worker {
            for chunk in recipients.chunks(RECIPIENTS_PER_JOB) {
                self.send_job_to(
                    worker,
                    Job::Broadcast {
                        version: version.clone(),
                        recipients: chunk.to_vec(),
                        arms: arms.clone(),
                        done: tx.clone(),
                    },
                )?;
                jobs += 1;
            }
        }
        drop(tx);
        let mut failed = 0;
        for _ in 0..jobs {
            failed += rx.recv().map_err(|_| EngineError::Stopped)?;
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
        arms: Option<(Value, &'static str)>,
    ) -> Result<(), EngineError> {
        let Some(c) = self.live_contact(contact)? else {
            return Ok(());
        };
        let name = &version.loaded.decl.name;
        let seed = run.is_some();
        let id = run.unwrap_or_else(|| run_id(name, &c.id));
        let mut properties = json!({"broadcast": name, "seed": seed});
        if let Some((weights, phase)) = arms {
            properties["arms"] = weights;
            properties["phase"] = json!(phase);
        }
        let trigger = json!({"type": "broadcast", "event": "broadcast",
            "properties": properties, "timestamp": self.clock.now_ms()});
        self.start_run(version, &c, trigger, id, false)?;
        Ok(())
    }
}

/// The weights a tested broadcast's run picks its arm with: every arm evenly, or the
/// winner's alone.
fn arm_weights(arms: &[String], winner: Option<&str>) -> Value {
    Value::Object(
        arms.iter()
            .map(|a| {
                let w = match winner {
                    Some(w) => u32::from(w == a),
                    None => 1,
                };
                (a.clone(), json!(w))
            })
            .collect(),
    )
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
        BroadcastStatus::Testing => "testing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipient_run_is_told_from_a_workflow_run_named_like_one() {
        assert!(is_recipient_run(&run_id("spring", "c_00000000002a")));
        assert!(is_recipient_run(&run_id("spring-sale", "c_00000000002a")));
        // A workflow called `bc-promo`: its event, manual and chained runs.
        assert!(!is_recipient_run("bc-promo-000000000000002a"));
        assert!(!is_recipient_run("bc-promo-m0000000000002a"));
        assert!(!is_recipient_run("bc-promo-after-bc-spring-c_00000000002a"));
        assert!(!is_recipient_run("welcome-000000000000002a"));
    }
}
