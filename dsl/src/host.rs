//! The boundary between a running script and the durable engine.
//!
//! Every function of the DSL that has an effect, observes time or draws randomness is a *step*.
//! The script calls it; the DSL turns the call into a [`StepCall`] and hands it to the [`Host`]
//! bound to the current thread. The host replays a recorded result or performs the step and
//! records it — the script cannot tell the difference, which is what makes replay work.

use std::cell::RefCell;

use serde_json::Value;

/// When a `wait_until` should end.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitTarget {
    /// An absolute instant, in milliseconds since the Unix epoch (UTC).
    At(i64),
    /// The next occurrence of a wall-clock time (`hour`, `minute`) in the contact's timezone.
    LocalTime { hour: u32, minute: u32 },
}

/// One step requested by a script.
#[derive(Debug, Clone, PartialEq)]
pub enum StepCall {
    /// `send(channel, template[, vars])`.
    Send {
        channel: String,
        template: String,
        vars: Value,
    },
    /// `action(channel, operation, payload)`.
    Action {
        channel: String,
        operation: String,
        payload: Value,
    },
    /// `wait(duration)`.
    Wait { duration_ms: i64 },
    /// `wait_until(when)`.
    WaitUntil { target: WaitTarget },
    /// `wait_for(event[, filter], timeout)`.
    WaitFor {
        event: String,
        filter: Value,
        timeout_ms: i64,
    },
    /// `update(attrs)`.
    Update { attrs: Value },
    /// `consent(topic, status[, source])`.
    Consent {
        topic: String,
        status: String,
        source: String,
    },
    /// `now()`.
    Now,
    /// `random()`.
    Random,
    /// `variant(name, arms)`; arms are (name, weight). `bandit(name, arms, metric)` is a
    /// variant whose arm is chosen by Thompson sampling on `metric`.
    Variant {
        name: String,
        arms: Vec<(String, u32)>,
        bandit: Option<String>,
    },
}

impl StepCall {
    /// The journal kind of this step (`send`, `wait`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            StepCall::Send { .. } => "send",
            StepCall::Action { .. } => "action",
            StepCall::Wait { .. } => "wait",
            StepCall::WaitUntil { .. } => "wait_until",
            StepCall::WaitFor { .. } => "wait_for",
            StepCall::Update { .. } => "update",
            StepCall::Consent { .. } => "consent",
            StepCall::Now => "now",
            StepCall::Random => "random",
            StepCall::Variant { .. } => "variant",
        }
    }

    /// The name that identifies this step within its kind, checked on replay.
    pub fn name(&self) -> String {
        match self {
            StepCall::Send {
                channel, template, ..
            } => format!("{channel}:{template}"),
            StepCall::Action {
                channel, operation, ..
            } => format!("{channel}:{operation}"),
            StepCall::WaitFor { event, .. } => event.clone(),
            StepCall::Variant { name, .. } => name.clone(),
            StepCall::Consent { topic, .. } => topic.clone(),
            StepCall::Wait { .. }
            | StepCall::WaitUntil { .. }
            | StepCall::Update { .. }
            | StepCall::Now
            | StepCall::Random => String::new(),
        }
    }
}

/// A read of the contact's behaviour, available to segment definitions.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// `count(event[, filter], window)`: events of this name in the last `window_ms`.
    Count {
        event: String,
        filter: Value,
        window_ms: i64,
    },
    /// `last_seen(event)`: timestamp of the newest such event, or `()`.
    LastSeen { event: String },
    /// `first_seen(event)`: timestamp of the oldest such event, or `()`.
    FirstSeen { event: String },
    /// `in_segment(name)`: membership in another segment.
    InSegment { segment: String },
}

/// Why a step did not return a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Interrupt {
    /// The run must stop here and be activated again later (a wait, a retry after backoff).
    Suspend,
    /// The run asked to end (`exit(reason)`).
    Exit(String),
    /// The run needs an operator (non-determinism, an ambiguous delivery).
    Park(String),
    /// The step failed permanently. Scripts may catch this with `try`/`catch`.
    Fail(String),
}

/// Why `name` cannot be a step label, if it cannot: a label is 1 to 64 letters, digits, `_`,
/// `-` or `.` (reports key a step's numbers by it, next to `/`, `#`, `:` and `@`).
pub fn label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a step label cannot be empty".into());
    }
    if name.chars().count() > 64 {
        return Some(format!(
            "step label \"{name}\" is longer than 64 characters"
        ));
    }
    let bad = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))?;
    Some(format!(
        "step label \"{name}\" has {bad:?}: use letters, digits, `_`, `-` or `.`"
    ))
}

/// Implemented by the durable engine for one activation of one run.
pub trait Host {
    /// Perform or replay one step. `line` is the 1-based script line of the call, if known.
    fn step(&mut self, call: StepCall, line: Option<usize>) -> Result<Value, Interrupt>;
    /// Read an attribute of the contact snapshot recorded at the last step boundary.
    fn contact_attr(&mut self, key: &str) -> Value;
    /// A line printed by the script with `print` or `debug`.
    fn log(&mut self, message: &str);
    /// `label(name)`: the next step the script takes is reported under `name` (checked with
    /// [`label_problem`]). Hosts that keep no reports ignore it.
    fn label(&mut self, name: &str) {
        let _ = name;
    }
    /// Answer a behaviour query. Only segment evaluation supports these.
    fn query(&mut self, query: Query) -> Result<Value, Interrupt> {
        let name = match query {
            Query::Count { .. } => "count",
            Query::LastSeen { .. } => "last_seen",
            Query::FirstSeen { .. } => "first_seen",
            Query::InSegment { .. } => "in_segment",
        };
        Err(Interrupt::Fail(format!(
            "`{name}` reads behaviour and is available in segment definitions (segments/*.rhai)"
        )))
    }
    /// A `count` written with literal arguments, as the native fast path asks it; `key` is
    /// [`CountSpec::key`](crate::segment::CountSpec::key). The default asks
    /// [`query`](Host::query).
    fn count_literal(
        &mut self,
        spec: &crate::segment::CountSpec,
        key: &str,
    ) -> Result<Value, Interrupt> {
        let _ = key;
        self.query(Query::Count {
            event: spec.event.clone(),
            filter: Value::Object(spec.filter.clone()),
            window_ms: spec.window_ms,
        })
    }
}

thread_local! {
    static HOST: RefCell<Option<Box<dyn Host>>> = const { RefCell::new(None) };
}

/// Bind `host` to this thread while `f` runs, then hand the host back.
///
/// Step functions called outside of `with_host` fail with a clear error (for example a `send`
/// at the top level of a script, which runs when the script is loaded).
/// If `f` panics, the previous binding is restored all the same and `host` is dropped, so a
/// caller that catches the panic finds the thread as it was.
pub fn with_host<R>(host: Box<dyn Host>, f: impl FnOnce() -> R) -> (R, Box<dyn Host>) {
    /// Puts the previous binding back when dropped (by unwinding, if `f` panicked).
    struct Unbind(Option<Option<Box<dyn Host>>>);
    impl Unbind {
        fn restore(&mut self) -> Option<Box<dyn Host>> {
            let previous = self.0.take()?;
            HOST.try_with(|h| std::mem::replace(&mut *h.borrow_mut(), previous))
                .ok()
                .flatten()
        }
    }
    impl Drop for Unbind {
        fn drop(&mut self) {
            drop(self.restore());
        }
    }
    let mut unbind = Unbind(Some(HOST.with(|h| h.borrow_mut().replace(host))));
    let result = f();
    let host = unbind
        .restore()
        .expect("host is bound for the duration of with_host");
    (result, host)
}

/// Run `f` with the bound host, if any.
pub(crate) fn current_host<R>(f: impl FnOnce(&mut dyn Host) -> R) -> Option<R> {
    HOST.with(|h| h.borrow_mut().as_mut().map(|host| f(host.as_mut())))
}
