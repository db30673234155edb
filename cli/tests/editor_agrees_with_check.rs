//! The editor and `herald check` never disagree: for every example project and a set of
//! fixture projects (segments and stages, MJML and `local_date` templates, a misspelled
//! `herald.toml` key, broken scripts and templates, broken plugin folders), the language server (`herald lsp`, a real
//! process over stdio) publishes for each file exactly the findings `herald check --format json`
//! reports for it.
//!
//! The one thing compared on one side only: loading plugin components (wasmtime: compiling,
//! `describe`, `validate-config`), which `herald check` does and the editor does not
//! (`plugin_errors` in the JSON). A plugin folder's manifest, component digest and granted
//! secrets are checked on both sides.
//!
//! `HERALD_EDITOR_BIN` names another `herald` whose `lsp` to compare against this build's
//! `check` (an older release, say, to see what it got wrong).
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::LspProcess;
use serde_json::Value;

/// One finding, as both sides can state it: code, severity, 1-based line and column, message.
type Finding = (String, String, u64, u64, String);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The files a project loads, relative to it.
fn project_files(root: &Path) -> Vec<String> {
    let mut files = vec!["herald.toml".to_string()];
    if root.join("scoring.rhai").is_file() {
        files.push("scoring.rhai".into());
    }
    for (dir, exts) in [
        ("workflows", &["rhai"][..]),
        ("segments", &["rhai"][..]),
        ("templates", &["liquid", "mjml"][..]),
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| exts.iter().any(|e| n.ends_with(&format!(".{e}"))))
            .collect();
        names.sort();
        files.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
    }
    files
}

/// `herald check --format json`: findings by file, and the plugin errors.
fn check(root: &Path) -> (BTreeMap<String, Vec<Finding>>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check", root.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("herald check printed no JSON ({e}): {out:?}"));
    let mut by_file: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
    for d in v["diagnostics"].as_array().unwrap() {
        by_file
            .entry(d["file"].as_str().unwrap().to_string())
            .or_default()
            .push((
                d["code"].as_str().unwrap().to_string(),
                d["severity"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
                d["message"].as_str().unwrap().to_string(),
            ));
    }
    (by_file, v["plugin_errors"].clone())
}

fn url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// What the editor shows for each file of the project in `root`, every file open at once.
fn editor(root: &Path, files: &[String]) -> BTreeMap<String, Vec<Finding>> {
    let mut lsp = LspProcess::spawn(std::env::var_os("HERALD_EDITOR_BIN"));
    lsp.initialize(Some(root));
    for rel in files {
        lsp.open(&root.join(rel));
    }
    // Every open buffer holds what is on disk, so every publication for a file is the same:
    // the first one per file is the answer.
    let mut by_file: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
    while by_file.len() < files.len() {
        let m = lsp.wait_for(|m| m["method"] == "textDocument/publishDiagnostics");
        let uri = m["params"]["uri"].as_str().unwrap();
        let rel = uri
            .strip_prefix(&format!("{}/", url(root)))
            .unwrap()
            .to_string();
        let findings = m["params"]["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["code"].as_str().unwrap_or_default().to_string(),
                    match d["severity"].as_u64() {
                        Some(1) => "error",
                        _ => "warning",
                    }
                    .to_string(),
                    d["range"]["start"]["line"].as_u64().unwrap() + 1,
                    d["range"]["start"]["character"].as_u64().unwrap() + 1,
                    d["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        by_file.entry(rel).or_insert(findings);
    }
    assert_eq!(lsp.stop(), 0);
    by_file
}

/// Compare both sides for one project; returns `herald check`'s findings by file.
fn agree(root: &Path) -> BTreeMap<String, Vec<Finding>> {
    let files = project_files(root);
    let (checked, _plugin_errors) = check(root);
    let shown = editor(root, &files);
    for file in checked.keys() {
        assert!(
            files.contains(file),
            "{}: herald check reports {file}, which the test did not open",
            root.display()
        );
    }
    for file in &files {
        let want = checked.get(file).cloned().unwrap_or_default();
        let got = &shown[file];
        assert_eq!(
            got.len(),
            want.len(),
            "{}/{file}: the editor shows {got:#?}\nherald check reports {want:#?}",
            root.display()
        );
        for (g, w) in got.iter().zip(&want) {
            // The editor appends the label and help to the message on lines of their own.
            let same = (&g.0, &g.1, g.2, g.3) == (&w.0, &w.1, w.2, w.3) && g.4.starts_with(&w.4);
            assert!(
                same,
                "{}/{file}: the editor shows {g:?}, herald check reports {w:?}",
                root.display()
            );
        }
    }
    checked
}

fn fixture(name: &str) -> PathBuf {
    repo().join("cli/tests/fixtures/projects").join(name)
}

#[test]
fn every_example_project_gets_the_same_findings_in_the_editor_and_from_check() {
    for example in ["quickstart", "multichannel"] {
        let checked = agree(&repo().join("examples").join(example));
        assert!(
            checked.values().flatten().all(|f| f.1 != "error"),
            "{example} checks clean: {checked:#?}"
        );
    }
}

#[test]
fn segment_and_stage_triggers_are_known_to_the_editor() {
    let checked = agree(&fixture("audience"));
    assert!(checked.is_empty(), "{checked:#?}");
}

#[test]
fn mjml_and_local_date_templates_are_known_to_the_editor() {
    let checked = agree(&fixture("templates"));
    assert!(checked.is_empty(), "{checked:#?}");
}

#[test]
fn a_misspelled_herald_toml_key_is_an_error_in_both() {
    let checked = agree(&fixture("broken-config"));
    let toml = &checked["herald.toml"];
    assert_eq!(toml.len(), 1, "{toml:?}");
    assert_eq!((toml[0].0.as_str(), toml[0].1.as_str()), ("C001", "error"));
    assert!(toml[0].4.contains("lisen"), "{toml:?}");
    assert_eq!(toml[0].2, 2, "points at the line of the key: {toml:?}");
}

#[test]
fn broken_scripts_and_templates_get_the_same_findings_in_both() {
    let checked = agree(&fixture("broken-scripts"));
    let codes = |file: &str| -> Vec<&str> {
        checked
            .get(file)
            .map(|v| v.iter().map(|f| f.0.as_str()).collect())
            .unwrap_or_default()
    };
    assert_eq!(codes("workflows/broken.rhai"), ["H002", "H006"]);
    assert_eq!(codes("workflows/syntax.rhai"), ["H001"]);
    assert_eq!(codes("workflows/twin_b.rhai"), ["H020"]);
    assert_eq!(codes("segments/bad.rhai"), ["H013"]);
    assert_eq!(codes("templates/bad.liquid"), ["L001"]);
    assert_eq!(codes("templates/welcome.liquid"), ["L002"]);
}

#[test]
fn plugin_folders_are_checked_without_wasmtime_in_both() {
    let checked = agree(&fixture("broken-plugin"));
    let toml: Vec<(&str, &str)> = checked["herald.toml"]
        .iter()
        .map(|f| (f.0.as_str(), f.1.as_str()))
        .collect();
    assert_eq!(
        toml,
        [
            ("C003", "error"),
            ("C005", "error"),
            ("C004", "warning"),
            ("C003", "error")
        ],
        "{checked:#?}"
    );
    let messages: Vec<&str> = checked["herald.toml"]
        .iter()
        .map(|f| f.4.as_str())
        .collect();
    assert!(
        messages[0].contains("plugins/acme/plugin.wasm has sha256"),
        "{messages:?}"
    );
    // The channel's config against the manifest's config_schema, without loading the
    // component: the missing key is named, and the finding points at `config = …`.
    assert!(
        messages[1].contains("config does not match the plugin's config_schema")
            && messages[1].contains("\"sender\" is a required property"),
        "{messages:?}"
    );
    assert_eq!(checked["herald.toml"][1].2, 7);
    assert!(messages[2].contains("ACME_TOKEN"), "{messages:?}");
    assert!(
        messages[3].contains("plugins/missing/plugin.toml"),
        "{messages:?}"
    );
    // The others point at their channel's `plugin = "…"` line.
    assert_eq!(checked["herald.toml"][0].2, 6);
    assert_eq!(checked["herald.toml"][3].2, 10);
}
