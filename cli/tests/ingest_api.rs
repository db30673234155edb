//! The Segment-compatible ingest API over real HTTP: events in, identities merged, runs
//! started, journals visible, messages rendered, bad input refused with JSON errors.

mod common;

use common::*;
use serde_json::{json, Value};

const WELCOME: &str = r#"
workflow("welcome").on_event("newsletter_subscribed").reentry("once");

fn run(contact, trigger) {
    send("email", "welcome", #{ source: trigger.properties.source });
    wait(days(1));
    send("sms", "nudge");
}
"#;

fn project() -> TestProject {
    let p = TestProject::new("");
    p.workflow("welcome.rhai", WELCOME);
    p
}

#[test]
fn anonymous_history_merges_into_the_identified_contact_and_a_run_sends_the_rendered_email() {
    let p = project();
    let d = p.start();
    let c = Client::new(d.url());

    let (s, b) = c.ingest(
        "/v1/page",
        &json!({"anonymousId": "anon-7", "name": "Pricing", "properties": {"path": "/pricing"}})
            .to_string(),
    );
    assert_eq!((s, b["success"].clone()), (200, json!(true)));
    // A separate known contact that the anonymous one is later merged into.
    c.identify(
        "ada",
        json!({"first_name": "Ada", "email": "ada@example.com", "plan": "free"}),
    );
    // identify with both ids links the anonymous history to ada.
    let (s, _) = c.ingest(
        "/v1/identify",
        &json!({"userId": "ada", "anonymousId": "anon-7", "traits": {"phone": "+15550100"}})
            .to_string(),
    );
    assert_eq!(s, 200);
    c.track("ada", "newsletter_subscribed", json!({"source": "footer"}));

    let (s, contact) = c.admin_get("/v1/contacts/anon-7");
    assert_eq!(s, 200, "{contact}");
    assert_eq!(contact["user_ids"], json!(["ada"]));
    assert_eq!(contact["anonymous_ids"], json!(["anon-7"]));
    assert_eq!(contact["attributes"]["first_name"], "Ada");
    assert_eq!(contact["attributes"]["phone"], "+15550100");
    let events: Vec<&str> = contact["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["newsletter_subscribed", "identify", "identify", "page"]
    );

    let run = c.only_run("ada");
    let run = c.run_reaches(run["id"].as_str().unwrap(), "waiting", 2);
    assert_eq!(run["workflow"], "welcome");
    assert_eq!(run["trigger"]["properties"]["source"], "footer");
    let journal = run["journal"].as_array().unwrap();
    assert_eq!(journal[0]["kind"], "send");
    assert_eq!(journal[0]["name"], "email:welcome");
    assert_eq!(journal[0]["status"], "done");
    assert_eq!(journal[0]["input"]["subject"], "Welcome Ada");
    assert_eq!(journal[1]["kind"], "wait");
    assert_eq!(journal[1]["status"], "pending");

    let sent = p.outbox("email");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["to"], "ada@example.com");
    assert_eq!(sent[0]["subject"], "Welcome Ada");
    assert_eq!(sent[0]["body"], "Hello Ada from footer");
    assert_eq!(
        sent[0]["idempotency_key"],
        format!("{}:0", run["id"].as_str().unwrap())
    );
}

#[test]
fn identify_with_two_known_histories_merges_them_and_alias_links_ids() {
    let d = project().start();
    let c = Client::new(d.url());
    c.ingest(
        "/v1/track",
        &json!({"anonymousId": "a1", "event": "viewed"}).to_string(),
    );
    c.identify(
        "u1",
        json!({"email": "u1@example.com", "first_name": "Known"}),
    );
    c.ingest(
        "/v1/identify",
        &json!({"anonymousId": "a1", "traits": {"first_name": "Anon", "city": "Oslo"}}).to_string(),
    );
    // Now both histories exist; this call ties them together.
    c.ingest(
        "/v1/identify",
        &json!({"userId": "u1", "anonymousId": "a1"}).to_string(),
    );
    let (_, merged) = c.admin_get("/v1/contacts/a1");
    assert_eq!(merged["user_ids"], json!(["u1"]));
    assert_eq!(
        merged["attributes"]["first_name"], "Known",
        "the known user's traits win"
    );
    assert_eq!(
        merged["attributes"]["city"], "Oslo",
        "traits only the anonymous side had are kept"
    );
    assert_eq!(merged["recent_events"].as_array().unwrap().len(), 4);

    let (s, _) = c.ingest(
        "/v1/alias",
        &json!({"previousId": "u1", "userId": "u1-new"}).to_string(),
    );
    assert_eq!(s, 200);
    let (_, aliased) = c.admin_get("/v1/contacts/u1-new");
    assert_eq!(aliased["id"], merged["id"]);
}

#[test]
fn batches_dedupe_message_ids_and_share_their_context() {
    let d = project().start();
    let c = Client::new(d.url());
    let batch = json!({
        "batch": [
            {"type": "track", "userId": "b1", "event": "clicked", "messageId": "m-1"},
            {"type": "track", "userId": "b1", "event": "clicked", "messageId": "m-1"},
            {"type": "identify", "userId": "b1", "traits": {"email": "b1@example.com"}, "messageId": "m-2"},
        ],
        "context": {"library": {"name": "analytics-node"}}
    });
    let (s, b) = c.ingest("/v1/batch", &batch.to_string());
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["accepted"].clone(), b["duplicates"].clone()),
        (json!(2), json!(1))
    );
    // A retry of the whole request is a duplicate too: nothing is stored twice.
    let (_, b) = c.ingest("/v1/batch", &batch.to_string());
    assert_eq!(
        (b["accepted"].clone(), b["duplicates"].clone()),
        (json!(0), json!(3))
    );
    let (_, contact) = c.admin_get("/v1/contacts/b1");
    let events = contact["recent_events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["context"]["library"]["name"], "analytics-node");
}

#[test]
fn gzip_bodies_and_the_short_segment_paths_are_accepted() {
    use std::io::Write;
    let d = project().start();
    let c = Client::new(d.url());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(
        json!({"batch": [{"type": "track", "userId": "g1", "event": "zipped"}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let (s, b) = c.post_bytes("/v1/batch", &gz.finish().unwrap(), Some("gzip"));
    assert_eq!(s, 200, "{b}");
    let (s, _) = c.ingest(
        "/v1/t",
        &json!({"userId": "g1", "event": "short"}).to_string(),
    );
    assert_eq!(s, 200);
    let (_, contact) = c.admin_get("/v1/contacts/g1");
    assert_eq!(contact["recent_events"].as_array().unwrap().len(), 2);
}

/// Status, code and message of an ingest error, which carries them twice: under `error`, as
/// every Herald error does, and at the top level beside `"success": false`, where the Segment
/// SDKs read them.
fn error_of(r: (u16, Value)) -> (u16, String, String) {
    assert_eq!(r.1["success"], json!(false), "{}", r.1);
    assert_eq!(r.1["code"], r.1["error"]["code"], "{}", r.1);
    assert_eq!(r.1["message"], r.1["error"]["message"], "{}", r.1);
    (
        r.0,
        r.1["error"]["code"].as_str().unwrap_or("").to_string(),
        r.1["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn bad_input_gets_a_json_error_naming_the_problem_and_stores_nothing() {
    let d = project().start();
    let c = Client::new(d.url());

    let (s, code, msg) = error_of(c.ingest("/v1/track", "{\"userId\": \"x\", \"event\": "));
    assert_eq!((s, code.as_str()), (400, "malformed_json"));
    assert!(msg.contains("not valid JSON"), "{msg}");

    let (s, code, _) = error_of(c.ingest("/v1/track", &json!({"event": "x"}).to_string()));
    assert_eq!((s, code.as_str()), (400, "missing_identity"));

    let (s, code, _) = error_of(c.ingest("/v1/track", &json!({"userId": "x"}).to_string()));
    assert_eq!((s, code.as_str()), (400, "missing_event"));

    let big = "x".repeat(33 * 1024);
    let (s, code, msg) = error_of(c.ingest(
        "/v1/track",
        &json!({"userId": "x", "event": "e", "properties": {"blob": big}}).to_string(),
    ));
    assert_eq!((s, code.as_str()), (400, "message_too_large"));
    assert!(msg.contains("32 KB"), "{msg}");

    let items: Vec<Value> = (0..20).map(|i| json!({"type": "track", "userId": "x", "event": "e", "properties": {"i": i, "pad": "y".repeat(30_000)}})).collect();
    let (s, code, msg) = error_of(c.ingest("/v1/batch", &json!({"batch": items}).to_string()));
    assert_eq!((s, code.as_str()), (413, "payload_too_large"));
    assert!(msg.contains("500 KB"), "{msg}");

    // A batch none of whose items is valid is refused as a whole.
    let (s, code, msg) = error_of(
        c.ingest(
            "/v1/batch",
            &json!({"batch": [{"type": "track", "userId": "x"}, {"type": "bogus", "userId": "x"}]})
                .to_string(),
        ),
    );
    assert_eq!((s, code.as_str()), (400, "missing_event"));
    assert!(msg.starts_with("batch[0]:"), "{msg}");

    // Otherwise an invalid item is dropped and reported, and the rest is accepted.
    let (s, b) = c.ingest("/v1/batch", r#"{"batch": [{"type": "track", "userId": "p", "event": "ok"}, {"type": "bogus", "userId": "p"}, {"type": "track", "userId": 123456789012345678901234, "event": "big"}]}"#);
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["accepted"].clone(), b["rejected"].clone()),
        (json!(1), json!(2)),
        "{b}"
    );
    assert_eq!(b["rejections"][0]["index"], 1);
    assert_eq!(b["rejections"][0]["code"], "invalid_type");
    assert!(
        b["rejections"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("batch[1]:"),
        "{b}"
    );
    assert_eq!(
        b["rejections"][1]["code"], "invalid_id",
        "a numeric id beyond 64 bits is not rounded into another: {b}"
    );

    let (s, code, _) = error_of(c.raw_post(
        "/v1/track",
        &json!({"userId": "x", "event": "e"}).to_string(),
        Some("Basic d3Jvbmc6"),
        None,
    ));
    assert_eq!((s, code.as_str()), (401, "invalid_write_key"));
    let (s, code, _) = error_of(c.raw_post(
        "/v1/track",
        &json!({"userId": "x", "event": "e"}).to_string(),
        None,
        None,
    ));
    assert_eq!((s, code.as_str()), (401, "missing_write_key"));

    // Nothing of the refused requests was stored, and the daemon still serves.
    let (s, _) = c.admin_get("/v1/contacts/x");
    assert_eq!(s, 404);
    c.track("x", "fine", json!({}));
    let (s, contact) = c.admin_get("/v1/contacts/x");
    assert_eq!(
        (s, contact["recent_events"].as_array().unwrap().len()),
        (200, 1)
    );
    let metrics = c.get_text("/metrics");
    assert!(
        metrics.contains("herald_ingest_rejected_total{reason=\"malformed_json\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_events_ingested_total{type=\"track\"} 2"),
        "the valid item of the mixed batch and the last track: {metrics}"
    );
    assert!(
        metrics.contains("herald_ingest_rejected_total{reason=\"invalid_type\"} 1"),
        "a dropped item is counted: {metrics}"
    );
}

#[test]
fn the_write_key_may_come_in_the_body_as_older_sdks_send_it() {
    let d = project().start();
    let c = Client::new(d.url());
    let (s, b) = c.raw_post(
        "/v1/track",
        &json!({"writeKey": WRITE_KEY, "userId": "w", "event": "e"}).to_string(),
        None,
        None,
    );
    assert_eq!(s, 200, "{b}");
}

#[test]
fn management_api_needs_the_bearer_token_and_starts_manual_runs() {
    let p = TestProject::new("");
    p.workflow("onboard.rhai", "workflow(\"onboard\").manual();\nfn run(contact, trigger) {\n    send(\"email\", \"tips\");\n    update(#{ onboarded: trigger.properties.cohort });\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("m1", json!({"email": "m1@example.com"}));
    let (s, _) = c.raw_post(
        "/v1/workflows/onboard/runs",
        "{}",
        Some("Bearer nope"),
        None,
    );
    assert_eq!(s, 401);
    let (s, b) = c.admin_post("/v1/workflows/onboard/runs", json!({"properties": {}}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );
    let (s, b) = c.admin_post(
        "/v1/workflows/onboard/runs",
        json!({"contact": "m1", "properties": {"cohort": "q4"}}),
    );
    assert_eq!(s, 201, "{b}");
    let run = c.run_reaches(b["run"].as_str().unwrap(), "completed", 2);
    assert_eq!(run["journal"][1]["kind"], "update");
    let (_, contact) = c.admin_get("/v1/contacts/m1");
    assert_eq!(contact["attributes"]["onboarded"], "q4");
    let (s, b) = c.admin_post("/v1/workflows/nope/runs", json!({"contact": "m1"}));
    assert_eq!(s, 422, "{b}");
    let (_, wfs) = c.admin_get("/v1/workflows");
    assert_eq!(wfs["workflows"][0]["name"], "onboard");
    let metrics = c.get_text("/metrics");
    assert!(
        metrics.contains("herald_runs{status=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_sends_total{channel=\"email\",outcome=\"sent\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_activation_seconds_count"),
        "{metrics}"
    );
}
