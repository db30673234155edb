//! Tools for connector authors: `herald plugin new` (a working skeleton in Rust, Python or
//! JavaScript), the build step of `herald plugin pack`, and `herald plugin test` (the plugin
//! as the daemon loads it, against recorded cases and a loopback receiver).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// The componentize-py release the Python skeleton is built and tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The language of a new connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with Herald's guest SDK, built with cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// The id every skeleton is written with, replaced by the new plugin's.
const TEMPLATE_ID: &str = "example-connector";

/// The contract, as this binary implements it.
const WIT: &str = include_str!("../../plugins/wit/channel.wit");
/// The guest SDK (not published): written out for Rust skeletons.
const SDK_LIB: &str = include_str!("../../plugins/sdk/src/lib.rs");
/// Versions of the SDK's dependencies, and the lock file they were tested with.
const GUEST_WORKSPACE: &str = include_str!("../../plugins/guest/Cargo.toml");
const GUEST_LOCK: &str = include_str!("../../plugins/guest/Cargo.lock");
/// Cases `herald plugin test` runs, the same for every language's skeleton.
const TEST_CASES: &str = include_str!("../../plugins/templates/test.toml");

const RUST_FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../plugins/templates/rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../plugins/templates/rust/src/lib.rs"),
    ),
    (
        "plugin.toml",
        include_str!("../../plugins/templates/rust/plugin.toml"),
    ),
];

const PYTHON_FILES: &[(&str, &str)] = &[
    (
        "app.py",
        include_str!("../../plugins/templates/python/app.py"),
    ),
    (
        "plugin.toml",
        include_str!("../../plugins/templates/python/plugin.toml"),
    ),
    (
        "README.md",
        include_str!("../../plugins/templates/python/README.md"),
    ),
];

const JS_FILES: &[(&str, &str)] = &[
    ("app.js", include_str!("../../plugins/templates/js/app.js")),
    (
        "build.mjs",
        include_str!("../../plugins/templates/js/build.mjs"),
    ),
    (
        "package.json",
        include_str!("../../plugins/templates/js/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../plugins/templates/js/package-lock.json"),
    ),
    (
        "plugin.toml",
        include_str!("../../plugins/templates/js/plugin.toml"),
    ),
    (
        "README.md",
        include_str!("../../plugins/templates/js/README.md"),
    ),
];

/// Check a plugin id as the manifest does: lower-case letters, digits and dashes.
fn check_id(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && name.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(())
    } else {
        bail!("a plugin id is lower-case letters, digits and dashes, starting with a letter (got `{name}`)")
    }
}

/// The `Cargo.toml` of the SDK written beside a Rust skeleton, with the dependency versions
/// Herald builds its own connectors with.
fn sdk_manifest() -> Result<String> {
    let workspace: toml::Table = GUEST_WORKSPACE.parse().context("the guest workspace")?;
    let deps = workspace
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(|d| d.as_table())
        .ok_or_else(|| anyhow!("the guest workspace has no dependencies"))?;
    let mut table = toml::Table::new();
    for name in [
        "wit-bindgen",
        "serde",
        "serde_json",
        "base64",
        "form_urlencoded",
        "hmac",
        "sha2",
        "subtle",
    ] {
        let dep = deps
            .get(name)
            .ok_or_else(|| anyhow!("the guest workspace does not pin {name}"))?;
        table.insert(name.to_string(), dep.clone());
    }
    let mut manifest = toml::Table::new();
    manifest.insert(
        "package".into(),
        toml::Value::Table(toml::toml! {
            name = "herald-plugin-sdk"
            version = "0.2.0"
            edition = "2021"
            publish = false
        }),
    );
    manifest.insert("dependencies".into(), toml::Value::Table(table));
    Ok(format!(
        "# Herald's guest SDK for herald:channel@{}, written out by `herald plugin new`.\n{}",
        herald_plugin_host::API_VERSION,
        toml::to_string(&manifest)?
    ))
}

/// `herald plugin new NAME --lang LANG`: write a working connector skeleton into
/// `parent/NAME`, with the contract, a test file and (for Rust) the SDK.
pub fn new_plugin(name: &str, lang: Lang, parent: &Path) -> Result<PathBuf> {
    check_id(name)?;
    let dir = parent.join(name);
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let mut files: Vec<(String, String)> = Vec::new();
    let rename = |s: &str| {
        s.replace(TEMPLATE_ID, name)
            .replace("Example connector", name)
            .replace("example_connector", &name.replace('-', "_"))
    };
    let sources = match lang {
        Lang::Rust => RUST_FILES,
        Lang::Python => PYTHON_FILES,
        Lang::Js => JS_FILES,
    };
    for (path, text) in sources {
        files.push((path.to_string(), rename(text)));
    }
    files.push(("wit/channel.wit".into(), WIT.to_string()));
    let cases = match lang {
        Lang::Rust => TEST_CASES.to_string(),
        // Their runtimes need more than the default 64 MiB of instance memory.
        Lang::Python | Lang::Js => {
            TEST_CASES.replace("[grant]\n", "[grant]\nlimits = { max_memory_mb = 128 }\n")
        }
    };
    files.push(("test.toml".into(), cases));
    if lang == Lang::Rust {
        files.push(("sdk/Cargo.toml".into(), sdk_manifest()?));
        files.push(("sdk/src/lib.rs".into(), SDK_LIB.to_string()));
        files.push(("Cargo.lock".into(), GUEST_LOCK.to_string()));
        files.push((".gitignore".into(), "/target\n/plugin.wasm\n".into()));
    } else {
        files.push((
            ".gitignore".into(),
            "/plugin.wasm\n/node_modules\n__pycache__/\n".into(),
        ));
    }
    for (path, text) in &files {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a file in the folder"))?;
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(dir)
}

/// What builds a plugin folder's component, found by what the folder holds.
fn build_kind(dir: &Path) -> Option<Lang> {
    if dir.join("Cargo.toml").is_file() {
        Some(Lang::Rust)
    } else if dir.join("package.json").is_file() {
        Some(Lang::Js)
    } else if dir.join("app.py").is_file() {
        Some(Lang::Python)
    } else {
        None
    }
}

/// Run `cmd`, saying plainly which tool is missing when it cannot be started.
fn run(mut cmd: Command, tool: &str, install: &str) -> Result<std::process::Output> {
    let shown = format!("{cmd:?}");
    eprintln!("building: {shown}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!("{tool} is not installed: {install}"),
            _ => anyhow!("cannot run {tool}: {e}"),
        })?;
    if !out.status.success() {
        bail!("the build failed ({shown} exited with {})", out.status);
    }
    Ok(out)
}

/// The build step of `herald plugin pack`: run the folder's build tool (cargo for a
/// `Cargo.toml`, npm for a `package.json`, componentize-py for an `app.py`) and put the
/// component where `plugin.toml` says. A folder with none of them is packed as it is.
pub fn build(dir: &Path) -> Result<()> {
    let Some(kind) = build_kind(dir) else {
        return Ok(());
    };
    let manifest: toml::Table = std::fs::read_to_string(dir.join("plugin.toml"))
        .with_context(|| format!("reading {}", dir.join("plugin.toml").display()))?
        .parse()
        .context("plugin.toml")?;
    let wasm_name = manifest
        .get("wasm")
        .and_then(|v| v.as_str())
        .unwrap_or("plugin.wasm")
        .to_string();
    let wasm = dir.join(&wasm_name);
    match kind {
        Lang::Rust => {
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "--release", "--target", "wasm32-wasip2"])
                .args(["--message-format", "json-render-diagnostics"])
                .arg("--manifest-path")
                .arg(dir.join("Cargo.toml"));
            let out = run(
                cmd,
                "cargo",
                "install Rust with rustup, then `rustup target add wasm32-wasip2`",
            )?;
            // The component cargo reports for the package's cdylib.
            let built = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|m| m["reason"] == "compiler-artifact")
                .filter(|m| {
                    m["target"]["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
                })
                .flat_map(|m| {
                    m["filenames"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|f| f.as_str().map(PathBuf::from))
                        .collect::<Vec<_>>()
                })
                .find(|f| f.extension().is_some_and(|e| e == "wasm"))
                .ok_or_else(|| {
                    anyhow!("cargo built no .wasm component (is the crate a cdylib?)")
                })?;
            std::fs::copy(&built, &wasm)
                .with_context(|| format!("copying {} to {}", built.display(), wasm.display()))?;
        }
        Lang::Python => {
            let mut cmd = Command::new("componentize-py");
            cmd.current_dir(dir)
                .args(["-d", "wit", "-w", "plugin", "componentize", "app", "-o"])
                .arg(&wasm_name);
            run(
                cmd,
                "componentize-py",
                &format!(
                    "`pip install componentize-py=={COMPONENTIZE_PY_VERSION}` (the version Herald is tested with)"
                ),
            )?;
        }
        Lang::Js => {
            let npm = "npm";
            let install = "install Node.js 20 or newer with npm";
            if !dir.join("node_modules").is_dir() {
                let mut cmd = Command::new(npm);
                cmd.current_dir(dir);
                if dir.join("package-lock.json").is_file() {
                    cmd.args(["ci", "--no-audit", "--no-fund"]);
                } else {
                    cmd.args(["install", "--no-audit", "--no-fund"]);
                }
                run(cmd, npm, install)?;
            }
            let mut cmd = Command::new(npm);
            cmd.current_dir(dir).args(["run", "--silent", "build"]);
            run(cmd, npm, install)?;
        }
    }
    if !wasm.is_file() {
        bail!("the build did not write {}", wasm.display());
    }
    Ok(())
}

// --- herald plugin test ----------------------------------------------------------------------

/// What the loopback receiver answers, and what it received.
#[derive(Default)]
struct ReceiverState {
    reply: (u16, String),
    received: Vec<Received>,
}

#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A plain HTTP/1.1 server on 127.0.0.1 standing in for the provider.
struct Receiver {
    url: String,
    host_port: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    fn start() -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ReceiverState {
            reply: (200, "{}".into()),
            received: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &state);
                });
            }
        });
        Ok(Receiver {
            url: format!("http://{addr}"),
            host_port: addr.to_string(),
            state,
        })
    }
}

fn serve_one(stream: std::net::TcpStream, state: &Mutex<ReceiverState>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0; length.min(16 << 20)];
    reader.read_exact(&mut body)?;
    let (status, reply) = {
        let mut s = state.lock().expect("receiver state");
        s.received.push(Received {
            method,
            path,
            headers,
            body,
        });
        s.reply.clone()
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} Reply\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    stream.flush()
}

/// Replace `{receiver}` in every string of `v`.
fn with_receiver(v: &Value, url: &str) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("{receiver}", url)),
        Value::Array(a) => Value::Array(a.iter().map(|x| with_receiver(x, url)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), with_receiver(x, url)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether `actual` holds everything `expected` says (objects: these keys; the rest exactly).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| contains(av, ev))),
        (a, e) => a == e,
    }
}

/// A table of strings (`{ name = "value" }`) as pairs, in order.
fn string_pairs(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn send_request(message: &Value, index: usize) -> herald_plugin_host::SendRequest {
    herald_plugin_host::SendRequest {
        idempotency_key: text(message, "idempotency_key")
            .unwrap_or_else(|| format!("plugin-test:{index}")),
        operation: text(message, "operation"),
        to: text(message, "to").unwrap_or_default(),
        to_name: text(message, "to_name"),
        subject: text(message, "subject"),
        text: text(message, "text"),
        html: text(message, "html"),
        preheader: text(message, "preheader"),
        from: text(message, "from"),
        reply_to: text(message, "reply_to"),
        headers: string_pairs(message.get("headers")),
        topic: text(message, "topic"),
        unsubscribe: None,
        tracking: Default::default(),
        metadata: Vec::new(),
        front_matter: message.get("front_matter").cloned().unwrap_or(json!({})),
        fields: message.get("fields").cloned().unwrap_or(json!({})),
        payload: message.get("payload").cloned().unwrap_or(Value::Null),
    }
}

fn error_name(e: &herald_plugin_host::SendError) -> &'static str {
    use herald_plugin_host::SendError as E;
    match e {
        E::InvalidInput(_) => "invalid-input",
        E::Unauthorized(_) => "unauthorized",
        E::RateLimited { .. } => "rate-limited",
        E::Transient(_) => "transient",
        E::Ambiguous(_) => "ambiguous",
        E::Sandbox(_) => "sandbox",
        E::Denied(_) => "denied",
    }
}

/// One `[[send]]` case: `None` when it passed, else why not.
fn send_case(
    plugin: &herald_plugin_host::LoadedPlugin,
    receiver: &Receiver,
    case: &Value,
    index: usize,
) -> Option<String> {
    let reply = case.get("reply");
    {
        let mut s = receiver.state.lock().expect("receiver state");
        s.received.clear();
        s.reply = (
            reply
                .and_then(|r| r.get("status"))
                .and_then(Value::as_u64)
                .unwrap_or(200) as u16,
            reply
                .and_then(|r| text(r, "body"))
                .unwrap_or_else(|| "{}".into()),
        );
    }
    let message = with_receiver(case.get("message").unwrap_or(&json!({})), &receiver.url);
    let outcome = plugin.send(&send_request(&message, index));
    let received = receiver
        .state
        .lock()
        .expect("receiver state")
        .received
        .clone();
    let expect = case.get("expect").cloned().unwrap_or(json!({"sent": true}));
    match (&outcome, expect.get("sent"), text(&expect, "error")) {
        (Ok(out), Some(Value::String(id)), _) if out.provider_message_id.as_deref() != Some(id) => {
            return Some(format!(
                "sent with provider id {:?}, expected {id:?}",
                out.provider_message_id
            ))
        }
        (Ok(_), _, None) => {}
        (Ok(out), _, Some(e)) => {
            return Some(format!(
                "sent (provider id {:?}), expected the error {e}",
                out.provider_message_id
            ))
        }
        (Err(err), _, Some(e)) if error_name(err) == e => {}
        (Err(err), _, _) => return Some(format!("failed with {}: {err}", error_name(err))),
    }
    if let Some(want) = case.get("expect_request") {
        let Some(got) = received.first() else {
            return Some("the plugin sent no request to the receiver".into());
        };
        if let Some(m) = text(want, "method") {
            if !got.method.eq_ignore_ascii_case(&m) {
                return Some(format!("request method {}, expected {m}", got.method));
            }
        }
        if let Some(p) = text(want, "path") {
            if got.path != p {
                return Some(format!("request path {}, expected {p}", got.path));
            }
        }
        if let Some(headers) = want.get("headers").and_then(Value::as_object) {
            for (k, v) in headers {
                let have = got
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.as_str());
                if have != v.as_str() {
                    return Some(format!("request header {k} is {have:?}, expected {v}"));
                }
            }
        }
        if let Some(body) = want.get("json") {
            let actual: Value = match serde_json::from_slice(&got.body) {
                Ok(v) => v,
                Err(e) => return Some(format!("the request body is not JSON: {e}")),
            };
            if !contains(&actual, body) {
                return Some(format!("the request body {actual} does not contain {body}"));
            }
        }
    }
    None
}

/// One `[[webhook]]` case: `None` when it passed, else why not.
fn webhook_case(plugin: &herald_plugin_host::LoadedPlugin, case: &Value) -> Option<String> {
    let request = case.get("request").cloned().unwrap_or(json!({}));
    let req = herald_plugin_host::WebhookRequest {
        method: text(&request, "method").unwrap_or_else(|| "POST".into()),
        path: text(&request, "path").unwrap_or_default(),
        query: text(&request, "query").unwrap_or_default(),
        headers: string_pairs(request.get("headers")),
        body: text(&request, "body").unwrap_or_default().into_bytes(),
    };
    let result = plugin.parse_webhook(&req);
    if case.get("expect_error").and_then(Value::as_bool) == Some(true) {
        return match result {
            Err(_) => None,
            Ok(events) => Some(format!(
                "accepted ({} event(s)), expected it refused",
                events.len()
            )),
        };
    }
    let events = match result {
        Ok(e) => e,
        Err(e) => return Some(format!("refused: {e}")),
    };
    let want = case
        .get("expect_events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if events.len() != want.len() {
        return Some(format!(
            "{} event(s), expected {}: {}",
            events.len(),
            want.len(),
            serde_json::to_string(&events).unwrap_or_default()
        ));
    }
    for (got, want) in events.iter().zip(&want) {
        let got_json = json!({
            "kind": got.kind,
            "message_id": got.message_id,
            "recipient": got.recipient,
            "bounce": got.bounce.as_ref().map(|b| b.kind.clone()),
            "machine": got.machine,
            "properties": got.properties,
        });
        if !contains(&got_json, want) {
            return Some(format!("event {got_json} does not match {want}"));
        }
    }
    None
}

/// `herald plugin test DIR`: load the folder as the daemon would (manifest, digest,
/// describe, config schema, validate-config) with the grant of its `test.toml`, then run
/// the file's send and webhook cases. Returns whether every case passed.
pub fn test_plugin(dir: &Path, cases: Option<&Path>) -> Result<bool> {
    let file = cases
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("test.toml"));
    let spec: Value = toml::from_str::<toml::Value>(
        &std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?,
    )
    .with_context(|| format!("{} is not valid TOML", file.display()))
    .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))?;
    let receiver = Receiver::start()?;
    let grant_spec = with_receiver(spec.get("grant").unwrap_or(&json!({})), &receiver.url);
    let mut limits = herald_plugin_host::CallLimits::default();
    if let Some(l) = grant_spec.get("limits") {
        if let Some(mb) = l.get("max_memory_mb").and_then(Value::as_u64) {
            limits.max_memory_bytes = (mb as usize) << 20;
        }
        if let Some(ms) = l.get("timeout_ms").and_then(Value::as_u64) {
            limits.timeout = Duration::from_millis(ms);
        }
    }
    let grant = herald_plugin_host::Grant {
        allowed_hosts: vec![receiver.host_port.clone()],
        allow_private: true,
        secrets: string_pairs(grant_spec.get("secrets"))
            .into_iter()
            .collect(),
        config: grant_spec.get("config").cloned().unwrap_or(json!({})),
        smtp: None,
        limits,
    };
    let host = herald_plugin_host::PluginHost::new(herald_plugin_host::user_cache_dir())
        .map_err(|e| anyhow!("cannot start the plugin host: {e}"))?;
    let plugin = match host.load(dir, grant) {
        Ok(p) => p,
        Err(e) => {
            println!("FAIL load: {e}");
            return Ok(false);
        }
    };
    let d = plugin.describe();
    println!(
        "ok   load: {} {} (herald:channel@{}), contact fields [{}]",
        d.id,
        d.version,
        d.api_version,
        d.contact_fields.join(", ")
    );
    let (mut passed, mut failed) = (1, 0);
    let mut report = |name: &str, problem: Option<String>| match problem {
        None => {
            passed += 1;
            println!("ok   {name}");
        }
        Some(p) => {
            failed += 1;
            println!("FAIL {name}: {p}");
        }
    };
    let list = |key: &str| {
        spec.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for (i, case) in list("send").iter().enumerate() {
        let name = format!(
            "send: {}",
            text(case, "name").unwrap_or_else(|| format!("#{}", i + 1))
        );
        report(&name, send_case(&plugin, &receiver, case, i));
    }
    for (i, case) in list("webhook").iter().enumerate() {
        let name = format!(
            "webhook: {}",
            text(case, "name").unwrap_or_else(|| format!("#{}", i + 1))
        );
        report(&name, webhook_case(&plugin, case));
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}
