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
            to_name: Some("Ada Lovelace".into()),
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
fn a_send_takes_the_templates_sender_reply_to_preheader_and_the_runtimes_headers() {
    let smtp = SmtpServer::start();
    let plugin = common::host()
        .load(&connector_dir("smtp-email"), grant(&smtp))
        .expect("load");
    plugin
        .send(&SendRequest {
            idempotency_key: "run-9:step-0".into(),
            to: "ada@example.org".into(),
            to_name: Some("Ada Lovelace".into()),
            subject: Some("Spring picks".into()),
            html: Some("<html><body class=\"x\"><p>Hello</p></body></html>".into()),
            preheader: Some("Three new <things>".into()),
            from: Some("Editors <editors@shop.example>".into()),
            reply_to: Some("letters@shop.example".into()),
            headers: vec![
                (
                    "List-Unsubscribe".into(),
                    "<https://herald.example/u/t1>".into(),
                ),
                (
                    "List-Unsubscribe-Post".into(),
                    "List-Unsubscribe=One-Click".into(),
                ),
            ],
            ..Default::default()
        })
        .expect("send");
    let mails = smtp.wait_for(1);
    let raw = String::from_utf8(mails[0].data.clone()).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    let head = head.replace("\r\n ", " ");
    assert!(
        head.contains("From: \"Editors\" <editors@shop.example>"),
        "{head}"
    );
    assert!(
        head.contains("To: \"Ada Lovelace\" <ada@example.org>"),
        "{head}"
    );
    assert!(head.contains("Reply-To: <letters@shop.example>"), "{head}");
    // The runtime's List-Unsubscribe replaces the connector's own (no mailto added).
    assert!(
        head.contains("List-Unsubscribe: <https://herald.example/u/t1>\r\n"),
        "{head}"
    );
    assert_eq!(head.matches("List-Unsubscribe:").count(), 1, "{head}");
    assert!(
        head.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{head}"
    );
    // The preheader is the hidden first element of the body, escaped.
    let html = body.replace("=\r\n", "").replace("=3D", "=");
    assert!(
        html.contains("<body class=\"x\"><div style=\"display:none;"),
        "{html}"
    );
    assert!(
        html.contains("Three new &lt;things&gt;</div><p>Hello</p>"),
        "{html}"
    );
    // The envelope sender follows the template's address.
    assert_eq!(mails[0].from, "editors@shop.example");
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
        Err(SendError::Denied(m)) => assert!(m.contains("did not configure an SMTP relay"), "{m}"),
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

// ---------------------------------------------------------------------------
// Connection handling, observed at a scripted SMTP server on loopback that
// logs every command line per connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use herald_plugin_host::smtp_client::SmtpClient;

/// How the scripted server closes a connection after accepting a message.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    /// Keep it open.
    Never,
    /// Close it without a word (as after an idle timeout or a restart).
    Silently,
    /// Announce `421` first, as Postfix does on its idle timeout.
    With421,
}

#[derive(Clone, Debug)]
struct Script {
    pipelining: bool,
    close_after_message: Close,
    /// Answer `550` to `RCPT TO` for this address.
    reject_rcpt: Option<String>,
    /// Hold the reply to the end-of-data marker until this many messages arrived.
    hold_until: usize,
    /// Answer this many `MAIL FROM` commands with `454` (the relay throttles).
    throttle_mail: usize,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            pipelining: false,
            close_after_message: Close::Never,
            reject_rcpt: None,
            hold_until: 0,
            throttle_mail: 0,
        }
    }
}

#[derive(Default, Debug)]
struct Seen {
    accepted: usize,
    closed: usize,
    /// (connection number, command line without CRLF)
    commands: Vec<(usize, String)>,
    /// (connection number, DATA bytes as on the wire, before the terminator line)
    messages: Vec<(usize, Vec<u8>)>,
}

type SeenCell = Arc<(Mutex<Seen>, Condvar)>;

struct ScriptedSmtp {
    port: u16,
    seen: SeenCell,
}

impl ScriptedSmtp {
    fn start(script: Script) -> ScriptedSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: SeenCell = Arc::default();
        let cell = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let n = {
                    let mut s = cell.0.lock().unwrap();
                    s.accepted += 1;
                    s.accepted - 1
                };
                let (script, cell) = (script.clone(), cell.clone());
                std::thread::spawn(move || {
                    serve(stream, n, &script, &cell);
                    cell.0.lock().unwrap().closed += 1;
                    cell.1.notify_all();
                });
            }
        });
        ScriptedSmtp { port, seen }
    }

    /// Wait (two-minute hang guard) until `cond` holds, then return its view.
    fn wait_until(
        &self,
        what: &str,
        cond: impl Fn(&Seen) -> bool,
    ) -> std::sync::MutexGuard<'_, Seen> {
        let (lock, cv) = &*self.seen;
        let (s, _) = cv
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(120), |s| !cond(s))
            .unwrap();
        assert!(cond(&s), "hang guard: never saw {what}: {s:#?}");
        s
    }
}

fn serve(stream: TcpStream, conn: usize, script: &Script, cell: &SeenCell) {
    stream.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let reply = |out: &mut TcpStream, text: &str| out.write_all(text.as_bytes()).is_ok();
    if !reply(&mut out, "220 mx.test ESMTP scripted\r\n") {
        return;
    }
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        cell.0.lock().unwrap().commands.push((conn, line.clone()));
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let ok = match verb.as_str() {
            "EHLO" => {
                let pipelining = if script.pipelining {
                    "250-PIPELINING\r\n"
                } else {
                    ""
                };
                reply(
                    &mut out,
                    &format!("250-mx.test\r\n{pipelining}250-8BITMIME\r\n250 SMTPUTF8\r\n"),
                )
            }
            "MAIL" => {
                let throttled = {
                    let s = cell.0.lock().unwrap();
                    let n = s
                        .commands
                        .iter()
                        .filter(|(_, l)| l.starts_with("MAIL"))
                        .count();
                    n <= script.throttle_mail
                };
                if throttled {
                    reply(&mut out, "454 4.7.0 too many messages, slow down\r\n")
                } else {
                    reply(&mut out, "250 2.1.0 sender ok\r\n")
                }
            }
            "RCPT" => match &script.reject_rcpt {
                Some(bad) if line.contains(bad.as_str()) => {
                    reply(&mut out, "550 5.1.1 no such user\r\n")
                }
                _ => reply(&mut out, "250 2.1.5 recipient ok\r\n"),
            },
            "DATA" => {
                if !reply(&mut out, "354 end with <CRLF>.<CRLF>\r\n") {
                    return;
                }
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if reader.read_until(b'\n', &mut l).unwrap_or(0) == 0 {
                        return;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(&l);
                }
                let (lock, cv) = &**cell;
                let mut s = lock.lock().unwrap();
                s.messages.push((conn, data));
                let n = s.messages.len();
                cv.notify_all();
                let (s, _) = cv
                    .wait_timeout_while(s, Duration::from_secs(120), |s| {
                        s.messages.len() < script.hold_until
                    })
                    .unwrap();
                drop(s);
                if !reply(&mut out, &format!("250 2.0.0 queued as {n}\r\n")) {
                    return;
                }
                match script.close_after_message {
                    Close::Never => true,
                    Close::Silently => false,
                    Close::With421 => {
                        reply(&mut out, "421 4.4.2 mx.test closing connection\r\n");
                        false
                    }
                }
            }
            "RSET" | "NOOP" => reply(&mut out, "250 2.0.0 ok\r\n"),
            "QUIT" => {
                reply(&mut out, "221 2.0.0 bye\r\n");
                false
            }
            _ => reply(&mut out, "502 5.5.2 unknown command\r\n"),
        };
        if !ok {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// The verbs (first word, upper-case) the client sent on connection `conn`.
fn verbs(seen: &Seen, conn: usize) -> Vec<String> {
    seen.commands
        .iter()
        .filter(|(c, _)| *c == conn)
        .map(|(_, l)| {
            l.split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase()
        })
        .collect()
}

fn scripted_grant(port: u16, connections: usize) -> Grant {
    let mut relay = SmtpRelay::plain("127.0.0.1", port);
    relay.connections = connections;
    Grant {
        config: json!({ "from_address": "news@shop.example" }),
        smtp: Some(relay),
        limits: CallLimits {
            // A hang guard only: a loaded machine must not fail a test by being slow.
            timeout: Duration::from_secs(120),
            ..CallLimits::default()
        },
        ..Grant::default()
    }
}

fn mail_to(to: &str, i: usize) -> SendRequest {
    SendRequest {
        idempotency_key: format!("run-{i}:step-1"),
        to: to.into(),
        subject: Some(format!("Message {i}")),
        text: Some(format!("Hello,\r\nthis is message {i}.\r\n")),
        ..Default::default()
    }
}

#[test]
fn messages_on_one_connection_are_sent_without_noop() {
    for pipelining in [false, true] {
        let server = ScriptedSmtp::start(Script {
            pipelining,
            ..Script::default()
        });
        let plugin = load_connector("smtp-email", scripted_grant(server.port, 4));
        for i in 0..3 {
            plugin
                .send(&mail_to("ada@example.org", i))
                .unwrap_or_else(|e| panic!("send {i}: {e}"));
        }
        let seen = server.wait_until("3 messages", |s| s.messages.len() == 3);
        assert_eq!(seen.accepted, 1, "one connection for all messages");
        let transaction = ["MAIL", "RCPT", "DATA"];
        let expected: Vec<&str> = ["EHLO", "EHLO"]
            .into_iter()
            .chain(transaction.iter().copied().cycle().take(9))
            .collect();
        assert_eq!(verbs(&seen, 0), expected, "pipelining={pipelining}");
        assert!(
            seen.commands
                .iter()
                .all(|(_, l)| !l.eq_ignore_ascii_case("NOOP")),
            "{:#?}",
            seen.commands
        );
    }
}

#[test]
fn server_closing_an_idle_connection_does_not_lose_the_next_message() {
    for (close, pipelining) in [(Close::Silently, false), (Close::With421, true)] {
        let server = ScriptedSmtp::start(Script {
            pipelining,
            close_after_message: close,
            ..Script::default()
        });
        let plugin = load_connector("smtp-email", scripted_grant(server.port, 4));
        plugin.send(&mail_to("ada@example.org", 1)).expect("first");
        // The server has closed the pooled connection before the next message.
        drop(server.wait_until("the first connection closed", |s| s.closed == 1));
        plugin
            .send(&mail_to("bob@example.org", 2))
            .unwrap_or_else(|e| panic!("{close:?}: second message lost: {e}"));
        let seen = server.wait_until("2 messages", |s| s.messages.len() == 2);
        assert_eq!(seen.accepted, 2, "{close:?}: retried on a new connection");
        assert_eq!(
            seen.messages.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            vec![0, 1]
        );
        // The closed connection got the first command of the second message, no more.
        assert_eq!(verbs(&seen, 0).last().map(String::as_str), Some("DATA"));
    }
}

#[test]
fn refused_recipient_is_reset_and_the_connection_reused() {
    for pipelining in [false, true] {
        let server = ScriptedSmtp::start(Script {
            pipelining,
            reject_rcpt: Some("nobody@example.org".into()),
            ..Script::default()
        });
        let plugin = load_connector("smtp-email", scripted_grant(server.port, 4));
        let refused = plugin.send(&mail_to("nobody@example.org", 1));
        match refused {
            Err(SendError::InvalidInput(m)) => assert!(m.contains("550"), "{m}"),
            other => panic!("{other:?}"),
        }
        plugin.send(&mail_to("ada@example.org", 2)).expect("next");
        let seen = server.wait_until("1 message", |s| s.messages.len() == 1);
        assert_eq!(seen.accepted, 1);
        assert_eq!(
            verbs(&seen, 0),
            ["EHLO", "EHLO", "MAIL", "RCPT", "RSET", "MAIL", "RCPT", "DATA"],
            "pipelining={pipelining}"
        );
    }
}

#[test]
fn body_line_starting_with_a_dot_arrives_intact() {
    // Through the plugin into a real SMTP server: unstuffed there, the lines
    // are as written; without stuffing the lone "." would end the message.
    let smtp = SmtpServer::start();
    let plugin = load_connector("smtp-email", grant(&smtp));
    plugin
        .send(&SendRequest {
            idempotency_key: "dots".into(),
            to: "ada@example.org".into(),
            subject: Some("Dots".into()),
            text: Some(".leading dot\r\n..two dots\r\n.\r\nafter the lone dot\r\n".into()),
            ..Default::default()
        })
        .expect("send");
    let mails = smtp.wait_for(1);
    let raw = String::from_utf8(mails[0].data.clone()).unwrap();
    assert!(
        raw.contains("\r\n.leading dot\r\n..two dots\r\n.\r\nafter the lone dot\r\n"),
        "{raw}"
    );

    // On the wire, exactly: each such line gets one more dot, and the marker
    // follows the message's own final CRLF (no blank line added).
    let server = ScriptedSmtp::start(Script::default());
    let mut relay = SmtpRelay::plain("127.0.0.1", server.port);
    relay.connections = 1;
    let client = SmtpClient::new(&relay).unwrap();
    let envelope = lettre::address::Envelope::new(
        Some("news@shop.example".parse().unwrap()),
        vec!["ada@example.org".parse().unwrap()],
    )
    .unwrap();
    let reply = client
        .send(
            &envelope,
            b"Subject: dots\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n",
            None,
        )
        .expect("send");
    assert_eq!(u16::from(reply.code()), 250);
    client
        .send(&envelope, b"Subject: no final line break\r\n\r\n.x", None)
        .expect("send");
    let seen = server.wait_until("2 messages", |s| s.messages.len() == 2);
    assert_eq!(
        String::from_utf8_lossy(&seen.messages[0].1),
        "Subject: dots\r\n\r\n..one\r\n...two\r\n..\r\nend\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&seen.messages[1].1),
        "Subject: no final line break\r\n\r\n..x\r\n"
    );
}

#[test]
fn a_relay_that_throttles_with_454_rate_limits_the_channel() {
    let server = ScriptedSmtp::start(Script {
        throttle_mail: 1,
        ..Script::default()
    });
    let plugin = load_connector("smtp-email", scripted_grant(server.port, 1));
    match plugin.send(&mail_to("ada@example.org", 1)) {
        Err(SendError::RateLimited {
            retry_after_ms,
            message,
        }) => {
            assert!(retry_after_ms > 0);
            assert!(message.contains("454"), "{message}");
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
    let seen = server.wait_until("the reset", |s| {
        s.commands
            .iter()
            .any(|(_, l)| l.eq_ignore_ascii_case("RSET"))
    });
    assert!(seen.messages.is_empty(), "nothing was submitted");
    assert_eq!(seen.closed, 0, "the connection is kept after a 454");
}

#[test]
fn connections_setting_bounds_the_connections_open_at_once() {
    const BURST: usize = 6;
    const KEPT: usize = 2;
    // The server answers no message before KEPT are in flight, so the burst
    // cannot finish unless KEPT connections are open at once.
    let server = ScriptedSmtp::start(Script {
        hold_until: KEPT,
        ..Script::default()
    });
    let plugin = Arc::new(load_connector(
        "smtp-email",
        scripted_grant(server.port, KEPT),
    ));
    let threads: Vec<_> = (0..BURST)
        .map(|i| {
            let plugin = plugin.clone();
            std::thread::spawn(move || plugin.send(&mail_to("ada@example.org", i)))
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("burst send");
    }
    // Sends beyond KEPT waited for a free connection instead of opening one.
    let seen = server.wait_until("the burst", |s| s.messages.len() == BURST);
    assert_eq!(seen.accepted, KEPT, "connections opened for the burst");
    assert_eq!(seen.closed, 0, "the connections are kept for later sends");
    drop(seen);
    // Later messages, one or KEPT at a time, reuse the kept connections.
    for i in 0..3 {
        plugin
            .send(&mail_to("bob@example.org", 10 + i))
            .expect("later send");
    }
    let threads: Vec<_> = (0..KEPT)
        .map(|i| {
            let plugin = plugin.clone();
            std::thread::spawn(move || plugin.send(&mail_to("eve@example.org", 20 + i)))
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("parallel send");
    }
    let seen = server.wait_until("all messages", |s| s.messages.len() == BURST + 3 + KEPT);
    assert_eq!(seen.accepted, KEPT, "no new connection after the burst");
    assert_eq!(seen.closed, 0);
}
