//! The workflow declaration: what a script's top level says about when and how it runs.
//!
//! ```rhai
//! workflow("welcome")
//!     .on_event("newsletter_subscribed")
//!     .goal("order_completed", days(14))
//!     .reentry("once");
//! ```

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What starts a run of a workflow.
///
/// The enum is the extension point for later trigger kinds (segment entry, score thresholds,
/// schedules): each is one more variant matched by the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// An event with this name, whose properties match every key of `filter`.
    Event {
        /// Event name, as sent to `/v1/track` (`identify` events are named `identify`).
        name: String,
        /// Property equality filter; empty matches every event of that name.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        filter: Map<String, Value>,
    },
    /// Started only through the management API (`POST /v1/workflows/{name}/runs`).
    Manual,
    /// A run of another workflow finished for the contact.
    WorkflowCompleted {
        /// The other workflow's name.
        workflow: String,
    },
    /// The contact entered a segment.
    SegmentEntered {
        /// Segment name.
        segment: String,
    },
    /// The contact left a segment.
    SegmentExited {
        /// Segment name.
        segment: String,
    },
    /// The contact's lead score rose to at least this value.
    ScoreReached {
        /// Threshold.
        score: f64,
    },
    /// The contact's lifecycle stage became this stage.
    StageChanged {
        /// Stage name.
        stage: String,
    },
}

/// Whether a contact may enter a workflow again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Reentry {
    /// At most one run per contact, ever.
    Once,
    /// A new run on every trigger.
    Always,
    /// A new run once this long has passed since the previous run started.
    After {
        /// Cooldown in milliseconds.
        cooldown_ms: i64,
    },
}

/// Which delivery lane a workflow's sends take. Each channel's queue is served in this order,
/// so a transactional message (a password reset, a receipt) never waits behind bulk sends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Messages a person is waiting for: served first.
    Transactional,
    /// Journeys: the default.
    #[default]
    Normal,
    /// Newsletters and broadcasts: served last.
    Bulk,
}

impl Priority {
    /// Every lane, in the order they are served.
    pub const ALL: [Priority; 3] = [Priority::Transactional, Priority::Normal, Priority::Bulk];

    /// The lane's name as scripts and the API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Transactional => "transactional",
            Priority::Normal => "normal",
            Priority::Bulk => "bulk",
        }
    }

    /// The lane named `name`.
    pub fn parse(name: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A conversion goal: reaching it ends the run and counts a conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// The event that counts as conversion.
    pub event: String,
    /// How long after the run started the goal still counts, in milliseconds.
    pub window_ms: i64,
}

/// Everything a workflow script declares at its top level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowDecl {
    /// Unique workflow name.
    pub name: String,
    /// What starts a run. Empty means manual only.
    pub triggers: Vec<Trigger>,
    /// Optional conversion goal.
    pub goal: Option<Goal>,
    /// Re-entry policy; `once` unless declared.
    pub reentry: Reentry,
    /// The delivery lane of the workflow's sends; `normal` unless declared.
    #[serde(default)]
    pub priority: Priority,
    /// 1-based line of the `workflow(...)` call.
    #[serde(default)]
    pub line: usize,
    /// Set when the file declares a broadcast (`broadcast(...)` in `broadcasts/`) rather than
    /// a workflow: who it goes to and what it sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<BroadcastSpec>,
    /// Percent of the runs (1–50) held out: they send nothing but still track the goal, so
    /// the lift of the whole journey or broadcast can be measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<u32>,
}

/// When a broadcast sends, as its file declares it (`.send_at(...)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SendAt {
    /// At this instant (milliseconds since the epoch).
    At {
        /// The instant.
        at_ms: i64,
    },
    /// At this time of day in each contact's own timezone, the first such moment after the
    /// broadcast starts.
    LocalTime {
        /// Hour, 0–23.
        hour: u32,
        /// Minute, 0–59.
        minute: u32,
    },
}

/// What a broadcast file declares beyond a workflow: its audience, message and pacing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BroadcastSpec {
    /// The segment whose members receive it; `None`: every contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The channel it is sent on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The template it sends (without arms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The subscription topic; every template it sends must name the same topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// When it sends, unless `herald broadcast schedule --at` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<SendAt>,
    /// At most this many recipients started per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_per_second: Option<u32>,
    /// A/B arms: (arm name, template), each contact gets one arm, split evenly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arms: Vec<(String, String)>,
    /// Whether the file defines its own `fn run(contact, trigger)` (a multi-step send).
    #[serde(default)]
    pub custom_run: bool,
    /// Percent of the audience (1–99) that receives the arms as a test; the rest receives
    /// the winning arm once the test is decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_share: Option<u32>,
    /// How the test's winner is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<WinnerRule>,
}

/// How a broadcast's A/B test picks the arm the rest of the audience receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinnerRule {
    /// `opened`, `clicked` (unique, machine opens and clicks excluded) or `converted` (the
    /// broadcast's goal), per message sent.
    pub metric: String,
    /// How long after the last test message was started the winner is decided, in ms.
    pub after_ms: i64,
}

/// The metrics a broadcast's test can be decided by.
pub const WINNER_METRICS: &[&str] = &["opened", "clicked", "converted"];

/// The handle returned by `broadcast(name)`; its methods fill in the declaration.
#[derive(Debug, Clone)]
pub struct BroadcastBuilder(pub(crate) Arc<Mutex<WorkflowDecl>>);

impl BroadcastBuilder {
    pub(crate) fn update(&self, f: impl FnOnce(&mut BroadcastSpec)) -> Self {
        let mut d = self.0.lock().expect("declaration lock");
        f(d.broadcast.get_or_insert_with(BroadcastSpec::default));
        drop(d);
        self.clone()
    }

    pub(crate) fn update_decl(&self, f: impl FnOnce(&mut WorkflowDecl)) -> Self {
        f(&mut self.0.lock().expect("declaration lock"));
        self.clone()
    }
}

impl WorkflowDecl {
    /// A declaration with defaults for everything but the name.
    pub fn new(name: impl Into<String>, line: usize) -> Self {
        WorkflowDecl {
            name: name.into(),
            triggers: Vec::new(),
            goal: None,
            reentry: Reentry::Once,
            priority: Priority::Normal,
            line,
            broadcast: None,
            holdout: None,
        }
    }

    /// Does an event with this name and these properties start a run?
    pub fn triggered_by(&self, event: &str, properties: &Value) -> bool {
        self.triggers.iter().any(|t| match t {
            Trigger::Event { name, filter } => name == event && matches_filter(filter, properties),
            _ => false,
        })
    }
}

/// True when every key of `filter` is present in `properties` with an equal value.
/// Numbers compare by value, so `1` matches `1.0`.
pub fn matches_filter(filter: &Map<String, Value>, properties: &Value) -> bool {
    filter.iter().all(|(k, want)| match properties.get(k) {
        Some(got) => values_equal(got, want),
        None => false,
    })
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The handle returned by `workflow(name)`; its methods fill in the declaration.
#[derive(Debug, Clone)]
pub struct WorkflowBuilder(pub(crate) Arc<Mutex<WorkflowDecl>>);

impl WorkflowBuilder {
    pub(crate) fn update(&self, f: impl FnOnce(&mut WorkflowDecl)) -> Self {
        f(&mut self.0.lock().expect("declaration lock"));
        self.clone()
    }
}

/// A segment: `segment("name")` at the top of `segments/NAME.rhai`, with `fn matches(contact)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentDecl {
    /// Segment name.
    pub name: String,
    /// 1-based line of the declaration.
    pub line: usize,
}

/// What a scoring rule awards points for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuleCondition {
    /// An event, with a property filter.
    Event {
        /// Event name.
        event: String,
        /// Property equality filter.
        #[serde(default)]
        filter: Map<String, Value>,
    },
    /// A contact attribute compared with a value (`==`, `!=`, `>`, `>=`, `<`, `<=`,
    /// `contains`, `ends_with`, `exists`).
    Attribute {
        /// Attribute name.
        attribute: String,
        /// Operator.
        op: String,
        /// Value compared against.
        value: Value,
    },
}

/// One scoring rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDecl {
    /// Name shown in score explanations.
    pub name: String,
    /// What the rule matches.
    pub condition: Option<RuleCondition>,
    /// Points awarded (negative points subtract).
    pub points: f64,
    /// At most this many points from this rule per period (ms).
    pub cap: Option<(f64, i64)>,
    /// 1-based line of the declaration.
    pub line: usize,
}

/// `scoring.rhai`: decay and lifecycle stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringDecl {
    /// Event points halve every this many milliseconds (`None`: no decay).
    pub half_life_ms: Option<i64>,
    /// Lifecycle stages in ascending threshold order; below the first, `base_stage`.
    pub stages: Vec<(String, f64)>,
    /// Stage of contacts below every threshold.
    pub base_stage: String,
}

impl Default for ScoringDecl {
    fn default() -> Self {
        ScoringDecl {
            half_life_ms: None,
            stages: Vec::new(),
            base_stage: "subscriber".into(),
        }
    }
}

impl ScoringDecl {
    /// The stage of a score.
    pub fn stage_of(&self, score: f64) -> &str {
        self.stages
            .iter()
            .rev()
            .find(|(_, t)| score >= *t)
            .map(|(n, _)| n.as_str())
            .unwrap_or(&self.base_stage)
    }
}

/// Handle returned by `scoring()`.
#[derive(Debug, Clone)]
pub struct ScoringBuilder(pub(crate) Arc<Mutex<ScoringDecl>>);

/// Handle returned by `rule(name)`.
#[derive(Debug, Clone)]
pub struct RuleBuilder(pub(crate) Arc<Mutex<RuleDecl>>);

impl ScoringBuilder {
    pub(crate) fn update(&self, f: impl FnOnce(&mut ScoringDecl)) -> Self {
        f(&mut self.0.lock().expect("declaration lock"));
        self.clone()
    }
}

impl RuleBuilder {
    pub(crate) fn update(&self, f: impl FnOnce(&mut RuleDecl)) -> Self {
        f(&mut self.0.lock().expect("declaration lock"));
        self.clone()
    }
}

/// Everything a script declared at its top level.
#[derive(Debug, Default)]
pub struct Declared {
    /// `workflow(...)` declarations.
    pub workflows: Vec<WorkflowDecl>,
    /// `segment(...)` declarations.
    pub segments: Vec<SegmentDecl>,
    /// `scoring()` settings, if declared.
    pub scoring: Option<ScoringDecl>,
    /// `rule(...)` declarations.
    pub rules: Vec<RuleDecl>,
}

#[derive(Default)]
struct Collecting {
    workflows: Vec<WorkflowBuilder>,
    segments: Vec<SegmentDecl>,
    scoring: Option<ScoringBuilder>,
    rules: Vec<RuleBuilder>,
}

thread_local! {
    static DECLARED: RefCell<Option<Collecting>> = const { RefCell::new(None) };
}

/// Collect every declaration made while `f` runs.
pub(crate) fn collect_declarations<R>(f: impl FnOnce() -> R) -> (R, Declared) {
    let previous = DECLARED.with(|d| d.borrow_mut().replace(Collecting::default()));
    let result = f();
    let c = DECLARED
        .with(|d| std::mem::replace(&mut *d.borrow_mut(), previous))
        .unwrap_or_default();
    let declared = Declared {
        workflows: c
            .workflows
            .into_iter()
            .map(|b| b.0.lock().expect("declaration lock").clone())
            .collect(),
        segments: c.segments,
        scoring: c
            .scoring
            .map(|b| b.0.lock().expect("declaration lock").clone()),
        rules: c
            .rules
            .into_iter()
            .map(|b| b.0.lock().expect("declaration lock").clone())
            .collect(),
    };
    (result, declared)
}

/// Record a new workflow declaration; `None` when declarations are not being collected.
pub(crate) fn declare(decl: WorkflowDecl) -> Option<WorkflowBuilder> {
    DECLARED.with(|d| {
        d.borrow_mut().as_mut().map(|c| {
            let b = WorkflowBuilder(Arc::new(Mutex::new(decl)));
            c.workflows.push(b.clone());
            b
        })
    })
}

/// Record a new broadcast declaration (kept with the workflows: a broadcast runs as one).
pub(crate) fn declare_broadcast(decl: WorkflowDecl) -> Option<BroadcastBuilder> {
    DECLARED.with(|d| {
        d.borrow_mut().as_mut().map(|c| {
            let shared = Arc::new(Mutex::new(decl));
            c.workflows.push(WorkflowBuilder(shared.clone()));
            BroadcastBuilder(shared)
        })
    })
}

/// Record a segment declaration; false when declarations are not being collected.
pub(crate) fn declare_segment(decl: SegmentDecl) -> bool {
    DECLARED.with(|d| {
        d.borrow_mut()
            .as_mut()
            .map(|c| c.segments.push(decl))
            .is_some()
    })
}

/// The scoring settings being declared (created on first use).
pub(crate) fn declare_scoring() -> ScoringBuilder {
    DECLARED.with(|d| match d.borrow_mut().as_mut() {
        Some(c) => c
            .scoring
            .get_or_insert_with(|| ScoringBuilder(Arc::new(Mutex::new(ScoringDecl::default()))))
            .clone(),
        None => ScoringBuilder(Arc::new(Mutex::new(ScoringDecl::default()))),
    })
}

/// Record a scoring rule.
pub(crate) fn declare_rule(decl: RuleDecl) -> RuleBuilder {
    let b = RuleBuilder(Arc::new(Mutex::new(decl)));
    DECLARED.with(|d| {
        if let Some(c) = d.borrow_mut().as_mut() {
            c.rules.push(b.clone());
        }
    });
    b
}
