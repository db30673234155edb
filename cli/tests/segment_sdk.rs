//! The stock Segment SDKs, pointed at the daemon by their host setting alone, deliver every call
//! type: Herald stores the events, merges the anonymous history into the known user, applies
//! traits and groups, follows the alias, and starts the workflow the track call triggers.
//!
//! The SDKs are the published packages: `segment-analytics-python`, run by the interpreter named
//! in `HERALD_SEGMENT_PYTHON`, and `@segment/analytics-node`, found in the `node_modules`
//! directory named in `HERALD_SEGMENT_NODE_MODULES` (`.ci/run` installs both outside the clone).
//! Without those variables a test says so and does nothing, except under CI (`CI` set), where it
//! fails.

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
client.track(user_id=user, event="newsletter_subscribed", properties={"source": "python"})
client.alias(previous_id=user, user_id=user + "-new")
client.shutdown()
if errors:
    print("SDK errors:", errors)
    sys.exit(1)
"#;

/// The same application with the Node SDK. Node has no gzip option; its bodies are plain.
const NODE_APP: &str = r#"
const { Analytics } = require('@segment/analytics-node');
const [host, writeKey, user] = process.argv.slice(1);
const errors = [];
const analytics = new Analytics({ writeKey, host, maxRetries: 0, flushInterval: 50 });
analytics.on('error', (e) => errors.push(`${e.code}: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));
const anon = 'anon-' + user;
analytics.page({ anonymousId: anon, name: 'Pricing', properties: { path: '/pricing' } });
analytics.screen({ anonymousId: anon, name: 'Home' });
analytics.identify({ userId: user, anonymousId: anon, traits: { first_name: 'Grace', email: user + '@example.com' } });
analytics.group({ userId: user, groupId: 'acme', traits: { name: 'Acme' } });
analytics.track({ userId: user, event: 'newsletter_subscribed', properties: { source: 'node' } });
analytics.alias({ previousId: user, userId: user + '-new' });
analytics.closeAndFlush().then(() => {
  if (errors.length) {
    console.log('SDK errors:', JSON.stringify(errors));
    process.exit(1);
  }
});
"#;

/// An installed SDK.
enum Sdk {
    /// The Python interpreter that has `segment-analytics-python`.
    Python(String),
    /// The `node_modules` directory that has `@segment/analytics-node`.
    Node(String),
}

impl Sdk {
    /// The SDK named by `var`, if this machine has it.
    fn from_env(var: &str, make: fn(String) -> Sdk) -> Option<Sdk> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(make(v)),
            _ if std::env::var_os("CI").is_some() => {
                panic!("{var} must be set under CI (.ci/run installs the Segment SDKs)")
            }
            _ => {
                eprintln!("segment_sdk: {var} is not set; this Segment SDK test did not run");
                None
            }
        }
    }

    /// The value the SDK puts in `context.library.name`.
    fn library(&self) -> &'static str {
        match self {
            Sdk::Python(_) => "analytics-python",
            Sdk::Node(_) => "@segment/analytics-node",
        }
    }

    /// What the application sends as the signup's `source`.
    fn source(&self) -> &'static str {
        match self {
            Sdk::Python(_) => "python",
            Sdk::Node(_) => "node",
        }
    }

    /// Run the application against `host` (`encoding`: `plain` or, for Python, `gzip`).
    fn app(&self, host: &str, key: &str, encoding: &str, user: &str) -> std::process::Output {
        let mut cmd = match self {
            Sdk::Python(python) => {
                let mut c = std::process::Command::new(python);
                c.arg("-c").arg(APP).args([host, key, encoding, user]);
                c
            }
            Sdk::Node(modules) => {
                let mut c = std::process::Command::new("node");
                c.env("NODE_PATH", modules)
                    .arg("-e")
                    .arg(NODE_APP)
                    .args([host, key, user]);
                c
            }
        };
        cmd.output().expect("the SDK's runtime starts")
    }

    /// Run the application and require that the SDK reports no error.
    fn run(&self, host: &str, encoding: &str, user: &str) {
        let out = self.app(host, WRITE_KEY, encoding, user);
        assert!(
            out.status.success(),
            "the SDK reported a failure:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn python() -> Option<Sdk> {
    Sdk::from_env("HERALD_SEGMENT_PYTHON", Sdk::Python)
}

fn node() -> Option<Sdk> {
    Sdk::from_env("HERALD_SEGMENT_NODE_MODULES", Sdk::Node)
}

fn check_contact(p: &TestProject, c: &Client, sdk: &Sdk, user: &str) {
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
            e["context"]["library"]["name"],
            sdk.library(),
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
    assert_eq!(
        sent[0]["body"],
        format!("Hello Grace from {}", sdk.source())
    );
}

fn project() -> TestProject {
    let p = TestProject::new("");
    p.workflow("welcome.rhai", WELCOME);
    p
}

#[test]
fn the_python_sdk_works_by_changing_only_its_host_with_plain_and_gzip_bodies() {
    let Some(sdk) = python() else { return };
    let p = project();
    let d = p.start();
    let c = Client::new(d.url());
    sdk.run(&d.url(), "plain", "grace");
    check_contact(&p, &c, &sdk, "grace");
    sdk.run(&d.url(), "gzip", "hopper");
    check_contact(&p, &c, &sdk, "hopper");
}

#[test]
fn the_node_sdk_works_by_changing_only_its_host() {
    let Some(sdk) = node() else { return };
    let p = project();
    let d = p.start();
    let c = Client::new(d.url());
    sdk.run(&d.url(), "plain", "lovelace");
    check_contact(&p, &c, &sdk, "lovelace");
}

#[test]
fn the_python_sdk_reports_a_wrong_write_key_with_heralds_code_and_message() {
    let Some(sdk) = python() else { return };
    let p = project();
    let d = p.start();
    let out = sdk.app(&d.url(), "not-the-key", "plain", "eve");
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
