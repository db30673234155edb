//! WebAssembly channel connectors inside the daemon: a workflow sends SMS through the Twilio
//! connector to a stand-in Twilio on loopback, the provider's delivery callback lands on the
//! contact's timeline and wakes `wait_for`, and a signed webhook goes out through a second
//! connector. Plus `herald plugin inspect`.

mod common;

use common::*;
use serde_json::json;

const SID: &str = "AC0123456789abcdef0123456789abcdef";

/// POST a Twilio callback `body` (the form of `params`) signed as Twilio signs it for the
/// example's `webhook_url`.
fn twilio_callback(c: &Client, params: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut sorted = params.to_vec();
    sorted.sort();
    let data: String = std::iter::once("https://herald.example.com/v1/webhooks/text".to_string())
        .chain(sorted.iter().map(|(k, v)| format!("{k}{v}")))
        .collect();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"twilio-secret-token").unwrap();
    mac.update(data.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let r = ureq::post(&format!("{}/v1/webhooks/text", c.base))
        .set("content-type", "application/x-www-form-urlencoded")
        .set("x-twilio-signature", &sig)
        .send_string(body);
    match r {
        Ok(resp) => (resp.status(), resp.into_json().unwrap_or_default()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_json().unwrap_or_default()),
        Err(e) => panic!("{e}"),
    }
}

/// `examples/multichannel`, pointed at loopback stand-ins for the providers.
fn example_project(smtp: &Smtp, twilio: &Recorder, hook: &Recorder) -> tempfile::TempDir {
    std::env::set_var("TWILIO_AUTH_TOKEN", "twilio-secret-token");
    std::env::set_var("WEBHOOK_SIGNING_KEY", "hook-signing-key");
    std::env::set_var("HERALD_ADMIN_TOKEN", TOKEN);
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/multichannel"),
        dir.path(),
    );
    let path = dir.path().join("herald.toml");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("server_keys = [\"multichannel-write-key\"]", &format!("server_keys = [\"{WRITE_KEY}\"]"))
        .replace("port = 1025", &format!("port = {}", smtp.port))
        .replace("from = \"+15550009999\",", &format!("from = \"+15550009999\", api_base = \"{}\",", twilio.url))
        .replace("https://hooks.example.com/herald", &format!("{}/herald", hook.url))
        .replace("plugin = \"bundled:twilio-sms\"", "plugin = \"bundled:twilio-sms\"\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = true")
        .replace("allowed_hosts = [\"hooks.example.com\"]", "allowed_hosts = [\"127.0.0.1\"]\nallow_private = true");
    std::fs::write(&path, toml).unwrap();
    dir
}

#[test]
fn the_multichannel_example_sends_email_sms_and_a_webhook_and_a_delivery_callback_wakes_it() {
    let smtp = Smtp::start();
    let twilio = Recorder::start_with_body(
        vec![201],
        "{\"sid\":\"SM00000000000000000000000000000{n}\",\"status\":\"queued\"}",
    );
    let hook = Recorder::start(vec![200]);
    let dir = example_project(&smtp, &twilio, &hook);
    let d = herald_runtime::daemon::RunningDaemon::start(herald_runtime::daemon::Options {
        project: dir.path().to_path_buf(),
        listen: Some("127.0.0.1:0".into()),
        data: None,
        test_clock: true,
        watch: false,
    })
    .expect("the example starts");
    let c = Client::new(d.url());
    c.identify(
        "ada",
        json!({"first_name": "Ada", "email": "ada@example.com", "phone": "+15550100"}),
    );
    c.track("ada", "signup", json!({}));
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    let run = c.run_reaches(&id, "waiting", 3);
    assert_eq!(
        run["journal"][1]["result"]["provider_id"],
        "SM000000000000000000000000000000"
    );

    // The email reached the SMTP server with both parts and the unsubscribe header.
    let mail = eventually("mail", || smtp.inbox.lock().unwrap().first().cloned());
    assert!(mail.contains("Subject: Welcome aboard, Ada"), "{mail}");
    assert!(
        mail.contains("List-Unsubscribe: <mailto:unsubscribe@example.com?subject=unsubscribe>"),
        "{mail}"
    );
    assert!(mail.contains("your account is ready."), "{mail}");

    // What the stand-in Twilio received, as Twilio documents the Messages API.
    let req = twilio.requests.lock().unwrap()[0].clone();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{SID}/Messages.json")
    );
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:twilio-secret-token"));
    assert_eq!(
        req.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    let form: std::collections::HashMap<String, String> = url_decode(&req.body);
    assert_eq!(form["To"], "+15550100");
    assert_eq!(form["From"], "+15550009999");
    assert_eq!(form["Body"], "Welcome Ada! Reply STOP to opt out.");

    // Twilio's status callback for that message: unsigned it is refused, signed it counts.
    let callback = [
        ("MessageSid", "SM000000000000000000000000000000"),
        ("MessageStatus", "delivered"),
        ("To", "+15550100"),
        ("AccountSid", SID),
    ];
    let body = "MessageSid=SM000000000000000000000000000000&MessageStatus=delivered&To=%2B15550100&AccountSid=AC0123456789abcdef0123456789abcdef";
    let (s, b) = c.raw_post("/v1/webhooks/text", body, None, None);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("webhook_rejected")),
        "{b}"
    );
    let (s, b) = twilio_callback(&c, &callback, body);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["accepted"], 1, "{b}");
    let run = c.run_reaches(&id, "completed", 4);
    assert_eq!(run["journal"][2]["result"]["event"], "text_delivered");
    let (_, contact) = c.admin_get("/v1/contacts/ada");
    assert_eq!(contact["recent_events"][0]["event"], "text_delivered");

    // The signed webhook that followed.
    let posted = hook.requests.lock().unwrap()[0].clone();
    let envelope: serde_json::Value = serde_json::from_str(&posted.body).unwrap();
    assert_eq!(envelope["type"], "event");
    assert_eq!(envelope["payload"]["sms_delivered"], true);
    assert_eq!(envelope["payload"]["email"], "ada@example.com");
    // The contact fields the webhook connector declares, as the contact has them.
    assert_eq!(
        envelope["fields"],
        json!({"first_name": "Ada", "email": "ada@example.com", "phone": "+15550100"})
    );
    assert!(
        !posted.body.contains("hook-signing-key"),
        "the signing key never leaves the host"
    );
    assert!(
        posted
            .headers
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().contains("signature")),
        "{:?}",
        posted.headers
    );
    assert!(c
        .get_text("/metrics")
        .contains("herald_sends_total{channel=\"text\",outcome=\"sent\"} 1"));

    // A callback for a message Herald never sent is accepted but matches nothing.
    let (s, b) = twilio_callback(
        &c,
        &[
            ("MessageSid", "SMffffffffffffffffffffffffffffffff"),
            ("MessageStatus", "delivered"),
        ],
        "MessageSid=SMffffffffffffffffffffffffffffffff&MessageStatus=delivered",
    );
    assert_eq!((s, b["unmatched"].clone()), (200, json!(1)));
    // Garbage is refused with a JSON error.
    let (s, b) = c.raw_post("/v1/webhooks/text", "hello", None, None);
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("webhook_rejected")),
        "{b}"
    );
}

fn url_decode(body: &str) -> std::collections::HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let bytes = v.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            (k.to_string(), String::from_utf8(out).unwrap())
        })
        .collect()
}

#[test]
fn a_plugin_channel_that_cannot_load_stops_the_daemon_with_the_reason() {
    let p = TestProject::new("[channels.text]\nplugin = \"bundled:twilio-sms\"\nsecrets = { TWILIO_AUTH_TOKEN = \"plain-text-secret\" }\nconfig = { account_sid = \"AC0123456789abcdef0123456789abcdef\", from = \"+1555\" }\n");
    let err = match herald_runtime::daemon::RunningDaemon::start(herald_runtime::daemon::Options {
        project: p.path().to_path_buf(),
        listen: Some("127.0.0.1:0".into()),
        data: None,
        test_clock: true,
        watch: false,
    }) {
        Ok(_) => panic!("a literal secret must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("not a reference; use env:VAR or file:PATH"),
        "{err}"
    );
}

#[test]
fn plugin_inspect_describes_a_connector_and_rejects_other_files() {
    let wasm = herald_bundled::packaged_dir()
        .join("twilio-sms")
        .join("plugin.wasm");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["plugin", "inspect", wasm.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("twilio-sms"), "{stdout}");
    assert!(stdout.contains("0.1.0"), "{stdout}");
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("x.wasm");
    std::fs::write(&bogus, b"not wasm").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["plugin", "inspect", bogus.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.to_lowercase().contains("not"), "{all}");
}

#[test]
fn a_postmark_open_callback_reaches_the_timeline_and_wakes_wait_for() {
    std::env::set_var("HERALD_TEST_POSTMARK_TOKEN", "postmark-server-token");
    std::env::set_var(
        "HERALD_TEST_POSTMARK_HOOK_PASSWORD",
        "postmark-hook-password",
    );
    let postmark = Recorder::start_with_body(vec![200], "{\"To\":\"ada@example.com\",\"MessageID\":\"b7bc2f4a-e38e-4336-af7d-e6c39{n}\",\"ErrorCode\":0,\"Message\":\"OK\"}");
    let p = TestProject::new(&format!(
        "[channels.mail]\nplugin = \"bundled:postmark\"\nto = \"email\"\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = true\n\
         config = {{ from = \"hello@example.com\", api_base = \"{}\", webhook_username = \"hooks\" }}\n\
         secrets = {{ POSTMARK_SERVER_TOKEN = \"env:HERALD_TEST_POSTMARK_TOKEN\", \
         POSTMARK_WEBHOOK_PASSWORD = \"env:HERALD_TEST_POSTMARK_HOOK_PASSWORD\" }}\n",
        postmark.url
    ));
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"mail\", \"welcome\");\n    let opened = wait_for(\"mail_opened\", days(2));\n    update(#{ opened: opened != () });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.identify(
        "eve",
        json!({"email": "eve@example.com", "first_name": "Eve"}),
    );
    c.track("eve", "signup", json!({}));
    let id = c.only_run("eve")["id"].as_str().unwrap().to_string();
    c.run_reaches(&id, "waiting", 2);
    let req = postmark.requests.lock().unwrap()[0].clone();
    assert_eq!(req.path, "/email");
    assert_eq!(
        req.header("x-postmark-server-token"),
        Some("postmark-server-token")
    );
    let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(
        (body["To"].as_str(), body["Subject"].as_str()),
        (Some("\"Eve\" <eve@example.com>"), Some("Welcome Eve"))
    );

    // Postmark's Open webhook, in the format Postmark documents, with the Basic credentials
    // of the webhook URL (forged ones: `webhook_auth.rs`).
    let open = json!({"RecordType": "Open", "MessageStream": "outbound", "FirstOpen": true, "Recipient": "eve@example.com",
                      "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c390", "ReceivedAt": "2026-11-30T10:00:00Z", "Platform": "WebMail"});
    use base64::Engine as _;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("hooks:postmark-hook-password")
    );
    let (s, b) = c.raw_post("/v1/webhooks/mail", &open.to_string(), Some(&auth), None);
    assert_eq!((s, b["accepted"].clone()), (200, json!(1)), "{b}");
    let run = c.run_reaches(&id, "completed", 3);
    assert_eq!(run["journal"][1]["result"]["event"], "mail_opened");
    let (_, contact) = c.admin_get("/v1/contacts/eve");
    assert_eq!(contact["attributes"]["opened"], true);
    assert!(c
        .get_text("/metrics")
        .contains("herald_events_ingested_total{type=\"track\"} 2"));
}

#[test]
fn a_send_the_sandbox_denied_fails_at_once_with_the_grant_it_lacks() {
    std::env::set_var("HERALD_TEST_DENIED_HOOK_KEY", "hook-signing-key");
    let hook = Recorder::start(vec![200]);
    // The receiver is on loopback, and the channel does not grant private addresses.
    let p = TestProject::new(&format!(
        "[engine]\nmax_attempts = 5\n\n\
         [channels.hook]\nplugin = \"bundled:webhook\"\nallowed_hosts = [\"127.0.0.1\"]\n\
         config = {{ url = \"{}/herald\" }}\nsecrets = {{ WEBHOOK_SIGNING_KEY = \"env:HERALD_TEST_DENIED_HOOK_KEY\" }}\n",
        hook.url
    ));
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"signup\");\nfn run(contact, trigger) {\n    action(\"hook\", \"event\", #{ plan: \"pro\" });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.track("ada", "signup", json!({}));
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    let run = c.run_reaches(&id, "failed", 1);
    let step = &run["journal"][0];
    assert_eq!(step["status"], "failed", "{run}");
    assert_eq!(step["attempts"], 1, "a denial is not retried: {run}");
    let error = step["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("denied") && error.contains("private addresses are not granted"),
        "{run}"
    );
    assert_eq!(hook.count(), 0, "nothing left the sandbox");
}

#[test]
fn what_a_plugin_prints_reaches_the_log_and_its_traceback_the_steps_error() {
    let dir = herald_bundled::testdata_dir().join("hostile");
    let p = TestProject::new(&format!(
        "[engine]\nmax_attempts = 1\n\n[channels.odd]\nplugin = \"{}\"\n",
        dir.display()
    ));
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"signup\");\nfn run(contact, trigger) {\n    action(\"odd\", \"print\", #{});\n    action(\"odd\", \"traceback\", #{});\n}\n",
    );
    let d = Process::start(p.path(), &[]);
    let c = &d.client;
    c.track("ada", "signup", json!({}));
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    let run = c.run_reaches(&id, "failed", 2);
    assert_eq!(run["journal"][0]["status"], "done", "{run}");
    let error = run["journal"][1]["error"].as_str().unwrap_or_default();
    // The exception's message first, then where it was raised.
    assert!(
        error.contains("plugin aborted: ValueError: the template has no subject"),
        "{run}"
    );
    assert!(error.contains("File \"app.py\", line 12, in send"), "{run}");
    let log = eventually("the plugin's output in the log", || {
        let log = d.log_text();
        log.contains("sending to").then_some(log)
    });
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} is not in the log:\n{log}"))
            .to_string()
    };
    let printed = line("sending to");
    assert!(
        printed.contains("plugin=hostile") && printed.contains("call=\"send\""),
        "{printed}"
    );
    assert!(printed.contains("stdout"), "{printed}");
    assert!(line("the provider is slow today").contains("stderr"));
    assert!(line("Traceback (most recent call last)").contains("plugin=hostile"));
}

#[test]
fn checking_a_project_twice_compiles_its_plugins_once() {
    let cache = tempfile::tempdir().unwrap();
    let p = TestProject::new(
        "[channels.hook]\nplugin = \"bundled:webhook\"\nallowed_hosts = [\"127.0.0.1\"]\n\
         config = { url = \"http://127.0.0.1:9/herald\" }\nsecrets = { WEBHOOK_SIGNING_KEY = \"env:HERALD_TEST_CACHE_KEY\" }\n",
    );
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("check")
            .arg(p.path())
            .env("XDG_CACHE_HOME", cache.path())
            .env("HERALD_TEST_CACHE_KEY", "k")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let compiled = || -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        let dir = cache.path().join("herald/plugin-cache");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| {
                    let e = e.unwrap();
                    (e.path(), e.metadata().unwrap().modified().unwrap())
                })
                .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    };
    check();
    let first = compiled();
    assert_eq!(first.len(), 1, "one component compiled and kept: {first:?}");
    check();
    assert_eq!(compiled(), first, "the second check took it from the cache");
}

#[test]
fn a_channel_config_that_breaks_the_plugins_schema_is_refused_with_where() {
    let p = TestProject::new(
        "[channels.hook]\nplugin = \"bundled:webhook\"\nallowed_hosts = [\"127.0.0.1\"]\n\
         config = { url = 42, retries = 3 }\nsecrets = { WEBHOOK_SIGNING_KEY = \"env:HERALD_TEST_SCHEMA_KEY\" }\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("check")
        .arg(p.path())
        .env("HERALD_TEST_SCHEMA_KEY", "k")
        .env("XDG_CACHE_HOME", p.path().join(".cache"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("config does not match the plugin's config_schema"),
        "{text}"
    );
    assert!(
        text.contains("config.url: 42 is not of type \"string\""),
        "{text}"
    );
    assert!(text.contains("retries"), "{text}");
}

#[test]
fn a_dkim_key_path_is_the_projects_and_an_unsuitable_key_fails_the_check() {
    let p = TestProject::new(
        "[channels.mail]\nplugin = \"bundled:smtp-email\"\nconfig = { from_address = \"news@shop.example\" }\n\
         [channels.mail.smtp]\nhost = \"127.0.0.1\"\nport = 2525\nsecurity = \"none\"\n\
         [channels.mail.smtp.dkim]\ndomain = \"shop.example\"\nselector = \"s1\"\nprivate_key = \"keys/dkim.pem\"\n",
    );
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/host/tests/fixtures/dkim");
    let key = p.path().join("keys/dkim.pem");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    // `herald check` runs elsewhere than the project: the relative key path is the project's.
    let check = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("check")
            .arg(p.path())
            .env("XDG_CACHE_HOME", p.path().join(".cache"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    std::fs::copy(fixtures.join("rsa2048.pem"), &key).unwrap();
    let (ok, text) = check();
    assert!(ok, "{text}");

    std::fs::copy(fixtures.join("ed25519.pem"), &key).unwrap();
    let (ok, text) = check();
    assert!(!ok, "{text}");
    assert!(
        text.contains("channel \"mail\": smtp.dkim: the private key is an Ed25519 key, but `algorithm` is rsa-sha256"),
        "{text}"
    );
}

#[test]
fn plugin_pack_writes_the_components_digest_and_schema_into_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let packaged = herald_bundled::packaged_dir().join("webhook");
    std::fs::copy(packaged.join("plugin.wasm"), dir.path().join("plugin.wasm")).unwrap();
    // The author's manifest (the connector's template): a comment, a stale digest and no
    // schema yet.
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/connectors/webhook/plugin.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("plugin.toml"),
        format!(
            "# kept as written\n{manifest}sha256 = \"{}\"\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let inspect = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .arg(dir.path())
            .env("XDG_CACHE_HOME", dir.path().join(".cache"))
            .output()
            .unwrap()
    };
    assert!(!inspect(&["plugin", "inspect"]).status.success());
    let out = inspect(&["plugin", "pack"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verdict: valid Herald plugin"), "{stdout}");
    let written = std::fs::read_to_string(dir.path().join("plugin.toml")).unwrap();
    assert!(written.starts_with("# kept as written\n"), "{written}");
    assert!(written.contains("config_schema = "), "{written}");
    assert!(!written.contains(&"0".repeat(64)), "{written}");
    assert!(inspect(&["plugin", "inspect"]).status.success());
}

#[test]
fn a_send_carries_the_declared_contact_fields_and_a_0_1_0_plugin_still_gets_the_front_matter() {
    std::env::set_var("HERALD_TEST_FIELDS_HOOK_KEY", "hook-signing-key");
    let current = Recorder::start(vec![200]);
    let legacy = Recorder::start(vec![200]);
    // The committed 0.1.0 component, as a third party published it.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/testdata/api-0.1.0/webhook");
    let channel = |name: &str, plugin: &str, url: &str| {
        format!(
            "[channels.{name}]\nplugin = \"{plugin}\"\nto = \"email\"\nallowed_hosts = [\"127.0.0.1\"]\n\
             allow_private = true\nconfig = {{ url = \"{url}/herald\" }}\n\
             secrets = {{ WEBHOOK_SIGNING_KEY = \"env:HERALD_TEST_FIELDS_HOOK_KEY\" }}\n\n"
        )
    };
    let p = TestProject::new(&format!(
        "{}{}",
        channel("hook", "bundled:webhook", &current.url),
        channel("legacy", &fixture.display().to_string(), &legacy.url)
    ));
    let note = "---\nsubject: Hello {{ contact.first_name }}\nfrom: News <news@shop.example>\n\
                reply_to: help@shop.example\npreheader: Spring picks\ntag: spring\n---\nHi {{ contact.first_name }}!\n";
    p.template("note", note);
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"hook\", \"note\");\n    send(\"legacy\", \"note\");\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.identify(
        "ada",
        json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com",
               "date_of_birth": "1815-12-10", "plan": "pro"}),
    );
    c.track("ada", "signup", json!({}));
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    c.run_reaches(&id, "completed", 2);

    // herald:channel@0.2.0: the contact fields the manifest declares, nothing else of the
    // contact; the front matter apart, and its parts in their own fields.
    let body: serde_json::Value =
        serde_json::from_str(&current.requests.lock().unwrap()[0].body).unwrap();
    assert_eq!(
        body["fields"],
        json!({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}),
        "{body}"
    );
    assert_eq!(body["to"], "ada@example.com");
    assert_eq!(body["to_name"], "Ada Lovelace");
    assert_eq!(body["subject"], "Hello Ada");
    assert_eq!(body["from"], "News <news@shop.example>");
    assert_eq!(body["reply_to"], "help@shop.example");
    assert_eq!(body["preheader"], "Spring picks");
    assert_eq!(body["front_matter"]["tag"], "spring");
    assert_eq!(body["metadata"]["herald_workflow"], "w");
    assert!(!body.to_string().contains("1815-12-10"), "{body}");

    // herald:channel@0.1.0: what such a plugin always received, the front matter in `fields`.
    let old: serde_json::Value =
        serde_json::from_str(&legacy.requests.lock().unwrap()[0].body).unwrap();
    assert_eq!(old["fields"]["from"], "News <news@shop.example>", "{old}");
    assert_eq!(old["fields"]["tag"], "spring", "{old}");
    assert_eq!(old["to"], "ada@example.com");
    assert_eq!(old["subject"], "Hello Ada");
    assert!(old.get("front_matter").is_none(), "{old}");
    assert!(!old.to_string().contains("Lovelace"), "{old}");
}
