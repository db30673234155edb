//! The DSL surface as data: every function Herald registers, with its overloads and the
//! documentation shown by `herald check`, the language server's hover and completion.
//!
//! The engine registers exactly these names (a test keeps the two in step).

/// The type of one parameter, as far as static analysis can tell from a literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgType {
    /// A string.
    String,
    /// An integer (durations and timestamps are integers of milliseconds).
    Int,
    /// An integer or a float.
    Number,
    /// An object map `#{ ... }`.
    Map,
    /// An array `[ ... ]`.
    Array,
    /// An integer timestamp or a string (`"09:00"` local time or an RFC 3339 instant).
    Instant,
    /// An array of arm names or a map of arm name to weight.
    Arms,
    /// Anything.
    Any,
}

impl ArgType {
    /// Name shown in signatures.
    pub fn label(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Int => "int",
            ArgType::Number => "number",
            ArgType::Map => "map",
            ArgType::Array => "array",
            ArgType::Instant => "int | string",
            ArgType::Arms => "array | map",
            ArgType::Any => "any",
        }
    }
}

/// Where a function may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// At the top level of a workflow script, to declare it.
    Declaration,
    /// Inside `fn run(contact, trigger)`: journaled steps.
    Step,
    /// Anywhere: pure helpers.
    Pure,
}

/// One DSL function.
#[derive(Debug, Clone, Copy)]
pub struct DslFunction {
    /// Name as written in scripts.
    pub name: &'static str,
    /// Called as a method on a `workflow(...)` declaration.
    pub method: bool,
    /// Each accepted parameter list: (parameter name, type).
    pub overloads: &'static [&'static [(&'static str, ArgType)]],
    /// Type of the result, for display.
    pub returns: &'static str,
    /// Where it may be called.
    pub context: Context,
    /// Markdown documentation.
    pub doc: &'static str,
}

impl DslFunction {
    /// Human-readable signatures, one per overload.
    pub fn signatures(&self) -> Vec<String> {
        self.overloads
            .iter()
            .map(|params| {
                let ps: Vec<String> = params
                    .iter()
                    .map(|(n, t)| format!("{n}: {}", t.label()))
                    .collect();
                let prefix = if self.method { "." } else { "" };
                format!(
                    "{prefix}{}({}) -> {}",
                    self.name,
                    ps.join(", "),
                    self.returns
                )
            })
            .collect()
    }

    /// Accepted argument counts.
    pub fn arities(&self) -> Vec<usize> {
        let mut a: Vec<usize> = self.overloads.iter().map(|o| o.len()).collect();
        a.sort_unstable();
        a.dedup();
        a
    }
}

/// Look a DSL function up by name (free functions and declaration methods).
pub fn lookup(name: &str) -> Option<&'static DslFunction> {
    DSL_FUNCTIONS.iter().find(|f| f.name == name)
}

use ArgType::{Arms, Instant, Int, Map, Number};

/// Every function of the DSL.
pub static DSL_FUNCTIONS: &[DslFunction] = &[
    DslFunction {
        name: "workflow",
        method: false,
        overloads: &[&[("name", ArgType::String)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Declare the workflow this file defines. Chain `.on_event(...)`, `.goal(...)` and \
              `.reentry(...)` to say when it runs. Each workflow file declares exactly one workflow \
              and defines `fn run(contact, trigger)`.",
    },
    DslFunction {
        name: "on_event",
        method: true,
        overloads: &[&[("event", ArgType::String)], &[("event", ArgType::String), ("filter", Map)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Start a run when the contact sends this event (a `track` event name, or `identify`, \
              `page`, `screen`, `group`). With a filter map, only events whose properties equal \
              every entry of the map start a run: `.on_event(\"plan_changed\", #{ plan: \"pro\" })`.",
    },
    DslFunction {
        name: "manual",
        method: true,
        overloads: &[&[]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Allow runs to be started through the management API \
              (`POST /v1/workflows/{name}/runs`). Workflows without any trigger are manual only.",
    },
    DslFunction {
        name: "on_workflow_completed",
        method: true,
        overloads: &[&[("workflow", ArgType::String)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Start a run when a run of the named workflow completes for the contact, to chain \
              journeys.",
    },
    DslFunction {
        name: "goal",
        method: true,
        overloads: &[&[("event", ArgType::String), ("window", Int)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Conversion goal: when the contact sends `event` within `window` of the run's start, \
              the run ends as converted and the conversion is counted. \
              `.goal(\"order_completed\", days(14))`.",
    },
    DslFunction {
        name: "reentry",
        method: true,
        overloads: &[&[("policy", ArgType::String)], &[("cooldown", Int)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "May a contact enter this workflow again? `\"once\"` (the default): one run per contact, \
              ever. `\"always\"`: a new run on every trigger. A duration such as `days(30)`: again \
              once that long has passed since the previous run started.",
    },
    DslFunction {
        name: "send",
        method: false,
        overloads: &[
            &[("channel", ArgType::String), ("template", ArgType::String)],
            &[("channel", ArgType::String), ("template", ArgType::String), ("vars", Map)],
        ],
        returns: "map",
        context: Context::Step,
        doc: "Render `templates/<template>.liquid` (or `<template>.<channel>.liquid`) for the contact \
              and send it through `channel`. Extra `vars` are visible to the template as `vars`. \
              A journaled step: on replay it returns the recorded result and never sends twice. \
              Returns `#{ message_id, channel, template }`. A permanent failure throws; transient \
              failures are retried with backoff before that.",
    },
    DslFunction {
        name: "action",
        method: false,
        overloads: &[&[("channel", ArgType::String), ("operation", ArgType::String), ("payload", Map)]],
        returns: "map",
        context: Context::Step,
        doc: "Perform a channel operation other than sending a message (for example \
              `action(\"crm\", \"create_task\", #{ owner: \"sales\" })`). Journaled like `send`.",
    },
    DslFunction {
        name: "wait",
        method: false,
        overloads: &[&[("duration", Int)]],
        returns: "()",
        context: Context::Step,
        doc: "Pause the run for a duration: `wait(days(3))`. The timer is durable and survives \
              restarts. After a wait, `contact` shows fresh data.",
    },
    DslFunction {
        name: "wait_until",
        method: false,
        overloads: &[&[("when", Instant)]],
        returns: "()",
        context: Context::Step,
        doc: "Pause until an instant: a timestamp in milliseconds (as returned by `now()`), an RFC 3339 \
              string such as `\"2026-12-24T09:00:00Z\"`, or `\"HH:MM\"` for the next occurrence of that \
              local time in the contact's `timezone` attribute (UTC when unset).",
    },
    DslFunction {
        name: "wait_for",
        method: false,
        overloads: &[
            &[("event", ArgType::String), ("timeout", Int)],
            &[("event", ArgType::String), ("filter", Map), ("timeout", Int)],
        ],
        returns: "map | ()",
        context: Context::Step,
        doc: "Wait until the contact sends `event` (whose properties match `filter`, if given), at \
              most `timeout`. Returns the event as a map `#{ event, properties, timestamp }`, or `()` \
              when the timeout passed first.",
    },
    DslFunction {
        name: "update",
        method: false,
        overloads: &[&[("attributes", Map)]],
        returns: "()",
        context: Context::Step,
        doc: "Merge attributes into the contact: `update(#{ lifecycle: \"mql\" })`. A `()` value \
              removes the attribute. Journaled, so replays do not apply it twice.",
    },
    DslFunction {
        name: "now",
        method: false,
        overloads: &[&[]],
        returns: "int",
        context: Context::Step,
        doc: "The current time in milliseconds since the Unix epoch, recorded the first time this \
              step runs so that replays see the same value.",
    },
    DslFunction {
        name: "random",
        method: false,
        overloads: &[&[]],
        returns: "float",
        context: Context::Step,
        doc: "A random float in [0, 1), recorded so that replays see the same value.",
    },
    DslFunction {
        name: "variant",
        method: false,
        overloads: &[&[("experiment", ArgType::String), ("arms", Arms)]],
        returns: "string",
        context: Context::Step,
        doc: "Pick an A/B arm for this contact: `variant(\"subject_test\", [\"a\", \"b\"])` or with \
              weights `variant(\"x\", #{ control: 9, treatment: 1 })`. Deterministic per contact \
              and experiment, and recorded on the run.",
    },
    DslFunction {
        name: "exit",
        method: false,
        overloads: &[&[], &[("reason", ArgType::String)]],
        returns: "()",
        context: Context::Step,
        doc: "End the run now, with an optional reason shown in the run's status.",
    },
    DslFunction {
        name: "seconds",
        method: false,
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` seconds, in milliseconds.",
    },
    DslFunction {
        name: "minutes",
        method: false,
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` minutes, in milliseconds.",
    },
    DslFunction {
        name: "hours",
        method: false,
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` hours, in milliseconds.",
    },
    DslFunction {
        name: "days",
        method: false,
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` days, in milliseconds.",
    },
    DslFunction {
        name: "weeks",
        method: false,
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` weeks, in milliseconds.",
    },
];
