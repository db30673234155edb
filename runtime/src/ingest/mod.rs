//! The Segment-compatible ingest path: validation, identity resolution and merge, durable
//! acceptance with group commit, and hand-off to the engine.

pub mod callbacks;
pub mod dedupe;
pub mod import;
mod write;

use crate::sync::{LockExt as _, RwLockExt as _};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::clock::Clock;
use crate::config::LimitsConfig;
use crate::engine::{Engine, Queued};
use crate::ingest::dedupe::Dedupe;
use crate::metrics::Metrics;
use crate::store::{Flusher, Store, StoreError};

/// Largest single message, as Segment documents it.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Largest batch request, as Segment documents it.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// The Segment call types.
pub const TYPES: [&str; 6] = ["identify", "track", "page", "screen", "group", "alias"];

/// Why a request was refused. Nothing of a refused request is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is not what the API accepts.
    #[error("{message}")]
    Invalid {
        /// Machine-readable code.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
    /// Storage failed; the request was not accepted.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The flush failed; the request was not accepted.
    #[error("durability: {0}")]
    Durability(String),
}

fn invalid(code: &'static str, message: impl Into<String>) -> IngestError {
    IngestError::Invalid {
        code,
        message: message.into(),
    }
}

/// Outcome of an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Messages stored.
    pub accepted: usize,
    /// Messages already stored under the same `messageId`.
    pub duplicates: usize,
    /// Messages dropped because they would take a contact past `[limits]`.
    pub rejected: Vec<Rejected>,
}

/// A validated message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its place in its batch (0 for a single message).
    index: usize,
    kind: String,
    raw: Map<String, Value>,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    message_id: Option<String>,
    timestamp: Option<i64>,
    /// Set for events Herald itself attributes to a known contact (provider callbacks).
    contact: Option<String>,
}

impl Message {
    /// A `track` event for a contact Herald already knows (a provider callback about a
    /// message it sent).
    pub fn for_contact(
        contact: &str,
        event: &str,
        properties: Value,
        timestamp: Option<i64>,
        message_id: Option<String>,
    ) -> Message {
        let mut raw = Map::new();
        raw.insert("event".into(), json!(event));
        raw.insert("properties".into(), properties);
        Message {
            index: 0,
            kind: "track".into(),
            raw,
            user_id: None,
            anonymous_id: None,
            message_id,
            timestamp,
            contact: Some(contact.to_string()),
        }
    }

    /// Its place in its batch (0 for a single message).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its call type: `track`, `identify`, `page`, `screen`, `group` or `alias`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The message as received, with its batch's `context` copied in when it had none.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.raw
    }
}

fn id_field(m: &Map<String, Value>, key: &str) -> Option<String> {
    match m.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Id fields given as numbers that are not 64-bit integers: as JSON numbers they would be
/// rounded, and different ids would become one.
fn inexact_numeric_id(m: &Map<String, Value>) -> Option<&'static str> {
    ["userId", "anonymousId", "previousId", "groupId"]
        .into_iter()
        .find(|k| matches!(m.get(*k), Some(Value::Number(n)) if !(n.is_i64() || n.is_u64())))
}

/// Validate one message. `kind` comes from the endpoint, or from `type` inside a batch.
pub fn validate(
    kind: Option<&str>,
    value: Value,
    size: usize,
    index: Option<usize>,
) -> Result<Message, IngestError> {
    let at = |msg: String| match index {
        Some(i) => format!("batch[{i}]: {msg}"),
        None => msg,
    };
    if size > MAX_MESSAGE_BYTES {
        return Err(invalid(
            "message_too_large",
            at(format!(
                "message is {size} bytes; the limit is {MAX_MESSAGE_BYTES} bytes (32 KB)"
            )),
        ));
    }
    let Value::Object(raw) = value else {
        return Err(invalid(
            "invalid_message",
            at("a message must be a JSON object".into()),
        ));
    };
    let kind = match (kind, raw.get("type").and_then(Value::as_str)) {
        (Some(k), _) => k.to_string(),
        (None, Some(t)) if TYPES.contains(&t) => t.to_string(),
        (None, Some(t)) => {
            return Err(invalid(
                "invalid_type",
                at(format!(
                    "unknown type \"{t}\"; expected one of {}",
                    TYPES.join(", ")
                )),
            ))
        }
        (None, None) => {
            return Err(invalid(
                "missing_type",
                at("a batch message needs a \"type\"".into()),
            ))
        }
    };
    if let Some(key) = inexact_numeric_id(&raw) {
        return Err(invalid(
            "invalid_id",
            at(format!(
                "\"{key}\" is a number that is not a 64-bit integer; send the id as a string"
            )),
        ));
    }
    let user_id = id_field(&raw, "userId");
    let anonymous_id = id_field(&raw, "anonymousId");
    if kind == "alias" {
        if id_field(&raw, "previousId").is_none() || user_id.is_none() {
            return Err(invalid(
                "missing_identity",
                at("alias needs both \"previousId\" and \"userId\"".into()),
            ));
        }
    } else if user_id.is_none() && anonymous_id.is_none() {
        return Err(invalid(
            "missing_identity",
            at(format!("{kind} needs a \"userId\" or an \"anonymousId\"")),
        ));
    }
    match kind.as_str() {
        "track" => match raw.get("event") {
            Some(Value::String(e)) if !e.trim().is_empty() => {}
            _ => {
                return Err(invalid(
                    "missing_event",
                    at("track needs a non-empty \"event\" name".into()),
                ))
            }
        },
        "group" if id_field(&raw, "groupId").is_none() => {
            return Err(invalid(
                "missing_group",
                at("group needs a \"groupId\"".into()),
            ));
        }
        _ => {}
    }
    for key in ["properties", "traits", "context"] {
        if let Some(v) = raw.get(key) {
            if !v.is_object() && !v.is_null() {
                return Err(invalid(
                    "invalid_field",
                    at(format!("\"{key}\" must be an object")),
                ));
            }
        }
    }
    let timestamp = match raw.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(herald_dsl::engine::parse_rfc3339_ms(s).ok_or_else(|| {
                invalid(
                    "invalid_timestamp",
                    at(format!("\"timestamp\" is not an ISO 8601 instant: \"{s}\"")),
                )
            })?)
        }
        Some(_) => {
            return Err(invalid(
                "invalid_timestamp",
                at("\"timestamp\" must be an ISO 8601 string".into()),
            ))
        }
    };
    let message_id = id_field(&raw, "messageId");
    // Herald names the facts it records itself (opens, clicks, provider callbacks) with these
    // prefixes: a client cannot claim one, so it can neither forge such a fact nor shadow a
    // real one in the dedupe window.
    if let Some(id) = &message_id {
        if RESERVED_MESSAGE_ID_PREFIXES
            .iter()
            .any(|p| id.starts_with(p))
        {
            return Err(invalid(
                "reserved_message_id",
                at(format!(
                    "\"messageId\" may not start with {}: Herald names its own facts so",
                    RESERVED_MESSAGE_ID_PREFIXES.join(" or ")
                )),
            ));
        }
    }
    Ok(Message {
        index: index.unwrap_or(0),
        kind,
        raw,
        user_id,
        anonymous_id,
        message_id,
        timestamp,
        contact: None,
    })
}

/// `messageId` prefixes only Herald gives (engagement facts, provider callbacks, imports).
pub const RESERVED_MESSAGE_ID_PREFIXES: [&str; 2] = ["engagement:", "webhook:"];

/// The kinds of provider event a channel reports, seen as `<channel>_<kind>` events.
pub const CHANNEL_EVENT_KINDS: [&str; 7] = [
    "delivered",
    "bounced",
    "opened",
    "clicked",
    "replied",
    "unsubscribed",
    "complained",
];

/// The rules of a client key (a browser's or an app's, public by nature), applied per item:
/// no event name a channel owns (`<channel>_<kind>` of a configured channel) or Herald owns
/// (`herald_…`), and no `alias` that would merge two known users.
pub fn restrict_client(
    parsed: &mut Parsed,
    channels: &[String],
    store: &dyn Store,
    batch: bool,
) -> Result<(), crate::store::StoreError> {
    let owned = |event: &str| {
        event.starts_with("herald_")
            || channels.iter().any(|c| {
                event
                    .strip_prefix(c.as_str())
                    .and_then(|rest| rest.strip_prefix('_'))
                    .is_some_and(|kind| CHANNEL_EVENT_KINDS.contains(&kind))
            })
    };
    let mut kept = Vec::with_capacity(parsed.messages.len());
    for m in std::mem::take(&mut parsed.messages) {
        let refusal = match m.kind.as_str() {
            "track" => m
                .raw
                .get("event")
                .and_then(Value::as_str)
                .filter(|e| owned(e))
                .map(|e| {
                    (
                        "reserved_event",
                        format!("\"{e}\" is an event a channel reports; a client key cannot send it (use a server key)"),
                    )
                }),
            "alias" => {
                let previous = id_field(&m.raw, "previousId").unwrap_or_default();
                let user = m.user_id.clone().unwrap_or_default();
                let known_previous = store.identity(crate::store::IdKind::User, &previous)?;
                let known_user = store.identity(crate::store::IdKind::User, &user)?;
                match (known_previous, known_user) {
                    (Some(a), b) if b.as_deref() != Some(a.as_str()) => Some((
                        "merge_refused",
                        format!("alias would merge the known user \"{previous}\" into \"{user}\"; a client key cannot merge known users (use a server key)"),
                    )),
                    _ => None,
                }
            }
            _ => None,
        };
        match refusal {
            Some((code, message)) => parsed.rejected.push(Rejected::of(&m, batch, code, message)),
            None => kept.push(m),
        }
    }
    parsed.messages = kept;
    parsed.rejected.sort_by_key(|r| r.index);
    Ok(())
}

/// At most this many bytes of a batch's messages once its top-level `context` is copied into
/// those without their own: a small request cannot grow into a large one inside the daemon.
pub const MAX_EXPANDED_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A batch item that was dropped, and why; the rest of its batch is accepted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// Its place in the batch.
    pub index: usize,
    /// Machine-readable reason.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
}

impl Rejected {
    /// `m` dropped for `message`, which names the item when it came in a batch.
    fn of(m: &Message, batch: bool, code: &'static str, message: String) -> Rejected {
        Rejected {
            index: m.index,
            code,
            message: if batch {
                format!("batch[{}]: {message}", m.index)
            } else {
                message
            },
        }
    }
}

/// A parsed request: its valid messages, the batch items dropped, and a key from the body.
#[derive(Debug)]
pub struct Parsed {
    /// The messages to accept.
    pub messages: Vec<Message>,
    /// Batch items dropped for breaking a limit or a rule.
    pub rejected: Vec<Rejected>,
    /// The body's `writeKey`, if any.
    pub write_key: Option<String>,
}

/// Parse a request body: a single message for `kind`, or a batch when `kind` is `None`.
///
/// A request that is malformed as a whole (not JSON, no `batch` array, too large, or a batch
/// none of whose items is valid) is an error. Otherwise each batch item is checked on its own:
/// one that breaks a limit or a rule is dropped and reported in [`Parsed::rejected`], as
/// Segment's API does. A batch's top-level `context` belongs to each item without its own and
/// counts against that item's 32 KB.
pub fn parse_body(kind: Option<&str>, body: &[u8]) -> Result<Parsed, IngestError> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(invalid(
            "payload_too_large",
            format!(
                "request body is {} bytes; the limit is {MAX_BATCH_BYTES} bytes (500 KB)",
                body.len()
            ),
        ));
    }
    let malformed = |e: serde_json::Error| {
        invalid(
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )
    };
    match kind {
        Some(k) => {
            let value: Value = serde_json::from_slice(body).map_err(malformed)?;
            let write_key = value
                .get("writeKey")
                .and_then(Value::as_str)
                .map(String::from);
            Ok(Parsed {
                messages: vec![validate(Some(k), value, body.len(), None)?],
                rejected: Vec::new(),
                write_key,
            })
        }
        None => {
            // Items stay raw until each is measured, so the 32 KB rule is checked against the
            // bytes the client sent without serialising anything again.
            #[derive(serde::Deserialize)]
            struct Batch<'a> {
                #[serde(borrow)]
                batch: Option<Vec<&'a serde_json::value::RawValue>>,
                #[serde(borrow)]
                context: Option<&'a serde_json::value::RawValue>,
                #[serde(rename = "writeKey")]
                write_key: Option<String>,
            }
            let parsed: Batch = serde_json::from_slice(body).map_err(malformed)?;
            let Some(items) = parsed.batch else {
                return Err(invalid(
                    "missing_batch",
                    "a batch request needs a \"batch\" array",
                ));
            };
            if items.is_empty() {
                return Err(invalid("empty_batch", "the \"batch\" array is empty"));
            }
            let context: Option<(Value, usize)> = match parsed.context {
                Some(raw) => Some((
                    serde_json::from_str(raw.get()).map_err(malformed)?,
                    raw.get().len(),
                )),
                None => None,
            };
            let mut messages = Vec::with_capacity(items.len());
            let mut rejected = Vec::new();
            let mut expanded = 0usize;
            let mut first_error = None;
            for (i, raw) in items.into_iter().enumerate() {
                let outcome = (|| {
                    // Well-formed as part of the body, yet not a JSON value on its own (a lone
                    // surrogate escape, a number out of range): this item is dropped, and its
                    // rejection names it (positions count from the item's first byte).
                    let mut item: Value = serde_json::from_str(raw.get()).map_err(|e| {
                        invalid(
                            "malformed_json",
                            format!("batch[{i}]: the item is not valid JSON: {e}"),
                        )
                    })?;
                    let mut size = raw.get().len();
                    if let (Some((ctx, ctx_len)), Some(obj)) = (&context, item.as_object_mut()) {
                        if !obj.contains_key("context") {
                            // `,"context":` and the context itself.
                            size += ctx_len + 12;
                            if size <= MAX_MESSAGE_BYTES {
                                obj.insert("context".into(), ctx.clone());
                            }
                        }
                    }
                    expanded += size;
                    if expanded > MAX_EXPANDED_BATCH_BYTES {
                        return Err(invalid(
                            "payload_too_large",
                            format!(
                                "the batch's messages, with its context copied into each, exceed {} MB",
                                MAX_EXPANDED_BATCH_BYTES >> 20
                            ),
                        ));
                    }
                    validate(None, item, size, Some(i))
                })();
                match outcome {
                    Ok(m) => messages.push(m),
                    // Growing past the expanded limit refuses the whole request.
                    Err(
                        e @ IngestError::Invalid {
                            code: "payload_too_large",
                            ..
                        },
                    ) => return Err(e),
                    Err(IngestError::Invalid { code, message }) => {
                        if first_error.is_none() {
                            first_error = Some(invalid(code, message.clone()));
                        }
                        rejected.push(Rejected {
                            index: i,
                            code,
                            message,
                        });
                    }
                    Err(other) => return Err(other),
                }
            }
            if messages.is_empty() {
                return Err(first_error.unwrap_or_else(|| invalid("empty_batch", "no valid item")));
            }
            Ok(Parsed {
                messages,
                rejected,
                write_key: parsed.write_key,
            })
        }
    }
}

/// Accepts validated messages.
pub struct Ingestor {
    /// The messageIds accepted within the dedupe window; used under the contact lock.
    dedupe: std::sync::Mutex<DedupeState>,
    /// `[limits]`, swapped on reload.
    limits: std::sync::RwLock<Arc<LimitsConfig>>,
    store: Arc<dyn Store>,
    flusher: Arc<Flusher>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
}

/// The dedupe window and when its stored records were last swept.
struct DedupeState {
    window: Dedupe,
    next_sweep: i64,
    /// The messageIds of requests being written now.
    in_flight: HashSet<String>,
}

impl DedupeState {
    /// Once a minute: forget the ids that left the window, in memory and (a bounded number of
    /// records at a time) in the store. A failed sweep is retried at the next one; it never
    /// fails the request that ran it.
    fn sweep(&mut self, store: &dyn Store, now: i64) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY_MS;
        self.window.expire(now);
        match store.expire_message_ids(now - self.window.window_ms(), SWEEP_RECORDS) {
            // More to go: the next request sweeps again.
            Ok(SWEEP_RECORDS) => self.next_sweep = now,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "dropping expired messageId records failed"),
        }
    }
}

/// How often the dedupe window forgets what left it.
const SWEEP_EVERY_MS: i64 = 60_000;
/// Stored messageId records removed per sweep (each holds one request's ids), so a sweep
/// never holds ingest up for long; a backlog goes over the following sweeps.
const SWEEP_RECORDS: usize = 2_000;

impl Ingestor {
    /// An ingestor writing to the engine's store, remembering messageIds for `dedupe_window_ms`.
    /// Rebuilds the window from the stored records (and takes over the markers of a data
    /// directory written before the window existed).
    pub fn new(
        engine: Arc<Engine>,
        dedupe_window_ms: i64,
        limits: LimitsConfig,
    ) -> Result<Self, StoreError> {
        let store = engine.store.clone();
        let now = engine.clock.now_ms();
        let mut window = Dedupe::new(dedupe_window_ms);
        store.message_ids_since(now - window.window_ms(), &mut |at, id| {
            window.insert(id, at)
        })?;
        Ok(Ingestor {
            dedupe: std::sync::Mutex::new(DedupeState {
                window,
                next_sweep: now,
                in_flight: HashSet::new(),
            }),
            limits: std::sync::RwLock::new(Arc::new(limits)),
            store,
            flusher: engine.flusher.clone(),
            clock: engine.clock.clone(),
            metrics: engine.metrics.clone(),
            engine,
        })
    }

    /// messageIds in the dedupe window.
    pub fn dedupe_len(&self) -> usize {
        self.dedupe.locked().window.len()
    }

    /// Store messages durably (answering only after the flush), then hand them to the engine.
    /// Waits first while the workers' backlog is at its limit (`[engine] max_backlog`).
    pub async fn ingest(&self, messages: Vec<Message>) -> Result<Accepted, IngestError> {
        self.engine.backlog.room().await;
        let (accepted, items) = self.write(messages)?;
        self.flusher
            .commit()
            .await
            .map_err(IngestError::Durability)?;
        self.engine.submit_events(items);
        Ok(accepted)
    }

    /// The synchronous part: identity resolution and writes, under the locks of the ids
    /// and contacts the request names; one atomic batch.
    pub fn write(&self, messages: Vec<Message>) -> Result<(Accepted, Vec<Queued>), IngestError> {
        let now = self.clock.now_ms();
        let batch = messages.len() > 1 || messages.first().is_some_and(|m| m.index > 0);
        let (messages, duplicates, claim) = self.claim(messages, now);
        if messages.is_empty() {
            return Ok((
                Accepted {
                    accepted: 0,
                    duplicates,
                    rejected: Vec::new(),
                },
                Vec::new(),
            ));
        }
        let limits = self.limits();
        let store = self.store.as_ref();
        let ids = write::named_ids(&messages);
        let known: BTreeSet<String> = messages.iter().filter_map(|m| m.contact.clone()).collect();
        let locks = &self.engine.contact_locks;
        let relinks = &self.engine.relinks;
        loop {
            let _ids = locks.identities(ids.iter().map(|(_, id)| id));
            let seen = relinks.load(std::sync::atomic::Ordering::SeqCst);
            let mut before = write::Lookup::take(&self.engine, &ids, &known)?;
            let _contacts = locks.contacts(before.contacts());
            // A merge (or erasure) elsewhere may have moved an id while this request waited:
            // look again, and start over if it did.
            if relinks.load(std::sync::atomic::Ordering::SeqCst) != seen
                && write::Lookup::take(&self.engine, &ids, &known)? != before
            {
                continue;
            }
            let known = std::mem::take(&mut before.known);
            let mut work = write::Working::new(store, &limits, before);
            for m in &messages {
                match &m.contact {
                    // A contact Herald named may have been merged since: its survivor.
                    Some(c) => {
                        let Some(Some(live)) = known.get(c) else {
                            continue;
                        };
                        let mut m = m.clone();
                        m.contact = Some(live.clone());
                        work.take(self, &m, batch, now)?;
                    }
                    None => work.take(self, m, batch, now)?,
                }
            }
            let accepted = work.accepted;
            let rejected = std::mem::take(&mut work.rejected);
            let (queued, written, merged) = work.apply(now)?;
            if merged {
                relinks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            claim.commit(&written, now);
            for r in &rejected {
                self.metrics.rejected(r.code);
            }
            return Ok((
                Accepted {
                    accepted,
                    duplicates,
                    rejected,
                },
                queued,
            ));
        }
    }

    /// Claim the request's messageIds: those in the window (or twice in the request, or in a
    /// request under way) are duplicates; the rest are held until the request is written.
    fn claim(&self, messages: Vec<Message>, now: i64) -> (Vec<Message>, usize, Claim<'_>) {
        let mut d = self.dedupe.locked();
        d.sweep(self.store.as_ref(), now);
        let mut kept = Vec::with_capacity(messages.len());
        let mut claimed = Vec::new();
        let mut dup = 0;
        for m in messages {
            if let Some(mid) = &m.message_id {
                if d.window.contains(mid) || !d.in_flight.insert(mid.clone()) {
                    dup += 1;
                    self.metrics.duplicate();
                    continue;
                }
                claimed.push(mid.clone());
            }
            kept.push(m);
        }
        (
            kept,
            dup,
            Claim {
                ingestor: self,
                ids: claimed,
            },
        )
    }

    /// The contact limits in force.
    pub fn limits(&self) -> Arc<LimitsConfig> {
        self.limits.read_locked().clone()
    }

    /// New contact limits (a reload).
    pub fn set_limits(&self, limits: LimitsConfig) {
        *self.limits.write_locked() = Arc::new(limits);
    }
}

/// A request's claimed messageIds: they join the window once written, and are released
/// whatever happens.
struct Claim<'a> {
    ingestor: &'a Ingestor,
    ids: Vec<String>,
}

impl Claim<'_> {
    fn commit(&self, written: &[String], now: i64) {
        let mut d = self.ingestor.dedupe.locked();
        for id in written {
            d.window.insert(id, now);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut d = self.ingestor.dedupe.locked();
        for id in &self.ids {
            d.in_flight.remove(id);
        }
    }
}
