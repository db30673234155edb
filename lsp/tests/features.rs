//! The editor features called directly (without the server's panic guard), at every offset of
//! half-typed and garbage texts: none may panic, whatever the input.

mod common;

use common::{Project, FOLLOWUP, WELCOME};
use herald_lsp::analysis::{self, Doc};
use herald_lsp::project::{role_of, Workspace};

fn char_offsets(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.char_indices().map(|(i, _)| i).chain([text.len()])
}

fn exercise(text: &str, snap: &herald_lsp::project::ProjectSnapshot) {
    let doc = Doc::new(text);
    for offset in char_offsets(text) {
        analysis::completion(&doc, offset, snap);
        analysis::hover(&doc, offset, snap);
        analysis::signature_help(&doc, offset);
        analysis::definition(&doc, offset, snap);
    }
    analysis::symbols(&doc);
}

#[test]
fn every_offset_of_every_prefix_and_garbage_is_safe() {
    let project = Project::new();
    let path = project.root().join("workflows/fuzz.rhai");
    let engine = std::sync::Arc::new(herald_dsl::build_engine(&herald_dsl::Limits::default()));
    let ws = Workspace::new(engine.clone());
    let snap = ws.snapshot(&path, &[], &path);
    assert!(snap.root.is_some() && !snap.channels.is_empty());

    let mut texts: Vec<String> = Vec::new();
    for source in [WELCOME, FOLLOWUP] {
        let cuts: Vec<usize> = char_offsets(source).collect();
        for (n, cut) in cuts.iter().enumerate() {
            if n % 9 == 0 {
                texts.push(source[..*cut].to_string());
                // The same text with its tail, minus one character: unbalanced everything.
                let rest = source[*cut..].chars().skip(1).collect::<String>();
                texts.push(format!("{}{}", &source[..*cut], rest));
            }
        }
    }
    let garbage = [
        "",
        "\"",
        "`${",
        "'",
        "/*",
        "///",
        "fn",
        "fn (",
        "fn x(",
        "fn x() {",
        "import",
        "import \"",
        "import \"herald/",
        "import \"herald/text\" as",
        "import \"herald/text\" as t; t::",
        "t::x(",
        "workflow(",
        "workflow(\"a\").",
        "workflow(\"a\").on_event(\"",
        ").)(.",
        "#{",
        "#{ a: ",
        "contact.",
        "contact?.",
        "trigger.",
        "send(\"",
        "send(\"email\", \"",
        "send(\"email\", \"\", #{ x: send(\"",
        "wait_for(\"😀",
        "é\u{301}(",
        "((((((((((",
        "}}}}",
        "\u{feff}workflow(\"bom\")",
        "\r\n\r\n",
        "x.y.z.",
        "::",
        "a::b::c(",
        ",,,,",
        "let let let",
        "send(\"em\nwait(",
        "\"\\",
        "0x",
        "1.",
        "1..2",
        "?.",
        "?? ??",
    ];
    texts.extend(garbage.iter().map(|g| g.to_string()));
    for text in &texts {
        exercise(text, &snap);
        let d = analysis::diagnostics(&engine, &path, role_of(&path), text, &snap, |t| {
            ws.template_error(t)
        });
        for diag in &d {
            assert!(diag.range.start <= diag.range.end, "{text:?}: {diag:?}");
        }
    }
}

#[test]
fn deeply_nested_input_is_refused_not_overflowed() {
    let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
    let snap = herald_lsp::project::ProjectSnapshot::default();
    let path = std::path::Path::new("/nowhere/deep.rhai");
    let text = format!(
        "fn run(contact, trigger) {{ let x = {}1{}; }}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let d = analysis::diagnostics(&engine, path, role_of(path), &text, &snap, |_| None);
    assert!(
        d.iter().any(|d| d.message.contains("syntax error")),
        "{d:?}"
    );
    exercise(&text[..200], &snap);
}

#[test]
fn editor_integration_files_are_well_formed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("editors/vscode");
    let read = |rel: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join(rel)).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let package = read("package.json");
    assert_eq!(package["main"], "./extension.js");
    assert!(dir.join("extension.js").is_file());
    for grammar in package["contributes"]["grammars"].as_array().unwrap() {
        let g = read(grammar["path"].as_str().unwrap());
        assert_eq!(g["scopeName"], grammar["scopeName"]);
    }
    for lang in package["contributes"]["languages"].as_array().unwrap() {
        if let Some(conf) = lang["configuration"].as_str() {
            read(conf);
        }
    }
    // The grammar highlights every journaled step of the DSL.
    let grammar = std::fs::read_to_string(dir.join("syntaxes/herald.tmLanguage.json")).unwrap();
    for f in herald_dsl::DSL_FUNCTIONS {
        if f.context == herald_dsl::api::Context::Step {
            assert!(grammar.contains(f.name), "the grammar misses {}", f.name);
        }
    }
}

#[test]
fn segment_and_scoring_files_get_their_own_checks() {
    let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
    let project = herald_lsp::project::ProjectSnapshot::default();
    let seg = std::path::Path::new("/p/segments/hot.rhai");
    let d = herald_lsp::analysis::diagnostics(
        &engine,
        seg,
        herald_lsp::project::Role::OtherScript,
        "segment(\"hot\");\n",
        &project,
        |_| None,
    );
    assert!(d.iter().any(|x| format!("{x:?}").contains("H012")), "{d:?}");
    let scoring = std::path::Path::new("/p/scoring.rhai");
    let d = herald_lsp::analysis::diagnostics(
        &engine,
        scoring,
        herald_lsp::project::Role::OtherScript,
        "rule(\"x\").points(1);\n",
        &project,
        |_| None,
    );
    assert!(d.iter().any(|x| format!("{x:?}").contains("H014")), "{d:?}");
}
