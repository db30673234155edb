//! The real `herald` process killed with SIGKILL at the dangerous points of a run, then
//! restarted on the same data: accepted events survive, timers fire, nothing is sent twice,
//! and the ambiguous window is reported as such.

mod common;

use common::*;
use serde_json::json;

const WF: &str = "workflow(\"welcome\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"email\", \"welcome\");\n    wait(days(3));\n    send(\"email\", \"tips\");\n}\n";

fn project(idempotent: bool) -> TestProject {
    let p = TestProject::new("");
    if idempotent {
        let toml = std::fs::read_to_string(p.path().join("herald.toml")).unwrap();
        let toml = toml.replacen(
            "path = \"out/email.jsonl\"",
            "path = \"out/email.jsonl\"\nidempotent = true",
            1,
        );
        std::fs::write(p.path().join("herald.toml"), toml).unwrap();
    }
    p.workflow("welcome.rhai", WF);
    p
}

/// Send the events that start a run; with a failpoint armed the process kills itself.
fn sign_up(c: &Client) {
    c.identify(
        "ada",
        json!({"email": "ada@example.com", "first_name": "Ada"}),
    );
    let batch: Vec<_> = (0..50).map(|i| json!({"type": "track", "userId": "ada", "event": "viewed", "properties": {"i": i}})).collect();
    let (s, _) = c.ingest("/v1/batch", &json!({"batch": batch}).to_string());
    assert_eq!(s, 200);
    // The event is durable before the engine sees it, so a failpoint may kill the process
    // before the 200 is written: a client then retries, and the restart must still have it.
    let signup = json!({"userId": "ada", "event": "signup", "messageId": "signup-1"}).to_string();
    if let Some((s, b)) = c.try_ingest("/v1/track", &signup) {
        assert_eq!(s, 200, "{b}");
    }
}

fn assert_events_kept(c: &Client) {
    let (s, contact) = c.admin_get("/v1/contacts/ada");
    assert_eq!(s, 200);
    assert_eq!(
        contact["recent_events"].as_array().unwrap().len(),
        50,
        "recent_events shows the newest 50"
    );
    assert_eq!(contact["recent_events"][0]["event"], "signup");
    assert_eq!(contact["attributes"]["email"], "ada@example.com");
}

fn crash_at(p: &TestProject, failpoint: &str) -> Process {
    let first = Process::start(p.path(), &[("HERALD_FAILPOINT", failpoint)]);
    sign_up(&first.client);
    let status = first.wait_dead();
    assert!(!status.success(), "the failpoint killed the process");
    Process::start(p.path(), &[])
}

#[test]
fn killed_before_the_intent_is_durable_the_send_happens_once_after_restart() {
    let p = project(false);
    let second = crash_at(&p, "before_intent");
    let c = &second.client;
    assert_events_kept(c);
    let run = c.only_run("ada");
    let run = c.run_reaches(run["id"].as_str().unwrap(), "waiting", 2);
    assert_eq!(run["journal"][0]["status"], "done");
    assert_eq!(p.outbox("email").len(), 1);
    c.advance(3 * DAY + 1000);
    c.run_reaches(run["id"].as_str().unwrap(), "completed", 3);
    let sent = p.outbox("email");
    assert_eq!(
        sent.iter()
            .map(|m| m["template"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["welcome", "tips"]
    );
}

#[test]
fn killed_between_intent_and_call_the_run_is_parked_as_ambiguous_and_an_operator_resolves_it() {
    let p = project(false);
    let second = crash_at(&p, "after_intent");
    let c = &second.client;
    assert_events_kept(c);
    let run = c.only_run("ada");
    let id = run["id"].as_str().unwrap().to_string();
    let r = c.run_reaches(&id, "parked", 1);
    assert_eq!(r["journal"][0]["status"], "ambiguous");
    assert!(
        r["parked_reason"]
            .as_str()
            .unwrap()
            .contains("ambiguous delivery at step 0"),
        "{r}"
    );
    assert!(p.outbox("email").is_empty(), "nothing is sent on a guess");
    assert!(c
        .get_text("/metrics")
        .contains("herald_sends_total{channel=\"email\",outcome=\"ambiguous\"} 1"));

    // The operator knows it never went out: send it now.
    let (s, b) = c.admin_post(
        &format!("/v1/runs/{id}/steps/0/resolve"),
        json!({"delivered": false}),
    );
    assert_eq!(s, 200, "{b}");
    c.run_reaches(&id, "waiting", 2);
    assert_eq!(p.outbox("email").len(), 1);
}

#[test]
fn killed_after_the_call_the_message_is_not_written_twice() {
    let p = project(false);
    let second = crash_at(&p, "after_send");
    let c = &second.client;
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    let r = c.run_reaches(&id, "parked", 1);
    assert_eq!(r["journal"][0]["status"], "ambiguous");
    assert_eq!(
        p.outbox("email").len(),
        1,
        "written once before the crash, never again"
    );

    // The operator confirms delivery; the run continues without sending again.
    let (s, _) = c.admin_post(
        &format!("/v1/runs/{id}/steps/0/resolve"),
        json!({"delivered": true}),
    );
    assert_eq!(s, 200);
    c.run_reaches(&id, "waiting", 2);
    c.advance(3 * DAY + 1000);
    c.run_reaches(&id, "completed", 3);
    assert_eq!(p.outbox("email").len(), 2);
}

#[test]
fn killed_after_the_provider_accepted_the_send_it_is_recorded_as_sent_not_ambiguous() {
    let p = project(false);
    let second = crash_at(&p, "after_answer");
    let c = &second.client;
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    let r = c.run_reaches(&id, "waiting", 2);
    assert_eq!(r["journal"][0]["status"], "done");
    assert_eq!(r["journal"][0]["result"]["channel"], "email");
    assert_eq!(
        p.outbox("email").len(),
        1,
        "written once before the crash, never again"
    );
    c.advance(3 * DAY + 1000);
    c.run_reaches(&id, "completed", 3);
    assert_eq!(p.outbox("email").len(), 2);
}

#[test]
fn an_idempotent_channel_is_retried_with_the_same_key_after_a_crash_in_the_window() {
    let p = project(true);
    let second = crash_at(&p, "after_send");
    let c = &second.client;
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    let r = c.run_reaches(&id, "waiting", 2);
    assert_eq!(r["journal"][0]["status"], "done");
    assert_eq!(
        r["journal"][0]["attempts"], 2,
        "retried once after the crash"
    );
    let sent = p.outbox("email");
    assert_eq!(
        sent.len(),
        1,
        "the retry carried the same key and was deduplicated"
    );
    assert_eq!(sent[0]["idempotency_key"], format!("{id}:0"));
    assert!(
        second.log_text().contains("ambiguous window"),
        "the retry is logged"
    );
}

#[test]
fn killed_while_waiting_the_timer_fires_after_restart_exactly_once() {
    let p = project(false);
    let first = Process::start(p.path(), &[]);
    sign_up(&first.client);
    let id = first.client.only_run("ada")["id"]
        .as_str()
        .unwrap()
        .to_string();
    first.client.run_reaches(&id, "waiting", 2);
    first.kill9();

    let second = Process::start(p.path(), &[]);
    let c = &second.client;
    assert_events_kept(c);
    let (_, status) = c.admin_get("/v1/status");
    assert_eq!(status["pending_timers"], 1);
    c.advance(3 * DAY + 1000);
    c.run_reaches(&id, "completed", 3);
    second.kill9();

    // A third start finds nothing left to do: no duplicate sends.
    let third = Process::start(p.path(), &[]);
    third.client.advance(30 * DAY);
    assert_eq!(third.client.run(&id)["status"], "completed");
    let sent = p.outbox("email");
    assert_eq!(
        sent.iter()
            .map(|m| m["template"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["welcome", "tips"]
    );
}

#[test]
fn sigterm_stops_gracefully_and_keeps_everything() {
    let p = project(false);
    let first = Process::start(p.path(), &[]);
    sign_up(&first.client);
    let id = first.client.only_run("ada")["id"]
        .as_str()
        .unwrap()
        .to_string();
    first.client.run_reaches(&id, "waiting", 2);
    // SAFETY: sending a signal to a child we own.
    unsafe {
        libc::kill(first.child.id() as i32, libc::SIGTERM);
    }
    let status = first.wait_dead();
    assert!(status.success(), "exit code 0 after SIGTERM");
    let second = Process::start(p.path(), &[]);
    assert_events_kept(&second.client);
    assert_eq!(second.client.run(&id)["status"], "waiting");
}

/// The gauge lines `/metrics` reports for runs, timers and contacts.
fn counts(c: &Client) -> Vec<String> {
    let text = c.get_text("/metrics");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("herald_runs{status=\"waiting\"}")
                || l.starts_with("herald_runs{status=\"completed\"}")
                || l.starts_with("herald_pending_timers ")
                || l.starts_with("herald_contacts ")
                || l.starts_with("herald_segment_size{segment=\"viewers\"}")
        })
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn counts_come_from_the_shutdown_checkpoint_after_sigterm_and_are_recounted_after_a_crash() {
    let p = project(false);
    p.segment(
        "viewers.rhai",
        "segment(\"viewers\");\nfn matches(contact) {\n    count(\"viewed\", days(365)) >= 1\n}\n",
    );
    let first = Process::start(p.path(), &[]);
    sign_up(&first.client);
    first.client.track("grace", "viewed", json!({}));
    let id = first.client.only_run("ada")["id"]
        .as_str()
        .unwrap()
        .to_string();
    first.client.run_reaches(&id, "waiting", 2);
    let expected = vec![
        "herald_contacts 2".to_string(),
        // The run's wait and each viewer's window re-evaluation.
        "herald_pending_timers 3".into(),
        "herald_runs{status=\"completed\"} 0".into(),
        "herald_runs{status=\"waiting\"} 1".into(),
        "herald_segment_size{segment=\"viewers\"} 2".into(),
    ];
    eventually("the first start counted", || {
        (counts(&first.client) == expected).then_some(())
    });
    // SAFETY: sending a signal to a child we own.
    unsafe {
        libc::kill(first.child.id() as i32, libc::SIGTERM);
    }
    assert!(first.wait_dead().success());

    // A clean start reads the checkpoint instead of scanning, and reports the same counts.
    let second = Process::start(p.path(), &[]);
    eventually("the checkpoint is used", || {
        second
            .log_text()
            .contains("restored from the shutdown checkpoint")
            .then_some(())
    });
    eventually("the checkpointed counts are served", || {
        (counts(&second.client) == expected).then_some(())
    });
    // Changes after the checkpoint was read keep the counts exact ...
    second.client.advance(3 * DAY + 1000);
    second.client.run_reaches(&id, "completed", 3);
    second.client.track("linus", "viewed", json!({}));
    let after = vec![
        "herald_contacts 3".to_string(),
        "herald_pending_timers 3".into(),
        "herald_runs{status=\"completed\"} 1".into(),
        "herald_runs{status=\"waiting\"} 0".into(),
        "herald_segment_size{segment=\"viewers\"} 3".into(),
    ];
    eventually("the counts follow the changes", || {
        (counts(&second.client) == after).then_some(())
    });
    // Workers only request a group commit; an accepted request waits for one, which makes
    // everything written before it durable. (An event no script uses changes no count.)
    second.client.track("linus", "noop", json!({}));
    second.kill9();

    // ... and a crash leaves no checkpoint behind: the next start counts the stored records.
    let third = Process::start(p.path(), &[]);
    eventually("the crash restart recounted", || {
        (counts(&third.client) == after).then_some(())
    });
    assert!(!third
        .log_text()
        .contains("restored from the shutdown checkpoint"));
}

#[test]
fn an_event_processed_again_after_a_crash_awards_its_points_once() {
    let p = TestProject::new("");
    std::fs::write(
        p.path().join("scoring.rhai"),
        "scoring().stage(\"lead\", 20);\nrule(\"demo\").on_event(\"demo_requested\").points(40);\n",
    )
    .unwrap();
    let first = Process::start(p.path(), &[("HERALD_FAILPOINT", "after_event")]);
    let demo = json!({"userId": "bo", "event": "demo_requested", "messageId": "demo-1"});
    if let Some((s, b)) = first.client.try_ingest("/v1/track", &demo.to_string()) {
        assert_eq!(s, 200, "{b}");
    }
    let status = first.wait_dead();
    assert!(
        !status.success(),
        "killed after scoring, before the inbox record went"
    );

    // The restart processes the queued event again; its points count once.
    let second = Process::start(p.path(), &[]);
    let c = &second.client;
    let score = eventually("scored after restart", || {
        let (s, b) = c.admin_get("/v1/contacts/bo/score");
        (s == 200 && b["score"].as_f64().is_some_and(|v| v > 0.0)).then_some(b)
    });
    assert_eq!(score["score"], json!(40.0), "{score}");
    assert_eq!(score["events"].as_array().unwrap().len(), 1, "{score}");
    let (_, contact) = c.admin_get("/v1/contacts/bo");
    assert_eq!(contact["attributes"]["stage"], "lead");
}

#[test]
fn a_retried_message_id_is_a_duplicate_after_a_crash_and_new_again_once_the_window_has_passed() {
    let p = TestProject::new("[server]\ndedupe_window_hours = 1\n");
    let body = json!({"batch": [
        {"type": "track", "userId": "kay", "event": "viewed", "messageId": "retry-1"},
        {"type": "track", "userId": "kay", "event": "viewed", "messageId": "retry-2"},
    ]})
    .to_string();
    let first = Process::start(p.path(), &[]);
    let (s, b) = first.client.ingest("/v1/batch", &body);
    assert_eq!((s, b["accepted"].clone()), (200, json!(2)), "{b}");
    first.kill9();

    // The SDK did not see the answer and retries after the crash: nothing is stored twice.
    let second = Process::start(p.path(), &[]);
    let c = &second.client;
    let (_, health) = c.admin_get("/healthz");
    assert_eq!(
        health["dedupe_window_ids"], 2,
        "rebuilt from the stored records"
    );
    let (s, b) = c.ingest("/v1/batch", &body);
    assert_eq!(
        (s, b["accepted"].clone(), b["duplicates"].clone()),
        (200, json!(0), json!(2))
    );
    let (_, contact) = c.admin_get("/v1/contacts/kay");
    assert_eq!(contact["recent_events"].as_array().unwrap().len(), 2);

    // An hour later the ids have left the window: the same ids are new messages.
    c.advance(3_600_000 + 60_001);
    let (_, b) = c.ingest("/v1/batch", &body);
    assert_eq!(
        (b["accepted"].clone(), b["duplicates"].clone()),
        (json!(2), json!(0))
    );
    let (_, contact) = c.admin_get("/v1/contacts/kay");
    assert_eq!(contact["recent_events"].as_array().unwrap().len(), 4);
    let (_, health) = c.admin_get("/healthz");
    assert_eq!(
        health["dedupe_window_ids"], 2,
        "only the new acceptances remain"
    );
}

#[test]
fn a_batch_request_cut_off_by_a_crash_is_kept_whole_or_not_at_all() {
    let p = TestProject::new("");
    // Anonymous browsing, then sign-up (a merge of the device into the known user).
    let c0 = Process::start(p.path(), &[]);
    let (s, b) = c0.client.ingest(
        "/v1/batch",
        &json!({"batch": [
            {"type": "identify", "userId": "ada", "traits": {"plan": "pro"}, "messageId": "m0"},
            {"type": "track", "anonymousId": "dev-1", "event": "viewed", "messageId": "m1"},
        ]})
        .to_string(),
    );
    assert_eq!(s, 200, "{b}");
    c0.kill9();

    let body = json!({"batch": [
        {"type": "track", "anonymousId": "dev-1", "event": "viewed", "messageId": "m2"},
        {"type": "identify", "userId": "ada", "anonymousId": "dev-1", "traits": {"name": "Ada"}, "messageId": "m3"},
        {"type": "track", "userId": "ada", "event": "signed_up", "messageId": "m4"},
        {"type": "identify", "userId": "ada", "anonymousId": "dev-2", "traits": {"city": "Paris"}, "messageId": "m5"},
    ]})
    .to_string();
    // Killed half-way through writing the request: the client sees no answer.
    let first = Process::start(p.path(), &[("HERALD_FAILPOINT", "ingest_mid_batch")]);
    let answer = first.client.try_ingest("/v1/batch", &body);
    assert!(answer.is_none(), "the request was cut off: {answer:?}");
    assert!(!first.wait_dead().success());

    let second = Process::start(p.path(), &[]);
    let c = &second.client;
    let (s, contact) = c.admin_get("/v1/contacts/ada");
    assert_eq!(s, 200, "{contact}");
    let events: Vec<&str> = contact["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    let request = ["m2", "m3", "m4", "m5"];
    let kept = request.iter().filter(|m| events.contains(m)).count();
    assert!(
        kept == 0 || kept == request.len(),
        "a request is all or nothing, found {kept} of its {} events: {contact}",
        request.len()
    );
    let merged = contact["anonymous_ids"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "dev-2");
    assert_eq!(
        merged,
        kept > 0,
        "its identity links go with its events: {contact}"
    );
    assert_eq!(
        contact["attributes"]["city"].is_string(),
        kept > 0,
        "and its traits: {contact}"
    );

    // The SDK retries: afterwards every event is stored exactly once.
    let (s, b) = c.ingest("/v1/batch", &body);
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["accepted"].as_u64(), b["duplicates"].as_u64()),
        if kept > 0 {
            (Some(0), Some(4))
        } else {
            (Some(4), Some(0))
        },
        "{b}"
    );
    let (_, contact) = c.admin_get("/v1/contacts/ada");
    let mut ids: Vec<&str> = contact["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4", "m5"], "{contact}");
    assert_eq!(contact["attributes"]["name"], "Ada");
    assert_eq!(contact["attributes"]["plan"], "pro");
}
