//! Broadcasts: files in `broadcasts/` that never send by being saved; scheduled through the
//! API or the CLI, pinned to the version they were given, sent once to a durable snapshot of
//! their audience under the one delivery policy; paused, resumed, cancelled; test sends to a
//! seed list; exactly once through SIGKILLs; clear errors for bad input.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

const TOPICS: &str = "[topics.newsletter]\nlabel = \"Newsletter\"\n\n\
    [topics.product]\nlabel = \"Product news\"\n\n";

const READERS: &str =
    "segment(\"readers\");\nfn matches(contact) {\n    contact.reads == true\n}\n";

const SPRING: &str = "// The spring newsletter.\n\
    broadcast(\"spring\")\n    .audience(\"readers\")\n    .channel(\"email\")\n    \
    .template(\"spring\")\n    .topic(\"newsletter\");\n";

fn project(extra: &str) -> TestProject {
    let p = TestProject::new(&format!("{TOPICS}{extra}"));
    for name in ["welcome", "nudge", "tips"] {
        p.template(name, "---\ntopic: transactional\nsubject: x\n---\nx");
    }
    p.template(
        "spring",
        "---\ntopic: newsletter\nsubject: Spring for {{ contact.first_name }}\n---\nSpring is here.",
    );
    p.template(
        "summer",
        "---\ntopic: newsletter\nsubject: Summer\n---\nSummer is here.",
    );
    p.template("launch", "---\ntopic: product\nsubject: Launch\n---\nNew.");
    p.segment("readers.rhai", READERS);
    broadcast(&p, "spring.rhai", SPRING);
    p
}

fn broadcast(p: &TestProject, file: &str, source: &str) {
    std::fs::create_dir_all(p.path().join("broadcasts")).unwrap();
    std::fs::write(p.path().join("broadcasts").join(file), source).unwrap();
}

/// Contacts: `n` readers (`r0`…) and two who are not.
fn people(c: &Client, n: usize) {
    for i in 0..n {
        c.identify(
            &format!("r{i}"),
            json!({"email": format!("r{i}@example.com"), "first_name": format!("R{i}"), "reads": true}),
        );
    }
    for i in 0..2 {
        c.identify(
            &format!("x{i}"),
            json!({"email": format!("x{i}@example.com"), "reads": false}),
        );
    }
}

fn detail(c: &Client, name: &str) -> Value {
    let (s, b) = c.admin_get(&format!("/v1/broadcasts/{name}"));
    assert_eq!(s, 200, "{b}");
    b
}

/// The broadcast's detail once it completed and every started message is settled.
fn settled(c: &Client, name: &str) -> Value {
    eventually("the broadcast completes and settles", || {
        let d = detail(c, name);
        let p = &d["progress"];
        let deferred: u64 = p["deferred"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        let open = p["queued"].as_u64().unwrap() + p["waiting"].as_u64().unwrap() + deferred;
        (d["status"] == "completed" && open == 0).then_some(d)
    })
}

fn recipients(p: &TestProject) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in p.outbox("email") {
        *out.entry(m["to"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

fn status_of_draft(c: &Client, name: &str) -> String {
    let (s, b) = c.admin_get("/v1/broadcasts");
    assert_eq!(s, 200, "{b}");
    b["broadcasts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("{name} listed: {b}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_scheduled_broadcast_reaches_each_member_once_skips_the_unsubscribed_and_saving_sends_nothing()
{
    let p = project("");
    let d = p.start_with(true);
    let c = Client::new(d.url());
    people(&c, 4);
    // r3 left the newsletter.
    let (s, b) = c.admin_post(
        "/v1/contacts/r3/consent",
        json!({"topic": "newsletter", "status": "unsubscribed"}),
    );
    assert_eq!(s, 200, "{b}");
    eventually("the segment has its four readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 4).then_some(())
    });

    // Saving another broadcast file while the daemon runs loads it and sends nothing.
    broadcast(
        &p,
        "summer.rhai",
        "broadcast(\"summer\").audience(\"readers\").channel(\"email\").template(\"summer\").topic(\"newsletter\");\n",
    );
    eventually("the new file is loaded", || {
        let (_, b) = c.admin_get("/v1/broadcasts");
        b["broadcasts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "summer")
            .then_some(())
    });
    assert_eq!(status_of_draft(&c, "spring"), "draft");
    assert_eq!(status_of_draft(&c, "summer"), "draft");
    let (s, b) = c.admin_get("/v1/broadcasts/spring");
    assert_eq!(s, 404, "a draft has no progress: {b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("draft"),
        "{b}"
    );

    // A preview for a real contact renders what it would send.
    let (s, b) = c.admin_get("/v1/broadcasts/spring/preview?contact=r1");
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["subject"], "Spring for R1");
    assert_eq!(b["to"], "r1@example.com");

    let (s, b) = c.admin_post("/v1/broadcasts/spring/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    let d1 = settled(&c, "spring");
    let progress = &d1["progress"];
    assert_eq!(progress["recipients"], 4, "{d1}");
    assert_eq!(progress["started"], 4, "{d1}");
    assert_eq!(progress["sent"], 3, "{d1}");
    assert_eq!(progress["failed"], 0, "{d1}");
    let skipped = progress["skipped"].as_object().unwrap();
    assert_eq!(skipped.len(), 1, "{d1}");
    let (why, n) = skipped.iter().next().unwrap();
    assert!(why.starts_with("consent"), "{why}");
    assert_eq!(n, 1);

    let got = recipients(&p);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["r0@example.com", "r1@example.com", "r2@example.com"],
        "the readers who did not leave the topic, not the others"
    );
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    let m = &p.outbox("email")[0];
    assert_eq!(m["workflow"], "spring");
    assert!(m["run"].as_str().unwrap().starts_with("bc-spring-"), "{m}");
    assert!(
        m["unsubscribe"]["url"].as_str().is_some(),
        "a marketing broadcast carries its unsubscribe link: {m}"
    );

    // Sent once: it cannot be scheduled again.
    let (s, b) = c.admin_post("/v1/broadcasts/spring/schedule", json!({}));
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sent once"),
        "{b}"
    );
    // A contact who joins later is not in the snapshot; nothing more is sent.
    c.identify("r9", json!({"email": "r9@example.com", "reads": true}));
    eventually("the segment has five", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 5).then_some(())
    });
    assert_eq!(p.outbox("email").len(), 3);
    assert_eq!(status_of_draft(&c, "summer"), "draft", "still never sent");
}

#[test]
fn a_scheduled_broadcast_is_pinned_to_its_version_and_can_be_paused_resumed_and_cancelled() {
    let p = project("");
    broadcast(
        &p,
        "launch.rhai",
        "broadcast(\"launch\").channel(\"email\").template(\"launch\").topic(\"product\");\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    people(&c, 3);
    c.set_clock(1_000_000);
    // Scheduled for later by the API's `at`.
    let (s, b) = c.admin_post(
        "/v1/broadcasts/spring/schedule",
        json!({"at": "1970-01-01T00:20:00Z"}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "scheduled");
    assert_eq!(b["start_at"], 1_200_000);
    // The file changes to another template after scheduling: the scheduled version stays.
    broadcast(
        &p,
        "spring.rhai",
        &SPRING.replace(".template(\"spring\")", ".template(\"summer\")"),
    );
    let (s, b) = c.admin_post("/v1/reload", json!({}));
    assert_eq!(s, 200, "{b}");
    // Paused before its time: nothing starts when the time comes.
    let (s, b) = c.admin_post("/v1/broadcasts/spring/pause", json!({}));
    assert_eq!((s, b["status"].as_str()), (200, Some("paused")), "{b}");
    c.set_clock(1_300_000);
    let (s, b) = c.admin_post("/v1/broadcasts/spring/pause", json!({}));
    assert_eq!(s, 422, "a paused broadcast cannot pause: {b}");
    // The API answers from the store, and the broadcaster looks at least every 200 ms: a
    // paused broadcast stays at zero recipients however long we look.
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(detail(&c, "spring")["record"]["recipients"], 0);
    }
    assert!(p.outbox("email").is_empty());
    let (s, b) = c.admin_post("/v1/broadcasts/spring/resume", json!({}));
    assert_eq!((s, b["status"].as_str()), (200, Some("scheduled")), "{b}");
    let done = settled(&c, "spring");
    assert_eq!(done["progress"]["sent"], 3, "{done}");
    let subjects: Vec<String> = p
        .outbox("email")
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(
        subjects.iter().all(|s| s.starts_with("Spring for")),
        "the pinned version's template, not the edited file's: {subjects:?}"
    );

    // Cancelled before it starts: nobody receives it; a cancelled one cannot resume.
    let (s, b) = c.admin_post(
        "/v1/broadcasts/launch/schedule",
        json!({"at": "1970-01-01T01:00:00Z"}),
    );
    assert_eq!(s, 200, "{b}");
    let (s, b) = c.admin_post("/v1/broadcasts/launch/cancel", json!({}));
    assert_eq!((s, b["status"].as_str()), (200, Some("cancelled")), "{b}");
    c.set_clock(4_000_000);
    let (s, b) = c.admin_post("/v1/broadcasts/launch/resume", json!({}));
    assert_eq!(s, 422, "{b}");
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(detail(&c, "launch")["record"]["recipients"], 0);
    assert_eq!(
        p.outbox("email").len(),
        3,
        "the cancelled broadcast sent nothing"
    );
}

#[test]
fn a_test_send_reaches_the_seed_list_only_and_bad_requests_are_refused() {
    let p = project("");
    broadcast(
        &p,
        "ab.rhai",
        "broadcast(\"ab\").audience(\"readers\").channel(\"email\")\n    \
         .arms(#{ a: \"spring\", b: \"summer\" }).topic(\"newsletter\");\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    people(&c, 2);
    let (s, b) = c.admin_post("/v1/broadcasts/spring/test", json!({"contacts": ["r1"]}));
    assert_eq!(s, 200, "{b}");
    let run = b["runs"][0].as_str().unwrap().to_string();
    c.run_reaches(&run, "completed", 1);
    let out = p.outbox("email");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["to"], "r1@example.com");
    assert_eq!(
        status_of_draft(&c, "spring"),
        "draft",
        "a test send does not schedule it"
    );

    // Arms: each contact's arm is recorded on its run and its preview shows the same one.
    let (s, b) = c.admin_post("/v1/broadcasts/ab/test", json!({"contacts": ["r0", "r1"]}));
    assert_eq!(s, 200, "{b}");
    for (i, run) in b["runs"].as_array().unwrap().iter().enumerate() {
        let r = c.run_reaches(run.as_str().unwrap(), "completed", 2);
        let arm = r["journal"][0]["result"].as_str().unwrap().to_string();
        let (_, preview) = c.admin_get(&format!("/v1/broadcasts/ab/preview?contact=r{i}"));
        assert_eq!(preview["arm"], arm.as_str(), "{preview}");
        let template = if arm == "a" { "spring" } else { "summer" };
        assert_eq!(r["journal"][1]["input"]["template"], template, "{r}");
    }

    let many: Vec<String> = (0..51).map(|i| format!("r{i}")).collect();
    let (s, b) = c.admin_post("/v1/broadcasts/spring/test", json!({"contacts": many}));
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 50"),
        "{b}"
    );
    let (s, b) = c.admin_post(
        "/v1/broadcasts/spring/test",
        json!({"contacts": ["nobody"]}),
    );
    assert_eq!(s, 404, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("nobody"),
        "{b}"
    );
    let (s, b) = c.admin_post("/v1/broadcasts/nope/schedule", json!({}));
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no broadcast named"),
        "{b}"
    );
    let (s, b) = c.admin_post("/v1/broadcasts/spring/schedule", json!({"at": "tomorrow"}));
    assert_eq!(s, 400, "{b}");
    let (s, _) = c.admin_post("/v1/broadcasts/spring/explode", json!({}));
    assert_eq!(s, 404);
    assert_eq!(p.outbox("email").len(), 3, "only the test sends");
}

/// `herald check --format json` on the project: (file, code, message) of each error.
fn check_errors(p: &TestProject) -> Vec<(String, String, String, u64)> {
    let out = std::process::Command::new(herald_bin())
        .args(["check", p.path().to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_string(),
                f["code"].as_str().unwrap().to_string(),
                f["message"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn herald_check_reports_a_missing_segment_an_unknown_topic_and_an_incomplete_broadcast_where_they_are(
) {
    let p = project("");
    broadcast(
        &p,
        "spring.rhai",
        &SPRING.replace("\"readers\"", "\"lapsed\""),
    );
    broadcast(
        &p,
        "bad_topic.rhai",
        "broadcast(\"bad_topic\").channel(\"email\").template(\"spring\").topic(\"gossip\");\n",
    );
    broadcast(
        &p,
        "mismatch.rhai",
        "broadcast(\"mismatch\").channel(\"email\").template(\"launch\").topic(\"newsletter\");\n",
    );
    broadcast(
        &p,
        "no_topic.rhai",
        "broadcast(\"no_topic\").channel(\"email\").template(\"spring\");\n",
    );
    broadcast(
        &p,
        "no_channel.rhai",
        "broadcast(\"no_channel\").template(\"spring\").topic(\"newsletter\");\n",
    );
    broadcast(
        &p,
        "workflow.rhai",
        "workflow(\"w2\").on_event(\"x\");\nfn run(contact, trigger) {}\n",
    );
    broadcast(
        &p,
        "undecided.rhai",
        "broadcast(\"undecided\").channel(\"email\").arms(#{ a: \"spring\", b: \"summer\" })\n    \
         .topic(\"newsletter\").test_share(20);\n",
    );
    broadcast(
        &p,
        "goalless.rhai",
        "broadcast(\"goalless\").channel(\"email\").arms(#{ a: \"spring\", b: \"summer\" })\n    \
         .topic(\"newsletter\").test_share(20).winner(\"converted\", hours(4));\n",
    );
    broadcast(
        &p,
        "share.rhai",
        "broadcast(\"share\").channel(\"email\").arms(#{ a: \"spring\", b: \"summer\" })\n    \
         .topic(\"newsletter\").test_share(100).winner(\"clicked\", hours(4));\n",
    );
    let errors = check_errors(&p);
    let find = |file: &str| {
        errors
            .iter()
            .filter(|e| e.0 == format!("broadcasts/{file}"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let e = find("spring.rhai");
    assert_eq!(e.len(), 1, "{errors:?}");
    assert_eq!(e[0].1, "H031");
    assert!(e[0].2.contains("no segment named \"lapsed\""), "{e:?}");
    assert_eq!(e[0].3, 3, "at the .audience line: {e:?}");
    let e = find("bad_topic.rhai");
    assert_eq!((e.len(), e[0].1.as_str()), (1, "L004"), "{errors:?}");
    let e = find("mismatch.rhai");
    assert!(
        e.iter()
            .any(|x| x.1 == "H031" && x.2.contains("topic `product`")),
        "{errors:?}"
    );
    let e = find("no_topic.rhai");
    assert!(
        e.iter()
            .any(|x| x.1 == "H031" && x.2.contains("names no topic")),
        "{errors:?}"
    );
    let e = find("no_channel.rhai");
    assert!(
        e.iter()
            .any(|x| x.1 == "H031" && x.2.contains("names no channel")),
        "{errors:?}"
    );
    let e = find("workflow.rhai");
    assert!(e.iter().any(|x| x.1 == "H030"), "{errors:?}");
    let e = find("undecided.rhai");
    assert!(
        e.iter()
            .any(|x| x.1 == "H031" && x.2.contains("needs `.winner(...)`")),
        "{errors:?}"
    );
    let e = find("goalless.rhai");
    assert!(
        e.iter()
            .any(|x| x.1 == "H031" && x.2.contains("needs the broadcast's `.goal(...)`")),
        "{errors:?}"
    );
    let e = find("share.rhai");
    assert!(
        e.iter().any(|x| x.2.contains("from 1 to 99; got 100")),
        "{errors:?}"
    );
    // The daemon refuses the project whole: nothing is sent from a broken broadcast.
    let out = std::process::Command::new(herald_bin())
        .args(["check", p.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_broadcast_killed_again_and_again_reaches_every_recipient_exactly_once() {
    const N: usize = 10_000;
    let p = project("");
    let toml = std::fs::read_to_string(p.path().join("herald.toml")).unwrap();
    std::fs::write(
        p.path().join("herald.toml"),
        toml.replacen(
            "path = \"out/email.jsonl\"",
            "path = \"out/email.jsonl\"\nidempotent = true",
            1,
        ),
    )
    .unwrap();
    let mut daemon = Process::start(p.path(), &[]);
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"type": "identify", "userId": format!("r{i}"),
                "traits": {"email": format!("r{i}@example.com"), "reads": true}})
            })
            .collect();
        let (s, b) = daemon
            .client
            .ingest("/v1/batch", &json!({ "batch": batch }).to_string());
        assert_eq!(s, 200, "{b}");
    }
    eventually("the segment has every reader", || {
        let (_, b) = daemon.client.admin_get("/v1/segments/readers");
        (b["size"] == N).then_some(())
    });
    let (s, b) = daemon
        .client
        .admin_post("/v1/broadcasts/spring/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    // Kill it at several points of the send: each time once more messages went out.
    let (mut kills, mut interrupted) = (0, 0);
    for target in [N / 10, N / 3, N * 2 / 3] {
        eventually("more messages go out", || {
            (p.outbox("email").len() >= target).then_some(())
        });
        daemon.kill9();
        kills += 1;
        interrupted += usize::from(p.outbox("email").len() < N);
        daemon = Process::start(p.path(), &[]);
    }
    let c = daemon.client.clone();
    let d = eventually("the broadcast completes and settles", || {
        let d = detail(&c, "spring");
        let p = &d["progress"];
        let open = p["queued"].as_u64().unwrap() + p["waiting"].as_u64().unwrap();
        (d["status"] == "completed" && open == 0).then_some(d)
    });
    assert_eq!(kills, 3);
    assert!(
        interrupted > 0,
        "at least one kill fell in the middle of the send"
    );
    let progress = &d["progress"];
    assert_eq!(progress["recipients"], N, "{d}");
    // An idempotent channel takes the ambiguous window's sends again with the same key:
    // each recipient's message is in the outbox exactly once.
    let got = recipients(&p);
    assert_eq!(got.len(), N, "every recipient");
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "nobody twice: {twice:?}");
    assert_eq!(progress["sent"], N, "{d}");
    // Read again (its settled pages from memory now): the same numbers.
    assert_eq!(detail(&c, "spring")["progress"], *progress);
}

/// `herald ARGS --dir PROJECT --url DAEMON`: (success, stdout, stderr).
fn herald_cli(p: &TestProject, c: &Client, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(herald_bin())
        .args(args)
        .args(["--dir", p.path().to_str().unwrap(), "--url", &c.base])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_broadcast_commands_drive_the_running_daemon() {
    let p = project("");
    let d = p.start();
    let c = Client::new(d.url());
    people(&c, 2);
    eventually("the segment has its two readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 2).then_some(())
    });
    let check = std::process::Command::new(herald_bin())
        .args(["check", p.path().to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains(", 1 broadcast(s)"), "{said}");
    let (ok, out, err) = herald_cli(&p, &c, &["broadcast", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("spring") && l.contains("draft")),
        "{out}"
    );
    let (ok, out, err) = herald_cli(
        &p,
        &c,
        &["broadcast", "preview", "spring", "--contact", "r0"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("Subject: Spring for R0"), "{out}");
    let (ok, out, err) = herald_cli(&p, &c, &["broadcast", "test", "spring", "--to", "r1"]);
    assert!(ok, "{err}");
    assert!(out.contains("started bc-spring-seed"), "{out}");
    let (ok, out, err) = herald_cli(&p, &c, &["broadcast", "schedule", "spring"]);
    assert!(ok, "{err}");
    assert!(out.contains("broadcast spring scheduled"), "{out}");
    settled(&c, "spring");
    let (ok, out, err) = herald_cli(&p, &c, &["broadcast", "show", "spring"]);
    assert!(ok, "{err}");
    assert!(out.contains("broadcast spring: completed"), "{out}");
    assert!(
        out.lines().any(|l| l.trim() == "sent       2"),
        "both readers: {out}"
    );
    // Bad input is a clear error and a failing exit status.
    let (ok, _, err) = herald_cli(&p, &c, &["broadcast", "schedule", "spring"]);
    assert!(!ok);
    assert!(err.contains("sent once"), "{err}");
    let (ok, _, err) = herald_cli(&p, &c, &["broadcast", "pause", "nope"]);
    assert!(!ok);
    assert!(err.contains("not scheduled"), "{err}");
}

#[test]
fn a_recipient_who_reaches_the_broadcasts_goal_converts() {
    let p = project("");
    broadcast(
        &p,
        "sale.rhai",
        "broadcast(\"sale\").audience(\"readers\").channel(\"email\").template(\"spring\")\n    \
         .topic(\"newsletter\").goal(\"order_completed\", days(3));\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    people(&c, 1);
    eventually("the segment has its reader", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 1).then_some(())
    });
    let (s, b) = c.admin_post("/v1/broadcasts/sale/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    settled(&c, "sale");
    let run = c.runs_of("r0")[0]["id"].as_str().unwrap().to_string();
    assert!(run.starts_with("bc-sale-"), "{run}");
    // No workflow of the project knows this event: only the scheduled broadcast's goal does.
    c.track("r0", "order_completed", json!({"revenue": 42}));
    c.run_reaches(&run, "converted", 1);
}

#[test]
fn a_broadcast_in_quiet_hours_shows_its_deferred_sends_and_delivers_them_when_they_end() {
    let p = project("[policy.quiet_hours]\nemail = { start = \"21:00\", end = \"09:00\" }\n\n");
    let d = p.start();
    let c = Client::new(d.url());
    // 2026-12-08 03:00 UTC; the contacts have no timezone, so UTC applies.
    let three_am = 1_796_698_800_000;
    c.set_clock(three_am);
    people(&c, 2);
    eventually("the segment has its two readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 2).then_some(())
    });
    let (s, b) = c.admin_post("/v1/broadcasts/spring/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    let held = eventually("both sends are deferred", || {
        let d = detail(&c, "spring");
        (d["progress"]["deferred"]["quiet_hours"] == 2).then_some(d)
    });
    assert_eq!(held["progress"]["sent"], 0, "{held}");
    assert!(p.outbox("email").is_empty());
    c.set_clock(three_am + 6 * 3_600_000);
    let done = settled(&c, "spring");
    assert_eq!(done["progress"]["sent"], 2, "{done}");
    assert_eq!(done["progress"]["deferred"], json!({}), "{done}");
    assert_eq!(p.outbox("email").len(), 2);
}

#[test]
fn seed_sends_are_not_held_by_quiet_hours_while_the_broadcast_itself_is() {
    let p = project("[policy.quiet_hours]\nemail = { start = \"21:00\", end = \"09:00\" }\n\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.set_clock(1_796_698_800_000); // 03:00 UTC
    people(&c, 1);
    let (s, b) = c.admin_post("/v1/broadcasts/spring/test", json!({"contacts": ["r0"]}));
    assert_eq!(s, 200, "{b}");
    let run = b["runs"][0].as_str().unwrap().to_string();
    let done = c.run_reaches(&run, "completed", 1);
    assert_eq!(done["journal"][0]["result"]["status"], "sent", "{done}");
    assert_eq!(
        p.outbox("email").len(),
        1,
        "the seed send went out in quiet hours"
    );
}

/// Two arms tested on half the readers; the other half waits for the winner.
const DUEL: &str = "broadcast(\"duel\").audience(\"readers\").channel(\"email\")\n    \
    .arms(#{ a: \"spring\", b: \"summer\" }).topic(\"newsletter\")\n    \
    .goal(\"order_completed\", days(3))\n    .test_share(50).winner(\"converted\", hours(2));\n";

/// Each arm's recipients in the outbox (arm `a` sends "Spring for …", `b` "Summer").
fn arms_received(p: &TestProject) -> BTreeMap<String, String> {
    p.outbox("email")
        .iter()
        .map(|m| {
            let subject = m["subject"].as_str().unwrap_or_default();
            let arm = if subject.starts_with("Spring") {
                "a"
            } else {
                "b"
            };
            (m["to"].as_str().unwrap().to_string(), arm.to_string())
        })
        .collect()
}

/// The broadcast is testing: every tester's message is settled, the rest held.
fn testing(c: &Client, name: &str) -> Value {
    eventually(
        "the testers' messages are sent and the rest is held",
        || {
            let d = detail(c, name);
            let p = &d["progress"];
            (d["status"] == "testing" && p["queued"] == 0 && p["waiting"] == 0).then_some(d)
        },
    )
}

#[test]
fn an_ab_test_sends_the_arms_to_its_share_and_the_winner_by_conversions_to_the_rest() {
    ab_test_by_conversions("");
}

/// The same decision from the runs themselves when there are no analytics counters.
#[test]
fn an_ab_test_without_analytics_is_decided_by_the_same_numbers() {
    ab_test_by_conversions("[analytics]\nenabled = false\n");
}

fn ab_test_by_conversions(extra: &str) {
    let p = project(extra);
    broadcast(&p, "duel.rhai", DUEL);
    let d = p.start();
    let c = Client::new(d.url());
    let t0 = 1_796_724_000_000; // 2026-12-08 10:00 UTC
    c.set_clock(t0);
    people(&c, 40);
    eventually("the segment has its readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 40).then_some(())
    });
    let (s, b) = c.admin_post("/v1/broadcasts/duel/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    let t = testing(&c, "duel");
    let (sent, held) = (
        t["progress"]["sent"].as_u64().unwrap(),
        t["progress"]["held"].as_u64().unwrap(),
    );
    assert_eq!(sent + held, 40, "{t}");
    assert!(sent > 0 && held > 0, "half-ish test, half-ish held: {t}");
    let testers = arms_received(&p);
    assert_eq!(testers.len() as u64, sent, "one message per tester");
    let b_testers: Vec<&String> = testers
        .iter()
        .filter(|(_, a)| *a == "b")
        .map(|(to, _)| to)
        .collect();
    let a_testers: Vec<&String> = testers
        .iter()
        .filter(|(_, a)| *a == "a")
        .map(|(to, _)| to)
        .collect();
    assert!(
        !a_testers.is_empty() && !b_testers.is_empty(),
        "both arms tested: {testers:?}"
    );

    // Every tester of arm b orders, one of arm a does.
    let user = |to: &str| to.split('@').next().unwrap().to_string();
    for to in &b_testers {
        c.track(&user(to), "order_completed", json!({"revenue": 10}));
    }
    c.track(
        &user(a_testers[0]),
        "order_completed",
        json!({"revenue": 10}),
    );
    let so_far = eventually("the conversions count for their arms", || {
        let d = detail(&c, "duel");
        let r = &d["test_results"];
        (r["b"]["reached"] == b_testers.len() && r["a"]["reached"] == 1).then_some(d)
    });
    assert_eq!(
        so_far["status"], "testing",
        "not decided before its time: {so_far}"
    );
    assert_eq!(
        p.outbox("email").len() as u64,
        sent,
        "the rest is still held"
    );

    // Two hours after the last tester started, the winner goes to the rest.
    c.advance(2 * 3_600_000 + 1);
    let done = settled(&c, "duel");
    let decision = &done["record"]["test"]["decision"];
    assert_eq!(decision["winner"], "b", "{done}");
    assert_eq!(decision["by"], "metric", "{done}");
    assert_eq!(decision["arms"]["b"]["sent"], b_testers.len(), "{done}");
    assert_eq!(decision["arms"]["b"]["reached"], b_testers.len(), "{done}");
    assert_eq!(decision["arms"]["a"]["sent"], a_testers.len(), "{done}");
    assert_eq!(decision["arms"]["a"]["reached"], 1, "{done}");
    assert_eq!(done["progress"]["sent"], 40, "{done}");
    assert_eq!(done["progress"]["held"], 0, "{done}");
    let all = arms_received(&p);
    assert_eq!(recipients(&p).values().max(), Some(&1), "each reader once");
    assert_eq!(all.len(), 40);
    for (to, arm) in &all {
        if !testers.contains_key(to) {
            assert_eq!(arm, "b", "{to} got the winner");
        }
    }
    // A tester's run took its arm; one of the rest took the winner, in the winner phase.
    let rest = all.keys().find(|to| !testers.contains_key(*to)).unwrap();
    let run = &c.runs_of(&user(rest))[0];
    let (_, r) = c.admin_get(&format!("/v1/runs/{}", run["id"].as_str().unwrap()));
    assert_eq!(r["journal"][0]["kind"], "variant", "{r}");
    assert_eq!(r["journal"][0]["result"], "b", "{r}");
}

#[test]
fn an_operator_decides_a_test_early_and_clients_cannot_forge_engagement() {
    let p = project("");
    broadcast(
        &p,
        "early.rhai",
        &DUEL
            .replace("duel", "early")
            .replace("\"converted\", hours(2)", "\"clicked\", days(7)"),
    );
    let d = p.start();
    let c = Client::new(d.url());
    people(&c, 20);
    eventually("the segment has its readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 20).then_some(())
    });
    let (ok, _, err) = herald_cli(&p, &c, &["broadcast", "decide", "early"]);
    assert!(!ok);
    assert!(err.contains("not scheduled"), "{err}");
    let (s, b) = c.admin_post("/v1/broadcasts/early/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    let t = testing(&c, "early");
    let testers = arms_received(&p);
    assert_eq!(
        testers.len() as u64,
        t["progress"]["sent"].as_u64().unwrap()
    );

    // A client with the public key cannot claim Herald's own engagement facts.
    let tester = testers
        .keys()
        .next()
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let run = c.runs_of(&tester)[0]["id"].as_str().unwrap().to_string();
    let forged = json!({"userId": tester, "event": "email_clicked",
        "messageId": format!("engagement:email:{run}:1:clicked"),
        "properties": {"run": run}});
    let (s, b) = c.try_ingest("/v1/track", &forged.to_string()).unwrap();
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("reserved_message_id"), "{b}");

    let (ok, _, err) = herald_cli(&p, &c, &["broadcast", "decide", "spring"]);
    assert!(!ok);
    assert!(err.contains("not scheduled"), "{err}");
    let (ok, _, err) = herald_cli(&p, &c, &["broadcast", "decide", "early", "c"]);
    assert!(!ok);
    assert!(err.contains("no arm \"c\""), "{err}");
    let (ok, out, err) = herald_cli(&p, &c, &["broadcast", "decide", "early", "a"]);
    assert!(ok, "{err}");
    assert!(out.contains("arm a wins"), "{out}");
    let done = settled(&c, "early");
    assert_eq!(
        done["record"]["test"]["decision"]["by"], "operator",
        "{done}"
    );
    assert_eq!(done["progress"]["sent"], 20, "{done}");
    for (to, arm) in arms_received(&p) {
        if !testers.contains_key(&to) {
            assert_eq!(arm, "a", "{to} got the operator's pick");
        }
    }
    let (ok, _, err) = herald_cli(&p, &c, &["broadcast", "decide", "early"]);
    assert!(!ok, "decided once");
    assert!(err.contains("is completed"), "{err}");
    let (ok, out, _) = herald_cli(&p, &c, &["broadcast", "show", "early"]);
    assert!(ok);
    assert!(out.contains("winner     a (decided by operator)"), "{out}");
}
