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
