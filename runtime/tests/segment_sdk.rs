//! A stock Segment SDK, pointed at the daemon by its host setting alone, delivers every call
//! type: Herald stores the events, merges the anonymous history into the known user, applies
//! traits and groups, follows the alias, and starts the workflow the track call triggers.
//!
//! The SDK is the published `segment-analytics-python` package, run by the Python interpreter
//! named in `HERALD_SEGMENT_PYTHON` (`.ci/run` installs it in a virtual environment). Without
//! that variable the test says so and does nothing, except under CI (`CI` set), where it fails.

mod common;

use common::*;
use serde_json::{json, Value};

const WELCOME: &str = r#"
workflow("welcome").on_event("newsletter_subscribed").reentry("once");

fn run(contact, trigger) {
    send("email", "welcome", #{ source: trigger.properties.source });
}
"#;

/// What an application does with the SDK: one anonymous visit, then the visitor signs up.
/// Only `host` differs from a production setup. Exits non-zero if the SDK reports an error.
const APP: &str = r#"
import sys
from segment.analytics.client import Client

host, write_key, encoding, user = sys.argv[1:5]
errors = []
client = Client(
    write_key,
    host=host,
    gzip=(encoding == "gzip"),
    on_error=lambda e, batch: errors.append(repr(e)),
)
anon = "anon-" + user
client.page(anonymous_id=anon, name="Pricing", properties={"path": "/pricing"})
client.screen(anonymous_id=anon, name="Home")
client.identify(user_id=user, anonymous_id=anon,
                traits={"first_name": "Grace", "email": user + "@example.com"})
client.group(user_id=user, group_id="acme", traits={"name": "Acme"})
client.track(user_id=user, event="newsletter_subscribed", properties={"source": "python-sdk"})
client.alias(previous_id=user, user_id=user + "-new")
client.shutdown()
if errors:
    print("SDK errors:", errors)
    sys.exit(1)
"#;

/// The interpreter with the SDK, if this machine has one.
fn sdk_python() -> Option<String> {
    match std::env::var("HERALD_SEGMENT_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var_os("CI").is_some() => panic!(
            "HERALD_SEGMENT_PYTHON must name a Python with segment-analytics-python installed \
             (.ci/run installs it)"
        ),
        _ => {
            eprintln!(
                "segment_sdk: HERALD_SEGMENT_PYTHON is not set; the Segment SDK test did not run"
            );
            None
        }
    }
}

fn app(python: &str, host: &str, key: &str, encoding: &str, user: &str) -> std::process::Output {
    std::process::Command::new(python)
        .arg("-c")
        .arg(APP)
        .args([host, key, encoding, user])
        .output()
        .expect("the SDK's interpreter runs")
}

fn run_app(python: &str, host: &str, encoding: &str, user: &str) {
    let out = app(python, host, WRITE_KEY, encoding, user);
    assert!(
        out.status.success(),
        "the SDK reported a failure:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_contact(p: &TestProject, c: &Client, user: &str) {
    let contact: Value = eventually("the SDK's events to be stored", || {
        let (s, v) = c.admin_get(&format!("/v1/contacts/{user}"));
        (s == 200 && v["recent_events"].as_array().is_some_and(|e| e.len() == 6)).then_some(v)
    });
    assert_eq!(contact["user_ids"], json!([user, format!("{user}-new")]));
    assert_eq!(contact["anonymous_ids"], json!([format!("anon-{user}")]));
    assert_eq!(contact["attributes"]["first_name"], "Grace");
    assert_eq!(
        contact["attributes"]["email"],
        format!("{user}@example.com")
    );
    assert_eq!(contact["groups"], json!(["acme"]));
    let mut kinds: Vec<String> = contact["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap(),
                e["event"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "alias:alias",
            "group:group",
            "identify:identify",
            "page:page",
            "screen:screen",
            "track:newsletter_subscribed"
        ]
    );
    for e in contact["recent_events"].as_array().unwrap() {
        assert_eq!(
            e["context"]["library"]["name"], "analytics-python",
            "the SDK's context is kept: {e}"
        );
        assert!(
            e["message_id"].as_str().is_some_and(|m| !m.is_empty()),
            "the SDK's messageId is kept: {e}"
        );
    }
    // The alias's new id finds the same contact.
    let (_, aliased) = c.admin_get(&format!("/v1/contacts/{user}-new"));
    assert_eq!(aliased["id"], contact["id"]);

    let run = c.only_run(contact["id"].as_str().unwrap());
    c.run_reaches(run["id"].as_str().unwrap(), "completed", 1);
    let to = format!("{user}@example.com");
    let sent: Vec<Value> = p
        .outbox("email")
        .into_iter()
        .filter(|m| m["to"] == to.as_str())
        .collect();
    assert_eq!(sent.len(), 1, "one welcome email: {sent:?}");
    assert_eq!(sent[0]["subject"], "Welcome Grace");
    assert_eq!(sent[0]["body"], "Hello Grace from python-sdk");
}

#[test]
fn the_python_sdk_works_by_changing_only_its_host_with_plain_and_gzip_bodies() {
    let Some(python) = sdk_python() else { return };
    let p = TestProject::new("");
    p.workflow("welcome.rhai", WELCOME);
    let d = p.start();
    let c = Client::new(d.url());
    run_app(&python, &d.url(), "plain", "grace");
    check_contact(&p, &c, "grace");
    run_app(&python, &d.url(), "gzip", "hopper");
    check_contact(&p, &c, "hopper");
}

#[test]
fn the_python_sdk_reports_a_wrong_write_key_with_heralds_code_and_message() {
    let Some(python) = sdk_python() else { return };
    let p = TestProject::new("");
    let d = p.start();
    let out = app(&python, &d.url(), "not-the-key", "plain", "eve");
    assert!(!out.status.success(), "the SDK saw the upload fail");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("APIError(401, 'invalid_write_key', 'the write key is not valid'"),
        "the SDK's error names the problem: {printed}"
    );
    let c = Client::new(d.url());
    let (s, _) = c.admin_get("/v1/contacts/eve");
    assert_eq!(s, 404, "nothing was stored");
}
