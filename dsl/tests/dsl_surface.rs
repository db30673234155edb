//! The DSL as a script author sees it: declarations, steps delegated to the host, the contact
//! snapshot, sandbox limits and diagnostics.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use herald_dsl::{
    build_engine, check_script, load_workflow, render_diagnostics, run_activation, with_host,
    ActivationEnd, Host, Interrupt, Limits, ProjectContext, Reentry, StepCall, Trigger,
};
use serde_json::{json, Value};

const WELCOME: &str = r#"
/// Welcome series.
workflow("welcome")
    .on_event("newsletter_subscribed", #{ source: "footer" })
    .goal("order_completed", days(14))
    .reentry("once");

fn run(contact, trigger) {
    send("email", "welcome", #{ plan: trigger.properties.plan });
    let opened = wait_for("email_opened", days(2));
    if opened == () {
        send("sms", "nudge");
    }
    wait(days(3));
    if contact.score >= 50 {
        update(#{ lifecycle: "mql" });
    }
}
"#;

/// A host that answers steps from a queue and records what it was asked.
#[derive(Clone, Default)]
struct ScriptedHost {
    calls: Arc<Mutex<Vec<StepCall>>>,
    answers: Arc<Mutex<VecDeque<Result<Value, Interrupt>>>>,
    contact: Value,
}

impl Host for ScriptedHost {
    fn step(&mut self, call: StepCall, _line: Option<usize>) -> Result<Value, Interrupt> {
        self.calls.lock().unwrap().push(call);
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err(Interrupt::Suspend))
    }
    fn contact_attr(&mut self, key: &str) -> Value {
        self.contact.get(key).cloned().unwrap_or(Value::Null)
    }
    fn log(&mut self, _message: &str) {}
}

fn run_with(host: ScriptedHost, source: &str, trigger: Value) -> ActivationEnd {
    let limits = Limits::default();
    let engine = build_engine(&limits);
    let wf = load_workflow(&engine, "wf.rhai", source).expect("loads");
    let (end, _) = with_host(Box::new(host), || {
        run_activation(&engine, &wf.ast, &trigger, &limits)
    });
    end
}

#[test]
fn declaration_reads_triggers_goal_and_reentry() {
    let engine = build_engine(&Limits::default());
    let wf = load_workflow(&engine, "welcome.rhai", WELCOME).unwrap();
    assert_eq!(wf.decl.name, "welcome");
    assert_eq!(
        wf.decl.triggers,
        vec![Trigger::Event {
            name: "newsletter_subscribed".into(),
            filter: json!({"source": "footer"}).as_object().unwrap().clone()
        }]
    );
    assert_eq!(wf.decl.goal.as_ref().unwrap().window_ms, 14 * 86_400_000);
    assert_eq!(wf.decl.reentry, Reentry::Once);
    assert!(wf.decl.triggered_by(
        "newsletter_subscribed",
        &json!({"source": "footer", "x": 1})
    ));
    assert!(!wf
        .decl
        .triggered_by("newsletter_subscribed", &json!({"source": "popup"})));
}

#[test]
fn steps_go_to_the_host_in_order_and_timeouts_return_unit() {
    let host = ScriptedHost {
        contact: json!({"score": 70}),
        ..Default::default()
    };
    host.answers.lock().unwrap().extend([
        Ok(json!({"message_id": "m1"})),
        Ok(Value::Null), // wait_for timed out
        Ok(json!({"message_id": "m2"})),
        Ok(Value::Null), // wait
        Ok(Value::Null), // update
    ]);
    let end = run_with(
        host.clone(),
        WELCOME,
        json!({"properties": {"plan": "pro"}}),
    );
    assert_eq!(end, ActivationEnd::Completed);
    let calls = host.calls.lock().unwrap();
    let kinds: Vec<String> = calls
        .iter()
        .map(|c| format!("{}:{}", c.kind(), c.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            "send:email:welcome",
            "wait_for:email_opened",
            "send:sms:nudge",
            "wait:",
            "update:"
        ]
    );
    assert_eq!(
        calls[0],
        StepCall::Send {
            channel: "email".into(),
            template: "welcome".into(),
            vars: json!({"plan": "pro"})
        }
    );
    assert_eq!(
        calls[4],
        StepCall::Update {
            attrs: json!({"lifecycle": "mql"})
        }
    );
}

#[test]
fn a_suspending_step_ends_the_activation_even_inside_try_catch() {
    let src = r#"workflow("w").manual();
fn run(contact, trigger) {
    try { wait(days(1)); } catch (e) { send("email", "never"); }
    send("email", "after");
}"#;
    let host = ScriptedHost::default();
    let end = run_with(host.clone(), src, json!({}));
    assert_eq!(end, ActivationEnd::Suspended);
    assert_eq!(host.calls.lock().unwrap().len(), 1);
}

#[test]
fn permanent_failures_can_be_caught_by_the_script() {
    let src = r#"workflow("w").manual();
fn run(contact, trigger) {
    try { send("email", "a"); } catch (e) { send("sms", "fallback"); }
}"#;
    let host = ScriptedHost::default();
    host.answers.lock().unwrap().extend([
        Err(Interrupt::Fail("mailbox unavailable".into())),
        Ok(json!({})),
    ]);
    assert_eq!(
        run_with(host.clone(), src, json!({})),
        ActivationEnd::Completed
    );
    assert_eq!(host.calls.lock().unwrap().len(), 2);
}

#[test]
fn endless_loops_hit_the_operation_limit_with_a_line() {
    let src = "workflow(\"w\").manual();\nfn run(contact, trigger) {\n    loop { }\n}\n";
    match run_with(ScriptedHost::default(), src, json!({})) {
        ActivationEnd::Failed { message, line, .. } => {
            assert!(message.contains("operation limit"), "{message}");
            let _ = line;
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[test]
fn thrown_errors_fail_the_run_with_their_message() {
    let src = "workflow(\"w\").manual();\nfn run(contact, trigger) {\n    throw \"bad data\";\n}\n";
    match run_with(ScriptedHost::default(), src, json!({})) {
        ActivationEnd::Failed { message, line, .. } => {
            assert_eq!(message, "bad data");
            assert_eq!(line, Some(3));
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[test]
fn exit_ends_the_run_with_its_reason() {
    let src = "workflow(\"w\").manual();\nfn run(contact, trigger) { exit(\"unsubscribed\"); send(\"email\", \"x\"); }";
    assert_eq!(
        run_with(ScriptedHost::default(), src, json!({})),
        ActivationEnd::Exited("unsubscribed".into())
    );
}

#[test]
fn eval_and_wall_clock_are_not_available() {
    let engine = build_engine(&Limits::default());
    let src = "workflow(\"w\").manual();\nfn run(contact, trigger) { let t = timestamp(); }";
    let report = check_script(&engine, "w.rhai", src, None);
    // `timestamp` is not registered: the call fails when it runs, never reads the clock.
    let wf = report.workflow.expect("compiles");
    let (end, _) = with_host(Box::new(ScriptedHost::default()), || {
        run_activation(&engine, &wf.ast, &json!({}), &Limits::default())
    });
    assert!(
        matches!(end, ActivationEnd::Failed { ref message, .. } if message.contains("timestamp")),
        "{end:?}"
    );
    let report = check_script(
        &engine,
        "w.rhai",
        "workflow(\"w\");\nfn run(c, t) { eval(\"1\") }",
        None,
    );
    assert!(report.has_errors());
}

#[test]
fn stdlib_modules_are_importable() {
    let src = r#"import "herald/text" as text;
workflow("w").manual();
fn run(contact, trigger) { update(#{ first: text::first_name(contact.name, "there") }); }"#;
    let host = ScriptedHost {
        contact: json!({"name": "Ada Lovelace"}),
        ..Default::default()
    };
    host.answers.lock().unwrap().push_back(Ok(Value::Null));
    assert_eq!(
        run_with(host.clone(), src, json!({})),
        ActivationEnd::Completed
    );
    assert_eq!(
        host.calls.lock().unwrap()[0],
        StepCall::Update {
            attrs: json!({"first": "Ada"})
        }
    );
}

fn project() -> ProjectContext {
    let mut p = ProjectContext::default();
    p.channels.insert("email".into(), vec![]);
    p.channels.insert("sms".into(), vec![]);
    p.templates.insert("welcome".into());
    p.templates.insert("nudge".into());
    p.workflows.insert("welcome".into());
    p
}

fn diagnostics_for(source: &str) -> String {
    let engine = build_engine(&Limits::default());
    let report = check_script(&engine, "workflows/broken.rhai", source, Some(&project()));
    render_diagnostics(&report.diagnostics, source, false)
}

#[test]
fn syntax_errors_render_with_file_line_and_label() {
    insta::assert_snapshot!(diagnostics_for(
        "workflow(\"w\").manual();\nfn run(contact, trigger) {\n    let x = ;\n}\n"
    ));
}

#[test]
fn unknown_channel_template_and_workflow_are_reported() {
    insta::assert_snapshot!(diagnostics_for(
        "workflow(\"w\").on_workflow_completed(\"welcom\");\nfn run(contact, trigger) {\n    send(\"emial\", \"welcome\");\n    send(\"sms\", \"nudge2\");\n}\n"
    ));
}

#[test]
fn wrong_arity_and_argument_types_are_reported() {
    insta::assert_snapshot!(diagnostics_for(
        "workflow(\"w\").manual().goal(\"x\");\nfn run(contact, trigger) {\n    wait(\"3 days\");\n    send(\"email\");\n}\n"
    ));
}

#[test]
fn missing_declaration_and_run_are_reported() {
    insta::assert_snapshot!(diagnostics_for("let x = 1;\n"));
}

#[test]
fn steps_at_the_top_level_are_reported() {
    insta::assert_snapshot!(diagnostics_for(
        "workflow(\"w\").manual();\nsend(\"email\", \"welcome\");\nfn run(contact, trigger) {}\n"
    ));
}

#[test]
fn a_trigger_name_computed_while_loading_is_reported_on_the_declaration_line() {
    // The name is longer than the file and spelled nowhere in it.
    let source = "let name = \"w\";\nfor i in 0..10 { name += name; }\nworkflow(\"x\").on_workflow_completed(name);\nfn run(contact, trigger) {}\n";
    let engine = build_engine(&Limits::default());
    let report = check_script(&engine, "workflows/x.rhai", source, Some(&project()));
    let unknown = report
        .diagnostics
        .iter()
        .find(|d| d.code == "H004")
        .expect("the unknown workflow is reported");
    assert_eq!(
        &source[unknown.range.clone()],
        "workflow(\"x\").on_workflow_completed(name);"
    );
}

#[test]
fn a_run_function_with_the_wrong_parameters_is_underlined_where_it_is_declared() {
    // `fn run` is not spelled with one space, and a multi-byte character comes first.
    let source = "//€é\nworkflow(\"w\").manual();\nfn  run(contact) {}\n";
    let engine = build_engine(&Limits::default());
    let report = check_script(&engine, "workflows/w.rhai", source, None);
    let wrong = report
        .diagnostics
        .iter()
        .find(|d| d.code == "H008")
        .expect("the parameters are reported");
    assert_eq!(&source[wrong.range.clone()], "fn  run");
}

fn sample(ty: herald_dsl::api::ArgType) -> &'static str {
    use herald_dsl::api::ArgType::*;
    match ty {
        String => "\"once\"",
        Int | Number | Instant => "1",
        Map => "#{}",
        Array => "[]",
        Arms => "[\"a\"]",
        Any => "1",
    }
}

/// Answers behaviour queries with fixed values.
struct QueryHost;

impl Host for QueryHost {
    fn step(&mut self, _call: StepCall, _line: Option<usize>) -> Result<Value, Interrupt> {
        Ok(Value::Null)
    }
    fn contact_attr(&mut self, _key: &str) -> Value {
        Value::Null
    }
    fn log(&mut self, _message: &str) {}
    fn query(&mut self, q: herald_dsl::Query) -> Result<Value, Interrupt> {
        Ok(match q {
            herald_dsl::Query::InSegment { .. } => json!(true),
            _ => json!(3),
        })
    }
}

#[test]
fn every_documented_function_is_registered_with_every_overload() {
    use herald_dsl::api::Context;
    let engine = build_engine(&Limits::default());
    for f in herald_dsl::DSL_FUNCTIONS {
        assert!(!f.doc.is_empty(), "{} has no documentation", f.name);
        for params in f.overloads {
            // Arguments with a closed set of values get one of them.
            let args: Vec<&str> = params
                .iter()
                .map(|(n, t)| match (f.name, *n) {
                    ("consent", "status") => "\"subscribed\"",
                    ("bandit", "metric") => "\"clicked\"",
                    _ => sample(*t),
                })
                .collect();
            let call = format!("{}({})", f.name, args.join(", "));
            let receiver = match f.on {
                "Workflow" => "workflow(\"w\").",
                "Broadcast" => "broadcast(\"b\").",
                "Scoring" => "scoring().",
                "Rule" => "rule(\"r\").on_event(\"e\").",
                _ => "",
            };
            match f.context {
                Context::Declaration => {
                    let (_, diags) = if f.on == "Workflow"
                        || f.on == "Broadcast"
                        || f.name == "workflow"
                        || f.name == "broadcast"
                    {
                        let src = format!("{receiver}{call};\nfn run(contact, trigger) {{}}");
                        let r = check_script(&engine, "w.rhai", &src, None);
                        (r.workflow.is_some(), r.diagnostics)
                    } else {
                        let src = format!("{receiver}{call};");
                        let (l, d) = herald_dsl::check_scoring(&engine, "scoring.rhai", &src);
                        (l.is_some(), d)
                    };
                    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
                    // segment() in a scoring file is reported, but it must be registered.
                    assert!(
                        errors
                            .iter()
                            .all(|d| !d.message.contains("Function not found")),
                        "{call}: {errors:?}"
                    );
                }
                Context::Query => {
                    let src = format!("segment(\"s\");\nfn matches(contact) {{ {call}; true }}");
                    let (seg, diags) = herald_dsl::check_segment(&engine, "s.rhai", &src, None);
                    let seg = seg.unwrap_or_else(|| panic!("{call}: {diags:?}"));
                    let (r, _) = with_host(Box::new(QueryHost), || {
                        herald_dsl::evaluate_segment(&engine, &seg.ast, &Limits::default())
                    });
                    assert_eq!(r, Ok(true), "{call}");
                }
                _ => {
                    let src = format!("workflow(\"w\");\nfn run(contact, trigger) {{ {call}; }}");
                    let report = check_script(&engine, "w.rhai", &src, None);
                    assert!(!report.has_errors(), "{call}: {:?}", report.diagnostics);
                    let host = ScriptedHost::default();
                    host.answers.lock().unwrap().push_back(Ok(Value::Null));
                    let end = run_with(host, &src, json!({}));
                    assert!(
                        matches!(end, ActivationEnd::Completed | ActivationEnd::Exited(_)),
                        "{call}: {end:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn segments_declare_their_event_and_segment_dependencies() {
    let engine = build_engine(&Limits::default());
    let src = "segment(\"hot\");\nfn matches(contact) {\n    count(\"page_viewed\", days(7)) >= 3 && in_segment(\"pro\") || last_seen(\"demo\") != ()\n}\n";
    let (seg, diags) = herald_dsl::check_segment(&engine, "segments/hot.rhai", src, None);
    let seg = seg.unwrap_or_else(|| panic!("{diags:?}"));
    assert_eq!(seg.decl.name, "hot");
    let events: Vec<_> = seg.deps.events.unwrap().into_iter().collect();
    assert_eq!(events, ["demo", "page_viewed"]);
    assert_eq!(seg.deps.segments.into_iter().collect::<Vec<_>>(), ["pro"]);
    let (_, diags) = herald_dsl::check_segment(&engine, "s.rhai", "segment(\"x\");\n", None);
    assert!(diags.iter().any(|d| d.code == "H012"), "{diags:?}");
}

#[test]
fn scoring_reads_decay_stages_and_rules() {
    let engine = build_engine(&Limits::default());
    let src = "scoring().half_life(days(7)).stage(\"lead\", 20).stage(\"mql\", 50);\n\
               rule(\"pricing\").on_event(\"page\", #{ name: \"Pricing\" }).points(5).cap(15, days(1));\n\
               rule(\"big\").when(\"company_size\", \">=\", 500).points(10);\n";
    let (s, diags) = herald_dsl::check_scoring(&engine, "scoring.rhai", src);
    let s = s.unwrap_or_else(|| panic!("{diags:?}"));
    assert_eq!(s.settings.half_life_ms, Some(7 * 86_400_000));
    assert_eq!(s.settings.stage_of(10.0), "subscriber");
    assert_eq!(s.settings.stage_of(50.0), "mql");
    assert_eq!(s.rules.len(), 2);
    assert_eq!(s.rules[0].cap, Some((15.0, 86_400_000)));
    let (_, diags) = herald_dsl::check_scoring(
        &engine,
        "scoring.rhai",
        "scoring().stage(\"a\", 50).stage(\"b\", 20);",
    );
    assert!(
        diags.iter().any(|d| d.message.contains("higher threshold")),
        "{diags:?}"
    );
}

#[test]
fn reentry_accepts_a_cooldown_duration() {
    let engine = build_engine(&Limits::default());
    let wf = load_workflow(&engine, "w.rhai", "workflow(\"cool\").on_event(\"ping\").reentry(days(1));\nfn run(contact, trigger) { wait(0); }\n").unwrap();
    assert_eq!(
        wf.decl.reentry,
        Reentry::After {
            cooldown_ms: 86_400_000
        }
    );
}

#[test]
fn workflow_and_segment_names_with_control_characters_are_refused() {
    let engine = build_engine(&Limits::default());
    let errors = load_workflow(
        &engine,
        "w.rhai",
        "workflow(\"a\\x00b\").manual();\nfn run(contact, trigger) {}\n",
    )
    .map(|_| ())
    .unwrap_err();
    assert!(
        errors
            .iter()
            .any(|d| d.message.contains("cannot contain control characters")),
        "{errors:?}"
    );
    let report = check_script(
        &engine,
        "s.rhai",
        "segment(\"vip\\n\");\nfn matches(contact) { true }\n",
        None,
    );
    assert!(
        report
            .diagnostics
            .iter()
            .any(|d| d.message.contains("cannot contain control characters")),
        "{:?}",
        report.diagnostics
    );
}

#[test]
fn a_name_with_a_colon_or_an_at_sign_is_refused_because_reports_key_numbers_by_them() {
    let engine = build_engine(&Limits::default());
    let report = check_script(
        &engine,
        "workflows/w.rhai",
        "workflow(\"promo:b\").manual();\nfn run(contact, trigger) {}\n",
        None,
    );
    let h032: Vec<_> = report
        .diagnostics
        .iter()
        .filter(|d| d.code == "H032")
        .collect();
    assert_eq!(h032.len(), 1, "{:?}", report.diagnostics);
    assert!(h032[0].message.contains("\"promo:b\" has ':'"), "{h032:?}");
    let report = herald_dsl::check_broadcast(
        &engine,
        "broadcasts/b.rhai",
        "broadcast(\"news@dec\").channel(\"email\").template(\"t\");\n",
        None,
    );
    assert!(
        report.diagnostics.iter().any(|d| d.code == "H032"),
        "{:?}",
        report.diagnostics
    );
    let fine = check_script(
        &engine,
        "workflows/w.rhai",
        "workflow(\"promo-b.2026_dec\").manual();\nfn run(contact, trigger) {}\n",
        None,
    );
    assert!(!fine.diagnostics.iter().any(|d| d.code == "H032"));
}

/// A host that keeps the labels it is given, with the step each came before.
#[derive(Clone, Default)]
struct LabelHost {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Host for LabelHost {
    fn step(&mut self, call: StepCall, _line: Option<usize>) -> Result<Value, Interrupt> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("step {}", call.kind()));
        Ok(Value::Null)
    }
    fn contact_attr(&mut self, _key: &str) -> Value {
        Value::Null
    }
    fn log(&mut self, _message: &str) {}
    fn label(&mut self, name: &str) {
        self.seen.lock().unwrap().push(format!("label {name}"));
    }
}

#[test]
fn a_label_goes_to_the_host_before_the_step_it_names_and_a_bad_one_is_refused() {
    let source = "workflow(\"w\").manual();\nfn run(contact, trigger) {\n    label(\"welcome.v2\");\n    send(\"email\", \"welcome\");\n    wait(days(1));\n}\n";
    let host = LabelHost::default();
    let limits = Limits::default();
    let engine = build_engine(&limits);
    let wf = load_workflow(&engine, "wf.rhai", source).expect("loads");
    let (end, _) = with_host(Box::new(host.clone()), || {
        run_activation(&engine, &wf.ast, &json!({}), &limits)
    });
    assert_eq!(end, ActivationEnd::Completed);
    assert_eq!(
        *host.seen.lock().unwrap(),
        ["label welcome.v2", "step send", "step wait"]
    );
    // At run time, a computed label that cannot key numbers fails the run with the reason.
    let bad = "workflow(\"w\").manual();\nfn run(contact, trigger) {\n    label(trigger.name);\n    send(\"email\", \"welcome\");\n}\n";
    let wf = load_workflow(&engine, "wf.rhai", bad).expect("loads");
    let (end, _) = with_host(Box::new(LabelHost::default()), || {
        run_activation(&engine, &wf.ast, &json!({"name": "a/b"}), &limits)
    });
    match end {
        ActivationEnd::Failed { message, line, .. } => {
            assert!(message.contains("step label \"a/b\" has '/'"), "{message}");
            assert_eq!(line, Some(3));
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // `herald check` refuses a literal one (H033) and takes a good one.
    let report = check_script(
        &engine,
        "workflows/w.rhai",
        "workflow(\"w\").manual();\nfn run(contact, trigger) {\n    label(\"step:1\");\n    label(\"\");\n    label(\"ok_1.b-2\");\n}\n",
        None,
    );
    let h033: Vec<_> = report
        .diagnostics
        .iter()
        .filter(|d| d.code == "H033")
        .map(|d| d.message.clone())
        .collect();
    assert_eq!(
        h033,
        [
            "step label \"step:1\" has ':': use letters, digits, `_`, `-` or `.`",
            "a step label cannot be empty"
        ]
    );
}
