//! A connector author's path, in each language Herald supports: `herald plugin new` writes a
//! skeleton, `herald plugin pack` builds it with the language's tool and fills in the
//! manifest, `herald plugin test` passes its cases, and the daemon sends through it to a
//! loopback receiver with the declared contact fields (and nothing else of the contact);
//! what the plugin prints and an exception it raises reach the daemon's log and the step.
//!
//! The Rust skeleton builds with the toolchain that builds Herald. The Python and JavaScript
//! ones need componentize-py and componentize-js, pinned and installed outside the clone by
//! `.ci/run`, named by `HERALD_COMPONENTIZE_PY` (the `componentize-py` executable) and
//! `HERALD_COMPONENTIZE_JS_MODULES` (a `node_modules` holding the skeleton's dependencies).
//! Without those variables those tests say so and do nothing, except under CI, where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::json;

/// Where the nested builds keep their output between runs (inside cargo's target directory).
fn build_cache(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// `herald ARGS`, with the build environment of an author's shell, not of this test run.
fn herald(args: &[&str], extra_path: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args)
        // Compiled components are cached across runs, as for an author.
        .env("XDG_CACHE_HOME", build_cache("authoring-cache"))
        .env("CARGO_TARGET_DIR", build_cache("authoring-rust-target"))
        .env("NO_COLOR", "1");
    for var in [
        "CARGO_BUILD_BUILD_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    if let Some(dir) = extra_path {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    cmd.output().expect("run herald")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A tool named by `var`, or `None` (with a note) outside CI.
fn tool(var: &str) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} must be set under CI (.ci/run installs the connector build tools)")
        }
        _ => {
            eprintln!("plugin_authoring: {var} is not set; this language's test did not run");
            None
        }
    }
}

/// Write, build and test a skeleton in `lang`, then send through it from the daemon.
/// `exception`: what the step's error says when the skeleton's code fails on a reply that is
/// not JSON (the Rust skeleton treats it as a send without a provider id).
fn author(
    lang: &str,
    exception: Option<&str>,
    prepare: impl FnOnce(&Path),
    extra_path: Option<&Path>,
) {
    let work = tempfile::tempdir().unwrap();
    let name = format!("acme-{lang}");
    let dir = work.path().join(&name);
    let parent = work.path().to_str().unwrap();
    ok(
        &herald(
            &["plugin", "new", &name, "--lang", lang, "--dir", parent],
            None,
        ),
        "plugin new",
    );
    assert!(dir.join("wit/channel.wit").is_file());
    assert!(dir.join("test.toml").is_file());
    // A second `new` into the same folder is refused rather than overwriting the author's work.
    let again = herald(
        &["plugin", "new", &name, "--lang", lang, "--dir", parent],
        None,
    );
    assert!(!again.status.success());
    prepare(&dir);

    let packed = ok(
        &herald(&["plugin", "pack", dir.to_str().unwrap()], extra_path),
        "plugin pack",
    );
    assert!(packed.contains("verdict: valid"), "{packed}");
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).unwrap();
    assert!(manifest.contains("sha256 = \""), "{manifest}");
    assert!(manifest.contains("config_schema = "), "{manifest}");
    assert!(
        packed.contains("contact fields: email, first_name"),
        "{packed}"
    );

    let tested = ok(
        &herald(&["plugin", "test", dir.to_str().unwrap()], None),
        "plugin test",
    );
    assert!(tested.contains("8 passed, 0 failed"), "{tested}");

    // The daemon sends through it; a receiver answering something that is not JSON makes the
    // skeleton's own code fail, which the step reports.
    let good = Recorder::start_with_body(vec![200], "{\"id\":\"acme-{n}\"}");
    let broken = Recorder::start_with_body(vec![200], "this is not JSON");
    let channel = |channel: &str, url: &str| {
        format!(
            "[channels.{channel}]\nplugin = \"{}\"\nto = \"email\"\nallowed_hosts = [\"127.0.0.1\"]\n\
             allow_private = true\nlimits = {{ max_memory_mb = 128 }}\n\
             config = {{ url = \"{url}/messages\" }}\n\
             secrets = {{ WEBHOOK_SECRET = \"env:HERALD_TEST_AUTHORING_SECRET\" }}\n\n",
            dir.display()
        )
    };
    let p = TestProject::new(&format!(
        "[engine]\nmax_attempts = 1\n\n{}{}",
        channel("acme", &good.url),
        channel("flaky", &broken.url)
    ));
    p.template(
        "hello",
        "---\nsubject: Hello {{ contact.first_name }}\n---\nHi!\n",
    );
    p.workflow(
        "w.rhai",
        "workflow(\"w\").on_event(\"signup\");\nfn run(contact, trigger) {\n    send(\"acme\", \"hello\");\n    send(\"flaky\", \"hello\");\n}\n",
    );
    let d = Process::start(p.path(), &[("HERALD_TEST_AUTHORING_SECRET", "s")]);
    let c = &d.client;
    c.identify(
        "ada",
        json!({"email": "ada@example.com", "first_name": "Ada", "date_of_birth": "1815-12-10"}),
    );
    c.track("ada", "signup", json!({}));
    let id = c.only_run("ada")["id"].as_str().unwrap().to_string();
    // A call that fails after its request went out is the ambiguous window: the step is
    // parked for an operator rather than failed.
    let run = c.run_reaches(
        &id,
        if exception.is_some() {
            "parked"
        } else {
            "completed"
        },
        2,
    );
    assert_eq!(run["journal"][0]["status"], "done", "{run}");
    assert_eq!(
        run["journal"][0]["result"]["provider_id"], "acme-0",
        "{run}"
    );
    let body: serde_json::Value =
        serde_json::from_str(&good.requests.lock().unwrap()[0].body).unwrap();
    assert_eq!(
        body["fields"],
        json!({"email": "ada@example.com", "first_name": "Ada"}),
        "{body}"
    );
    assert_eq!(body["to"], "ada@example.com");
    assert_eq!(body["subject"], "Hello Ada");
    assert_eq!(broken.requests.lock().unwrap().len(), 1);
    if let Some(needle) = exception {
        let error = run["journal"][1]["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{run}");
    }
    let log = eventually("the plugin's output in the log", || {
        let log = d.log_text();
        log.contains("sending ").then_some(log)
    });
    let printed = log
        .lines()
        .find(|l| l.contains("sending "))
        .expect("the printed line");
    assert!(printed.contains(&format!("plugin={name}")), "{printed}");
    assert!(printed.contains("stdout"), "{printed}");
}

#[test]
fn a_rust_connector_from_plugin_new_builds_packs_passes_its_tests_and_sends() {
    author("rust", None, |_| {}, None);
}

#[test]
fn a_python_connector_from_plugin_new_builds_packs_passes_its_tests_and_sends() {
    let Some(componentize_py) = tool("HERALD_COMPONENTIZE_PY") else {
        return;
    };
    let bin = componentize_py
        .parent()
        .expect("a tool in a folder")
        .to_path_buf();
    author("python", Some("JSONDecodeError"), |_| {}, Some(&bin));
}

#[test]
fn a_javascript_connector_from_plugin_new_builds_packs_passes_its_tests_and_sends() {
    let Some(modules) = tool("HERALD_COMPONENTIZE_JS_MODULES") else {
        return;
    };
    author(
        "js",
        Some("SyntaxError"),
        |dir| {
            // The skeleton's pinned dependencies, installed once by .ci/run.
            std::os::unix::fs::symlink(&modules, dir.join("node_modules")).unwrap();
        },
        None,
    );
}
