//! The channel contract's revisions: `herald:channel@0.2.0` components get the contact fields
//! their manifest declares and the campaign fields, and a component built against `0.1.0`
//! (a committed fixture) still loads and sends, adapted by the host.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use herald_plugin_host::{SendRequest, Unsubscribe};
use serde_json::json;

/// The webhook connector as built against 0.1.0, never rebuilt.
fn v010_webhook() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/api-0.1.0/webhook")
}

fn ok_server() -> HttpServer {
    HttpServer::start(|_| Reply::json(200, json!({ "id": "rcv-1" })))
}

fn request() -> SendRequest {
    SendRequest {
        idempotency_key: "run-1:2".into(),
        to: "ada@example.org".into(),
        to_name: Some("Ada Lovelace".into()),
        subject: Some("Hello".into()),
        text: Some("Hi Ada".into()),
        from: Some("News <news@shop.example>".into()),
        reply_to: Some("help@shop.example".into()),
        preheader: Some("Our spring picks".into()),
        topic: Some("newsletter".into()),
        headers: vec![(
            "List-Unsubscribe".into(),
            "<https://herald.example/u/tok>".into(),
        )],
        unsubscribe: Some(Unsubscribe {
            url: "https://herald.example/u/tok".into(),
            one_click_url: Some("https://herald.example/u/tok/one-click".into()),
        }),
        metadata: vec![("herald_workflow".into(), "welcome".into())],
        front_matter: json!({ "from": "News <news@shop.example>", "tag": "spring" }),
        fields: json!({
            "email": "ada@example.org",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "date_of_birth": "1815-12-10",
            "internal_notes": "not for third parties",
        }),
        ..Default::default()
    }
}

#[test]
fn a_0_2_0_plugin_receives_only_the_contact_fields_its_manifest_declares() {
    let server = ok_server();
    let p = load_connector(
        "webhook",
        loopback_grant(
            &server,
            json!({ "url": format!("{}/hook", server.base_url()) }),
            &[("WEBHOOK_SIGNING_KEY", "k")],
        ),
    );
    assert_eq!(p.describe().api_version, "0.2.0");
    assert_eq!(
        p.describe().contact_fields,
        ["email", "phone", "name", "first_name", "last_name"]
    );
    p.send(&request()).expect("send");
    let body = server.only_request().json();
    // Declared and present: passed on. Undeclared (date_of_birth, internal_notes): not.
    assert_eq!(
        body["fields"],
        json!({ "email": "ada@example.org", "first_name": "Ada", "last_name": "Lovelace" })
    );
    assert_eq!(
        body["front_matter"],
        json!({ "from": "News <news@shop.example>", "tag": "spring" })
    );
    assert_eq!(body["to_name"], "Ada Lovelace");
    assert_eq!(body["from"], "News <news@shop.example>");
    assert_eq!(body["reply_to"], "help@shop.example");
    assert_eq!(body["preheader"], "Our spring picks");
    assert_eq!(body["topic"], "newsletter");
    assert_eq!(
        body["headers"],
        json!([["List-Unsubscribe", "<https://herald.example/u/tok>"]])
    );
    assert_eq!(
        body["unsubscribe"],
        json!({ "url": "https://herald.example/u/tok", "one_click_url": "https://herald.example/u/tok/one-click" })
    );
    assert_eq!(body["metadata"], json!({ "herald_workflow": "welcome" }));
}

#[test]
fn a_0_1_0_component_still_loads_and_receives_the_front_matter_in_fields() {
    let server = ok_server();
    let p = host()
        .load(
            &v010_webhook(),
            loopback_grant(
                &server,
                json!({ "url": format!("{}/hook", server.base_url()) }),
                &[("WEBHOOK_SIGNING_KEY", "k")],
            ),
        )
        .expect("a 0.1.0 component loads");
    assert_eq!(p.describe().api_version, "0.1.0");
    assert!(p.describe().contact_fields.is_empty());
    let out = p.send(&request()).expect("send");
    assert_eq!(out.provider_message_id.as_deref(), Some("rcv-1"));
    let r = server.only_request();
    assert_eq!(r.header("idempotency-key"), Some("run-1:2"));
    let body = r.json();
    // What 0.1.0 plugins always got in `fields`: the front matter, and no contact field.
    assert_eq!(
        body["fields"],
        json!({ "from": "News <news@shop.example>", "tag": "spring" })
    );
    assert_eq!(body["to"], "ada@example.org");
    assert_eq!(body["subject"], "Hello");
    assert!(body.get("front_matter").is_none(), "{body}");
}

/// A copy of a plugin folder with `edit` applied to its manifest.
fn edited_copy(dir: &Path, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let manifest = tmp.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, edit(text)).unwrap();
    tmp
}

fn load_error(dir: &Path) -> String {
    let server = ok_server();
    host()
        .load(
            dir,
            loopback_grant(
                &server,
                json!({ "url": server.base_url() }),
                &[("WEBHOOK_SIGNING_KEY", "k")],
            ),
        )
        .map(|_| ())
        .expect_err("refused")
        .to_string()
}

#[test]
fn a_manifest_whose_contact_fields_differ_from_describe_is_refused() {
    let copy = edited_copy(&connector_dir("webhook"), |t| {
        t.replace(
            r#"contact_fields = ["email", "phone", "name", "first_name", "last_name"]"#,
            r#"contact_fields = ["email", "phone", "name", "first_name", "last_name", "date_of_birth"]"#,
        )
    });
    let err = load_error(copy.path());
    assert!(
        err.contains("contact_fields") && err.contains("date_of_birth"),
        "{err}"
    );
}

#[test]
fn a_manifest_naming_the_wrong_api_revision_is_refused() {
    // A 0.2.0 component whose manifest claims 0.1.0.
    let copy = edited_copy(&connector_dir("webhook"), |t| {
        t.replace(r#"api_version = "0.2.0""#, r#"api_version = "0.1.0""#)
            .lines()
            .filter(|l| !l.starts_with("contact_fields"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let err = load_error(copy.path());
    assert!(
        err.contains("implements herald:channel@0.2.0") && err.contains("0.1.0"),
        "{err}"
    );
    // And a 0.1.0 component whose manifest claims 0.2.0.
    let copy = edited_copy(&v010_webhook(), |t| {
        t.replace(r#"api_version = "0.1.0""#, r#"api_version = "0.2.0""#)
    });
    let err = load_error(copy.path());
    assert!(err.contains("implements herald:channel@0.1.0"), "{err}");
}

#[test]
fn a_0_1_0_manifest_cannot_declare_contact_fields() {
    let copy = edited_copy(&v010_webhook(), |t| {
        format!("{t}contact_fields = [\"email\"]\n")
    });
    let err = load_error(copy.path());
    assert!(err.contains("needs api_version 0.2.0"), "{err}");
}
