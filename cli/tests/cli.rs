//! The `herald` command line: `init` scaffolds a project that `check` accepts, and `check`
//! reports broken scripts like a compiler does.

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
    assert_eq!(stdout.trim(), "ok: 1 workflow(s), 3 template(s)");
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

/// One LSP message with its Content-Length header.
fn lsp_frame(v: &serde_json::Value) -> Vec<u8> {
    let body = v.to_string();
    format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// Read LSP messages from `out` until one satisfies `want`.
fn lsp_read_until(
    out: &mut impl std::io::BufRead,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the server closed its output"
            );
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                len = v.parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        std::io::Read::read_exact(out, &mut body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if want(&v) {
            return v;
        }
    }
}

#[test]
fn herald_lsp_serves_diagnostics_over_stdio() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p");
    herald(&["init", project.to_str().unwrap()]);
    let file = project.join("workflows/welcome.rhai");
    let uri = format!("file://{}", file.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("lsp")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let root = format!("file://{}", project.display());
    stdin
        .write_all(&lsp_frame(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"capabilities": {}, "rootUri": root, "workspaceFolders": [{"uri": root, "name": "p"}]}})))
        .unwrap();
    let init = lsp_read_until(&mut stdout, |v| v["id"] == 1);
    assert!(
        init["result"]["capabilities"]["completionProvider"].is_object(),
        "{init}"
    );
    stdin
        .write_all(&lsp_frame(
            &serde_json::json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
        ))
        .unwrap();
    let text = "workflow(\"w\").on_event(\"x\");\nfn run(contact, trigger) {\n    send(\"emial\", \"welcome\");\n}\n";
    stdin
        .write_all(&lsp_frame(&serde_json::json!({"jsonrpc": "2.0", "method": "textDocument/didOpen",
            "params": {"textDocument": {"uri": uri, "languageId": "herald", "version": 1, "text": text}}})))
        .unwrap();
    let diags = lsp_read_until(&mut stdout, |v| {
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
    stdin
        .write_all(&lsp_frame(
            &serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}),
        ))
        .unwrap();
    lsp_read_until(&mut stdout, |v| v["id"] == 2);
    stdin
        .write_all(&lsp_frame(
            &serde_json::json!({"jsonrpc": "2.0", "method": "exit"}),
        ))
        .unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
