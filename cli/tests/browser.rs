//! The preference page in a real browser: headless Chromium (Debian's package), driven by
//! puppeteer-core, opens a received email's unsubscribe link with JavaScript disabled and
//! leaves one topic through the page's form; axe-core, run in the same browser, reports no
//! accessibility violations; no request leaves the loopback address; and a later broadcast on
//! the topic left skips the contact while another topic still reaches it.
//!
//! Needs `HERALD_BROWSER_MODULES` (a `node_modules` with puppeteer-core and axe-core, which
//! `.ci/run` installs) and Chromium (`HERALD_CHROMIUM`, default `/usr/bin/chromium`).

mod common;

use common::*;
use serde_json::{json, Value};

fn tools() -> Option<String> {
    match std::env::var("HERALD_BROWSER_MODULES") {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => {
            panic!("HERALD_BROWSER_MODULES must be set under CI (.ci/run installs the browser test tools)")
        }
        _ => {
            eprintln!("browser: HERALD_BROWSER_MODULES is not set; the browser test did not run");
            None
        }
    }
}

#[test]
fn a_person_leaves_one_topic_in_a_real_browser_without_javascript_and_the_page_passes_axe() {
    let Some(modules) = tools() else { return };
    let p = TestProject::new(
        "[topics.newsletter]\nlabel = \"Monthly newsletter\"\ndescription = \"Our best stories, once a month.\"\n\n\
         [topics.product]\nlabel = \"Product news\"\n\n",
    );
    for name in ["welcome", "nudge", "tips"] {
        p.template(name, "---\ntopic: transactional\nsubject: x\n---\nx");
    }
    p.template(
        "news",
        "---\ntopic: newsletter\nsubject: News\n---\nRead on. Leave: {{ message.unsubscribe_url }}",
    );
    p.template("launch", "---\ntopic: product\nsubject: Launch\n---\nNew.");
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) {\n    send(\"email\", \"news\");\n}\n",
    );
    std::fs::create_dir_all(p.path().join("broadcasts")).unwrap();
    std::fs::write(
        p.path().join("broadcasts/later_news.rhai"),
        "broadcast(\"later_news\").channel(\"email\").template(\"news\").topic(\"newsletter\");\n",
    )
    .unwrap();
    std::fs::write(
        p.path().join("broadcasts/later_launch.rhai"),
        "broadcast(\"later_launch\").channel(\"email\").template(\"launch\").topic(\"product\");\n",
    )
    .unwrap();
    let d = p.start();
    let c = Client::new(d.url());
    c.identify(
        "ada",
        json!({"email": "ada@example.com", "first_name": "Ada"}),
    );
    c.track("ada", "go", json!({}));
    let mail = eventually("the email arrives", || p.outbox("email").first().cloned());
    let link = mail["unsubscribe"]["url"].as_str().unwrap().to_string();
    assert!(link.starts_with(&c.base), "{link}");

    let out = std::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/preferences.cjs"
        ))
        .args([link.as_str(), "newsletter"])
        .env("HERALD_BROWSER_MODULES", &modules)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "the browser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let before = r["before"].as_str().unwrap();
    assert!(
        before.contains("Monthly newsletter") && before.contains("Product news"),
        "{before}"
    );
    let after = r["after"].as_str().unwrap();
    assert_eq!(r["status"], 200, "the page again after the 303");
    assert!(after.contains("class=\"note\""), "a confirmation: {after}");
    assert_eq!(r["violations"], json!([]), "axe-core: {}", r["violations"]);
    assert!(r["passes"].as_u64().unwrap() > 5, "axe ran its rules: {r}");
    for url in r["requests"].as_array().unwrap() {
        assert!(
            url.as_str().unwrap().starts_with("http://127.0.0.1:"),
            "only loopback: {url}"
        );
    }
    let (_, consent) = c.admin_get("/v1/contacts/ada/consent");
    let status = |t: &str| {
        consent["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["topic"] == t)
            .unwrap()
            .clone()
    };
    assert_eq!(status("newsletter")["status"], "unsubscribed", "{consent}");
    assert_eq!(
        status("newsletter")["record"]["source"],
        "preference_page",
        "{consent}"
    );
    assert_eq!(status("product")["status"], "subscribed", "{consent}");

    // Later broadcasts: the topic left skips her, the other still reaches her.
    for name in ["later_news", "later_launch"] {
        let (s, b) = c.admin_post(&format!("/v1/broadcasts/{name}/schedule"), json!({}));
        assert_eq!(s, 200, "{b}");
    }
    let progress = |name: &str| {
        eventually("the broadcast settles", || {
            let (_, d) = c.admin_get(&format!("/v1/broadcasts/{name}"));
            let settled = d["status"] == "completed"
                && d["progress"]["queued"] == 0
                && d["progress"]["waiting"] == 0
                && d["progress"]["started"] == 1;
            settled.then(|| d["progress"].clone())
        })
    };
    let news = progress("later_news");
    assert_eq!(
        (
            news["sent"].as_u64(),
            news["skipped"].as_object().map(|m| m.len())
        ),
        (Some(0), Some(1)),
        "{news}"
    );
    let launch = progress("later_launch");
    assert_eq!(launch["sent"], 1, "{launch}");
    let templates: Vec<String> = p
        .outbox("email")
        .iter()
        .map(|m| m["template"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(templates, ["news", "launch"]);
}

/// Width and height of a PNG file (from its IHDR chunk).
fn png_size(path: &str) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG", "{path}");
    let n = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (n(16), n(20))
}

#[test]
fn the_dashboard_shows_a_known_data_set_refuses_strangers_and_fits_a_phone_and_a_laptop() {
    let Some(modules) = tools() else { return };
    let p = TestProject::new("[topics.newsletter]\nlabel = \"Newsletter\"\n\n");
    for name in ["welcome", "nudge", "tips"] {
        p.template(name, "---\ntopic: transactional\nsubject: x\n---\nx");
    }
    for arm in ["a", "b"] {
        p.template(
            &format!("duo_{arm}"),
            &format!("---\ntopic: newsletter\nsubject: Arm {arm}\n---\nText {arm}."),
        );
    }
    p.segment(
        "readers.rhai",
        "segment(\"readers\");\nfn matches(contact) {\n    contact.reads == true\n}\n",
    );
    p.workflow(
        "hello.rhai",
        "workflow(\"hello\").on_event(\"signup\");\nfn run(contact, trigger) {\n    \
         let tone = variant(\"tone\", [\"warm\", \"plain\"]);\n    send(\"email\", \"welcome\");\n    \
         send(\"email\", \"tips\");\n}\n",
    );
    std::fs::create_dir_all(p.path().join("broadcasts")).unwrap();
    std::fs::write(
        p.path().join("broadcasts/duo.rhai"),
        "broadcast(\"duo\").audience(\"readers\").channel(\"email\")\n    \
         .arms(#{ a: \"duo_a\", b: \"duo_b\" }).topic(\"newsletter\")\n    \
         .goal(\"order_completed\", days(3));\n",
    )
    .unwrap();
    let d = p.start();
    let c = Client::new(d.url());
    // The known data set: 6 sign-ups (12 welcome-series sends), 8 readers (8 broadcast
    // sends), 3 of whom order.
    for i in 0..6 {
        c.identify(
            &format!("s{i}"),
            json!({"email": format!("s{i}@signup.example")}),
        );
        c.track(&format!("s{i}"), "signup", json!({}));
    }
    for i in 0..8 {
        c.identify(
            &format!("r{i}"),
            json!({"email": format!("r{i}@reader.example"), "reads": true}),
        );
    }
    eventually("the segment has its readers", || {
        let (_, b) = c.admin_get("/v1/segments/readers");
        (b["size"] == 8).then_some(())
    });
    let (s, b) = c.admin_post("/v1/broadcasts/duo/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    eventually("every message is out", || {
        (p.outbox("email").len() == 20).then_some(())
    });
    for i in 0..3 {
        c.track(&format!("r{i}"), "order_completed", json!({}));
    }
    eventually("the conversions are counted", || {
        let (_, r) = c.admin_get("/v1/reports/broadcasts/duo");
        (r["totals"]["counts"]["converted"] == 3).then_some(())
    });
    // A message is in the outbox a moment before its result is recorded (and counted), and
    // a run's end after that.
    eventually("every send and every run's end is counted", || {
        let (_, w) = c.admin_get("/v1/reports/workflows/hello");
        let (_, b) = c.admin_get("/v1/reports/broadcasts/duo");
        (w["totals"]["counts"]["sent"] == 12
            && w["totals"]["counts"]["completed"] == 6
            && b["totals"]["counts"]["sent"] == 8)
            .then_some(())
    });

    let shots = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/dashboard.cjs"
        ))
        .args([
            c.base.as_str(),
            TOKEN,
            shots.path().to_str().unwrap(),
            "/dashboard",
            "/dashboard/broadcasts/duo",
            "/dashboard/workflows/hello",
        ])
        .env("HERALD_BROWSER_MODULES", &modules)
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "the browser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["refused"]["status"], 401, "no session, no dashboard");
    let refused = r["refused"]["html"].as_str().unwrap();
    assert!(
        refused.contains("Sign in") && !refused.contains("Workflows"),
        "{refused}"
    );
    assert_eq!(r["signedIn"]["status"], 200, "{r}");
    assert_eq!(r["cookie"]["httpOnly"], true, "{}", r["cookie"]);
    assert_eq!(r["cookie"]["sameSite"], "Strict", "{}", r["cookie"]);

    let pages = r["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 6);
    let metric = |page: &Value, row: &str, m: &str| -> String {
        page["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x[0] == row && x[1] == m)
            .map(|x| x[2].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{row} {m} in {}", page["metrics"]))
    };
    for page in pages {
        let (width, status) = (page["width"].as_u64().unwrap(), page["status"].as_u64());
        assert_eq!(status, Some(200), "{}", page["path"]);
        assert!(
            page["scrollWidth"].as_u64().unwrap() <= page["innerWidth"].as_u64().unwrap(),
            "{} overflows at {width}px: {} > {}",
            page["path"],
            page["scrollWidth"],
            page["innerWidth"]
        );
        let (w, _) = png_size(page["shot"].as_str().unwrap());
        assert_eq!(
            u64::from(w),
            width,
            "the full-page screenshot is as wide as the screen"
        );
        assert!(
            page["bytes"].as_u64().unwrap() < 96 * 1024,
            "{} weighs {} bytes",
            page["path"],
            page["bytes"]
        );
        match page["path"].as_str().unwrap() {
            "/dashboard" => {
                assert_eq!(metric(page, "", "sent"), "20", "all messages");
                assert_eq!(metric(page, "hello", "sent"), "12");
                assert_eq!(metric(page, "duo", "sent"), "8");
                assert_eq!(metric(page, "duo", "converted"), "3");
                assert_eq!(metric(page, "signup.example", "sent"), "12");
                assert_eq!(metric(page, "reader.example", "sent"), "8");
                assert_eq!(metric(page, "readers", "members"), "8");
            }
            "/dashboard/broadcasts/duo" => {
                let a: u64 = metric(page, "a", "sent").parse().unwrap();
                let b: u64 = metric(page, "b", "sent").parse().unwrap();
                assert_eq!(a + b, 8, "{}", page["metrics"]);
                let reached: u64 = metric(page, "a", "reached").parse::<u64>().unwrap()
                    + metric(page, "b", "reached").parse::<u64>().unwrap();
                assert_eq!(reached, 0, "nobody clicked: {}", page["metrics"]);
            }
            "/dashboard/workflows/hello" => {
                // The funnel: the variant, then both sends, six runs through each; they
                // all completed at the last.
                let m = |step: &str, name: &str| metric(page, step, name);
                for step in [
                    "variant/tone#1",
                    "send/email/welcome#1",
                    "send/email/tips#1",
                ] {
                    assert_eq!(m(step, "reached"), "6", "{step}: {}", page["metrics"]);
                    assert_eq!(m(step, "here"), "0", "{step}: {}", page["metrics"]);
                }
                for step in ["send/email/welcome#1", "send/email/tips#1"] {
                    assert_eq!(m(step, "sent"), "6", "{step}: {}", page["metrics"]);
                }
                assert_eq!(m("send/email/tips#1", "ended"), "6", "{}", page["metrics"]);
                assert_eq!(
                    m("send/email/welcome#1", "ended"),
                    "0",
                    "{}",
                    page["metrics"]
                );
                let text = page["text"].as_str().unwrap();
                assert!(text.contains("Experiment tone"), "{text}");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(r["violations"], json!([]), "axe-core: {}", r["violations"]);
    for url in r["requests"].as_array().unwrap() {
        assert!(
            url.as_str().unwrap().starts_with("http://127.0.0.1:"),
            "only loopback: {url}"
        );
    }
}
