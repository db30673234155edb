//! The `herald` command line: `init` scaffolds a project that `check` accepts, and `check`
//! reports broken scripts like a compiler does.

mod common;

use std::process::Command;

fn herald(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn init_scaffolds_a_project_that_checks_clean_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("shop");
    let (ok, stdout, _) = herald(&["init", project.to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert!(project.join("workflows/welcome.rhai").exists());
    let (ok, stdout, stderr) = herald(&["check", project.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "ok: 1 workflow(s), 4 template(s)");
    let (ok, _, stderr) = herald(&["init", project.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("already contains a herald.toml"),
        "{stderr}"
    );
}

#[test]
fn check_renders_every_problem_with_file_line_and_label() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p");
    herald(&["init", project.to_str().unwrap()]);
    std::fs::write(
        project.join("workflows/broken.rhai"),
        "workflow(\"broken\").on_event(\"x\");\n\nfn run(contact, trigger) {\n    send(\"emial\", \"welcome\");\n    wait(\"two days\");\n}\n",
    )
    .unwrap();
    std::fs::write(project.join("templates/bad.liquid"), "{% if %}").unwrap();
    let (ok, _, stderr) = herald(&["check", project.to_str().unwrap()]);
    assert!(!ok);
    let stderr = stderr.replace(project.to_str().unwrap(), "<project>");
    insta::assert_snapshot!(stderr);
}

#[test]
fn run_refuses_a_broken_project_with_the_rendered_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p");
    herald(&["init", project.to_str().unwrap()]);
    std::fs::write(
        project.join("workflows/welcome.rhai"),
        "workflow(\"welcome\")\nfn run(contact, trigger) {}\n",
    )
    .unwrap();
    let (ok, _, stderr) = herald(&["run", project.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(stderr.contains("the project has errors"), "{stderr}");
    assert!(stderr.contains("workflows/welcome.rhai:2:1"), "{stderr}");
}

#[test]
fn herald_lsp_serves_diagnostics_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p");
    herald(&["init", project.to_str().unwrap()]);
    let file = project.join("workflows/welcome.rhai");
    let mut lsp = common::LspProcess::spawn(None);
    let init = lsp.initialize(Some(&project));
    assert!(
        init["result"]["capabilities"]["completionProvider"].is_object(),
        "{init}"
    );
    let text = "workflow(\"w\").on_event(\"x\");\nfn run(contact, trigger) {\n    send(\"emial\", \"welcome\");\n}\n";
    lsp.open_text(&file, text);
    let diags = lsp.wait_for(|v| {
        v["method"] == "textDocument/publishDiagnostics"
            && v["params"]["diagnostics"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
    });
    let d = &diags["params"]["diagnostics"][0];
    assert_eq!(d["code"], "H002", "{diags}");
    assert_eq!(
        d["range"]["start"],
        serde_json::json!({"line": 2, "character": 9})
    );
    assert_eq!(lsp.stop(), 0);
}
