//! Analytics: every send, open, click and conversion is counted once, per broadcast arm,
//! workflow version, step and variant; reports equal what happened; the facts export
//! streams them with a cursor; a rebuild from the stored records equals the live numbers,
//! after a SIGKILL too; bad report requests get clear errors.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

const BROWSER: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari/537.36";

fn project() -> TestProject {
    let p = TestProject::new(
        "[server]\npublic_url = \"https://herald.example.com\"\n\n\
         [topics.newsletter]\nlabel = \"Newsletter\"\n\n",
    );
    for name in ["welcome", "nudge", "tips"] {
        p.template(name, "---\ntopic: transactional\nsubject: x\n---\nx");
    }
    for arm in ["a", "b"] {
        p.template(
            &format!("duo_{arm}"),
            &format!("---\ntopic: newsletter\nsubject: Arm {arm}\n---\nText {arm}."),
        );
        std::fs::write(
            p.path().join(format!("templates/duo_{arm}.html")),
            format!(
                "<html><body><p>Arm {arm}: <a href=\"https://shop.example/{arm}\" \
                 data-herald-link=\"cta\">Shop</a></p></body></html>"
            ),
        )
        .unwrap();
    }
    p.segment(
        "readers.rhai",
        "segment(\"readers\");\nfn matches(contact) {\n    contact.reads == true\n}\n",
    );
    std::fs::create_dir_all(p.path().join("broadcasts")).unwrap();
    std::fs::write(
        p.path().join("broadcasts/duo.rhai"),
        "broadcast(\"duo\").audience(\"readers\").channel(\"email\")\n    \
         .arms(#{ a: \"duo_a\", b: \"duo_b\" }).topic(\"newsletter\")\n    \
         .goal(\"order_completed\", days(3));\n",
    )
    .unwrap();
    p.workflow(
        "hello.rhai",
        "workflow(\"hello\").on_event(\"signup\");\nfn run(contact, trigger) {\n    \
         let tone = variant(\"tone\", [\"warm\", \"plain\"]);\n    send(\"email\", \"welcome\");\n    \
         send(\"email\", \"welcome\");\n}\n",
    );
    p
}

/// Contacts `PREFIX0`, `PREFIX1`, … (by `range`), each with an address at shop.example, send
/// `event`.
fn arrive(c: &Client, prefix: &str, range: std::ops::Range<usize>, event: &str) {
    for i in range {
        let user = format!("{prefix}{i}");
        c.identify(&user, json!({"email": format!("{user}@shop.example")}));
        c.track(&user, event, json!({}));
    }
}

/// GET a tracked link's path on the daemon with a user agent: the status.
fn fetch(c: &Client, url: &str, agent: &str) -> u16 {
    let path = url.strip_prefix("https://herald.example.com").unwrap();
    let r = ureq::AgentBuilder::new()
        .redirects(0)
        .build()
        .get(&format!("{}{path}", c.base))
        .set("user-agent", agent)
        .call();
    match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    }
}

fn link(html: &str, prefix: &str) -> String {
    let i = html
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix} in {html}"));
    let rest = &html[i..];
    rest[..rest.find('"').unwrap()].to_string()
}

fn counts(n: &Value) -> BTreeMap<String, u64> {
    n["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

#[derive(Default, Debug, PartialEq, Clone, Copy)]
struct Expect {
    sent: u64,
    opened: u64,
    machine_opened: u64,
    clicked: u64,
    converted: u64,
}

fn check(n: &Value, e: Expect, what: &str) {
    let c = counts(n);
    let got = Expect {
        sent: c["sent"],
        opened: c["opened"],
        machine_opened: c["machine_opened"],
        clicked: c["clicked"],
        converted: c["converted"],
    };
    assert_eq!(got, e, "{what}: {n}");
    let rate = n["rates"]["open_rate"].as_f64().unwrap();
    assert!(
        (rate - e.opened as f64 / e.sent as f64).abs() < 1e-9,
        "{what}: {n}"
    );
}

/// `herald analytics rebuild` through the API: the rebuilt numbers equal the live ones.
/// Returns what it found.
fn rebuilt_equal(c: &Client) -> Value {
    let (s, rebuilt) = c.admin_post("/v1/analytics/rebuild", json!({}));
    assert_eq!(s, 200, "{rebuilt}");
    assert_eq!(rebuilt["differences"], json!([]), "{rebuilt}");
    rebuilt
}

/// Run `herald ARGS` against the daemon of `p`; it succeeds; its standard output.
fn herald_cli(p: &TestProject, c: &Client, args: &[&str]) -> String {
    let out = std::process::Command::new(herald_bin())
        .args(args)
        .args(["--dir", p.path().to_str().unwrap(), "--url", &c.base])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The dashboard page at `path`, signed in with the admin token: its HTML.
fn dashboard_page(c: &Client, path: &str) -> String {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent
        .post(&format!("{}/dashboard/login", c.base))
        .set("content-type", "application/x-www-form-urlencoded")
        .send_string(&format!("token={TOKEN}"))
        .unwrap();
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    agent
        .get(&format!("{}{path}", c.base))
        .set("cookie", &cookie)
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

#[test]
fn a_broadcasts_report_counts_exactly_the_sends_opens_clicks_and_conversions_that_happened() {
    const N: usize = 60;
    let p = project();
    let d = p.start();
    let c = Client::new(d.url());
    let t0 = 1_796_724_000_000; // 2026-12-08 10:00 UTC
    c.set_clock(t0);
    for i in 0..N {
        c.identify(
            &format!("r{i}"),
            json!({"email": format!("r{i}@example.com"), "reads": true}),
        );
    }
    eventually("the segment has its readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == N).then_some(())
    });
    let (s, b) = c.admin_post("/v1/broadcasts/duo/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    eventually("every message is sent", || {
        let (_, d) = c.admin_get("/v1/broadcasts/duo");
        (d["status"] == "completed" && d["progress"]["sent"] == N).then_some(())
    });
    // A minute later (not a pre-fetch), in known proportions: every second reader opens,
    // every fourth clicks (twice), every fifth's mail scanner fetches the pixel, every third
    // orders.
    c.advance(60_000);
    let mut want: BTreeMap<String, Expect> = BTreeMap::new();
    for m in p.outbox("email") {
        let to = m["to"].as_str().unwrap();
        let i: usize = to[1..to.find('@').unwrap()].parse().unwrap();
        let arm = if m["subject"] == "Arm a" { "a" } else { "b" };
        let html = m["html"].as_str().unwrap();
        let pixel = link(html, "https://herald.example.com/o/");
        let click = link(html, "https://herald.example.com/c/");
        let e = want.entry(arm.to_string()).or_default();
        e.sent += 1;
        if i.is_multiple_of(5) {
            assert_eq!(fetch(&c, &pixel, "Barracuda Sentinel"), 200);
            e.machine_opened += 1;
        }
        if i.is_multiple_of(2) {
            assert_eq!(fetch(&c, &pixel, BROWSER), 200);
            e.opened += 1;
        }
        if i.is_multiple_of(4) {
            assert_eq!(fetch(&c, &click, BROWSER), 302);
            assert_eq!(fetch(&c, &click, BROWSER), 302);
            e.clicked += 1;
        }
        if i.is_multiple_of(3) {
            c.track(&format!("r{i}"), "order_completed", json!({"revenue": 5}));
            e.converted += 1;
        }
    }
    assert_eq!(want.len(), 2, "both arms sent: {want:?}");
    let total = want.values().fold(Expect::default(), |t, e| Expect {
        sent: t.sent + e.sent,
        opened: t.opened + e.opened,
        machine_opened: t.machine_opened + e.machine_opened,
        clicked: t.clicked + e.clicked,
        converted: t.converted + e.converted,
    });
    let report = eventually("every conversion is counted", || {
        let (s, r) = c.admin_get("/v1/reports/broadcasts/duo?series=sent");
        assert_eq!(s, 200, "{r}");
        (r["totals"]["counts"]["converted"] == total.converted).then_some(r)
    });
    check(&report["totals"], total, "totals");
    for (arm, e) in &want {
        check(&report["arms"][arm], *e, arm);
    }
    assert_eq!(
        report["totals"]["counts"]["clicks"], total.clicked,
        "a second click of a link is the same fact"
    );
    assert_eq!(
        report["series"]["hourly"],
        json!([{"hour": t0, "count": N}]),
        "every send in the hour it happened"
    );
    // Each order carried 5 USD of revenue.
    assert_eq!(
        report["totals"]["revenue"]["USD"].as_f64(),
        Some(5.0 * total.converted as f64),
        "{report}"
    );
    // This hour against the one before it.
    let (_, hour) = c.admin_get(&format!(
        "/v1/reports/broadcasts/duo?from={t0}&to={}",
        t0 + 3_600_000
    ));
    assert_eq!(hour["totals"]["counts"]["sent"], N, "{hour}");
    assert_eq!(hour["previous"]["totals"]["counts"]["sent"], 0, "{hour}");
    assert_eq!(hour["previous"]["period"]["from"], t0 - 3_600_000, "{hour}");
    // The channel and the recipients' domain see the same sends.
    let (_, domains) = c.admin_get("/v1/reports/domains");
    assert_eq!(
        domains["rows"]["example.com"]["counts"]["sent"], N,
        "{domains}"
    );
    // An empty period: zeros, not an error.
    let (s, empty) =
        c.admin_get("/v1/reports/broadcasts/duo?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z");
    assert_eq!(s, 200, "{empty}");
    assert_eq!(empty["totals"]["counts"]["sent"], 0, "{empty}");
    assert_eq!(empty["totals"]["rates"]["open_rate"], 0.0, "{empty}");

    // The facts export: every message and engagement fact once, then nothing after the
    // cursor. Each recipient's send, then the opens, clicks and conversions (the runs' starts
    // are counted, not exported; a broadcast has no funnel).
    let exported =
        (total.sent + total.opened + total.machine_opened + total.clicked + total.converted)
            as usize;
    let (status, next, lines) = export(&c, "0");
    assert_eq!(status, 200);
    assert_eq!(lines.len(), exported, "{lines:?}");
    assert!(lines.iter().all(|l| !l.contains("\"kind\":\"started\"")));
    // Rebuilt, each recipient's start is a fact too.
    let facts = exported + total.sent as usize;
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["broadcast"], "duo", "{first}");
    assert!(first["contact"].as_str().unwrap().len() > 1, "{first}");
    let (_, again, more) = export(&c, &next);
    assert!(more.is_empty(), "{more:?}");
    assert_eq!(again, next);
    let (status, _, _) = export(&c, "yesterday");
    assert_eq!(status, 400, "a malformed cursor");

    // Rebuilt from the journals, timelines and runs: the same numbers.
    let r = rebuilt_equal(&c);
    assert_eq!(r["facts"], facts, "{r}");

    // The CLI prints the same rows.
    let out = std::process::Command::new(herald_bin())
        .args(["report", "broadcast", "duo", "--csv"])
        .args(["--dir", p.path().to_str().unwrap(), "--url", &c.base])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    let row = csv
        .lines()
        .find(|l| l.starts_with("arm,a,"))
        .unwrap_or_else(|| panic!("{csv}"));
    assert!(
        row.starts_with(&format!("arm,a,{},", want["a"].sent)),
        "{row}"
    );
}

/// GET the facts export after `cursor`: (status, next cursor, lines).
fn export(c: &Client, cursor: &str) -> (u16, String, Vec<String>) {
    let r = ureq::get(&format!("{}/v1/export/facts?after={cursor}", c.base))
        .set("authorization", &format!("Bearer {TOKEN}"))
        .call();
    match r {
        Ok(r) => {
            let next = r.header("x-herald-next-cursor").unwrap_or("").to_string();
            let body = r.into_string().unwrap();
            (200, next, body.lines().map(str::to_string).collect())
        }
        Err(ureq::Error::Status(s, _)) => (s, String::new(), Vec::new()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_workflows_report_follows_steps_by_stable_key_and_variants_and_refuses_unknown_names() {
    let p = project();
    let d = p.start();
    let c = Client::new(d.url());
    arrive(&c, "w", 0..10, "signup");
    let r = eventually("every run sent both messages", || {
        let (s, r) = c.admin_get("/v1/reports/workflows/hello");
        assert_eq!(s, 200, "{r}");
        (r["totals"]["counts"]["sent"] == 20).then_some(r)
    });
    let steps = r["steps"].as_object().unwrap();
    let keys: Vec<&String> = steps.keys().collect();
    assert_eq!(keys.len(), 3, "{r}");
    assert!(keys[0].ends_with(":send/email/welcome#1"), "{keys:?}");
    assert!(keys[1].ends_with(":send/email/welcome#2"), "{keys:?}");
    assert!(keys[2].ends_with(":variant/tone#1"), "{keys:?}");
    for (k, n) in steps {
        let sends = if k.contains(":send/") { 10 } else { 0 };
        assert_eq!(n["counts"]["sent"], sends, "{r}");
        assert_eq!(n["counts"]["reached"], 10, "{r}");
    }
    let variants = r["variants"].as_object().unwrap();
    let by_arm: u64 = variants
        .iter()
        .filter(|(k, _)| k.starts_with("tone:"))
        .map(|(_, n)| n["counts"]["sent"].as_u64().unwrap())
        .sum();
    assert_eq!(by_arm, 20, "every send counted under its run's arm: {r}");
    assert_eq!(r["versions"].as_object().unwrap().len(), 1, "{r}");
    // The same counters for Prometheus, per workflow and channel.
    let metrics = ureq::get(&format!("{}/metrics", c.base))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics
            .contains("herald_messages_total{kind=\"workflow\",name=\"hello\",metric=\"sent\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("herald_messages_total{kind=\"channel\",name=\"email\",metric=\"sent\"} 20"),
        "{metrics}"
    );

    let (s, x) = c.admin_get("/v1/reports/workflows/hello/experiments/tone?metric=opened");
    assert_eq!(s, 200, "{x}");
    let sent = trials(&x);
    assert_eq!(sent, 20, "{x}");
    assert_eq!(
        x["analysis"]["winner"],
        Value::Null,
        "no opens, no winner: {x}"
    );
    // Conversions are per run: the trials are the runs each arm was given (ten), not the
    // messages (twenty).
    let (s, x) = c.admin_get("/v1/reports/workflows/hello/experiments/tone?metric=converted");
    assert_eq!(s, 200, "{x}");
    assert_eq!(x["trials"], "runs", "{x}");
    let runs = trials(&x);
    assert_eq!(runs, 10, "{x}");
    let (s, b) = c.admin_get("/v1/reports/workflows/hello/experiments/mood");
    assert_eq!(s, 404, "{b}");
    let (s, b) = c.admin_get("/v1/reports/workflows/nope");
    assert_eq!(s, 404, "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no workflow named \"nope\""));
    let (s, b) = c.admin_get("/v1/reports/broadcasts/nope");
    assert_eq!(s, 404, "{b}");
    let (s, b) = c.admin_get("/v1/reports/workflows/hello?series=glances");
    assert_eq!(s, 400, "{b}");
    let (s, b) = c.admin_get("/v1/reports/workflows/hello?from=tomorrow");
    assert_eq!(s, 400, "{b}");
}

#[test]
fn the_rebuilt_numbers_equal_the_live_ones_after_a_sigkill_in_the_middle_of_sending() {
    const N: usize = 300;
    let p = project();
    // The outbox skips a message it already holds, as an idempotent provider does.
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
    let batch: Vec<Value> = (0..N)
        .flat_map(|i| {
            [
                json!({"type": "identify", "userId": format!("k{i}"),
                    "traits": {"email": format!("k{i}@example.org")}}),
                json!({"type": "track", "userId": format!("k{i}"), "event": "signup"}),
            ]
        })
        .collect();
    for chunk in batch.chunks(200) {
        let (s, b) = daemon
            .client
            .ingest("/v1/batch", &json!({ "batch": chunk }).to_string());
        assert_eq!(s, 200, "{b}");
    }
    // Killed while the runs send.
    eventually("some messages are out", || {
        (p.outbox("email").len() > 10).then_some(())
    });
    daemon.kill9();
    daemon = Process::start(p.path(), &[]);
    let c = &daemon.client;
    let r = eventually("every run sent both messages and completed", || {
        let (s, r) = c.admin_get("/v1/reports/workflows/hello");
        assert_eq!(s, 200, "{r}");
        (r["totals"]["counts"]["sent"] == 2 * N && r["totals"]["counts"]["completed"] == N)
            .then_some(r)
    });
    assert_eq!(r["totals"]["counts"]["failed"], 0, "{r}");
    let rebuilt = rebuilt_equal(c);
    assert_eq!(
        rebuilt["facts"],
        5 * N,
        "{rebuilt}: each run started, took its variant, sent two and completed"
    );
    let text = herald_cli(&p, c, &["analytics", "rebuild"]);
    assert!(
        text.contains("the live counters equal the rebuilt ones"),
        "{text}"
    );
}

#[test]
fn with_analytics_off_nothing_is_counted_and_reports_are_zeros() {
    let p = project();
    let toml = std::fs::read_to_string(p.path().join("herald.toml")).unwrap();
    std::fs::write(
        p.path().join("herald.toml"),
        format!("{toml}\n[analytics]\nenabled = false\n"),
    )
    .unwrap();
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("z", json!({"email": "z@example.com"}));
    c.track("z", "signup", json!({}));
    eventually("both messages are out", || {
        (p.outbox("email").len() == 2).then_some(())
    });
    let (s, r) = c.admin_get("/v1/reports/workflows/hello");
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["totals"]["counts"]["sent"], 0, "{r}");
    let (_, _, lines) = export(&c, "0");
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn a_tested_broadcast_is_decided_by_the_sequential_test_and_its_experiment_report_has_the_numbers()
{
    const N: usize = 800;
    let p = project();
    std::fs::write(
        p.path().join("broadcasts/trial.rhai"),
        "broadcast(\"trial\").audience(\"readers\").channel(\"email\")\n    \
         .arms(#{ a: \"duo_a\", b: \"duo_b\" }).topic(\"newsletter\")\n    \
         .goal(\"order_completed\", days(3))\n    \
         .test_share(50).winner(\"converted\", days(2));\n",
    )
    .unwrap();
    let d = p.start();
    let c = Client::new(d.url());
    c.set_clock(1_796_724_000_000);
    let people: Vec<Value> = (0..N)
        .map(|i| {
            json!({"type": "identify", "userId": format!("t{i}"),
                "traits": {"email": format!("t{i}@example.com"), "reads": true}})
        })
        .collect();
    for chunk in people.chunks(200) {
        let (s, b) = c.ingest("/v1/batch", &json!({ "batch": chunk }).to_string());
        assert_eq!(s, 200, "{b}");
    }
    eventually("the segment has its readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == N).then_some(())
    });
    let (s, b) = c.admin_post("/v1/broadcasts/trial/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    eventually("the testers' messages are sent", || {
        let (_, d) = c.admin_get("/v1/broadcasts/trial");
        let p = &d["progress"];
        (d["status"] == "testing" && p["queued"] == 0 && p["waiting"] == 0).then_some(())
    });
    // Three in five of arm b's testers order, one in five of arm a's.
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut orders = Vec::new();
    for m in p.outbox("email") {
        let to = m["to"].as_str().unwrap();
        let i: usize = to[1..to.find('@').unwrap()].parse().unwrap();
        let arm = if m["subject"] == "Arm a" { "a" } else { "b" };
        let e = want.entry(arm.to_string()).or_default();
        e.0 += 1;
        let buys = if arm == "b" {
            i % 5 < 3
        } else {
            i.is_multiple_of(5)
        };
        if buys {
            e.1 += 1;
            orders.push(
                json!({"type": "track", "userId": format!("t{i}"), "event": "order_completed"}),
            );
        }
    }
    let testers: u64 = want.values().map(|e| e.0).sum();
    for chunk in orders.chunks(200) {
        let (s, b) = c.ingest("/v1/batch", &json!({ "batch": chunk }).to_string());
        assert_eq!(s, 200, "{b}");
    }
    // Long before its two days, the sequential test decides, and the rest get arm b.
    let done = eventually("the winner reaches the rest", || {
        let (_, d) = c.admin_get("/v1/broadcasts/trial");
        (d["status"] == "completed" && d["progress"]["sent"] == N).then_some(d)
    });
    let decision = &done["record"]["test"]["decision"];
    assert_eq!(decision["winner"], "b", "{done}");
    assert_eq!(decision["by"], "sequential test", "{done}");
    let (s, x) = c.admin_get("/v1/reports/broadcasts/trial/experiment");
    assert_eq!(s, 200, "{x}");
    assert_eq!(x["metric"], "converted", "the test's own metric: {x}");
    let arms = x["analysis"]["arms"].as_array().unwrap();
    assert_eq!(arms[0]["arm"], "a", "the control first: {x}");
    let (na, xa) = want["a"];
    let (nb, xb) = want["b"];
    assert_eq!(
        (arms[0]["sent"].as_u64(), arms[0]["reached"].as_u64()),
        (Some(na), Some(xa)),
        "{x}"
    );
    assert_eq!(
        (arms[1]["sent"].as_u64(), arms[1]["reached"].as_u64()),
        (Some(nb), Some(xb)),
        "{x}"
    );
    use herald_runtime::analytics::experiments as stats;
    let p_beat = arms[1]["probability_to_beat_control"].as_f64().unwrap();
    assert!(
        (p_beat - stats::probability_b_beats_a(xa, na, xb, nb)).abs() < 1e-12,
        "{x}"
    );
    assert!(p_beat > 0.999, "{x}");
    let interval: Vec<f64> = arms[1]["interval"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(interval, stats::wilson(xb, nb).to_vec(), "{x}");
    assert!(arms[1]["p_value"].as_f64().unwrap() <= 0.05, "{x}");
    let rest_b = p
        .outbox("email")
        .iter()
        .filter(|m| m["subject"] == "Arm b")
        .count() as u64;
    assert_eq!(
        rest_b,
        nb + (N as u64 - testers),
        "every non-tester received the winner"
    );
    let (_, report) = c.admin_get("/v1/reports/broadcasts/trial");
    assert_eq!(
        report["rest"]["counts"]["sent"],
        N as u64 - testers,
        "{report}"
    );
    assert_eq!(report["totals"]["counts"]["sent"], N, "{report}");
    let text = herald_cli(&p, &c, &["report", "experiment", "trial"]);
    assert!(text.contains("the sequential test picks arm b"), "{text}");
    assert!(
        text.contains("the broadcast sent arm b to the rest (decided by sequential test)"),
        "{text}"
    );
    let (s, b) = c.admin_get("/v1/reports/broadcasts/trial/experiment?metric=glances");
    assert_eq!(s, 400, "{b}");
    let (s, b) = c.admin_get("/v1/reports/broadcasts/trial/experiment?control=z");
    assert_eq!(s, 400, "{b}");
    let (s, b) = c.admin_get("/v1/reports/broadcasts/duo/experiment");
    assert_eq!(
        s, 200,
        "an untested broadcast with arms is an experiment too: {b}"
    );
}

#[test]
fn a_holdout_group_sends_nothing_still_converts_and_gives_the_journeys_lift() {
    const N: usize = 80;
    let p = project();
    p.workflow(
        "promo.rhai",
        "workflow(\"promo\").on_event(\"joined\").holdout(25).goal(\"bought\", days(7));\n\
         fn run(contact, trigger) {\n    send(\"email\", \"duo_a\");\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    let batch: Vec<Value> = (0..N)
        .flat_map(|i| {
            [
                json!({"type": "identify", "userId": format!("h{i}"),
                    "traits": {"email": format!("h{i}@example.net")}}),
                json!({"type": "track", "userId": format!("h{i}"), "event": "joined"}),
            ]
        })
        .collect();
    let (s, b) = c.ingest("/v1/batch", &json!({ "batch": batch }).to_string());
    assert_eq!(s, 200, "{b}");
    let report = eventually("every run decided its send", || {
        let (_, r) = c.admin_get("/v1/reports/workflows/promo");
        let held = r["holdout"]["totals"]["counts"]["held_out"]
            .as_u64()
            .unwrap_or(0);
        (r["totals"]["counts"]["sent"].as_u64().unwrap_or(0) + held == N as u64).then_some(r)
    });
    let held = report["holdout"]["totals"]["counts"]["held_out"]
        .as_u64()
        .unwrap();
    assert!(
        held > 0 && held < N as u64 / 2,
        "about a quarter held out: {report}"
    );
    assert_eq!(
        p.outbox("email").len() as u64,
        N as u64 - held,
        "the holdout receives nothing"
    );
    // Everyone in the holdout buys; one in two of the others.
    let mut held_out = Vec::new();
    for i in 0..N {
        let user = format!("h{i}");
        let run = &c.runs_of(&user)[0];
        let (_, r) = c.admin_get(&format!("/v1/runs/{}", run["id"].as_str().unwrap()));
        if r["journal"][0]["result"]["rule"] == "holdout" {
            held_out.push(i);
        }
    }
    assert_eq!(held_out.len() as u64, held);
    let mut treated_buys = 0;
    for i in 0..N {
        let holdout = held_out.contains(&i);
        if holdout || i % 2 == 0 {
            c.track(&format!("h{i}"), "bought", json!({}));
            treated_buys += u64::from(!holdout);
        }
    }
    let r = eventually("the conversions are counted", || {
        let (_, r) = c.admin_get("/v1/reports/workflows/promo");
        let total = r["totals"]["counts"]["converted"].as_u64().unwrap_or(0)
            + r["holdout"]["totals"]["counts"]["converted"]
                .as_u64()
                .unwrap_or(0);
        (total == held + treated_buys).then_some(r)
    });
    assert_eq!(r["holdout"]["totals"]["counts"]["converted"], held, "{r}");
    assert_eq!(r["holdout"]["totals"]["counts"]["started"], held, "{r}");
    assert_eq!(r["totals"]["counts"]["converted"], treated_buys, "{r}");
    let lift = &r["holdout"]["lift"]["arms"];
    assert_eq!(lift[0]["arm"], "holdout", "{r}");
    assert_eq!(lift[1]["arm"], "treated", "{r}");
    assert!(
        lift[1]["difference"].as_f64().unwrap() < 0.0,
        "this journey does worse than nothing: {r}"
    );
    rebuilt_equal(&c);
}

#[test]
fn one_goal_event_after_two_journeys_gives_its_credit_and_revenue_to_the_last_touch() {
    let p = project();
    for (name, wait) in [("first", ""), ("second", "    wait(hours(1));\n")] {
        p.workflow(
            &format!("{name}.rhai"),
            &format!(
                "workflow(\"{name}\").on_event(\"joined\").goal(\"bought\", days(7));\n\
                 fn run(contact, trigger) {{\n{wait}    send(\"email\", \"welcome\");\n}}\n"
            ),
        );
    }
    let d = p.start();
    let c = Client::new(d.url());
    c.set_clock(1_796_724_000_000);
    c.identify("lt", json!({"email": "lt@example.com"}));
    c.track("lt", "joined", json!({}));
    eventually("the first journey's message is out", || {
        (p.outbox("email").len() == 1).then_some(())
    });
    c.advance(2 * 3_600_000);
    eventually("the second journey's message is out", || {
        (p.outbox("email").len() == 2).then_some(())
    });
    c.advance(60_000);
    c.track(
        "lt",
        "bought",
        json!({"revenue": "10.00", "currency": "eur"}),
    );
    let report = |name: &str| {
        eventually("the conversion is counted", || {
            let (_, r) = c.admin_get(&format!("/v1/reports/workflows/{name}"));
            (r["totals"]["counts"]["converted"] == 1).then_some(r)
        })
    };
    let (first, second) = (report("first"), report("second"));
    // Both journeys reached their goal; the credit and the revenue go to the last touch.
    assert_eq!(first["totals"]["attributed"], 0.0, "{first}");
    assert_eq!(second["totals"]["attributed"], 1.0, "{second}");
    assert_eq!(first["totals"]["revenue"], json!({}), "{first}");
    assert_eq!(second["totals"]["revenue"]["EUR"], 10.0, "{second}");
    rebuilt_equal(&c);
}

#[test]
fn the_dashboard_needs_a_session_from_a_valid_token_and_refuses_a_forged_cookie() {
    let p = project();
    let d = p.start();
    let c = Client::new(d.url());
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let login = |token: &str| {
        let r = agent
            .post(&format!("{}/dashboard/login", c.base))
            .set("content-type", "application/x-www-form-urlencoded")
            .send_string(&format!("token={token}"));
        match r {
            Ok(r) => (r.status(), r.header("set-cookie").map(str::to_string)),
            Err(ureq::Error::Status(s, r)) => (s, r.header("set-cookie").map(str::to_string)),
            Err(e) => panic!("{e}"),
        }
    };
    let page = |cookie: Option<&str>| {
        let mut req = agent.get(&format!("{}/dashboard", c.base));
        if let Some(cookie) = cookie {
            req = req.set("cookie", cookie);
        }
        match req.call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(login("not-the-token"), (401, None));
    let (s, cookie) = login(TOKEN);
    assert_eq!(s, 303);
    let cookie = cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let (s, html) = page(Some(&pair));
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("Overview"), "{html}");
    assert_eq!(page(None).0, 401);
    let mut forged = pair.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(page(Some(&forged)).0, 401, "a changed cookie is refused");
    assert_eq!(page(Some("herald_dashboard=")).0, 401);
}

#[test]
fn a_bandit_shifts_new_contacts_to_the_arm_that_converts_and_a_contact_keeps_its_arm() {
    let p = project();
    p.workflow(
        "pick.rhai",
        "workflow(\"pick\").on_event(\"came\").reentry(\"always\").goal(\"bought\", days(7));\n\
         fn run(contact, trigger) {\n    \
         let s = bandit(\"subject\", [\"a\", \"b\"], \"converted\");\n    \
         send(\"email\", if s == \"a\" { \"duo_a\" } else { \"duo_b\" });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    let wave = |prefix: &str| {
        let batch: Vec<Value> = (0..40)
            .flat_map(|i| {
                [
                    json!({"type": "identify", "userId": format!("{prefix}{i}"),
                        "traits": {"email": format!("{prefix}{i}@example.org")}}),
                    json!({"type": "track", "userId": format!("{prefix}{i}"), "event": "came"}),
                ]
            })
            .collect();
        let (s, b) = c.ingest("/v1/batch", &json!({ "batch": batch }).to_string());
        assert_eq!(s, 200, "{b}");
    };
    let arms_of = |prefix: &str| -> BTreeMap<String, String> {
        p.outbox("email")
            .iter()
            .filter(|m| m["to"].as_str().unwrap().starts_with(prefix))
            .map(|m| {
                let arm = if m["subject"] == "Arm a" { "a" } else { "b" };
                (m["to"].as_str().unwrap().to_string(), arm.to_string())
            })
            .collect()
    };
    // First wave: nothing known yet, both arms are tried.
    wave("w");
    let first = eventually("the first wave is sent and counted", || {
        let (_, r) = c.admin_get("/v1/reports/workflows/pick");
        let arms = arms_of("w");
        (r["totals"]["counts"]["sent"] == 40 && arms.len() == 40).then_some(arms)
    });
    let b_first = first.values().filter(|a| *a == "b").count();
    assert!(b_first > 0 && b_first < 40, "both arms tried: {first:?}");
    // Everyone who got arm b buys; nobody with arm a does.
    for (to, arm) in &first {
        if arm == "b" {
            c.track(to.split('@').next().unwrap(), "bought", json!({}));
        }
    }
    eventually("the conversions are counted for arm b", || {
        let (_, x) = c.admin_get("/v1/reports/workflows/pick/experiments/subject?metric=converted");
        let arms = x["analysis"]["arms"].as_array()?.clone();
        let b = arms.iter().find(|a| a["arm"] == "b")?;
        (b["reached"] == b_first).then_some(())
    });
    // Second wave: the evidence sends new contacts to arm b.
    wave("v");
    let second = eventually("the second wave is sent", || {
        let arms = arms_of("v");
        (arms.len() == 40).then_some(arms)
    });
    let b_second = second.values().filter(|a| *a == "b").count();
    assert!(
        b_second >= 38,
        "traffic moved to the better arm: {b_second} of 40 got b"
    );
    // A first-wave contact given arm a comes back and keeps it.
    let (to, _) = first.iter().find(|(_, a)| *a == "a").unwrap();
    let user = to.split('@').next().unwrap().to_string();
    c.track(&user, "came", json!({}));
    let runs = eventually("the second run is there", || {
        let runs = c.runs_of(&user);
        (runs.len() == 2).then_some(runs)
    });
    for r in runs {
        // Its first activation may still be under way: its arm is recorded with its step.
        let run = eventually("the run took its arm", || {
            let (_, run) = c.admin_get(&format!("/v1/runs/{}", r["id"].as_str().unwrap()));
            (!run["journal"][0].is_null()).then_some(run)
        });
        assert_eq!(run["journal"][0]["result"], "a", "{run}");
        assert_eq!(run["journal"][0]["input"]["bandit"], "converted", "{run}");
    }
}

#[test]
fn a_labelled_step_keeps_its_numbers_when_its_template_changes_in_a_new_version() {
    let p = project();
    let script = |template: &str| {
        format!(
            "workflow(\"relabel\").on_event(\"join\");\nfn run(contact, trigger) {{\n    \
             label(\"pick\");\n    let tone = variant(\"mood\", [\"calm\", \"bold\"]);\n    \
             label(\"hello\");\n    send(\"email\", \"{template}\");\n    send(\"email\", \"tips\");\n}}\n"
        )
    };
    p.workflow("relabel.rhai", &script("welcome"));
    let d = p.start();
    let c = Client::new(d.url());
    arrive(&c, "l", 0..4, "join");
    eventually("the first version's runs sent both", || {
        let (_, r) = c.admin_get("/v1/reports/workflows/relabel");
        (r["totals"]["counts"]["sent"] == 8).then_some(())
    });
    // The welcome message is replaced by another template under the same label.
    p.workflow("relabel.rhai", &script("nudge"));
    let (s, b) = c.admin_post("/v1/reload", json!({}));
    assert_eq!(s, 200, "{b}");
    arrive(&c, "l", 4..7, "join");
    let r = eventually("the second version's runs sent both", || {
        let (_, r) = c.admin_get("/v1/reports/workflows/relabel");
        (r["totals"]["counts"]["sent"] == 14).then_some(r)
    });
    assert_eq!(r["versions"].as_object().unwrap().len(), 2, "{r}");
    // Each version's funnel has the labelled steps under their labels, the unlabelled one
    // under its kind, channel and template.
    let funnel = r["funnel"].as_object().unwrap();
    assert_eq!(funnel.len(), 2, "{r}");
    let mut reached = BTreeMap::new();
    for steps in funnel.values() {
        let keys: Vec<&str> = steps
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["pick#1", "hello#1", "send/email/tips#1"], "{r}");
        for s in steps.as_array().unwrap() {
            *reached
                .entry(s["key"].as_str().unwrap().to_string())
                .or_insert(0) += s["reached"].as_u64().unwrap();
        }
        let hello = steps
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == "hello#1")
            .unwrap();
        assert_eq!(hello["sent"], hello["reached"], "{r}");
        assert_eq!(
            hello["next"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["send/email/tips#1"],
            "{r}"
        );
    }
    assert_eq!(
        reached["hello#1"], 7,
        "both versions' sends under the label: {reached:?}"
    );
    // The step's numbers per version follow the label too.
    let steps = r["steps"].as_object().unwrap();
    let hello: Vec<u64> = steps
        .iter()
        .filter(|(k, _)| k.ends_with(":hello#1"))
        .map(|(_, n)| n["counts"]["sent"].as_u64().unwrap())
        .collect();
    assert_eq!(hello.iter().sum::<u64>(), 7, "{r}");
    assert_eq!(hello.len(), 2, "one per version: {r}");
    // A labelled variant step still gives each run its arm: conversions count runs.
    let (s, x) = c.admin_get("/v1/reports/workflows/relabel/experiments/mood?metric=converted");
    assert_eq!(s, 200, "{x}");
    let runs = trials(&x);
    assert_eq!(runs, 7, "{x}");
    rebuilt_equal(&c);
}

/// An experiment report's trials over all its arms.
fn trials(x: &Value) -> u64 {
    x["analysis"]["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["sent"].as_u64().unwrap())
        .sum()
}

/// A report's funnel (one version's), by step key.
fn funnel_steps(r: &Value) -> BTreeMap<String, Value> {
    let versions = r["funnel"].as_object().unwrap();
    assert_eq!(versions.len(), 1, "{r}");
    versions
        .values()
        .next()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

#[test]
fn a_workflows_funnel_shows_where_runs_went_waited_timed_out_and_ended() {
    let p = project();
    p.workflow(
        "cart.rhai",
        "workflow(\"cart\").on_event(\"cart_abandoned\").goal(\"bought\", days(1));\n\
         fn run(contact, trigger) {\n    \
         send(\"email\", \"nudge\");\n    let order = wait_for(\"order_completed\", hours(4));\n    \
         if order != () {\n        exit(\"ordered\");\n    }\n    send(\"email\", \"tips\");\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.set_clock(1_796_724_000_000);
    arrive(&c, "f", 0..10, "cart_abandoned");
    eventually("every nudge is out", || {
        (p.outbox("email").len() == 10).then_some(())
    });
    for i in 0..4 {
        c.track(&format!("f{i}"), "order_completed", json!({}));
    }
    // One reaches the workflow's goal while it waits.
    c.track("f4", "bought", json!({}));
    // Four ordered and left at the wait, one converted there; five still wait there.
    let r = eventually("the orders end four runs and the goal one", || {
        let (s, r) = c.admin_get("/v1/reports/workflows/cart");
        assert_eq!(s, 200, "{r}");
        let steps = funnel_steps(&r);
        let wait = steps.get("wait_for/order_completed#1")?;
        (wait["ended"]["exited"] == 4
            && wait["ended"]["goal_reached"] == 1
            && wait["reached"] == 10)
            .then_some(r)
    });
    let steps = funnel_steps(&r);
    assert_eq!(steps["wait_for/order_completed#1"]["here"], 5, "{r}");
    assert_eq!(r["totals"]["counts"]["converted"], 1, "{r}");
    assert_eq!(steps["wait_for/order_completed#1"]["timed_out"], 0, "{r}");
    assert_eq!(r["totals"]["counts"]["exited"], 4, "{r}");

    // The others' waits time out; they get the tips and complete.
    c.advance(5 * 3_600_000);
    eventually("the tips are out", || {
        (p.outbox("email").len() == 15).then_some(())
    });
    let r = eventually("the funnel has every run's end", || {
        let (_, r) = c.admin_get("/v1/reports/workflows/cart");
        (r["totals"]["counts"]["completed"] == 5).then_some(r)
    });
    let order: Vec<String> = r["funnel"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        order,
        [
            "send/email/nudge#1",
            "wait_for/order_completed#1",
            "send/email/tips#1"
        ],
        "in the order runs take them: {r}"
    );
    let steps = funnel_steps(&r);
    let nudge = &steps["send/email/nudge#1"];
    assert_eq!(nudge["reached"], 10, "{r}");
    assert_eq!(nudge["sent"], 10, "{r}");
    assert_eq!(nudge["next"], json!({"wait_for/order_completed#1": 10}));
    let wait = &steps["wait_for/order_completed#1"];
    assert_eq!(wait["reached"], 10, "{r}");
    assert_eq!(wait["timed_out"], 5, "{r}");
    assert_eq!(wait["here"], 0, "{r}");
    assert_eq!(wait["next"], json!({"send/email/tips#1": 5}));
    assert_eq!(wait["ended"], json!({"exited": 4, "goal_reached": 1}));
    let tips = &steps["send/email/tips#1"];
    assert_eq!(tips["reached"], 5, "{r}");
    assert_eq!(tips["sent"], 5, "{r}");
    assert_eq!(tips["ended"], json!({"completed": 5}));
    assert_eq!(tips["next"], json!({}));
    assert_eq!(r["totals"]["counts"]["exited"], 4, "{r}");
    assert_eq!(r["totals"]["counts"]["started"], 10, "{r}");

    rebuilt_equal(&c);

    let text = herald_cli(&p, &c, &["report", "workflow", "cart"]);
    assert!(text.contains("funnel of version"), "{text}");
    let wait_line = text
        .lines()
        .find(|l| l.starts_with("wait_for/order_completed#1"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        wait_line.contains("exited 4") && wait_line.contains("send/email/tips#1 5"),
        "{wait_line}"
    );
}

/// Append `toml` to the project's `herald.toml`.
fn add_config(p: &TestProject, toml: &str) {
    let path = p.path().join("herald.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(toml);
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_segments_size_is_reported_per_day_in_the_projects_timezone() {
    let p = project();
    add_config(&p, "\n[analytics]\ntimezone = \"America/New_York\"\n");
    let d = p.start();
    let c = Client::new(d.url());
    // 2026-12-08 10:00 in New York (15:00 UTC).
    let day1 = 1_796_742_000_000;
    c.set_clock(day1);
    for i in 0..5 {
        c.identify(&format!("m{i}"), json!({"reads": true}));
    }
    eventually("five readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 5).then_some(())
    });
    // The next local day: three join, two leave.
    c.advance(24 * 3_600_000);
    for i in 5..8 {
        c.identify(&format!("m{i}"), json!({"reads": true}));
    }
    for i in 0..2 {
        c.identify(&format!("m{i}"), json!({"reads": false}));
    }
    eventually("six readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 6).then_some(())
    });
    c.advance(24 * 3_600_000);
    let r = eventually("three days of sizes", || {
        let (s, r) = c.admin_get("/v1/reports/segments/readers");
        assert_eq!(s, 200, "{r}");
        (r["days"].as_array().unwrap().len() == 3 && r["days"][1]["exited"] == 2).then_some(r)
    });
    assert_eq!(r["timezone"], "America/New_York", "{r}");
    assert_eq!(r["members"], 6, "{r}");
    let days: Vec<(String, i64, i64, i64)> = r["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["day"].as_str().unwrap().to_string(),
                d["size"].as_i64().unwrap(),
                d["entered"].as_i64().unwrap(),
                d["exited"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        days,
        [
            ("2026-12-08".to_string(), 5, 5, 0),
            ("2026-12-09".to_string(), 6, 3, 2),
            ("2026-12-10".to_string(), 6, 0, 0),
        ],
        "{r}"
    );
    // A period: the middle day alone.
    let (s, mid) = c.admin_get(
        "/v1/reports/segments/readers?from=2026-12-09T12:00:00Z&to=2026-12-10T00:00:00Z",
    );
    assert_eq!(s, 200, "{mid}");
    assert_eq!(mid["days"].as_array().unwrap().len(), 1, "{mid}");
    assert_eq!(mid["days"][0]["size"], 6, "{mid}");
    let (s, b) = c.admin_get("/v1/reports/segments/nope");
    assert_eq!(s, 404, "{b}");
    rebuilt_equal(&c);
    let text = herald_cli(&p, &c, &["report", "segment", "readers"]);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["2026-12-09", "6", "3", "2"]),
        "{text}"
    );
}

#[test]
fn old_hours_are_rolled_up_into_days_and_reports_over_them_stay_equal() {
    let p = project();
    add_config(&p, "\n[analytics]\nhourly_days = 2\n");
    let d = p.start();
    let c = Client::new(d.url());
    let t0 = 1_796_724_000_000; // 2026-12-08 10:00 UTC
    c.set_clock(t0);
    for i in 0..4 {
        c.identify(
            &format!("o{i}"),
            json!({"email": format!("o{i}@example.com")}),
        );
        c.track(&format!("o{i}"), "signup", json!({}));
    }
    let day = "from=2026-12-08T00:00:00Z&to=2026-12-09T00:00:00Z";
    let before = eventually("every message is counted", || {
        let (_, r) = c.admin_get(&format!("/v1/reports/workflows/hello?{day}&series=sent"));
        (r["totals"]["counts"]["sent"] == 8).then_some(r)
    });
    assert_eq!(before["series"]["hourly"][0]["count"], 8, "{before}");
    // Five days on, the hours are past the retention: the fold thread rolls them up.
    c.advance(5 * 24 * 3_600_000);
    let after = eventually("the hours are rolled up", || {
        let (_, r) = c.admin_get(&format!("/v1/reports/workflows/hello?{day}&series=sent"));
        (r["series"]["hourly"] == json!([])).then_some(r)
    });
    assert_eq!(
        after["totals"]["counts"]["sent"], 8,
        "the day still counts: {after}"
    );
    let (_, daily) = c.admin_get(&format!(
        "/v1/reports/workflows/hello?{day}&series=sent&by=day"
    ));
    assert_eq!(
        daily["series"]["daily"],
        json!([{"day": "2026-12-08", "start": 1_796_688_000_000i64, "count": 8}]),
        "{daily}"
    );
    let (_, all) = c.admin_get("/v1/reports/workflows/hello");
    assert_eq!(all["totals"]["counts"]["sent"], 8, "{all}");
    // The dashboard charts the rolled-up day (per day), not the hours that are gone.
    let html = dashboard_page(&c, "/dashboard/workflows/hello");
    assert!(html.contains("Sent per day"), "{html}");
    assert!(html.contains("sent per day: 8 in"), "{html}");
    rebuilt_equal(&c);
    let (s, b) = c.admin_get("/v1/reports/workflows/hello?series=sent&by=week");
    assert_eq!(s, 400, "{b}");
}

#[test]
fn an_unknown_timezone_or_a_too_short_retention_is_a_check_error() {
    let p = project();
    add_config(
        &p,
        "\n[analytics]\ntimezone = \"Mars/Olympus\"\nhourly_days = 1\n",
    );
    let out = std::process::Command::new(herald_bin())
        .args(["check", p.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("\"Mars/Olympus\" is not an IANA timezone"),
        "{text}"
    );
    assert!(
        text.contains("hourly counters for at least 2 days"),
        "{text}"
    );
}
