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
    /// In segment definitions: reads of the contact's behaviour.
    Query,
}

/// One DSL function.
#[derive(Debug, Clone, Copy)]
pub struct DslFunction {
    /// Name as written in scripts.
    pub name: &'static str,
    /// Called as a method on a `workflow(...)` declaration.
    pub method: bool,
    /// The type a method is called on (`Workflow`, `Scoring`, `Rule`); empty for functions.
    pub on: &'static str,
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
        on: "",
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
        on: "Workflow",
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
        on: "Workflow",
        overloads: &[&[]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Allow runs to be started through the management API \
              (`POST /v1/workflows/{name}/runs`). Workflows without any trigger are manual only.",
    },
    DslFunction {
        name: "on_workflow_completed",
        method: true,
        on: "Workflow",
        overloads: &[&[("workflow", ArgType::String)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Start a run when a run of the named workflow completes for the contact, to chain \
              journeys.",
    },
    DslFunction {
        name: "goal",
        method: true,
        on: "Workflow",
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
        on: "Workflow",
        overloads: &[&[("policy", ArgType::String)], &[("cooldown", Int)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "May a contact enter this workflow again? `\"once\"` (the default): one run per contact, \
              ever. `\"always\"`: a new run on every trigger. A duration such as `days(30)`: again \
              once that long has passed since the previous run started.",
    },
    DslFunction {
        name: "priority",
        method: true,
        on: "Workflow",
        overloads: &[&[("lane", ArgType::String)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "The delivery lane of this workflow's sends: `\"transactional\"` (messages a person \
              is waiting for, such as a password reset: served first), `\"normal\"` (the default) \
              or `\"bulk\"` (newsletters: served last). Each channel serves its queue lane by \
              lane, so a transactional message never waits behind a large bulk send.",
    },
    DslFunction {
        name: "broadcast",
        method: false,
        on: "",
        overloads: &[&[("name", ArgType::String)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "Declare the broadcast this file (`broadcasts/NAME.rhai`) defines: a one-off send to \
              an audience. Chain `.audience(...)`, `.channel(...)`, `.template(...)` (or \
              `.arms(...)`), `.topic(...)` and optionally `.send_at(...)`, `.throttle(...)`, \
              `.goal(...)`. Saving the file never sends it: `herald broadcast schedule NAME` \
              does, pinned to the version it was given. Define `fn run(contact, trigger)` for a \
              multi-step send instead of `.template(...)`.",
    },
    DslFunction {
        name: "audience",
        method: true,
        on: "Broadcast",
        overloads: &[&[("segment", ArgType::String)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "The segment whose members receive the broadcast. Its members are fixed (a durable \
              snapshot) when sending starts. Without `.audience(...)` every contact receives it.",
    },
    DslFunction {
        name: "channel",
        method: true,
        on: "Broadcast",
        overloads: &[&[("channel", ArgType::String)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "The channel (a `[channels.NAME]` of herald.toml) the broadcast is sent on.",
    },
    DslFunction {
        name: "template",
        method: true,
        on: "Broadcast",
        overloads: &[&[("template", ArgType::String)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "The template the broadcast sends (`templates/NAME.liquid`, `.mjml` or the \
              channel's override). Its `topic:` must be the broadcast's topic.",
    },
    DslFunction {
        name: "topic",
        method: true,
        on: "Broadcast",
        overloads: &[&[("topic", ArgType::String)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "The subscription topic (a `[topics.NAME]` of herald.toml): contacts unsubscribed \
              from it are skipped, and its messages carry an unsubscribe link for it.",
    },
    DslFunction {
        name: "send_at",
        method: true,
        on: "Broadcast",
        overloads: &[&[("when", ArgType::String)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "When it sends once scheduled: an RFC 3339 instant (`\"2026-12-24T09:00:00Z\"`), or \
              `\"HH:MM\"` for that time of day in each contact's own timezone (the first such \
              moment after it starts). `herald broadcast schedule NAME --at ...` overrides it; \
              without either it starts at once.",
    },
    DslFunction {
        name: "throttle",
        method: true,
        on: "Broadcast",
        overloads: &[&[("per_second", Int)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "Start at most this many recipients per second (the channel's own rate limit \
              applies as well).",
    },
    DslFunction {
        name: "arms",
        method: true,
        on: "Broadcast",
        overloads: &[&[("arms", Map)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "A/B arms instead of one template: `#{ a: \"spring_a\", b: \"spring_b\" }`. Each \
              contact gets one arm (an even, deterministic split), recorded on its run.",
    },
    DslFunction {
        name: "holdout",
        method: true,
        on: "Workflow",
        overloads: &[&[("percent", Int)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Hold out this percent of the runs (1 to 50, deterministic per contact): their \
              sends are skipped (rule `holdout`) but their goal still counts, so the report \
              shows the journey's lift over doing nothing.",
    },
    DslFunction {
        name: "holdout",
        method: true,
        on: "Broadcast",
        overloads: &[&[("percent", Int)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "Hold out this percent of the recipients (1 to 50, deterministic per contact): \
              they receive nothing but their goal still counts, so the report shows the \
              broadcast's lift over not sending it.",
    },
    DslFunction {
        name: "test_share",
        method: true,
        on: "Broadcast",
        overloads: &[&[("percent", Int)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "Test the arms on this percent of the audience (1 to 99) first: each tester gets \
              one arm (an even, deterministic split), the rest of the audience waits and then \
              receives the arm `.winner(...)` picks. Needs `.arms(...)` and `.winner(...)`.",
    },
    DslFunction {
        name: "winner",
        method: true,
        on: "Broadcast",
        overloads: &[&[("metric", ArgType::String), ("after", Int)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "How the test of `.test_share(...)` is decided: `after` the last tester's run \
              started (e.g. `hours(4)`), the arm with the highest rate of `metric` per \
              message sent wins and goes to the rest of the audience. `metric` is \
              `\"opened\"` or `\"clicked\"` (unique, machine opens and clicks excluded) or \
              `\"converted\"` (the broadcast's `.goal(...)`); a tie goes to the arm first by \
              name. `herald broadcast decide NAME [ARM]` decides it earlier.",
    },
    DslFunction {
        name: "goal",
        method: true,
        on: "Broadcast",
        overloads: &[&[("event", ArgType::String), ("window", Int)]],
        returns: "Broadcast",
        context: Context::Declaration,
        doc: "Conversion goal of the broadcast: a recipient who sends `event` within `window` of \
              receiving it counts as converted.",
    },
    DslFunction {
        name: "send",
        method: false,
        on: "",
        overloads: &[
            &[("channel", ArgType::String), ("template", ArgType::String)],
            &[("channel", ArgType::String), ("template", ArgType::String), ("vars", Map)],
        ],
        returns: "map",
        context: Context::Step,
        doc: "Render `templates/<template>.liquid` (or `<template>.<channel>.liquid`) for the contact \
              and send it through `channel`. Extra `vars` are visible to the template as `vars`. \
              A journaled step: on replay it returns the recorded result and never sends twice. \
              The delivery policy decides when the send is taken: the run waits until it is sent \
              or skipped. Returns `#{ status, message_id, channel, template }`, where `status` is \
              `\"sent\"`, or `\"skipped\"` with the `rule` that decided (`\"consent\"`: the \
              contact left the template's topic; `\"suppression\"`: the address bounced, \
              complained or was suppressed) and its `reason`. A permanent failure throws; \
              transient failures are retried with backoff before that.",
    },
    DslFunction {
        name: "action",
        method: false,
        on: "",
        overloads: &[&[("channel", ArgType::String), ("operation", ArgType::String), ("payload", Map)]],
        returns: "map",
        context: Context::Step,
        doc: "Perform a channel operation other than sending a message (for example \
              `action(\"crm\", \"create_task\", #{ owner: \"sales\" })`). Journaled like `send`.",
    },
    DslFunction {
        name: "wait",
        method: false,
        on: "",
        overloads: &[&[("duration", Int)]],
        returns: "()",
        context: Context::Step,
        doc: "Pause the run for a duration: `wait(days(3))`. The timer is durable and survives \
              restarts. After a wait, `contact` shows fresh data.",
    },
    DslFunction {
        name: "wait_until",
        method: false,
        on: "",
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
        on: "",
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
        on: "",
        overloads: &[&[("attributes", Map)]],
        returns: "()",
        context: Context::Step,
        doc: "Merge attributes into the contact: `update(#{ lifecycle: \"mql\" })`. A `()` value \
              removes the attribute. Journaled, so replays do not apply it twice.",
    },
    DslFunction {
        name: "consent",
        method: false,
        on: "",
        overloads: &[
            &[("topic", ArgType::String), ("status", ArgType::String)],
            &[
                ("topic", ArgType::String),
                ("status", ArgType::String),
                ("source", ArgType::String),
            ],
        ],
        returns: "()",
        context: Context::Step,
        doc: "Record the contact's consent for a topic: `consent(\"newsletter\", \"subscribed\", \
              \"double_opt_in\")`. Status is `\"subscribed\"` or `\"unsubscribed\"`; the source \
              (default `\"workflow\"`) is kept with the record, with the run and, as evidence, the \
              user agent of the event the run last waited for (a confirmation click). Journaled, \
              durable before the run goes on.",
    },
    DslFunction {
        name: "now",
        method: false,
        on: "",
        overloads: &[&[]],
        returns: "int",
        context: Context::Step,
        doc: "The current time in milliseconds since the Unix epoch, recorded the first time this \
              step runs so that replays see the same value.",
    },
    DslFunction {
        name: "label",
        method: false,
        on: "",
        overloads: &[&[("name", ArgType::String)]],
        returns: "()",
        context: Context::Step,
        doc: "Name the next step for reports: `label(\"welcome\"); send(\"email\", \"welcome_v2\");`. \
              A step's numbers are kept under a key that lasts through edits of the script \
              (its kind, channel, template and occurrence); a label replaces that key, so a step \
              whose template or channel changes keeps its numbers, and two versions of a journey \
              compare on it. 1 to 64 letters, digits, `_`, `-` or `.`.",
    },
    DslFunction {
        name: "random",
        method: false,
        on: "",
        overloads: &[&[]],
        returns: "float",
        context: Context::Step,
        doc: "A random float in [0, 1), recorded so that replays see the same value.",
    },
    DslFunction {
        name: "variant",
        method: false,
        on: "",
        overloads: &[&[("experiment", ArgType::String), ("arms", Arms)]],
        returns: "string",
        context: Context::Step,
        doc: "Pick an A/B arm for this contact: `variant(\"subject_test\", [\"a\", \"b\"])` or with \
              weights `variant(\"x\", #{ control: 9, treatment: 1 })`. Deterministic per contact \
              and experiment, and recorded on the run.",
    },
    DslFunction {
        name: "bandit",
        method: false,
        on: "",
        overloads: &[&[("name", ArgType::String), ("arms", Arms), ("metric", ArgType::String)]],
        returns: "string",
        context: Context::Step,
        doc: "Like `variant(name, arms)`, but traffic shifts to the better arms as evidence \
              accumulates (Thompson sampling on the workflow's counters of `metric`: \
              `\"opened\"`, `\"clicked\"` or `\"converted\"`, per message sent). A contact keeps \
              the arm it was given, on re-entry too; the choice is journaled, so replay returns it.",
    },
    DslFunction {
        name: "exit",
        method: false,
        on: "",
        overloads: &[&[], &[("reason", ArgType::String)]],
        returns: "()",
        context: Context::Step,
        doc: "End the run now, with an optional reason shown in the run's status.",
    },
    DslFunction {
        name: "seconds",
        method: false,
        on: "",
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` seconds, in milliseconds.",
    },
    DslFunction {
        name: "minutes",
        method: false,
        on: "",
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` minutes, in milliseconds.",
    },
    DslFunction {
        name: "hours",
        method: false,
        on: "",
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` hours, in milliseconds.",
    },
    DslFunction {
        name: "days",
        method: false,
        on: "",
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` days, in milliseconds.",
    },
    DslFunction {
        name: "weeks",
        method: false,
        on: "",
        overloads: &[&[("n", Number)]],
        returns: "int",
        context: Context::Pure,
        doc: "A duration of `n` weeks, in milliseconds.",
    },
    DslFunction {
        name: "on_segment_entered",
        method: true,
        on: "Workflow",
        overloads: &[&[("segment", ArgType::String)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Start a run when the contact enters the segment (its `fn matches` becomes true).",
    },
    DslFunction {
        name: "on_segment_exited",
        method: true,
        on: "Workflow",
        overloads: &[&[("segment", ArgType::String)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Start a run when the contact leaves the segment, by a new event or because an event \
              left a rolling window.",
    },
    DslFunction {
        name: "on_score_reached",
        method: true,
        on: "Workflow",
        overloads: &[&[("score", Number)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Start a run when the contact's lead score rises to at least `score`.",
    },
    DslFunction {
        name: "on_stage_changed",
        method: true,
        on: "Workflow",
        overloads: &[&[("stage", ArgType::String)]],
        returns: "Workflow",
        context: Context::Declaration,
        doc: "Start a run when the contact's lifecycle stage (from `scoring.rhai`) becomes `stage`: \
              a sales handoff is `workflow(\"handoff\").on_stage_changed(\"mql\")`.",
    },
    DslFunction {
        name: "segment",
        method: false,
        on: "",
        overloads: &[&[("name", ArgType::String)]],
        returns: "()",
        context: Context::Declaration,
        doc: "Declare the segment this file defines; membership is decided by `fn matches(contact)`, \
              re-evaluated on every relevant event and when an event leaves a rolling window.",
    },
    DslFunction {
        name: "scoring",
        method: false,
        on: "",
        overloads: &[&[]],
        returns: "Scoring",
        context: Context::Declaration,
        doc: "Lead-scoring settings in `scoring.rhai`: chain `.half_life(days(14))` and \
              `.stage(\"mql\", 50)` (stages in ascending order).",
    },
    DslFunction {
        name: "half_life",
        method: true,
        on: "Scoring",
        overloads: &[&[("duration", Int)]],
        returns: "Scoring",
        context: Context::Declaration,
        doc: "Points from events halve every `duration`; computed lazily, no nightly job.",
    },
    DslFunction {
        name: "stage",
        method: true,
        on: "Scoring",
        overloads: &[&[("name", ArgType::String), ("threshold", Number)]],
        returns: "Scoring",
        context: Context::Declaration,
        doc: "A lifecycle stage reached at `threshold` points. Declare stages in ascending order.",
    },
    DslFunction {
        name: "base_stage",
        method: true,
        on: "Scoring",
        overloads: &[&[("name", ArgType::String)]],
        returns: "Scoring",
        context: Context::Declaration,
        doc: "The stage of contacts below every threshold (default `subscriber`).",
    },
    DslFunction {
        name: "rule",
        method: false,
        on: "",
        overloads: &[&[("name", ArgType::String)]],
        returns: "Rule",
        context: Context::Declaration,
        doc: "A scoring rule: `rule(\"demo\").on_event(\"demo_requested\").points(40)`.",
    },
    DslFunction {
        name: "when",
        method: true,
        on: "Rule",
        overloads: &[&[("attribute", ArgType::String), ("op", ArgType::String), ("value", ArgType::Any)]],
        returns: "Rule",
        context: Context::Declaration,
        doc: "Award the rule's points while a contact attribute satisfies `op` (`==`, `!=`, `>`, `>=`, \
              `<`, `<=`, `contains`, `ends_with`, `exists`). Attribute points do not decay.",
    },
    DslFunction {
        name: "points",
        method: true,
        on: "Rule",
        overloads: &[&[("n", Number)]],
        returns: "Rule",
        context: Context::Declaration,
        doc: "Points this rule awards (negative points subtract).",
    },
    DslFunction {
        name: "cap",
        method: true,
        on: "Rule",
        overloads: &[&[("max", Number), ("period", Int)]],
        returns: "Rule",
        context: Context::Declaration,
        doc: "At most `max` points from this rule per `period`: `.cap(15, days(1))`.",
    },
    DslFunction {
        name: "count",
        method: false,
        on: "",
        overloads: &[
            &[("event", ArgType::String), ("window", Int)],
            &[("event", ArgType::String), ("filter", Map), ("window", Int)],
        ],
        returns: "int",
        context: Context::Query,
        doc: "How many events of this name (with properties matching `filter`) the contact sent in \
              the last `window`. When the oldest counted event leaves the window, the segment is \
              re-evaluated by itself. With a literal name, filter and window (`days(30)`) the \
              answer comes from the contact's behaviour index; computed ones read its history.",
    },
    DslFunction {
        name: "last_seen",
        method: false,
        on: "",
        overloads: &[&[("event", ArgType::String)]],
        returns: "int | ()",
        context: Context::Query,
        doc: "Timestamp (ms) of the contact's most recent event of this name, or `()`.",
    },
    DslFunction {
        name: "first_seen",
        method: false,
        on: "",
        overloads: &[&[("event", ArgType::String)]],
        returns: "int | ()",
        context: Context::Query,
        doc: "Timestamp (ms) of the contact's first event of this name, or `()`.",
    },
    DslFunction {
        name: "in_segment",
        method: false,
        on: "",
        overloads: &[&[("segment", ArgType::String)]],
        returns: "bool",
        context: Context::Query,
        doc: "Is the contact a member of another segment?",
    },
];
