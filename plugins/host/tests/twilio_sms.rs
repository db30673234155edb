//! twilio-sms against a loopback stand-in for the Twilio Messages API.
mod common;

use common::*;
use herald_plugin_host::{SendError, SendRequest, WebhookRequest};
use serde_json::json;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-value";

fn sms(to: &str, text: &str) -> SendRequest {
    SendRequest {
        idempotency_key: "run-1:step-2".into(),
        to: to.into(),
        text: Some(text.into()),
        ..Default::default()
    }
}

#[test]
fn sends_form_encoded_message_with_basic_auth() {
    let server = HttpServer::start(|_| {
        Reply::json(
            201,
            json!({ "sid": "SM0123456789abcdef0123456789abcdef", "status": "queued", "num_segments": "1",
                    "body": "Hi Ada & co", "to": "+14155550100" }),
        )
    });
    let plugin = load_connector(
        "twilio-sms",
        loopback_grant(
            &server,
            json!({ "account_sid": SID, "from": "+14155550199", "api_base": server.base_url(),
                    "status_callback": "https://herald.example.com/v1/webhooks/sms" }),
            &[("TWILIO_AUTH_TOKEN", TOKEN)],
        ),
    );
    assert!(!plugin.describe().supports_idempotency);
    let out = plugin
        .send(&sms("+14155550100", "Hi Ada & co"))
        .expect("send");
    assert_eq!(
        out.provider_message_id.as_deref(),
        Some("SM0123456789abcdef0123456789abcdef")
    );
    assert_eq!(out.details["status"], "queued");

    let req = server.only_request();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{SID}/Messages.json")
    );
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        req.basic_auth().as_deref(),
        Some(format!("{SID}:{TOKEN}").as_str())
    );
    assert_eq!(
        req.form(),
        vec![
            ("To".to_string(), "+14155550100".to_string()),
            ("From".to_string(), "+14155550199".to_string()),
            ("Body".to_string(), "Hi Ada & co".to_string()),
            (
                "StatusCallback".to_string(),
                "https://herald.example.com/v1/webhooks/sms".to_string()
            ),
        ]
    );
}

#[test]
fn maps_provider_errors_to_typed_errors() {
    let server = HttpServer::start(|r| {
        let to = r
            .form()
            .into_iter()
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v)
            .unwrap_or_default();
        match to.as_str() {
            "+15005550001" => Reply::json(
                400,
                json!({"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400}),
            ),
            "+15005550002" => Reply::json(
                401,
                json!({"code": 20003, "message": "Authenticate", "status": 401}),
            ),
            "+15005550003" => Reply::json(
                429,
                json!({"code": 20429, "message": "Too Many Requests", "status": 429}),
            )
            .with_header("Retry-After", "2"),
            _ => Reply::json(503, json!({"message": "unavailable"})),
        }
    });
    let plugin = load_connector(
        "twilio-sms",
        loopback_grant(
            &server,
            json!({ "account_sid": SID, "from": "+14155550199", "api_base": server.base_url() }),
            &[("TWILIO_AUTH_TOKEN", TOKEN)],
        ),
    );
    // Bad input is refused before any request.
    assert!(matches!(
        plugin.send(&sms("0800 NOT E164", "x")),
        Err(SendError::InvalidInput(_))
    ));
    match plugin.send(&sms("+15005550001", "x")) {
        Err(SendError::InvalidInput(m)) => assert!(m.contains("21211"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        plugin.send(&sms("+15005550002", "x")),
        Err(SendError::Unauthorized(_))
    ));
    match plugin.send(&sms("+15005550003", "x")) {
        Err(SendError::RateLimited { retry_after_ms, .. }) => assert_eq!(retry_after_ms, 2000),
        other => panic!("{other:?}"),
    }
    // The channel is now paused by the adaptive slow-down: no request reaches the provider.
    let before = server.requests().len();
    assert!(matches!(
        plugin.send(&sms("+15005550009", "x")),
        Err(SendError::RateLimited { .. })
    ));
    assert_eq!(server.requests().len(), before);
}

#[test]
fn transient_on_5xx_and_refused_connection() {
    let server = HttpServer::start(|_| Reply::json(503, json!({"message": "unavailable"})));
    let plugin = load_connector(
        "twilio-sms",
        loopback_grant(
            &server,
            json!({ "account_sid": SID, "from": "+14155550199", "api_base": server.base_url() }),
            &[("TWILIO_AUTH_TOKEN", TOKEN)],
        ),
    );
    assert!(matches!(
        plugin.send(&sms("+14155550100", "x")),
        Err(SendError::Transient(_))
    ));
}

#[test]
fn rejects_invalid_config_on_load() {
    let server = HttpServer::start(|_| Reply::json(500, json!({})));
    let err = common::host()
        .load(
            &connector_dir("twilio-sms"),
            loopback_grant(&server, json!({ "account_sid": "nope" }), &[]),
        )
        .unwrap_err();
    assert!(err.to_string().contains("account_sid"), "{err}");
}

fn form_webhook(pairs: &[(&str, &str)]) -> WebhookRequest {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    WebhookRequest {
        method: "POST".into(),
        headers: vec![(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: body.into_bytes(),
        ..Default::default()
    }
}

/// `params` as Twilio posts them to `url`, signed with `token` the way Twilio signs.
fn signed_webhook(url: &str, token: &str, params: &[(&str, &str)]) -> WebhookRequest {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut sorted: Vec<_> = params.to_vec();
    sorted.sort();
    let data: String = std::iter::once(url.to_string())
        .chain(sorted.iter().map(|(k, v)| format!("{k}{v}")))
        .collect();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let mut req = form_webhook(params);
    req.headers.push(("X-Twilio-Signature".into(), sig));
    req
}

const CALLBACK_URL: &str = "https://herald.example.com/v1/webhooks/sms";

#[test]
fn callbacks_are_refused_when_they_cannot_be_verified() {
    let server = HttpServer::start(|_| Reply::json(500, json!({})));
    let plugin = load_connector(
        "twilio-sms",
        loopback_grant(
            &server,
            json!({ "account_sid": SID, "from": "+14155550199" }),
            &[("TWILIO_AUTH_TOKEN", TOKEN)],
        ),
    );
    let params = [("MessageSid", "SM1"), ("MessageStatus", "delivered")];
    let err = plugin
        .parse_webhook(&signed_webhook(CALLBACK_URL, TOKEN, &params))
        .unwrap_err()
        .to_string();
    assert!(err.contains("webhook_url is not configured"), "{err}");
}

#[test]
fn parses_status_callbacks_and_inbound_messages() {
    let server = HttpServer::start(|_| Reply::json(500, json!({})));
    let plugin = load_connector(
        "twilio-sms",
        loopback_grant(
            &server,
            json!({ "account_sid": SID, "from": "+14155550199", "webhook_url": CALLBACK_URL }),
            &[("TWILIO_AUTH_TOKEN", TOKEN)],
        ),
    );
    let form_webhook = |params: &[(&str, &str)]| signed_webhook(CALLBACK_URL, TOKEN, params);
    // Recorded shape of a Twilio status callback.
    let delivered = form_webhook(&[
        ("SmsSid", "SM0123456789abcdef0123456789abcdef"),
        ("SmsStatus", "delivered"),
        ("MessageStatus", "delivered"),
        ("To", "+14155550100"),
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("AccountSid", SID),
        ("From", "+14155550199"),
        ("ApiVersion", "2010-04-01"),
    ]);
    let failed = form_webhook(&[
        ("MessageSid", "SMffff"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
        ("To", "+14155550101"),
        ("AccountSid", SID),
    ]);
    let sent = form_webhook(&[
        ("MessageSid", "SMeeee"),
        ("MessageStatus", "sent"),
        ("To", "+1"),
    ]);
    let stop = form_webhook(&[
        ("MessageSid", "SMaaaa"),
        ("SmsStatus", "received"),
        ("Body", "stop"),
        ("From", "+14155550100"),
        ("To", "+14155550199"),
    ]);
    let mut all = Vec::new();
    for req in [delivered, failed, sent, stop] {
        all.extend(plugin.parse_webhook(&req).expect("parse"));
    }
    insta::assert_json_snapshot!("twilio_webhook_events", all);
    let junk = WebhookRequest {
        method: "POST".into(),
        body: b"hello".to_vec(),
        ..Default::default()
    };
    assert!(plugin.parse_webhook(&junk).is_err());
}

#[test]
fn verifies_x_twilio_signature() {
    let server = HttpServer::start(|_| Reply::json(500, json!({})));
    // The example from Twilio's "Validating requests" documentation.
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let plugin = load_connector(
        "twilio-sms",
        loopback_grant(
            &server,
            json!({ "account_sid": SID, "from": "+14155550199", "webhook_url": url }),
            &[("TWILIO_AUTH_TOKEN", "12345")],
        ),
    );
    let doc_params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ];
    let mut signed = form_webhook(&doc_params);
    signed.headers.push((
        "X-Twilio-Signature".into(),
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ=".into(),
    ));
    // The signature is valid; the payload (a voice call) is then refused for what it is.
    let err = plugin.parse_webhook(&signed).unwrap_err().to_string();
    assert!(err.contains("no MessageSid"), "{err}");
    let mut forged = form_webhook(&doc_params);
    forged.headers.push((
        "X-Twilio-Signature".into(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
    ));
    assert!(plugin
        .parse_webhook(&forged)
        .unwrap_err()
        .to_string()
        .contains("invalid X-Twilio-Signature"));
    let unsigned = form_webhook(&doc_params);
    assert!(plugin
        .parse_webhook(&unsigned)
        .unwrap_err()
        .to_string()
        .contains("missing X-Twilio-Signature"));

    // A signed delivery callback, signed the way Twilio does it.
    let params = [
        ("MessageSid", "SM1"),
        ("MessageStatus", "delivered"),
        ("To", "+14155550100"),
        ("AccountSid", SID),
    ];
    let req = signed_webhook(url, "12345", &params);
    let events = plugin.parse_webhook(&req).expect("valid signature");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "delivered");

    // Failed messages bounce hard or soft by Twilio's error code.
    for (code, kind) in [
        ("30005", "hard"),
        ("30003", "soft"),
        ("30500", "undetermined"),
    ] {
        let params = [
            ("MessageSid", "SM2"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", code),
            ("To", "+14155550100"),
            ("AccountSid", SID),
        ];
        let events = plugin
            .parse_webhook(&signed_webhook(url, "12345", &params))
            .expect("valid signature");
        assert_eq!(events[0].kind, "bounced");
        let bounce = events[0].bounce.as_ref().expect("a bounce has a kind");
        assert_eq!((code, bounce.kind.as_str()), (code, kind));
        assert!(bounce
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with(code)));
    }
    // STOP unsubscribes, START resubscribes, anything else is a reply.
    for (word, kind) in [
        ("stop", "unsubscribed"),
        ("START", "resubscribed"),
        ("thanks!", "replied"),
    ] {
        let params = [
            ("SmsSid", "SM3"),
            ("SmsStatus", "received"),
            ("Body", word),
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("AccountSid", SID),
        ];
        let events = plugin
            .parse_webhook(&signed_webhook(url, "12345", &params))
            .expect("valid signature");
        assert_eq!((word, events[0].kind.as_str()), (word, kind));
        assert_eq!(events[0].bounce, None);
    }
}

#[test]
fn a_provider_echoing_the_authorization_header_leaks_no_form_of_the_secret() {
    use base64::Engine as _;
    // A provider that answers an error echoing what it got: the Basic token (base64 of
    // `sid:token`), and the token itself base64- and URL-encoded.
    let server = HttpServer::start(|r| {
        let auth = r.header("authorization").unwrap_or_default().to_string();
        let token_b64 = base64::engine::general_purpose::STANDARD.encode(TOKEN);
        Reply::json(
            400,
            json!({ "code": 21211, "message": format!("bad request; you sent `{auth}`, token {token_b64}, k={}", TOKEN.replace('-', "%2D")) }),
        )
    });
    let plugin = load_connector(
        "twilio-sms",
        loopback_grant(
            &server,
            json!({ "account_sid": SID, "from": "+14155550199", "api_base": server.base_url() }),
            &[("TWILIO_AUTH_TOKEN", TOKEN)],
        ),
    );
    let err = plugin
        .send(&sms("+14155550100", "hi"))
        .expect_err("the provider refused");
    let text = format!("{err:?}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"));
    assert!(!text.contains(&basic), "the Basic token leaked: {text}");
    assert!(
        !text.contains(&base64::engine::general_purpose::STANDARD.encode(TOKEN)),
        "the base64 token leaked: {text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains("{{secret:"), "{text}");
}
