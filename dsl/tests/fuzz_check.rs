//! Fuzz target for the script checkers that `herald check` and the language server run on
//! every keystroke: `check_script` (workflows), `check_segment` and `check_scoring`.
//!
//! Under `cargo test` it replays the committed corpus (`tests/__fuzz__/check/corpus/`: broken
//! variants and edge cases), every script under `examples/` and `stdlib/modules/`, and then a
//! fixed number of random inputs from a fixed seed (the same every run). Each input is checked as it is and, mutated, on top of one of
//! those seed scripts (edits that keep most of a real script, so the checker gets past the
//! parser and into declarations and lints).
//!
//! What must hold for any text: no panic, every diagnostic's range lies inside the source on
//! character boundaries and names the file it was checked as, with a code and a message, the
//! same text checked twice gives the same diagnostics, and the diagnostics render.
//!
//! Longer runs, with fresh seeds: `BOLERO_RANDOM_ITERATIONS=20000 cargo test -p herald-dsl
//! --test fuzz_check`; a failure prints the `BOLERO_RANDOM_SEED` that replays it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use herald_dsl::{
    build_engine, check_scoring, check_script, check_segment, render_diagnostics, Diagnostic,
    Limits, ProjectContext,
};
use rhai::Engine;

/// Random inputs after the corpus: enough to exercise mutations of every seed, few enough for
/// a debug build on a busy two-core machine to finish in seconds.
const RANDOM_INPUTS: usize = 300;

/// The bounded random phase of plain `cargo test`: inputs from a fixed seed, so every run (and
/// CI) checks the same ones. bolero's own random phase, with fresh seeds, runs when
/// `BOLERO_RANDOM_ITERATIONS` asks for it.
fn seeded_inputs(n: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state: u64 = 0x5eed_0f4e_7a1d;
    let mut next = move || {
        // xorshift64*: plenty for picking bytes.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..n).map(move |_| {
        let len = (next() % 512) as usize;
        (0..len).map(|_| next() as u8).collect()
    })
}

/// bolero's random inputs: none unless `BOLERO_RANDOM_ITERATIONS` is set (it then says how many).
fn bolero_iterations() -> usize {
    if std::env::var_os("BOLERO_RANDOM_ITERATIONS").is_some() {
        RANDOM_INPUTS
    } else {
        0
    }
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| build_engine(&Limits::default()))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the dsl crate sits in the workspace")
        .to_path_buf()
}

fn rhai_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rhai_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rhai") {
            out.push(path);
        }
    }
}

/// The scripts shipped with Herald: `examples/` and `stdlib/modules/`.
fn shipped() -> Vec<PathBuf> {
    let root = repo_root();
    let mut paths = Vec::new();
    rhai_files(&root.join("examples"), &mut paths);
    rhai_files(&root.join("stdlib/modules"), &mut paths);
    paths
}

/// The shipped scripts and the committed corpus: the starting points of the mutations.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut paths = shipped();
        rhai_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/__fuzz__/check/corpus"),
            &mut paths,
        );
        paths
            .iter()
            .map(|p| std::fs::read(p).expect("a seed script is readable"))
            .collect()
    })
}

/// The project a script is checked against when lints need one (the quickstart's names).
fn project() -> &'static ProjectContext {
    static PROJECT: OnceLock<ProjectContext> = OnceLock::new();
    PROJECT.get_or_init(|| {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        ProjectContext {
            channels: [
                ("email".to_string(), Vec::new()),
                (
                    "crm".to_string(),
                    vec!["tag".to_string(), "note".to_string()],
                ),
            ]
            .into_iter()
            .collect(),
            templates: names(&["welcome", "nudge", "tips", "welcome.sms"]),
            workflows: names(&["welcome", "onboarding"]),
            segments: names(&["active", "pro"]),
            stages: names(&["lead", "mql", "sql"]),
        }
    })
}

/// Reads choices off the fuzzer's bytes and, once they run out, off a pseudo-random stream
/// seeded by them: a short input still makes a whole case, the same one every time.
struct Draw<'a> {
    bytes: &'a [u8],
    state: u64,
}

impl<'a> Draw<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        // FNV-1a of the input seeds the stream.
        let state = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        Draw { bytes, state }
    }

    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => {
                // SplitMix64.
                self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            }
        }
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (usize::from(self.byte()) << 8 | usize::from(self.byte())) % n
    }
}

/// Pieces of the DSL, Rhai and awkward text that mutations insert.
const FRAGMENTS: &[&str] = &[
    "workflow(\"w\")",
    "workflow(\"welcome\");\n",
    ".on_event(\"signed_up\")",
    ".on_event(\"page\", #{ name: \"Pricing\" })",
    ".on_segment_entered(\"actve\")",
    ".on_segment_exited(\"pro\")",
    ".on_stage_changed(\"sqll\")",
    ".on_workflow_completed(\"welcom\")",
    ".on_score_reached(50)",
    ".goal(\"order_completed\", days(14))",
    ".reentry(\"once\")",
    ".priority(\"bulk\")",
    "fn run(contact, trigger) {",
    "fn run(contact) {",
    "fn matches(contact) {",
    "}",
    "{",
    "(",
    ")",
    "\"",
    ";",
    ",",
    ".",
    "#{",
    "[",
    "]",
    "\n",
    "send(\"email\", \"welcome\")",
    "send(\"emial\", \"welcom\", #{ a: 1 })",
    "send(1, [])",
    "action(\"crm\", \"tagg\", #{})",
    "wait(days(3))",
    "wait_for(\"email_opened\", days(2))",
    "wait_for(trigger.event, hours(1))",
    "wait_until(now() + days(1))",
    "update(#{ lifecycle: \"x\" })",
    "variant(\"subject\", [\"a\", \"b\"])",
    "exit()",
    "segment(\"active\");\n",
    "in_segment(\"ghost\")",
    "count(\"page_viewed\", days(7)) >= 3",
    "last_seen(\"page\")",
    "scoring().half_life(days(14)).stage(\"lead\", 20);\n",
    "rule(\"r\").on_event(\"demo_requested\").points(40);\n",
    "rule(\"r\").when(\"size\", \">=\", 500)",
    ".points(0)",
    ".cap(15, days(1))",
    "import \"herald/text\" as text;\n",
    "import \"herald/nope\" as x;\n",
    "text::",
    "let x = ",
    "throw \"boom\";",
    "contact.score",
    "trigger.properties.plan ?? \"free\"",
    "é",
    "€",
    "\u{1F600}",
    "\r\n",
    "\t",
    "`interpolated ${x}`",
    "// comment\n",
    "/* open comment",
    "9223372036854775807",
    "1e308",
    "0x",
];

/// Whole statements, inserted at the start of a line so that most mutants still parse and the
/// checker gets as far as declarations and lints.
const STATEMENTS: &[&str] = &[
    "send(\"email\", \"welcome\");\n",
    "send(\"emial\", \"welcom\", #{ a: 1 });\n",
    "send(\"crm\", \"tips\");\n",
    "send(1, []);\n",
    "action(\"crm\", \"tagg\", #{});\n",
    "action(\"crm\", \"tag\");\n",
    "wait(days(3));\n",
    "wait(\"3 days\");\n",
    "let opened = wait_for(\"email_opened\", days(2));\n",
    "wait_for(trigger.event, hours(1));\n",
    "wait_until(now() + days(1));\n",
    "update(#{ lifecycle: \"x\" });\n",
    "let arm = variant(\"subject\", [\"a\", \"b\"]);\n",
    "exit(\"done\");\n",
    "if contact.score >= 50 { exit(); }\n",
    "throw \"boom\";\n",
    "workflow(\"w\").on_event(\"signed_up\");\n",
    "workflow(\"second\").manual();\n",
    "workflow(\"w\").on_segment_entered(\"actve\").on_stage_changed(\"sqll\");\n",
    "workflow(\"w\").on_workflow_completed(\"welcom\").goal(\"order_completed\", days(14));\n",
    "workflow(\"w\").on_score_reached(50).reentry(\"once\").priority(\"bulk\");\n",
    "fn run(contact, trigger) {}\n",
    "fn run(contact) {}\n",
    "fn matches(contact) { in_segment(\"ghost\") }\n",
    "fn matches(contact) { count(\"page_viewed\", days(7)) >= 3 }\n",
    "segment(\"active\");\n",
    "segment(\"second\");\n",
    "scoring().half_life(days(14)).stage(\"lead\", 20);\n",
    "rule(\"r\").on_event(\"demo_requested\").points(40);\n",
    "rule(\"r\").when(\"size\", \">=\", 500);\n",
    "rule(\"r\").points(0);\n",
    "import \"herald/text\" as text;\n",
    "import \"herald/nope\" as x;\n",
    "let name = \"s\"; name += name; name += name;\n",
    "// é € \u{1F600}\n",
];

/// A seed script with a few edits (deletions, duplications, inserted statements, DSL
/// fragments or arbitrary bytes), chosen by `draw`.
fn mutate(draw: &mut Draw) -> Vec<u8> {
    let seeds = seeds();
    let mut text = seeds[draw.below(seeds.len())].clone();
    for _ in 0..1 + draw.below(3) {
        let at = draw.below(text.len() + 1);
        let line_start = text[..at]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let line_end = text[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(text.len(), |i| at + i + 1);
        match draw.below(8) {
            0 => {
                let end = (at + draw.below(40)).min(text.len());
                text.drain(at..end);
            }
            1 => {
                let end = (at + draw.below(60)).min(text.len());
                let copy = text[at..end].to_vec();
                text.splice(at..at, copy);
            }
            2 => {
                let b = draw.byte();
                text.insert(at, b);
            }
            3 => {
                let fragment = FRAGMENTS[draw.below(FRAGMENTS.len())].as_bytes();
                text.splice(at..at, fragment.iter().copied());
            }
            4 => {
                text.drain(line_start..line_end);
            }
            _ => {
                let statement = STATEMENTS[draw.below(STATEMENTS.len())].as_bytes();
                text.splice(line_start..line_start, statement.iter().copied());
            }
        }
    }
    text
}

/// The checks `herald check` and the editor run on one file, by what the file is.
fn checks(source: &str) -> Vec<(&'static str, Vec<Diagnostic>)> {
    let engine = engine();
    let known: BTreeSet<String> = project().segments.clone();
    let workflow = check_script(engine, "workflows/w.rhai", source, None);
    let linted = check_script(engine, "workflows/w.rhai", source, Some(project()));
    for report in [&workflow, &linted] {
        // A script without errors is a workflow the daemon can load.
        assert!(
            report.has_errors() || report.workflow.is_some(),
            "no error, yet no workflow:\n{source}"
        );
    }
    vec![
        ("workflows/w.rhai", workflow.diagnostics),
        ("workflows/w.rhai", linted.diagnostics),
        (
            "segments/s.rhai",
            check_segment(engine, "segments/s.rhai", source, None).1,
        ),
        (
            "segments/s.rhai",
            check_segment(engine, "segments/s.rhai", source, Some(&known)).1,
        ),
        (
            "scoring.rhai",
            check_scoring(engine, "scoring.rhai", source).1,
        ),
    ]
}

fn assert_diagnostics_fit(source: &str, file: &str, diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        let r = &d.range;
        assert!(
            r.start <= r.end
                && r.end <= source.len()
                && source.is_char_boundary(r.start)
                && source.is_char_boundary(r.end),
            "{} {:?} is not a range of the {}-byte source: {d:?}\n{source}",
            d.code,
            r,
            source.len()
        );
        assert_eq!(d.file, file, "{d:?}");
        assert!(!d.code.is_empty() && !d.message.is_empty(), "{d:?}");
        let (line, column) = d.line_col(source);
        assert!(line >= 1 && column >= 1, "{d:?}");
    }
    let rendered = render_diagnostics(diagnostics, source, false);
    assert_eq!(rendered.is_empty(), diagnostics.is_empty(), "{rendered}");
}

/// Every property for one text.
fn assert_checker_holds(bytes: &[u8]) {
    let source = String::from_utf8_lossy(bytes);
    let first = checks(&source);
    for (file, diagnostics) in &first {
        assert_diagnostics_fit(&source, file, diagnostics);
    }
    let second = checks(&source);
    assert_eq!(first, second, "checking twice disagreed:\n{source}");
}

#[test]
fn checking_any_script_is_deterministic_and_keeps_diagnostics_inside_the_source() {
    let property = |input: &[u8]| {
        assert_checker_holds(input);
        assert_checker_holds(&mutate(&mut Draw::new(input)));
    };
    bolero::check!(name = "check")
        .with_iterations(bolero_iterations())
        .for_each(property);
    for input in seeded_inputs(RANDOM_INPUTS) {
        property(&input);
    }
}

#[test]
fn every_shipped_script_satisfies_the_checker_properties() {
    let shipped = shipped();
    assert!(
        !shipped.is_empty(),
        "no scripts under examples/ or stdlib/modules/"
    );
    for path in shipped {
        let source = std::fs::read(&path).expect("a shipped script is readable");
        assert_checker_holds(&source);
    }
}
