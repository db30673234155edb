//! Tracked engagement and the messages people expect: a broadcast received by a real SMTP
//! server carries List-Unsubscribe (one-click over https), the recipient's display name,
//! links rewritten through the daemon's click redirect and an open pixel; following them over
//! HTTP records `email_clicked` / `email_opened` on the right run and variant, deduplicated
//! against the provider's own report; machine opens are kept apart; forged or altered tokens
//! are refused.

mod common;

use common::*;
use serde_json::{json, Value};

const NEWS: &str = "---\ntopic: newsletter\nsubject: Spring news\n---\n<mjml>\n  <mj-body>\n    <mj-section>\n      <mj-column>\n        <mj-text>Hello {{ contact.first_name }}!</mj-text>\n        <mj-button href=\"https://blog.example/post\">Read the post</mj-button>\n        <mj-text><a href=\"https://shop.example/spring?utm=news&amp;x=1\" data-herald-link=\"cta\">Shop</a> or <a href=\"https://raw.example/\" data-herald-track=\"off\">an untracked link</a>. Leave: <a href=\"{{ message.unsubscribe_url }}\">unsubscribe</a>. <a href=\"{{ message.view_url }}\" data-herald-track=\"off\">View in your browser</a></mj-text>\n      </mj-column>\n    </mj-section>\n  </mj-body>\n</mjml>\n";

fn project(smtp: &Smtp) -> TestProject {
    let p = TestProject::new(&format!(
        "[server]\npublic_url = \"https://herald.example.com\"\n\n\
         [topics.newsletter]\nlabel = \"Newsletter\"\n\n\
         [channels.mail]\nplugin = \"bundled:smtp-email\"\nto = \"email\"\n\
         config = {{ from_address = \"news@example.com\", from_name = \"Example News\" }}\n\n\
         [channels.mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n",
        smtp.port
    ));
    for name in ["welcome", "nudge", "tips"] {
        p.template(name, "---\ntopic: transactional\nsubject: x\n---\nx");
    }
    std::fs::write(p.path().join("templates/news.mjml"), NEWS).unwrap();
    std::fs::create_dir_all(p.path().join("broadcasts")).unwrap();
    std::fs::write(
        p.path().join("broadcasts/news.rhai"),
        "broadcast(\"news\").channel(\"mail\").template(\"news\").topic(\"newsletter\");\n",
    )
    .unwrap();
    p
}

/// The received message, parsed: (headers as text, the HTML part).
fn received(smtp: &Smtp, n: usize) -> Vec<(String, String)> {
    let raw = eventually("the messages arrive", || {
        let inbox = smtp.inbox.lock().unwrap();
        (inbox.len() >= n).then(|| inbox.clone())
    });
    raw.iter()
        .map(|m| {
            let parsed = mail_parser::MessageParser::default()
                .parse(m.as_bytes())
                .expect("a MIME message");
            let head_end = m.find("\r\n\r\n").unwrap_or(m.len());
            (
                m[..head_end].to_string(),
                parsed.body_html(0).expect("an HTML part").into_owned(),
            )
        })
        .collect()
}

/// Every `href`/`src` value in `html` that starts with `prefix`.
fn links(html: &str, prefix: &str) -> Vec<String> {
    html.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &html[i..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// GET `url` on the daemon (its path, with the public base replaced), without following
/// redirects: (status, Location).
fn follow(c: &Client, url: &str, agent: &str) -> (u16, Option<String>) {
    let path = url.strip_prefix("https://herald.example.com").unwrap();
    let client = ureq::AgentBuilder::new().redirects(0).build();
    let r = client
        .get(&format!("{}{path}", c.base))
        .set("user-agent", agent)
        .call();
    match r {
        Ok(r) => (r.status(), r.header("location").map(str::to_string)),
        Err(ureq::Error::Status(s, r)) => (s, r.header("location").map(str::to_string)),
        Err(e) => panic!("{e}"),
    }
}

fn events_named(c: &Client, contact: &str, name: &str) -> Vec<Value> {
    let (s, b) = c.admin_get(&format!("/v1/contacts/{contact}"));
    assert_eq!(s, 200, "{b}");
    b["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == name)
        .cloned()
        .collect()
}

const BROWSER: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari/537.36";

#[test]
fn a_broadcast_by_smtp_carries_unsubscribe_headers_and_tracked_links_that_record_clicks_and_opens()
{
    let smtp = Smtp::start();
    let p = project(&smtp);
    let d = p.start();
    let c = Client::new(d.url());
    c.identify(
        "ada",
        json!({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}),
    );
    c.set_clock(1_000_000);
    let (s, b) = c.admin_post("/v1/broadcasts/news/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    let (head, html) = received(&smtp, 1).remove(0);
    // The send is recorded (its time is what a click is measured from) before time moves on.
    eventually("the send is recorded", || {
        let runs = c.runs_of("ada");
        (runs.first()?["status"] == "completed").then_some(())
    });
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    assert!(
        unfolded.contains("List-Unsubscribe: <https://herald.example.com/u/"),
        "{unfolded}"
    );
    assert!(
        unfolded.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "an https public URL gets RFC 8058 one-click: {unfolded}"
    );
    assert!(
        unfolded.contains("Ada Lovelace"),
        "the display name: {unfolded}"
    );
    assert!(unfolded.contains("Example News"), "{unfolded}");

    // Links through the redirect, except the unsubscribe link and the one marked off.
    assert!(!html.contains("https://shop.example"), "{html}");
    assert!(!html.contains("https://blog.example"), "{html}");
    assert!(html.contains("https://raw.example/"), "{html}");
    assert!(
        html.replace("&#x2F;", "/")
            .contains("https://herald.example.com/u/"),
        "the unsubscribe link stays as it is: {html}"
    );
    assert!(!html.contains("data-herald"), "{html}");
    let clicks = links(&html, "https://herald.example.com/c/");
    assert_eq!(clicks.len(), 2, "{html}");
    let pixels = links(&html, "https://herald.example.com/o/");
    assert_eq!(pixels.len(), 1, "{html}");

    // A link scanner within seconds of the send is a machine: kept apart from clicks.
    let clicks: Vec<String> = {
        // The shop link (named cta) first.
        let mut v = clicks;
        v.reverse();
        v
    };
    let (s, loc) = follow(&c, &clicks[0], "Mozilla/5.0");
    assert_eq!(s, 302);
    assert_eq!(
        loc.as_deref(),
        Some("https://shop.example/spring?utm=news&x=1"),
        "the original URL, entities decoded"
    );
    // The person, a minute later.
    c.advance(60_000);
    let (s, loc) = follow(&c, &clicks[0], BROWSER);
    assert_eq!(
        (s, loc.as_deref()),
        (302, Some("https://shop.example/spring?utm=news&x=1"))
    );
    let (s, _) = follow(&c, &clicks[0], BROWSER);
    assert_eq!(s, 302, "a second click still redirects");
    let (s, loc) = follow(&c, &clicks[1], BROWSER);
    assert_eq!(
        (s, loc.as_deref()),
        (302, Some("https://blog.example/post"))
    );
    let (s, _) = follow(&c, &pixels[0], BROWSER);
    assert_eq!(s, 200);

    let clicked = eventually("the clicks are on the timeline", || {
        let e = events_named(&c, "ada", "email_clicked");
        let e: Vec<Value> = events_named(&c, "ada", "mail_clicked")
            .into_iter()
            .chain(e)
            .collect();
        (e.len() >= 2).then_some(e)
    });
    assert_eq!(clicked.len(), 2, "one per link, not per click: {clicked:?}");
    let cta = clicked
        .iter()
        .find(|e| e["properties"]["link"] == "cta")
        .unwrap_or_else(|| panic!("{clicked:?}"));
    assert_eq!(cta["event"], "mail_clicked");
    assert_eq!(
        cta["properties"]["url"],
        "https://shop.example/spring?utm=news&x=1"
    );
    assert_eq!(cta["properties"]["workflow"], "news");
    let run = cta["properties"]["run"].as_str().unwrap();
    assert!(run.starts_with("bc-news-"), "{cta}");
    assert_eq!(cta["properties"]["step"], 0);
    let machine = events_named(&c, "ada", "mail_machine_clicked");
    assert_eq!(machine.len(), 1, "{machine:?}");
    assert!(machine[0]["properties"]["machine_reason"]
        .as_str()
        .is_some());
    let opened = eventually("the open is on the timeline", || {
        let e = events_named(&c, "ada", "mail_opened");
        (!e.is_empty()).then_some(e)
    });
    assert_eq!(opened.len(), 1);

    // Forged and altered tokens: 404, never a redirect.
    let mut altered = clicks[0].clone();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [
        altered,
        "https://herald.example.com/c/not-a-token".to_string(),
        pixels[0].replace("/o/", "/c/"),
        format!("https://herald.example.com/c/{}", "A".repeat(9000)),
    ] {
        let (s, loc) = follow(&c, &bad, BROWSER);
        assert_eq!((s, loc), (404, None), "{bad}");
    }
}

#[test]
fn http_public_urls_get_a_list_unsubscribe_link_without_one_click_and_a_channel_can_turn_tracking_off(
) {
    let smtp = Smtp::start();
    let p = project(&smtp);
    let toml = std::fs::read_to_string(p.path().join("herald.toml")).unwrap();
    std::fs::write(
        p.path().join("herald.toml"),
        toml.replace("https://herald.example.com", "http://herald.example.com")
            .replace(
                "to = \"email\"\nconfig",
                "to = \"email\"\ntrack = false\nconfig",
            ),
    )
    .unwrap();
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("bo", json!({"email": "bo@example.com", "first_name": "Bo"}));
    let (s, b) = c.admin_post("/v1/broadcasts/news/schedule", json!({}));
    assert_eq!(s, 200, "{b}");
    let (head, html) = received(&smtp, 1).remove(0);
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    assert!(
        unfolded.contains("List-Unsubscribe: <http://herald.example.com/u/"),
        "{unfolded}"
    );
    assert!(
        !unfolded.contains("List-Unsubscribe-Post"),
        "RFC 8058 one-click needs https: {unfolded}"
    );
    assert!(
        html.contains("https://shop.example/spring"),
        "not rewritten: {html}"
    );
    assert!(!html.contains("/o/"), "no pixel: {html}");

    // "View in browser": the message as sent, served by the daemon behind a signed link.
    let decoded = html.replace("&#x2F;", "/");
    let view = links(&decoded, "http://herald.example.com/v/").remove(0);
    let path = view.strip_prefix("http://herald.example.com").unwrap();
    let page = ureq::get(&format!("{}{path}", c.base)).call().unwrap();
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let body = page.into_string().unwrap();
    assert!(body.contains("Hello Bo!"), "{body}");
    let forged = format!("{}{}x", c.base, path);
    match ureq::get(&forged).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("a changed token is refused: {other:?}"),
    }
}
