//! Storage behind a trait, with sled as the embedded default.
//!
//! Keys are laid out so that every query the engine makes is a point read or a prefix/range
//! scan: a contact's events and runs by contact prefix, a run's journal by run prefix, due
//! timers by big-endian due time. Writes are not flushed individually; durability points call
//! [`Flusher`], which batches concurrent requests into one fsync (group commit).

use crate::sync::LockExt as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{
    AudienceState, ConsentRecord, Contact, Entry, Event, EventFact, InboxItem, Intent,
    ProviderMessage, Run, RunSummary, ScriptVersion, SegmentChange, Step, StepSummary, Suppression,
    WaitReg,
};

mod batch;
mod codec;
#[cfg(any(test, feature = "test-hooks"))]
pub mod conformance;
mod flusher;
mod sled_backend;

pub use self::batch::{Write, WriteBatch};
/// The compact binary form an event is stored in (`herald bench` writes its raw-sled reference
/// records with it).
pub use self::codec::enc_event;
pub(crate) use self::codec::{dec_audience, enc_audience};
pub use self::flusher::Flusher;
pub use self::sled_backend::SledStore;
#[allow(unused_imports)]
use self::{batch::*, codec::*, flusher::*, sled_backend::*};

/// Storage errors. No backend's own types appear here, so a server database reports failures
/// the same way as the embedded one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage backend failed (I/O, a damaged database, a lost connection).
    #[error("storage: {0}")]
    Backend(String),
    /// A record could not be encoded or decoded.
    #[error("storage record: {0}")]
    Codec(String),
    /// The data directory was written by a Herald with another record layout.
    #[error("{0}")]
    Layout(String),
    /// A record's bytes do not decode.
    #[error("storage record: {0}")]
    Corrupt(String),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Codec(e.to_string())
    }
}

impl From<postcard::Error> for StoreError {
    fn from(e: postcard::Error) -> Self {
        StoreError::Codec(e.to_string())
    }
}

/// The record layout this build reads and writes; a data directory records the layout it was
/// created with, and a different one is refused at open instead of failing record by record.
pub const LAYOUT: &str = "5";

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which kind of external id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    /// Segment `userId`.
    User,
    /// Segment `anonymousId`.
    Anonymous,
}

/// A due timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// Due time, ms since the epoch.
    pub due: i64,
    /// What it wakes.
    pub target: TimerTarget,
    /// Its contact (to pick the worker without a read).
    pub contact: String,
}

/// What a timer wakes when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerTarget {
    /// A run: a `wait`, a `wait_for` timeout, a retry after a failed activation.
    Run(String),
    /// The audience of a contact (the timer's contact): segments whose counting window runs
    /// out, score decay crossing a stage threshold.
    Audience(String),
}

impl TimerTarget {
    /// How an audience target is stored: a prefix no run id can have.
    const AUDIENCE: &'static str = "~audience:";

    /// The stored form: the run id, or `~audience:` and the contact.
    pub fn encode(&self) -> String {
        match self {
            TimerTarget::Run(run) => run.clone(),
            TimerTarget::Audience(contact) => format!("{}{contact}", Self::AUDIENCE),
        }
    }

    /// Read the stored form back.
    pub fn decode(stored: &str) -> TimerTarget {
        match stored.strip_prefix(Self::AUDIENCE) {
            Some(contact) => TimerTarget::Audience(contact.to_string()),
            None => TimerTarget::Run(stored.to_string()),
        }
    }
}

impl std::fmt::Display for TimerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimerTarget::Run(run) => write!(f, "run {run}"),
            TimerTarget::Audience(contact) => write!(f, "audience of {contact}"),
        }
    }
}

/// Counts a backend may save at a clean shutdown so that the next start need not scan for
/// them: part of a backend's own lifecycle, not of the storage contract.
pub trait CountCheckpoint {
    /// Record, at a clean shutdown, the counts a start would otherwise scan for (contacts,
    /// timers, and the given runs by status and segment sizes). The next open uses them once;
    /// any later write that changes a count withdraws them first, so they are never stale.
    fn save(
        &self,
        runs: &BTreeMap<String, i64>,
        segments: &BTreeMap<String, i64>,
    ) -> StoreResult<()>;
    /// Runs by status as saved by the clean shutdown this store was opened after (once).
    fn take_runs(&self) -> Option<BTreeMap<String, i64>>;
    /// Segment sizes as saved by the clean shutdown this store was opened after (once).
    fn take_segments(&self) -> Option<BTreeMap<String, i64>>;
}

/// Everything the daemon stores. A server database replaces the embedded one ([`SledStore`])
/// by implementing this trait; [`conformance`] (test builds) checks an implementation.
///
/// # The contract
///
/// 1. Implementations are shared across threads (`Send + Sync`); every call blocks until done,
///    so async code calls the store off its async threads (`spawn_blocking`).
/// 2. A write is visible to every read that starts after the call returned.
/// 3. Writes become durable at [`Store::flush`] (the daemon's group commit calls it for many
///    writers at once). After a crash, what is stored is a prefix of the writes in the order
///    their calls returned: every write before the last completed flush, and possibly some
///    after it, never a later write without the earlier ones.
/// 4. A single write is atomic. [`Store::apply`] makes a [`WriteBatch`] atomic: after a crash
///    either every write of the batch is stored or none is (one transaction on a server
///    database). Where correctness needs several writes to land together, they go in a batch.
/// 5. Ids from [`Store::next_id`] are unique and increase, across restarts too.
/// 6. Counts ([`Store::contact_count`], [`Store::timer_count`]) are exact at every moment.
/// 7. Errors say what failed in [`StoreError`]'s words; no backend's types cross the trait.
pub trait Store: Send + Sync + 'static {
    /// A new unique, increasing number.
    fn next_id(&self) -> StoreResult<u64>;
    /// Make every write so far durable.
    fn flush(&self) -> StoreResult<()>;
    /// Store every write of `batch`, all or nothing across a crash (rule 4).
    fn apply(&self, batch: &WriteBatch) -> StoreResult<()>;

    /// Read a contact.
    fn contact(&self, id: &str) -> StoreResult<Option<Contact>>;
    /// Write a contact.
    fn put_contact(&self, contact: &Contact) -> StoreResult<()>;
    /// Number of contacts (merged ones included).
    fn contact_count(&self) -> StoreResult<usize>;
    /// The contact an external id belongs to.
    fn identity(&self, kind: IdKind, id: &str) -> StoreResult<Option<String>>;
    /// Point an external id at a contact.
    fn link_identity(&self, kind: IdKind, id: &str, contact: &str) -> StoreResult<()>;

    /// Append an event to a contact's timeline.
    fn put_event(&self, contact: &str, event: &Event) -> StoreResult<()>;
    /// Append many events at once (one batch).
    fn put_events(&self, events: &[(String, Event)]) -> StoreResult<()> {
        for (c, e) in events {
            self.put_event(c, e)?;
        }
        Ok(())
    }
    /// Record the `messageId`s of one request, accepted at `at`, as one record (the dedupe
    /// window is kept in memory and rebuilt from these at start; see `dedupe`).
    fn log_message_ids(&self, at: i64, ids: &[String]) -> StoreResult<()>;
    /// Every `messageId` logged at or after `since`, with its time, oldest first.
    fn message_ids_since(&self, since: i64, f: &mut dyn FnMut(i64, &str)) -> StoreResult<()>;
    /// Drop records of `messageId`s logged before `before`, at most `limit` records; how many
    /// went.
    fn expire_message_ids(&self, before: i64, limit: usize) -> StoreResult<usize>;
    /// One event.
    fn event(&self, contact: &str, seq: u64) -> StoreResult<Option<Event>>;
    /// The most recent events of a contact, newest first.
    fn recent_events(&self, contact: &str, limit: usize) -> StoreResult<Vec<Event>>;
    /// Move every event of `from` to `to` (identity merge).
    fn move_events(&self, from: &str, to: &str) -> StoreResult<()>;

    /// Queue the accepted events of one request for the engine, as one record under `key`.
    fn push_inbox(&self, key: u64, items: &[InboxItem]) -> StoreResult<()>;
    /// Every queued record, oldest first.
    fn inbox(&self) -> StoreResult<Vec<(u64, Vec<InboxItem>)>>;
    /// The engine finished every event of a queued record.
    fn remove_inbox(&self, key: u64) -> StoreResult<()>;

    /// Read a run.
    fn run(&self, id: &str) -> StoreResult<Option<Run>>;
    /// Write a new run: its contact index key, then its first record.
    fn create_run(&self, run: &Run) -> StoreResult<()>;
    /// Rewrite a run created by [`Store::create_run`].
    fn put_run(&self, run: &Run) -> StoreResult<()>;
    /// Runs of a contact.
    fn runs_of_contact(&self, contact: &str) -> StoreResult<Vec<Run>>;
    /// Every run, in id order, passed to `f` until it returns false.
    fn scan_runs(&self, f: &mut dyn FnMut(Run) -> bool) -> StoreResult<()>;
    /// Last entry of a contact into a workflow: its most recently started run (recorded by
    /// [`Store::put_run`] when the run is first written).
    fn entry(&self, workflow: &str, contact: &str) -> StoreResult<Option<Entry>>;

    /// A run's journal, in step order.
    fn journal(&self, run: &str) -> StoreResult<Vec<Step>>;
    /// What the analytics fold reads of a run (a backend may decode only that).
    fn run_summary(&self, id: &str) -> StoreResult<Option<RunSummary>> {
        Ok(self.run(id)?.map(|r| RunSummary::of(&r)))
    }
    /// What the analytics fold reads of a run's journal, in step order (a backend may
    /// decode only that, not the rendered messages).
    fn journal_summary(&self, run: &str) -> StoreResult<Vec<StepSummary>> {
        Ok(self.journal(run)?.iter().map(StepSummary::of).collect())
    }
    /// Write one journal step.
    fn put_step(&self, run: &str, step: &Step) -> StoreResult<()>;

    /// Schedule an activation.
    fn set_timer(&self, timer: &Timer) -> StoreResult<()>;
    /// Cancel a scheduled activation.
    fn clear_timer(&self, due: i64, target: &TimerTarget) -> StoreResult<()>;
    /// Timers due at or before `now`, earliest first, at most `limit`.
    fn due_timers(&self, now: i64, limit: usize) -> StoreResult<Vec<Timer>>;
    /// The earliest timer, if any.
    fn next_timer(&self) -> StoreResult<Option<i64>>;
    /// Number of pending timers.
    fn timer_count(&self) -> StoreResult<usize>;
    /// The backend's shutdown checkpoint of counts, if it keeps one (the embedded store does,
    /// so a start need not scan; a server database can count with a query and has none).
    fn checkpoint(&self) -> Option<&dyn CountCheckpoint> {
        None
    }

    /// Register a run waiting for an event of a contact.
    fn put_wait(&self, contact: &str, event: &str, wait: &WaitReg) -> StoreResult<()>;
    /// Runs waiting for this event of this contact.
    fn waits(&self, contact: &str, event: &str) -> StoreResult<Vec<WaitReg>>;
    /// Remove a wait registration.
    fn remove_wait(&self, contact: &str, event: &str, run: &str) -> StoreResult<()>;
    /// Re-home every wait of `from` to `to` (identity merge).
    fn move_waits(&self, from: &str, to: &str) -> StoreResult<()>;

    /// Store a script version (content-addressed; storing twice is harmless).
    fn put_script(&self, version: &ScriptVersion) -> StoreResult<()>;
    /// Read a script version.
    fn script(&self, hash: &str) -> StoreResult<Option<ScriptVersion>>;
    /// Every stored script version.
    fn scripts(&self) -> StoreResult<Vec<ScriptVersion>>;

    /// Record an effect's intent.
    fn put_intent(&self, key: &str, intent: &Intent) -> StoreResult<()>;
    /// Drop an intent once its result is recorded.
    fn remove_intent(&self, key: &str) -> StoreResult<()>;
    /// Every intent without a result.
    fn intents(&self) -> StoreResult<Vec<(String, Intent)>>;
    /// One intent, if it is still there.
    fn intent(&self, key: &str) -> StoreResult<Option<Intent>>;

    /// Every event of a contact, oldest first.
    fn events_of(&self, contact: &str) -> StoreResult<Vec<Event>>;
    /// Name and time (and raw properties) of every event of a contact, oldest first.
    fn event_facts(&self, contact: &str) -> StoreResult<Vec<EventFact>>;
    /// Contact ids after `after` (exclusive), in id order, at most `limit` (for backfills).
    fn contact_ids(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>>;
    /// Current members of a segment, at most `limit`, most recently entered first: the
    /// contacts whose latest logged change is an entry. (Membership records themselves live in
    /// each contact's [`AudienceState`]; the change log is the only per-segment index.)
    fn members(&self, segment: &str, limit: usize) -> StoreResult<Vec<String>>;
    /// Number of current members of a segment, by one pass over its change log (start-up
    /// after a crash; the daemon keeps the sizes in memory afterwards).
    fn member_count(&self, segment: &str) -> StoreResult<usize>;
    /// Record an entry or exit.
    fn log_segment_change(&self, segment: &str, change: &SegmentChange) -> StoreResult<()> {
        self.log_segment_changes(segment, std::slice::from_ref(change))
    }
    /// Record entries and exits of one segment, oldest first, in one write (a worker logs
    /// each segment's changes of a batch of jobs together).
    fn log_segment_changes(&self, segment: &str, changes: &[SegmentChange]) -> StoreResult<()>;
    /// Most recent entries and exits of a segment, newest first.
    fn segment_changes(&self, segment: &str, limit: usize) -> StoreResult<Vec<SegmentChange>>;
    /// Every record of every segment's change log, in key order (segment, then sequence):
    /// `f(segment, sequence, changes)` until it returns false (an analytics rebuild).
    fn scan_segment_log(
        &self,
        f: &mut dyn FnMut(&str, u64, &[SegmentChange]) -> bool,
    ) -> StoreResult<()>;
    /// A contact's audience state.
    fn audience(&self, contact: &str) -> StoreResult<Option<AudienceState>>;
    /// Write a contact's audience state.
    fn put_audience(&self, contact: &str, state: &AudienceState) -> StoreResult<()> {
        self.put_audience_encoded(contact, enc_audience(state)?)
    }
    /// Write a contact's audience state encoded by [`enc_audience`].
    fn put_audience_encoded(&self, contact: &str, encoded: Vec<u8>) -> StoreResult<()>;
    /// Whose message the provider's id `provider_id` on `channel` names, if Herald sent it
    /// (written with the send's result: [`Write::ProviderMessage`]).
    fn provider_message(
        &self,
        channel: &str,
        provider_id: &str,
    ) -> StoreResult<Option<ProviderMessage>>;
    /// A small persistent setting.
    fn meta(&self, key: &str) -> StoreResult<Option<String>>;
    /// Write a small persistent setting.
    fn put_meta(&self, key: &str, value: &str) -> StoreResult<()>;
    /// Every setting whose key starts with `prefix`, in key order.
    fn meta_with_prefix(&self, prefix: &str) -> StoreResult<Vec<(String, String)>>;

    /// Up to `limit` recipients of a broadcast's audience snapshot, numbered `from` on, in
    /// order: (number, contact id).
    fn recipients(
        &self,
        broadcast: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, String)>>;

    /// Drop a broadcast's audience snapshot (once it has finished).
    fn clear_recipients(&self, broadcast: &str) -> StoreResult<()>;

    /// Whether records note their analytics facts (`[analytics] enabled`).
    fn notes_facts(&self) -> bool {
        false
    }

    /// Seal the open generation of noted analytics facts if it holds any: writes note their
    /// facts into a new generation from then on, and this returns once every write noting
    /// into the sealed one is done (so each of its facts has its record stored, or never
    /// will). Whether a generation was sealed.
    fn seal_facts(&self) -> StoreResult<bool>;

    /// The oldest sealed generation of noted facts, if there is one.
    fn sealed_facts(&self) -> StoreResult<Option<u64>>;

    /// The facts of a sealed `generation` as (id, fact as JSON), in id order, after id
    /// `after`, at most `limit`.
    fn facts_of(
        &self,
        generation: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Drop a sealed generation the fold has taken whole, at the cost of its pages rather
    /// than of its facts.
    fn drop_facts(&self, generation: u64) -> StoreResult<()>;

    /// A value of the analytics keyspace (written with [`Write::Analytics`]).
    fn analytics_get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;

    /// Put entries of the analytics keyspace, each its own write, in order (not atomic
    /// together: for records a later atomic batch makes visible).
    fn put_analytics(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> StoreResult<()> {
        for (key, value) in entries {
            let mut batch = WriteBatch::new();
            batch.push(Write::Analytics {
                key,
                value: Some(value),
            });
            self.apply(&batch)?;
        }
        Ok(())
    }

    /// Entries of the analytics keyspace whose key starts with `prefix`, in key order, from
    /// key `from` (inclusive) on, at most `limit`.
    fn analytics_scan(
        &self,
        prefix: &[u8],
        from: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>>;

    /// A contact's consent records, one per topic it has one for, in topic order
    /// (written with [`Write::Consent`]).
    fn consent(&self, contact: &str) -> StoreResult<Vec<ConsentRecord>>;
    /// The suppression of a normalized `address` on `channel`, if it is suppressed (written
    /// with [`Write::Suppress`], lifted with [`Write::Unsuppress`]).
    fn suppression(&self, channel: &str, address: &str) -> StoreResult<Option<Suppression>>;
    /// Suppressed addresses of `channel` in address order, after `after`, at most `limit`.
    fn suppressions(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suppression>>;
}

#[cfg(test)]
mod tests;
