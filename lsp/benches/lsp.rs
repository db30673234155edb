//! Language-server latency in one run: diagnostics for a 1,000-line workflow script and
//! completion, both measured through the protocol (an in-process client, JSON-RPC framing
//! included) and for the analysis alone.
//!
//! `cargo bench -p herald-lsp` (targets: diagnostics < 50 ms, completion < 20 ms).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{pos_of, Client, Project};
use herald_lsp::analysis::{self, Doc};
use herald_lsp::project::{role_of, Workspace};

/// A valid workflow script of exactly `lines` lines: a declaration, many helper functions with
/// steps, branches and arithmetic, and `fn run` calling them.
fn big_script(lines: usize) -> String {
    let mut s = String::from(
        "import \"herald/text\" as text;\n\nworkflow(\"big\")\n    .on_event(\"newsletter_subscribed\")\n    .goal(\"order_completed\", days(14))\n    .reentry(\"always\");\n\n",
    );
    let run_len = 8;
    let mut i = 0;
    loop {
        let helper = format!(
            "/// Helper number {i}: a branch, a send and some arithmetic.\n\
             fn helper_{i}(contact, n) {{\n    \
                 let total = n * {i} + 1;\n    \
                 if contact.plan == \"pro\" && total > 10 {{\n        \
                     total += days(1);\n        \
                     send(\"email\", \"welcome\", #{{ n: total, name: text::first_name(contact.name, \"there\") }});\n    \
                 }} else {{\n        \
                     total -= hours(2);\n    \
                 }}\n    \
                 total\n\
             }}\n\n"
        );
        if s.lines().count() + helper.lines().count() + run_len > lines {
            break;
        }
        s.push_str(&helper);
        i += 1;
    }
    s.push_str(
        "fn run(contact, trigger) {\n    let opened = wait_for(\"email_opened\", days(2));\n",
    );
    while s.lines().count() < lines - 5 {
        s.push_str("    // padding\n");
    }
    s.push_str("    if opened == () {\n        send(\"sms\", \"nudge\");\n    }\n    helper_0(contact, 1);\n}\n");
    assert_eq!(s.lines().count(), lines);
    s
}

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let p95 = samples[(samples.len() * 95 / 100).min(samples.len() - 1)];
    (median, p95, *samples.last().unwrap())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn report(name: &str, samples: Vec<Duration>, target_ms: f64) -> bool {
    let n = samples.len();
    let (median, p95, max) = stats(samples);
    let ok = median.as_secs_f64() * 1000.0 < target_ms;
    println!(
        "{name:<52} median {:>9}  p95 {:>9}  max {:>9}  (n={n}, target < {target_ms} ms: {})",
        ms(median),
        ms(p95),
        ms(max),
        if ok { "met" } else { "MISSED" }
    );
    ok
}

fn main() {
    let project = Project::new();
    let root = project.root();
    let script = big_script(1000);
    let path = root.join("workflows/big.rhai");
    let engine = std::sync::Arc::new(herald_dsl::build_engine(&herald_dsl::Limits::default()));
    let workspace = Workspace::new(engine.clone());

    // The analysis alone: project snapshot + check_script + conversion to LSP positions.
    let mut direct = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let snap = workspace.snapshot(&path, &[], &path);
        let d = analysis::diagnostics(&engine, &path, role_of(&path), &script, &snap, |_| None);
        direct.push(t.elapsed());
        assert!(d.is_empty(), "the benchmark script checks clean: {d:?}");
    }

    let snap = workspace.snapshot(&path, &[], &path);
    let positions = [
        ("in send(\"", pos_of(&script, "send(\"sms\"", 6)),
        (
            "statement start in fn run",
            pos_of(&script, "    helper_0(contact, 1);", 4),
        ),
        ("after contact.", pos_of(&script, "contact.plan", 8)),
    ];
    let mut direct_completion = Vec::new();
    for _ in 0..30 {
        for (_, (line, col)) in positions {
            let t = Instant::now();
            let doc = Doc::new(&script);
            let offset = herald_lsp::text::position_to_offset(
                &script,
                tower_lsp::lsp_types::Position::new(line, col),
            );
            let items = analysis::completion(&doc, offset, &snap);
            direct_completion.push(t.elapsed());
            assert!(!items.is_empty());
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (protocol_diag, protocol_completion) = rt.block_on(async {
        let mut c = Client::initialized(&root).await;
        let uri = project.uri("workflows/big.rhai");
        c.open(&uri, &script).await;
        assert!(c.diagnostics(&uri, Some(1)).await.is_empty());
        // Typing: insert a character in the middle of the script, wait for the diagnostics of
        // that version.
        let mut diag = Vec::new();
        let (line, _) = pos_of(&script, "fn helper_40(", 0);
        for v in 2..=31 {
            let t = Instant::now();
            c.edit(&uri, v, (line - 1, 4), (line - 1, 4), "x").await;
            c.diagnostics(&uri, Some(v)).await;
            diag.push(t.elapsed());
        }
        let mut completion = Vec::new();
        for _ in 0..40 {
            for (_, (line, col)) in positions {
                let t = Instant::now();
                let labels = c.completion_labels(&uri, line, col).await;
                completion.push(t.elapsed());
                assert!(!labels.is_empty());
            }
        }
        c.stop().await;
        (diag, completion)
    });

    println!(
        "herald-lsp benchmark: {} lines, {} bytes, {} helper functions",
        script.lines().count(),
        script.len(),
        script.matches("\nfn helper_").count()
    );
    let mut ok = true;
    ok &= report("diagnostics, 1,000 lines (analysis only)", direct, 50.0);
    ok &= report(
        "diagnostics, 1,000 lines (didChange -> publish)",
        protocol_diag,
        50.0,
    );
    ok &= report(
        "completion, 1,000 lines (analysis only)",
        direct_completion,
        20.0,
    );
    ok &= report(
        "completion, 1,000 lines (request -> response)",
        protocol_completion,
        20.0,
    );
    if !ok {
        println!("some targets were missed");
    }
}
