//! Postmark, Mastodon, X, Meta Custom Audiences, Meta CAPI and the generic
//! webhook against loopback stand-ins recording what each provider documents.
mod common;

use common::*;
use herald_plugin_host::{SendError, SendRequest, WebhookRequest};
use serde_json::json;

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn postmark_sends_email_json_with_server_token() {
    let server = HttpServer::start(|_| {
        Reply::json(
            200,
            json!({ "To": "ada@example.org", "SubmittedAt": "2024-05-01T12:00:00.0000000Z",
                                "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817", "ErrorCode": 0, "Message": "OK" }),
        )
    });
    let p = load_connector(
        "postmark",
        loopback_grant(
            &server,
            json!({ "from": "Shop <news@shop.example>", "api_base": server.base_url(), "track_opens": true, "track_links": "HtmlAndText" }),
            &[("POSTMARK_SERVER_TOKEN", "pm-server-token")],
        ),
    );
    let out = p
        .send(&SendRequest {
            idempotency_key: "run-7:step-3".into(),
            to: "ada@example.org".into(),
            subject: Some("Hello".into()),
            text: Some("Hi Ada".into()),
            html: Some("<p>Hi Ada</p>".into()),
            payload: json!({ "tag": "welcome", "unsubscribe_url": "https://shop.example/u/1" }),
            ..Default::default()
        })
        .expect("send");
    assert_eq!(
        out.provider_message_id.as_deref(),
        Some("b7bc2f4a-e38e-4336-af7d-e6c392c2f817")
    );
    let r = server.only_request();
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/email"));
    assert_eq!(r.header("x-postmark-server-token"), Some("pm-server-token"));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({
            "From": "Shop <news@shop.example>", "To": "ada@example.org", "Subject": "Hello",
            "HtmlBody": "<p>Hi Ada</p>", "TextBody": "Hi Ada", "MessageStream": "outbound", "Tag": "welcome",
            "TrackOpens": true, "TrackLinks": "HtmlAndText",
            "Metadata": { "herald_idempotency_key": "run-7:step-3" },
            "Headers": [ { "Name": "List-Unsubscribe", "Value": "<https://shop.example/u/1>" },
                         { "Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click" } ]
        })
    );
}

#[test]
fn postmark_error_codes() {
    let server = HttpServer::start(|r| {
        let to = r.json()["To"].as_str().unwrap_or("").to_string();
        match to.as_str() {
            "inactive@example.org" => Reply::json(
                422,
                json!({ "ErrorCode": 406, "Message": "You tried to send to a recipient that has been marked as inactive." }),
            ),
            "token@example.org" => Reply::json(
                401,
                json!({ "ErrorCode": 10, "Message": "No Account or Server API tokens were supplied in the HTTP headers." }),
            ),
            _ => Reply::json(500, json!({ "ErrorCode": 0, "Message": "Internal" })),
        }
    });
    let p = load_connector(
        "postmark",
        loopback_grant(
            &server,
            json!({ "from": "n@shop.example", "api_base": server.base_url() }),
            &[("POSTMARK_SERVER_TOKEN", "t")],
        ),
    );
    let req = |to: &str| SendRequest {
        idempotency_key: "k".into(),
        to: to.into(),
        subject: Some("s".into()),
        text: Some("t".into()),
        ..Default::default()
    };
    match p.send(&req("inactive@example.org")) {
        Err(SendError::InvalidInput(m)) => assert!(m.contains("406"), "{m}"),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        p.send(&req("token@example.org")),
        Err(SendError::Unauthorized(_))
    ));
    assert!(matches!(
        p.send(&req("other@example.org")),
        Err(SendError::Transient(_))
    ));
}

const PM_HOOK_USER: &str = "postmark-hooks";
const PM_HOOK_PASSWORD: &str = "pm-hook-password";

/// A Postmark callback with `body` and, when given, Basic credentials as Postmark sends those
/// of the webhook URL.
fn postmark_callback(body: &serde_json::Value, basic: Option<(&str, &str)>) -> WebhookRequest {
    use base64::Engine as _;
    let headers = basic
        .map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            vec![("authorization".to_string(), format!("Basic {token}"))]
        })
        .unwrap_or_default();
    WebhookRequest {
        method: "POST".into(),
        headers,
        body: body.to_string().into_bytes(),
        ..Default::default()
    }
}

#[test]
fn postmark_webhooks_need_the_configured_basic_credentials() {
    let server = HttpServer::start(|_| Reply::json(500, json!({})));
    let open = json!({ "RecordType": "Open", "MessageID": "m-1", "Recipient": "john@example.com" });
    // Not configured: refused whatever the request carries, and the reason says what to set.
    for (config, secrets) in [
        (json!({ "from": "n@shop.example" }), vec![]),
        (
            json!({ "from": "n@shop.example" }),
            vec![("POSTMARK_WEBHOOK_PASSWORD", PM_HOOK_PASSWORD)],
        ),
        (
            json!({ "from": "n@shop.example", "webhook_username": PM_HOOK_USER }),
            vec![],
        ),
    ] {
        let p = load_connector("postmark", loopback_grant(&server, config, &secrets));
        let err = p
            .parse_webhook(&postmark_callback(
                &open,
                Some((PM_HOOK_USER, PM_HOOK_PASSWORD)),
            ))
            .expect_err("unconfigured callbacks are refused")
            .to_string();
        assert!(
            err.contains("webhook_username") || err.contains("POSTMARK_WEBHOOK_PASSWORD"),
            "{err}"
        );
        assert!(err.contains("refused"), "{err}");
    }
    // Configured: only the exact credentials pass.
    let p = load_connector(
        "postmark",
        loopback_grant(
            &server,
            json!({ "from": "n@shop.example", "webhook_username": PM_HOOK_USER }),
            &[("POSTMARK_WEBHOOK_PASSWORD", PM_HOOK_PASSWORD)],
        ),
    );
    let nul_suffixed = format!("{PM_HOOK_PASSWORD}\0");
    for basic in [
        None,
        Some((PM_HOOK_USER, "")),
        Some((PM_HOOK_USER, "pm-hook-passwor")),
        Some((PM_HOOK_USER, "pm-hook-password2")),
        Some((PM_HOOK_USER, nul_suffixed.as_str())),
        Some(("postmark-hook", PM_HOOK_PASSWORD)),
        Some(("", PM_HOOK_PASSWORD)),
    ] {
        let err = p
            .parse_webhook(&postmark_callback(&open, basic))
            .expect_err("wrong credentials are refused")
            .to_string();
        assert!(err.contains("credentials"), "{basic:?}: {err}");
    }
    let mut bearer = postmark_callback(&open, None);
    bearer.headers = vec![("authorization".into(), format!("Bearer {PM_HOOK_PASSWORD}"))];
    assert!(p.parse_webhook(&bearer).is_err());
    let events = p
        .parse_webhook(&postmark_callback(
            &open,
            Some((PM_HOOK_USER, PM_HOOK_PASSWORD)),
        ))
        .expect("authenticated callback");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].message_id.as_deref(), Some("m-1"));
    // A long password (beyond HMAC's 64-byte block) works too.
    let long = "p".repeat(100);
    let p = load_connector(
        "postmark",
        loopback_grant(
            &server,
            json!({ "from": "n@shop.example", "webhook_username": PM_HOOK_USER }),
            &[("POSTMARK_WEBHOOK_PASSWORD", long.as_str())],
        ),
    );
    assert!(p
        .parse_webhook(&postmark_callback(
            &open,
            Some((PM_HOOK_USER, long.as_str()))
        ))
        .is_ok());
    assert!(p
        .parse_webhook(&postmark_callback(&open, Some((PM_HOOK_USER, &long[1..]))))
        .is_err());
}

#[test]
fn postmark_webhooks_become_events() {
    let server = HttpServer::start(|_| Reply::json(500, json!({})));
    let p = load_connector(
        "postmark",
        loopback_grant(
            &server,
            json!({ "from": "n@shop.example", "webhook_username": PM_HOOK_USER }),
            &[("POSTMARK_WEBHOOK_PASSWORD", PM_HOOK_PASSWORD)],
        ),
    );
    // Payloads in the shape Postmark's webhook documentation shows.
    let payloads = [
        json!({ "RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
                "Recipient": "john@example.com", "Tag": "welcome-email", "DeliveredAt": "2019-11-05T16:33:54.9070259Z", "Details": "Test delivery webhook details", "Metadata": {} }),
        json!({ "RecordType": "Bounce", "ID": 42, "Type": "HardBounce", "TypeCode": 1, "Name": "Hard bounce", "Tag": "Test", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
                "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).", "Details": "Test bounce details",
                "Email": "john@example.com", "From": "sender@example.com", "BouncedAt": "2019-11-05T16:33:54.9070259Z", "Inactive": true, "CanActivate": true, "Subject": "Test subject" }),
        json!({ "RecordType": "Open", "MessageStream": "outbound", "FirstOpen": true, "Client": { "Name": "Chrome 35.0.1916.153" }, "OS": { "Name": "OS X 10.7 Lion" },
                "Platform": "WebMail", "UserAgent": "Mozilla/5.0", "ReadSeconds": 5, "Geo": {}, "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
                "Metadata": {}, "ReceivedAt": "2019-11-05T16:33:54.9070259Z", "Tag": "welcome-email", "Recipient": "john@example.com" }),
        json!({ "RecordType": "Click", "MessageStream": "outbound", "ClickLocation": "HTML", "Client": {}, "OS": {}, "Platform": "Desktop", "UserAgent": "Mozilla/5.0",
                "OriginalLink": "https://example.com", "Geo": {}, "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Metadata": {},
                "ReceivedAt": "2017-10-25T15:21:11.0000000Z", "Tag": "welcome-email", "Recipient": "john@example.com" }),
        json!({ "RecordType": "SpamComplaint", "ID": 42, "Type": "SpamComplaint", "TypeCode": 512, "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
                "Email": "john@example.com", "BouncedAt": "2019-11-05T16:33:54.9070259Z" }),
        json!({ "RecordType": "SubscriptionChange", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "ServerID": 123, "MessageStream": "outbound",
                "ChangedAt": "2020-02-01T10:53:34.416071Z", "Recipient": "bounced-address@wildbit.com", "Origin": "Recipient", "SuppressSending": true,
                "SuppressionReason": "ManualSuppression", "Tag": "my-tag", "Metadata": {} }),
        // A temporary failure, and the address reactivated: a soft bounce and a resubscription.
        json!({ "RecordType": "Bounce", "ID": 43, "Type": "SoftBounce", "TypeCode": 4096, "Name": "Soft bounce", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
                "Description": "The server could not temporarily deliver your message (ex: Message is delayed due to network troubles).",
                "Email": "john@example.com", "BouncedAt": "2019-11-05T16:33:54.9070259Z", "Inactive": false, "CanActivate": true }),
        json!({ "RecordType": "SubscriptionChange", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "ServerID": 123, "MessageStream": "outbound",
                "ChangedAt": "2020-02-02T10:53:34.416071Z", "Recipient": "bounced-address@wildbit.com", "Origin": "Customer", "SuppressSending": false,
                "SuppressionReason": null, "Tag": "my-tag", "Metadata": {} }),
    ];
    let mut events = Vec::new();
    let credentials = Some((PM_HOOK_USER, PM_HOOK_PASSWORD));
    for body in payloads {
        events.extend(
            p.parse_webhook(&postmark_callback(&body, credentials))
                .expect("parse"),
        );
    }
    insta::assert_json_snapshot!("postmark_webhook_events", events);
    let bad = p.parse_webhook(&postmark_callback(&json!({ "x": 1 }), credentials));
    assert!(bad.is_err());
}

#[test]
fn mastodon_posts_status_with_idempotency_key() {
    let server = HttpServer::start(|_| {
        Reply::json(
            200,
            json!({ "id": "103270115826048975", "url": "https://mastodon.example/@herald/103270115826048975" }),
        )
    });
    let p = load_connector(
        "mastodon",
        loopback_grant(
            &server,
            json!({ "instance_url": server.base_url(), "visibility": "unlisted", "language": "en" }),
            &[("MASTODON_ACCESS_TOKEN", "masto-token")],
        ),
    );
    assert!(p.describe().supports_idempotency);
    let out = p
        .send(&SendRequest {
            idempotency_key: "run-1:step-1".into(),
            text: Some("Our spring sale starts today!".into()),
            subject: Some("sale".into()),
            ..Default::default()
        })
        .expect("post");
    assert_eq!(
        out.provider_message_id.as_deref(),
        Some("103270115826048975")
    );
    let r = server.only_request();
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/api/v1/statuses")
    );
    assert_eq!(r.header("authorization"), Some("Bearer masto-token"));
    assert_eq!(r.header("idempotency-key"), Some("run-1:step-1"));
    assert_eq!(
        r.json(),
        json!({ "status": "Our spring sale starts today!", "visibility": "unlisted", "spoiler_text": "sale", "language": "en" })
    );
}

#[test]
fn x_posts_v2_and_rate_limit_reset() {
    let server = HttpServer::start(|r| {
        if r.json()["text"] == "limited" {
            let reset = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 30;
            Reply::json(429, json!({ "title": "Too Many Requests", "status": 429 }))
                .with_header("x-rate-limit-reset", &reset.to_string())
        } else {
            Reply::json(
                201,
                json!({ "data": { "id": "1445880548472328192", "text": "Hello from Herald" } }),
            )
        }
    });
    let p = load_connector(
        "x-posts",
        loopback_grant(
            &server,
            json!({ "api_base": server.base_url() }),
            &[("X_USER_ACCESS_TOKEN", "x-token")],
        ),
    );
    let out = p
        .send(&SendRequest {
            idempotency_key: "k".into(),
            text: Some("Hello from Herald".into()),
            payload: json!({ "in_reply_to_tweet_id": "1445880548472328190" }),
            ..Default::default()
        })
        .expect("post");
    assert_eq!(
        out.provider_message_id.as_deref(),
        Some("1445880548472328192")
    );
    let r = server.only_request();
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/2/tweets"));
    assert_eq!(r.header("authorization"), Some("Bearer x-token"));
    assert_eq!(
        r.json(),
        json!({ "text": "Hello from Herald", "reply": { "in_reply_to_tweet_id": "1445880548472328190" } })
    );
    let long = "x".repeat(281);
    assert!(matches!(
        p.send(&SendRequest {
            idempotency_key: "k3".into(),
            text: Some(long),
            ..Default::default()
        }),
        Err(SendError::InvalidInput(_))
    ));
    match p.send(&SendRequest {
        idempotency_key: "k2".into(),
        text: Some("limited".into()),
        ..Default::default()
    }) {
        Err(SendError::RateLimited { retry_after_ms, .. }) => assert!(
            (28_000..=31_000).contains(&retry_after_ms),
            "{retry_after_ms}"
        ),
        o => panic!("{o:?}"),
    }
}

#[test]
fn meta_audiences_hashes_normalised_identifiers() {
    let server = HttpServer::start(|_| {
        Reply::json(
            200,
            json!({ "audience_id": "23850000000000000", "session_id": "9778993", "num_received": 1, "num_invalid_entries": 0, "invalid_entry_samples": {} }),
        )
    });
    let p = load_connector(
        "meta-audiences",
        loopback_grant(
            &server,
            json!({ "audience_id": "23850000000000000", "api_base": server.base_url() }),
            &[("META_ACCESS_TOKEN", "meta-token")],
        ),
    );
    let d = p.describe();
    assert!(!d.delivers_messages && d.supports_idempotency);
    assert_eq!(
        d.operations
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["audience-add", "audience-remove"]
    );
    let member = |op: &str| SendRequest {
        idempotency_key: "k".into(),
        operation: Some(op.into()),
        to: "  Ada.Lovelace@Example.COM ".into(),
        fields: json!({ "phone": "+1 (415) 555-0100", "first_name": "Ada", "last_name": "Lovelace-Byron", "zip": "94107-1234",
                        "country": "US", "city": "San Francisco", "state": "CA", "gender": "Female", "birthdate": "1815-12-10", "external_id": "crm-42" }),
        ..Default::default()
    };
    p.send(&member("audience-add")).expect("add");
    p.send(&member("audience-remove")).expect("remove");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", "/v21.0/23850000000000000/users")
    );
    assert_eq!(
        (reqs[1].method.as_str(), reqs[1].path.as_str()),
        ("DELETE", "/v21.0/23850000000000000/users")
    );
    assert_eq!(reqs[0].header("authorization"), Some("Bearer meta-token"));
    let body = reqs[0].json();
    assert_eq!(body, reqs[1].json());
    assert_eq!(
        body["payload"]["schema"],
        json!([
            "EMAIL",
            "PHONE",
            "FN",
            "LN",
            "CT",
            "ST",
            "ZIP",
            "COUNTRY",
            "GEN",
            "DOBY",
            "DOBM",
            "DOBD",
            "EXTERN_ID"
        ])
    );
    let row = body["payload"]["data"][0].clone();
    assert_eq!(row[0], json!(sha256_hex("ada.lovelace@example.com")));
    assert_eq!(row[1], json!(sha256_hex("14155550100")));
    assert_eq!(row[2], json!(sha256_hex("ada")));
    assert_eq!(row[3], json!(sha256_hex("lovelacebyron")));
    assert_eq!(row[4], json!(sha256_hex("sanfrancisco")));
    assert_eq!(row[5], json!(sha256_hex("ca")));
    assert_eq!(row[6], json!(sha256_hex("94107")));
    assert_eq!(row[7], json!(sha256_hex("us")));
    assert_eq!(row[8], json!(sha256_hex("f")));
    assert_eq!(row[9], json!(sha256_hex("1815")));
    assert_eq!(row[10], json!(sha256_hex("12")));
    assert_eq!(row[11], json!(sha256_hex("10")));
    assert_eq!(row[12], json!("crm-42"));
    // Known vector from Meta's docs style: hashing is lower-case hex of the normalised value.
    assert_eq!(sha256_hex("ada.lovelace@example.com").len(), 64);
    assert!(
        !reqs[0].body_text().contains("Lovelace"),
        "no plain PII leaves"
    );
    assert!(matches!(
        p.send(&SendRequest {
            idempotency_key: "k".into(),
            to: "x".into(),
            ..Default::default()
        }),
        Err(SendError::InvalidInput(_))
    ));
}

#[test]
fn meta_capi_sends_event_with_event_id() {
    let server = HttpServer::start(|_| {
        Reply::json(
            200,
            json!({ "events_received": 1, "messages": [], "fbtrace_id": "ABCDEFG123" }),
        )
    });
    let p = load_connector(
        "meta-capi",
        loopback_grant(
            &server,
            json!({ "pixel_id": "1234567890", "api_base": server.base_url(), "test_event_code": "TEST123" }),
            &[("META_ACCESS_TOKEN", "meta-token")],
        ),
    );
    assert!(p.describe().supports_idempotency);
    let out = p.send(&SendRequest {
        idempotency_key: "run-9:step-4".into(),
        operation: Some("conversion".into()),
        to: "Ada@Example.com".into(),
        fields: json!({ "phone": "+44 20 7946 0958", "external_id": "crm-42" }),
        payload: json!({ "event_name": "Purchase", "event_time": 1714564800, "event_source_url": "https://shop.example/checkout",
                         "client_user_agent": "Mozilla/5.0", "custom_data": { "currency": "EUR", "value": 42.5 } }),
        ..Default::default()
    }).expect("send");
    assert_eq!(out.provider_message_id.as_deref(), Some("ABCDEFG123"));
    let r = server.only_request();
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v21.0/1234567890/events")
    );
    assert_eq!(r.header("authorization"), Some("Bearer meta-token"));
    assert_eq!(
        r.json(),
        json!({
            "data": [{
                "event_name": "Purchase", "event_time": 1714564800, "event_id": "run-9:step-4", "action_source": "system_generated",
                "event_source_url": "https://shop.example/checkout",
                "user_data": { "em": [sha256_hex("ada@example.com")], "ph": [sha256_hex("442079460958")], "external_id": [sha256_hex("crm-42")],
                               "client_user_agent": "Mozilla/5.0" },
                "custom_data": { "currency": "EUR", "value": 42.5 }
            }],
            "test_event_code": "TEST123"
        })
    );
}

#[test]
fn webhook_is_signed_by_the_host() {
    let server = HttpServer::start(|_| Reply::json(202, json!({ "id": "rcv-1" })));
    let key = "whsec-signing-key";
    let p = load_connector(
        "webhook",
        loopback_grant(
            &server,
            json!({ "url": format!("{}/hooks/herald", server.base_url()), "headers": { "X-Env": "test" } }),
            &[("WEBHOOK_SIGNING_KEY", key)],
        ),
    );
    let out = p
        .send(&SendRequest {
            idempotency_key: "run-3:step-1".into(),
            to: "ada@example.org".into(),
            text: Some("hi".into()),
            payload: json!({ "plan": "pro" }),
            ..Default::default()
        })
        .expect("send");
    assert_eq!(out.provider_message_id.as_deref(), Some("rcv-1"));
    let r = server.only_request();
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/hooks/herald")
    );
    assert_eq!(r.header("idempotency-key"), Some("run-3:step-1"));
    assert_eq!(r.header("x-env"), Some("test"));
    let ts = r
        .header("x-herald-timestamp")
        .expect("timestamp")
        .to_string();
    // Verify the signature exactly as a receiver would.
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{ts}.{}", r.body_text()).as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("x-herald-signature"), Some(expected.as_str()));
    let body = r.json();
    assert_eq!(body["id"], "run-3:step-1");
    assert_eq!(body["type"], "message");
    assert_eq!(body["payload"], json!({ "plan": "pro" }));
    assert!(!r.body_text().contains(key));
    // It only sends: a callback is refused, even one signed with its own key.
    let err = p
        .parse_webhook(&WebhookRequest {
            method: "POST".into(),
            headers: r.headers.clone().into_iter().collect(),
            body: r.body.clone(),
            ..Default::default()
        })
        .expect_err("the webhook connector accepts no callbacks")
        .to_string();
    assert!(err.contains("accepts no callbacks"), "{err}");
}
