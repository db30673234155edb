//! The quickstart's double opt-in: a new subscriber gets a confirmation email (transactional)
//! whose tracked "Yes, subscribe me" link records consent with source `double_opt_in` and the
//! click's evidence; only then does the welcome series start. Without the click nothing else
//! is sent, and a link scanner's click does not count.

mod common;

use common::*;
use serde_json::{json, Value};

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";

/// The quickstart project in a scratch directory, on a free port, with a manual clock.
fn quickstart() -> (tempfile::TempDir, herald_runtime::daemon::RunningDaemon) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart"),
        dir.path(),
    );
    // The test client's credentials instead of the quickstart's.
    let toml = dir.path().join("herald.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("quickstart-write-key", WRITE_KEY)
        .replace("quickstart-admin-token", TOKEN);
    std::fs::write(&toml, text).unwrap();
    let d = herald_runtime::daemon::RunningDaemon::start(herald_runtime::daemon::Options {
        project: dir.path().to_path_buf(),
        listen: Some("127.0.0.1:0".into()),
        data: None,
        test_clock: true,
        watch: false,
    })
    .expect("the quickstart starts");
    (dir, d)
}

fn outbox(dir: &tempfile::TempDir) -> Vec<Value> {
    std::fs::read_to_string(dir.path().join(".herald/outbox/email.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn get(url: &str, agent: &str) -> (u16, Option<String>) {
    let client = ureq::AgentBuilder::new().redirects(0).build();
    match client.get(url).set("user-agent", agent).call() {
        Ok(r) => (r.status(), r.header("location").map(str::to_string)),
        Err(ureq::Error::Status(s, r)) => (s, r.header("location").map(str::to_string)),
        Err(e) => panic!("{e}"),
    }
}

fn client(d: &herald_runtime::daemon::RunningDaemon) -> Client {
    Client::new(d.url())
}

#[test]
fn a_confirmation_click_records_double_opt_in_consent_and_starts_the_welcome_series() {
    let (dir, d) = quickstart();
    let c = client(&d);
    c.set_clock(1_800_000_000_000);
    c.identify(
        "ada",
        json!({"first_name": "Ada", "email": "ada@example.com"}),
    );
    c.track("ada", "newsletter_subscribed", json!({"source": "footer"}));
    let confirm = eventually("the confirmation email", || outbox(&dir).first().cloned());
    assert_eq!(confirm["template"], "confirm");
    assert!(
        confirm["unsubscribe"].is_null(),
        "transactional: no unsubscribe link"
    );
    let html = confirm["html"].as_str().unwrap();
    let start = html
        .find(&format!("{}/c/", c.base))
        .expect("a tracked link");
    let link = &html[start..start + html[start..].find('"').unwrap()];
    // Nothing else until she confirms; she is not subscribed yet.
    let (_, consent) = c.admin_get("/v1/contacts/ada/consent");
    assert_eq!(consent["topics"][0]["status"], "unsubscribed", "{consent}");

    // The send is recorded (a click is measured from it) before time moves on.
    eventually("the confirmation's send is recorded", || {
        let id = c.runs_of("ada").first()?["id"].as_str()?.to_string();
        (c.run(&id)["journal"][0]["status"] == "done").then_some(())
    });
    // A scanner fetching the link at once does not confirm.
    assert_eq!(get(link, "Mozilla/5.0").0, 302);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(outbox(&dir).len(), 1);
    // She clicks a minute later.
    c.advance(60_000);
    let (s, to) = get(link, BROWSER);
    assert_eq!(
        (s, to.as_deref()),
        (302, Some("https://example.com/newsletter/confirmed"))
    );
    let welcome = eventually("the welcome email", || outbox(&dir).get(1).cloned());
    assert_eq!(welcome["template"], "welcome");
    assert!(
        welcome["unsubscribe"]["url"].as_str().is_some(),
        "{welcome}"
    );
    let (_, consent) = c.admin_get("/v1/contacts/ada/consent");
    let newsletter = &consent["topics"][0];
    assert_eq!(newsletter["status"], "subscribed", "{consent}");
    assert_eq!(newsletter["record"]["source"], "double_opt_in");
    assert_eq!(
        newsletter["record"]["user_agent"], BROWSER,
        "the click's evidence"
    );
}

#[test]
fn without_a_confirmation_nothing_but_the_confirmation_is_sent() {
    let (dir, d) = quickstart();
    let c = client(&d);
    c.set_clock(1_800_000_000_000);
    c.identify("bo", json!({"first_name": "Bo", "email": "bo@example.com"}));
    c.track("bo", "newsletter_subscribed", json!({}));
    // The run waits for the confirmation (its wait_for is journaled) before time moves on.
    let run = eventually("the run waits for the click", || {
        let id = c.runs_of("bo").first()?["id"].as_str()?.to_string();
        let r = c.run(&id);
        (r["journal"][1]["kind"] == "wait_for" && r["journal"][1]["status"] == "pending")
            .then_some(id)
    });
    c.advance(4 * 24 * 3_600_000);
    let r = c.run_reaches(&run, "exited", 2);
    assert_eq!(r["reason"], "the subscription was not confirmed");
    let sent: Vec<Value> = outbox(&dir).iter().map(|m| m["template"].clone()).collect();
    assert_eq!(sent, [json!("confirm")]);
}
