//! Write batches: writes that land together or not at all.

#[allow(unused_imports)]
use super::*;

/// One write of a [`WriteBatch`], named by what it stores (the same records the single-write
/// methods of [`Store`] write).
#[derive(Debug, Clone)]
pub enum Write {
    /// [`Store::put_contact`].
    Contact(Contact),
    /// [`Store::put_contact`] of a contact this batch creates (its id is new): a crash
    /// takes it back.
    NewContact(Contact),
    /// [`Store::link_identity`] of an id no contact had: a crash takes it back.
    NewIdentity {
        /// Which kind of id.
        kind: IdKind,
        /// The external id.
        id: String,
        /// The contact it belongs to.
        contact: String,
    },
    /// [`Store::link_identity`].
    Identity {
        /// Which kind of id.
        kind: IdKind,
        /// The external id.
        id: String,
        /// The contact it belongs to.
        contact: String,
    },
    /// [`Store::put_event`].
    Event {
        /// The contact whose timeline it joins.
        contact: String,
        /// The event.
        event: Event,
    },
    /// [`Store::move_events`]: the events stored for `from` when the batch is applied join
    /// `to`'s timeline.
    MoveEvents {
        /// The contact merged away.
        from: String,
        /// The contact it was merged into.
        to: String,
    },
    /// [`Store::move_waits`].
    MoveWaits {
        /// The contact merged away.
        from: String,
        /// The contact it was merged into.
        to: String,
    },
    /// A merged-away contact's consent records go to the contact it was merged into; per
    /// topic the newer record wins (the person's latest choice).
    MoveConsent {
        /// The contact merged away.
        from: String,
        /// The contact it was merged into.
        to: String,
    },
    /// An identity link removed (erasure).
    Unlink {
        /// Which kind of id.
        kind: IdKind,
        /// The external id.
        id: String,
    },
    /// Erasure: every record of the contact in every tree goes — the profile, its timeline
    /// and waits, its audience state, its runs with their journals, intents and timers, its
    /// entries in segment logs and the engine's inbox, and the provider-message records that
    /// name it. Identity links are removed with [`Write::Unlink`].
    EraseContact {
        /// The contact.
        contact: String,
    },
    /// [`Store::log_message_ids`].
    MessageIds {
        /// When the request was accepted.
        at: i64,
        /// Its `messageId`s.
        ids: Vec<String>,
    },
    /// [`Store::push_inbox`].
    Inbox {
        /// The record's key.
        key: u64,
        /// The accepted events the engine owes work.
        items: Vec<InboxItem>,
    },
    /// [`Store::remove_inbox`].
    InboxDone {
        /// The record's key.
        key: u64,
    },
    /// [`Store::create_run`].
    NewRun(Run),
    /// [`Store::put_run`].
    Run(Run),
    /// [`Store::put_step`].
    Step {
        /// The run.
        run: String,
        /// The journal step.
        step: Step,
    },
    /// [`Store::set_timer`].
    Timer(Timer),
    /// [`Store::clear_timer`].
    ClearTimer {
        /// When it was due.
        due: i64,
        /// What it would have woken.
        target: TimerTarget,
    },
    /// [`Store::log_segment_changes`].
    SegmentChanges {
        /// The segment.
        segment: String,
        /// Its entries and exits, oldest first.
        changes: Vec<SegmentChange>,
    },
    /// [`Store::put_audience_encoded`].
    Audience {
        /// The contact.
        contact: String,
        /// Its audience state, encoded with [`crate::store::enc_audience`].
        encoded: Vec<u8>,
    },
    /// [`Store::put_intent`].
    Intent {
        /// The effect's idempotency key.
        key: String,
        /// The intent.
        intent: Intent,
    },
    /// A send's (or action's) first attempt: its step, queued, and its intent, both under
    /// keys no record had (the step's first record, the intent of its first call), so a crash
    /// takes them back rather than finishing them and the batch's commit record holds only
    /// their keys. Nothing has gone to the channel before the batch is in.
    NewEffect {
        /// The run.
        run: String,
        /// The queued step.
        step: Step,
        /// The effect's idempotency key.
        key: String,
        /// The intent.
        intent: Intent,
    },
    /// [`Store::remove_intent`].
    IntentDone {
        /// The effect's idempotency key.
        key: String,
    },
    /// Whose message a provider's id names, read with [`Store::provider_message`].
    ProviderMessage {
        /// The channel the provider serves.
        channel: String,
        /// The provider's message id.
        provider_id: String,
        /// The run, step and contact it belongs to.
        owner: ProviderMessage,
    },
    /// [`Store::put_meta`].
    Meta {
        /// The setting.
        key: String,
        /// Its value.
        value: String,
    },
    /// A contact's consent for one topic (replaces its earlier record for that topic);
    /// read with [`Store::consent`].
    Consent {
        /// The contact.
        contact: String,
        /// The record (its topic included).
        record: ConsentRecord,
    },
    /// An address suppressed on a channel (replaces an earlier suppression of it); read with
    /// [`Store::suppression`].
    Suppress(Suppression),
    /// A suppression lifted.
    Unsuppress {
        /// The channel.
        channel: String,
        /// The normalized address.
        address: String,
    },
    /// A page of a broadcast's audience snapshot: `contacts` numbered from `first`; read
    /// with [`Store::recipients`](super::Store::recipients).
    Recipients {
        /// The broadcast.
        broadcast: String,
        /// The number of the first contact.
        first: u64,
        /// Contact ids, in order.
        contacts: Vec<String>,
    },
    /// A put (`value: Some`) or remove in the analytics keyspace (the fold's cursor and
    /// markers, folded facts, counters; see `crate::analytics`), read with
    /// [`Store::analytics_get`](super::Store::analytics_get) and
    /// [`Store::analytics_scan`](super::Store::analytics_scan).
    Analytics {
        /// The key.
        key: Vec<u8>,
        /// The value; `None` removes the key.
        value: Option<Vec<u8>>,
    },
    /// An analytics fact, noted in the open generation of facts (records note theirs
    /// themselves; this notes one no record does, such as a test's).
    Fact(crate::analytics::Fact),
}

/// Writes that [`Store::apply`] makes land together: after a crash, every one of them is
/// stored or none is. On a server database a batch is one transaction.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    writes: Vec<Write>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// An empty batch with room for `n` writes.
    pub fn with_capacity(n: usize) -> Self {
        WriteBatch {
            writes: Vec::with_capacity(n),
        }
    }

    /// Add a write.
    pub fn push(&mut self, write: Write) -> &mut Self {
        self.writes.push(write);
        self
    }

    /// The writes, in the order they were added.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// How many writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// No writes at all?
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}
