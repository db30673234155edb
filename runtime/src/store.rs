//! Storage behind a trait, with sled as the embedded default.
//!
//! Keys are laid out so that every query the engine makes is a point read or a prefix/range
//! scan: a contact's events and runs by contact prefix, a run's journal by run prefix, due
//! timers by big-endian due time. Writes are not flushed individually; durability points call
//! [`Flusher`], which batches concurrent requests into one fsync (group commit).

use crate::sync::LockExt as _;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{
    AudienceState, Contact, Entry, Event, EventFact, InboxItem, Intent, Run, ScriptVersion,
    SegmentChange, Step, WaitReg,
};

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be (de)serialised.
    #[error("storage record: {0}")]
    Codec(#[from] serde_json::Error),
    /// A binary record could not be (de)serialised.
    #[error("storage record: {0}")]
    Binary(#[from] postcard::Error),
    /// The data directory was written by a Herald with another record layout.
    #[error("{0}")]
    Layout(String),
    /// A record's bytes do not decode.
    #[error("storage record: {0}")]
    Corrupt(String),
}

/// The record layout this build reads and writes; a data directory records the layout it was
/// created with, and a different one is refused at open instead of failing record by record.
pub const LAYOUT: &str = "5";

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which kind of external id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Everything the daemon stores. Implementations must be safe to share across threads.
/// A server database can replace the embedded one by implementing this trait.
pub trait Store: Send + Sync + 'static {
    /// A new unique, increasing number.
    fn next_id(&self) -> StoreResult<u64>;
    /// Make every write so far durable.
    fn flush(&self) -> StoreResult<()>;

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
    /// Markers of a data directory from before the dedupe log (one key per id): handed over
    /// once, so the caller can log them, then cleared with `clear_legacy_message_ids`.
    fn legacy_message_ids(&self) -> StoreResult<Vec<String>>;
    /// Remove the legacy markers.
    fn clear_legacy_message_ids(&self) -> StoreResult<()>;
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
    /// Record, at a clean shutdown, the counts a start would otherwise scan for (contacts,
    /// timers, and the given runs by status and segment sizes). The next open uses them once;
    /// any later write that changes a count withdraws them first, so they are never stale.
    fn save_checkpoint(
        &self,
        runs: &BTreeMap<String, i64>,
        segments: &BTreeMap<String, i64>,
    ) -> StoreResult<()>;
    /// Runs by status as saved by the clean shutdown this store was opened after (once).
    fn take_checkpointed_runs(&self) -> Option<BTreeMap<String, i64>>;
    /// Segment sizes as saved by the clean shutdown this store was opened after (once).
    fn take_checkpointed_segments(&self) -> Option<BTreeMap<String, i64>>;

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
    /// A contact's audience state.
    fn audience(&self, contact: &str) -> StoreResult<Option<AudienceState>>;
    /// Write a contact's audience state.
    fn put_audience(&self, contact: &str, state: &AudienceState) -> StoreResult<()> {
        self.put_audience_encoded(contact, enc_audience(state)?)
    }
    /// Write a contact's audience state encoded by [`enc_audience`].
    fn put_audience_encoded(&self, contact: &str, encoded: Vec<u8>) -> StoreResult<()>;
    /// A small persistent setting.
    fn meta(&self, key: &str) -> StoreResult<Option<String>>;
    /// Write a small persistent setting.
    fn put_meta(&self, key: &str, value: &str) -> StoreResult<()>;
}

/// The embedded store.
pub struct SledStore {
    db: sled::Db,
    contacts: sled::Tree,
    identities: sled::Tree,
    events: sled::Tree,
    /// Legacy: one marker per `messageId` (read once, then cleared).
    message_ids: sled::Tree,
    /// `messageId`s per request, keyed by time and sequence.
    dedupe: sled::Tree,
    inbox: sled::Tree,
    runs: sled::Tree,
    runs_by_contact: sled::Tree,
    journal: sled::Tree,
    timers: sled::Tree,
    waits: sled::Tree,
    scripts: sled::Tree,
    outbox: sled::Tree,
    segment_log: sled::Tree,
    audience: sled::Tree,
    meta: sled::Tree,
    /// Stored contacts, kept exact from insert results so status and metrics are O(1).
    contact_total: AtomicUsize,
    /// Pending timers, likewise.
    timer_total: AtomicUsize,
    /// A clean-shutdown checkpoint is stored and must be withdrawn before a counted change.
    checkpointed: AtomicBool,
    checkpoint_lock: Mutex<()>,
    /// Runs by status from the checkpoint this store was opened with.
    checkpointed_runs: Mutex<Option<BTreeMap<String, i64>>>,
    /// Segment sizes from that checkpoint.
    checkpointed_segments: Mutex<Option<BTreeMap<String, i64>>>,
}

/// Counts saved at a clean shutdown (meta key `checkpoint`).
#[derive(Serialize, serde::Deserialize)]
struct Checkpoint {
    contacts: usize,
    timers: usize,
    runs: BTreeMap<String, i64>,
    segments: BTreeMap<String, i64>,
}

/// An audience state as stored (postcard).
pub fn enc_audience(state: &AudienceState) -> StoreResult<Vec<u8>> {
    // Sized once: growing the buffer field by field cost more than the encoding.
    Ok(postcard::to_extend(state, Vec::with_capacity(1024))?)
}

/// An audience state from its stored form.
pub fn dec_audience(b: &[u8]) -> StoreResult<AudienceState> {
    Ok(postcard::from_bytes(b)?)
}

fn enc<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> StoreResult<T> {
    Ok(serde_json::from_slice(b)?)
}

/// An event as stored under `contact \0 seq`: postcard, with the sequence number left to the
/// key, properties and context kept as JSON text, and the receive time as an offset from the
/// sender's timestamp — about a third of the event's JSON size. Smaller values make sled's
/// leaf splits and page rebuilds cheaper, which is most of what an ingested event costs.
#[derive(Serialize, serde::Deserialize)]
struct StoredEvent<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    properties: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    message_id: Option<std::borrow::Cow<'a, str>>,
    timestamp: i64,
    received_after: i64,
    #[serde(borrow)]
    context: Option<std::borrow::Cow<'a, str>>,
}

/// The bytes an event is stored as (the benchmark's raw-sled reference writes the same).
pub fn enc_event(e: &Event) -> StoreResult<Vec<u8>> {
    let json = |v: &serde_json::Value| serde_json::to_string(v);
    let stored = StoredEvent {
        kind: e.kind.as_str().into(),
        event: e.event.as_str().into(),
        properties: json(&e.properties)?.into(),
        message_id: e.message_id.as_deref().map(Into::into),
        timestamp: e.timestamp,
        received_after: e.received_at.wrapping_sub(e.timestamp),
        context: if e.context.is_null() {
            None
        } else {
            Some(json(&e.context)?.into())
        },
    };
    Ok(postcard::to_allocvec(&stored)?)
}

/// The sequence number at the end of an event key.
fn event_seq(key: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&key[key.len() - 8..]);
    u64::from_be_bytes(a)
}

fn dec_event(key: &[u8], b: &[u8]) -> StoreResult<Event> {
    let s: StoredEvent = postcard::from_bytes(b)?;
    Ok(Event {
        seq: event_seq(key),
        kind: s.kind.into_owned(),
        event: s.event.into_owned(),
        properties: serde_json::from_str(&s.properties)?,
        message_id: s.message_id.map(|m| m.into_owned()),
        timestamp: s.timestamp,
        received_at: s.timestamp.wrapping_add(s.received_after),
        context: match s.context {
            Some(c) => serde_json::from_str(&c)?,
            None => serde_json::Value::Null,
        },
    })
}

fn dec_event_fact(key: &[u8], b: &[u8]) -> StoreResult<EventFact> {
    let s: StoredEvent = postcard::from_bytes(b)?;
    Ok(EventFact::new(
        event_seq(key),
        s.event.into_owned(),
        s.timestamp,
        Some(s.properties.into_owned()),
    ))
}

fn key2(a: &str, b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b);
    k
}

fn prefix(a: &str) -> Vec<u8> {
    key2(a, b"")
}

/// `contact \0 workflow \0 created_at run`: a contact's runs, each workflow's in start order.
fn run_index_key(contact: &str, workflow: &str, created_at: i64, run: &str) -> Vec<u8> {
    let mut k = key2(contact, &prefix(workflow));
    k.extend_from_slice(&time_key(created_at));
    k.extend_from_slice(run.as_bytes());
    k
}

/// Workflow, start time and run id of a run index key with its contact prefix removed.
fn parse_run_index_key(rest: &[u8]) -> (String, i64, String) {
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let workflow = String::from_utf8_lossy(&rest[..end]).into_owned();
    let rest = rest.get(end + 1..).unwrap_or_default();
    if rest.len() < 8 {
        return (workflow, 0, String::new());
    }
    (
        workflow,
        time_from_key(rest),
        String::from_utf8_lossy(&rest[8..]).into_owned(),
    )
}

/// Keys in a tree, by one pass over it.
fn count_keys(tree: &sled::Tree) -> StoreResult<usize> {
    let mut n = 0;
    for k in tree.iter().keys() {
        k?;
        n += 1;
    }
    Ok(n)
}

/// Order-preserving encoding of a signed time.
fn time_key(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from_key(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

impl SledStore {
    /// Open (or create) the store in `dir`. `cache_bytes` bounds sled's page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput);
        // The directory's lock outlives a closed database by a moment (sled's background
        // thread lets go of it last), so reopening in the same process waits briefly for it;
        // a directory another process holds is still refused, after that second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock") =>
                {
                    if std::time::Instant::now() >= deadline {
                        return Err(sled::Error::Io(e).into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        let t = |name: &str| db.open_tree(name);
        let meta = t("meta")?;
        match meta.get("layout")? {
            Some(v) if v.as_ref() == LAYOUT.as_bytes() => {}
            None if t("contacts")?.is_empty() && t("runs")?.is_empty() => {
                meta.insert("layout", LAYOUT.as_bytes())?;
            }
            found => {
                let found = found.map_or("1".to_string(), |v| String::from_utf8_lossy(&v).into());
                return Err(StoreError::Layout(format!(
                    "the data directory {} uses record layout {found}, this Herald reads layout \
                     {LAYOUT}; start with a new data directory (and re-import contacts) or run \
                     the Herald version that wrote it",
                    dir.display()
                )));
            }
        }
        let contacts = t("contacts")?;
        let timers = t("timers")?;
        // After a clean shutdown the counts come from its checkpoint, withdrawn durably before
        // anything else is written. Otherwise they are counted once here (two trees in
        // parallel). Afterwards every insert and remove says whether the key was new or
        // present, so the counts stay exact without scans.
        let checkpoint = match meta.remove("checkpoint")? {
            Some(v) => {
                db.flush()?;
                serde_json::from_slice::<Checkpoint>(&v).ok()
            }
            None => None,
        };
        let (contact_total, timer_total, runs, segments) = match checkpoint {
            Some(c) => (c.contacts, c.timers, Some(c.runs), Some(c.segments)),
            None => {
                let (c, t) = std::thread::scope(|s| {
                    let c = s.spawn(|| count_keys(&contacts));
                    let t = count_keys(&timers);
                    (c.join().expect("contact count"), t)
                });
                (c?, t?, None, None)
            }
        };
        Ok(SledStore {
            contact_total: AtomicUsize::new(contact_total),
            timer_total: AtomicUsize::new(timer_total),
            checkpointed: AtomicBool::new(false),
            checkpoint_lock: Mutex::new(()),
            checkpointed_runs: Mutex::new(runs),
            checkpointed_segments: Mutex::new(segments),
            contacts,
            identities: t("identities")?,
            events: t("events")?,
            message_ids: t("message_ids")?,
            dedupe: t("dedupe")?,
            inbox: t("inbox")?,
            runs: t("runs")?,
            runs_by_contact: t("runs_by_contact")?,
            journal: t("journal")?,
            timers,
            waits: t("waits")?,
            scripts: t("scripts")?,
            outbox: t("outbox")?,
            segment_log: t("segment_log")?,
            audience: t("audience")?,
            meta,
            db,
        })
    }

    /// Withdraw a saved checkpoint before (and again after) a write that changes a count: the
    /// first call orders the withdrawal before the write in the log, the second covers a
    /// checkpoint saved while the write was under way.
    fn invalidate_checkpoint(&self) -> StoreResult<()> {
        if self.checkpointed.load(Ordering::Acquire) {
            let _g = self.checkpoint_lock.locked();
            if self.checkpointed.swap(false, Ordering::AcqRel) {
                self.meta.remove("checkpoint")?;
            }
        }
        Ok(())
    }

    /// Walk a segment's change log newest first and call `member` for every contact whose
    /// latest change is an entry, until it returns false.
    fn replay_members(
        &self,
        segment: &str,
        member: &mut dyn FnMut(&str) -> bool,
    ) -> StoreResult<()> {
        let mut seen = std::collections::HashSet::new();
        self.changes_newest_first(segment, &mut |c| {
            if !seen.insert(c.contact.clone()) {
                return true;
            }
            !c.entered || member(&c.contact)
        })
    }

    /// Walk a segment's change log newest first, calling `f` until it returns false.
    /// A record holds the changes one write logged (oldest first); records written before
    /// changes were logged together hold one change, its contact in the key.
    fn changes_newest_first(
        &self,
        segment: &str,
        f: &mut dyn FnMut(SegmentChange) -> bool,
    ) -> StoreResult<()> {
        let skip = segment.len() + 1 + 8;
        for r in self.segment_log.scan_prefix(prefix(segment)).rev() {
            let (k, v) = r?;
            let changes = if k.len() > skip {
                vec![SegmentChange {
                    at: v.get(1..9).map(time_from_key).unwrap_or(0),
                    contact: String::from_utf8_lossy(&k[skip..]).into_owned(),
                    entered: v.first() == Some(&1),
                }]
            } else {
                decode_changes(&v)?
            };
            for c in changes.into_iter().rev() {
                if !f(c) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The underlying database (benchmarks compare against raw writes).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// Append `s` with a u16 length before it (ids here are bounded far below 64 KB: ingest takes
/// at most 32 KB per message).
fn push_str16(v: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    v.extend_from_slice(&(b.len() as u16).to_be_bytes());
    v.extend_from_slice(b);
}

/// Take a string written by [`push_str16`] off the front of `v`.
fn take_str16(v: &mut &[u8], record: &str) -> StoreResult<String> {
    let truncated = || StoreError::Corrupt(format!("truncated {record} record"));
    let len = v.get(..2).ok_or_else(truncated)?;
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    let s = v.get(2..2 + len).ok_or_else(truncated)?;
    let s = String::from_utf8_lossy(s).into_owned();
    *v = &v[2 + len..];
    Ok(s)
}

/// Changes of one change-log record: per change, entered (1 byte), time (8) and the contact
/// id ([`push_str16`]).
fn encode_changes(changes: &[SegmentChange]) -> Vec<u8> {
    let mut v = Vec::with_capacity(changes.iter().map(|c| 11 + c.contact.len()).sum());
    for c in changes {
        v.push(u8::from(c.entered));
        v.extend_from_slice(&time_key(c.at));
        push_str16(&mut v, &c.contact);
    }
    v
}

fn decode_changes(mut v: &[u8]) -> StoreResult<Vec<SegmentChange>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let Some(head) = v.get(..9) else {
            return Err(StoreError::Corrupt(
                "truncated segment change record".into(),
            ));
        };
        let (entered, at) = (head[0] == 1, time_from_key(&head[1..9]));
        v = &v[9..];
        let contact = take_str16(&mut v, "segment change")?;
        out.push(SegmentChange {
            entered,
            at,
            contact,
        });
    }
    Ok(out)
}

fn id_key(kind: IdKind, id: &str) -> Vec<u8> {
    let tag = match kind {
        IdKind::User => "u",
        IdKind::Anonymous => "a",
    };
    key2(tag, id.as_bytes())
}

impl Store for SledStore {
    fn next_id(&self) -> StoreResult<u64> {
        Ok(self.db.generate_id()?)
    }

    fn flush(&self) -> StoreResult<()> {
        self.db.flush()?;
        Ok(())
    }

    fn contact(&self, id: &str) -> StoreResult<Option<Contact>> {
        self.contacts.get(id)?.map(|b| dec(&b)).transpose()
    }

    fn put_contact(&self, contact: &Contact) -> StoreResult<()> {
        self.invalidate_checkpoint()?;
        if self
            .contacts
            .insert(contact.id.as_bytes(), enc(contact)?)?
            .is_none()
        {
            self.contact_total.fetch_add(1, Ordering::Relaxed);
        }
        self.invalidate_checkpoint()
    }

    fn contact_count(&self) -> StoreResult<usize> {
        Ok(self.contact_total.load(Ordering::Relaxed))
    }

    fn identity(&self, kind: IdKind, id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .identities
            .get(id_key(kind, id))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn link_identity(&self, kind: IdKind, id: &str, contact: &str) -> StoreResult<()> {
        self.identities
            .insert(id_key(kind, id), contact.as_bytes())?;
        Ok(())
    }

    fn put_event(&self, contact: &str, event: &Event) -> StoreResult<()> {
        self.events
            .insert(key2(contact, &event.seq.to_be_bytes()), enc_event(event)?)?;
        Ok(())
    }

    fn event(&self, contact: &str, seq: u64) -> StoreResult<Option<Event>> {
        let key = key2(contact, &seq.to_be_bytes());
        self.events
            .get(&key)?
            .map(|b| dec_event(&key, &b))
            .transpose()
    }

    fn recent_events(&self, contact: &str, limit: usize) -> StoreResult<Vec<Event>> {
        self.events
            .scan_prefix(prefix(contact))
            .rev()
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                dec_event(&k, &v)
            })
            .collect()
    }

    fn move_events(&self, from: &str, to: &str) -> StoreResult<()> {
        for item in self.events.scan_prefix(prefix(from)) {
            let (k, v) = item?;
            let seq = &k[k.len() - 8..];
            self.events.insert(key2(to, seq), v)?;
            self.events.remove(k)?;
        }
        Ok(())
    }

    fn log_message_ids(&self, at: i64, ids: &[String]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut k = time_key(at).to_vec();
        k.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        let mut v = Vec::with_capacity(ids.iter().map(|i| i.len() + 2).sum());
        for id in ids {
            push_str16(&mut v, id);
        }
        self.dedupe.insert(k, v)?;
        Ok(())
    }

    fn message_ids_since(&self, since: i64, f: &mut dyn FnMut(i64, &str)) -> StoreResult<()> {
        for r in self.dedupe.range(time_key(since)..) {
            let (k, v) = r?;
            let at = time_from_key(&k[..8]);
            let mut v = &v[..];
            while !v.is_empty() {
                f(at, &take_str16(&mut v, "messageId")?);
            }
        }
        Ok(())
    }

    fn expire_message_ids(&self, before: i64, limit: usize) -> StoreResult<usize> {
        let old: Vec<sled::IVec> = self
            .dedupe
            .range(..time_key(before))
            .keys()
            .take(limit)
            .collect::<Result<_, _>>()?;
        for k in &old {
            self.dedupe.remove(k)?;
        }
        Ok(old.len())
    }

    fn legacy_message_ids(&self) -> StoreResult<Vec<String>> {
        self.message_ids
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    fn clear_legacy_message_ids(&self) -> StoreResult<()> {
        self.message_ids.clear()?;
        Ok(())
    }

    fn push_inbox(&self, key: u64, items: &[InboxItem]) -> StoreResult<()> {
        if !items.is_empty() {
            self.inbox.insert(key.to_be_bytes(), enc(&items)?)?;
        }
        Ok(())
    }

    fn inbox(&self) -> StoreResult<Vec<(u64, Vec<InboxItem>)>> {
        self.inbox
            .iter()
            .map(|r| {
                let (k, v) = r?;
                let mut a = [0u8; 8];
                a.copy_from_slice(&k);
                Ok((u64::from_be_bytes(a), dec(&v)?))
            })
            .collect()
    }

    fn remove_inbox(&self, seq: u64) -> StoreResult<()> {
        self.inbox.remove(seq.to_be_bytes())?;
        Ok(())
    }

    fn run(&self, id: &str) -> StoreResult<Option<Run>> {
        self.runs.get(id)?.map(|b| dec(&b)).transpose()
    }

    fn create_run(&self, run: &Run) -> StoreResult<()> {
        // The contact index (which also answers which run last entered the workflow, the
        // re-entry policy's question) is written once, before the run's first record: a crash
        // in between leaves an index key without a run, which readers skip, never a run
        // without its key.
        self.runs_by_contact.insert(
            run_index_key(&run.contact, &run.workflow, run.created_at, &run.id),
            &[],
        )?;
        self.put_run(run)
    }

    fn put_run(&self, run: &Run) -> StoreResult<()> {
        self.invalidate_checkpoint()?;
        self.runs.insert(run.id.as_bytes(), enc(run)?)?;
        self.invalidate_checkpoint()
    }

    fn runs_of_contact(&self, contact: &str) -> StoreResult<Vec<Run>> {
        let mut out = Vec::new();
        for item in self.runs_by_contact.scan_prefix(prefix(contact)) {
            let (k, _) = item?;
            let (_, _, id) = parse_run_index_key(&k[contact.len() + 1..]);
            if let Some(run) = self.run(&id)? {
                out.push(run);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    fn scan_runs(&self, f: &mut dyn FnMut(Run) -> bool) -> StoreResult<()> {
        for item in self.runs.iter() {
            if !f(dec(&item?.1)?) {
                break;
            }
        }
        Ok(())
    }

    fn entry(&self, workflow: &str, contact: &str) -> StoreResult<Option<Entry>> {
        let p = key2(contact, &prefix(workflow));
        for item in self.runs_by_contact.scan_prefix(&p).rev() {
            let (k, _) = item?;
            let (_, started_at, run) = parse_run_index_key(&k[contact.len() + 1..]);
            // An index key whose run was never written (a crash in between) is no entry.
            if self.runs.contains_key(run.as_bytes())? {
                return Ok(Some(Entry { run, started_at }));
            }
        }
        Ok(None)
    }

    fn journal(&self, run: &str) -> StoreResult<Vec<Step>> {
        self.journal
            .scan_prefix(prefix(run))
            .map(|r| dec(&r?.1))
            .collect()
    }

    fn put_step(&self, run: &str, step: &Step) -> StoreResult<()> {
        self.journal
            .insert(key2(run, &step.seq.to_be_bytes()), enc(step)?)?;
        Ok(())
    }

    fn set_timer(&self, timer: &Timer) -> StoreResult<()> {
        let mut k = time_key(timer.due).to_vec();
        k.extend_from_slice(timer.target.encode().as_bytes());
        self.invalidate_checkpoint()?;
        if self.timers.insert(k, timer.contact.as_bytes())?.is_none() {
            self.timer_total.fetch_add(1, Ordering::Relaxed);
        }
        self.invalidate_checkpoint()
    }

    fn clear_timer(&self, due: i64, target: &TimerTarget) -> StoreResult<()> {
        let mut k = time_key(due).to_vec();
        k.extend_from_slice(target.encode().as_bytes());
        self.invalidate_checkpoint()?;
        if self.timers.remove(k)?.is_some() {
            self.timer_total.fetch_sub(1, Ordering::Relaxed);
        }
        self.invalidate_checkpoint()
    }

    fn due_timers(&self, now: i64, limit: usize) -> StoreResult<Vec<Timer>> {
        let end = time_key(now.saturating_add(1));
        self.timers
            .range(..end)
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                Ok(Timer {
                    due: time_from_key(&k),
                    target: TimerTarget::decode(&String::from_utf8_lossy(&k[8..])),
                    contact: String::from_utf8_lossy(&v).into_owned(),
                })
            })
            .collect()
    }

    fn next_timer(&self) -> StoreResult<Option<i64>> {
        Ok(self.timers.first()?.map(|(k, _)| time_from_key(&k)))
    }

    fn timer_count(&self) -> StoreResult<usize> {
        Ok(self.timer_total.load(Ordering::Relaxed))
    }

    fn save_checkpoint(
        &self,
        runs: &BTreeMap<String, i64>,
        segments: &BTreeMap<String, i64>,
    ) -> StoreResult<()> {
        {
            let _g = self.checkpoint_lock.locked();
            let c = Checkpoint {
                contacts: self.contact_total.load(Ordering::Acquire),
                timers: self.timer_total.load(Ordering::Acquire),
                runs: runs.clone(),
                segments: segments.clone(),
            };
            self.meta.insert("checkpoint", serde_json::to_vec(&c)?)?;
            self.checkpointed.store(true, Ordering::Release);
        }
        self.db.flush()?;
        Ok(())
    }

    fn take_checkpointed_runs(&self) -> Option<BTreeMap<String, i64>> {
        self.checkpointed_runs.locked().take()
    }

    fn take_checkpointed_segments(&self) -> Option<BTreeMap<String, i64>> {
        self.checkpointed_segments.locked().take()
    }

    fn put_wait(&self, contact: &str, event: &str, wait: &WaitReg) -> StoreResult<()> {
        let k = key2(&format!("{contact}\0{event}"), wait.run.as_bytes());
        self.waits.insert(k, enc(wait)?)?;
        Ok(())
    }

    fn waits(&self, contact: &str, event: &str) -> StoreResult<Vec<WaitReg>> {
        self.waits
            .scan_prefix(prefix(&format!("{contact}\0{event}")))
            .map(|r| dec(&r?.1))
            .collect()
    }

    fn remove_wait(&self, contact: &str, event: &str, run: &str) -> StoreResult<()> {
        self.waits
            .remove(key2(&format!("{contact}\0{event}"), run.as_bytes()))?;
        Ok(())
    }

    fn move_waits(&self, from: &str, to: &str) -> StoreResult<()> {
        for item in self.waits.scan_prefix(prefix(from)) {
            let (k, v) = item?;
            let rest = &k[from.len()..];
            let mut nk = to.as_bytes().to_vec();
            nk.extend_from_slice(rest);
            self.waits.insert(nk, v)?;
            self.waits.remove(k)?;
        }
        Ok(())
    }

    fn put_script(&self, version: &ScriptVersion) -> StoreResult<()> {
        if !self.scripts.contains_key(&version.hash)? {
            self.scripts
                .insert(version.hash.as_bytes(), enc(version)?)?;
        }
        Ok(())
    }

    fn script(&self, hash: &str) -> StoreResult<Option<ScriptVersion>> {
        self.scripts.get(hash)?.map(|b| dec(&b)).transpose()
    }

    fn scripts(&self) -> StoreResult<Vec<ScriptVersion>> {
        self.scripts.iter().map(|r| dec(&r?.1)).collect()
    }

    fn put_intent(&self, key: &str, intent: &Intent) -> StoreResult<()> {
        self.outbox.insert(key, enc(intent)?)?;
        Ok(())
    }

    fn remove_intent(&self, key: &str) -> StoreResult<()> {
        self.outbox.remove(key)?;
        Ok(())
    }

    fn intents(&self) -> StoreResult<Vec<(String, Intent)>> {
        self.outbox
            .iter()
            .map(|r| {
                let (k, v) = r?;
                Ok((String::from_utf8_lossy(&k).into_owned(), dec(&v)?))
            })
            .collect()
    }

    fn events_of(&self, contact: &str) -> StoreResult<Vec<Event>> {
        self.events
            .scan_prefix(prefix(contact))
            .map(|r| {
                let (k, v) = r?;
                dec_event(&k, &v)
            })
            .collect()
    }

    fn event_facts(&self, contact: &str) -> StoreResult<Vec<EventFact>> {
        self.events
            .scan_prefix(prefix(contact))
            .map(|r| {
                let (k, v) = r?;
                dec_event_fact(&k, &v)
            })
            .collect()
    }

    fn contact_ids(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        let iter = match after {
            Some(a) => self.contacts.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.contacts.iter(),
        };
        iter.take(limit)
            .map(|r| Ok(String::from_utf8_lossy(&r?.0).into_owned()))
            .collect()
    }

    fn members(&self, segment: &str, limit: usize) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        if limit > 0 {
            self.replay_members(segment, &mut |contact| {
                out.push(contact.to_string());
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    fn member_count(&self, segment: &str) -> StoreResult<usize> {
        let mut n = 0;
        self.replay_members(segment, &mut |_| {
            n += 1;
            true
        })?;
        Ok(n)
    }

    fn log_segment_changes(&self, segment: &str, changes: &[SegmentChange]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        // Ordered by a sequence number, not the time: the newest change is the last written
        // even if the clock stepped back in between.
        let mut k = prefix(segment);
        k.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        self.invalidate_checkpoint()?;
        self.segment_log.insert(k, encode_changes(changes))?;
        self.invalidate_checkpoint()
    }

    fn segment_changes(&self, segment: &str, limit: usize) -> StoreResult<Vec<SegmentChange>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.changes_newest_first(segment, &mut |c| {
            out.push(c);
            out.len() < limit
        })?;
        Ok(out)
    }

    fn audience(&self, contact: &str) -> StoreResult<Option<AudienceState>> {
        self.audience
            .get(contact)?
            .map(|b| dec_audience(&b))
            .transpose()
    }

    fn put_audience_encoded(&self, contact: &str, encoded: Vec<u8>) -> StoreResult<()> {
        self.audience.insert(contact.as_bytes(), encoded)?;
        Ok(())
    }

    fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self
            .meta
            .get(key)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn put_meta(&self, key: &str, value: &str) -> StoreResult<()> {
        self.meta.insert(key.as_bytes(), value.as_bytes())?;
        Ok(())
    }
}

/// Group commit: callers ask for durability of everything written so far; one flush serves
/// every caller that asked before it started.
pub struct Flusher {
    store: Arc<dyn Store>,
    state: Mutex<FlushState>,
    cond: Condvar,
    flushed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct FlushState {
    requested: u64,
    flushed: u64,
    failed: Option<String>,
    stop: bool,
}

impl Flusher {
    /// Start the flusher thread.
    pub fn start(store: Arc<dyn Store>) -> Arc<Flusher> {
        let (tx, _) = tokio::sync::watch::channel(0);
        let f = Arc::new(Flusher {
            store,
            state: Mutex::new(FlushState::default()),
            cond: Condvar::new(),
            flushed: tx,
        });
        let worker = f.clone();
        std::thread::Builder::new()
            .name("herald-flush".into())
            .spawn(move || worker.run())
            .expect("spawn flusher");
        f
    }

    fn run(&self) {
        loop {
            let target = {
                let mut st = self.state.locked();
                while st.requested == st.flushed && !st.stop {
                    st = self
                        .cond
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if st.stop && st.requested == st.flushed {
                    return;
                }
                st.requested
            };
            let result = self.store.flush();
            let mut st = self.state.locked();
            match result {
                Ok(()) => st.failed = None,
                Err(e) => {
                    tracing::error!(error = %e, "flush failed");
                    st.failed = Some(e.to_string());
                }
            }
            st.flushed = target;
            self.cond.notify_all();
            let _ = self.flushed.send(target);
        }
    }

    /// Ask for a flush of everything written so far without waiting for it.
    pub fn request_flush(&self) {
        self.request();
    }

    fn request(&self) -> u64 {
        let mut st = self.state.locked();
        st.requested += 1;
        self.cond.notify_all();
        st.requested
    }

    fn outcome(&self) -> Result<(), String> {
        match &self.state.locked().failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Block until everything written before this call is durable.
    pub fn commit_blocking(&self) -> Result<(), String> {
        let ticket = self.request();
        let mut st = self.state.locked();
        while st.flushed < ticket {
            st = self
                .cond
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(st);
        self.outcome()
    }

    /// Wait (asynchronously) until everything written before this call is durable.
    pub async fn commit(&self) -> Result<(), String> {
        let mut rx = self.flushed.subscribe();
        let ticket = self.request();
        while *rx.borrow_and_update() < ticket {
            if rx.changed().await.is_err() {
                return Err("flusher stopped".into());
            }
        }
        self.outcome()
    }

    /// Flush what is pending and stop the thread.
    pub fn stop(&self) {
        let _ = self.commit_blocking();
        let mut st = self.state.locked();
        st.stop = true;
        self.cond.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_of_another_layout_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path(), 8 << 20).unwrap();
            s.put_contact(&Contact::new("c_1".into(), 0)).unwrap();
            s.put_meta("layout", "1").unwrap();
            s.flush().unwrap();
        }
        let err = SledStore::open(dir.path(), 8 << 20).err().expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("uses record layout 1, this Herald reads layout 5"),
            "{msg}"
        );

        // A new directory gets the current layout and opens again.
        let fresh = tempfile::tempdir().unwrap();
        drop(SledStore::open(fresh.path(), 8 << 20).unwrap());
        assert!(SledStore::open(fresh.path(), 8 << 20).is_ok());
    }

    #[test]
    fn timer_targets_are_stored_as_run_ids_or_marked_audience_ids() {
        for t in [
            TimerTarget::Run("r_1".into()),
            TimerTarget::Audience("c_1".into()),
        ] {
            assert_eq!(TimerTarget::decode(&t.encode()), t);
        }
        // The stored form of data directories written before the enum.
        assert_eq!(
            TimerTarget::Audience("c_1".into()).encode(),
            "~audience:c_1"
        );
        assert_eq!(TimerTarget::decode("r_1"), TimerTarget::Run("r_1".into()));
    }

    #[test]
    fn timers_come_back_in_due_order_and_only_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        for (due, run) in [(300, "b"), (-5, "neg"), (100, "a"), (200, "c")] {
            s.set_timer(&Timer {
                due,
                target: TimerTarget::Run(run.into()),
                contact: "k".into(),
            })
            .unwrap();
        }
        let due: Vec<_> = s
            .due_timers(200, 10)
            .unwrap()
            .into_iter()
            .map(|t| (t.due, t.target.encode()))
            .collect();
        assert_eq!(
            due,
            vec![
                (-5, "neg".to_string()),
                (100, "a".into()),
                (200, "c".into())
            ]
        );
        s.clear_timer(100, &TimerTarget::Run("a".into())).unwrap();
        assert_eq!(s.next_timer().unwrap(), Some(-5));
        assert_eq!(s.timer_count().unwrap(), 3);
    }

    #[test]
    fn contact_and_timer_counts_stay_exact_across_rewrites_removals_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let timer = |due, run: &str| Timer {
            due,
            target: TimerTarget::Run(run.into()),
            contact: "k".into(),
        };
        {
            let s = SledStore::open(dir.path(), 8 << 20).unwrap();
            for id in ["c1", "c2", "c1"] {
                s.put_contact(&Contact::new(id.to_string(), 0)).unwrap();
            }
            s.set_timer(&timer(10, "a")).unwrap();
            s.set_timer(&timer(10, "a")).unwrap();
            s.set_timer(&timer(20, "b")).unwrap();
            s.clear_timer(20, &TimerTarget::Run("b".into())).unwrap();
            s.clear_timer(20, &TimerTarget::Run("b".into())).unwrap();
            s.clear_timer(99, &TimerTarget::Run("never-set".into()))
                .unwrap();
            assert_eq!(s.contact_count().unwrap(), 2);
            assert_eq!(s.timer_count().unwrap(), 1);
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(s.contact_count().unwrap(), 2);
        assert!(
            s.take_checkpointed_segments().is_none(),
            "no clean shutdown yet"
        );
        assert_eq!(s.timer_count().unwrap(), 1);
        s.set_timer(&timer(30, "c")).unwrap();
        assert_eq!(s.timer_count().unwrap(), 2);
    }

    #[test]
    fn the_last_entry_is_the_latest_run_of_that_workflow_for_that_contact() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        let run = |id: &str, workflow: &str, contact: &str, at: i64| {
            let null = serde_json::Value::Null;
            Run::new(
                id.into(),
                workflow.into(),
                "h".into(),
                contact.into(),
                null.clone(),
                null,
                at,
            )
        };
        for r in [
            run("w-9", "w", "c1", 100),
            run("w-10", "w", "c1", 300),
            run("w-11", "w", "c1", 200),
            run("w2-1", "w2", "c1", 900),
            run("w-12", "w", "c2", 950),
        ] {
            s.create_run(&r).unwrap();
        }
        // Rewriting a run (a status change) does not make it a new entry.
        let mut again = run("w-9", "w", "c1", 100);
        again.updated_at = 1000;
        s.put_run(&again).unwrap();
        let e = s.entry("w", "c1").unwrap().unwrap();
        assert_eq!((e.run.as_str(), e.started_at), ("w-10", 300));
        assert_eq!(s.entry("w2", "c1").unwrap().unwrap().run, "w2-1");
        assert!(s.entry("w", "c3").unwrap().is_none());
        // A crash between a run's index key and its first record: the key is not an entry.
        s.runs_by_contact
            .insert(run_index_key("c1", "w", 5000, "w-99"), &[])
            .unwrap();
        assert_eq!(s.entry("w", "c1").unwrap().unwrap().run, "w-10");
        assert!(s.entry("x", "c1").unwrap().is_none());
        let ids: Vec<_> = s
            .runs_of_contact("c1")
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["w-9", "w-11", "w-10", "w2-1"]);
    }

    fn change(at: i64, contact: &str, entered: bool) -> SegmentChange {
        SegmentChange {
            at,
            contact: contact.into(),
            entered,
        }
    }

    #[test]
    fn changes_logged_together_read_like_changes_logged_one_by_one_and_older_records_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        // A record in the layout that held one change, its contact in the key.
        let mut k = prefix("vip");
        k.extend_from_slice(&s.db.generate_id().unwrap().to_be_bytes());
        k.extend_from_slice(b"old");
        let mut v = vec![1u8];
        v.extend_from_slice(&time_key(1));
        s.segment_log.insert(k, v).unwrap();
        s.log_segment_changes(
            "vip",
            &[
                change(2, "a", true),
                change(3, "b", true),
                change(4, "a", false),
            ],
        )
        .unwrap();
        s.log_segment_changes("vip", &[change(5, "c", true)])
            .unwrap();
        s.log_segment_changes("vip", &[]).unwrap();
        let recent: Vec<_> = s
            .segment_changes("vip", 10)
            .unwrap()
            .into_iter()
            .map(|c| (c.at, c.contact, c.entered))
            .collect();
        assert_eq!(
            recent,
            [
                (5, "c".to_string(), true),
                (4, "a".into(), false),
                (3, "b".into(), true),
                (2, "a".into(), true),
                (1, "old".into(), true)
            ]
        );
        assert_eq!(s.segment_changes("vip", 2).unwrap().len(), 2);
        assert_eq!(s.members("vip", 10).unwrap(), ["c", "b", "old"]);
        assert_eq!(s.member_count("vip").unwrap(), 3);
        // A damaged record is an error, not a silent gap.
        let mut k = prefix("bad");
        k.extend_from_slice(&7u64.to_be_bytes());
        s.segment_log.insert(k, &[1u8, 0, 0][..]).unwrap();
        assert!(matches!(
            s.segment_changes("bad", 10),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn current_members_are_the_contacts_whose_newest_change_is_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        for c in [
            change(1, "a", true),
            change(2, "b", true),
            change(3, "c", true),
            change(4, "a", false),
            change(5, "b", false),
            change(6, "b", true),
            change(7, "d", true),
        ] {
            s.log_segment_change("vip", &c).unwrap();
        }
        s.log_segment_change("other", &change(8, "a", true))
            .unwrap();
        assert_eq!(s.members("vip", 10).unwrap(), ["d", "b", "c"]);
        assert_eq!(s.members("vip", 2).unwrap(), ["d", "b"]);
        assert_eq!(s.member_count("vip").unwrap(), 3);
        assert_eq!(s.member_count("other").unwrap(), 1);
        assert_eq!(s.member_count("none").unwrap(), 0);
        // The clock steps back: the change written last still decides.
        s.log_segment_change("vip", &change(3, "c", false)).unwrap();
        s.log_segment_change("vip", &change(2, "c", true)).unwrap();
        s.log_segment_change("vip", &change(1, "d", false)).unwrap();
        assert_eq!(s.members("vip", 10).unwrap(), ["c", "b"]);
        let recent: Vec<_> = s
            .segment_changes("vip", 2)
            .unwrap()
            .into_iter()
            .map(|c| (c.at, c.contact, c.entered))
            .collect();
        assert_eq!(recent, [(1, "d".to_string(), false), (2, "c".into(), true)]);
    }

    #[test]
    fn events_come_back_exactly_as_stored_in_their_compact_form() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        let full = Event {
            seq: 7,
            kind: "track".into(),
            event: "order_completed".into(),
            properties: serde_json::json!({"total": 42.5, "items": [{"sku": "a"}], "gift": null}),
            message_id: Some("m-1".into()),
            timestamp: 1_700_000_000_000,
            received_at: 1_700_000_003_000,
            context: serde_json::json!({"ip": "127.0.0.1"}),
        };
        // Sent "from the future" (received before its timestamp), no messageId, no context.
        let bare = Event {
            seq: 300,
            kind: "identify".into(),
            event: "identify".into(),
            properties: serde_json::json!({}),
            message_id: None,
            timestamp: 5_000,
            received_at: 1_000,
            context: serde_json::Value::Null,
        };
        s.put_events(&[("c".into(), full.clone()), ("c".into(), bare.clone())])
            .unwrap();
        assert_eq!(s.event("c", 7).unwrap().unwrap(), full);
        assert_eq!(s.events_of("c").unwrap(), [full.clone(), bare.clone()]);
        assert_eq!(s.recent_events("c", 1).unwrap(), [bare]);
        let facts = s.event_facts("c").unwrap();
        assert_eq!(
            (facts[0].seq, facts[0].event.as_str(), facts[0].timestamp),
            (7, "order_completed", 1_700_000_000_000)
        );
        let filter = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(facts[0].matches(&filter(serde_json::json!({"total": 42.5}))));
        assert!(!facts[0].matches(&filter(serde_json::json!({"total": 1}))));
        assert!(enc_event(&full).unwrap().len() < serde_json::to_vec(&full).unwrap().len() / 2);
    }

    #[test]
    fn a_checkpoint_is_used_once_and_withdrawn_by_any_later_counted_write() {
        let dir = tempfile::tempdir().unwrap();
        let runs = BTreeMap::from([("waiting".to_string(), 4)]);
        let sizes = BTreeMap::from([("vip".to_string(), 2)]);
        let change = SegmentChange {
            at: 1,
            contact: "c".into(),
            entered: true,
        };
        let writes: [&dyn Fn(&SledStore); 3] = [
            &|s| s.log_segment_change("vip", &change).unwrap(),
            &|s| s.put_contact(&Contact::new("c9".into(), 0)).unwrap(),
            &|s| s.clear_timer(5, &TimerTarget::Run("r".into())).unwrap(),
        ];
        for write in writes {
            {
                let s = SledStore::open(dir.path(), 8 << 20).unwrap();
                s.set_timer(&Timer {
                    due: 5,
                    target: TimerTarget::Run("r".into()),
                    contact: "c".into(),
                })
                .unwrap();
                s.save_checkpoint(&runs, &sizes).unwrap();
            }
            // A clean stop: the next open gets the counts, once.
            {
                let s = SledStore::open(dir.path(), 8 << 20).unwrap();
                assert_eq!(s.take_checkpointed_runs(), Some(runs.clone()));
                assert_eq!(s.take_checkpointed_segments(), Some(sizes.clone()));
                assert_eq!(s.take_checkpointed_segments(), None);
                s.save_checkpoint(&runs, &sizes).unwrap();
                // A counted write after the checkpoint, then a crash (no second save).
                write(&s);
                s.flush().unwrap();
            }
            let s = SledStore::open(dir.path(), 8 << 20).unwrap();
            assert_eq!(s.take_checkpointed_runs(), None);
            assert_eq!(s.take_checkpointed_segments(), None);
        }
    }

    #[test]
    fn message_ids_are_logged_per_request_read_back_from_a_time_and_expired_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        s.log_message_ids(100, &["a".into(), "b".into()]).unwrap();
        s.log_message_ids(200, &["c".into()]).unwrap();
        s.log_message_ids(300, &[]).unwrap();
        s.log_message_ids(300, &["d".into(), "".into()]).unwrap();
        let read = |since| {
            let mut out = Vec::new();
            s.message_ids_since(since, &mut |at, id| out.push((at, id.to_string())))
                .unwrap();
            out
        };
        assert_eq!(
            read(0),
            [
                (100, "a".to_string()),
                (100, "b".into()),
                (200, "c".into()),
                (300, "d".into()),
                (300, "".into())
            ]
        );
        assert_eq!(read(200).len(), 3);
        assert_eq!(s.expire_message_ids(250, 1).unwrap(), 1);
        assert_eq!(s.expire_message_ids(250, 10).unwrap(), 1);
        assert_eq!(s.expire_message_ids(250, 10).unwrap(), 0);
        assert_eq!(read(0).len(), 2);
        s.message_ids.insert("old-marker", &[1u8][..]).unwrap();
        assert_eq!(s.legacy_message_ids().unwrap(), ["old-marker"]);
        s.clear_legacy_message_ids().unwrap();
        assert!(s.legacy_message_ids().unwrap().is_empty());
    }
}
