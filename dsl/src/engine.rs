//! The one place a Herald Rhai engine is built.
//!
//! The daemon, `herald check` and the language server all call [`build_engine`], so a script
//! that checks clean behaves the same when it runs.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{
    Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext, Position, Scope, AST,
};

use crate::decl::{
    self, BroadcastBuilder, BroadcastSpec, Goal, Priority, Reentry, RuleBuilder, RuleCondition,
    RuleDecl, ScoringBuilder, SegmentDecl, SendAt, Trigger, WorkflowBuilder, WorkflowDecl,
};
use crate::host::{current_host, Interrupt, Query, StepCall, WaitTarget};
use crate::value::{to_dynamic, to_json};

/// Sandbox limits for scripts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum Rhai operations per activation (or per load of a script).
    pub max_operations: u64,
    /// Maximum depth of nested function calls.
    pub max_call_levels: usize,
    /// Maximum expression nesting at the top level and inside functions.
    pub max_expr_depth: usize,
    /// Maximum length of a string, in bytes.
    pub max_string_size: usize,
    /// Maximum number of elements in an array.
    pub max_array_size: usize,
    /// Maximum number of entries in a map.
    pub max_map_size: usize,
    /// Wall-clock budget of one activation.
    pub activation_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 256 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            activation_deadline: Duration::from_secs(2),
        }
    }
}

const SUSPEND: &str = "herald:suspend";
const EXIT: &str = "herald:exit";
const PARK: &str = "herald:park";
const DEADLINE: &str = "herald:deadline";

thread_local! {
    static ACTIVE_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static EXIT_REASON: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    static PARK_REASON: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Build the sandboxed engine with the whole DSL registered.
///
/// No wall clock (`timestamp()` is compiled out), no randomness, no file or network access,
/// no `eval`, strict variables, and module imports limited to Herald's stdlib.
pub fn build_engine(limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(16)
        .set_strict_variables(true);
    engine.disable_symbol("eval");
    engine.set_module_resolver(stdlib_resolver());
    engine.on_print(|s| {
        current_host(|h| h.log(s));
    });
    engine.on_debug(|s, _src, pos| {
        let line = format!("[line {}] {s}", pos.line().unwrap_or(0));
        current_host(|h| h.log(&line));
    });
    engine.on_progress(|ops| {
        if ops % 256 != 0 {
            return None;
        }
        let expired = ACTIVE_DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() >= t));
        expired.then(|| Dynamic::from(DEADLINE))
    });
    register_durations(&mut engine);
    register_declarations(&mut engine);
    register_broadcasts(&mut engine);
    register_audience(&mut engine);
    register_contact(&mut engine);
    register_steps(&mut engine);
    register_queries(&mut engine);
    engine
}

fn as_number(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}

fn register_audience(engine: &mut Engine) {
    engine.register_type_with_name::<ScoringBuilder>("Scoring");
    engine.register_type_with_name::<RuleBuilder>("Rule");
    for (name, entered) in [("on_segment_entered", true), ("on_segment_exited", false)] {
        engine.register_fn(
            name,
            move |b: &mut WorkflowBuilder, segment: ImmutableString| {
                b.update(|d| {
                    d.triggers.push(if entered {
                        Trigger::SegmentEntered {
                            segment: segment.to_string(),
                        }
                    } else {
                        Trigger::SegmentExited {
                            segment: segment.to_string(),
                        }
                    })
                })
            },
        );
    }
    engine.register_fn(
        "on_score_reached",
        |b: &mut WorkflowBuilder, score: Dynamic| {
            let score = as_number(&score).unwrap_or(0.0);
            b.update(|d| d.triggers.push(Trigger::ScoreReached { score }))
        },
    );
    engine.register_fn(
        "on_stage_changed",
        |b: &mut WorkflowBuilder, stage: ImmutableString| {
            b.update(|d| {
                d.triggers.push(Trigger::StageChanged {
                    stage: stage.to_string(),
                })
            })
        },
    );
    engine.register_fn(
        "segment",
        |ctx: NativeCallContext, name: ImmutableString| -> Result<(), Box<EvalAltResult>> {
            let pos = ctx.call_position();
            if name.trim().is_empty() {
                return Err(runtime_error("a segment needs a non-empty name", pos));
            }
            if name.chars().any(char::is_control) {
                return Err(runtime_error(
                    "a segment name cannot contain control characters",
                    pos,
                ));
            }
            decl::declare_segment(SegmentDecl {
                name: name.to_string(),
                line: pos.line().unwrap_or(0),
            });
            Ok(())
        },
    );
    engine.register_fn("scoring", decl::declare_scoring);
    engine.register_fn("half_life", |b: &mut ScoringBuilder, d: i64| {
        b.update(|s| s.half_life_ms = Some(d))
    });
    engine.register_fn(
        "base_stage",
        |b: &mut ScoringBuilder, name: ImmutableString| {
            b.update(|s| s.base_stage = name.to_string())
        },
    );
    engine.register_fn(
        "stage",
        |ctx: NativeCallContext,
         b: &mut ScoringBuilder,
         name: ImmutableString,
         threshold: Dynamic|
         -> Result<ScoringBuilder, Box<EvalAltResult>> {
            let t = as_number(&threshold).ok_or_else(|| {
                runtime_error("a stage threshold must be a number", ctx.call_position())
            })?;
            let last =
                b.0.lock()
                    .expect("declaration lock")
                    .stages
                    .last()
                    .map(|(_, x)| *x);
            if last.is_some_and(|l| t <= l) {
                return Err(runtime_error(
                    format!(
                        "stage \"{name}\" must have a higher threshold than the stage before it"
                    ),
                    ctx.call_position(),
                ));
            }
            Ok(b.update(|s| s.stages.push((name.to_string(), t))))
        },
    );
    engine.register_fn("rule", |ctx: NativeCallContext, name: ImmutableString| {
        decl::declare_rule(RuleDecl {
            name: name.to_string(),
            condition: None,
            points: 0.0,
            cap: None,
            line: ctx.call_position().line().unwrap_or(0),
        })
    });
    engine.register_fn("on_event", |b: &mut RuleBuilder, event: ImmutableString| {
        b.update(|r| {
            r.condition = Some(RuleCondition::Event {
                event: event.to_string(),
                filter: Default::default(),
            })
        })
    });
    engine.register_fn(
        "on_event",
        |b: &mut RuleBuilder, event: ImmutableString, filter: Map| {
            let filter = filter_map(filter);
            b.update(|r| {
                r.condition = Some(RuleCondition::Event {
                    event: event.to_string(),
                    filter,
                })
            })
        },
    );
    engine.register_fn(
        "when",
        |ctx: NativeCallContext,
         b: &mut RuleBuilder,
         attribute: ImmutableString,
         op: ImmutableString,
         value: Dynamic|
         -> Result<RuleBuilder, Box<EvalAltResult>> {
            const OPS: [&str; 9] = [
                "==",
                "!=",
                ">",
                ">=",
                "<",
                "<=",
                "contains",
                "ends_with",
                "exists",
            ];
            if !OPS.contains(&op.as_str()) {
                return Err(runtime_error(
                    format!("unknown operator \"{op}\"; use one of {}", OPS.join(" ")),
                    ctx.call_position(),
                ));
            }
            Ok(b.update(|r| {
                r.condition = Some(RuleCondition::Attribute {
                    attribute: attribute.to_string(),
                    op: op.to_string(),
                    value: to_json(&value),
                })
            }))
        },
    );
    engine.register_fn("points", |b: &mut RuleBuilder, n: Dynamic| {
        let n = as_number(&n).unwrap_or(0.0);
        b.update(|r| r.points = n)
    });
    engine.register_fn("cap", |b: &mut RuleBuilder, max: Dynamic, period: i64| {
        let max = as_number(&max).unwrap_or(0.0);
        b.update(|r| r.cap = Some((max, period)))
    });
}

fn query(ctx: &NativeCallContext, q: Query) -> Result<Dynamic, Box<EvalAltResult>> {
    let pos = ctx.call_position();
    match current_host(|h| h.query(q)) {
        None => Err(runtime_error(
            "behaviour queries run when a segment is evaluated, not at load time",
            pos,
        )),
        Some(Ok(v)) => Ok(to_dynamic(&v)),
        Some(Err(Interrupt::Fail(m))) => Err(runtime_error(m, pos)),
        Some(Err(_)) => Err(runtime_error("unexpected interruption in a query", pos)),
    }
}

fn register_queries(engine: &mut Engine) {
    engine.register_fn(
        "count",
        |ctx: NativeCallContext, event: ImmutableString, window: i64| {
            query(
                &ctx,
                Query::Count {
                    event: event.to_string(),
                    filter: serde_json::json!({}),
                    window_ms: window,
                },
            )
        },
    );
    engine.register_fn(
        "count",
        |ctx: NativeCallContext, event: ImmutableString, filter: Map, window: i64| {
            query(
                &ctx,
                Query::Count {
                    event: event.to_string(),
                    filter: json_map(filter),
                    window_ms: window,
                },
            )
        },
    );
    engine.register_fn(
        "last_seen",
        |ctx: NativeCallContext, event: ImmutableString| {
            query(
                &ctx,
                Query::LastSeen {
                    event: event.to_string(),
                },
            )
        },
    );
    engine.register_fn(
        "first_seen",
        |ctx: NativeCallContext, event: ImmutableString| {
            query(
                &ctx,
                Query::FirstSeen {
                    event: event.to_string(),
                },
            )
        },
    );
    engine.register_fn(
        "in_segment",
        |ctx: NativeCallContext, segment: ImmutableString| {
            query(
                &ctx,
                Query::InSegment {
                    segment: segment.to_string(),
                },
            )
        },
    );
}

fn stdlib_resolver() -> rhai::module_resolvers::StaticModuleResolver {
    let mut resolver = rhai::module_resolvers::StaticModuleResolver::new();
    let mut engine = Engine::new();
    register_durations(&mut engine);
    for module in herald_stdlib::MODULES {
        let ast = engine
            .compile(module.source)
            .unwrap_or_else(|e| panic!("stdlib module {} does not compile: {e}", module.name));
        let m = rhai::Module::eval_ast_as_new(Scope::new(), &ast, &engine)
            .unwrap_or_else(|e| panic!("stdlib module {} does not load: {e}", module.name));
        resolver.insert(format!("herald/{}", module.name), m);
    }
    resolver
}

const MS_PER_SECOND: i64 = 1000;

fn register_durations(engine: &mut Engine) {
    for (name, unit) in [
        ("seconds", MS_PER_SECOND),
        ("minutes", 60 * MS_PER_SECOND),
        ("hours", 3600 * MS_PER_SECOND),
        ("days", 86_400 * MS_PER_SECOND),
        ("weeks", 7 * 86_400 * MS_PER_SECOND),
    ] {
        engine.register_fn(name, move |n: i64| n.saturating_mul(unit));
        engine.register_fn(name, move |n: f64| (n * unit as f64).round() as i64);
    }
}

fn runtime_error(message: impl Into<String>, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        pos,
    ))
}

fn register_declarations(engine: &mut Engine) {
    engine.register_type_with_name::<WorkflowBuilder>("Workflow");
    engine.register_fn(
        "workflow",
        |ctx: NativeCallContext,
         name: ImmutableString|
         -> Result<WorkflowBuilder, Box<EvalAltResult>> {
            let pos = ctx.call_position();
            if name.trim().is_empty() {
                return Err(runtime_error("a workflow needs a non-empty name", pos));
            }
            if name.chars().any(char::is_control) {
                // Names are parts of storage keys, where NUL separates fields.
                return Err(runtime_error(
                    "a workflow name cannot contain control characters",
                    pos,
                ));
            }
            let decl = WorkflowDecl::new(name.as_str(), pos.line().unwrap_or(0));
            // Outside of loading (the top level runs again before each activation so that
            // imports are bound) the declaration is already known: hand back a detached copy.
            Ok(decl::declare(decl.clone()).unwrap_or_else(|| {
                WorkflowBuilder(std::sync::Arc::new(std::sync::Mutex::new(decl)))
            }))
        },
    );
    engine.register_fn(
        "on_event",
        |b: &mut WorkflowBuilder, name: ImmutableString| {
            b.update(|d| {
                d.triggers.push(Trigger::Event {
                    name: name.to_string(),
                    filter: Default::default(),
                })
            })
        },
    );
    engine.register_fn(
        "on_event",
        |b: &mut WorkflowBuilder, name: ImmutableString, filter: Map| {
            let filter = filter_map(filter);
            b.update(|d| {
                d.triggers.push(Trigger::Event {
                    name: name.to_string(),
                    filter,
                })
            })
        },
    );
    engine.register_fn("manual", |b: &mut WorkflowBuilder| {
        b.update(|d| d.triggers.push(Trigger::Manual))
    });
    engine.register_fn(
        "on_workflow_completed",
        |b: &mut WorkflowBuilder, name: ImmutableString| {
            b.update(|d| {
                d.triggers.push(Trigger::WorkflowCompleted {
                    workflow: name.to_string(),
                })
            })
        },
    );
    engine.register_fn(
        "goal",
        |b: &mut WorkflowBuilder, event: ImmutableString, window: i64| {
            b.update(|d| {
                d.goal = Some(Goal {
                    event: event.to_string(),
                    window_ms: window,
                })
            })
        },
    );
    engine.register_fn(
        "reentry",
        |ctx: NativeCallContext,
         b: &mut WorkflowBuilder,
         policy: ImmutableString|
         -> Result<WorkflowBuilder, Box<EvalAltResult>> {
            let reentry = match policy.as_str() {
                "once" => Reentry::Once,
                "always" => Reentry::Always,
                other => {
                    return Err(runtime_error(
                        format!(
                            "unknown re-entry policy \"{other}\": use \"once\", \"always\" or a duration such as days(30)"
                        ),
                        ctx.call_position(),
                    ))
                }
            };
            Ok(b.update(|d| d.reentry = reentry))
        },
    );
    engine.register_fn(
        "priority",
        |ctx: NativeCallContext,
         b: &mut WorkflowBuilder,
         lane: ImmutableString|
         -> Result<WorkflowBuilder, Box<EvalAltResult>> {
            let Some(priority) = Priority::parse(lane.as_str()) else {
                return Err(runtime_error(
                    format!(
                        "unknown priority \"{lane}\": use \"transactional\", \"normal\" or \"bulk\""
                    ),
                    ctx.call_position(),
                ));
            };
            Ok(b.update(|d| d.priority = priority))
        },
    );
    engine.register_fn(
        "holdout",
        |ctx: NativeCallContext,
         b: &mut WorkflowBuilder,
         percent: i64|
         -> Result<WorkflowBuilder, Box<EvalAltResult>> {
            let p = holdout_percent(&ctx, percent)?;
            Ok(b.update(|d| d.holdout = Some(p)))
        },
    );
    engine.register_fn("reentry", |b: &mut WorkflowBuilder, cooldown: i64| {
        b.update(|d| {
            d.reentry = Reentry::After {
                cooldown_ms: cooldown,
            }
        })
    });
}

/// A holdout share: 1 to 50 percent.
fn holdout_percent(ctx: &NativeCallContext, percent: i64) -> Result<u32, Box<EvalAltResult>> {
    if !(1..=50).contains(&percent) {
        return Err(runtime_error(
            format!(
                "holdout is the percent of runs that send nothing, from 1 to 50; got {percent}"
            ),
            ctx.call_position(),
        ));
    }
    Ok(percent as u32)
}

/// `broadcast(name)` and its methods (files in `broadcasts/`).
fn register_broadcasts(engine: &mut Engine) {
    engine.register_type_with_name::<BroadcastBuilder>("Broadcast");
    engine.register_fn(
        "broadcast",
        |ctx: NativeCallContext,
         name: ImmutableString|
         -> Result<BroadcastBuilder, Box<EvalAltResult>> {
            let pos = ctx.call_position();
            if name.trim().is_empty() {
                return Err(runtime_error("a broadcast needs a non-empty name", pos));
            }
            if name.chars().any(char::is_control) {
                return Err(runtime_error(
                    "a broadcast name cannot contain control characters",
                    pos,
                ));
            }
            let mut decl = WorkflowDecl::new(name.as_str(), pos.line().unwrap_or(0));
            decl.priority = Priority::Bulk;
            decl.broadcast = Some(BroadcastSpec::default());
            Ok(decl::declare_broadcast(decl.clone()).unwrap_or_else(|| {
                BroadcastBuilder(std::sync::Arc::new(std::sync::Mutex::new(decl)))
            }))
        },
    );
    engine.register_fn(
        "audience",
        |b: &mut BroadcastBuilder, segment: ImmutableString| {
            b.update(|s| s.audience = Some(segment.to_string()))
        },
    );
    engine.register_fn(
        "channel",
        |b: &mut BroadcastBuilder, name: ImmutableString| {
            b.update(|s| s.channel = Some(name.to_string()))
        },
    );
    engine.register_fn(
        "template",
        |b: &mut BroadcastBuilder, name: ImmutableString| {
            b.update(|s| s.template = Some(name.to_string()))
        },
    );
    engine.register_fn(
        "topic",
        |b: &mut BroadcastBuilder, name: ImmutableString| {
            b.update(|s| s.topic = Some(name.to_string()))
        },
    );
    engine.register_fn(
        "send_at",
        |ctx: NativeCallContext,
         b: &mut BroadcastBuilder,
         when: ImmutableString|
         -> Result<BroadcastBuilder, Box<EvalAltResult>> {
            let at = if let Some((hour, minute)) = parse_local_time(&when) {
                SendAt::LocalTime { hour, minute }
            } else if let Some(at_ms) = parse_rfc3339_ms(&when) {
                SendAt::At { at_ms }
            } else {
                return Err(runtime_error(
                    format!("send_at expects \"HH:MM\" (each contact's local time) or an RFC 3339 instant such as \"2026-12-24T09:00:00Z\", got \"{when}\""),
                    ctx.call_position(),
                ));
            };
            Ok(b.update(|s| s.send_at = Some(at)))
        },
    );
    engine.register_fn(
        "throttle",
        |ctx: NativeCallContext,
         b: &mut BroadcastBuilder,
         per_second: i64|
         -> Result<BroadcastBuilder, Box<EvalAltResult>> {
            if !(1..=1_000_000).contains(&per_second) {
                return Err(runtime_error(
                    format!(
                        "throttle is recipients per second, from 1 to 1000000; got {per_second}"
                    ),
                    ctx.call_position(),
                ));
            }
            Ok(b.update(|s| s.throttle_per_second = Some(per_second as u32)))
        },
    );
    engine.register_fn(
        "arms",
        |ctx: NativeCallContext,
         b: &mut BroadcastBuilder,
         arms: Map|
         -> Result<BroadcastBuilder, Box<EvalAltResult>> {
            let mut out = Vec::new();
            for (arm, template) in arms.iter() {
                let Some(t) = template.clone().try_cast::<ImmutableString>() else {
                    return Err(runtime_error(
                        format!("arm \"{arm}\" must name a template (a string)"),
                        ctx.call_position(),
                    ));
                };
                out.push((arm.to_string(), t.to_string()));
            }
            if out.len() < 2 {
                return Err(runtime_error(
                    "arms needs at least two arms: #{ a: \"template_a\", b: \"template_b\" }",
                    ctx.call_position(),
                ));
            }
            Ok(b.update(|s| s.arms = out))
        },
    );
    engine.register_fn(
        "holdout",
        |ctx: NativeCallContext,
         b: &mut BroadcastBuilder,
         percent: i64|
         -> Result<BroadcastBuilder, Box<EvalAltResult>> {
            let p = holdout_percent(&ctx, percent)?;
            Ok(b.update_decl(|d| d.holdout = Some(p)))
        },
    );
    engine.register_fn(
        "test_share",
        |ctx: NativeCallContext,
         b: &mut BroadcastBuilder,
         percent: i64|
         -> Result<BroadcastBuilder, Box<EvalAltResult>> {
            if !(1..=99).contains(&percent) {
                return Err(runtime_error(
                    format!("test_share is the percent of the audience that tests the arms, from 1 to 99; got {percent}"),
                    ctx.call_position(),
                ));
            }
            Ok(b.update(|s| s.test_share = Some(percent as u32)))
        },
    );
    engine.register_fn(
        "winner",
        |ctx: NativeCallContext,
         b: &mut BroadcastBuilder,
         metric: ImmutableString,
         after: i64|
         -> Result<BroadcastBuilder, Box<EvalAltResult>> {
            if !decl::WINNER_METRICS.contains(&metric.as_str()) {
                return Err(runtime_error(
                    format!(
                        "winner is decided by {}; got \"{metric}\"",
                        decl::WINNER_METRICS.join(", ")
                    ),
                    ctx.call_position(),
                ));
            }
            if after <= 0 {
                return Err(runtime_error(
                    format!("winner needs a positive time to wait for the test's results, such as hours(4); got {after}"),
                    ctx.call_position(),
                ));
            }
            Ok(b.update(|s| {
                s.winner = Some(decl::WinnerRule {
                    metric: metric.to_string(),
                    after_ms: after,
                })
            }))
        },
    );
    engine.register_fn(
        "goal",
        |b: &mut BroadcastBuilder, event: ImmutableString, window: i64| {
            b.update_decl(|d| {
                d.goal = Some(Goal {
                    event: event.to_string(),
                    window_ms: window,
                })
            })
        },
    );
}

/// The `contact` value seen by scripts: reads go to the snapshot recorded at the last step
/// boundary, so a script sees fresh data after every wait.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContactView;

fn register_contact(engine: &mut Engine) {
    engine.register_type_with_name::<ContactView>("Contact");
    engine.register_indexer_get(|_c: &mut ContactView, key: ImmutableString| -> Dynamic {
        current_host(|h| to_dynamic(&h.contact_attr(&key))).unwrap_or(Dynamic::UNIT)
    });
    engine.register_fn("to_string", |_c: &mut ContactView| -> String {
        current_host(|h| h.contact_attr("*").to_string()).unwrap_or_default()
    });
    engine.register_fn("to_debug", |_c: &mut ContactView| -> String {
        current_host(|h| h.contact_attr("*").to_string()).unwrap_or_default()
    });
}

fn step(ctx: &NativeCallContext, call: StepCall) -> Result<Dynamic, Box<EvalAltResult>> {
    let pos = ctx.call_position();
    let kind = call.kind();
    match current_host(|h| h.step(call, pos.line())) {
        None => Err(runtime_error(
            format!("`{kind}` is a workflow step: call it inside `fn run(contact, trigger)`"),
            pos,
        )),
        Some(Ok(v)) => Ok(to_dynamic(&v)),
        Some(Err(Interrupt::Fail(msg))) => Err(runtime_error(msg, pos)),
        Some(Err(Interrupt::Suspend)) => Err(terminate(SUSPEND, pos)),
        Some(Err(Interrupt::Exit(reason))) => {
            EXIT_REASON.with(|r| *r.borrow_mut() = Some(reason));
            Err(terminate(EXIT, pos))
        }
        Some(Err(Interrupt::Park(reason))) => {
            PARK_REASON.with(|r| *r.borrow_mut() = Some(reason));
            Err(terminate(PARK, pos))
        }
    }
}

fn terminate(token: &str, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(
        Dynamic::from(token.to_string()),
        pos,
    ))
}

fn json_map(m: Map) -> serde_json::Value {
    to_json(&Dynamic::from_map(m))
}

/// A property filter written as a Rhai map, as the JSON object declarations keep.
fn filter_map(m: Map) -> serde_json::Map<String, serde_json::Value> {
    match json_map(m) {
        serde_json::Value::Object(m) => m,
        _ => Default::default(),
    }
}

fn parse_arms(
    ctx: &NativeCallContext,
    arms: &Dynamic,
) -> Result<Vec<(String, u32)>, Box<EvalAltResult>> {
    let pos = ctx.call_position();
    let out: Vec<(String, u32)> = if let Some(a) = arms.read_lock::<rhai::Array>() {
        a.iter().map(|v| (v.to_string(), 1)).collect()
    } else if let Some(m) = arms.read_lock::<Map>() {
        let mut out = Vec::new();
        for (k, v) in m.iter() {
            let w = v.as_int().map_err(|_| {
                runtime_error(format!("the weight of arm \"{k}\" must be an integer"), pos)
            })?;
            if w < 0 || w > u32::MAX as i64 {
                return Err(runtime_error(
                    format!("the weight of arm \"{k}\" is out of range"),
                    pos,
                ));
            }
            out.push((k.to_string(), w as u32));
        }
        out
    } else {
        return Err(runtime_error(
            "variant arms must be an array of names or a map of name to weight",
            pos,
        ));
    };
    if out.is_empty() || out.iter().all(|(_, w)| *w == 0) {
        return Err(runtime_error(
            "variant needs at least one arm with a positive weight",
            pos,
        ));
    }
    Ok(out)
}

/// Parse `"HH:MM"`.
fn parse_local_time(s: &str) -> Option<(u32, u32)> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

fn register_steps(engine: &mut Engine) {
    engine.register_fn(
        "label",
        |ctx: NativeCallContext, name: ImmutableString| -> Result<(), Box<EvalAltResult>> {
            let pos = ctx.call_position();
            if let Some(problem) = crate::host::label_problem(&name) {
                return Err(runtime_error(problem, pos));
            }
            match current_host(|h| h.label(&name)) {
                Some(()) => Ok(()),
                None => Err(runtime_error(
                    "`label` names a workflow step: call it inside `fn run(contact, trigger)`",
                    pos,
                )),
            }
        },
    );
    engine.register_fn(
        "send",
        |ctx: NativeCallContext, channel: ImmutableString, template: ImmutableString| {
            step(
                &ctx,
                StepCall::Send {
                    channel: channel.to_string(),
                    template: template.to_string(),
                    vars: serde_json::Value::Object(Default::default()),
                },
            )
        },
    );
    engine.register_fn(
        "send",
        |ctx: NativeCallContext, channel: ImmutableString, template: ImmutableString, vars: Map| {
            step(
                &ctx,
                StepCall::Send {
                    channel: channel.to_string(),
                    template: template.to_string(),
                    vars: json_map(vars),
                },
            )
        },
    );
    engine.register_fn(
        "action",
        |ctx: NativeCallContext,
         channel: ImmutableString,
         operation: ImmutableString,
         payload: Map| {
            step(
                &ctx,
                StepCall::Action {
                    channel: channel.to_string(),
                    operation: operation.to_string(),
                    payload: json_map(payload),
                },
            )
        },
    );
    engine.register_fn("wait", |ctx: NativeCallContext, duration: i64| {
        if duration < 0 {
            return Err(runtime_error(
                format!("wait needs a duration of zero or more, got {duration}"),
                ctx.call_position(),
            ));
        }
        step(
            &ctx,
            StepCall::Wait {
                duration_ms: duration,
            },
        )
    });
    engine.register_fn("wait_until", |ctx: NativeCallContext, at: i64| {
        step(
            &ctx,
            StepCall::WaitUntil {
                target: WaitTarget::At(at),
            },
        )
    });
    engine.register_fn("wait_until", |ctx: NativeCallContext, when: ImmutableString| {
        let target = if let Some((hour, minute)) = parse_local_time(&when) {
            WaitTarget::LocalTime { hour, minute }
        } else if let Some(ms) = parse_rfc3339_ms(&when) {
            WaitTarget::At(ms)
        } else {
            return Err(runtime_error(
                format!("wait_until expects \"HH:MM\" or an RFC 3339 instant such as \"2026-12-24T09:00:00Z\", got \"{when}\""),
                ctx.call_position(),
            ));
        };
        step(&ctx, StepCall::WaitUntil { target })
    });
    engine.register_fn(
        "wait_for",
        |ctx: NativeCallContext, event: ImmutableString, timeout: i64| {
            step(
                &ctx,
                StepCall::WaitFor {
                    event: event.to_string(),
                    filter: serde_json::Value::Object(Default::default()),
                    timeout_ms: timeout.max(0),
                },
            )
        },
    );
    engine.register_fn(
        "wait_for",
        |ctx: NativeCallContext, event: ImmutableString, filter: Map, timeout: i64| {
            step(
                &ctx,
                StepCall::WaitFor {
                    event: event.to_string(),
                    filter: json_map(filter),
                    timeout_ms: timeout.max(0),
                },
            )
        },
    );
    engine.register_fn("update", |ctx: NativeCallContext, attrs: Map| {
        step(
            &ctx,
            StepCall::Update {
                attrs: json_map(attrs),
            },
        )
    });
    engine.register_fn(
        "consent",
        |ctx: NativeCallContext, topic: ImmutableString, status: ImmutableString| {
            consent_step(&ctx, &topic, &status, "workflow")
        },
    );
    engine.register_fn(
        "consent",
        |ctx: NativeCallContext,
         topic: ImmutableString,
         status: ImmutableString,
         source: ImmutableString| { consent_step(&ctx, &topic, &status, &source) },
    );
    engine.register_fn("now", |ctx: NativeCallContext| step(&ctx, StepCall::Now));
    engine.register_fn("random", |ctx: NativeCallContext| {
        step(&ctx, StepCall::Random)
    });
    engine.register_fn(
        "variant",
        |ctx: NativeCallContext, name: ImmutableString, arms: Dynamic| {
            let arms = parse_arms(&ctx, &arms)?;
            step(
                &ctx,
                StepCall::Variant {
                    name: name.to_string(),
                    arms,
                    bandit: None,
                },
            )
        },
    );
    engine.register_fn(
        "bandit",
        |ctx: NativeCallContext,
         name: ImmutableString,
         arms: Dynamic,
         metric: ImmutableString|
         -> Result<Dynamic, Box<EvalAltResult>> {
            let arms = parse_arms(&ctx, &arms)?;
            if !decl::WINNER_METRICS.contains(&metric.as_str()) {
                return Err(runtime_error(
                    format!(
                        "a bandit learns from {}; got \"{metric}\"",
                        decl::WINNER_METRICS.join(", ")
                    ),
                    ctx.call_position(),
                ));
            }
            step(
                &ctx,
                StepCall::Variant {
                    name: name.to_string(),
                    arms,
                    bandit: Some(metric.to_string()),
                },
            )
        },
    );
    engine.register_fn(
        "exit",
        |ctx: NativeCallContext| -> Result<(), Box<EvalAltResult>> { exit(&ctx, String::new()) },
    );
    engine.register_fn(
        "exit",
        |ctx: NativeCallContext, reason: ImmutableString| -> Result<(), Box<EvalAltResult>> {
            exit(&ctx, reason.to_string())
        },
    );
}

fn consent_step(
    ctx: &NativeCallContext,
    topic: &str,
    status: &str,
    source: &str,
) -> Result<Dynamic, Box<EvalAltResult>> {
    if !matches!(status, "subscribed" | "unsubscribed") {
        return Err(runtime_error(
            format!("consent status must be \"subscribed\" or \"unsubscribed\", not \"{status}\""),
            ctx.call_position(),
        ));
    }
    if topic.trim().is_empty() || source.trim().is_empty() || source.len() > 64 {
        return Err(runtime_error(
            "consent needs a topic and a short source such as \"double_opt_in\"",
            ctx.call_position(),
        ));
    }
    step(
        ctx,
        StepCall::Consent {
            topic: topic.to_string(),
            status: status.to_string(),
            source: source.to_string(),
        },
    )
}

fn exit(ctx: &NativeCallContext, reason: String) -> Result<(), Box<EvalAltResult>> {
    let pos = ctx.call_position();
    if current_host(|_| ()).is_none() {
        return Err(runtime_error(
            "`exit` ends a run: call it inside `fn run(contact, trigger)`",
            pos,
        ));
    }
    EXIT_REASON.with(|r| *r.borrow_mut() = Some(reason));
    Err(terminate(EXIT, pos))
}

/// Parse an RFC 3339 / ISO 8601 UTC instant (`2026-12-24T09:00:00Z`, optional fraction and
/// `+HH:MM` offset) into milliseconds since the epoch. No dependency on a date crate: the DSL
/// crate stays small and pure.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() < 20 || !s.is_ascii() {
        return None;
    }
    let num = |a: usize, b: usize| -> Option<i64> { s.get(a..b)?.parse().ok() };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if &s[4..5] != "-" || &s[7..8] != "-" || !matches!(&s[10..11], "T" | "t" | " ") {
        return None;
    }
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            return None;
        }
        let padded = format!("{:0<3}", &digits[..digits.len().min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits.len()..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let h: i64 = o[1..3].parse().ok()?;
            let m: i64 = o[4..6].parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How one activation of a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ActivationEnd {
    /// `run` returned: the run is complete.
    Completed,
    /// A step suspended the run (a wait, a retry): activate again later.
    Suspended,
    /// The script called `exit(reason)`.
    Exited(String),
    /// The host parked the run for an operator.
    Parked(String),
    /// The script failed: an uncaught error, a limit, the deadline. `line`/`column` are 1-based.
    Failed {
        /// What went wrong, in words.
        message: String,
        /// Script line, if known.
        line: Option<usize>,
        /// Script column, if known.
        column: Option<usize>,
    },
}

/// Does the script import modules? Only then must its top level run before a call (to bind
/// the module aliases); otherwise skipping it saves a declaration call per evaluation.
pub(crate) fn has_imports(ast: &AST) -> bool {
    ast.statements()
        .iter()
        .any(|s| matches!(s, rhai::Stmt::Import(..)))
}

/// Clears the activation deadline when dropped.
pub(crate) struct DeadlineGuard;

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        let _ = ACTIVE_DEADLINE.try_with(|d| d.set(None));
    }
}

/// Arm the wall-clock deadline for one evaluation.
pub(crate) fn set_deadline(limits: &Limits) -> DeadlineGuard {
    ACTIVE_DEADLINE.with(|d| d.set(Some(Instant::now() + limits.activation_deadline)));
    DeadlineGuard
}

/// Classify an evaluation error the way activations are classified.
pub(crate) fn classify_error(err: EvalAltResult) -> ActivationEnd {
    classify(err)
}

/// Call `fn run(contact, trigger)` of a loaded workflow once, under the activation deadline.
/// The caller binds the [`Host`](crate::Host) with [`with_host`](crate::with_host) around this.
pub fn run_activation(
    engine: &Engine,
    ast: &AST,
    trigger: &serde_json::Value,
    limits: &Limits,
) -> ActivationEnd {
    // Lifted however the call ends (a panic included): a deadline left behind would stop the
    // thread's next evaluation at once.
    let _deadline = set_deadline(limits);
    EXIT_REASON.with(|r| r.borrow_mut().take());
    PARK_REASON.with(|r| r.borrow_mut().take());
    let mut scope = Scope::new();
    let options = rhai::CallFnOptions::new()
        .eval_ast(has_imports(ast))
        .rewind_scope(true);
    let result = engine.call_fn_with_options::<Dynamic>(
        options,
        &mut scope,
        ast,
        "run",
        (Dynamic::from(ContactView), to_dynamic(trigger)),
    );
    match result {
        Ok(_) => ActivationEnd::Completed,
        Err(err) => classify(*err),
    }
}

fn classify(err: EvalAltResult) -> ActivationEnd {
    if let EvalAltResult::ErrorTerminated(token, pos) = &err {
        match token.clone().into_string().ok().as_deref() {
            Some(SUSPEND) => return ActivationEnd::Suspended,
            Some(EXIT) => {
                return ActivationEnd::Exited(
                    EXIT_REASON
                        .with(|r| r.borrow_mut().take())
                        .unwrap_or_default(),
                )
            }
            Some(PARK) => {
                return ActivationEnd::Parked(
                    PARK_REASON
                        .with(|r| r.borrow_mut().take())
                        .unwrap_or_default(),
                )
            }
            Some(DEADLINE) => {
                return ActivationEnd::Failed {
                    message: "the activation ran past its wall-clock deadline".into(),
                    line: pos.line(),
                    column: pos.position(),
                }
            }
            _ => {}
        }
    }
    let pos = innermost_position(&err);
    let message = match &err {
        EvalAltResult::ErrorTooManyOperations(_) => {
            "the script exceeded its operation limit (an endless loop?)".to_string()
        }
        EvalAltResult::ErrorStackOverflow(_) => "the script nested calls too deeply".to_string(),
        EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
        _ => err.to_string(),
    };
    ActivationEnd::Failed {
        message: strip_position(&message),
        line: pos.line(),
        column: pos.position(),
    }
}

fn innermost_position(err: &EvalAltResult) -> Position {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, pos) => {
            let p = innermost_position(inner);
            if p.is_none() {
                *pos
            } else {
                p
            }
        }
        other => other.position(),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" (line ") {
        Some(i) if message.ends_with(')') => message[..i].to_string(),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-12-24T09:00:00Z"),
            Some(1_798_102_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-12-24T10:00:00.5+01:00"),
            Some(1_798_102_800_500)
        );
        assert_eq!(parse_rfc3339_ms("tomorrow"), None);
    }

    #[test]
    fn local_times_are_validated() {
        assert_eq!(parse_local_time("09:30"), Some((9, 30)));
        assert_eq!(parse_local_time("24:00"), None);
        assert_eq!(parse_local_time("9:5"), None);
    }
}
