//! Personalised messages: Liquid with fallbacks and timezone-aware dates, MJML with a generated
//! text part, segment/score data and A/B arms in templates, previews for real contacts, and
//! CSV contact import.

mod common;

use common::*;
use serde_json::json;

fn preview(c: &Client, template: &str, contact: &str, channel: &str) -> serde_json::Value {
    let (s, b) = c.admin_post(
        &format!("/v1/templates/{template}/preview"),
        json!({"contact": contact, "channel": channel, "vars": {"offer": "20%"}}),
    );
    assert_eq!(s, 200, "{b}");
    b
}

const REMINDER: &str = "---\nsubject: \"{{ contact.first_name | default: \\\"Hi there\\\" }}, your webinar\"\n---\n\
Hello {{ contact.first_name | default: \"there\" }},\n\
the webinar starts {{ contact.webinar_at | local_date: \"%A %e %B at %H:%M\", contact.timezone, contact.locale }} your time.\n\
{% if contact.segments contains \"vip\" %}As a VIP you get {{ vars.offer }} off.{% else %}Bring a friend!{% endif %}\n\
Score: {{ contact.score }} ({{ contact.stage | default: \"new\" }})\n";

fn project() -> TestProject {
    let p = TestProject::new("");
    p.template("reminder", REMINDER);
    std::fs::create_dir_all(p.path().join("segments")).unwrap();
    std::fs::write(
        p.path().join("segments/vip.rhai"),
        "segment(\"vip\");\nfn matches(contact) { contact.plan == \"vip\" }\n",
    )
    .unwrap();
    p
}

#[test]
fn liquid_messages_use_fallbacks_timezones_locales_and_segments() {
    let p = project();
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("fr", json!({"first_name": "Amélie", "email": "a@example.com", "timezone": "Europe/Paris", "locale": "fr_FR",
                            "plan": "vip", "webinar_at": "2026-12-01T09:30:00Z"}));
    c.identify(
        "anon",
        json!({"email": "x@example.com", "webinar_at": 1_796_117_400_000i64}),
    );
    let fr = eventually("vip membership", || {
        let v = preview(&c, "reminder", "fr", "email");
        v["body"].as_str().unwrap().contains("VIP").then_some(v)
    });
    let anon = preview(&c, "reminder", "anon", "email");
    insta::assert_snapshot!(
        "reminder_fr",
        format!(
            "To: {}\nSubject: {}\n\n{}",
            fr["to"].as_str().unwrap(),
            fr["subject"].as_str().unwrap(),
            fr["body"].as_str().unwrap()
        )
    );
    insta::assert_snapshot!(
        "reminder_fallbacks",
        format!(
            "Subject: {}\n\n{}",
            anon["subject"].as_str().unwrap(),
            anon["body"].as_str().unwrap()
        )
    );
}

#[test]
fn mjml_templates_render_html_and_a_plain_text_part() {
    let p = TestProject::new("");
    std::fs::write(
        p.path().join("templates/newsletter.mjml"),
        "---\nsubject: News for {{ contact.first_name | default: \"you\" }}\n---\n<mjml>\n  <mj-body>\n    <mj-section>\n      <mj-column>\n        <mj-text>Hi {{ contact.first_name | default: \"there\" }} &amp; welcome!</mj-text>\n        <mj-button href=\"https://example.com/start\">Get started</mj-button>\n      </mj-column>\n    </mj-section>\n  </mj-body>\n</mjml>\n",
    )
    .unwrap();
    p.workflow("n.rhai", "workflow(\"n\").on_event(\"go\");\nfn run(contact, trigger) { send(\"email\", \"newsletter\"); }\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("m", json!({"first_name": "Mo", "email": "mo@example.com"}));
    c.track("m", "go", json!({}));
    let sent = eventually("sent", || {
        let o = p.outbox("email");
        (!o.is_empty()).then_some(o)
    });
    let html = sent[0]["html"].as_str().unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("Hi Mo &amp; welcome!"), "{html}");
    // Tracked by default: the button's link goes through the daemon's click redirect.
    assert!(!html.contains("https://example.com/start"), "{html}");
    assert!(html.contains(&format!("href=\"{}/c/", c.base)), "{html}");
    insta::assert_snapshot!(
        "newsletter_text",
        format!(
            "Subject: {}\n\n{}",
            sent[0]["subject"].as_str().unwrap(),
            sent[0]["body"].as_str().unwrap()
        )
    );
}

#[test]
fn ab_arms_are_visible_to_templates_and_stable_per_contact() {
    let p = TestProject::new("");
    p.template("promo", "---\nsubject: \"{% if variants.subject_test == \\\"b\\\" %}Last chance{% else %}New offer{% endif %}\"\n---\narm={{ variants.subject_test }}");
    p.workflow("ab.rhai", "workflow(\"ab\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    let arm = variant(\"subject_test\", [\"a\", \"b\"]);\n    send(\"email\", \"promo\");\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    for u in 0..6 {
        c.identify(
            &format!("u{u}"),
            json!({"email": format!("u{u}@example.com")}),
        );
        c.track(&format!("u{u}"), "go", json!({}));
        c.track(&format!("u{u}"), "go", json!({}));
    }
    let sent = eventually("12 messages", || {
        let o = p.outbox("email");
        (o.len() == 12).then_some(o)
    });
    let mut by_contact: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for m in &sent {
        let arm = m["body"]
            .as_str()
            .unwrap()
            .trim_start_matches("arm=")
            .to_string();
        let subject = m["subject"].as_str().unwrap();
        assert_eq!(
            subject,
            if arm == "b" {
                "Last chance"
            } else {
                "New offer"
            }
        );
        by_contact
            .entry(m["contact"].as_str().unwrap().to_string())
            .or_default()
            .insert(arm);
    }
    assert!(
        by_contact.values().all(|arms| arms.len() == 1),
        "each contact always gets the same arm: {by_contact:?}"
    );
}

const CSV: &str = "user_id,E-mail,first_name,age,vip,signed_up\n\
u1,u1@example.com,Ann,34,yes,2026-01-05\n\
u2,not-an-email,Bob,41,no,2026-02-01\n\
,x@example.com,Nobody,20,no,2026-01-01\n\
u3,u3@example.com,Cy,thirty,no,2026-03-01\n\
u4,u4@example.com,Di,28,maybe,2026-13-40\n\
u5,u5@example.com,Ed,52,true,2026-04-01T10:00:00Z\n";

#[test]
fn csv_import_takes_good_rows_whole_and_reports_bad_ones_by_line() {
    let p = TestProject::new("");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("u5", json!({"plan": "pro"}));
    let url = format!(
        "{}/v1/import/contacts?types=age:int,vip:bool,signed_up:date&map=E-mail:email",
        d.url()
    );
    let resp = ureq::post(&url)
        .set("authorization", &format!("Bearer {TOKEN}"))
        .send_string(CSV);
    let (status, report): (u16, serde_json::Value) = match resp {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status, 207, "{report}");
    assert_eq!(report["imported"], 2);
    insta::assert_json_snapshot!("csv_rejected", report["rejected"]);
    let (_, ann) = c.admin_get("/v1/contacts/u1");
    assert_eq!(
        ann["attributes"],
        json!({"email": "u1@example.com", "first_name": "Ann", "age": 34, "vip": true, "signed_up": "2026-01-05"})
    );
    let (_, ed) = c.admin_get("/v1/contacts/u5");
    assert_eq!(
        ed["attributes"]["plan"], "pro",
        "imports merge into existing contacts"
    );
    assert_eq!(ed["attributes"]["age"], 52);
    let (s, _) = c.admin_get("/v1/contacts/u3");
    assert_eq!(s, 404, "a bad row is not half-imported");
}

#[test]
fn a_large_import_goes_in_chunks_and_lists_the_first_thousand_bad_rows_with_their_count() {
    let p = TestProject::new("[limits]\nmax_traits = 2\n");
    let d = p.start();
    let c = Client::new(d.url());
    // 2,500 good rows, 1,200 without an id, and one row whose contact would pass a limit
    // (found when its chunk is written, not when it is read).
    let mut csv = String::from("user_id,email,plan\n");
    for i in 0..3700 {
        if i % 3 == 1 && i < 3600 {
            csv.push_str(&format!(",nobody{i}@example.com,free\n"));
        } else {
            csv.push_str(&format!("user{i},user{i}@example.com,pro\n"));
        }
    }
    c.identify("user3699", json!({"a": 1, "b": 2}));
    let (status, report) = respond(
        c.agent()
            .post(&format!("{}/v1/import/contacts", d.url()))
            .set("authorization", &format!("Bearer {TOKEN}"))
            .set("content-type", "text/csv")
            .send_string(&csv),
    );
    assert_eq!(status, 207, "{report}");
    assert_eq!(report["imported"], 2499, "{report}");
    assert_eq!(report["rejected_count"], 1201, "{report}");
    let listed = report["rejected"].as_array().unwrap();
    assert_eq!(listed.len(), 1000);
    // Line 1 is the header: the first bad row (i = 1) is line 3.
    assert_eq!(listed[0]["line"], 3);
    let (_, last) = c.admin_get("/v1/contacts/user3698");
    assert_eq!(last["attributes"]["plan"], "pro", "{last}");
    let (_, capped) = c.admin_get("/v1/contacts/user3699");
    assert_eq!(capped["attributes"], json!({"a": 1, "b": 2}), "{capped}");
}

#[test]
fn the_import_and_preview_commands_talk_to_the_running_daemon() {
    let p = TestProject::new("");
    p.template("hello", "Hello {{ contact.first_name }}");
    let daemon = Process::start(p.path(), &[]);
    let csv = p.path().join("people.csv");
    std::fs::write(&csv, "email,first_name\nzoe@example.com,Zoe\nbroken,Nope\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "import",
            csv.to_str().unwrap(),
            "--dir",
            p.path().to_str().unwrap(),
            "--url",
            &daemon.client.base,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a rejected row makes the command fail"
    );
    assert!(
        stdout.contains("imported 1 row(s), 0 unchanged, 1 rejected (id column: email)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("people.csv:3: email \"broken\" is not an email address"),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "preview",
            "hello",
            "--contact",
            "zoe@example.com",
            "--dir",
            p.path().to_str().unwrap(),
            "--url",
            &daemon.client.base,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("To: zoe@example.com"), "{stdout}");
    assert!(stdout.contains("Hello Zoe"), "{stdout}");
}

#[test]
fn a_liquid_email_gets_its_html_part_from_name_html_with_every_value_escaped() {
    let p = TestProject::new("");
    p.template(
        "note",
        "---\nsubject: Hi {{ contact.first_name }}\n---\nHi {{ contact.first_name }}, read https://example.com/a",
    );
    std::fs::write(
        p.path().join("templates/note.html"),
        "<html><body><p>Hi {{ contact.first_name }}</p><a href=\"https://example.com/a\">read</a></body></html>\n",
    )
    .unwrap();
    // An HTML part without its Liquid template is refused by the checker.
    std::fs::write(p.path().join("templates/orphan.html"), "<p>x</p>").unwrap();
    let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
    let (project, report) = herald_runtime::project::Project::load(p.path(), &engine);
    assert!(project.is_none());
    let orphan = report.for_file("templates/orphan.html");
    assert_eq!(orphan.len(), 1, "{orphan:?}");
    assert!(
        orphan[0].message.contains("needs templates/orphan.liquid"),
        "{orphan:?}"
    );
    std::fs::remove_file(p.path().join("templates/orphan.html")).unwrap();

    p.workflow("n.rhai", "workflow(\"n\").on_event(\"go\");\nfn run(contact, trigger) { send(\"email\", \"note\"); }\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify(
        "m",
        json!({"first_name": "<b>Mo</b>", "email": "mo@example.com"}),
    );
    c.track("m", "go", json!({}));
    let sent = eventually("sent", || p.outbox("email").first().cloned());
    assert_eq!(
        sent["body"], "Hi <b>Mo</b>, read https://example.com/a",
        "the text part as written"
    );
    let html = sent["html"].as_str().unwrap();
    assert!(
        html.contains("<p>Hi &lt;b&gt;Mo&lt;&#x2F;b&gt;</p>"),
        "escaped in HTML: {html}"
    );
    assert!(
        html.contains(&format!("{}/c/", c.base)),
        "tracked like MJML's: {html}"
    );
    assert!(html.contains(&format!("{}/o/", c.base)), "{html}");
}
