//! Erasure (the right to be forgotten): `herald contact delete` removes a person from every
//! tree of the store, keeps a hashed suppression entry so they are not taken in again, and
//! leaves everyone else as they were. Read-only tokens can look but not erase.

mod common;

use common::*;
use serde_json::{json, Value};

const JOURNEY: &str = r#"
workflow("welcome").on_event("signed_up");

fn run(contact, trigger) {
    send("email", "welcome");
    let clicked = wait_for("email_clicked", days(2));
    if clicked == () {
        send("sms", "nudge");
    }
}
"#;

const ACTIVE: &str =
    "segment(\"active\");\nfn matches(contact) {\n    count(\"page_viewed\", days(7)) >= 1\n}\n";

// Identifiers distinctive enough that finding them anywhere in the store means a trace.
const USER: &str = "erin-7731";
const DEVICE: &str = "dev-erin-4242";
const EMAIL: &str = "erin.7731@example.com";

fn people(c: &Client) {
    let body = json!({"batch": [
        // Browsing before sign-up, on a device of her own (a contact merged later).
        {"type": "page", "anonymousId": DEVICE, "name": "pricing"},
        {"type": "track", "anonymousId": DEVICE, "event": "page_viewed"},
        {"type": "identify", "userId": USER, "anonymousId": DEVICE,
         "traits": {"email": EMAIL, "phone": "+15550007731", "first_name": "Erin"}},
        {"type": "track", "userId": USER, "event": "signed_up"},
        // Someone else, in the same requests and the same segment.
        {"type": "identify", "userId": "bob", "traits": {"email": "bob@example.com", "phone": "+1555"}},
        {"type": "track", "userId": "bob", "event": "page_viewed"},
        {"type": "track", "userId": "bob", "event": "signed_up"},
    ]})
    .to_string();
    let (s, b) = c.ingest("/v1/batch", &body);
    assert_eq!((s, b["accepted"].as_u64()), (200, Some(7)), "{b}");
}

/// Every key and value of every tree of the store in `data`, with the tree's name.
fn store_records(data: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let db = sled::open(data).unwrap();
    let mut out = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        let tree_name = String::from_utf8_lossy(&name).into_owned();
        for item in tree.iter() {
            let (k, v) = item.unwrap();
            let mut record = k.to_vec();
            record.push(b'=');
            record.extend_from_slice(&v);
            out.push((tree_name.clone(), record));
        }
    }
    out
}

fn traces<'a>(records: &'a [(String, Vec<u8>)], needle: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter(|(_, r)| r.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(t, _)| t.as_str())
        .collect()
}

#[test]
fn an_erased_contact_leaves_no_trace_in_any_tree_and_is_not_taken_in_again() {
    let p = TestProject::new("");
    p.workflow("welcome.rhai", JOURNEY)
        .segment("active.rhai", ACTIVE);
    let d = Process::start(p.path(), &[]);
    let c = &d.client;
    people(c);
    // Her run sent the welcome and waits for a click: a run, a journal, a wait and a timer.
    let erin = eventually("erin's run waits", || {
        let (_, contact) = c.admin_get(&format!("/v1/contacts/{USER}"));
        let runs = contact["runs"].as_array()?;
        (runs.len() == 1 && runs[0]["status"] == "waiting").then_some(contact)
    });
    eventually("bob's run waits", || {
        let (_, contact) = c.admin_get("/v1/contacts/bob");
        (contact["runs"][0]["status"] == "waiting").then_some(())
    });
    let erin_id = erin["id"].as_str().unwrap().to_string();
    let (_, segment) = c.admin_get("/v1/segments/active");
    assert_eq!(segment["size"], 2, "{segment}");

    let out = std::process::Command::new(herald_bin())
        .args(["contact", "delete", USER, "--dir"])
        .arg(p.path())
        .args(["--url", &c.base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("erased contact {erin_id}")),
        "{stdout}"
    );
    assert!(stdout.contains("1 run(s)"), "{stdout}");

    let (s, b) = c.admin_get(&format!("/v1/contacts/{USER}"));
    assert_eq!(s, 404, "{b}");
    let (s, _) = c.admin_get(&format!("/v1/contacts/{DEVICE}"));
    assert_eq!(s, 404);
    let (_, segment) = c.admin_get("/v1/segments/active");
    assert_eq!(segment["size"], 1, "{segment}");
    let (_, bob) = c.admin_get("/v1/contacts/bob");
    assert_eq!(bob["runs"][0]["status"], "waiting", "{bob}");
    assert_eq!(bob["recent_events"].as_array().unwrap().len(), 3, "{bob}");

    // She is not taken in again, by userId or by email, through the API or an import.
    let (s, b) = c.ingest(
        "/v1/identify",
        &json!({"userId": USER, "traits": {"plan": "pro"}}).to_string(),
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("erased")),
        "{b}"
    );
    let (s, b) = c.ingest(
        "/v1/identify",
        &json!({"userId": "erin-new-account", "traits": {"email": "Erin.7731@Example.com"}})
            .to_string(),
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("erased")),
        "{b}"
    );
    let csv = format!("user_id,email\n{USER},{EMAIL}\ncarol,carol@example.com\n");
    let report = respond(
        c.agent()
            .post(&format!("{}/v1/import/contacts", c.base))
            .set("authorization", &format!("Bearer {TOKEN}"))
            .set("content-type", "text/csv")
            .send_string(&csv),
    );
    assert_eq!(report.1["imported"], 1, "{report:?}");
    assert_eq!(report.1["rejected"][0]["line"], 2, "{report:?}");

    // Time passes: her timer would have fired; nothing is sent to her.
    c.advance(3 * 86_400_000);
    eventually("bob's nudge", || (p.outbox("sms").len() == 1).then_some(()));
    let sms = p.outbox("sms");
    assert_eq!(sms[0]["to"], "+1555", "{sms:?}");

    d.kill9();
    let records = store_records(&p.path().join(".herald/data"));
    for needle in [
        erin_id.as_str(),
        USER,
        DEVICE,
        EMAIL,
        "+15550007731",
        "Erin",
    ] {
        assert_eq!(
            traces(&records, needle),
            Vec::<&str>::new(),
            "{needle} is still in the store"
        );
    }
    // Bob is all there.
    assert!(!traces(&records, "bob@example.com").is_empty());
}

#[test]
fn a_read_only_token_reads_contacts_but_cannot_erase_or_change_anything() {
    let p = TestProject::new("");
    let toml = std::fs::read_to_string(p.path().join("herald.toml")).unwrap();
    std::fs::write(
        p.path().join("herald.toml"),
        toml.replacen(
            "[auth]\n",
            "[auth]\nread_tokens = [\"dashboard-token\"]\n",
            1,
        ),
    )
    .unwrap();
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("ada", json!({"email": "ada@example.com"}));
    let with = |method: &str, path: &str| -> (u16, Value) {
        respond(
            c.agent()
                .request(method, &format!("{}{path}", c.base))
                .set("authorization", "Bearer dashboard-token")
                .call(),
        )
    };
    let (s, b) = with("GET", "/v1/contacts/ada");
    assert_eq!(
        (s, b["attributes"]["email"].as_str()),
        (200, Some("ada@example.com"))
    );
    assert_eq!(with("GET", "/v1/status").0, 200);
    for (method, path) in [
        ("DELETE", "/v1/contacts/ada"),
        ("POST", "/v1/reload"),
        ("POST", "/v1/channels/email/pause"),
    ] {
        let (s, b) = with(method, path);
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (403, Some("read_only_token")),
            "{method} {path}: {b}"
        );
    }
    let (s, _) = c.admin_get("/v1/contacts/ada");
    assert_eq!(s, 200, "nothing was erased");
    // A wrong token is no token at all.
    let r = respond(
        c.agent()
            .get(&format!("{}/v1/contacts/ada", c.base))
            .set("authorization", "Bearer dashboard-token-2")
            .call(),
    );
    assert_eq!(r.0, 401);
}
