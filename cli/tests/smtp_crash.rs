//! The SMTP path killed on a fixed schedule: a real `herald` process sends one email per
//! contact through the bundled SMTP connector to a real SMTP server on loopback, and the server
//! SIGKILLs the daemon each time it has received another `KILL_EVERY` messages (before it
//! answers the last one, so that message is always in the ambiguous window). The daemon is
//! restarted on the same data until every run has ended. Every recipient then has exactly one
//! message, or a run parked on an ambiguous step (with at most one message); none has two.
//!
//! The test prints the kills and the runs parked per kill. `HERALD_BIN=/path/to/herald` runs
//! the same schedule against another build, to compare.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const RECIPIENTS: usize = 150;
const KILL_EVERY: usize = 25;

/// Recipients in the order their messages arrived, the daemon to kill, and the kills made.
#[derive(Clone, Default)]
struct Sink {
    received: Arc<Mutex<Vec<String>>>,
    daemon: Arc<AtomicI32>,
    kills: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Handler {
    sink: Sink,
    rcpt: Vec<String>,
}

impl mailin_embedded::Handler for Handler {
    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.rcpt = to.to_vec();
        mailin_embedded::response::OK
    }

    fn data(&mut self, _buf: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let n = {
            let mut received = self.sink.received.lock().unwrap();
            received.extend(self.rcpt.drain(..));
            received.len()
        };
        if n % KILL_EVERY == 0 {
            let pid = self.sink.daemon.swap(0, Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: kill(2) with SIGKILL on the daemon this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                self.sink.kills.fetch_add(1, Ordering::SeqCst);
            }
        }
        mailin_embedded::response::OK
    }
}

fn start_sink() -> (Sink, u16) {
    let sink = Sink::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut server = mailin_embedded::Server::new(Handler {
        sink: sink.clone(),
        rcpt: Vec::new(),
    });
    server
        .with_name("mx.test")
        .with_ssl(mailin_embedded::SslConfig::None)
        .unwrap()
        .with_num_threads(8)
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (sink, port)
}

fn project(smtp_port: u16) -> TestProject {
    let p = TestProject::new("");
    let toml = format!(
        "[auth]\nwrite_keys = [\"{WRITE_KEY}\"]\nadmin_token = \"{TOKEN}\"\n\n\
         [channels.email]\nplugin = \"bundled:smtp-email\"\nto = \"email\"\n\
         config = {{ from_address = \"hello@example.com\" }}\n\n\
         [channels.email.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nsecurity = \"none\"\n"
    );
    std::fs::write(p.path().join("herald.toml"), toml).unwrap();
    p.workflow(
        "welcome.rhai",
        "workflow(\"welcome\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"email\", \"welcome\");\n}\n",
    );
    p
}

/// Runs with `status`, or `None` while the daemon cannot answer (it may just have been killed).
fn runs_with(c: &Client, status: &str) -> Option<Vec<Value>> {
    let resp = c
        .agent()
        .get(&format!("{}/v1/runs?status={status}&limit=10000", c.base))
        .set("authorization", &format!("Bearer {TOKEN}"))
        .call()
        .ok()?;
    let body: Value = resp.into_json().ok()?;
    body["runs"].as_array().cloned()
}

#[test]
fn killed_every_25_messages_each_recipient_gets_one_message_or_one_ambiguous_step() {
    let (sink, port) = start_sink();
    let p = project(port);
    let mut daemon = Process::start(p.path(), &[]);
    sink.daemon
        .store(daemon.child.id() as i32, Ordering::SeqCst);
    let batch: Vec<Value> = (0..RECIPIENTS)
        .flat_map(|i| {
            [
                json!({"type": "identify", "userId": format!("u{i}"), "traits": {"email": format!("u{i}@example.org")}, "messageId": format!("id-{i}")}),
                json!({"type": "track", "userId": format!("u{i}"), "event": "signup", "messageId": format!("signup-{i}")}),
            ]
        })
        .collect();
    let (s, b) = daemon
        .client
        .ingest("/v1/batch", &json!({ "batch": batch }).to_string());
    assert_eq!(s, 200, "{b}");

    let mut starts = 1;
    loop {
        // Until this daemon is killed, or every run has ended.
        let ended = eventually("a kill or every run ended", || {
            if let Ok(Some(_)) = daemon.child.try_wait() {
                return Some(false);
            }
            let completed = runs_with(&daemon.client, "completed")?.len();
            let parked = runs_with(&daemon.client, "parked")?.len();
            (completed + parked == RECIPIENTS).then_some(true)
        });
        if ended {
            break;
        }
        assert!(starts < 100, "the schedule should end long before this");
        daemon = Process::start(p.path(), &[]);
        sink.daemon
            .store(daemon.child.id() as i32, Ordering::SeqCst);
        starts += 1;
    }
    sink.daemon.store(0, Ordering::SeqCst);

    let c = &daemon.client;
    let mut received: HashMap<String, usize> = HashMap::new();
    for r in sink.received.lock().unwrap().iter() {
        *received.entry(r.clone()).or_default() += 1;
    }
    for (rcpt, n) in &received {
        assert_eq!(*n, 1, "{rcpt} got {n} messages");
    }
    let completed = runs_with(c, "completed").unwrap();
    let parked = runs_with(c, "parked").unwrap();
    let address = |run: &Value| -> String {
        let contact = run["contact"].as_str().unwrap();
        let (s, body) = c.admin_get(&format!("/v1/contacts/{contact}"));
        assert_eq!(s, 200, "{body}");
        body["attributes"]["email"].as_str().unwrap().to_string()
    };
    for run in &completed {
        let to = address(run);
        assert_eq!(received.get(&to), Some(&1), "completed run for {to}");
    }
    let mut parked_delivered = 0;
    for run in &parked {
        let id = run["id"].as_str().unwrap();
        let detail = c.run(id);
        assert_eq!(
            detail["journal"][0]["status"], "ambiguous",
            "a parked run is parked on its ambiguous send: {detail}"
        );
        if received.contains_key(&address(run)) {
            parked_delivered += 1;
        }
    }
    assert_eq!(completed.len() + parked.len(), RECIPIENTS);
    let kills = sink.kills.load(Ordering::SeqCst);
    assert!(kills >= 1, "the schedule killed the daemon at least once");
    println!(
        "SMTP kill schedule: {RECIPIENTS} recipients, a kill every {KILL_EVERY} messages at the sink: \
         {kills} kills, {} runs parked ({:.2} per kill, {parked_delivered} of them delivered), {} completed",
        parked.len(),
        parked.len() as f64 / kills as f64,
        completed.len()
    );
}
