//! How a session ends, as the LSP specification's `shutdown` and `exit` rules ask: the server
//! stops as soon as it reads `exit`, without waiting for its input to close, and the session
//! is clean (exit status 0) exactly when `shutdown` came first.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{frame, Client, Project, TIMEOUT};
use herald_lsp::SessionEnd;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_after_shutdown_ends_the_session_cleanly_while_the_input_stays_open() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    c.shutdown().await;
    c.exit().await;
    // `session_end` keeps the client's write half open while it waits.
    let end = c.session_end().await;
    assert_eq!(
        end,
        SessionEnd::Exited {
            after_shutdown: true
        }
    );
    assert!(end.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_without_shutdown_ends_the_session_but_not_cleanly() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    c.exit().await;
    let end = c.session_end().await;
    assert_eq!(
        end,
        SessionEnd::Exited {
            after_shutdown: false
        }
    );
    assert!(!end.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_closed_after_shutdown_ends_the_session_cleanly() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    c.shutdown().await;
    c.close_input().await;
    let end = c.session_end().await;
    assert_eq!(
        end,
        SessionEnd::InputClosed {
            after_shutdown: true
        }
    );
    assert!(end.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_closed_without_shutdown_is_not_clean() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    c.close_input().await;
    let end = c.session_end().await;
    assert_eq!(
        end,
        SessionEnd::InputClosed {
            after_shutdown: false
        }
    );
    assert!(!end.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_after_exit_are_not_read() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    c.shutdown().await;
    // `exit` and a request behind it in one write: the server must stop at `exit`, not answer
    // the request, and not get stuck on it (tower-lsp 0.20 would, were it to read it).
    let hover = json!({"jsonrpc": "2.0", "id": 99, "method": "textDocument/hover",
        "params": {"textDocument": {"uri": project.uri("workflows/welcome.rhai")},
                   "position": {"line": 0, "character": 0}}});
    let exit = json!({"jsonrpc": "2.0", "method": "exit"});
    c.send_raw(&[frame(&exit), frame(&hover)].concat()).await;
    let after_exit = c.messages_until_closed().await;
    assert!(
        after_exit.iter().all(|m| m["id"] != json!(99)),
        "{after_exit:?}"
    );
    assert_eq!(
        c.session_end().await,
        SessionEnd::Exited {
            after_shutdown: true
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_content_length_ends_the_session_without_waiting_for_the_body() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    c.shutdown().await;
    c.send_raw(b"Content-Length: 1099511627776\r\n\r\n{\"jsonrpc\":")
        .await;
    assert_eq!(
        c.session_end().await,
        SessionEnd::InputClosed {
            after_shutdown: true
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_input_ends_the_session_uncleanly() {
    let mut c = Client::start();
    c.send_raw(b"this is not LSP\r\n\r\n").await;
    assert_eq!(
        c.session_end().await,
        SessionEnd::InputClosed {
            after_shutdown: false
        }
    );
}

/// Set in the environment of the child process the stdio tests start.
const STDIO_CHILD: &str = "HERALD_LSP_TEST_STDIO_CHILD";

/// Not a check of its own (it returns at once in a normal run): the body of the child process
/// that the stdio tests start, this test binary running only this test. It serves on its
/// stdin and stdout with `run_stdio` and exits with the status `herald lsp` uses.
#[test]
fn stdio_child_process() {
    if std::env::var_os(STDIO_CHILD).is_none() {
        return;
    }
    let end = herald_lsp::run_stdio().expect("the language server ran");
    std::process::exit(if end.is_clean() { 0 } else { 1 });
}

/// Read one framed message from the child's stdout, skipping anything that is not a frame
/// (the test harness prints a line before the child test starts). `None` at end of file.
fn read_frame(reader: &mut impl BufRead) -> Option<Value> {
    let mut len = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.parse::<usize>().ok();
        } else if line.is_empty() && len.is_some() {
            break;
        }
    }
    let mut body = vec![0; len?];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// Run `run_stdio` in a child process, send it `initialize`, `initialized`, `shutdown` when
/// `shutdown_first`, then `exit`, and return its exit status, which must come while its stdin
/// is still open.
fn stdio_session(shutdown_first: bool) -> ExitStatus {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["stdio_child_process", "--exact", "--nocapture", "--quiet"])
        .env(STDIO_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Some(msg) = read_frame(&mut stdout) {
            if tx.send(msg).is_err() {
                break;
            }
        }
    });
    let mut send = |msg: Value| {
        stdin.write_all(&frame(&msg)).unwrap();
        stdin.flush().unwrap();
    };
    let response = |id: i64| loop {
        let msg = rx
            .recv_timeout(TIMEOUT)
            .expect("the server answered in time");
        if msg["id"] == json!(id) && msg.get("method").is_none() {
            assert!(msg.get("error").is_none(), "{msg}");
            break msg;
        }
    };

    let project = Project::new();
    let root = tower_lsp::lsp_types::Url::from_file_path(project.root()).unwrap();
    send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"processId": null, "rootUri": root, "capabilities": {}}}));
    assert_eq!(response(1)["result"]["serverInfo"]["name"], "herald-lsp");
    send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    if shutdown_first {
        send(json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}));
        response(2);
    }
    send(json!({"jsonrpc": "2.0", "method": "exit"}));

    // A hang guard only: the child should exit at once.
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server did not exit while its stdin stayed open");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    status
}

#[test]
fn run_stdio_exits_with_success_after_shutdown_and_exit_while_stdin_stays_open() {
    let status = stdio_session(true);
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn run_stdio_exits_with_failure_after_exit_without_shutdown() {
    let status = stdio_session(false);
    assert_eq!(status.code(), Some(1), "{status}");
}
