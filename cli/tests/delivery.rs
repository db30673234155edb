//! The delivery pipeline: sends run concurrently per channel within its limits, lanes are
//! served in order, a slow or failing channel holds up nothing else, pauses hold sends durably,
//! and a crash re-queues sends that never started instead of calling them ambiguous.
//!
//! Limits are counted at the receiver (a loopback HTTP server that holds requests until the
//! test lets them go), never timed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};

use common::*;
use serde_json::{json, Value};

/// A loopback HTTP receiver that holds every request until released, counting how many it
/// holds at once.
struct Gate {
    url: String,
    state: Arc<(Mutex<GateState>, Condvar)>,
}

#[derive(Default)]
struct GateState {
    /// Requests answered so far may go through without waiting.
    open: bool,
    /// Requests let through one by one (`release`), on top of `open`.
    tickets: usize,
    held: usize,
    most_held: usize,
    /// Bodies in arrival order.
    bodies: Vec<Value>,
    /// Status to answer with.
    status: u16,
}

impl Gate {
    fn start(open: bool) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new((
            Mutex::new(GateState {
                open,
                status: 200,
                ..GateState::default()
            }),
            Condvar::new(),
        ));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, shared));
            }
        });
        Gate { url, state }
    }

    fn with<R>(&self, f: impl FnOnce(&mut GateState) -> R) -> R {
        let (lock, cv) = &*self.state;
        let r = f(&mut lock.lock().unwrap());
        cv.notify_all();
        r
    }

    fn held(&self) -> usize {
        self.with(|s| s.held)
    }

    fn open(&self) {
        self.with(|s| s.open = true);
    }

    fn bodies(&self) -> Vec<Value> {
        self.with(|s| s.bodies.clone())
    }
}

fn serve(stream: std::net::TcpStream, shared: Arc<(Mutex<GateState>, Condvar)>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut len = 0usize;
        let mut first = true;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (lock, cv) = &*shared;
        let status = {
            let mut s = lock.lock().unwrap();
            s.bodies
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            s.held += 1;
            s.most_held = s.most_held.max(s.held);
            cv.notify_all();
            while !s.open && s.tickets == 0 {
                s = cv.wait(s).unwrap();
            }
            if !s.open {
                s.tickets -= 1;
            }
            s.held -= 1;
            s.status
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\nretry-after: 1\r\n\r\n{{}}"
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn hook_project(url: &str, settings: &str) -> TestProject {
    let p = TestProject::new(&format!(
        "[channels.hook]\ntype = \"webhook\"\nurl = \"{url}/in\"\n{settings}\n"
    ));
    p.workflow(
        "notify.rhai",
        "workflow(\"notify\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    action(\"hook\", \"event\", #{ n: trigger.properties.n });\n}\n",
    );
    p
}

fn channel(c: &Client, name: &str) -> Value {
    let (status, body) = c.admin_get("/v1/channels");
    assert_eq!(status, 200, "{body}");
    body["channels"][name].clone()
}

fn completed(c: &Client, workflow: &str) -> usize {
    let (_, runs) = c.admin_get(&format!("/v1/runs?workflow={workflow}&status=completed"));
    runs["runs"].as_array().map_or(0, Vec::len)
}

#[test]
fn no_more_sends_are_in_flight_than_the_channel_concurrency() {
    let gate = Gate::start(false);
    let p = hook_project(&gate.url, "concurrency = 4");
    let d = p.start();
    let c = Client::new(d.url());
    for n in 0..20 {
        c.track(&format!("u{n}"), "go", json!({"n": n}));
    }
    // Four reach the receiver and are held there; the other sixteen wait in the queue.
    eventually("four sends are held at the receiver", || {
        (gate.held() == 4).then_some(())
    });
    eventually("the rest are queued", || {
        let ch = channel(&c, "hook");
        (ch["queued"]["normal"] == 16 && ch["in_flight"] == 4).then_some(())
    });
    assert_eq!(gate.held(), 4, "the limit holds while the queue is full");
    gate.open();
    eventually("every run completes", || {
        (completed(&c, "notify") == 20).then_some(())
    });
    assert_eq!(gate.with(|s| s.most_held), 4);
    assert_eq!(
        gate.bodies().len(),
        20,
        "each send reached the receiver once"
    );
    let ch = channel(&c, "hook");
    assert_eq!(ch["succeeded"], 20);
    assert_eq!(ch["concurrency"], 4);
    assert!(
        ch["mean_ambiguous_window_ms"].as_f64().unwrap() > 0.0,
        "the window from dispatch mark to recorded result is measured: {ch}"
    );
}

#[test]
fn a_transactional_send_overtakes_queued_bulk_sends() {
    let gate = Gate::start(true);
    let p = hook_project(&gate.url, "concurrency = 1");
    p.workflow(
        "notify.rhai",
        "workflow(\"notify\").on_event(\"go\").reentry(\"always\").priority(\"bulk\");\nfn run(contact, trigger) {\n    action(\"hook\", \"event\", #{ n: trigger.properties.n });\n}\n",
    );
    p.workflow(
        "reset.rhai",
        "workflow(\"reset\").on_event(\"reset_requested\").reentry(\"always\").priority(\"transactional\");\nfn run(contact, trigger) {\n    action(\"hook\", \"event\", #{ n: \"reset\" });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    let (status, body) = c.admin_post("/v1/channels/hook/pause", json!({}));
    assert_eq!(status, 200, "{body}");
    for n in 0..5 {
        c.track(&format!("u{n}"), "go", json!({"n": n}));
    }
    eventually("the bulk sends are queued", || {
        (channel(&c, "hook")["queued"]["bulk"] == 5).then_some(())
    });
    c.track("ada", "reset_requested", json!({}));
    eventually("the reset is queued", || {
        (channel(&c, "hook")["queued"]["transactional"] == 1).then_some(())
    });
    assert!(gate.bodies().is_empty(), "a paused channel starts nothing");
    let (status, _) = c.admin_post("/v1/channels/hook/resume", json!({}));
    assert_eq!(status, 200);
    eventually("every run completes", || {
        (completed(&c, "notify") == 5 && completed(&c, "reset") == 1).then_some(())
    });
    let order: Vec<Value> = gate
        .bodies()
        .iter()
        .map(|b| b["payload"]["n"].clone())
        .collect();
    assert_eq!(order[0], "reset", "{order:?}");
    assert_eq!(order.len(), 6);
}

#[test]
fn a_channel_that_keeps_failing_holds_up_no_other_channel() {
    let good = Gate::start(true);
    let bad = Gate::start(true);
    bad.with(|s| s.status = 503);
    let p = TestProject::new(&format!(
        "[engine]\nmax_attempts = 100\nbackoff_ms = 50\n\n\
         [channels.good]\ntype = \"webhook\"\nurl = \"{}/in\"\n\n\
         [channels.bad]\ntype = \"webhook\"\nurl = \"{}/in\"\n",
        good.url, bad.url
    ));
    p.workflow(
        "good.rhai",
        "workflow(\"good\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    action(\"good\", \"event\", #{});\n}\n",
    );
    p.workflow(
        "bad.rhai",
        "workflow(\"bad\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    action(\"bad\", \"event\", #{});\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    for n in 0..10 {
        c.track(&format!("u{n}"), "go", json!({}));
    }
    eventually("the good channel's runs complete", || {
        (completed(&c, "good") == 10).then_some(())
    });
    eventually("the bad channel's runs are retrying", || {
        (channel(&c, "bad")["failed"].as_u64().unwrap_or(0) >= 10).then_some(())
    });
    assert_eq!(completed(&c, "bad"), 0);
    assert_eq!(good.bodies().len(), 10);
}

#[test]
fn a_provider_asking_to_slow_down_is_heard_and_the_send_goes_out_later() {
    let gate = Gate::start(true);
    gate.with(|s| s.status = 429);
    let p = hook_project(&gate.url, "concurrency = 8");
    let d = p.start();
    let c = Client::new(d.url());
    c.track("ada", "go", json!({"n": 1}));
    eventually("the provider refused the send", || {
        (channel(&c, "hook")["throttled"] == 1).then_some(())
    });
    let ch = channel(&c, "hook");
    assert_eq!(ch["allowance"], 4, "half the concurrency: {ch}");
    gate.with(|s| s.status = 200);
    let run = c.only_run("ada");
    let r = c.run(run["id"].as_str().unwrap());
    assert_eq!(r["journal"][0]["status"], "retrying", "{r}");
    // The retry waits for the provider's Retry-After (1 s) and the backoff, on the engine's
    // clock.
    c.advance(60_000);
    let r = c.run_reaches(run["id"].as_str().unwrap(), "completed", 1);
    assert_eq!(r["journal"][0]["attempts"], 2);
    assert_eq!(gate.bodies().len(), 2);
}

#[test]
fn a_pause_holds_sends_across_a_crash_and_none_of_them_is_ambiguous() {
    // The outbox channel does not honour idempotency keys: a send whose call may have started
    // would be parked as ambiguous after a crash. Sends that never started are not.
    let p = TestProject::new("");
    p.workflow(
        "welcome.rhai",
        "workflow(\"welcome\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"email\", \"welcome\");\n}\n",
    );
    let first = Process::start(p.path(), &[]);
    let c = first.client.clone();
    let (status, body) = c.admin_post("/v1/channels/email/pause", json!({}));
    assert_eq!(status, 200, "{body}");
    for n in 0..5 {
        c.identify(
            &format!("u{n}"),
            json!({"email": format!("u{n}@example.com")}),
        );
        c.track(&format!("u{n}"), "signup", json!({}));
    }
    eventually("five sends are queued", || {
        (channel(&c, "email")["queued"]["normal"] == 5).then_some(())
    });
    first.kill9();
    assert!(p.outbox("email").is_empty());

    let second = Process::start(p.path(), &[]);
    let c = second.client.clone();
    eventually("the queue is back, still paused", || {
        let ch = channel(&c, "email");
        (ch["paused"] == true && ch["queued"]["normal"] == 5).then_some(())
    });
    assert!(p.outbox("email").is_empty(), "paused across the restart");
    let (status, _) = c.admin_post("/v1/channels/email/resume", json!({}));
    assert_eq!(status, 200);
    eventually("all five are sent", || {
        (completed(&c, "welcome") == 5).then_some(())
    });
    assert_eq!(p.outbox("email").len(), 5, "each exactly once");
    let (_, parked) = c.admin_get("/v1/runs?status=parked");
    assert_eq!(parked["runs"], json!([]));
    assert!(!second.log_text().contains("ambiguous window"));
    assert!(second
        .log_text()
        .contains("re-queueing sends that had not started"));
}

#[test]
fn runs_parked_for_an_operator_stay_quiet_at_the_next_start() {
    // A crash between dispatch and result parks the run as ambiguous once; later starts do
    // not warn about it again or activate it.
    let p = TestProject::new("");
    p.workflow(
        "welcome.rhai",
        "workflow(\"welcome\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"email\", \"welcome\");\n}\n",
    );
    let first = Process::start(p.path(), &[("HERALD_FAILPOINT", "after_intent")]);
    first
        .client
        .identify("ada", json!({"email": "ada@example.com"}));
    let _ = first.client.try_ingest(
        "/v1/track",
        &json!({"userId": "ada", "event": "signup"}).to_string(),
    );
    first.wait_dead();

    let second = Process::start(p.path(), &[]);
    let run = eventually("the run is parked", || {
        let runs = second.client.runs_of("ada");
        runs.first().filter(|r| r["status"] == "parked").cloned()
    });
    assert!(second.log_text().contains("ambiguous window"));
    let activations = second.client.run(run["id"].as_str().unwrap())["activations"].clone();
    drop(second);

    let third = Process::start(p.path(), &[]);
    eventually("the third start serves", || {
        (third.client.get("/healthz").0 == 200).then_some(())
    });
    let r = third.client.run(run["id"].as_str().unwrap());
    assert_eq!(r["status"], "parked");
    assert_eq!(r["activations"], activations, "not activated again");
    let log = third.log_text();
    assert!(!log.contains("ambiguous window"), "{log}");
    assert!(log.contains("wait for an operator"), "{log}");
}

#[test]
fn ambiguous_sends_of_a_channel_are_settled_in_bulk_after_a_dry_run() {
    let p = TestProject::new("");
    p.workflow(
        "welcome.rhai",
        "workflow(\"welcome\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"email\", \"welcome\");\n}\n",
    );
    // Three crashes, each right after a send was marked dispatched: three runs whose sends
    // may or may not have happened (the outbox channel cannot tell), parked for an operator.
    for n in 0..3 {
        let p = Process::start(p.path(), &[("HERALD_FAILPOINT", "after_intent")]);
        p.client.identify(
            &format!("u{n}"),
            json!({"email": format!("u{n}@example.com")}),
        );
        let _ = p.client.try_ingest(
            "/v1/track",
            &json!({"userId": format!("u{n}"), "event": "signup"}).to_string(),
        );
        p.wait_dead();
    }
    let d = Process::start(p.path(), &[]);
    let c = d.client.clone();
    eventually("three runs are parked", || {
        let (_, runs) = c.admin_get("/v1/runs?status=parked");
        (runs["runs"].as_array().map_or(0, Vec::len) == 3).then_some(())
    });
    assert!(
        p.outbox("email").is_empty(),
        "the kills came before each call"
    );

    let (status, dry) = c.admin_post(
        "/v1/resolve",
        json!({"channel": "email", "delivered": false, "dry_run": true}),
    );
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["matched"].clone(), dry["resolved"].clone()),
        (json!(3), json!(0))
    );
    let (_, none) = c.admin_post(
        "/v1/resolve",
        json!({"channel": "sms", "delivered": false, "dry_run": true}),
    );
    assert_eq!(none["matched"], 0, "another channel matches nothing");
    let (_, later) = c.admin_post(
        "/v1/resolve",
        json!({"channel": "email", "since": i64::MAX / 2, "delivered": false, "dry_run": true}),
    );
    assert_eq!(later["matched"], 0, "the time range applies");
    let (status, done) = c.admin_post(
        "/v1/resolve",
        json!({"channel": "email", "delivered": false}),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["resolved"], 3, "{done}");
    eventually("the three are sent again and complete", || {
        (completed(&c, "welcome") == 3).then_some(())
    });
    assert_eq!(p.outbox("email").len(), 3);
}

#[test]
fn a_send_that_failed_for_good_is_listed_as_a_dead_letter_and_sent_again() {
    let recorder = Recorder::start(vec![400, 200]);
    let p = hook_project(&recorder.url, "");
    let d = p.start();
    let c = Client::new(d.url());
    c.track("ada", "go", json!({"n": 1}));
    let run = c.only_run("ada");
    let id = run["id"].as_str().unwrap().to_string();
    c.run_reaches(&id, "failed", 1);
    let (status, list) = c.admin_get("/v1/dead-letters?channel=hook");
    assert_eq!(status, 200, "{list}");
    let letters = list["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{list}");
    assert_eq!(letters[0]["run"], id.as_str());
    assert_eq!(letters[0]["channel"], "hook");
    assert!(letters[0]["error"].as_str().unwrap().contains("HTTP 400"));
    let (_, other) = c.admin_get("/v1/dead-letters?channel=email");
    assert_eq!(other["dead_letters"], json!([]));

    let (status, body) = c.admin_post(&format!("/v1/runs/{id}/retry"), json!({}));
    assert_eq!(status, 200, "{body}");
    c.run_reaches(&id, "completed", 1);
    assert_eq!(recorder.count(), 2);
    let (_, list) = c.admin_get("/v1/dead-letters");
    assert_eq!(list["dead_letters"], json!([]));
    let (status, again) = c.admin_post(&format!("/v1/runs/{id}/retry"), json!({}));
    assert_eq!(status, 422, "a completed run is not a dead letter: {again}");
}

#[test]
fn a_dead_letter_sent_again_counts_as_sent_instead_of_failed_and_the_rebuild_agrees() {
    let recorder = Recorder::start(vec![400, 200]);
    let p = hook_project(&recorder.url, "");
    p.template("note", "---\nsubject: Note\n---\nHello.");
    p.workflow(
        "ping.rhai",
        "workflow(\"ping\").on_event(\"ping\");\nfn run(contact, trigger) {\n    send(\"hook\", \"note\");\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.track("bea", "ping", json!({}));
    let run = c.only_run("bea");
    let id = run["id"].as_str().unwrap().to_string();
    c.run_reaches(&id, "failed", 1);
    let counts = |c: &Client| {
        let (s, r) = c.admin_get("/v1/reports/workflows/ping");
        assert_eq!(s, 200, "{r}");
        r["totals"]["counts"].clone()
    };
    eventually("the failure is counted", || {
        (counts(&c)["failed"] == 1).then_some(())
    });
    let (status, body) = c.admin_post(&format!("/v1/runs/{id}/retry"), json!({}));
    assert_eq!(status, 200, "{body}");
    c.run_reaches(&id, "completed", 1);
    let n = eventually(
        "the send is counted as sent, the failure taken back",
        || {
            let n = counts(&c);
            (n["sent"] == 1).then_some(n)
        },
    );
    assert_eq!(n["failed"], 0, "{n}");
    assert_eq!(recorder.count(), 2);
    // Counted as the journal tells it: a rebuild finds the same numbers.
    let (s, rebuilt) = c.admin_post("/v1/analytics/rebuild", json!({}));
    assert_eq!(s, 200, "{rebuilt}");
    assert_eq!(rebuilt["differences"], json!([]), "{rebuilt}");
}

#[test]
fn a_call_the_provider_accepts_after_the_runs_goal_is_recorded_as_sent() {
    let gate = Gate::start(false);
    let p = hook_project(&gate.url, "");
    p.workflow(
        "offer.rhai",
        "workflow(\"offer\").on_event(\"browsed\").goal(\"bought\", days(1));\n\
         fn run(contact, trigger) {\n    action(\"hook\", \"event\", #{ n: 1 });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.track("o1", "browsed", json!({}));
    // The call is at the provider, held there; meanwhile the goal ends the run.
    eventually("the call is at the provider", || {
        (gate.held() == 1).then_some(())
    });
    c.track("o1", "bought", json!({}));
    eventually("the run converted", || {
        (c.runs_of("o1")[0]["status"] == "converted").then_some(())
    });
    gate.open();
    let run = c.runs_of("o1")[0]["id"].as_str().unwrap().to_string();
    // The provider accepted it: the step says so (it counts), and the run stays converted.
    let detail = eventually("the call's result is recorded", || {
        let (_, r) = c.admin_get(&format!("/v1/runs/{run}"));
        (r["journal"][0]["status"] == "done").then_some(r)
    });
    assert_eq!(detail["journal"][0]["result"]["status"], "sent", "{detail}");
    assert_eq!(detail["status"], "converted", "{detail}");
    assert_eq!(gate.bodies().len(), 1);
}
