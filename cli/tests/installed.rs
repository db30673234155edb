//! An installed `herald` (`cargo install --path cli`) is one self-contained binary: run from a
//! directory that has nothing to do with this repository, a project it wrote itself sends
//! through a first-party connector embedded in it.
//!
//! `.ci/run` installs the binary and names it in `HERALD_INSTALLED_BIN`; without that variable
//! the test says it did not run (under CI, with `CI` set, it fails instead).
mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

#[test]
fn an_installed_herald_sends_through_a_bundled_connector_from_outside_the_repository() {
    let Some(bin) = std::env::var_os("HERALD_INSTALLED_BIN") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must name an installed herald in HERALD_INSTALLED_BIN (.ci/run does)"
        );
        eprintln!(
            "did not run: set HERALD_INSTALLED_BIN to a herald installed with `cargo install --path cli`"
        );
        return;
    };
    // A scratch directory outside the repository, where nothing of the build can be found.
    let home = tempfile::tempdir().unwrap();
    let herald = |args: &[&str], dir: &std::path::Path| {
        Command::new(&bin)
            .args(args)
            .current_dir(dir)
            .env_remove("CARGO_MANIFEST_DIR")
            .env("DEMO_SIGNING_KEY", "demo-signing-key")
            .output()
            .unwrap()
    };
    let out = herald(&["init", "demo"], home.path());
    assert!(out.status.success(), "{out:?}");
    let demo = home.path().join("demo");

    let sink = Recorder::start(vec![200]);
    let toml = std::fs::read_to_string(demo.join("herald.toml")).unwrap();
    std::fs::write(
        demo.join("herald.toml"),
        format!(
            "{toml}\n[channels.hook]\nplugin = \"bundled:webhook\"\nallowed_hosts = [\"127.0.0.1\"]\n\
             allow_private = true\nconfig = {{ url = \"{}/in\" }}\n\
             secrets = {{ WEBHOOK_SIGNING_KEY = \"env:DEMO_SIGNING_KEY\" }}\n",
            sink.url
        ),
    )
    .unwrap();
    std::fs::write(
        demo.join("workflows/notify.rhai"),
        "workflow(\"notify\").on_event(\"newsletter_subscribed\");\n\
         fn run(contact, trigger) {\n    action(\"hook\", \"event\", #{ email: contact.email });\n}\n",
    )
    .unwrap();
    let out = herald(&["check"], &demo);
    assert!(out.status.success(), "herald check: {out:?}");

    let port = free_port();
    let mut child = Command::new(&bin)
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(&demo)
        .env("DEMO_SIGNING_KEY", "demo-signing-key")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let post = |path: &str, body: serde_json::Value| {
        eventually("the installed daemon accepts the request", || {
            ureq::post(&format!("{base}{path}"))
                .set("authorization", "Basic cXVpY2tzdGFydC13cml0ZS1rZXk6")
                .send_json(body.clone())
                .ok()
        });
    };
    post(
        "/v1/identify",
        json!({"userId": "ada", "traits": {"email": "ada@example.com"}}),
    );
    post(
        "/v1/track",
        json!({"userId": "ada", "event": "newsletter_subscribed"}),
    );
    eventually("the connector posts to the receiver", || {
        (sink.count() == 1).then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let request = sink.requests.lock().unwrap()[0].clone();
    assert_eq!(request.path, "/in");
    assert!(
        request.header("x-herald-signature").is_some(),
        "{request:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["type"], "event");
    assert_eq!(body["payload"]["email"], "ada@example.com");
    // The quickstart's own email went to its outbox, inside the project.
    assert!(demo.join(".herald/outbox/email.jsonl").exists());
}
