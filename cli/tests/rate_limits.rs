//! `[server.rate_limits]` over real sockets: a client over its per-address limit gets 429 with
//! `Retry-After` and nothing of its request is stored, while other clients and the server key
//! go on; `X-Forwarded-For` counts only from a trusted proxy; a reload applies new limits;
//! `herald check` refuses limits that cannot work.
//!
//! The limits refill once a day, so nothing here depends on how fast the machine is: a
//! bucket emptied by a test stays empty for the test's whole life.

mod common;

use common::*;
use serde_json::{json, Value};

const CLIENT_KEY: &str = "browser-key";
const SERVER_KEY: &str = "server-key";

/// A project with a client and a server key, and `rate_limits` as `[server.rate_limits]`.
fn project(rate_limits: &str) -> TestProject {
    let p = TestProject::new(&format!("[server.rate_limits]\n{rate_limits}\n"));
    let path = p.path().join("herald.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    let (_, rest) = toml.split_once("\n\n").unwrap();
    std::fs::write(
        &path,
        format!("[auth]\nclient_keys = [\"{CLIENT_KEY}\"]\nserver_keys = [\"{SERVER_KEY}\"]\nadmin_token = \"{TOKEN}\"\n\n{rest}"),
    )
    .unwrap();
    p
}

/// What a POST got back: status, `Retry-After`, JSON body.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// POST `body` to `path` with `key` as the Basic user name (none when empty), and an
/// `X-Forwarded-For` header when `forwarded_for` is given. A fresh connection each time.
fn post(base: &str, path: &str, key: &str, forwarded_for: Option<&str>, body: Value) -> Answer {
    use base64::Engine as _;
    let agent = ureq::AgentBuilder::new()
        .timeout(HANG_GUARD)
        .max_idle_connections(0)
        .build();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    let mut req = agent
        .post(&format!("{base}{path}"))
        .set("content-type", "application/json");
    if !key.is_empty() {
        req = req.set("authorization", &format!("Basic {auth}"));
    }
    if let Some(xff) = forwarded_for {
        req = req.set("x-forwarded-for", xff);
    }
    let resp = match req.send_string(&body.to_string()) {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("POST {path}: {e}"),
    };
    Answer {
        status: resp.status(),
        retry_after: resp.header("retry-after").map(str::to_string),
        body: resp.into_json().unwrap_or(Value::Null),
    }
}

fn track(base: &str, key: &str, forwarded_for: Option<&str>, user: &str) -> Answer {
    post(
        base,
        "/v1/track",
        key,
        forwarded_for,
        json!({"userId": user, "event": "viewed_pricing"}),
    )
}

/// The value of one sample of `/metrics`, 0 when absent.
fn metric(c: &Client, sample: &str) -> f64 {
    c.get_text("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Asserts a 429 in the ingest error shape, with a `Retry-After` within the refill period.
fn assert_limited(a: &Answer, limit: &str) {
    assert_eq!(a.status, 429, "{}", a.body);
    let retry: u64 = a
        .retry_after
        .as_deref()
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=86_400).contains(&retry), "Retry-After: {retry}");
    assert_eq!(a.body["success"], false, "{}", a.body);
    assert_eq!(a.body["code"], "rate_limited", "{}", a.body);
    assert_eq!(a.body["error"]["code"], "rate_limited", "{}", a.body);
    let message = a.body["message"].as_str().unwrap_or_default();
    assert!(message.contains(limit), "{message}");
}

const DAILY_THREE: &str = "client_address = { requests = 1, per_seconds = 86400, burst = 3 }";

#[test]
fn a_client_over_its_address_limit_gets_429_while_other_addresses_and_the_server_key_get_through() {
    // Loopback is the trusted proxy here: X-Forwarded-For stands for the client's address.
    let p = project(&format!(
        "{DAILY_THREE}\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]"
    ));
    let d = p.start();
    let base = d.url();
    let c = Client::new(base.clone());
    let abuser = Some("203.0.113.66");
    for i in 0..3 {
        let a = track(&base, CLIENT_KEY, abuser, &format!("visitor-{i}"));
        assert_eq!(a.status, 200, "request {i} is within the burst: {}", a.body);
        assert!(a.retry_after.is_none());
    }

    // Over the limit: refused before anything is read or stored, single or batch.
    let a = track(&base, CLIENT_KEY, abuser, "refused-visitor");
    assert_limited(&a, "client_address");
    let a = post(
        &base,
        "/v1/batch",
        CLIENT_KEY,
        abuser,
        json!({"batch": [{"type": "identify", "userId": "refused-batch", "traits": {"plan": "pro"}}]}),
    );
    assert_limited(&a, "client_address");
    for refused in ["refused-visitor", "refused-batch"] {
        let (s, b) = c.admin_get(&format!("/v1/contacts/{refused}"));
        assert_eq!(s, 404, "nothing of a refused request is stored: {b}");
    }

    // Another address (what the proxy saw, appended to what the client claimed), the proxy's
    // own requests, and the server key from the same address all go on.
    let a = track(
        &base,
        CLIENT_KEY,
        Some("203.0.113.66, 198.51.100.7"),
        "neighbour",
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(track(&base, CLIENT_KEY, None, "via-proxy").status, 200);
    let a = track(&base, SERVER_KEY, abuser, "backend");
    assert_eq!(a.status, 200, "{}", a.body);
    let (s, b) = c.admin_get("/v1/contacts/neighbour");
    assert_eq!(s, 200, "{b}");
    // The abuser is still refused: the others did not refill its bucket.
    assert_limited(
        &track(&base, CLIENT_KEY, abuser, "refused-again"),
        "client_address",
    );

    // The management API and the probes are not limited.
    assert_eq!(c.admin_get("/v1/status").0, 200);
    assert_eq!(c.get("/healthz").0, 200);
    assert_eq!(
        metric(
            &c,
            "herald_ingest_rate_limited_total{limit=\"client_address\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(&c, "herald_ingest_rejected_total{reason=\"rate_limited\"}"),
        3.0
    );
    assert!(metric(&c, "herald_rate_limit_addresses") >= 3.0);
}

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    // Loopback is not a trusted proxy: every request counts against the peer, 127.0.0.1,
    // whatever address its header claims.
    let p = project(&format!(
        "{DAILY_THREE}\ntrusted_proxies = [\"10.0.0.0/8\"]"
    ));
    let d = p.start();
    let base = d.url();
    let c = Client::new(base.clone());
    for i in 0..3 {
        let claimed = format!("203.0.113.{i}");
        let a = track(&base, CLIENT_KEY, Some(&claimed), &format!("visitor-{i}"));
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let a = track(
        &base,
        CLIENT_KEY,
        Some("198.51.100.99"),
        "claims-a-new-address",
    );
    assert_limited(&a, "client_address");
    let (s, _) = c.admin_get("/v1/contacts/claims-a-new-address");
    assert_eq!(s, 404);
    // A key inside a small body is checked against the same limits.
    let a = post(
        &base,
        "/v1/track",
        "",
        None,
        json!({"writeKey": CLIENT_KEY, "userId": "body-key", "event": "viewed"}),
    );
    assert_limited(&a, "client_address");
}

#[test]
fn a_key_over_its_limit_is_refused_from_every_address() {
    let p = project(
        "client_address = false\nclient_key = { requests = 1, per_seconds = 86400, burst = 2 }\ntrusted_proxies = [\"127.0.0.1\"]",
    );
    let d = p.start();
    let base = d.url();
    assert_eq!(
        track(&base, CLIENT_KEY, Some("203.0.113.1"), "a").status,
        200
    );
    assert_eq!(
        track(&base, CLIENT_KEY, Some("203.0.113.2"), "b").status,
        200
    );
    assert_limited(
        &track(&base, CLIENT_KEY, Some("203.0.113.3"), "c"),
        "client_key",
    );
    assert_eq!(
        track(&base, SERVER_KEY, Some("203.0.113.3"), "d").status,
        200
    );
}

#[test]
fn a_reload_applies_changed_rate_limits() {
    let p = project("client_address = { requests = 1, per_seconds = 86400 }");
    let d = p.start();
    let base = d.url();
    let c = Client::new(base.clone());
    assert_eq!(track(&base, CLIENT_KEY, None, "first").status, 200);
    assert_limited(&track(&base, CLIENT_KEY, None, "second"), "client_address");

    let path = p.path().join("herald.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        toml.replace(
            "client_address = { requests = 1, per_seconds = 86400 }",
            "client_address = false",
        ),
    )
    .unwrap();
    let (s, b) = c.admin_post("/v1/reload", json!({}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(track(&base, CLIENT_KEY, None, "third").status, 200);
}

/// `herald check` on a project with `rate_limits`: (success, everything it printed).
fn check(rate_limits: &str) -> (bool, String) {
    let p = project(rate_limits);
    let out = std::process::Command::new(herald_bin())
        .args(["check", p.path().to_str().unwrap()])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn herald_check_refuses_a_bad_proxy_range_and_a_zero_rate() {
    let (ok, text) = check("trusted_proxies = [\"10.0.0.0/33\"]");
    assert!(!ok, "{text}");
    assert!(
        text.contains("`10.0.0.0/33` in trusted_proxies is not an IP address or a CIDR range"),
        "{text}"
    );
    let (ok, text) = check("client_key = { requests = 0 }");
    assert!(!ok, "{text}");
    assert!(text.contains("`requests` must be at least 1"), "{text}");
    assert!(text.contains("set it to false"), "{text}");
    let (ok, text) = check(&format!(
        "{DAILY_THREE}\ntrusted_proxies = [\"10.0.0.0/8\"]"
    ));
    assert!(ok, "{text}");
}
