//! How records are laid out in sled: keys (order-preserving times, composite keys, the
//! run-by-contact index), the compact event encoding, audience states, and the u16-length string
//! codec shared by segment-change and messageId records.

#[allow(unused_imports)]
use super::*;

/// An audience state as stored (postcard).
pub fn enc_audience(state: &AudienceState) -> StoreResult<Vec<u8>> {
    // Sized once: growing the buffer field by field cost more than the encoding.
    Ok(postcard::to_extend(state, Vec::with_capacity(1024))?)
}

/// An audience state from its stored form.
pub fn dec_audience(b: &[u8]) -> StoreResult<AudienceState> {
    Ok(postcard::from_bytes(b)?)
}

pub(super) fn enc<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    Ok(serde_json::to_vec(v)?)
}

pub(super) fn dec<T: DeserializeOwned>(b: &[u8]) -> StoreResult<T> {
    Ok(serde_json::from_slice(b)?)
}

/// An event as stored under `contact \0 seq`: postcard, with the sequence number left to the
/// key, properties and context kept as JSON text, and the receive time as an offset from the
/// sender's timestamp — about a third of the event's JSON size. Smaller values make sled's
/// leaf splits and page rebuilds cheaper, which is most of what an ingested event costs.
#[derive(Serialize, serde::Deserialize)]
pub(super) struct StoredEvent<'a> {
    #[serde(borrow)]
    pub(super) kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(super) event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(super) properties: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(super) message_id: Option<std::borrow::Cow<'a, str>>,
    pub(super) timestamp: i64,
    pub(super) received_after: i64,
    #[serde(borrow)]
    pub(super) context: Option<std::borrow::Cow<'a, str>>,
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
pub(super) fn event_seq(key: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&key[key.len() - 8..]);
    u64::from_be_bytes(a)
}

pub(super) fn dec_event(key: &[u8], b: &[u8]) -> StoreResult<Event> {
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

pub(super) fn dec_event_fact(key: &[u8], b: &[u8]) -> StoreResult<EventFact> {
    let s: StoredEvent = postcard::from_bytes(b)?;
    Ok(EventFact::new(
        event_seq(key),
        s.event.into_owned(),
        s.timestamp,
        Some(s.properties.into_owned()),
    ))
}

pub(super) fn key2(a: &str, b: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b);
    k
}

pub(super) fn prefix(a: &str) -> Vec<u8> {
    key2(a, b"")
}

/// `contact \0 workflow \0 created_at run`: a contact's runs, each workflow's in start order.
pub(super) fn run_index_key(contact: &str, workflow: &str, created_at: i64, run: &str) -> Vec<u8> {
    let mut k = key2(contact, &prefix(workflow));
    k.extend_from_slice(&time_key(created_at));
    k.extend_from_slice(run.as_bytes());
    k
}

/// Workflow, start time and run id of a run index key with its contact prefix removed.
pub(super) fn parse_run_index_key(rest: &[u8]) -> (String, i64, String) {
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
pub(super) fn count_keys(tree: &sled::Tree) -> StoreResult<usize> {
    let mut n = 0;
    for k in tree.iter().keys() {
        k?;
        n += 1;
    }
    Ok(n)
}

/// Order-preserving encoding of a signed time.
pub(super) fn time_key(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn time_from_key(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

/// Append `s` with a u16 length before it (ids here are bounded far below 64 KB: ingest takes
/// at most 32 KB per message).
pub(super) fn push_str16(v: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    v.extend_from_slice(&(b.len() as u16).to_be_bytes());
    v.extend_from_slice(b);
}

/// Take a string written by [`push_str16`] off the front of `v`.
pub(super) fn take_str16(v: &mut &[u8], record: &str) -> StoreResult<String> {
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
pub(super) fn encode_changes(changes: &[SegmentChange]) -> Vec<u8> {
    let mut v = Vec::with_capacity(changes.iter().map(|c| 11 + c.contact.len()).sum());
    for c in changes {
        v.push(u8::from(c.entered));
        v.extend_from_slice(&time_key(c.at));
        push_str16(&mut v, &c.contact);
    }
    v
}

pub(super) fn decode_changes(mut v: &[u8]) -> StoreResult<Vec<SegmentChange>> {
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

pub(super) fn id_key(kind: IdKind, id: &str) -> Vec<u8> {
    let tag = match kind {
        IdKind::User => "u",
        IdKind::Anonymous => "a",
    };
    key2(tag, id.as_bytes())
}

/// The trees a write touches, by their number in a commit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum TreeId {
    Contacts = 0,
    Identities = 1,
    Events = 2,
    Dedupe = 3,
    Inbox = 4,
    Runs = 5,
    RunsByContact = 6,
    Journal = 7,
    Timers = 8,
    Meta = 9,
    SegmentLog = 10,
    Audience = 11,
    Outbox = 12,
    Waits = 13,
    Consent = 14,
    Suppression = 15,
    Recipients = 16,
    Analytics = 17,
    /// A generation of noted analytics facts: the key is the generation (u64 BE) and the
    /// fact's id, the tree `facts-GENERATION` (see [`SledStore::seal_facts`](super::Store::seal_facts)).
    Facts = 18,
}

impl TreeId {
    /// Every tree, in number order.
    const ALL: [TreeId; 19] = [
        TreeId::Contacts,
        TreeId::Identities,
        TreeId::Events,
        TreeId::Dedupe,
        TreeId::Inbox,
        TreeId::Runs,
        TreeId::RunsByContact,
        TreeId::Journal,
        TreeId::Timers,
        TreeId::Meta,
        TreeId::SegmentLog,
        TreeId::Audience,
        TreeId::Outbox,
        TreeId::Waits,
        TreeId::Consent,
        TreeId::Suppression,
        TreeId::Recipients,
        TreeId::Analytics,
        TreeId::Facts,
    ];
}

/// One put (`value: Some`) or remove (`None`) of a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawOp {
    pub(super) tree: TreeId,
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
    /// A put under a key that cannot exist yet (a new sequence number): undone by a remove.
    pub(super) fresh: bool,
}

/// A commit record: per operation its tree, the key and the value (u32 lengths; a value
/// length of `u32::MAX` marks a remove).
pub(super) fn encode_ops(ops: &[RawOp]) -> Vec<u8> {
    let size = ops
        .iter()
        .map(|o| 9 + o.key.len() + o.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(size);
    for o in ops {
        out.push(o.tree as u8);
        out.extend_from_slice(&(o.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&o.key);
        match &o.value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    out
}

/// The first byte of an undo record (tree numbers, which begin a commit record, are below it).
pub(super) const UNDO_RECORD: u8 = 0xFF;

/// An undo record, for a batch of fresh puts only: the tree and key of each (u32 lengths),
/// which a crash that cut the batch off removes again. Much smaller than a commit record,
/// which carries every value.
pub(super) fn encode_undo(ops: &[RawOp]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + ops.iter().map(|o| 5 + o.key.len()).sum::<usize>());
    out.push(UNDO_RECORD);
    for o in ops {
        out.push(o.tree as u8);
        out.extend_from_slice(&(o.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&o.key);
    }
    out
}

/// The removals an undo record stands for.
pub(super) fn decode_undo(b: &[u8]) -> StoreResult<Vec<RawOp>> {
    let corrupt = || StoreError::Corrupt("a write batch's undo record is cut short".into());
    let mut b = b.strip_prefix(&[UNDO_RECORD]).ok_or_else(corrupt)?;
    let mut ops = Vec::new();
    while !b.is_empty() {
        if b.len() < 5 {
            return Err(corrupt());
        }
        let tree = *TreeId::ALL.get(usize::from(b[0])).ok_or_else(corrupt)?;
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        b = &b[5..];
        if b.len() < len {
            return Err(corrupt());
        }
        ops.push(remove(tree, b[..len].to_vec()));
        b = &b[len..];
    }
    Ok(ops)
}

/// Read a commit record back.
pub(super) fn decode_ops(mut b: &[u8]) -> StoreResult<Vec<RawOp>> {
    let corrupt = || StoreError::Corrupt("a write batch's commit record is cut short".into());
    let take = |b: &mut &[u8], n: usize| -> StoreResult<Vec<u8>> {
        if b.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    let len = |bytes: Vec<u8>| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let mut ops = Vec::new();
    while !b.is_empty() {
        let tree = take(&mut b, 1)?[0];
        let tree = *TreeId::ALL
            .get(usize::from(tree))
            .ok_or_else(|| StoreError::Corrupt(format!("a write batch names tree {tree}")))?;
        let key_len = len(take(&mut b, 4)?) as usize;
        let key = take(&mut b, key_len)?;
        let value_len = len(take(&mut b, 4)?);
        let value = if value_len == u32::MAX {
            None
        } else {
            Some(take(&mut b, value_len as usize)?)
        };
        ops.push(RawOp {
            tree,
            key,
            value,
            fresh: false,
        });
    }
    Ok(ops)
}

pub(super) fn put(tree: TreeId, key: Vec<u8>, value: Vec<u8>) -> RawOp {
    RawOp {
        tree,
        key,
        value: Some(value),
        fresh: false,
    }
}

/// A put under a key new by construction (a sequence number the store just handed out).
fn put_fresh(tree: TreeId, key: Vec<u8>, value: Vec<u8>) -> RawOp {
    RawOp {
        fresh: true,
        ..put(tree, key, value)
    }
}

pub(super) fn remove(tree: TreeId, key: Vec<u8>) -> RawOp {
    RawOp {
        tree,
        key,
        value: None,
        fresh: false,
    }
}

/// A contact record.
pub(super) fn contact_op(c: &Contact) -> StoreResult<RawOp> {
    Ok(put(TreeId::Contacts, c.id.as_bytes().to_vec(), enc(c)?))
}

/// An external id pointing at its contact.
pub(super) fn identity_op(kind: IdKind, id: &str, contact: &str) -> RawOp {
    put(
        TreeId::Identities,
        id_key(kind, id),
        contact.as_bytes().to_vec(),
    )
}

/// An event under its contact and sequence number.
pub(super) fn event_op(contact: &str, e: &Event) -> StoreResult<RawOp> {
    Ok(put_fresh(
        TreeId::Events,
        key2(contact, &e.seq.to_be_bytes()),
        enc_event(e)?,
    ))
}

/// One request's messageIds, keyed by the time accepted and a sequence number.
pub(super) fn message_ids_op(at: i64, seq: u64, ids: &[String]) -> RawOp {
    let mut k = time_key(at).to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    let mut v = Vec::with_capacity(ids.iter().map(|i| i.len() + 2).sum());
    for id in ids {
        push_str16(&mut v, id);
    }
    put_fresh(TreeId::Dedupe, k, v)
}

/// An inbox record (none for no items).
pub(super) fn inbox_op(key: u64, items: &[InboxItem]) -> StoreResult<Option<RawOp>> {
    if items.is_empty() {
        return Ok(None);
    }
    Ok(Some(put_fresh(
        TreeId::Inbox,
        key.to_be_bytes().to_vec(),
        enc(&items)?,
    )))
}

/// The removal of a finished inbox record.
pub(super) fn inbox_done_op(key: u64) -> RawOp {
    remove(TreeId::Inbox, key.to_be_bytes().to_vec())
}

/// A run's key in the run-by-contact index.
pub(super) fn run_index_op(run: &Run) -> RawOp {
    put(
        TreeId::RunsByContact,
        run_index_key(&run.contact, &run.workflow, run.created_at, &run.id),
        Vec::new(),
    )
}

/// A run record.
pub(super) fn run_op(run: &Run) -> StoreResult<RawOp> {
    Ok(put(TreeId::Runs, run.id.as_bytes().to_vec(), enc(run)?))
}

/// A journal step.
pub(super) fn step_op(run: &str, step: &Step) -> StoreResult<RawOp> {
    Ok(put(
        TreeId::Journal,
        key2(run, &step.seq.to_be_bytes()),
        enc(step)?,
    ))
}

/// A timer's key: due time, then the stored form of its target.
fn timer_key(due: i64, target: &TimerTarget) -> Vec<u8> {
    let mut k = time_key(due).to_vec();
    match target {
        TimerTarget::Run(run) => k.extend_from_slice(run.as_bytes()),
        TimerTarget::Audience(_) => k.extend_from_slice(target.encode().as_bytes()),
    }
    k
}

/// A timer, its contact as the value.
pub(super) fn timer_op(t: &Timer) -> RawOp {
    put(
        TreeId::Timers,
        timer_key(t.due, &t.target),
        t.contact.as_bytes().to_vec(),
    )
}

/// The removal of a timer.
pub(super) fn clear_timer_op(due: i64, target: &TimerTarget) -> RawOp {
    remove(TreeId::Timers, timer_key(due, target))
}

/// A small setting.
/// Whose message a provider's id names: JSON in `meta` under `pmsg:<channel>:<provider id>`
/// (layout 5).
pub(super) fn provider_message_op(
    channel: &str,
    provider_id: &str,
    owner: &ProviderMessage,
) -> StoreResult<RawOp> {
    let value = serde_json::to_string(owner)?;
    Ok(meta_op(&format!("pmsg:{channel}:{provider_id}"), &value))
}

pub(super) fn meta_op(key: &str, value: &str) -> RawOp {
    put(
        TreeId::Meta,
        key.as_bytes().to_vec(),
        value.as_bytes().to_vec(),
    )
}

/// One record of a segment's change log: the changes one write logged, keyed by the segment
/// and a sequence number (so the newest is the last written even if the clock stepped back).
pub(super) fn segment_changes_op(segment: &str, seq: u64, changes: &[SegmentChange]) -> RawOp {
    let mut k = prefix(segment);
    k.extend_from_slice(&seq.to_be_bytes());
    put_fresh(TreeId::SegmentLog, k, encode_changes(changes))
}

/// A contact's audience state, already encoded ([`enc_audience`]).
pub(super) fn audience_op(contact: &str, encoded: Vec<u8>) -> RawOp {
    put(TreeId::Audience, contact.as_bytes().to_vec(), encoded)
}

/// An effect's intent under its idempotency key.
pub(super) fn intent_op(key: &str, intent: &Intent) -> StoreResult<RawOp> {
    Ok(put(TreeId::Outbox, key.as_bytes().to_vec(), enc(intent)?))
}

/// The removal of an intent whose result is recorded.
pub(super) fn intent_done_op(key: &str) -> RawOp {
    remove(TreeId::Outbox, key.as_bytes().to_vec())
}

/// A contact's consent for one topic, under `contact \0 topic`.
pub(super) fn consent_op(contact: &str, record: &ConsentRecord) -> StoreResult<RawOp> {
    Ok(put(
        TreeId::Consent,
        key2(contact, record.topic.as_bytes()),
        enc(record)?,
    ))
}

/// A page of a broadcast's audience snapshot: `broadcast \0 seq (u64 BE)` → contact id, new
/// keys each.
pub(super) fn recipients_ops(broadcast: &str, first: u64, contacts: &[String]) -> Vec<RawOp> {
    contacts
        .iter()
        .enumerate()
        .map(|(i, c)| RawOp {
            fresh: true,
            ..put(
                TreeId::Recipients,
                key2(broadcast, &(first + i as u64).to_be_bytes()),
                c.as_bytes().to_vec(),
            )
        })
        .collect()
}

/// An address's suppression on a channel, under `channel \0 address`.
pub(super) fn suppress_op(s: &Suppression) -> StoreResult<RawOp> {
    Ok(put(
        TreeId::Suppression,
        key2(&s.channel, s.address.as_bytes()),
        enc(s)?,
    ))
}

/// A suppression lifted.
pub(super) fn unsuppress_op(channel: &str, address: &str) -> RawOp {
    remove(TreeId::Suppression, key2(channel, address.as_bytes()))
}
