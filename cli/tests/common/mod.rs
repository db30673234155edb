//! Shared helpers for the integration tests: throwaway projects, daemons (in-process or as a
//! real `herald` process), HTTP calls over loopback, and a recording HTTP server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_runtime::daemon::{Options, RunningDaemon};
use serde_json::{json, Value};

pub const WRITE_KEY: &str = "test-write-key";
pub const TOKEN: &str = "test-admin-token";

/// A project in a temporary directory.
pub struct TestProject {
    pub dir: tempfile::TempDir,
}

impl TestProject {
    /// A project with `email` and `sms` outbox channels plus `extra_toml`.
    pub fn new(extra_toml: &str) -> TestProject {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        let toml = format!(
            "[auth]\nwrite_keys = [\"{WRITE_KEY}\"]\nadmin_token = \"{TOKEN}\"\n\n\
             [channels.email]\ntype = \"outbox\"\npath = \"out/email.jsonl\"\nto = \"email\"\n\n\
             [channels.sms]\ntype = \"outbox\"\npath = \"out/sms.jsonl\"\nto = \"phone\"\n\n{extra_toml}\n"
        );
        std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
        let p = TestProject { dir };
        p.template("welcome", "---\nsubject: Welcome {{ contact.first_name | default: \"friend\" }}\n---\nHello {{ contact.first_name | default: \"friend\" }} from {{ vars.source | default: \"web\" }}\n");
        p.template(
            "nudge",
            "Psst {{ contact.first_name | default: \"friend\" }}, open your email",
        );
        p.template("tips", "---\nsubject: Tips\n---\nSome tips");
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn workflow(&self, file: &str, source: &str) -> &Self {
        std::fs::write(self.path().join("workflows").join(file), source).unwrap();
        self
    }

    pub fn segment(&self, file: &str, source: &str) -> &Self {
        std::fs::create_dir_all(self.path().join("segments")).unwrap();
        std::fs::write(self.path().join("segments").join(file), source).unwrap();
        self
    }

    pub fn template(&self, name: &str, source: &str) -> &Self {
        std::fs::write(
            self.path().join("templates").join(format!("{name}.liquid")),
            source,
        )
        .unwrap();
        self
    }

    /// Lines written to an outbox channel so far (a line the daemon is writing at this
    /// moment, not yet ended by its newline, is left for the next look).
    pub fn outbox(&self, channel: &str) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.path().join("out").join(format!("{channel}.jsonl")))
                .unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("outbox lines are JSON"))
            .collect()
    }

    /// Start the daemon in this process with a manual clock.
    pub fn start(&self) -> RunningDaemon {
        self.start_with(false)
    }

    /// Start the daemon in this process with a manual clock, optionally watching the project.
    pub fn start_with(&self, watch: bool) -> RunningDaemon {
        RunningDaemon::start(Options {
            project: self.path().to_path_buf(),
            listen: Some("127.0.0.1:0".into()),
            data: None,
            test_clock: true,
            watch,
        })
        .expect("daemon starts")
    }
}

/// A client of one daemon.
#[derive(Clone)]
pub struct Client {
    pub base: String,
}

pub fn basic() -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
    )
}

impl Client {
    pub fn new(base: String) -> Client {
        Client { base }
    }

    /// A fresh connection per request: the tests exercise the server, not connection reuse.
    pub fn agent(&self) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(HANG_GUARD)
            .max_idle_connections(0)
            .build()
    }

    /// POST with the write key; returns (status, body).
    pub fn ingest(&self, path: &str, body: &str) -> (u16, Value) {
        self.raw_post(path, body, Some(&basic()), None)
    }

    /// POST with the write key; `None` when the connection failed (the server died).
    pub fn try_ingest(&self, path: &str, body: &str) -> Option<(u16, Value)> {
        let req = self
            .agent()
            .post(&format!("{}{path}", self.base))
            .set("content-type", "application/json")
            .set("authorization", &basic());
        match req.send_bytes(body.as_bytes()) {
            Err(ureq::Error::Transport(_)) => None,
            other => Some(respond(other)),
        }
    }

    pub fn raw_post(
        &self,
        path: &str,
        body: &str,
        auth: Option<&str>,
        encoding: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .agent()
            .post(&format!("{}{path}", self.base))
            .set("content-type", "application/json");
        if let Some(a) = auth {
            req = req.set("authorization", a);
        }
        if let Some(e) = encoding {
            req = req.set("content-encoding", e);
        }
        respond(req.send_bytes(body.as_bytes()))
    }

    pub fn post_bytes(&self, path: &str, body: &[u8], encoding: Option<&str>) -> (u16, Value) {
        let mut req = self
            .agent()
            .post(&format!("{}{path}", self.base))
            .set("authorization", &basic());
        if let Some(e) = encoding {
            req = req.set("content-encoding", e);
        }
        respond(req.send_bytes(body))
    }

    pub fn track(&self, user: &str, event: &str, properties: Value) {
        let (s, b) = self.ingest(
            "/v1/track",
            &json!({"userId": user, "event": event, "properties": properties}).to_string(),
        );
        assert_eq!(s, 200, "{b}");
    }

    pub fn identify(&self, user: &str, traits: Value) {
        let (s, b) = self.ingest(
            "/v1/identify",
            &json!({"userId": user, "traits": traits}).to_string(),
        );
        assert_eq!(s, 200, "{b}");
    }

    pub fn admin_get(&self, path: &str) -> (u16, Value) {
        respond(
            self.agent()
                .get(&format!("{}{path}", self.base))
                .set("authorization", &format!("Bearer {TOKEN}"))
                .call(),
        )
    }

    pub fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        respond(
            self.agent()
                .post(&format!("{}{path}", self.base))
                .set("authorization", &format!("Bearer {TOKEN}"))
                .send_json(body),
        )
    }

    /// An unauthenticated GET (probes, public pages).
    pub fn get(&self, path: &str) -> (u16, Value) {
        respond(self.agent().get(&format!("{}{path}", self.base)).call())
    }

    pub fn get_text(&self, path: &str) -> String {
        self.agent()
            .get(&format!("{}{path}", self.base))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// Move the daemon's test clock forward.
    pub fn advance(&self, ms: i64) {
        let (s, b) = self.admin_post("/v1/test/clock", json!({"advance_ms": ms}));
        assert_eq!(s, 200, "{b}");
    }

    pub fn set_clock(&self, ms: i64) {
        let (s, b) = self.admin_post("/v1/test/clock", json!({"set_ms": ms}));
        assert_eq!(s, 200, "{b}");
    }

    pub fn runs_of(&self, contact: &str) -> Vec<Value> {
        let (s, b) = self.admin_get(&format!("/v1/runs?contact={contact}"));
        assert_eq!(s, 200, "{b}");
        b["runs"].as_array().cloned().unwrap_or_default()
    }

    pub fn run(&self, id: &str) -> Value {
        let (s, b) = self.admin_get(&format!("/v1/runs/{id}"));
        assert_eq!(s, 200, "{b}");
        b
    }

    /// The only run of a contact, once it exists.
    pub fn only_run(&self, contact: &str) -> Value {
        let runs = eventually("the contact has a run", || {
            let r = self.runs_of(contact);
            (!r.is_empty()).then_some(r)
        });
        assert_eq!(runs.len(), 1, "{runs:?}");
        runs[0].clone()
    }

    /// Wait until a run reaches `status` (and, for `waiting`, has recorded `min_steps` steps).
    /// `waiting` means waiting on a timer or an event: a run whose send is still queued or in
    /// flight in its channel's delivery stage has not reached it yet.
    pub fn run_reaches(&self, id: &str, status: &str, min_steps: usize) -> Value {
        eventually(
            &format!("run {id} reaches {status} with {min_steps} steps"),
            || {
                let r = self.run(id);
                let journal = r["journal"].as_array().cloned().unwrap_or_default();
                let sending = journal.iter().any(|s| s["status"] == "queued");
                (r["status"] == status && journal.len() >= min_steps && !sending).then_some(r)
            },
        )
    }
}

pub fn respond(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match r {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.into_string().unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            (
                code,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => panic!("request failed: {e}"),
    }
}

/// How long a test waits for something before it calls the wait a hang: a guard against a test
/// that would never end, far beyond anything a slow, loaded machine needs.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// Poll `f` until it returns `Some`, giving up after [`HANG_GUARD`] (a bound, not a timing
/// claim).
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("gave up waiting: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub const DAY: i64 = 86_400_000;

/// The `herald` binary run as a real process.
pub struct Process {
    pub child: Child,
    pub client: Client,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `herald` binary the process tests run: this build's, or the one `HERALD_BIN` names (to
/// run the same test against another build and compare, e.g. the SMTP kill schedule).
pub fn herald_bin() -> std::ffi::OsString {
    std::env::var_os("HERALD_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_herald").into())
}

impl Process {
    /// Start `herald run --test-clock` on the project, with optional env vars.
    pub fn start(project: &Path, env: &[(&str, &str)]) -> Process {
        Self::start_args(&["run", project.to_str().unwrap(), "--test-clock"], env)
    }

    /// Start `herald ARGS --listen 127.0.0.1:0` (ARGS begin with `run`), logging to a file
    /// beside the project, and wait until it says where it listens. The daemon picks its own
    /// port, so no other test can take it between a probe and the bind.
    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Process {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let project = Path::new(args[1]);
        let tag = format!("{}-{n}", std::process::id());
        let log = project.join(format!("herald-{tag}.log"));
        let out = project.join(format!("herald-{tag}.out"));
        let mut cmd = Command::new(herald_bin());
        cmd.args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn herald");
        let base = eventually("the daemon says where it listens", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "herald exited before serving ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&out).ok().and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("herald listening on "))
                    .map(|url| url.trim().to_string())
            })
        });
        let client = Client::new(base);
        Process { child, client, log }
    }

    /// SIGKILL the process (no chance to flush or clean up).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for the process to die by itself (a failpoint killed it).
    pub fn wait_dead(mut self) -> std::process::ExitStatus {
        eventually("the process exits", || self.child.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request received by [`Recorder`].
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP server on loopback that records requests and answers with scripted statuses
/// (the last status repeats).
pub struct Recorder {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn start(statuses: Vec<u16>) -> Recorder {
        Self::start_with_body(statuses, "{\"id\":\"prov-{n}\"}")
    }

    /// Like [`Recorder::start`], answering `body` with `{n}` replaced by the request's index.
    pub fn start_with_body(statuses: Vec<u16>, reply: &'static str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let mut headers = Vec::new();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                reqs.lock().unwrap().push(Recorded {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into(),
                });
                let status = *statuses.get(i).or(statuses.last()).unwrap_or(&200);
                let payload = reply.replace("{n}", &i.to_string());
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{payload}",
                    payload.len()
                );
            }
        });
        Recorder { url, requests }
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// `herald lsp` as a process, spoken to over its stdin and stdout the way an editor does.
pub struct LspProcess {
    pub child: Child,
    stdin: std::process::ChildStdin,
    rx: std::sync::mpsc::Receiver<Value>,
}

impl LspProcess {
    /// Start `BIN lsp` (`None`: this build's `herald`).
    pub fn spawn(bin: Option<std::ffi::OsString>) -> LspProcess {
        let bin = bin.unwrap_or_else(|| env!("CARGO_BIN_EXE_herald").into());
        let mut child = Command::new(bin)
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || loop {
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            if out.read_exact(&mut body).is_err() {
                return;
            }
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        });
        LspProcess { child, stdin, rx }
    }

    /// Send one message with its `Content-Length` header.
    pub fn send(&mut self, v: Value) {
        let text = v.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{text}", text.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next message the server writes that satisfies `want` (others are skipped).
    pub fn wait_for(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self
                .rx
                .recv_timeout(HANG_GUARD)
                .expect("hang guard: the language server went quiet");
            if want(&m) {
                return m;
            }
        }
    }

    /// `initialize` (with `root` as the workspace, if any) and `initialized`; the server's
    /// answer to `initialize`.
    pub fn initialize(&mut self, root: Option<&Path>) -> Value {
        let params = match root {
            Some(r) => {
                let uri = format!("file://{}", r.display());
                json!({"rootUri": uri, "workspaceFolders": [{"uri": uri, "name": "p"}], "capabilities": {}})
            }
            None => json!({"capabilities": {}}),
        };
        self.send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}));
        let answer = self.wait_for(|m| m["id"] == 1);
        self.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
        answer
    }

    /// `didOpen` the file at `path` with its text on disk.
    pub fn open(&mut self, path: &Path) {
        let text = std::fs::read_to_string(path).unwrap();
        self.open_text(path, &text);
    }

    /// `didOpen` a document with `text`.
    pub fn open_text(&mut self, path: &Path, text: &str) {
        self.send(
            json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
            "textDocument": {"uri": format!("file://{}", path.display()), "languageId": "herald",
                             "version": 1, "text": text}}}),
        );
    }

    /// `shutdown` then `exit`, with stdin still open; the exit code.
    pub fn stop(mut self) -> i32 {
        self.send(json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}));
        self.wait_for(|m| m["id"] == 2);
        self.send(json!({"jsonrpc": "2.0", "method": "exit"}));
        self.exit_code()
    }

    /// Wait for the process to exit by itself (stdin stays open); its exit code.
    pub fn exit_code(mut self) -> i32 {
        let status = eventually("herald lsp exits", || self.child.try_wait().ok().flatten());
        status.code().expect("an exit code, not a signal")
    }
}

/// A real SMTP server (mailin-embedded) on loopback that keeps what it receives.
pub struct Smtp {
    pub port: u16,
    pub inbox: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct MailHandler {
    current: Vec<u8>,
    inbox: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl mailin_embedded::Handler for MailHandler {
    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        _to: &[String],
    ) -> mailin_embedded::Response {
        self.current.clear();
        mailin_embedded::response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> mailin_embedded::Response {
        self.inbox
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&self.current).into_owned());
        mailin_embedded::response::OK
    }
}

impl Smtp {
    pub fn start() -> Smtp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inbox = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut server = mailin_embedded::Server::new(MailHandler {
            current: Vec::new(),
            inbox: inbox.clone(),
        });
        server
            .with_name("mx.test")
            .with_ssl(mailin_embedded::SslConfig::None)
            .unwrap()
            .with_num_threads(2)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Smtp { port, inbox }
    }
}

/// Copy an example project (without its `.herald` data directory) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            if e.file_name() != ".herald" {
                copy_dir(&e.path(), &target);
            }
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}
