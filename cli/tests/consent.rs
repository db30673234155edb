//! Consent, unsubscribe and suppression: topics declared in the project, signed unsubscribe
//! links in marketing messages, a preference page whose GET changes nothing, RFC 8058
//! one-click unsubscribe, suppression from provider callbacks and the API, and the one
//! policy evaluation that skips a send (journaled, returned by `send()`).

mod common;

use common::*;
use serde_json::{json, Value};

const TOPICS: &str = "[topics.newsletter]\nlabel = \"Monthly newsletter\"\n\
    description = \"Our best stories, once a month.\"\n\n\
    [topics.product]\nlabel = \"Product news\"\n\n";

/// A project with two topics and a template on each, plus a receipt.
fn project(extra: &str) -> TestProject {
    let p = TestProject::new(&format!("{TOPICS}{extra}"));
    // The stock templates of the test project name no topic; give them one.
    for name in ["welcome", "nudge", "tips"] {
        p.template(name, "---\ntopic: transactional\nsubject: x\n---\nx");
    }
    p.template(
        "news",
        "---\ntopic: newsletter\nsubject: News for {{ contact.first_name }}\n---\nRead on. Leave: {{ message.unsubscribe_url }}",
    );
    p.template(
        "promo",
        "---\ntopic: product\nsubject: New\n---\nSomething new.",
    );
    p.template(
        "receipt",
        "---\ntopic: transactional\nsubject: Receipt\n---\nThanks.",
    );
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"go\").reentry(\"always\");\n\
         fn run(contact, trigger) {\n\
             let a = send(\"email\", \"news\");\n\
             let b = send(\"email\", \"promo\");\n\
             let c = send(\"email\", \"receipt\");\n\
             update(#{ last: [a.status, b.status, c.status] });\n\
         }\n",
    );
    p
}

/// The journal of the contact's newest run, once it completed.
fn newest_run(c: &Client, contact: &str, runs: usize) -> Value {
    newest_run_with(c, contact, runs, 4)
}

fn newest_run_with(c: &Client, contact: &str, runs: usize, steps: usize) -> Value {
    let all = eventually("the run starts", || {
        let r = c.runs_of(contact);
        (r.len() >= runs).then_some(r)
    });
    let id = all.iter().max_by_key(|r| r["created_at"].as_i64()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.run_reaches(&id, "completed", steps)
}

fn http_get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

fn http_form(url: &str, body: &str) -> (u16, String, Option<String>) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent
        .post(url)
        .set("content-type", "application/x-www-form-urlencoded")
        .set("user-agent", "consent-test/1.0")
        .send_string(body);
    match r {
        Ok(r) => {
            let loc = r.header("location").map(str::to_string);
            (r.status(), r.into_string().unwrap(), loc)
        }
        Err(ureq::Error::Status(s, r)) => {
            let loc = r.header("location").map(str::to_string);
            (s, r.into_string().unwrap(), loc)
        }
        Err(e) => panic!("{e}"),
    }
}

fn consent(c: &Client, contact: &str) -> Value {
    let (s, b) = c.admin_get(&format!("/v1/contacts/{contact}/consent"));
    assert_eq!(s, 200, "{b}");
    b
}

fn status_of(consent: &Value, topic: &str) -> String {
    consent["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_preference_page_leaves_one_topic_and_later_sends_on_it_are_skipped() {
    let p = project("");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify(
        "ada",
        json!({"email": "ada@example.com", "first_name": "Ada"}),
    );
    c.track("ada", "go", json!({}));
    let run = newest_run(&c, "ada", 1);
    assert_eq!(run["journal"][0]["result"]["status"], "sent", "{run}");

    let sent = p.outbox("email");
    assert_eq!(sent.len(), 3, "{sent:?}");
    let news = &sent[0];
    assert_eq!(news["topic"], "newsletter");
    let url = news["unsubscribe"]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/u/", d.url())), "{url}");
    // Over http the one-click URL is not offered (RFC 8058 asks for https).
    assert!(news["unsubscribe"].get("one_click").is_none(), "{news}");
    // The template links to it.
    assert!(news["body"].as_str().unwrap().ends_with(&url), "{news}");
    // A transactional message has no unsubscribe link.
    assert_eq!(sent[2]["topic"], "transactional");
    assert!(sent[2].get("unsubscribe").is_none(), "{}", sent[2]);

    // GET shows the page and changes nothing (link scanners fetch every link).
    let (s, html) = http_get(&url);
    assert_eq!(s, 200);
    assert!(
        html.contains("Monthly newsletter") && html.contains("Product news"),
        "{html}"
    );
    assert!(html.contains("value=\"newsletter\" checked"), "{html}");
    let before = consent(&c, "ada");
    assert_eq!(status_of(&before, "newsletter"), "subscribed");
    assert_eq!(before["topics"][0]["default"], true);

    // The form: keep product, leave the newsletter.
    let (s, _, location) = http_form(&url, "topic=product&action=save");
    assert_eq!((s, location.as_deref()), (303, Some("?saved=1")));
    let after = consent(&c, "ada");
    assert_eq!(status_of(&after, "newsletter"), "unsubscribed");
    assert_eq!(status_of(&after, "product"), "subscribed");
    let record = &after["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "newsletter")
        .unwrap()["record"];
    assert_eq!(record["source"], "preference_page");
    assert_eq!(record["ip"], "127.0.0.1");
    assert_eq!(record["user_agent"], "consent-test/1.0");
    assert_eq!(record["message"], news["idempotency_key"]);
    let (_, html) = http_get(&format!("{url}?saved=1"));
    assert!(html.contains("Your preferences are saved"), "{html}");
    assert!(!html.contains("value=\"newsletter\" checked"), "{html}");

    // The next run: the newsletter is skipped by the consent rule, the rest goes out.
    c.track("ada", "go", json!({}));
    let run = newest_run(&c, "ada", 2);
    let news_step = &run["journal"][0]["result"];
    assert_eq!(news_step["status"], "skipped", "{run}");
    assert_eq!(news_step["rule"], "consent");
    assert!(
        news_step["reason"]
            .as_str()
            .unwrap()
            .contains("unsubscribed from `newsletter` (preference_page"),
        "{news_step}"
    );
    assert_eq!(run["journal"][1]["result"]["status"], "sent");
    assert_eq!(run["journal"][2]["result"]["status"], "sent");
    let (_, contact) = c.admin_get("/v1/contacts/ada");
    assert_eq!(
        contact["attributes"]["last"],
        json!(["skipped", "sent", "sent"])
    );
    assert_eq!(
        p.outbox("email").len(),
        5,
        "the newsletter was not sent again"
    );
    assert!(c
        .get_text("/metrics")
        .contains("herald_sends_total{channel=\"email\",outcome=\"skipped\"} 1"));
}

#[test]
fn one_click_unsubscribes_over_https_and_forged_links_change_nothing() {
    // An https public URL (the daemon itself is still reached on loopback here).
    let p = project("[server]\npublic_url = \"https://mail.example.com/\"\n\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("bo", json!({"email": "bo@example.com"}));
    c.track("bo", "go", json!({}));
    newest_run(&c, "bo", 1);
    let promo = &p.outbox("email")[1];
    let url = promo["unsubscribe"]["url"].as_str().unwrap();
    assert!(url.starts_with("https://mail.example.com/u/"), "{url}");
    assert_eq!(promo["unsubscribe"]["one_click"], url);
    let local = url.replace("https://mail.example.com", &d.url());

    // Forged or altered tokens are refused and change nothing.
    let token = local.rsplit('/').next().unwrap().to_string();
    let mut altered = token.clone().into_bytes();
    altered[5] = if altered[5] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in [altered.as_str(), "not-a-token", &"x".repeat(5000)] {
        let bad_url = format!("{}/u/{bad}", d.url());
        let (s, _, _) = http_form(&bad_url, "List-Unsubscribe=One-Click");
        assert_eq!(s, 404, "{bad_url}");
        assert_eq!(http_get(&bad_url).0, 404);
    }
    assert_eq!(status_of(&consent(&c, "bo"), "product"), "subscribed");
    // A form that says nothing changes nothing.
    assert_eq!(http_form(&local, "hello=1").0, 400);

    // One-click, as a mailbox provider sends it: the message's topic only.
    let (s, html, _) = http_form(&local, "List-Unsubscribe=One-Click");
    assert_eq!(s, 200, "{html}");
    let after = consent(&c, "bo");
    assert_eq!(status_of(&after, "product"), "unsubscribed");
    assert_eq!(status_of(&after, "newsletter"), "subscribed");

    // Links signed before a key rotation still work.
    let (s, b) = c.admin_post("/v1/links/rotate", json!({}));
    assert_eq!((s, b["key"].clone()), (200, json!(2)), "{b}");
    assert_eq!(http_get(&local).0, 200);
}

#[test]
fn a_suppressed_address_receives_nothing_not_even_transactional_until_lifted() {
    let p = project("");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("cy", json!({"email": "Cy@Example.com"}));
    let (s, b) = c.admin_post(
        "/v1/suppressions/email",
        json!([{"address": " cy@example.COM ", "reason": "complaint", "detail": "feedback loop"}]),
    );
    assert_eq!((s, b["suppressed"].clone()), (200, json!(1)), "{b}");
    let (_, list) = c.admin_get("/v1/suppressions/email");
    assert_eq!(list["suppressions"][0]["address"], "cy@example.com");
    assert_eq!(list["suppressions"][0]["reason"], "complaint");
    c.track("cy", "go", json!({}));
    let run = newest_run(&c, "cy", 1);
    for i in 0..3 {
        let r = &run["journal"][i]["result"];
        assert_eq!(
            (r["status"].as_str(), r["rule"].as_str()),
            (Some("skipped"), Some("suppression")),
            "{run}"
        );
    }
    assert!(run["journal"][2]["result"]["reason"]
        .as_str()
        .unwrap()
        .contains("cy@example.com is suppressed on channel `email`: complaint"));
    assert!(p.outbox("email").is_empty());

    // Bad input is refused whole.
    let (s, _) = c.admin_post("/v1/suppressions/email", json!([{"address": ""}]));
    assert_eq!(s, 400);
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"address": format!("a{i}@x.com")}))
        .collect();
    assert_eq!(c.admin_post("/v1/suppressions/email", json!(many)).0, 413);
    assert_eq!(c.admin_post("/v1/suppressions/nope", json!([])).0, 404);
    let (s, b) = c.admin_post(
        "/v1/contacts/cy/consent",
        json!({"topic": "nonsense", "status": "subscribed"}),
    );
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (400, json!("unknown_topic"))
    );

    // Lifted: the next run sends.
    let r = ureq::delete(&format!("{}/v1/suppressions/email/CY@example.com", d.url()))
        .set("authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    c.track("cy", "go", json!({}));
    let run = newest_run(&c, "cy", 2);
    assert_eq!(run["journal"][2]["result"]["status"], "sent", "{run}");
    assert_eq!(p.outbox("email").len(), 3);
}

#[test]
fn a_hard_bounce_callback_suppresses_the_address_and_the_next_send_is_skipped() {
    std::env::set_var("HERALD_TEST_CONSENT_PM_TOKEN", "pm-token");
    std::env::set_var("HERALD_TEST_CONSENT_PM_HOOK", "pm-hook-password");
    let postmark = Recorder::start_with_body(
        vec![200],
        "{\"To\":\"dee@example.com\",\"MessageID\":\"0a1b2c3d-0000-4000-8000-00000000000{n}\",\"ErrorCode\":0,\"Message\":\"OK\"}",
    );
    let p = project(&format!(
        "[channels.mail]\nplugin = \"bundled:postmark\"\nto = \"email\"\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = true\n\
         config = {{ from = \"hello@example.com\", api_base = \"{}\", webhook_username = \"hooks\" }}\n\
         secrets = {{ POSTMARK_SERVER_TOKEN = \"env:HERALD_TEST_CONSENT_PM_TOKEN\", \
         POSTMARK_WEBHOOK_PASSWORD = \"env:HERALD_TEST_CONSENT_PM_HOOK\" }}\n",
        postmark.url
    ));
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"go\").reentry(\"always\");\n\
         fn run(contact, trigger) {\n    let r = send(\"mail\", \"receipt\");\n    update(#{ last: r.status });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("dee", json!({"email": "dee@example.com"}));
    c.track("dee", "go", json!({}));
    let run = newest_run_with(&c, "dee", 1, 2);
    assert_eq!(run["journal"][0]["result"]["status"], "sent", "{run}");

    // Postmark's Bounce webhook for that message: a hard bounce.
    let bounce = json!({"RecordType": "Bounce", "Type": "HardBounce", "TypeCode": 1, "MessageStream": "outbound",
        "MessageID": "0a1b2c3d-0000-4000-8000-000000000000", "Email": "dee@example.com",
        "Description": "The server was unable to deliver your message", "Details": "smtp;550 5.1.1 unknown user",
        "BouncedAt": "2026-12-01T10:00:00Z", "Inactive": true, "CanActivate": true});
    use base64::Engine as _;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("hooks:pm-hook-password")
    );
    let (s, b) = c.raw_post("/v1/webhooks/mail", &bounce.to_string(), Some(&auth), None);
    assert_eq!(s, 200, "{b}");
    let (_, list) = c.admin_get("/v1/suppressions/mail");
    assert_eq!(
        list["suppressions"][0]["address"], "dee@example.com",
        "{list}"
    );
    assert_eq!(list["suppressions"][0]["reason"], "hard_bounce");

    c.track("dee", "go", json!({}));
    let run = newest_run_with(&c, "dee", 2, 2);
    let r = &run["journal"][0]["result"];
    assert_eq!(
        (r["status"].as_str(), r["rule"].as_str()),
        (Some("skipped"), Some("suppression")),
        "{run}"
    );
    assert_eq!(postmark.count(), 1, "nothing more reached the provider");
}
