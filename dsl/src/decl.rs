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
    /// 1-based line of the `workflow(...)` call.
    #[serde(default)]
    pub line: usize,
}

impl WorkflowDecl {
    /// A declaration with defaults for everything but the name.
    pub fn new(name: impl Into<String>, line: usize) -> Self {
        WorkflowDecl {
            name: name.into(),
            triggers: Vec::new(),
            goal: None,
            reentry: Reentry::Once,
            line,
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

thread_local! {
    static DECLARED: RefCell<Option<Vec<WorkflowBuilder>>> = const { RefCell::new(None) };
}

/// Collect every `workflow(...)` declared while `f` runs.
pub(crate) fn collect_declarations<R>(f: impl FnOnce() -> R) -> (R, Vec<WorkflowDecl>) {
    let previous = DECLARED.with(|d| d.borrow_mut().replace(Vec::new()));
    let result = f();
    let builders = DECLARED
        .with(|d| std::mem::replace(&mut *d.borrow_mut(), previous))
        .unwrap_or_default();
    let decls = builders
        .into_iter()
        .map(|b| b.0.lock().expect("declaration lock").clone())
        .collect();
    (result, decls)
}

/// Record a new declaration; returns `None` when declarations are not being collected
/// (a `workflow(...)` call inside `fn run`).
pub(crate) fn declare(decl: WorkflowDecl) -> Option<WorkflowBuilder> {
    DECLARED.with(|d| {
        d.borrow_mut().as_mut().map(|list| {
            let b = WorkflowBuilder(Arc::new(Mutex::new(decl)));
            list.push(b.clone());
            b
        })
    })
}
