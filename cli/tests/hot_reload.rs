//! Hot reload through the file watcher: valid changes apply, broken ones are refused while the
//! old version keeps serving, identical saves do nothing, rename-style saves are noticed, and
//! runs in flight finish on their own version.

mod common;

use common::*;
use serde_json::{json, Value};

const V1: &str = "workflow(\"w\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    wait(days(1));\n    send(\"email\", \"welcome\");\n}\n";
const V2: &str = "workflow(\"w\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    wait(days(1));\n    send(\"sms\", \"nudge\");\n}\n";

fn version(c: &Client) -> String {
    let (_, b) = c.admin_get("/v1/workflows");
    b["workflows"][0]["version"].as_str().unwrap().to_string()
}

fn reloads(c: &Client) -> Value {
    c.admin_get("/v1/status").1["reloads"].clone()
}

fn hash(s: &str) -> String {
    herald_runtime::project::script_hash(s)
}

#[test]
fn a_saved_change_is_served_and_runs_in_flight_keep_their_version() {
    let p = TestProject::new("");
    p.workflow("w.rhai", V1);
    let d = p.start_with(true);
    let c = Client::new(d.url());
    c.identify("h", json!({"email": "h@example.com", "phone": "+1"}));
    c.track("h", "go", json!({}));
    let old = c.only_run("h")["id"].as_str().unwrap().to_string();
    c.run_reaches(&old, "waiting", 1);

    p.workflow("w.rhai", V2);
    eventually("v2 is served", || (version(&c) == hash(V2)).then_some(()));
    c.track("h", "go", json!({}));
    let runs = eventually("a second run", || {
        let r = c.runs_of("h");
        (r.len() == 2).then_some(r)
    });
    let new = runs.iter().find(|r| r["id"] != old.as_str()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.run_reaches(&new, "waiting", 1);
    c.advance(DAY);
    c.run_reaches(&old, "completed", 2);
    c.run_reaches(&new, "completed", 2);
    assert_eq!(p.outbox("email").len(), 1);
    assert_eq!(p.outbox("sms").len(), 1);
    assert_eq!(reloads(&c)["applied"], 1);
}

#[test]
fn a_broken_save_is_refused_with_a_rendered_diagnostic_and_the_old_version_keeps_serving() {
    let p = TestProject::new("");
    p.workflow("w.rhai", V1);
    let d = p.start_with(true);
    let c = Client::new(d.url());
    p.workflow("w.rhai", "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) {\n    send(\"emial\", \"welcome\");\n}\n");
    let status = eventually("the reload is refused", || {
        let (_, s) = c.admin_get("/v1/status");
        (s["reloads"]["refused"] == 1).then_some(s)
    });
    let err = status["last_reload_error"].as_str().unwrap();
    assert!(
        err.contains("[H002] Error: unknown channel \"emial\""),
        "{err}"
    );
    assert!(err.contains("workflows/w.rhai:3:10"), "{err}");
    assert_eq!(version(&c), hash(V1));
    assert!(c
        .get_text("/metrics")
        .contains("herald_reloads_total{result=\"error\"} 1"));
    // Fixing the file clears the error.
    p.workflow("w.rhai", V2);
    eventually("v2 is served", || (version(&c) == hash(V2)).then_some(()));
    eventually("the error is cleared", || {
        (c.admin_get("/v1/status").1["last_reload_error"] == Value::Null).then_some(())
    });
}

#[test]
fn an_identical_save_does_nothing() {
    let p = TestProject::new("");
    p.workflow("w.rhai", V1);
    let d = p.start_with(true);
    let c = Client::new(d.url());
    p.workflow("w.rhai", V1);
    eventually("the save is seen and skipped", || {
        (reloads(&c)["skipped_identical"].as_u64() >= Some(1)).then_some(())
    });
    let r = reloads(&c);
    assert_eq!(
        (r["applied"].clone(), r["refused"].clone()),
        (json!(0), json!(0))
    );
}

#[test]
fn a_rename_style_save_is_noticed() {
    let p = TestProject::new("");
    p.workflow("w.rhai", V1);
    let d = p.start_with(true);
    let c = Client::new(d.url());
    let tmp = p.path().join("workflows/.w.rhai.swp");
    std::fs::write(&tmp, V2).unwrap();
    std::fs::rename(&tmp, p.path().join("workflows/w.rhai")).unwrap();
    eventually("v2 is served", || (version(&c) == hash(V2)).then_some(()));
}

#[test]
fn template_changes_apply_to_the_next_send() {
    let p = TestProject::new("");
    p.workflow("t.rhai", "workflow(\"t\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) { send(\"email\", \"tips\"); }\n");
    let d = p.start_with(true);
    let c = Client::new(d.url());
    p.template("tips", "---\nsubject: New tips\n---\nFresh");
    eventually("the template reload applies", || {
        (reloads(&c)["applied"] == 1).then_some(())
    });
    c.identify("t", json!({"email": "t@example.com"}));
    c.track("t", "go", json!({}));
    let sent = eventually("a message", || {
        let o = p.outbox("email");
        (!o.is_empty()).then_some(o)
    });
    assert_eq!(sent[0]["subject"], "New tips");
}

#[test]
fn settings_that_need_a_restart_are_refused_not_half_applied() {
    let p = TestProject::new("");
    p.workflow("w.rhai", V1);
    let d = p.start_with(true);
    let c = Client::new(d.url());
    let toml = std::fs::read_to_string(p.path().join("herald.toml")).unwrap();
    // A new listen address plus a new template in the same change: neither is applied.
    p.template("extra", "hi");
    std::fs::write(
        p.path().join("herald.toml"),
        format!("[server]\nlisten = \"127.0.0.1:1\"\n\n{toml}"),
    )
    .unwrap();
    let status = eventually("the reload is refused", || {
        let (_, s) = c.admin_get("/v1/status");
        (s["reloads"]["refused"].as_u64() >= Some(1)).then_some(s)
    });
    assert!(
        status["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("need a restart"),
        "{status}"
    );
    assert_eq!(status["reloads"]["applied"], 0);
}

#[test]
fn reading_the_project_does_not_count_as_a_change() {
    let p = TestProject::new("");
    p.workflow("w.rhai", V1);
    let d = p.start_with(true);
    let c = Client::new(d.url());
    p.workflow("w.rhai", V2);
    eventually("v2 is served", || (version(&c) == hash(V2)).then_some(()));
    // Reloading reads every project file; those reads must not look like saves (which would
    // make the watcher re-check the project over and over while nothing changes).
    std::thread::sleep(std::time::Duration::from_millis(600));
    let r = reloads(&c);
    // One late event of the save itself may still arrive on a loaded machine; re-checking on
    // reads would show a skipped check every debounce period (several in this window).
    assert_eq!(r["applied"], json!(1), "{r}");
    assert!(r["skipped_identical"].as_u64().unwrap_or(99) <= 1, "{r}");
}

#[test]
fn a_replaced_plugin_is_reloaded_and_a_broken_one_refused_while_the_old_one_serves() {
    std::env::set_var("HERALD_TEST_RELOAD_HOOK_KEY", "hook-signing-key");
    let hook = Recorder::start(vec![200, 200, 200]);
    let p = TestProject::new(&format!(
        "[channels.hook]\nplugin = \"plugins/hook\"\nallow_private = true\n\
         config = {{ url = \"{}/herald\" }}\nsecrets = {{ WEBHOOK_SIGNING_KEY = \"env:HERALD_TEST_RELOAD_HOOK_KEY\" }}\n",
        hook.url
    ));
    // The connector in a folder of the project, granted no host yet (its manifest lists none
    // and neither does herald.toml).
    let plugin = p.path().join("plugins/hook");
    std::fs::create_dir_all(&plugin).unwrap();
    let packaged = herald_bundled::packaged_dir().join("webhook");
    for f in ["plugin.toml", "plugin.wasm"] {
        std::fs::copy(packaged.join(f), plugin.join(f)).unwrap();
    }
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    action(\"hook\", \"event\", #{});\n}\n",
    );
    let d = p.start_with(true);
    let c = Client::new(d.url());
    let run = |n: usize, status: &str| {
        c.track("h", "go", json!({}));
        let runs = eventually("the run", || {
            let r = c.runs_of("h");
            (r.len() == n).then_some(r)
        });
        let newest = runs
            .iter()
            .max_by_key(|r| r["created_at"].as_i64())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        c.run_reaches(&newest, status, 1)
    };
    let first = run(1, "failed");
    assert!(
        first["journal"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not in the plugin's allowed hosts"),
        "{first}"
    );

    // A new manifest granting the receiver: the watcher reloads the plugin.
    let manifest = std::fs::read_to_string(plugin.join("plugin.toml")).unwrap();
    std::fs::write(
        plugin.join("plugin.toml"),
        manifest.replace("allowed_hosts = []", "allowed_hosts = [\"127.0.0.1\"]"),
    )
    .unwrap();
    eventually("the new plugin is served", || {
        (reloads(&c)["applied"] == 1).then_some(())
    });
    run(2, "completed");
    assert_eq!(hook.count(), 1);

    // A broken component is refused; the plugin loaded before keeps serving.
    std::fs::write(plugin.join("plugin.wasm"), b"not a component").unwrap();
    let status = eventually("the broken plugin is refused", || {
        let (_, s) = c.admin_get("/v1/status");
        (s["reloads"]["refused"] == 1).then_some(s)
    });
    let err = status["last_reload_error"].as_str().unwrap_or_default();
    assert!(err.contains("plugins/hook"), "{err}");
    run(3, "completed");
    assert_eq!(hook.count(), 2);
}
