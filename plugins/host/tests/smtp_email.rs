//! smtp-email through the host's SMTP capability into a real SMTP server
//! (mailin-embedded) on loopback; the received bytes are checked.
mod common;

use common::*;
use herald_plugin_host::{CallLimits, Grant, SendError, SendRequest, SmtpRelay};
use serde_json::json;

fn grant(smtp: &SmtpServer) -> Grant {
    Grant {
        config: json!({
            "from_address": "news@shop.example",
            "from_name": "Shop News",
            "list_unsubscribe_mailto": "unsubscribe@shop.example",
            "headers": { "X-Campaign": "welcome" }
        }),
        smtp: Some(SmtpRelay::plain("127.0.0.1", smtp.port)),
        limits: CallLimits::default(),
        ..Grant::default()
    }
}

/// Replace the parts that legitimately vary per run (Date, MIME boundary).
fn normalise(raw: &str) -> String {
    let boundary = raw
        .split("boundary=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("multipart boundary")
        .to_string();
    raw.replace(&boundary, "BOUNDARY")
        .lines()
        .map(|l| {
            if l.starts_with("Date: ") {
                "Date: <date>"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn delivers_multipart_message_with_list_unsubscribe() {
    let smtp = SmtpServer::start();
    let plugin = common::host()
        .load(&connector_dir("smtp-email"), grant(&smtp))
        .expect("load");
    let out = plugin
        .send(&SendRequest {
            idempotency_key: "run-42:step-1".into(),
            to: "ada@example.org".into(),
            subject: Some("Welcome to the shop".into()),
            text: Some("Hello Ada,\r\nthanks for subscribing.\r\n".into()),
            html: Some("<p>Hello <b>Ada</b>,</p><p>thanks for subscribing.</p>".into()),
            fields: json!({ "first_name": "Ada", "last_name": "Lovelace" }),
            payload: json!({ "unsubscribe_url": "https://shop.example/u/abc123" }),
            ..Default::default()
        })
        .expect("send");
    assert_eq!(
        out.provider_message_id.as_deref(),
        Some("run-42-step-1@shop.example")
    );
    let mails = smtp.wait_for(1);
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "news@shop.example");
    assert_eq!(mail.to, vec!["ada@example.org".to_string()]);
    let raw = String::from_utf8(mail.data.clone()).expect("7-bit message");
    // Header block checks independent of the snapshot.
    let (head, _) = raw.split_once("\r\n\r\n").expect("header/body separator");
    // Unfold RFC 5322 folded header lines.
    let head = head.replace("\r\n ", " ");
    assert!(head.contains("List-Unsubscribe: <https://shop.example/u/abc123>, <mailto:unsubscribe@shop.example?subject=unsubscribe>"), "{head}");
    assert!(
        head.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{head}"
    );
    assert!(
        head.contains("Message-ID: <run-42-step-1@shop.example>"),
        "{head}"
    );
    assert!(
        head.contains("Content-Type: multipart/alternative"),
        "{head}"
    );
    assert!(
        !raw.replace("\r\n", "").contains('\n'),
        "every line ends with CRLF"
    );
    insta::assert_snapshot!("smtp_email_received", normalise(&raw));
}

#[test]
fn html_only_gets_a_text_part_and_utf8_subject_is_encoded() {
    let smtp = SmtpServer::start();
    let plugin = common::host()
        .load(&connector_dir("smtp-email"), grant(&smtp))
        .expect("load");
    plugin
        .send(&SendRequest {
            idempotency_key: "k2".into(),
            to: "bob@example.org".into(),
            subject: Some("Grüße aus Köln".into()),
            html: Some("<h1>Sale</h1><p>50% off &amp; free shipping</p>".into()),
            ..Default::default()
        })
        .expect("send");
    let mails = smtp.wait_for(1);
    let raw = String::from_utf8(mails[0].data.clone()).unwrap();
    assert!(raw.contains("Subject: =?utf-8?"), "{raw}");
    assert!(
        raw.contains("Content-Type: text/plain; charset=\"utf-8\""),
        "{raw}"
    );
    assert!(raw.contains("Sale\r\n50% off & free shipping"), "{raw}");
    assert!(
        raw.contains("Content-Type: text/html; charset=\"utf-8\""),
        "{raw}"
    );
    // No unsubscribe URL in this message: mailto only, and no one-click header.
    assert!(raw.contains("List-Unsubscribe: <mailto:unsubscribe@shop.example?subject=unsubscribe>"));
    assert!(!raw.contains("List-Unsubscribe-Post"));
}

#[test]
fn invalid_input_and_missing_relay() {
    let smtp = SmtpServer::start();
    let plugin = common::host()
        .load(&connector_dir("smtp-email"), grant(&smtp))
        .expect("load");
    let bad = plugin.send(&SendRequest {
        idempotency_key: "k".into(),
        to: "not-an-address".into(),
        subject: Some("s".into()),
        text: Some("t".into()),
        ..Default::default()
    });
    assert!(matches!(bad, Err(SendError::InvalidInput(_))), "{bad:?}");
    let mut g = grant(&smtp);
    g.smtp = None;
    let no_relay = common::host()
        .load(&connector_dir("smtp-email"), g)
        .expect("load");
    let r = no_relay.send(&SendRequest {
        idempotency_key: "k".into(),
        to: "a@example.org".into(),
        subject: Some("s".into()),
        text: Some("t".into()),
        ..Default::default()
    });
    match r {
        Err(SendError::Sandbox(m)) => assert!(m.contains("did not configure an SMTP relay"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A relay that refuses connections is transient: nothing was delivered.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut g = grant(&smtp);
    g.smtp = Some(SmtpRelay::plain("127.0.0.1", port));
    let down = common::host()
        .load(&connector_dir("smtp-email"), g)
        .expect("load");
    let r = down.send(&SendRequest {
        idempotency_key: "k".into(),
        to: "a@example.org".into(),
        subject: Some("s".into()),
        text: Some("t".into()),
        ..Default::default()
    });
    assert!(matches!(r, Err(SendError::Transient(_))), "{r:?}");
}
