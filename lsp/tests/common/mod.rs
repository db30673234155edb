//! A minimal LSP client driving `herald_lsp::serve` over an in-memory pipe, and a sample
//! project on disk. Shared by the protocol tests and the benchmark.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_lsp::SessionEnd;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tower_lsp::lsp_types::Url;

/// A hang guard, not a performance bound: how long any single wait for the server may take
/// before a test fails. Generous, so that a heavily loaded machine never fails a test.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// One connection to an in-process server.
pub struct Client {
    writer: tokio::io::WriteHalf<DuplexStream>,
    reader: BufReader<tokio::io::ReadHalf<DuplexStream>>,
    next_id: i64,
    /// Notifications received while waiting for something else.
    pub notifications: VecDeque<Value>,
    server: tokio::task::JoinHandle<SessionEnd>,
}

impl Client {
    /// Start a server and connect to it (without initializing).
    pub fn start() -> Client {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (sr, sw) = tokio::io::split(theirs);
        let server = tokio::spawn(herald_lsp::serve(sr, sw));
        let (r, w) = tokio::io::split(ours);
        Client {
            writer: w,
            reader: BufReader::new(r),
            next_id: 1,
            notifications: VecDeque::new(),
            server,
        }
    }

    /// Start and initialize with `root` as the workspace folder.
    pub async fn initialized(root: &Path) -> Client {
        let mut c = Client::start();
        let caps = c.initialize(root).await;
        assert!(caps["capabilities"]["completionProvider"].is_object());
        c
    }

    /// Write one framed message.
    pub async fn send(&mut self, msg: &Value) {
        self.send_raw(&frame(msg)).await;
    }

    /// Write bytes as they are (several frames at once, or broken ones).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    /// Read one framed message.
    pub async fn recv(&mut self) -> Value {
        tokio::time::timeout(TIMEOUT, self.recv_inner())
            .await
            .expect("the server answered in time")
    }

    async fn recv_inner(&mut self) -> Value {
        self.try_recv()
            .await
            .expect("the server closed the connection")
    }

    /// Every message the server still writes until it closes its output.
    pub async fn messages_until_closed(&mut self) -> Vec<Value> {
        tokio::time::timeout(TIMEOUT, async {
            let mut messages = Vec::new();
            while let Some(msg) = self.try_recv().await {
                messages.push(msg);
            }
            messages
        })
        .await
        .expect("the server closed its output in time")
    }

    /// Read one framed message, or `None` when the server closed its output.
    async fn try_recv(&mut self) -> Option<Value> {
        let mut len = None;
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.unwrap();
            if n == 0 {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                len = Some(v.parse::<usize>().unwrap());
            }
        }
        let mut body = vec![0; len.expect("a Content-Length header")];
        self.reader.read_exact(&mut body).await.unwrap();
        Some(serde_json::from_slice(&body).unwrap())
    }

    /// Send a notification.
    pub async fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await;
    }

    /// Send a request and wait for its response; notifications that arrive meanwhile are
    /// queued and requests from the server are answered with `null`.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let msg = self.recv().await;
            if msg.get("method").is_some() {
                self.handle_incoming(msg).await;
                continue;
            }
            if msg["id"] == json!(id) {
                assert!(msg.get("error").is_none(), "{method} failed: {msg}");
                return msg["result"].clone();
            }
        }
    }

    async fn handle_incoming(&mut self, msg: Value) {
        if let Some(id) = msg.get("id") {
            let reply = json!({"jsonrpc": "2.0", "id": id, "result": null});
            self.send(&reply).await;
        } else {
            self.notifications.push_back(msg);
        }
    }

    /// `initialize` then `initialized`; returns the initialize result.
    pub async fn initialize(&mut self, root: &Path) -> Value {
        let uri = Url::from_file_path(root).unwrap();
        let result = self
            .request(
                "initialize",
                json!({
                    "processId": null,
                    "rootUri": uri,
                    "capabilities": {
                        "workspace": {"didChangeWatchedFiles": {"dynamicRegistration": true}}
                    },
                    "workspaceFolders": [{"uri": uri, "name": "project"}]
                }),
            )
            .await;
        self.notify("initialized", json!({})).await;
        result
    }

    /// Wait for `publishDiagnostics` for `uri` at `version` (any version when `None`).
    pub async fn diagnostics(&mut self, uri: &Url, version: Option<i64>) -> Vec<Value> {
        let matches = |m: &Value| {
            m["method"] == "textDocument/publishDiagnostics"
                && m["params"]["uri"] == json!(uri)
                && version.is_none_or(|v| m["params"]["version"] == json!(v))
        };
        if let Some(i) = self.notifications.iter().position(matches) {
            let m = self.notifications.remove(i).unwrap();
            return m["params"]["diagnostics"].as_array().unwrap().clone();
        }
        loop {
            let msg = self.recv().await;
            if matches(&msg) {
                return msg["params"]["diagnostics"].as_array().unwrap().clone();
            }
            if msg.get("method").is_some() {
                self.handle_incoming(msg).await;
            }
        }
    }

    /// `didOpen` a document.
    pub async fn open(&mut self, uri: &Url, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "herald", "version": 1, "text": text}}),
        )
        .await;
    }

    /// `didChange` with one ranged edit ((line, utf16 col) to (line, utf16 col)).
    pub async fn edit(
        &mut self,
        uri: &Url,
        version: i64,
        start: (u32, u32),
        end: (u32, u32),
        text: &str,
    ) {
        self.notify(
            "textDocument/didChange",
            json!({
                "textDocument": {"uri": uri, "version": version},
                "contentChanges": [{
                    "range": {"start": {"line": start.0, "character": start.1},
                              "end": {"line": end.0, "character": end.1}},
                    "text": text
                }]
            }),
        )
        .await;
    }

    /// `didChange` replacing the whole text.
    pub async fn replace(&mut self, uri: &Url, version: i64, text: &str) {
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version},
                   "contentChanges": [{"text": text}]}),
        )
        .await;
    }

    /// A position request (`completion`, `hover`, …) at (line, utf16 col).
    pub async fn at(&mut self, method: &str, uri: &Url, line: u32, character: u32) -> Value {
        self.request(
            method,
            json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}),
        )
        .await
    }

    /// Completion labels at a position.
    pub async fn completion_labels(&mut self, uri: &Url, line: u32, character: u32) -> Vec<String> {
        let r = self
            .at("textDocument/completion", uri, line, character)
            .await;
        let items = r
            .as_array()
            .cloned()
            .or_else(|| r["items"].as_array().cloned());
        items
            .unwrap_or_default()
            .iter()
            .map(|i| i["label"].as_str().unwrap().to_string())
            .collect()
    }

    /// Send `shutdown` and wait for its (successful) response.
    pub async fn shutdown(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": "shutdown"}))
            .await;
        loop {
            let msg = self.recv().await;
            if msg.get("method").is_some() {
                self.handle_incoming(msg).await;
            } else if msg["id"] == json!(id) {
                assert!(msg.get("error").is_none(), "shutdown failed: {msg}");
                break;
            }
        }
    }

    /// Send the `exit` notification.
    pub async fn exit(&mut self) {
        self.send(&json!({"jsonrpc": "2.0", "method": "exit"}))
            .await;
    }

    /// Close the server's input (end of file on its side).
    pub async fn close_input(&mut self) {
        self.writer.shutdown().await.unwrap();
    }

    /// Wait for `serve` to return and tell how the session ended. The input stays open while
    /// waiting (unless [`Client::close_input`] closed it), so this proves that the server
    /// does not need end of file to stop.
    pub async fn session_end(self) -> SessionEnd {
        let Client { writer, server, .. } = self;
        let end = tokio::time::timeout(TIMEOUT, server)
            .await
            .expect("the server stopped")
            .unwrap();
        drop(writer);
        end
    }

    /// `shutdown` and `exit`, then check that the server stopped cleanly with its input still
    /// open.
    pub async fn stop(mut self) {
        self.shutdown().await;
        self.exit().await;
        assert_eq!(
            self.session_end().await,
            SessionEnd::Exited {
                after_shutdown: true
            }
        );
    }
}

/// One message framed as LSP sends it: a `Content-Length` header, a blank line, the body.
pub fn frame(msg: &Value) -> Vec<u8> {
    let body = serde_json::to_string(msg).unwrap();
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// Position (line, UTF-16 column) of the first occurrence of `needle` in `text`, plus `delta`
/// characters.
pub fn pos_of(text: &str, needle: &str, delta: usize) -> (u32, u32) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..at];
    let line = before.matches('\n').count() as u32;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col: usize = text[line_start..at].chars().map(char::len_utf16).sum();
    let extra: usize = text[at..].chars().take(delta).map(char::len_utf16).sum();
    (line, (col + extra) as u32)
}

pub const CONFIG: &str = r#"[channels.email]
type = "outbox"
path = ".herald/outbox/email.jsonl"
to = "email"

[channels.sms]
type = "outbox"
path = ".herald/outbox/sms.jsonl"
to = "phone"

[channels.crm]
type = "webhook"
url = "https://crm.example.com/hook"
"#;

pub const WELCOME: &str = r#"/// Welcome series.
import "herald/text" as text;

workflow("welcome")
    .on_event("newsletter_subscribed")
    .goal("order_completed", days(14))
    .reentry("once");

/// A friendly greeting for `contact`.
fn greeting(contact) {
    "Hi " + text::first_name(contact.first_name, "there")
}

fn run(contact, trigger) {
    send("email", "welcome", #{ greeting: greeting(contact) });
    let opened = wait_for("email_opened", days(2));
    if opened == () {
        send("sms", "welcome");
    }
    wait(days(3));
    if contact.plan == "pro" {
        update(#{ lifecycle: "mql" });
    }
}
"#;

pub const FOLLOWUP: &str = r#"workflow("followup")
    .on_workflow_completed("welcome");

fn run(contact, trigger) {
    let clicked = wait_for("email_clicked", days(7));
    if clicked != () && contact.country == "FR" {
        action("crm", "create_task", #{ owner: "sales" });
    }
}
"#;

/// A project in a temporary folder: three channels, four templates (one broken), two
/// workflows.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (rel, text) in [
            ("herald.toml", CONFIG),
            (
                "templates/welcome.liquid",
                "---\nsubject: Welcome, {{ contact.first_name }}!\n---\nHello {{ vars.greeting }}\n",
            ),
            ("templates/welcome.sms.liquid", "Hi {{ contact.first_name }}, welcome!\n"),
            ("templates/nudge.liquid", "Still there, {{ contact.nickname }}?\n"),
            ("templates/broken.liquid", "{% if contact.x %}never closed\n"),
            ("workflows/welcome.rhai", WELCOME),
            ("workflows/followup.rhai", FOLLOWUP),
        ] {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Project { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    pub fn uri(&self, rel: &str) -> Url {
        Url::from_file_path(self.root().join(rel)).unwrap()
    }
}
