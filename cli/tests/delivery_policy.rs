//! One delivery policy with defer, not drop: quiet hours in the contact's timezone hold a
//! marketing SMS until they end, a frequency cap holds the fourth email until the window
//! allows it, a deferred send is skipped if the contact unsubscribes meanwhile, and
//! transactional messages pass both. The test clock drives every timer.

mod common;

use common::*;
use serde_json::{json, Value};

const POLICY: &str = "[topics.product]\nlabel = \"Product news\"\n\n\
    [[policy.caps]]\nchannels = [\"email\"]\nmax = 3\ndays = 7\n\n\
    [policy.quiet_hours]\nsms = { start = \"21:00\", end = \"09:00\" }\n\n";

fn project(workflow: &str) -> TestProject {
    let p = TestProject::new(POLICY);
    for name in ["welcome", "nudge", "tips"] {
        p.template(name, "---\ntopic: transactional\nsubject: x\n---\nx");
    }
    p.template(
        "promo",
        "---\ntopic: product\nsubject: New {{ vars.n }}\n---\nSomething new.",
    );
    p.template(
        "promo_sms",
        "---\ntopic: product\n---\nNew things at the shop.",
    );
    p.template(
        "code",
        "---\ntopic: transactional\n---\nYour code is 123456.",
    );
    p.workflow("w.rhai", workflow);
    p
}

/// 2026-12-08 03:00 in New York (UTC-5 in December).
const THREE_AM_NEW_YORK: i64 = 1_796_716_800_000;
const HOUR: i64 = 3_600_000;

fn run_of(c: &Client, contact: &str) -> String {
    eventually("the run starts", || {
        c.runs_of(contact)
            .first()
            .and_then(|r| r["id"].as_str().map(str::to_string))
    })
}

fn step(c: &Client, run: &str, i: usize) -> Value {
    c.run(run)["journal"][i].clone()
}

#[test]
fn an_sms_due_at_three_in_the_morning_local_goes_out_at_nine_and_a_transactional_one_at_once() {
    let p = project(
        "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) {\n    \
         send(\"sms\", \"code\");\n    let r = send(\"sms\", \"promo_sms\");\n    \
         update(#{ promo: r.status });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.set_clock(THREE_AM_NEW_YORK);
    c.identify(
        "ada",
        json!({"phone": "+15550100", "timezone": "America/New_York"}),
    );
    c.track("ada", "go", json!({}));
    let run = run_of(&c, "ada");
    let deferred = eventually("the promotion is deferred", || {
        let s = step(&c, &run, 1);
        (s["result"]["status"] == "deferred").then_some(s)
    });
    // The transactional code went out at once; the promotion waits for 09:00 local.
    let out = p.outbox("sms");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["template"], "code");
    assert_eq!(deferred["result"]["rule"], "quiet_hours");
    assert_eq!(deferred["result"]["until"], THREE_AM_NEW_YORK + 6 * HOUR);
    assert!(
        deferred["result"]["reason"]
            .as_str()
            .unwrap()
            .contains("America/New_York"),
        "{deferred}"
    );
    assert_eq!(c.run(&run)["status"], "waiting");
    // 08:59 local: still quiet.
    c.set_clock(THREE_AM_NEW_YORK + 6 * HOUR - 60_000);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(p.outbox("sms").len(), 1);
    // 09:00 local: it goes, and the run goes on with `sent`.
    c.set_clock(THREE_AM_NEW_YORK + 6 * HOUR);
    let done = c.run_reaches(&run, "completed", 3);
    let sent = &done["journal"][1]["result"];
    assert_eq!(sent["status"], "sent", "{done}");
    assert_eq!(
        sent["deferred"]["rule"], "quiet_hours",
        "the deferral stays on the step: {sent}"
    );
    let out = p.outbox("sms");
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["template"], "promo_sms");
    let (_, contact) = c.admin_get("/v1/contacts/ada");
    assert_eq!(contact["attributes"]["promo"], "sent");
}

#[test]
fn a_frequency_cap_defers_the_fourth_email_and_an_unsubscribe_meanwhile_skips_it() {
    let p = project(
        "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) {\n    \
         for n in 1..=4 { send(\"email\", \"promo\", #{ n: n }); }\n    \
         let r = send(\"email\", \"code\");\n    update(#{ code: r.status });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    let t0 = 1_796_716_800_000;
    c.set_clock(t0);
    c.identify("bo", json!({"email": "bo@example.com"}));
    c.track("bo", "go", json!({}));
    let run = run_of(&c, "bo");
    let fourth = eventually("the fourth email is deferred", || {
        let s = step(&c, &run, 3);
        (s["result"]["status"] == "deferred").then_some(s)
    });
    assert_eq!(fourth["result"]["rule"], "frequency_cap");
    assert_eq!(
        fourth["result"]["until"],
        t0 + 7 * 24 * HOUR,
        "when the first of the three leaves the 7-day window"
    );
    assert!(fourth["result"]["reason"]
        .as_str()
        .unwrap()
        .contains("3 marketing messages in 7 days"));
    assert_eq!(p.outbox("email").len(), 3);
    // The contact leaves the topic while the send waits.
    let (s, b) = c.admin_post(
        "/v1/contacts/bo/consent",
        json!({"topic": "product", "status": "unsubscribed"}),
    );
    assert_eq!(s, 200, "{b}");
    c.set_clock(t0 + 7 * 24 * HOUR + 1);
    let done = c.run_reaches(&run, "completed", 6);
    assert_eq!(done["journal"][3]["result"]["status"], "skipped", "{done}");
    assert_eq!(done["journal"][3]["result"]["rule"], "consent");
    // The transactional code after it is not held by the cap.
    assert_eq!(done["journal"][4]["result"]["status"], "sent");
    let out = p.outbox("email");
    assert_eq!(out.len(), 4, "three promotions and the code: {out:?}");
    assert_eq!(out[3]["template"], "code");

    // A second `go` starts nothing (re-entry once); the trace says why, and why the fourth
    // promotion never arrived.
    c.track("bo", "go", json!({"again": true}));
    let trace = eventually("the trace shows the refused start", || {
        let (s, b) = c.admin_get("/v1/contacts/bo/trace");
        assert_eq!(s, 200, "{b}");
        let t = b["trace"].as_array().unwrap().clone();
        t.iter().any(|e| e["kind"] == "not_started").then_some(t)
    });
    let summaries: Vec<&str> = trace
        .iter()
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    let find = |needle: &str| {
        summaries
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {summaries:#?}"))
    };
    let started = find("started by `go`");
    let capped = find("step 3: send `promo` on `email`: skipped by consent");
    let unsubscribed = find("unsubscribed `product`");
    let refused = find("did not start `w`: re-entry `once`");
    assert!(
        started < unsubscribed && unsubscribed < capped && capped < refused,
        "in time order: {summaries:#?}"
    );
    let ats: Vec<i64> = trace.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(ats.windows(2).all(|w| w[0] <= w[1]), "{ats:?}");
    // `herald why` prints the same trace.
    let out = std::process::Command::new(herald_bin())
        .args([
            "why",
            "bo",
            "--dir",
            p.path().to_str().unwrap(),
            "--url",
            &c.base,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("skipped by consent"), "{text}");
    assert!(text.contains("re-entry `once`"), "{text}");
}

#[test]
fn herald_check_refuses_a_cap_without_a_window_and_quiet_hours_on_an_unknown_channel() {
    let p = TestProject::new(
        "[[policy.caps]]\nmax = 3\n\n[policy.quiet_hours]\npush = { start = \"21:00\", end = \"9\" }\n",
    );
    let out = std::process::Command::new(herald_bin())
        .args(["check", p.path().to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("a cap needs its window"), "{text}");
    assert!(text.contains("channel `push`"), "{text}");
    assert!(text.contains("`9` is not a time of day"), "{text}");
}

#[test]
fn sends_decided_at_the_same_moment_are_counted_against_each_other_by_a_cap() {
    // Five journeys send a marketing email on the same event while the channel is paused:
    // when it resumes, the dispatcher takes the five at once. A cap of three lets exactly
    // three through, however the decisions interleave.
    let p = project("workflow(\"w\").on_event(\"never\");\nfn run(contact, trigger) {}\n");
    for k in 1..=5 {
        p.workflow(
            &format!("promo{k}.rhai"),
            &format!(
                "workflow(\"promo{k}\").on_event(\"go\");\nfn run(contact, trigger) {{\n    \
                 send(\"email\", \"promo\", #{{ n: {k} }});\n}}\n"
            ),
        );
    }
    let d = p.start();
    let c = Client::new(d.url());
    c.set_clock(1_796_716_800_000);
    c.identify("cy", json!({"email": "cy@example.com"}));
    let (s, b) = c.admin_post("/v1/channels/email/pause", json!({}));
    assert_eq!(s, 200, "{b}");
    c.track("cy", "go", json!({}));
    eventually("the five sends wait in the paused channel", || {
        let (_, b) = c.admin_get("/v1/channels");
        let queued: u64 = b["channels"]["email"]["queued"]
            .as_object()
            .map(|lanes| lanes.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        (queued == 5).then_some(())
    });
    let (s, b) = c.admin_post("/v1/channels/email/resume", json!({}));
    assert_eq!(s, 200, "{b}");
    let outcomes = eventually("every send is decided", || {
        let mut out = Vec::new();
        for r in c.runs_of("cy") {
            let s = step(&c, r["id"].as_str().unwrap(), 0);
            match s["result"]["status"].as_str() {
                Some(status @ ("sent" | "deferred")) => out.push(status.to_string()),
                _ => return None,
            }
        }
        (out.len() == 5).then_some(out)
    });
    let sent = outcomes.iter().filter(|s| *s == "sent").count();
    assert_eq!(sent, 3, "{outcomes:?}");
    assert_eq!(p.outbox("email").len(), 3);
}
