//! What operators running `herald` as a service rely on: JSON log lines, systemd readiness,
//! `/readyz` apart from `/healthz`, reload on SIGHUP, the language server's exit codes and
//! `--version`. Every test runs the real binary.
mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

const V1: &str = "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) {\n    send(\"email\", \"welcome\");\n}\n";
const V2: &str = "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) {\n    send(\"email\", \"tips\");\n}\n";

fn sigterm(p: &Process) {
    // SAFETY: signalling a child process this test started and still owns.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
}

fn sighup(p: &Process) {
    // SAFETY: as above.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGHUP) };
}

/// Every line the daemon logged, each parsed as JSON.
fn json_lines(p: &Process) -> Vec<Value> {
    p.log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn assert_log_line_shape(lines: &[Value]) {
    for l in lines {
        assert!(
            l["timestamp"].as_str().is_some_and(|t| t.contains('T')),
            "{l}"
        );
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&l["level"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(l["target"].as_str().is_some_and(|t| !t.is_empty()), "{l}");
        assert!(l["message"].is_string(), "{l}");
    }
}

#[test]
fn log_format_json_writes_one_object_per_line_with_timestamp_level_target_and_message() {
    let p = TestProject::new("");
    p.workflow("w.rhai", V1);
    for (flag, env) in [
        (Some("--log-format=json"), None),
        (None, Some(("HERALD_LOG_FORMAT", "json"))),
    ] {
        let mut args = vec!["run", p.path().to_str().unwrap(), "--no-watch"];
        args.extend(flag);
        let d = Process::start_args(&args, &env.into_iter().collect::<Vec<_>>());
        let lines = eventually("the serving line is logged", || {
            let lines = json_lines(&d);
            lines
                .iter()
                .any(|l| l["message"] == "herald is serving")
                .then_some(lines)
        });
        assert_log_line_shape(&lines);
        let serving = lines
            .iter()
            .find(|l| l["message"] == "herald is serving")
            .unwrap();
        assert_eq!(serving["level"], "INFO");
        assert_eq!(serving["target"], "herald_runtime::daemon");
        assert_eq!(
            serving["workflows"], 1,
            "fields sit beside the message: {serving}"
        );
        sigterm(&d);
        assert!(d.wait_dead().success());
    }
}

#[test]
fn systemd_is_told_ready_once_the_daemon_serves_and_stopping_when_it_stops() {
    let p = TestProject::new("");
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let d = Process::start(
        p.path(),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a readiness datagram");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means serving: both probes answer.
    assert_eq!(d.client.get("/readyz").0, 200);
    let (code, health) = d.client.get("/healthz");
    assert_eq!((code, health["status"].clone()), (200, json!("ok")));
    sigterm(&d);
    let n = socket.recv(&mut buf).expect("a stopping datagram");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(d.wait_dead().success());
}

#[test]
fn sighup_reloads_the_project_as_a_saved_change_would() {
    let p = TestProject::new("");
    p.workflow("w.rhai", V1);
    let d = Process::start_args(&["run", p.path().to_str().unwrap(), "--no-watch"], &[]);
    let versions = |c: &Client| {
        let (_, v) = c.admin_get("/v1/workflows");
        v.to_string()
    };
    let before = versions(&d.client);
    p.workflow("w.rhai", V2);
    sighup(&d);
    eventually("the SIGHUP reload is applied", || {
        let (_, status) = d.client.admin_get("/v1/status");
        (status["reloads"]["applied"] == json!(1)).then_some(())
    });
    assert_ne!(versions(&d.client), before);
    // A broken project on SIGHUP is refused and the daemon keeps serving.
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"go\");\nfn run(contact, trigger) {\n",
    );
    sighup(&d);
    eventually("the broken reload is refused", || {
        let (_, status) = d.client.admin_get("/v1/status");
        (status["reloads"]["refused"] == json!(1)).then_some(())
    });
    assert_eq!(d.client.get("/healthz").0, 200);
}

/// Run `herald lsp`, send `messages`, and return its exit code while its stdin is still open.
fn lsp_session(messages: &[Value]) -> i32 {
    let mut lsp = LspProcess::spawn(None);
    for m in messages {
        lsp.send(m.clone());
    }
    lsp.exit_code()
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
}

#[test]
fn lsp_exits_with_0_after_shutdown_then_exit() {
    let code = lsp_session(&[
        initialize(),
        json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}),
        json!({"jsonrpc": "2.0", "method": "exit"}),
    ]);
    assert_eq!(code, 0);
}

#[test]
fn lsp_exits_with_1_on_exit_without_shutdown() {
    let code = lsp_session(&[
        initialize(),
        json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
        json!({"jsonrpc": "2.0", "method": "exit"}),
    ]);
    assert_eq!(code, 1);
}

#[test]
fn version_names_the_release_and_the_plugin_api() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("herald {} ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "plugin API herald:channel@{}",
            herald_plugin_host::API_VERSION
        )),
        "{text}"
    );
    match herald_bundled::unavailable() {
        None => assert!(
            text.contains(&format!(
                "{} bundled connectors",
                herald_bundled::CONNECTORS.len()
            )),
            "{text}"
        ),
        Some(reason) => assert!(text.contains(reason), "{text}"),
    }
}
