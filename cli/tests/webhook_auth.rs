//! Provider callbacks (`POST /v1/webhooks/{channel}`) are authenticated by the channel's
//! connector and fail closed, through the real daemon over loopback: a forged Postmark
//! callback is refused and leaves nothing on the contact, an authenticated one lands on the
//! timeline and wakes `wait_for`, a Postmark channel without webhook credentials refuses every
//! callback, and the connectors that have no callbacks (the generic webhook, Mastodon, X, Meta,
//! SMTP) refuse them all, even one signed the way Herald signs its own webhooks. Twilio's
//! signed callbacks are in `plugins.rs`.

mod common;

use common::*;
use serde_json::{json, Value};

const HOOK_USER: &str = "postmark-hooks";
const HOOK_PASSWORD: &str = "correct-horse-battery-staple";

/// POST `body` to `/v1/webhooks/{channel}` with `headers`.
fn callback(c: &Client, channel: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = c
        .agent()
        .post(&format!("{}/v1/webhooks/{channel}", c.base))
        .set("content-type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    respond(req.send_string(body))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The events on `contact`'s timeline, newest first.
fn timeline(c: &Client, contact: &str) -> Vec<String> {
    let (s, body) = c.admin_get(&format!("/v1/contacts/{contact}"));
    assert_eq!(s, 200, "{body}");
    body["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn assert_rejected((s, b): (u16, Value), reason: &str) {
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("webhook_rejected")),
        "{b}"
    );
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(reason), "{message}");
}

/// A stand-in Postmark answering every send with MessageID `pm-<n>`.
fn postmark() -> Recorder {
    Recorder::start_with_body(
        vec![200],
        "{\"To\":\"eve@example.com\",\"MessageID\":\"pm-{n}\",\"ErrorCode\":0,\"Message\":\"OK\"}",
    )
}

/// A Postmark channel `mail` with `extra_config` and `extra_secrets`, and a workflow that mails
/// every signup and waits for the open.
fn postmark_project(api: &Recorder, extra_config: &str, extra_secrets: &str) -> TestProject {
    std::env::set_var("HERALD_TEST_WA_POSTMARK_TOKEN", "postmark-server-token");
    std::env::set_var("HERALD_TEST_WA_POSTMARK_HOOK", HOOK_PASSWORD);
    let p = TestProject::new(&format!(
        "[channels.mail]\nplugin = \"bundled:postmark\"\nto = \"email\"\n\
         allowed_hosts = [\"127.0.0.1\"]\nallow_private = true\n\
         config = {{ from = \"hello@example.com\", api_base = \"{}\"{extra_config} }}\n\
         secrets = {{ POSTMARK_SERVER_TOKEN = \"env:HERALD_TEST_WA_POSTMARK_TOKEN\"{extra_secrets} }}\n",
        api.url
    ));
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"mail\", \"welcome\");\n    let opened = wait_for(\"mail_opened\", days(2));\n    update(#{ opened: opened != () });\n}\n",
    );
    p
}

/// Sign up `user`; returns the id of the run, once it waits for the open of `pm-0`.
fn signup_waiting_for_open(c: &Client, user: &str) -> String {
    c.identify(user, json!({"email": format!("{user}@example.com")}));
    c.track(user, "signup", json!({}));
    let id = c.only_run(user)["id"].as_str().unwrap().to_string();
    let run = c.run_reaches(&id, "waiting", 2);
    assert_eq!(run["journal"][0]["result"]["provider_id"], "pm-0", "{run}");
    id
}

/// Postmark's Open webhook for `pm-0`, as Postmark documents it.
fn open_of_pm0() -> String {
    json!({"RecordType": "Open", "MessageStream": "outbound", "FirstOpen": true, "Recipient": "eve@example.com",
           "MessageID": "pm-0", "ReceivedAt": "2026-11-30T10:00:00Z", "Platform": "WebMail"})
    .to_string()
}

#[test]
fn postmark_callbacks_need_the_webhook_credentials() {
    let api = postmark();
    let p = postmark_project(
        &api,
        &format!(", webhook_username = \"{HOOK_USER}\""),
        ", POSTMARK_WEBHOOK_PASSWORD = \"env:HERALD_TEST_WA_POSTMARK_HOOK\"",
    );
    let d = p.start();
    let c = Client::new(d.url());
    let id = signup_waiting_for_open(&c, "eve");
    let open = open_of_pm0();

    // Forged: no credentials, the wrong password, the wrong user, another scheme.
    assert_rejected(
        callback(&c, "mail", &open, &[]),
        "missing HTTP Basic credentials",
    );
    for auth in [
        basic(HOOK_USER, "correct-horse-battery"),
        basic(HOOK_USER, &format!("{HOOK_PASSWORD}!")),
        basic(HOOK_USER, ""),
        basic("postmark", HOOK_PASSWORD),
        format!("Bearer {HOOK_PASSWORD}"),
    ] {
        let r = callback(&c, "mail", &open, &[("authorization", &auth)]);
        let reason = if auth.starts_with("Bearer") {
            "missing HTTP Basic credentials"
        } else {
            "invalid webhook credentials"
        };
        assert_rejected(r, reason);
    }
    assert!(!timeline(&c, "eve").contains(&"mail_opened".to_string()));
    assert_eq!(c.run(&id)["status"], "waiting");
    assert!(c
        .get_text("/metrics")
        .contains("herald_events_ingested_total{type=\"track\"} 1"));

    // Authenticated: recorded, and the run wakes.
    let auth = basic(HOOK_USER, HOOK_PASSWORD);
    let (s, b) = callback(&c, "mail", &open, &[("authorization", &auth)]);
    assert_eq!((s, b["accepted"].clone()), (200, json!(1)), "{b}");
    let run = c.run_reaches(&id, "completed", 3);
    assert_eq!(run["journal"][1]["result"]["event"], "mail_opened");
    assert_eq!(timeline(&c, "eve")[0], "mail_opened");
}

#[test]
fn postmark_without_webhook_credentials_refuses_every_callback() {
    // Neither the user nor the password configured.
    let api = postmark();
    let p = postmark_project(&api, "", "");
    let d = p.start();
    let c = Client::new(d.url());
    let id = signup_waiting_for_open(&c, "eve");
    let open = open_of_pm0();
    let auth = basic(HOOK_USER, HOOK_PASSWORD);
    assert_rejected(
        callback(&c, "mail", &open, &[]),
        "webhook_username is not configured",
    );
    assert_rejected(
        callback(&c, "mail", &open, &[("authorization", &auth)]),
        "webhook_username is not configured",
    );
    assert!(!timeline(&c, "eve").contains(&"mail_opened".to_string()));
    assert_eq!(c.run(&id)["status"], "waiting");
    drop(d);

    // The user configured, the password secret not supplied.
    let api = postmark();
    let p = postmark_project(&api, &format!(", webhook_username = \"{HOOK_USER}\""), "");
    let d = p.start();
    let c = Client::new(d.url());
    let id = signup_waiting_for_open(&c, "eve");
    for headers in [vec![], vec![("authorization", auth.as_str())]] {
        assert_rejected(
            callback(&c, "mail", &open, &headers),
            "POSTMARK_WEBHOOK_PASSWORD secret is not available",
        );
    }
    assert!(!timeline(&c, "eve").contains(&"mail_opened".to_string()));
    assert_eq!(c.run(&id)["status"], "waiting");
}

/// Herald's own outbound signature: `sha256=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`.
fn herald_signature(key: &str, timestamp: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let tag: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={tag}")
}

#[test]
fn connectors_without_callbacks_refuse_them() {
    std::env::set_var("HERALD_TEST_WA_HOOK_KEY", "hook-signing-key");
    let hook = Recorder::start(vec![200]);
    let p = TestProject::new(&format!(
        "[channels.hook]\nplugin = \"bundled:webhook\"\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = true\n\
         config = {{ url = \"{}/herald\" }}\nsecrets = {{ WEBHOOK_SIGNING_KEY = \"env:HERALD_TEST_WA_HOOK_KEY\" }}\n\n\
         [channels.toot]\nplugin = \"bundled:mastodon\"\nconfig = {{ instance_url = \"https://mastodon.example\" }}\n\n\
         [channels.post]\nplugin = \"bundled:x-posts\"\nconfig = {{}}\n\n\
         [channels.ads]\nplugin = \"bundled:meta-audiences\"\nconfig = {{ audience_id = \"1234\" }}\n\n\
         [channels.capi]\nplugin = \"bundled:meta-capi\"\nconfig = {{ pixel_id = \"5678\" }}\n\n\
         [channels.relay]\nplugin = \"bundled:smtp-email\"\nto = \"email\"\nconfig = {{ from_address = \"hello@example.com\" }}\n\
         [channels.relay.smtp]\nhost = \"127.0.0.1\"\nport = 1\nsecurity = \"none\"\n",
        hook.url
    ));
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"signup\");\nfn run(contact, trigger) {\n    action(\"hook\", \"event\", #{ plan: \"pro\" });\n    let delivered = wait_for(\"hook_delivered\", days(1));\n    update(#{ delivered: delivered != () });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("ada", json!({"email": "ada@example.com"}));
    c.track("ada", "signup", json!({}));
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    let run = c.run_reaches(&id, "waiting", 2);
    assert_eq!(
        run["journal"][0]["result"]["provider_id"], "prov-0",
        "{run}"
    );

    // A "delivered" report for that webhook, signed with the channel's own key the way Herald
    // signs what it sends: the connector only sends, so it is refused all the same.
    let body = json!({"id": "prov-0", "type": "delivered", "to": "ada@example.com"}).to_string();
    let ts = "1764583200";
    let sig = herald_signature("hook-signing-key", ts, &body);
    let signed = [
        ("x-herald-timestamp", ts),
        ("x-herald-signature", sig.as_str()),
    ];
    assert_rejected(callback(&c, "hook", &body, &signed), "accepts no callbacks");
    assert_rejected(callback(&c, "hook", &body, &[]), "accepts no callbacks");
    for channel in ["toot", "post", "ads", "capi", "relay"] {
        assert_rejected(
            callback(&c, channel, &body, &signed),
            "does not accept webhooks",
        );
    }
    assert!(!timeline(&c, "ada").iter().any(|e| e.starts_with("hook_")));
    assert_eq!(c.run(&id)["status"], "waiting");
    // Channels that are not connectors receive no callbacks at all.
    let (s, b) = callback(&c, "email", &body, &[]);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (404, Some("channel_not_found"))
    );
}
