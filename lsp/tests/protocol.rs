//! The server driven through the protocol, as an editor would: initialize, didOpen, didChange,
//! publishDiagnostics, completion, hover, signature help, definition and document symbols.

mod common;

use common::{pos_of, Client, Project, FOLLOWUP, WELCOME};
use serde_json::{json, Value};
use tower_lsp::lsp_types::{Position, Url};

/// A script with mistakes, with non-ASCII text before them on the same lines.
const BROKEN: &str = r#"// Relance — «bienvenue» 😀
workflow("relance")
    .on_event("signed_up")
    .on_workflow_completed("welcom");

fn run(contact, trigger) {
    let name = "Zoë 😀"; send("emial", "welcome");
    send("sms", "nudge", 42);
    send("email", "missing"); send("email", "broken");
    wait("3 days");
    wait_for("x");
}
"#;

/// The text an LSP range covers, counted in UTF-16 like the client does.
fn covered(text: &str, range: &Value) -> String {
    let pos = |v: &Value| {
        Position::new(
            v["line"].as_u64().unwrap() as u32,
            v["character"].as_u64().unwrap() as u32,
        )
    };
    let start = herald_lsp::text::position_to_offset(text, pos(&range["start"]));
    let end = herald_lsp::text::position_to_offset(text, pos(&range["end"]));
    text[start..end].to_string()
}

fn render(text: &str, diagnostics: &[Value]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        let r = &d["range"];
        let severity = match d["severity"].as_u64() {
            Some(1) => "error",
            Some(2) => "warning",
            _ => "other",
        };
        out.push_str(&format!(
            "{}:{}-{}:{} {severity} {} {:?}\n  {}\n",
            r["start"]["line"],
            r["start"]["character"],
            r["end"]["line"],
            r["end"]["character"],
            d["code"].as_str().unwrap(),
            covered(text, r),
            d["message"].as_str().unwrap().replace('\n', "\n  "),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_announces_the_features() {
    let project = Project::new();
    let mut c = Client::start();
    let r = c.initialize(&project.root()).await;
    let caps = &r["capabilities"];
    assert_eq!(caps["textDocumentSync"]["change"], 2, "incremental sync");
    assert_eq!(caps["hoverProvider"], true);
    assert_eq!(caps["definitionProvider"], true);
    assert_eq!(caps["documentSymbolProvider"], true);
    assert!(caps["signatureHelpProvider"]["triggerCharacters"]
        .as_array()
        .unwrap()
        .contains(&json!("(")));
    assert_eq!(r["serverInfo"]["name"], "herald-lsp");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_of_a_broken_script() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    let uri = project.uri("workflows/relance.rhai");
    c.open(&uri, BROKEN).await;
    let diagnostics = c.diagnostics(&uri, Some(1)).await;
    insta::assert_snapshot!(render(BROKEN, &diagnostics));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_are_exactly_those_of_check_script_with_the_project_context() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    let uri = project.uri("workflows/relance.rhai");
    c.open(&uri, BROKEN).await;
    let published = c.diagnostics(&uri, Some(1)).await;

    // What `herald check` computes: the same engine, the same context (channels of
    // herald.toml, templates that compile, every workflow's name).
    let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
    let ctx = herald_dsl::ProjectContext {
        channels: ["crm", "email", "sms"]
            .map(|c| (c.to_string(), Vec::new()))
            .into(),
        templates: ["nudge", "welcome", "welcome.sms"].map(String::from).into(),
        workflows: ["followup", "relance", "welcome"].map(String::from).into(),
        ..herald_dsl::ProjectContext::default()
    };
    let report = herald_dsl::check_script(&engine, "workflows/relance.rhai", BROKEN, Some(&ctx));
    assert!(report.diagnostics.len() >= 6, "{:?}", report.diagnostics);
    let expected = herald_lsp::analysis::to_lsp(BROKEN, &report.diagnostics);
    assert_eq!(
        published,
        serde_json::to_value(expected)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_project_itself_checks_clean() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    for (rel, text) in [
        ("workflows/welcome.rhai", WELCOME),
        ("workflows/followup.rhai", FOLLOWUP),
    ] {
        let uri = project.uri(rel);
        c.open(&uri, text).await;
        assert_eq!(
            c.diagnostics(&uri, Some(1)).await,
            Vec::<Value>::new(),
            "{rel}"
        );
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_edits_are_applied_in_utf16_positions() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    let uri = project.uri("workflows/relance.rhai");
    c.open(&uri, BROKEN).await;
    let first = c.diagnostics(&uri, Some(1)).await;
    let h002 = first
        .iter()
        .find(|d| d["code"] == "H002")
        .expect("unknown channel");
    // The range starts after "Zoë 😀" on its line: 😀 counts two UTF-16 units.
    let (line, col) = pos_of(BROKEN, "\"emial\"", 0);
    assert_eq!(
        h002["range"]["start"],
        json!({"line": line, "character": col})
    );
    assert_eq!(
        h002["range"]["end"],
        json!({"line": line, "character": col + 7})
    );
    assert!(h002["message"]
        .as_str()
        .unwrap()
        .contains("did you mean \"email\""));

    // Fix the typo with a ranged edit inside the literal.
    let (l, c0) = pos_of(BROKEN, "emial", 0);
    c.edit(&uri, 2, (l, c0), (l, c0 + 5), "email").await;
    let second = c.diagnostics(&uri, Some(2)).await;
    assert!(second.iter().all(|d| d["code"] != "H002"), "{second:?}");
    assert_eq!(second.len(), first.len() - 1);

    // Break the syntax: an unclosed call at the end of `run`.
    let (l, _) = pos_of(BROKEN, "wait_for(\"x\")", 0);
    c.edit(&uri, 3, (l, 0), (l, 0), "    send(\"email\",\n")
        .await;
    let third = c.diagnostics(&uri, Some(3)).await;
    assert_eq!(third.len(), 1, "{third:?}");
    assert_eq!(third[0]["code"], "H001");

    // Replace everything with the clean welcome script.
    c.replace(
        &uri,
        4,
        &WELCOME.replace("\"welcome\")\n", "\"relance\")\n"),
    )
    .await;
    assert_eq!(c.diagnostics(&uri, Some(4)).await, Vec::<Value>::new());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_offers_project_names_where_they_fit() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    let uri = project.uri("workflows/draft.rhai");
    let text = r#"import "herald/text" as text;
import "herald/t" as other;
workflow("draft")
    .on_event("")
    .on_workflow_completed("")
    .reentry("");

fn run(contact, trigger) {
    send("", "");
    send("sms", "w");
    wait_for("", days(1));
    let v = contact.;
    text::
    let t = trigger.;
    se
}
"#;
    c.open(&uri, text).await;
    c.diagnostics(&uri, Some(1)).await;
    let inside = |needle: &str, delta: usize| pos_of(text, needle, delta);

    let at = inside("\"herald/t\"", 9);
    let modules = c.completion_labels(&uri, at.0, at.1).await;
    assert_eq!(modules, ["herald/text", "herald/time"]);

    let at = inside(".on_event(\"", 11);
    let events = c.completion_labels(&uri, at.0, at.1).await;
    for e in [
        "newsletter_subscribed",
        "order_completed",
        "email_opened",
        "email_clicked",
    ] {
        assert!(events.contains(&e.to_string()), "{e} in {events:?}");
    }

    let at = inside("completed(\"", 11);
    assert_eq!(
        c.completion_labels(&uri, at.0, at.1).await,
        ["draft", "followup", "welcome"]
    );

    let at = inside("reentry(\"", 9);
    assert_eq!(
        c.completion_labels(&uri, at.0, at.1).await,
        ["once", "always"]
    );

    let at = inside("send(\"\"", 6);
    assert_eq!(
        c.completion_labels(&uri, at.0, at.1).await,
        ["crm", "email", "sms"]
    );

    // Templates: channel-specific variants are folded into their base name.
    let at = inside("send(\"\", \"", 10);
    assert_eq!(
        c.completion_labels(&uri, at.0, at.1).await,
        ["broken", "nudge", "welcome"]
    );
    let r = c
        .at(
            "textDocument/completion",
            &uri,
            inside("\"w\"", 2).0,
            inside("\"w\"", 2).1,
        )
        .await;
    let welcome = r
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["label"] == "welcome")
        .unwrap();
    assert_eq!(welcome["detail"], "templates/welcome.sms.liquid");
    assert_eq!(welcome["textEdit"]["newText"], "welcome");
    let (l, ch) = inside("\"w\"", 1);
    assert_eq!(
        welcome["textEdit"]["range"],
        json!({"start": {"line": l, "character": ch}, "end": {"line": l, "character": ch + 1}})
    );

    let at = inside("wait_for(\"", 10);
    assert!(c
        .completion_labels(&uri, at.0, at.1)
        .await
        .contains(&"email_opened".to_string()));

    let at = inside("contact.;", 8);
    assert_eq!(
        c.completion_labels(&uri, at.0, at.1).await,
        // From scripts (`contact.x`, `update(#{ x: .. })`) and templates (`{{ contact.x }}`).
        [
            "country",
            "first_name",
            "lifecycle",
            "nickname",
            "plan",
            "x"
        ]
    );

    let at = inside("text::\n", 6);
    assert_eq!(
        c.completion_labels(&uri, at.0, at.1).await,
        ["first_name", "capitalize", "truncate"]
    );

    let at = inside("trigger.;", 8);
    assert_eq!(
        c.completion_labels(&uri, at.0, at.1).await,
        ["event", "properties", "timestamp", "type"]
    );

    // Declaration methods after a dot in the workflow chain.
    let at = inside(".reentry", 1);
    let methods = c.completion_labels(&uri, at.0, at.1).await;
    assert!(methods.contains(&"goal".to_string()) && methods.contains(&"manual".to_string()));
    assert!(!methods.contains(&"send".to_string()));

    // Functions inside `fn run`: steps and helpers, not declarations.
    let at = inside("    se\n", 6);
    let r = c.at("textDocument/completion", &uri, at.0, at.1).await;
    let items = r.as_array().unwrap();
    let send = items
        .iter()
        .find(|i| i["label"] == "send")
        .expect("send offered");
    assert!(send["detail"]
        .as_str()
        .unwrap()
        .contains("send(channel: string, template: string)"));
    assert!(send["documentation"]["value"]
        .as_str()
        .unwrap()
        .contains("journaled step"));
    let labels: Vec<&str> = items.iter().map(|i| i["label"].as_str().unwrap()).collect();
    for l in ["wait", "days", "contact", "trigger", "v", "text", "let"] {
        assert!(labels.contains(&l), "{l} in {labels:?}");
    }
    assert!(!labels.contains(&"workflow"));

    // Top level: declarations, not steps.
    let top = c.completion_labels(&uri, 6, 0).await;
    assert!(top.contains(&"workflow".to_string()) && !top.contains(&"send".to_string()));

    // Nothing inside comments.
    c.replace(&uri, 2, "// send(\"\n").await;
    assert!(c.completion_labels(&uri, 0, 9).await.is_empty());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hover_and_signature_help_show_the_dsl_docs() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    let uri = project.uri("workflows/welcome.rhai");
    c.open(&uri, WELCOME).await;
    c.diagnostics(&uri, Some(1)).await;

    let at = pos_of(WELCOME, "wait_for(", 2);
    let h = c.at("textDocument/hover", &uri, at.0, at.1).await;
    let value = h["contents"]["value"].as_str().unwrap();
    assert!(
        value.contains("wait_for(event: string, timeout: int) -> map | ()"),
        "{value}"
    );
    assert!(value.contains(herald_lsp::analysis::free_fn("wait_for").unwrap().doc));
    let (l, ch) = pos_of(WELCOME, "wait_for(", 0);
    assert_eq!(h["range"]["start"], json!({"line": l, "character": ch}));
    assert_eq!(h["range"]["end"], json!({"line": l, "character": ch + 8}));

    // Declaration methods, script functions, stdlib functions, templates, channels.
    let at = pos_of(WELCOME, "goal(", 1);
    let h = c.at("textDocument/hover", &uri, at.0, at.1).await;
    assert!(h["contents"]["value"]
        .as_str()
        .unwrap()
        .contains("Conversion goal"));
    let at = pos_of(WELCOME, "greeting(contact) })", 3);
    let h = c.at("textDocument/hover", &uri, at.0, at.1).await;
    assert!(h["contents"]["value"]
        .as_str()
        .unwrap()
        .contains("A friendly greeting"));
    let at = pos_of(WELCOME, "first_name(contact", 2);
    let h = c.at("textDocument/hover", &uri, at.0, at.1).await;
    assert!(h["contents"]["value"]
        .as_str()
        .unwrap()
        .contains("fn text::first_name(full, fallback)"));
    let at = pos_of(WELCOME, "\"welcome\", #{", 3);
    let h = c.at("textDocument/hover", &uri, at.0, at.1).await;
    let v = h["contents"]["value"].as_str().unwrap();
    assert!(
        v.contains("templates/welcome.liquid") && v.contains("Welcome, {{ contact.first_name }}!"),
        "{v}"
    );
    let at = pos_of(WELCOME, "\"sms\"", 2);
    let h = c.at("textDocument/hover", &uri, at.0, at.1).await;
    assert!(h["contents"]["value"]
        .as_str()
        .unwrap()
        .contains("type `outbox`"));
    // Nothing to say about a plain variable.
    let at = pos_of(WELCOME, "opened ==", 1);
    assert_eq!(
        c.at("textDocument/hover", &uri, at.0, at.1).await,
        Value::Null
    );

    // Signature help: the overload that fits the argument being typed.
    let at = pos_of(WELCOME, "\"welcome\", #{", 12);
    let s = c.at("textDocument/signatureHelp", &uri, at.0, at.1).await;
    assert_eq!(s["activeParameter"], 2);
    assert_eq!(s["activeSignature"], 1);
    assert_eq!(
        s["signatures"][1]["label"],
        "send(channel: string, template: string, vars: map) -> map"
    );
    let at = pos_of(WELCOME, "\"email_opened\"", 1);
    let s = c.at("textDocument/signatureHelp", &uri, at.0, at.1).await;
    assert_eq!(s["activeParameter"], 0);
    let at = pos_of(WELCOME, "\"there\"", 1);
    let s = c.at("textDocument/signatureHelp", &uri, at.0, at.1).await;
    assert_eq!(
        s["signatures"][0]["label"],
        "text::first_name(full, fallback)"
    );
    assert_eq!(s["activeParameter"], 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_to_definition_and_document_symbols() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    let uri = project.uri("workflows/welcome.rhai");
    c.open(&uri, WELCOME).await;
    c.diagnostics(&uri, Some(1)).await;

    // A script function.
    let at = pos_of(WELCOME, "greeting(contact) })", 1);
    let d = c.at("textDocument/definition", &uri, at.0, at.1).await;
    let (l, ch) = pos_of(WELCOME, "greeting(contact) {", 0);
    assert_eq!(d["uri"], json!(uri));
    assert_eq!(d["range"]["start"], json!({"line": l, "character": ch}));

    // Templates, channel-specific when it exists.
    let at = pos_of(WELCOME, "\"welcome\", #{", 2);
    let d = c.at("textDocument/definition", &uri, at.0, at.1).await;
    assert_eq!(d["uri"], json!(project.uri("templates/welcome.liquid")));
    let at = pos_of(WELCOME, "\"sms\", \"welcome\"", 9);
    let d = c.at("textDocument/definition", &uri, at.0, at.1).await;
    assert_eq!(d["uri"], json!(project.uri("templates/welcome.sms.liquid")));

    // Channels lead to their table in herald.toml.
    let at = pos_of(WELCOME, "\"sms\"", 2);
    let d = c.at("textDocument/definition", &uri, at.0, at.1).await;
    assert_eq!(d["uri"], json!(project.uri("herald.toml")));
    assert_eq!(d["range"]["start"]["line"], 5);

    // Stdlib imports and functions lead to the module source.
    let at = pos_of(WELCOME, "herald/text", 3);
    let d = c.at("textDocument/definition", &uri, at.0, at.1).await;
    let file = Url::parse(d["uri"].as_str().unwrap())
        .unwrap()
        .to_file_path()
        .unwrap();
    let source = std::fs::read_to_string(&file).unwrap();
    assert_eq!(source, herald_stdlib::module("text").unwrap().source);
    let at = pos_of(WELCOME, "first_name(contact", 1);
    let d = c.at("textDocument/definition", &uri, at.0, at.1).await;
    let (l, _) = pos_of(&source, "fn first_name", 0);
    assert_eq!(d["range"]["start"]["line"], l);

    // Other workflows.
    let other = project.uri("workflows/followup.rhai");
    c.open(&other, FOLLOWUP).await;
    c.diagnostics(&other, Some(1)).await;
    let at = pos_of(FOLLOWUP, "\"welcome\"", 2);
    let d = c.at("textDocument/definition", &other, at.0, at.1).await;
    assert_eq!(d["uri"], json!(uri));
    assert_eq!(d["range"]["start"], json!({"line": 3, "character": 9}));

    let s = c
        .request(
            "textDocument/documentSymbol",
            json!({"textDocument": {"uri": uri}}),
        )
        .await;
    let names: Vec<(&str, u64)> = s
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["kind"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("text", 2), ("welcome", 3), ("greeting", 12), ("run", 12)]
    );
    let children: Vec<&str> = s[1]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        children,
        [
            "on_event(\"newsletter_subscribed\")",
            "goal(\"order_completed\")",
            "reentry(\"once\")"
        ]
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_unsaved_scripts_and_changed_files() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;

    // Liquid that does not compile, as the daemon would refuse it.
    let broken = project.uri("templates/broken.liquid");
    c.open(&broken, "{% if contact.x %}never closed\n").await;
    let d = c.diagnostics(&broken, Some(1)).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["code"], "L001");

    // An untitled buffer is checked without a project.
    let untitled = Url::parse("untitled:Untitled-1").unwrap();
    c.open(
        &untitled,
        "workflow(\"x\");\nfn run(contact, trigger) { send(\"nowhere\", \"t\"); }\n",
    )
    .await;
    assert_eq!(c.diagnostics(&untitled, Some(1)).await, Vec::<Value>::new());

    // A template created on disk is picked up when the client reports it.
    let uri = project.uri("workflows/promo.rhai");
    let text =
        "workflow(\"promo\").manual();\nfn run(contact, trigger) { send(\"email\", \"promo\"); }\n";
    c.open(&uri, text).await;
    let d = c.diagnostics(&uri, Some(1)).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["code"], "H003");
    std::fs::write(project.root().join("templates/promo.liquid"), "Sale!\n").unwrap();
    c.notify(
        "workspace/didChangeWatchedFiles",
        json!({"changes": [{"uri": project.uri("templates/promo.liquid"), "type": 1}]}),
    )
    .await;
    assert_eq!(c.diagnostics(&uri, Some(1)).await, Vec::<Value>::new());

    // An unsaved herald.toml counts: breaking it is an error in herald.toml itself, located as
    // `herald check` reports it, while the scripts keep the checks that need no project; and
    // removing a channel makes its uses unknown.
    let config = project.uri("herald.toml");
    c.open(&config, common::CONFIG).await;
    assert_eq!(c.diagnostics(&config, Some(1)).await, Vec::<Value>::new());
    c.replace(&config, 2, "[channels\n").await;
    let d = c.diagnostics(&config, Some(2)).await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["code"], "C001");
    assert_eq!(d[0]["severity"], 1);
    assert_eq!(d[0]["range"]["start"]["line"], 0, "{d:?}");
    assert_eq!(c.diagnostics(&uri, Some(1)).await, Vec::<Value>::new());
    c.replace(
        &config,
        3,
        "[channels.sms]\ntype = \"outbox\"\npath = \"x\"\n",
    )
    .await;
    let d = c.diagnostics(&uri, Some(1)).await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["code"], "H002");
    c.stop().await;
}

/// A deterministic pseudo-random sequence (no dependency needed for a little fuzzing).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_half_typed_and_garbage_input() {
    let project = Project::new();
    let mut c = Client::initialized(&project.root()).await;
    let uri = project.uri("workflows/fuzz.rhai");
    c.open(&uri, "").await;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let alphabet: Vec<char> = "(){}[]#\"'`.,:;/*\\ \n\tsendwait_for😀é 0123456789=<>!?$@"
        .chars()
        .collect();
    let mut text = String::new();
    let mut version = 1;
    // Type the welcome script character by character, interleaved with random garbage edits.
    for (i, ch) in WELCOME.chars().enumerate().take(400) {
        version += 1;
        let end = herald_lsp::text::offset_to_position(&text, text.len());
        let insert = if i % 7 == 3 {
            (0..rng.below(4) + 1)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        } else {
            ch.to_string()
        };
        c.edit(
            &uri,
            version,
            (end.line, end.character),
            (end.line, end.character),
            &insert,
        )
        .await;
        text.push_str(&insert);
        if i % 5 == 0 {
            // Requests at random positions, possibly past the end or inside a surrogate pair.
            let line = rng.below(text.lines().count() + 2) as u32;
            let character = rng.below(40) as u32;
            for method in [
                "textDocument/completion",
                "textDocument/hover",
                "textDocument/signatureHelp",
                "textDocument/definition",
            ] {
                c.at(method, &uri, line, character).await;
            }
            c.request(
                "textDocument/documentSymbol",
                json!({"textDocument": {"uri": uri}}),
            )
            .await;
        }
    }
    // Random deletions of whole ranges.
    for _ in 0..100 {
        version += 1;
        let a = rng.below(text.len() + 1);
        let b = (a + rng.below(30)).min(text.len());
        let (a, b) = (floor(&text, a), floor(&text, b));
        let s = herald_lsp::text::offset_to_position(&text, a);
        let e = herald_lsp::text::offset_to_position(&text, b);
        c.edit(
            &uri,
            version,
            (s.line, s.character),
            (e.line, e.character),
            "",
        )
        .await;
        text.replace_range(a..b, "");
    }
    // The server is alive, and what it publishes last is about the final text.
    let last = c.diagnostics(&uri, Some(version)).await;
    let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
    let direct = herald_dsl::check_script(&engine, "fuzz", &text, None);
    assert_eq!(
        last.iter().any(|d| d["code"] == "H001"),
        direct.diagnostics.iter().any(|d| d.code == "H001"),
        "{text}"
    );
    let r = c.completion_labels(&uri, 0, 0).await;
    assert!(r.iter().any(|l| l == "let"));
    c.stop().await;
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
