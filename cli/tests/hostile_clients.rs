//! The ingest and management APIs face the open internet: credentials rotate on reload, empty
//! credentials are refused, and a client without a key gets nothing for its bytes.

mod common;

use common::*;
use serde_json::{json, Value};

/// Replace the `[auth]` table of the test project with `auth` (its lines).
fn replace_auth(p: &TestProject, auth: &str) {
    let path = p.path().join("herald.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let (_, rest) = toml.split_once("\n\n").unwrap();
    std::fs::write(&path, format!("[auth]\n{auth}\n\n{rest}")).unwrap();
}

fn set_auth(p: &TestProject, write_key: &str, token: &str) {
    replace_auth(
        p,
        &format!("write_keys = [\"{write_key}\"]\nadmin_token = \"{token}\""),
    );
}

/// POST `body` to `path` with `key` (if any) as the Basic user name.
fn post(base: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    use base64::Engine as _;
    let mut req = ureq::post(&format!("{base}{path}")).set("content-type", "application/json");
    if let Some(k) = key {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{k}:"));
        req = req.set("authorization", &format!("Basic {auth}"));
    }
    match req.send_string(body) {
        Ok(resp) => (resp.status(), resp.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{e}"),
    }
}

fn track_with(base: &str, key: &str) -> u16 {
    let body = json!({"userId": "ada", "event": "viewed"}).to_string();
    post(base, "/v1/track", Some(key), &body).0
}

fn admin_with(base: &str, token: &str, method: &str, path: &str) -> (u16, Value) {
    let r = ureq::request(method, &format!("{base}{path}"))
        .set("authorization", &format!("Bearer {token}"))
        .call();
    let resp = match r {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    (status, resp.into_json().unwrap_or(Value::Null))
}

#[test]
fn a_reload_with_rotated_credentials_refuses_the_old_ones_and_accepts_the_new() {
    let p = TestProject::new("");
    let d = p.start();
    let base = d.url();
    assert_eq!(track_with(&base, WRITE_KEY), 200);

    set_auth(&p, "rotated-write-key", "rotated-admin-token");
    let (s, body) = admin_with(&base, TOKEN, "POST", "/v1/reload");
    assert_eq!(s, 200, "{body}");

    assert_eq!(track_with(&base, WRITE_KEY), 401, "the old write key");
    assert_eq!(
        track_with(&base, "rotated-write-key"),
        200,
        "the new write key"
    );
    assert_eq!(
        admin_with(&base, TOKEN, "GET", "/v1/status").0,
        401,
        "the old token"
    );
    assert_eq!(
        admin_with(&base, "rotated-admin-token", "GET", "/v1/status").0,
        200,
        "the new token"
    );
}

#[test]
fn an_empty_write_key_is_refused_at_start_by_check_and_at_reload() {
    // At start.
    let p = TestProject::new("");
    set_auth(&p, "", TOKEN);
    let started = herald_runtime::daemon::RunningDaemon::start(herald_runtime::daemon::Options {
        project: p.path().to_path_buf(),
        listen: Some("127.0.0.1:0".into()),
        data: None,
        test_clock: true,
        watch: false,
    });
    let Err(e) = started else {
        panic!("a daemon with an empty write key must not start");
    };
    assert!(e.to_string().contains("empty key"), "{e}");

    // By `herald check`.
    let out = std::process::Command::new(herald_bin())
        .args(["check", p.path().to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "check must fail");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("write_keys contains an empty key"), "{text}");

    // At reload: refused, and the keys in force keep working.
    let p = TestProject::new("");
    let d = p.start();
    let base = d.url();
    set_auth(&p, "", TOKEN);
    let (s, body) = admin_with(&base, TOKEN, "POST", "/v1/reload");
    assert_ne!(s, 200, "{body}");
    assert_eq!(track_with(&base, ""), 401, "an empty key is never accepted");
    assert_eq!(
        track_with(&base, WRITE_KEY),
        200,
        "the previous key still works"
    );
}

/// The peak resident memory of a process so far, in MiB (Linux).
fn peak_resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb / 1024
}

fn post_batch(base: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    post(base, "/v1/batch", key, body)
}

#[test]
fn a_batch_context_copied_into_every_item_cannot_blow_up_the_daemon() {
    const LIMIT_MIB: u64 = 400;
    let p = TestProject::new("");
    let daemon = Process::start(p.path(), &[]);
    let base = daemon.client.base.clone();
    let pid = daemon.child.id();
    // 470 KB of context and 400 small items: under the 500 KB request limit, but 188 MB if the
    // context were copied into every item.
    let items: Vec<Value> = (0..400)
        .map(|i| json!({"type": "track", "userId": format!("c{i}"), "event": "e"}))
        .collect();
    let body = json!({"batch": items, "context": {"blob": "x".repeat(470_000)}}).to_string();
    assert!(body.len() < 500 * 1024);
    let before = peak_resident_mib(pid);

    // Without a key, four at once: refused before the body is read.
    let keyless: Vec<_> = (0..4)
        .map(|_| {
            let (base, body) = (base.clone(), body.clone());
            std::thread::spawn(move || post_batch(&base, &body, None))
        })
        .collect();
    for t in keyless {
        let (s, b) = t.join().unwrap();
        assert_eq!(
            (s, b["code"].as_str()),
            (401, Some("missing_write_key")),
            "{b}"
        );
    }
    // With the key, three at once: the context counts against each item's 32 KB and against
    // the request's 4 MB once copied, so the request is refused as a whole.
    let keyed: Vec<_> = (0..3)
        .map(|_| {
            let (base, body) = (base.clone(), body.clone());
            std::thread::spawn(move || post_batch(&base, &body, Some(WRITE_KEY)))
        })
        .collect();
    for t in keyed {
        let (s, b) = t.join().unwrap();
        assert_eq!(
            (s, b["code"].as_str()),
            (413, Some("payload_too_large")),
            "{b}"
        );
    }
    // One item of 40 KB context: the item is dropped, the small one beside it accepted.
    let small = json!({"batch": [
        {"type": "track", "userId": "s1", "event": "e"},
        {"type": "track", "userId": "s2", "event": "e", "context": {"own": true}},
    ], "context": {"blob": "y".repeat(40_000)}})
    .to_string();
    let (s, b) = post_batch(&base, &small, Some(WRITE_KEY));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["rejections"][0]["code"], "message_too_large", "{b}");
    assert_eq!(b["accepted"], 1, "{b}");
    let after = peak_resident_mib(pid);
    assert!(
        after < LIMIT_MIB,
        "peak resident memory {after} MiB (before the requests: {before} MiB)"
    );
    // Nothing of it was stored, and the daemon serves as before.
    let (s, _) = daemon.client.admin_get("/v1/contacts/c1");
    assert_eq!(s, 404);
    let (s, _) = daemon.client.admin_get("/v1/contacts/s1");
    assert_eq!(s, 404, "the item too large with its context was dropped");
    daemon.client.track("ada", "fine", json!({}));
}

/// Open `n` connections that send half a request's headers and then nothing.
fn half_open(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write as _;
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /v1/track HTTP/1.1\r\nHost: herald\r\n")
                .unwrap();
            s
        })
        .collect()
}

#[test]
fn clients_holding_every_connection_leave_room_for_the_operator_and_health_checks() {
    let p = TestProject::new(
        "[server]\nmax_connections = 40\nreserved_connections = 4\nheader_timeout_ms = 600000\n",
    );
    let d = p.start();
    let addr = d.url().trim_start_matches("http://").to_string();
    // Clients take every connection that is not reserved.
    let slow = half_open(&addr, 36);
    let c = Client::new(d.url());
    assert_eq!(c.get("/healthz").0, 200, "a health check still gets in");
    assert_eq!(c.admin_get("/v1/status").0, 200, "so does the operator");
    let (s, b) = c.ingest(
        "/v1/track",
        &json!({"userId": "ada", "event": "e"}).to_string(),
    );
    assert_eq!(
        s, 503,
        "a client on a reserved connection is told to retry: {b}"
    );
    // Clients that take the reserved connections too lose them within a second.
    let more = half_open(&addr, 20);
    eventually("the operator gets in again", || {
        let r = c.agent().get(&format!("{}/healthz", c.base)).call().ok()?;
        (r.status() == 200).then_some(())
    });
    drop(more);
    drop(slow);
    // Once they are gone, clients are served again (until the server has seen them go, a
    // connection over the cap may still be refused or reset: asked again).
    eventually("clients are served again", || {
        let (s, _) = c.try_ingest(
            "/v1/track",
            &json!({"userId": "ada", "event": "e"}).to_string(),
        )?;
        (s == 200).then_some(())
    });
}

#[test]
fn connections_that_never_finish_their_headers_are_closed() {
    use std::io::Read as _;
    let p = TestProject::new("[server]\nheader_timeout_ms = 300\n");
    let d = p.start();
    let addr = d.url().trim_start_matches("http://").to_string();
    for mut s in half_open(&addr, 20) {
        s.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            // Closed, possibly after a 408 for the request that never came.
            Ok(n) => assert!(
                n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert_eq!(Client::new(d.url()).get("/healthz").0, 200);
}

fn post_with(base: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    post(base, path, Some(key), &body.to_string())
}

/// A project with a client key for browsers and a server key.
fn two_kinds_of_key() -> TestProject {
    let p = TestProject::new("");
    replace_auth(
        &p,
        &format!("client_keys = [\"browser-key\"]\nserver_keys = [\"server-key\"]\nadmin_token = \"{TOKEN}\""),
    );
    p
}

#[test]
fn a_client_key_cannot_send_the_events_a_channel_reports() {
    let p = two_kinds_of_key();
    let d = p.start();
    let base = d.url();
    let opened =
        json!({"userId": "ada", "event": "email_opened", "properties": {"campaign": "welcome"}});
    let (s, b) = post_with(&base, "/v1/track", "browser-key", opened.clone());
    assert_eq!(
        (s, b["code"].as_str()),
        (403, Some("reserved_event")),
        "{b}"
    );
    // In a batch the item is dropped and the rest accepted.
    let (s, b) = post_with(
        &base,
        "/v1/batch",
        "browser-key",
        json!({"batch": [
            {"type": "track", "userId": "ada", "event": "viewed_pricing"},
            {"type": "track", "userId": "ada", "event": "sms_delivered"},
        ]}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["accepted"].clone(), b["rejected"].clone()),
        (json!(1), json!(1)),
        "{b}"
    );
    assert_eq!(b["rejections"][0]["index"], 1, "{b}");
    assert_eq!(b["rejections"][0]["code"], "reserved_event", "{b}");
    // A server key may (a provider integration, a back end).
    let (s, b) = post_with(&base, "/v1/track", "server-key", opened);
    assert_eq!(s, 200, "{b}");
    let c = Client::new(base);
    let (_, contact) = c.admin_get("/v1/contacts/ada");
    let names: Vec<&str> = contact["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(names, ["email_opened", "viewed_pricing"], "{contact}");
}

#[test]
fn a_client_key_cannot_take_over_a_known_user_with_alias() {
    let p = two_kinds_of_key();
    let d = p.start();
    let base = d.url();
    let (s, b) = post_with(
        &base,
        "/v1/identify",
        "server-key",
        json!({"userId": "victim", "traits": {"email": "victim@example.org"}}),
    );
    assert_eq!(s, 200, "{b}");
    let (s, _) = post_with(
        &base,
        "/v1/identify",
        "browser-key",
        json!({"userId": "mallory"}),
    );
    assert_eq!(s, 200);
    let (s, b) = post_with(
        &base,
        "/v1/alias",
        "browser-key",
        json!({"previousId": "victim", "userId": "mallory"}),
    );
    assert_eq!((s, b["code"].as_str()), (403, Some("merge_refused")), "{b}");
    let c = Client::new(base.clone());
    let (s, victim) = c.admin_get("/v1/contacts/victim");
    assert_eq!(s, 200);
    assert_eq!(victim["attributes"]["email"], "victim@example.org");
    let (_, mallory) = c.admin_get("/v1/contacts/mallory");
    assert_ne!(victim["id"], mallory["id"], "still two contacts");
    // Tying an anonymous visitor to a user is what a browser does; that stays allowed.
    let (s, b) = post_with(
        &base,
        "/v1/alias",
        "browser-key",
        json!({"previousId": "anon-7", "userId": "mallory"}),
    );
    assert_eq!(s, 200, "{b}");
    // A server key may merge known users.
    let (s, b) = post_with(
        &base,
        "/v1/alias",
        "server-key",
        json!({"previousId": "victim", "userId": "mallory"}),
    );
    assert_eq!(s, 200, "{b}");
}

#[test]
fn an_id_merged_away_many_times_still_resolves_in_one_step() {
    const HOPS: usize = 20;
    let p = TestProject::new("");
    let d = p.start();
    let c = Client::new(d.url());
    let mut first_ids = Vec::new();
    for i in 0..=HOPS {
        c.identify(&format!("u{i}"), json!({"n": i}));
        let (s, contact) = c.admin_get(&format!("/v1/contacts/u{i}"));
        assert_eq!(s, 200);
        first_ids.push(contact["id"].as_str().unwrap().to_string());
    }
    // u0 into u1, that into u2, … : a chain of HOPS merges.
    for i in 0..HOPS {
        let (s, b) = c.ingest(
            "/v1/alias",
            &json!({"previousId": format!("u{i}"), "userId": format!("u{}", i + 1)}).to_string(),
        );
        assert_eq!(s, 200, "{b}");
    }
    let (_, survivor) = c.admin_get(&format!("/v1/contacts/u{HOPS}"));
    let survivor_id = survivor["id"].as_str().unwrap().to_string();
    for (i, id) in first_ids.iter().enumerate() {
        let (s, contact) = c.admin_get(&format!("/v1/contacts/{id}"));
        assert_eq!(s, 200, "the contact first created for u{i}: {contact}");
        assert_eq!(contact["id"], survivor_id.as_str(), "u{i}");
    }
    // An event sent under the oldest id lands on the survivor.
    c.track("u0", "late", json!({}));
    let (_, contact) = c.admin_get(&format!("/v1/contacts/{}", first_ids[0]));
    assert_eq!(contact["recent_events"][0]["event"], "late", "{contact}");
}

#[test]
fn a_message_past_a_contact_limit_is_dropped_and_the_rest_of_its_batch_is_accepted() {
    let p = TestProject::new("[limits]\nmax_traits = 3\nmax_anonymous_ids = 2\nmax_groups = 1\n");
    let d = p.start();
    let c = Client::new(d.url());
    let body = json!({"batch": [
        {"type": "identify", "userId": "ada", "anonymousId": "phone", "traits": {"a": 1, "b": 2}},
        // Two new traits on top of two: past max_traits = 3.
        {"type": "identify", "userId": "ada", "traits": {"c": 3, "d": 4}},
        // Replacing one and removing one stays within it.
        {"type": "identify", "userId": "ada", "traits": {"a": 10, "b": null, "c": 3}},
        {"type": "track", "userId": "ada", "anonymousId": "laptop", "event": "viewed"},
        // A third device: past max_anonymous_ids = 2.
        {"type": "track", "userId": "ada", "anonymousId": "tablet", "event": "viewed"},
        {"type": "group", "userId": "ada", "groupId": "acme"},
        {"type": "group", "userId": "ada", "groupId": "globex"},
    ]})
    .to_string();
    let (s, b) = c.ingest("/v1/batch", &body);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["accepted"], 4, "{b}");
    assert_eq!(b["rejected"], 3, "{b}");
    let dropped: Vec<(u64, &str)> = b["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        dropped,
        [
            (1, "contact_limit"),
            (4, "contact_limit"),
            (6, "contact_limit")
        ]
    );
    assert!(
        b["rejections"][0]["message"]
            .as_str()
            .unwrap()
            .contains("max_traits"),
        "{b}"
    );
    let (_, contact) = c.admin_get("/v1/contacts/ada");
    assert_eq!(contact["attributes"], json!({"a": 10, "c": 3}), "{contact}");
    assert_eq!(
        contact["anonymous_ids"],
        json!(["phone", "laptop"]),
        "{contact}"
    );
    assert_eq!(contact["groups"], json!(["acme"]), "{contact}");
    // Nothing of a dropped message was stored: four events, not seven.
    let events = contact["recent_events"].as_array().unwrap().len();
    assert_eq!(events, 4, "{contact}");

    // A single call past a limit is refused as a whole, with the reason.
    let (s, b) = c.ingest(
        "/v1/identify",
        &json!({"userId": "ada", "traits": {"e": 5, "f": 6}}).to_string(),
    );
    assert_eq!((s, b["code"].as_str()), (400, Some("contact_limit")), "{b}");
}

#[test]
fn a_limit_of_zero_is_refused_by_check() {
    let p = TestProject::new("[limits]\nmax_traits = 0\n");
    let out = std::process::Command::new(herald_bin())
        .args(["check"])
        .arg(p.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("max_traits = 0"), "{text}");
}

#[test]
fn a_large_csv_import_does_not_grow_the_daemon_with_the_file() {
    const FILE_MIB: usize = 64;
    const LIMIT_MIB: u64 = 24;
    let p = TestProject::new("");
    let daemon = Process::start(p.path(), &[]);
    let pid = daemon.child.id();
    // Rows without an id: refused as they are read, so the file's size is all there is.
    let row = ",someone@example.com,a value long enough to make the row about a hundred bytes\n";
    let mut csv = String::with_capacity(FILE_MIB << 20);
    csv.push_str("user_id,email,note\n");
    while csv.len() < FILE_MIB << 20 {
        csv.push_str(row);
    }
    let rows = (csv.len() - 19) / row.len();
    let before = peak_resident_mib(pid);
    let (status, report) = respond(
        daemon
            .client
            .agent()
            .post(&format!("{}/v1/import/contacts", daemon.client.base))
            .set("authorization", &format!("Bearer {TOKEN}"))
            .set("content-type", "text/csv")
            .send_string(&csv),
    );
    let after = peak_resident_mib(pid);
    eprintln!("peak resident: {before} MiB before, {after} MiB after a {FILE_MIB} MB import");
    assert_eq!(status, 207, "{report}");
    assert_eq!(report["rejected_count"], rows, "{report}");
    assert_eq!(report["rejected"].as_array().unwrap().len(), 1000);
    assert!(
        after.saturating_sub(before) < LIMIT_MIB,
        "a {FILE_MIB} MB import grew the daemon's peak from {before} MiB to {after} MiB"
    );
}
