//! The records Herald keeps: contacts, events, runs, journal steps, timers and waits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A person Herald knows, merged across every identity they used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Contact {
    /// Herald's own id (`c_…`).
    pub id: String,
    /// Traits from `identify`, CSV imports and `update` steps.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Known `userId`s.
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// Known `anonymousId`s.
    #[serde(default)]
    pub anonymous_ids: Vec<String>,
    /// Groups from `group` calls.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last change, ms since the epoch.
    pub updated_at: i64,
    /// Set when this contact was merged into another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
    /// How many contacts were merged into this one (their events moved here).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub merges: u32,
    /// The contacts merged into this one, directly or through others: each of them points
    /// straight here, so an old id resolves in one step however long the chain of merges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Contact {
    /// A new, empty contact.
    pub fn new(id: String, now: i64) -> Self {
        Contact {
            id,
            attributes: Map::new(),
            user_ids: Vec::new(),
            anonymous_ids: Vec::new(),
            groups: Vec::new(),
            created_at: now,
            updated_at: now,
            merged_into: None,
            merges: 0,
            merged_from: Vec::new(),
        }
    }

    /// Merge attributes in; `null` removes a key. Returns whether anything changed.
    pub fn merge_attributes(&mut self, attrs: &Map<String, Value>) -> bool {
        let mut changed = false;
        for (k, v) in attrs {
            if v.is_null() {
                changed |= self.attributes.remove(k).is_some();
            } else if self.attributes.get(k) != Some(v) {
                self.attributes.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        changed
    }

    /// The view scripts and templates get: attributes plus `id`, `user_id`, `score`.
    pub fn snapshot(&self) -> Value {
        let mut m = self.attributes.clone();
        m.insert("id".into(), Value::String(self.id.clone()));
        if let Some(u) = self.user_ids.first() {
            m.entry("user_id")
                .or_insert_with(|| Value::String(u.clone()));
        }
        m.entry("score").or_insert(Value::from(0));
        Value::Object(m)
    }
}

/// One event on a contact's timeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Position in the global event order.
    pub seq: u64,
    /// `track`, `identify`, `page`, `screen`, `group`, `alias`, or `webhook`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event name: the `track` event, or the kind for the others.
    pub event: String,
    /// Properties (track/page/screen) or traits (identify/group).
    #[serde(default)]
    pub properties: Value,
    /// The sender's `messageId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// When it happened according to the sender, ms since the epoch.
    pub timestamp: i64,
    /// When Herald accepted it.
    pub received_at: i64,
    /// Sender context (library, ip, …).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub context: Value,
}

impl Event {
    /// The event as scripts see it (trigger, `wait_for` result).
    pub fn script_value(&self) -> Value {
        serde_json::json!({
            "type": self.kind,
            "event": self.event,
            "properties": self.properties,
            "timestamp": self.timestamp,
            "message_id": self.message_id,
        })
    }
}

/// The parts of a stored event that behaviour queries (`count`, `last_seen`) read, decoded
/// without building the property and context trees.
#[derive(Debug)]
pub struct EventFact {
    /// Position in the global event order.
    pub seq: u64,
    /// The event name.
    pub event: String,
    /// When it happened according to the sender, ms since the epoch.
    pub timestamp: i64,
    /// Properties as JSON text, parsed on demand.
    properties: Option<String>,
}

impl EventFact {
    /// A fact with its properties still as JSON text.
    pub fn new(seq: u64, event: String, timestamp: i64, properties_json: Option<String>) -> Self {
        EventFact {
            seq,
            event,
            timestamp,
            properties: properties_json,
        }
    }

    /// Whether the properties hold every key of `filter` with an equal value.
    pub fn matches(&self, filter: &Map<String, Value>) -> bool {
        if filter.is_empty() {
            return true;
        }
        let props: Value = self
            .properties
            .as_ref()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or(Value::Null);
        herald_dsl::decl::matches_filter(filter, &props)
    }
}

/// Work the engine owes an accepted event (start runs, wake waits, count goals).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboxItem {
    /// The contact the event belongs to.
    pub contact: String,
    /// The event's sequence number.
    pub event_seq: u64,
}

/// The life of a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created or being activated.
    Running,
    /// Waiting on a timer, an event or a retry.
    Waiting,
    /// `run` returned.
    Completed,
    /// The goal was reached.
    Converted,
    /// The script called `exit`.
    Exited,
    /// The script failed.
    Failed,
    /// Needs an operator: non-determinism or an ambiguous delivery.
    Parked,
}

impl RunStatus {
    /// Every status, for metrics.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Completed,
        RunStatus::Converted,
        RunStatus::Exited,
        RunStatus::Failed,
        RunStatus::Parked,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Converted => "converted",
            RunStatus::Exited => "exited",
            RunStatus::Failed => "failed",
            RunStatus::Parked => "parked",
        }
    }

    /// Parse a lower-case name.
    pub fn parse(s: &str) -> Option<Self> {
        RunStatus::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Will this run never be activated again?
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Running | RunStatus::Waiting)
    }
}

/// What the analytics fold reads of a run: the fields it counts by, decoded without the rest
/// (the contact's snapshot, the trigger's other properties, the logs).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub id: String,
    /// Workflow (or broadcast) name.
    pub workflow: String,
    /// Script version.
    pub script_hash: String,
    /// Contact id.
    pub contact: String,
    /// How it first ended, if it did.
    #[serde(default)]
    pub ended: Option<(RunStatus, i64)>,
    /// What started it, in part.
    #[serde(default, deserialize_with = "map_only")]
    pub trigger: TriggerSummary,
}

/// The parts of a run's trigger the fold reads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TriggerSummary {
    /// `event`, `broadcast`, `manual`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<Value>,
    /// The run is in its holdout group (`true`).
    #[serde(default)]
    pub holdout: Option<Value>,
    /// Of the trigger's properties, a broadcast's `seed` and `phase`.
    #[serde(default, deserialize_with = "map_only_or_null")]
    pub properties: Option<TriggerProperties>,
}

/// Deserialize `T` from an object only: a derived `Deserialize` also reads an array by
/// position, which a summary must never mistake for the fields it names (the whole record
/// is read instead).
fn map_only<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct Fields<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(Fields(std::marker::PhantomData))
}

/// [`map_only`], or `None` for null.
fn map_only_or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    struct Object<T>(T);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            map_only(d).map(Object)
        }
    }
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// A broadcast run's own trigger properties (read from an object only: an event's
/// properties of another shape have neither).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TriggerProperties {
    /// A seed-list test send.
    #[serde(default)]
    pub seed: Option<Value>,
    /// A tested broadcast's phase (`test`, `winner`).
    #[serde(default)]
    pub phase: Option<Value>,
}

impl RunSummary {
    /// The summary of a run read whole.
    pub fn of(run: &Run) -> RunSummary {
        let t = &run.trigger;
        let some = |v: &Value| (!v.is_null()).then(|| v.clone());
        RunSummary {
            id: run.id.clone(),
            workflow: run.workflow.clone(),
            script_hash: run.script_hash.clone(),
            contact: run.contact.clone(),
            ended: run.ended,
            trigger: TriggerSummary {
                kind: some(&t["type"]),
                holdout: some(&t["holdout"]),
                properties: t["properties"].is_object().then(|| TriggerProperties {
                    seed: some(&t["properties"]["seed"]),
                    phase: some(&t["properties"]["phase"]),
                }),
            },
        }
    }

    /// A broadcast's run.
    pub fn is_broadcast(&self) -> bool {
        self.trigger.kind.as_ref().and_then(Value::as_str) == Some("broadcast")
    }

    /// A broadcast's seed-list test send.
    pub fn is_seed(&self) -> bool {
        self.trigger
            .properties
            .as_ref()
            .and_then(|p| p.seed.as_ref())
            == Some(&Value::Bool(true))
    }

    /// In its workflow's or broadcast's holdout group.
    pub fn in_holdout(&self) -> bool {
        self.trigger.holdout == Some(Value::Bool(true))
    }

    /// A tested broadcast's phase.
    pub fn phase(&self) -> Option<String> {
        self.trigger
            .properties
            .as_ref()
            .and_then(|p| p.phase.as_ref())
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// What the analytics fold reads of a journal step: its kind, name, label and state, its
/// result, and of its input the channel, template and recipient (not the rendered message).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StepSummary {
    /// Position in the journal.
    pub seq: u32,
    /// `send`, `wait`, `variant`, ...
    pub kind: String,
    /// The step's name.
    pub name: String,
    /// Channel, template and recipient of its input.
    #[serde(default, deserialize_with = "map_only")]
    pub input: InputSummary,
    /// State.
    pub status: StepStatus,
    /// Result.
    #[serde(default)]
    pub result: Value,
    /// The label the script gave it.
    #[serde(default)]
    pub label: Option<String>,
}

/// A step input's channel, template and recipient.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct InputSummary {
    /// Channel.
    #[serde(default)]
    pub channel: Option<Value>,
    /// Template.
    #[serde(default)]
    pub template: Option<Value>,
    /// Recipient address.
    #[serde(default)]
    pub to: Option<Value>,
}

impl InputSummary {
    /// The channel, when it is text.
    pub fn channel(&self) -> Option<&str> {
        self.channel.as_ref().and_then(Value::as_str)
    }
    /// The template, when it is text.
    pub fn template(&self) -> Option<&str> {
        self.template.as_ref().and_then(Value::as_str)
    }
    /// The recipient, when it is text.
    pub fn to(&self) -> Option<&str> {
        self.to.as_ref().and_then(Value::as_str)
    }
}

impl StepSummary {
    /// The summary of a step read whole.
    pub fn of(step: &Step) -> StepSummary {
        let some = |k: &str| step.input.get(k).filter(|v| !v.is_null()).cloned();
        StepSummary {
            seq: step.seq,
            kind: step.kind.clone(),
            name: step.name.clone(),
            input: InputSummary {
                channel: some("channel"),
                template: some("template"),
                to: some("to"),
            },
            status: step.status,
            result: step.result.clone(),
            label: step.label.clone(),
        }
    }
}

/// One run of one workflow for one contact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    /// Run id, derived from what started it so that re-processing cannot start it twice.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// Content hash of the script version this run is pinned to.
    pub script_hash: String,
    /// The contact.
    pub contact: String,
    /// Current status.
    pub status: RunStatus,
    /// The trigger as the script sees it.
    pub trigger: Value,
    /// Contact snapshot when the run started.
    pub start_contact: Value,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// When its pending timer is due, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<i64>,
    /// Why it failed, exited or was parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Script line of the failure, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_line: Option<usize>,
    /// Activations so far.
    #[serde(default)]
    pub activations: u64,
    /// When the goal was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_at: Option<i64>,
    /// The revenue the goal event carried (Segment's `revenue`), in minor units (cents), and
    /// its `currency` (default USD, as in Segment's spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue: Option<(i64, String)>,
    /// This run's share of its goal event's credit, in thousandths (`[analytics]
    /// attribution`): 1000 when it converted alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<u32>,
    /// How and when the run first ended (`completed`, `exited`, `failed`, or `converted`
    /// when its goal ended it on its way), kept when it converts later or an operator
    /// retries it: the funnel counts it at the step it ended at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<(RunStatus, i64)>,
    /// Script output (`print`), most recent last, bounded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// Activations in a row that ended in an error (storage, most likely) and were retried;
    /// reset by one that ends. At [`MAX_FAILED_ACTIVATIONS`] the run is parked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_activations: u32,
}

/// Failed activations in a row after which a run is parked instead of retried.
pub const MAX_FAILED_ACTIVATIONS: u32 = 5;

impl Run {
    /// A run that starts now: running, no activation yet, pinned to `script_hash`.
    pub fn new(
        id: String,
        workflow: String,
        script_hash: String,
        contact: String,
        trigger: Value,
        start_contact: Value,
        now: i64,
    ) -> Run {
        Run {
            id,
            workflow,
            script_hash,
            contact,
            status: RunStatus::Running,
            trigger,
            start_contact,
            created_at: now,
            updated_at: now,
            wake_at: None,
            reason: None,
            error_line: None,
            activations: 0,
            converted_at: None,
            revenue: None,
            credit: None,
            ended: None,
            logs: Vec::new(),
            failed_activations: 0,
        }
    }
}

/// State of a journal step.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// An effect's intent is durable; the call may or may not have happened.
    Intent,
    /// Finished with a result.
    Done,
    /// Failed permanently; replays throw the recorded error.
    Failed,
    /// A wait not yet over.
    Pending,
    /// A transient failure; tried again at `due_at`.
    Retrying,
    /// The provider could not say whether the effect happened; needs an operator.
    Ambiguous,
    /// Handed to the channel's delivery stage with its intent recorded; whether the provider
    /// was called is in the intent (`dispatched_at`).
    Queued,
}

/// One recorded step of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// Position in the run, from 0.
    pub seq: u32,
    /// `send`, `wait`, …
    pub kind: String,
    /// Identifies the step within its kind (`email:welcome`, an event name, …).
    pub name: String,
    /// What the script asked for (and, for effects, the rendered message).
    pub input: Value,
    /// State.
    pub status: StepStatus,
    /// The result returned to the script.
    #[serde(default)]
    pub result: Value,
    /// Error text for failed, retrying and ambiguous steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Calls made for an effect.
    #[serde(default)]
    pub attempts: u32,
    /// When a pending wait or a retry is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
    /// The contact snapshot seen by the script after this step (waits and updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Value>,
    /// Idempotency key of an effect: `run:seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Script line of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// When the step was first recorded.
    pub started_at: i64,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// The script's `label(...)` for it: reports key its numbers by this instead of its
    /// kind, channel and template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A run waiting for an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaitReg {
    /// The run.
    pub run: String,
    /// The pending `wait_for` step.
    pub step: u32,
    /// Property filter.
    #[serde(default)]
    pub filter: Map<String, Value>,
}

/// When a contact last entered a workflow (for re-entry rules).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The run that started then.
    pub run: String,
    /// When.
    pub started_at: i64,
}

/// A stored script version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScriptVersion {
    /// sha256 of the source, hex.
    pub hash: String,
    /// Workflow name.
    pub workflow: String,
    /// File it came from, relative to the project.
    pub path: String,
    /// The source text.
    pub source: String,
    /// When it was first stored.
    pub stored_at: i64,
}

/// Whose message a provider's message id names: recorded when a channel accepts a message, read
/// when the provider calls back about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderMessage {
    /// The contact the message went to.
    pub contact: String,
    /// The run that sent it.
    pub run: String,
    /// The journal step of the send.
    pub step: u32,
    /// Herald's message id (the step's idempotency key).
    pub key: String,
}

/// An effect whose intent is durable and whose result is not (yet).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Intent {
    /// The run.
    pub run: String,
    /// The step.
    pub step: u32,
    /// The channel.
    pub channel: String,
    /// When the intent was recorded.
    pub at: i64,
    /// When the delivery stage was about to call the provider (durable before the call):
    /// unset, the provider was never called and the send can be queued again after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<i64>,
    /// The delivery lane.
    #[serde(default)]
    pub priority: herald_dsl::Priority,
    /// The provider's answer, noted by the delivery stage as soon as it came (before the
    /// result reaches the contact's worker): after a crash in between, the send is known to
    /// have happened and is recorded as sent rather than ambiguous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered: Option<Answered>,
}

/// A provider's acceptance of a send, kept on its intent until the run records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Answered {
    /// The provider's id for the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// Anything else the provider answered.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// A contact's membership of a segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Membership {
    /// When the current membership started.
    pub since: i64,
    /// How many times the contact has entered this segment.
    pub entries: u64,
    /// Still a member (false keeps the entry count after an exit).
    pub member: bool,
}

/// A recorded entry into or exit from a segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentChange {
    /// When.
    pub at: i64,
    /// The contact.
    pub contact: String,
    /// Entered (true) or exited (false).
    pub entered: bool,
}

/// Points a scoring rule awarded for one event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Contribution {
    /// Rule name.
    pub rule: String,
    /// Points at the time they were awarded (after caps).
    pub points: f64,
    /// When.
    pub at: i64,
    /// The event that earned them.
    pub event: Option<String>,
}

/// Per-contact audience state: score history, stage, segment memberships and the next
/// scheduled re-evaluation. Stored in a compact binary encoding (it is rewritten on every
/// event the audience uses), so fields are only ever appended, never reordered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AudienceState {
    /// Decayed points of contributions folded out of `contributions`, as of `base_at`.
    pub base: f64,
    /// Reference time of `base`.
    pub base_at: i64,
    /// Recent contributions, oldest first.
    pub contributions: Vec<Contribution>,
    /// Stage at the last evaluation.
    pub stage: Option<String>,
    /// Score at the last evaluation.
    pub score: f64,
    /// When the next re-evaluation (a window expiry, a stage decay) is scheduled.
    pub wake_at: Option<i64>,
    /// Per segment, when its answer can next change without a new event (a counted event
    /// leaving its window).
    pub expiries: BTreeMap<String, i64>,
    /// Membership records, current and past, by segment.
    pub segments: BTreeMap<String, Membership>,
    /// What segment queries read instead of the event history.
    pub behaviour: Option<crate::audience::behaviour::Behaviour>,
    /// Sequence numbers of the latest events scored, so an event processed again after a
    /// crash does not award its points twice.
    pub scored: Vec<u64>,
    /// The contact's merge count at the last evaluation.
    pub merges: u32,
}

impl AudienceState {
    /// Segments the contact is currently a member of.
    pub fn member_of(&self) -> impl Iterator<Item = &String> {
        self.segments
            .iter()
            .filter(|(_, m)| m.member)
            .map(|(n, _)| n)
    }

    /// Decay factor of points awarded at `at`, seen at `now`.
    pub fn decay(half_life_ms: Option<i64>, at: i64, now: i64) -> f64 {
        match half_life_ms {
            Some(h) if h > 0 => 0.5f64.powf((now - at).max(0) as f64 / h as f64),
            _ => 1.0,
        }
    }

    /// Event points at `now`, with decay applied.
    pub fn event_points(&self, half_life_ms: Option<i64>, now: i64) -> f64 {
        self.base * Self::decay(half_life_ms, self.base_at, now)
            + self
                .contributions
                .iter()
                .map(|c| c.points * Self::decay(half_life_ms, c.at, now))
                .sum::<f64>()
    }

    /// Keep at most `keep` contributions, folding older ones into `base`.
    pub fn fold(&mut self, half_life_ms: Option<i64>, keep: usize, now: i64) {
        if self.contributions.len() <= keep {
            return;
        }
        let n = self.contributions.len() - keep;
        let folded: f64 = self
            .contributions
            .drain(..n)
            .map(|c| c.points * Self::decay(half_life_ms, c.at, now))
            .sum();
        self.base = self.base * Self::decay(half_life_ms, self.base_at, now) + folded;
        self.base_at = now;
    }
}

pub use herald_config::ConsentStatus;

/// A contact's consent for one topic, as last given: what, when, how, and the evidence — the
/// proof GDPR asks for. Stored per contact and topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsentRecord {
    /// The topic.
    pub topic: String,
    /// Subscribed or unsubscribed.
    pub status: ConsentStatus,
    /// When it was given (ms since the epoch).
    pub at: i64,
    /// How: `api`, `import`, `form`, `double_opt_in`, `unsubscribe_link`, `one_click`,
    /// `preference_page`, or a channel's name for a provider's report (SMS STOP).
    pub source: String,
    /// The client's address, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The client's user agent, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The message whose link was used (its idempotency key), where one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why an address is suppressed on a channel.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// The provider reported a permanent bounce.
    HardBounce,
    /// The recipient marked a message as spam.
    Complaint,
    /// The address cannot receive messages (the provider refused it as invalid).
    Invalid,
    /// The recipient asked for nothing more on this channel (SMS STOP, a provider's
    /// unsubscribe report).
    Unsubscribed,
    /// An operator put it there (the API, an import).
    Manual,
}

impl SuppressionReason {
    /// The reason's name, as the API and the journal show it.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "hard_bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Invalid => "invalid",
            SuppressionReason::Unsubscribed => "unsubscribed",
            SuppressionReason::Manual => "manual",
        }
    }
}

/// An address that receives nothing more on one channel, whatever the message's priority.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Suppression {
    /// The channel.
    pub channel: String,
    /// The address, normalized ([`normalize_address`]).
    pub address: String,
    /// Why.
    pub reason: SuppressionReason,
    /// Since when (ms since the epoch).
    pub at: i64,
    /// Who put it there: a provider callback (`callback`), an operator (`api`, `import`).
    pub source: String,
    /// The provider's words, an operator's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An address as suppression lists compare it: trimmed and lower-cased (email addresses are
/// case-insensitive in practice), and for phone numbers without spaces, dashes, dots and
/// brackets.
pub fn normalize_address(address: &str) -> String {
    let a = address.trim();
    if a.contains('@') {
        a.to_lowercase()
    } else {
        a.chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect::<String>()
            .to_lowercase()
    }
}
