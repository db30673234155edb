//! Workflows over simulated time: waits, wait_for with and without the event, goals,
//! local-time waits, re-entry, retries with backoff, version pinning and failing scripts.

mod common;

use common::*;
use serde_json::json;

const JOURNEY: &str = r#"
workflow("welcome").on_event("newsletter_subscribed").goal("order_completed", days(14));

fn run(contact, trigger) {
    send("email", "welcome");
    let opened = wait_for("email_opened", #{ campaign: "welcome" }, days(2));
    if opened == () {
        send("sms", "nudge");
    } else {
        update(#{ opened_at: opened.timestamp });
    }
    wait(days(3));
    if contact.plan == "pro" {
        send("email", "tips");
    }
}
"#;

fn started(c: &Client, user: &str) -> String {
    c.identify(
        user,
        json!({"email": format!("{user}@example.com"), "phone": "+1555", "first_name": user}),
    );
    c.track(user, "newsletter_subscribed", json!({}));
    c.only_run(user)["id"].as_str().unwrap().to_string()
}

#[test]
fn wait_for_times_out_then_a_three_day_wait_sees_fresh_contact_data() {
    let p = TestProject::new("");
    p.workflow("welcome.rhai", JOURNEY);
    let d = p.start();
    let c = Client::new(d.url());
    let run = started(&c, "tim");
    let r = c.run_reaches(&run, "waiting", 2);
    assert_eq!(r["journal"][1]["kind"], "wait_for");

    // An event that does not match the filter does not count.
    c.track("tim", "email_opened", json!({"campaign": "other"}));
    c.advance(DAY);
    assert_eq!(c.run(&run)["journal"].as_array().unwrap().len(), 2);

    c.advance(DAY + 1);
    let r = c.run_reaches(&run, "waiting", 4);
    assert_eq!(r["journal"][1]["result"], json!(null), "timed out");
    assert_eq!(r["journal"][2]["name"], "sms:nudge");
    assert_eq!(p.outbox("sms").len(), 1);

    // The contact upgrades while the run waits: the script sees it after the wait.
    c.identify("tim", json!({"plan": "pro"}));
    c.advance(3 * DAY - 1000);
    assert_eq!(c.run(&run)["status"], "waiting");
    c.advance(1000);
    let r = c.run_reaches(&run, "completed", 5);
    assert_eq!(r["journal"][4]["name"], "email:tips");
    assert_eq!(p.outbox("email").len(), 2);
}

#[test]
fn wait_for_is_satisfied_by_a_later_matching_event() {
    let p = TestProject::new("");
    p.workflow("welcome.rhai", JOURNEY);
    let d = p.start();
    let c = Client::new(d.url());
    let run = started(&c, "eve");
    c.run_reaches(&run, "waiting", 2);
    c.advance(DAY);
    c.track("eve", "email_opened", json!({"campaign": "welcome"}));
    let r = c.run_reaches(&run, "waiting", 4);
    assert_eq!(r["journal"][1]["result"]["event"], "email_opened");
    assert_eq!(r["journal"][2]["kind"], "update");
    assert!(
        p.outbox("sms").is_empty(),
        "no nudge when the email was opened"
    );
    let (_, contact) = c.admin_get("/v1/contacts/eve");
    assert!(contact["attributes"]["opened_at"].is_i64());
}

#[test]
fn reaching_the_goal_ends_the_run_as_converted() {
    let p = TestProject::new("");
    p.workflow("welcome.rhai", JOURNEY);
    let d = p.start();
    let c = Client::new(d.url());
    let run = started(&c, "gus");
    c.run_reaches(&run, "waiting", 2);
    c.track("gus", "order_completed", json!({"total": 42}));
    let r = c.run_reaches(&run, "converted", 2);
    assert!(r["converted_at"].is_i64());
    let (_, status) = c.admin_get("/v1/status");
    assert_eq!(
        status["pending_timers"], 0,
        "the converted run's timer is gone"
    );
    c.advance(10 * DAY);
    assert!(p.outbox("sms").is_empty());
    assert!(c
        .get_text("/metrics")
        .contains("herald_conversions_total{workflow=\"welcome\"} 1"));
}

#[test]
fn a_backlog_limit_of_one_holds_ingest_back_without_losing_or_stalling_anything() {
    let p = TestProject::new("[engine]\nmax_backlog = 1\n");
    p.workflow("always.rhai", "workflow(\"always\").on_event(\"ping\").reentry(\"always\");\nfn run(contact, trigger) { send(\"sms\", \"nudge\"); }\n");
    let d = p.start();
    let c = Client::new(d.url());
    // Concurrent batches, far more events than the backlog holds.
    std::thread::scope(|s| {
        for t in 0..4 {
            let c = &c;
            s.spawn(move || {
                let batch: Vec<_> = (0..50)
                    .map(|i| json!({"type": "track", "userId": format!("u{t}"), "event": "ping", "messageId": format!("m{t}-{i}")}))
                    .collect();
                let (s, b) = c.ingest("/v1/batch", &json!({"batch": batch}).to_string());
                assert_eq!(s, 200, "{b}");
            });
        }
    });
    eventually("every event started its run", || {
        (p.outbox("sms").len() == 200).then_some(())
    });
    eventually("the backlog drained", || {
        c.get_text("/metrics")
            .contains("herald_engine_backlog 0\n")
            .then_some(())
    });
}

#[test]
fn reentry_once_starts_one_run_per_contact_and_always_starts_one_per_event() {
    let p = TestProject::new("");
    p.workflow("once.rhai", "workflow(\"once\").on_event(\"ping\");\nfn run(contact, trigger) { send(\"email\", \"tips\"); }\n");
    p.workflow("always.rhai", "workflow(\"always\").on_event(\"ping\").reentry(\"always\");\nfn run(contact, trigger) { send(\"sms\", \"nudge\"); }\n");
    p.workflow("cool.rhai", "workflow(\"cool\").on_event(\"ping\").reentry(days(1));\nfn run(contact, trigger) { wait(0); }\n");
    let d = p.start();
    let c = Client::new(d.url());
    for _ in 0..3 {
        c.track("r", "ping", json!({}));
    }
    c.advance(DAY);
    c.track("r", "ping", json!({}));
    let runs = eventually("all runs", || {
        let r = c.runs_of("r");
        (r.len() == 7 && r.iter().all(|x| x["status"] == "completed")).then_some(r)
    });
    let count = |w: &str| runs.iter().filter(|r| r["workflow"] == w).count();
    assert_eq!((count("once"), count("always"), count("cool")), (1, 4, 2));
}

#[test]
fn wait_until_a_local_time_follows_the_contacts_timezone() {
    let p = TestProject::new("");
    p.workflow("morning.rhai", "workflow(\"morning\").on_event(\"signup\");\nfn run(contact, trigger) {\n    wait_until(\"09:00\");\n    send(\"email\", \"tips\");\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    // 2026-03-01T12:00:00Z; 09:00 in Tokyo (UTC+9) is 00:00Z the next day.
    c.set_clock(1_772_366_400_000);
    c.identify(
        "tz",
        json!({"timezone": "Asia/Tokyo", "email": "tz@example.com"}),
    );
    c.track("tz", "signup", json!({}));
    let id = c.only_run("tz")["id"].as_str().unwrap().to_string();
    let run = c.run_reaches(&id, "waiting", 1);
    assert_eq!(run["wake_at"], json!(1_772_366_400_000i64 + 12 * 3_600_000));
}

#[test]
fn transient_channel_failures_retry_with_backoff_and_the_same_idempotency_key() {
    let hook = Recorder::start(vec![503, 503, 200]);
    let p = TestProject::new(&format!(
        "[channels.crm]\ntype = \"webhook\"\nurl = \"{}/hook\"\n\n[engine]\nbackoff_ms = 1000\n",
        hook.url
    ));
    p.workflow("crm.rhai", "workflow(\"crm\").on_event(\"mql\");\nfn run(contact, trigger) {\n    let r = action(\"crm\", \"create_task\", #{ owner: \"sales\" });\n    update(#{ task: r.provider_id });\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.track("lead", "mql", json!({}));
    let run = c.only_run("lead")["id"].as_str().unwrap().to_string();
    let r = c.run_reaches(&run, "waiting", 1);
    assert_eq!(r["journal"][0]["status"], "retrying");
    assert!(r["journal"][0]["error"].as_str().unwrap().contains("503"));
    for _ in 0..2 {
        c.advance(10_000);
        eventually("another attempt", || (hook.count() >= 2).then_some(()));
    }
    let r = c.run_reaches(&run, "completed", 2);
    assert_eq!(r["journal"][0]["attempts"], 3);
    assert_eq!(r["journal"][1]["input"]["task"], "prov-2");
    let reqs = hook.requests.lock().unwrap();
    assert_eq!(reqs.len(), 3);
    let keys: Vec<_> = reqs
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert!(keys.iter().all(|k| *k == format!("{run}:0")), "{keys:?}");
    let body: serde_json::Value = serde_json::from_str(&reqs[0].body).unwrap();
    assert_eq!(
        (
            body["operation"].as_str(),
            body["payload"]["owner"].as_str()
        ),
        (Some("create_task"), Some("sales"))
    );
}

#[test]
fn permanent_channel_failures_throw_and_scripts_may_catch_them() {
    let hook = Recorder::start(vec![400]);
    let p = TestProject::new(&format!(
        "[channels.crm]\ntype = \"webhook\"\nurl = \"{}/hook\"\n",
        hook.url
    ));
    p.workflow("crm.rhai", "workflow(\"crm\").on_event(\"mql\");\nfn run(contact, trigger) {\n    try {\n        action(\"crm\", \"create_task\", #{});\n    } catch (e) {\n        send(\"email\", \"tips\");\n    }\n    action(\"crm\", \"again\", #{});\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("p", json!({"email": "p@example.com"}));
    c.track("p", "mql", json!({}));
    let run = c.only_run("p")["id"].as_str().unwrap().to_string();
    let r = c.run_reaches(&run, "failed", 3);
    assert_eq!(r["journal"][0]["status"], "failed");
    assert_eq!(r["journal"][1]["name"], "email:tips");
    assert!(r["reason"].as_str().unwrap().contains("HTTP 400"), "{r}");
    assert_eq!(r["error_line"], 8);
    assert_eq!(hook.count(), 2, "permanent failures are not retried");
}

#[test]
fn runs_keep_their_script_version_and_new_runs_take_the_new_one() {
    let p = TestProject::new("");
    let v1 = "workflow(\"w\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    wait(days(1));\n    send(\"email\", \"welcome\");\n}\n";
    let v2 = "workflow(\"w\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    wait(days(1));\n    send(\"sms\", \"nudge\");\n}\n";
    p.workflow("w.rhai", v1);
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("v", json!({"email": "v@example.com", "phone": "+1"}));
    c.track("v", "go", json!({}));
    let old = c.only_run("v");
    c.run_reaches(old["id"].as_str().unwrap(), "waiting", 1);

    // A broken change is refused and the old version keeps serving.
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) { wait(; }\n",
    );
    let (s, b) = c.admin_post("/v1/reload", json!({}));
    assert_eq!(s, 422);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workflows/w.rhai:2:33"),
        "{b}"
    );
    let (_, status) = c.admin_get("/v1/status");
    assert!(status["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("syntax error"));

    p.workflow("w.rhai", v2);
    let (s, b) = c.admin_post("/v1/reload", json!({}));
    assert_eq!((s, b["changed"].clone()), (200, json!(["w"])), "{b}");
    c.track("v", "go", json!({}));
    let runs = eventually("two runs", || {
        let r = c.runs_of("v");
        (r.len() == 2).then_some(r)
    });
    let new = runs.iter().find(|r| r["id"] != old["id"]).unwrap().clone();
    assert_ne!(new["script_version"], old["script_version"]);
    c.run_reaches(new["id"].as_str().unwrap(), "waiting", 1);
    c.advance(DAY);
    c.run_reaches(old["id"].as_str().unwrap(), "completed", 2);
    c.run_reaches(new["id"].as_str().unwrap(), "completed", 2);
    assert_eq!(p.outbox("email").len(), 1, "the old run sent v1's email");
    assert_eq!(p.outbox("sms").len(), 1, "the new run sent v2's sms");
    assert!(c
        .get_text("/metrics")
        .contains("herald_reloads_total{result=\"error\"} 1"));
}

#[test]
fn scripts_that_loop_forever_or_throw_fail_their_run_and_the_daemon_keeps_serving() {
    let p = TestProject::new("");
    p.workflow("spin.rhai", "workflow(\"spin\").on_event(\"spin\");\nfn run(contact, trigger) {\n    let n = 0;\n    loop { n += 1; }\n}\n");
    p.workflow("boom.rhai", "workflow(\"boom\").on_event(\"boom\");\nfn run(contact, trigger) {\n    send(\"email\", \"tips\");\n    throw \"no plan for \" + contact.id;\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.track("s", "spin", json!({}));
    let spin = c.only_run("s")["id"].as_str().unwrap().to_string();
    let r = c.run_reaches(&spin, "failed", 0);
    assert!(
        r["reason"].as_str().unwrap().contains("operation limit"),
        "{r}"
    );

    c.identify("b", json!({"email": "b@example.com"}));
    c.track("b", "boom", json!({}));
    let boom = c.only_run("b")["id"].as_str().unwrap().to_string();
    let r = c.run_reaches(&boom, "failed", 1);
    assert!(
        r["reason"].as_str().unwrap().starts_with("no plan for c_"),
        "{r}"
    );
    assert_eq!(r["error_line"], 4);
    let (s, _) = c.admin_get("/healthz");
    assert_eq!(s, 200);
    assert!(c
        .get_text("/metrics")
        .contains("herald_runs{status=\"failed\"} 2"));
}

#[test]
fn a_journal_that_no_longer_matches_the_script_parks_the_run_instead_of_resending() {
    let p = TestProject::new("");
    p.workflow("w.rhai", "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) {\n    send(\"email\", \"welcome\");\n    wait(days(1));\n    send(\"email\", \"tips\");\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("n", json!({"email": "n@example.com"}));
    c.track("n", "go", json!({}));
    let id = c.only_run("n")["id"].as_str().unwrap().to_string();
    c.run_reaches(&id, "waiting", 2);
    // Simulate a journal written by different code: step 0 recorded another template.
    let store = &d.shared.engine.store;
    let mut step = store.journal(&id).unwrap()[0].clone();
    step.name = "email:promo".into();
    store.put_step(&id, &step).unwrap();
    c.advance(DAY);
    let r = c.run_reaches(&id, "parked", 2);
    assert!(
        r["parked_reason"]
            .as_str()
            .unwrap()
            .contains("non-determinism at step 0"),
        "{r}"
    );
    assert_eq!(p.outbox("email").len(), 1, "nothing was sent again");
}
