//! DKIM signing through the host's SMTP client, end to end: messages go through the real
//! client (and the smtp-email connector) into a real SMTP server on loopback, and the bytes
//! it received are verified by an independent implementation (mail-auth), whose DNS answers
//! come from an in-memory TXT record: no lookup leaves the process.
mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::*;
use herald_plugin_host::smtp_client::SmtpClient;
use herald_plugin_host::{
    CallLimits, Grant, GrantConfig, GrantConfigExt as _, SendRequest, SmtpRelay,
};
use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, ResolverCache, Txt};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim")
}

/// The DNS TXT record an operator publishes for the fixture key `name` (its public key
/// as OpenSSL printed it).
fn dns_record(key_type: &str, pub_file: &str) -> String {
    let p = std::fs::read_to_string(fixtures().join(pub_file)).unwrap();
    format!("v=DKIM1; k={key_type}; p={}", p.trim())
}

/// TXT records by name; a lookup of any other name fails the test instead of going out.
struct Zone(Mutex<HashMap<String, Txt>>);

impl ResolverCache<Box<str>, Txt> for Zone {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let zone = self.0.lock().unwrap();
        let found = zone
            .iter()
            .find(|(k, _)| {
                let k: Box<str> = k.as_str().into();
                std::borrow::Borrow::<Q>::borrow(&k) == name
            })
            .map(|(_, v)| v.clone());
        assert!(
            found.is_some(),
            "unexpected DNS lookup (names known: {:?})",
            zone.keys()
        );
        found
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// Verify the DKIM signatures of `raw` against `record` published at
/// `<selector>._domainkey.<domain>`: the result of each signature, with its d= and s=.
fn verify(raw: &[u8], selector: &str, domain: &str, record: &str) -> Vec<(DkimResult, String)> {
    let zone = Zone(Mutex::new(HashMap::from([(
        format!("{selector}._domainkey.{domain}."),
        Txt::from(DomainKey::parse(record.as_bytes())),
    )])));
    // Defence in depth: the resolver's only name server is a loopback socket that never
    // answers (the zone above fails the test before any query anyway).
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut udp = ConnectionConfig::udp();
    udp.port = silent.local_addr().unwrap().port();
    let config = ResolverConfig::from_parts(
        None,
        vec![],
        vec![NameServerConfig::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            true,
            vec![udp],
        )],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let authenticator = MessageAuthenticator::new(config, ResolverOpts::default()).unwrap();
        let message = AuthenticatedMessage::parse(raw).expect("parsable message");
        let params = mail_auth::Parameters::new(&message).with_txt_cache(&zone);
        authenticator
            .verify_dkim(params)
            .await
            .into_iter()
            .map(|o| {
                let sig = o
                    .signature()
                    .map(|s| format!("d={} s={}", s.d, s.s))
                    .unwrap_or_default();
                (o.result().clone(), sig)
            })
            .collect()
    })
}

/// The grant of an smtp-email channel on the loopback server at `port`, DKIM-signing with
/// `dkim` (a `[smtp.dkim]` table; its key path relative to the fixtures), as the daemon
/// builds it from `herald.toml`.
fn grant(port: u16, dkim: &str) -> Grant {
    let text = format!(
        r#"
config = {{ from_address = "news@shop.example", from_name = "Shop News" }}
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
[smtp.dkim]
{dkim}
"#
    );
    let cfg: GrantConfig = toml::from_str(&text).unwrap();
    let mut grant = cfg.into_grant_relative_to(&fixtures()).expect("grant");
    grant.limits = CallLimits {
        // A hang guard only: a loaded machine must not fail a test by being slow.
        timeout: std::time::Duration::from_secs(120),
        ..CallLimits::default()
    };
    grant
}

fn mail(from: Option<&str>) -> SendRequest {
    SendRequest {
        idempotency_key: "run-7:step-1".into(),
        to: "ada@example.org".into(),
        to_name: Some("Ada Lovelace".into()),
        from: from.map(String::from),
        subject: Some(
            "Spring sale: everything 20 % off, this week only, for our subscribers".into(),
        ),
        text: Some(
            "Hello Ada,\r\n.a line with a leading dot\r\ntrailing spaces   \r\n\r\n\r\n".into(),
        ),
        html: Some("<p>Hello <b>Ada</b>,</p><p>the sale is on.</p>".into()),
        headers: vec![
            (
                "List-Unsubscribe".into(),
                "<https://shop.example/u/abc>".into(),
            ),
            (
                "List-Unsubscribe-Post".into(),
                "List-Unsubscribe=One-Click".into(),
            ),
        ],
        ..Default::default()
    }
}

fn signature_count(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw)
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .count()
}

#[test]
fn smtp_email_messages_signed_with_rsa_sha256_verify() {
    let smtp = SmtpServer::start();
    let plugin = load_connector(
        "smtp-email",
        grant(
            smtp.port,
            r#"domain = "shop.example"
selector = "s2048"
private_key = "rsa2048.pem""#,
        ),
    );
    plugin.send(&mail(None)).expect("send");
    let received = smtp.wait_for(1);
    assert_eq!(received.len(), 1);
    let raw = &received[0].data;
    assert_eq!(signature_count(raw), 1, "{}", String::from_utf8_lossy(raw));
    let text = String::from_utf8_lossy(raw);
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"),
        "{text}"
    );
    for signed in [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
    ] {
        let h = text
            .split("bh=")
            .next()
            .unwrap()
            .replace(['\r', '\n', '\t'], "");
        assert!(h.contains(signed), "{signed} not in h=: {h}");
    }
    let record = dns_record("rsa", "rsa2048.pub.b64");
    assert_eq!(
        verify(raw, "s2048", "shop.example", &record),
        [(DkimResult::Pass, "d=shop.example s=s2048".to_string())]
    );

    // The verifier is not vacuous: a changed body or header fails.
    let tampered = text.replacen("Hello Ada", "Hello Bob", 1);
    assert_ne!(tampered, text);
    assert!(matches!(
        verify(tampered.as_bytes(), "s2048", "shop.example", &record)[0].0,
        DkimResult::Neutral(_) | DkimResult::Fail(_)
    ));
    let tampered = text.replacen("Subject: Spring", "Subject: Autumn", 1);
    assert_ne!(tampered, text);
    assert!(matches!(
        verify(tampered.as_bytes(), "s2048", "shop.example", &record)[0].0,
        DkimResult::Fail(_)
    ));
}

#[test]
fn ed25519_sha256_signatures_verify_and_a_subdomain_from_is_aligned() {
    let smtp = SmtpServer::start();
    std::env::set_var(
        "HERALD_TEST_DKIM_ED25519_PEM",
        std::fs::read_to_string(fixtures().join("ed25519.pem")).unwrap(),
    );
    let plugin = load_connector(
        "smtp-email",
        grant(
            smtp.port,
            r#"domain = "shop.example"
selector = "ed"
algorithm = "ed25519-sha256"
private_key = "env:HERALD_TEST_DKIM_ED25519_PEM""#,
        ),
    );
    plugin
        .send(&mail(Some("Offers <offers@mail.shop.example>")))
        .expect("send");
    let received = smtp.wait_for(1);
    let raw = &received[0].data;
    assert!(String::from_utf8_lossy(raw).starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"));
    let record = dns_record("ed25519", "ed25519.pub.b64");
    assert_eq!(
        verify(raw, "ed", "shop.example", &record),
        [(DkimResult::Pass, "d=shop.example s=ed".to_string())]
    );
}

#[test]
fn a_message_from_an_unaligned_domain_goes_unsigned() {
    let smtp = SmtpServer::start();
    let plugin = load_connector(
        "smtp-email",
        grant(
            smtp.port,
            r#"domain = "shop.example"
selector = "s2048"
private_key = "rsa2048-pkcs1.pem""#,
        ),
    );
    // Look-alike domains are not aligned; the channel's own is.
    plugin
        .send(&mail(Some("news@badshop.example")))
        .expect("send");
    plugin
        .send(&mail(Some("news@shop.example.net")))
        .expect("send");
    plugin.send(&mail(None)).expect("send");
    let received = smtp.wait_for(3);
    assert_eq!(received.len(), 3);
    assert_eq!(signature_count(&received[0].data), 0);
    assert_eq!(signature_count(&received[1].data), 0);
    assert_eq!(signature_count(&received[2].data), 1);
    let record = dns_record("rsa", "rsa2048.pub.b64");
    assert_eq!(
        verify(&received[2].data, "s2048", "shop.example", &record)[0].0,
        DkimResult::Pass
    );
}

/// Raw messages straight through the client: the signature covers the bytes as the relay
/// receives them, whatever line breaks, dots and white space the plugin produced.
#[test]
fn raw_messages_are_signed_after_line_break_normalisation_and_survive_dot_stuffing() {
    let smtp = SmtpServer::start();
    let mut relay = SmtpRelay::plain("127.0.0.1", smtp.port);
    relay.dkim = grant(
        smtp.port,
        r#"domain = "shop.example"
selector = "s2048"
private_key = "rsa2048.pem"
headers = ["From", "To", "Subject", "X-Tag"]"#,
    )
    .smtp
    .unwrap()
    .dkim;
    let client = SmtpClient::new(&relay).unwrap();
    let envelope = lettre::address::Envelope::new(
        Some("news@shop.example".parse().unwrap()),
        vec!["ada@example.org".parse().unwrap()],
    )
    .unwrap();
    let messages: [&[u8]; 3] = [
        // Bare LF line breaks, a folded Subject, a repeated header, dot lines.
        b"From: \"Shop, News\" <news@shop.example>\nTo: ada@example.org\nSubject: a folded\n\tsubject  line\nX-Tag: one\nX-Tag: two\n\n.\n..two dots\nend   \n\n",
        // No final line break, and white space inside lines.
        b"From: news@shop.example\r\nTo: ada@example.org\r\nSubject: x\r\n\r\na  b\t c\r\nlast line",
        // An empty body.
        b"From: news@shop.example\r\nSubject: empty\r\n\r\n",
    ];
    for m in messages {
        client.send(&envelope, m, None).expect("send");
    }
    let received = smtp.wait_for(messages.len());
    assert_eq!(received.len(), messages.len());
    let record = dns_record("rsa", "rsa2048.pub.b64");
    for mail in &received {
        let text = String::from_utf8_lossy(&mail.data);
        assert_eq!(
            verify(&mail.data, "s2048", "shop.example", &record)[0].0,
            DkimResult::Pass,
            "{text}"
        );
    }
    let first = String::from_utf8_lossy(&received[0].data);
    assert!(first.contains("h=From:To:Subject:X-Tag:X-Tag;"), "{first}");
}
