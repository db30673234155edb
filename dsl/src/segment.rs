//! Segments (`segments/*.rhai`) and scoring rules (`scoring.rhai`): loading, checking and
//! evaluating them with the same engine as workflows.
//!
//! ```rhai
//! // segments/engaged.rhai
//! segment("engaged");
//!
//! fn matches(contact) {
//!     contact.plan == "pro" && count("page_viewed", days(7)) >= 3
//! }
//! ```
//!
//! ```rhai
//! // scoring.rhai
//! scoring().half_life(days(14)).stage("lead", 20).stage("mql", 50).stage("sql", 80);
//! rule("viewed pricing").on_event("page", #{ name: "Pricing" }).points(5).cap(15, days(1));
//! rule("requested a demo").on_event("demo_requested").points(40);
//! rule("works at a big company").when("company_size", ">=", 500).points(10);
//! ```

use std::collections::BTreeSet;

use rhai::{ASTNode, Dynamic, Engine, Expr, Scope, AST};

use crate::analysis::{compile_and_declare, line_range, quoted_range};
use crate::decl::{RuleDecl, ScoringDecl, SegmentDecl};
use crate::diagnostic::Diagnostic;
use crate::engine::{ActivationEnd, ContactView, Limits};

/// What a segment's result can depend on, so that only affected segments are re-evaluated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentDeps {
    /// Event names counted or looked up; `None` when a name is computed at run time.
    pub events: Option<BTreeSet<String>>,
    /// Other segments it reads with `in_segment`.
    pub segments: BTreeSet<String>,
    /// Contact attributes it reads (`contact.plan`, `contact["plan"]`); `None` when the
    /// contact is used in a way that can read any attribute (passed to a function, printed,
    /// indexed with a computed key). The lead score and stage are the attributes `score` and
    /// `stage`; `segments` lists the contact's memberships.
    pub attributes: Option<BTreeSet<String>>,
    /// `count` calls written with literal arguments (event name, filter map, window such as
    /// `days(30)`): the runtime keeps an index for them instead of reading the event history.
    pub counts: Vec<CountSpec>,
}

/// One `count(event[, filter], window)` call with literal arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct CountSpec {
    /// Event name.
    pub event: String,
    /// Property filter (empty for none).
    pub filter: serde_json::Map<String, serde_json::Value>,
    /// Window in milliseconds.
    pub window_ms: i64,
}

impl CountSpec {
    /// Names this count for indexes: the event name, with the filter when there is one.
    pub fn key(&self) -> String {
        count_key(&self.event, &self.filter)
    }
}

/// The key of a count of `event` matching `filter` (see [`CountSpec::key`]).
pub fn count_key(event: &str, filter: &serde_json::Map<String, serde_json::Value>) -> String {
    if filter.is_empty() {
        event.to_string()
    } else {
        format!("{event}\u{0}{}", serde_json::Value::Object(filter.clone()))
    }
}

/// A window written as a literal: `86400000`, `days(30)`, `hours(1.5)`.
pub(crate) fn literal_window(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::IntegerConstant(n, _) => Some(*n),
        Expr::FnCall(call, _) if call.args.len() == 1 => {
            let unit: i64 = match call.name.as_str() {
                "seconds" => 1000,
                "minutes" => 60_000,
                "hours" => 3_600_000,
                "days" => 86_400_000,
                "weeks" => 7 * 86_400_000,
                _ => return None,
            };
            match &call.args[0] {
                Expr::IntegerConstant(n, _) => Some(n.saturating_mul(unit)),
                Expr::FloatConstant(f, _) => Some((**f * unit as f64).round() as i64),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A `count` call's arguments, when all are literal.
pub(crate) fn literal_count(args: &[Expr]) -> Option<CountSpec> {
    let event = match args.first()? {
        Expr::StringConstant(s, _) => s.to_string(),
        _ => return None,
    };
    let (filter, window) = match args {
        [_, w] => (serde_json::Map::new(), w),
        [_, f, w] => match crate::value::to_json(&f.get_literal_value(None)?) {
            serde_json::Value::Object(m) => (m, w),
            _ => return None,
        },
        _ => return None,
    };
    Some(CountSpec {
        event,
        filter,
        window_ms: literal_window(window)?,
    })
}

impl SegmentDeps {
    /// Whether the result can change when any of `changed` attributes changes.
    pub fn reads_any(&self, changed: &[&str]) -> bool {
        match &self.attributes {
            None => !changed.is_empty(),
            Some(a) => changed.iter().any(|c| a.contains(*c)),
        }
    }

    /// Whether the result can change when the membership of `segment` changes.
    pub fn reads_segment(&self, segment: &str) -> bool {
        self.segments.contains(segment) || self.reads_any(&["segments"])
    }
}

/// A compiled segment.
#[derive(Debug, Clone)]
pub struct LoadedSegment {
    /// The declaration.
    pub decl: SegmentDecl,
    /// The compiled script.
    pub ast: AST,
    /// What it depends on.
    pub deps: SegmentDeps,
    /// The fast path, when `matches` is one simple expression.
    pub native: Option<crate::native::Native>,
}

/// Compiled scoring settings and rules.
#[derive(Debug, Clone, Default)]
pub struct LoadedScoring {
    /// Decay and stages.
    pub settings: ScoringDecl,
    /// Rules in file order.
    pub rules: Vec<RuleDecl>,
}

fn deps_of(ast: &AST) -> SegmentDeps {
    let mut events = BTreeSet::new();
    let mut segments = BTreeSet::new();
    let mut dynamic = false;
    // The name `matches` gives its contact parameter.
    let param = ast
        .iter_functions()
        .find(|f| f.name == "matches" && f.params.len() == 1)
        .map(|f| f.params[0].to_string());
    let mut attributes = Some(BTreeSet::new());
    let mut counts = Vec::new();
    let mut reads_memberships = false;
    ast.walk(&mut |path: &[ASTNode]| {
        if let (Some(ASTNode::Expr(var @ Expr::Variable(v, ..))), Some(param)) =
            (path.last(), param.as_deref())
        {
            if v.1.as_str() == param {
                let read = match path.len().checked_sub(2).map(|i| &path[i]) {
                    Some(ASTNode::Expr(Expr::Dot(x, ..))) if std::ptr::eq(&x.lhs, *var) => {
                        match &x.rhs {
                            Expr::Property(p, ..) => Some(p.2.to_string()),
                            // `contact.address.city`, `contact.tags.len()`
                            Expr::Dot(y, ..) | Expr::Index(y, ..) => match &y.lhs {
                                Expr::Property(p, ..) => Some(p.2.to_string()),
                                _ => None,
                            },
                            _ => None,
                        }
                    }
                    Some(ASTNode::Expr(Expr::Index(x, ..))) if std::ptr::eq(&x.lhs, *var) => {
                        match &x.rhs {
                            Expr::StringConstant(s, ..) => Some(s.to_string()),
                            Expr::Dot(y, ..) | Expr::Index(y, ..) => match &y.lhs {
                                Expr::StringConstant(s, ..) => Some(s.to_string()),
                                _ => None,
                            },
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match (read, attributes.as_mut()) {
                    (Some(name), Some(set)) => {
                        set.insert(name);
                    }
                    (None, _) => attributes = None,
                    _ => {}
                }
            }
            return true;
        }
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _))) => call,
            Some(ASTNode::Stmt(rhai::Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        let literal = match call.args.first() {
            Some(Expr::StringConstant(s, _)) => Some(s.to_string()),
            _ => None,
        };
        if call.name.as_str() == "count" {
            if let Some(spec) = literal_count(&call.args) {
                if !counts.contains(&spec) {
                    counts.push(spec);
                }
            }
        }
        match call.name.as_str() {
            "count" | "last_seen" | "first_seen" => match literal {
                Some(s) => {
                    events.insert(s);
                }
                None => dynamic = true,
            },
            "in_segment" => match literal {
                Some(s) => {
                    segments.insert(s);
                }
                // A computed name can read any membership.
                None => reads_memberships = true,
            },
            _ => {}
        }
        true
    });
    if reads_memberships {
        if let Some(a) = attributes.as_mut() {
            a.insert("segments".to_string());
        }
    }
    SegmentDeps {
        events: (!dynamic).then_some(events),
        segments,
        attributes,
        counts,
    }
}

/// Check a segment file: it must declare one `segment(...)` and define `fn matches(contact)`.
/// With `known_segments`, `in_segment` references are checked too.
pub fn check_segment(
    engine: &Engine,
    file: &str,
    source: &str,
    known_segments: Option<&BTreeSet<String>>,
) -> (Option<LoadedSegment>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let (ast, declared, load_error) = match compile_and_declare(engine, file, source) {
        Ok(loaded) => loaded,
        Err(d) => return (None, vec![*d]),
    };
    diags.extend(load_error);
    if !declared.workflows.is_empty() || declared.scoring.is_some() || !declared.rules.is_empty() {
        diags.push(
            Diagnostic::error(
                "H011",
                file,
                0..0,
                "a segment file declares only `segment(...)`",
            )
            .with_help("workflows live in workflows/, scoring rules in scoring.rhai"),
        );
    }
    let decl = match declared.segments.as_slice() {
        [] => {
            diags.push(
                Diagnostic::error("H011", file, 0..0, "this file declares no segment")
                    .with_help("start the file with `segment(\"name\");`"),
            );
            None
        }
        [one] => Some(one.clone()),
        [first, rest @ ..] => {
            for extra in rest {
                diags.push(Diagnostic::error(
                    "H011",
                    file,
                    line_range(source, extra.line),
                    format!(
                        "a second segment \"{}\" is declared in this file",
                        extra.name
                    ),
                ));
            }
            Some(first.clone())
        }
    };
    let has_matches = ast
        .iter_functions()
        .any(|f| f.name == "matches" && f.params.len() == 1);
    if !has_matches {
        diags.push(
            Diagnostic::error(
                "H012",
                file,
                0..0,
                "this segment has no `fn matches(contact)`",
            )
            .with_label("membership is decided by `fn matches`")
            .with_help("add `fn matches(contact) { count(\"page_viewed\", days(7)) >= 3 }`"),
        );
    }
    let deps = deps_of(&ast);
    if let Some(known) = known_segments {
        for s in &deps.segments {
            if !known.contains(s) {
                diags.push(
                    Diagnostic::error(
                        "H013",
                        file,
                        quoted_range(source, s, 0..0),
                        format!("unknown segment \"{s}\""),
                    )
                    .with_label("no segments/*.rhai declares it"),
                );
            }
        }
    }
    let ok = !diags.iter().any(Diagnostic::is_error);
    let loaded = decl.filter(|_| ok).map(|decl| LoadedSegment {
        native: crate::native::compile(&ast),
        decl,
        ast,
        deps,
    });
    (loaded, diags)
}

/// Check `scoring.rhai`: settings and rules, each rule with a condition.
pub fn check_scoring(
    engine: &Engine,
    file: &str,
    source: &str,
) -> (Option<LoadedScoring>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let (_, declared, load_error) = match compile_and_declare(engine, file, source) {
        Ok(loaded) => loaded,
        Err(d) => return (None, vec![*d]),
    };
    diags.extend(load_error);
    for r in &declared.rules {
        if r.condition.is_none() {
            diags.push(
                Diagnostic::error(
                    "H014",
                    file,
                    line_range(source, r.line),
                    format!("rule \"{}\" has no condition", r.name),
                )
                .with_help("add `.on_event(\"name\")` or `.when(\"attribute\", \">=\", value)`"),
            );
        }
        if r.points == 0.0 {
            diags.push(
                Diagnostic::warning(
                    "H015",
                    file,
                    line_range(source, r.line),
                    format!("rule \"{}\" awards no points", r.name),
                )
                .with_help("add `.points(n)`"),
            );
        }
    }
    let ok = !diags.iter().any(Diagnostic::is_error);
    let loaded = ok.then(|| LoadedScoring {
        settings: declared.scoring.unwrap_or_default(),
        rules: declared.rules,
    });
    (loaded, diags)
}

/// Evaluate `fn matches(contact)` with the host bound by the caller
/// ([`with_host`](crate::with_host)). A non-boolean result is an error.
pub fn evaluate_segment(engine: &Engine, ast: &AST, limits: &Limits) -> Result<bool, String> {
    let mut scope = Scope::new();
    let options = rhai::CallFnOptions::new()
        .eval_ast(crate::engine::has_imports(ast))
        .rewind_scope(true);
    let deadline = crate::engine::set_deadline(limits);
    let r = engine.call_fn_with_options::<Dynamic>(
        options,
        &mut scope,
        ast,
        "matches",
        (Dynamic::from(ContactView),),
    );
    drop(deadline);
    match r {
        Ok(v) => v
            .as_bool()
            .map_err(|t| format!("`matches` must return true or false, not {t}")),
        Err(e) => match crate::engine::classify_error(*e) {
            ActivationEnd::Failed { message, line, .. } => Err(match line {
                Some(l) => format!("{message} (line {l})"),
                None => message,
            }),
            other => Err(format!("segment evaluation ended unexpectedly: {other:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(body: &str) -> SegmentDeps {
        let engine = crate::build_engine(&Limits::default());
        let src = format!("segment(\"s\");\nfn matches(c) {{\n{body}\n}}\n");
        let (loaded, diags) = check_segment(&engine, "s.rhai", &src, None);
        assert!(diags.is_empty(), "{diags:?}");
        loaded.expect("segment loads").deps
    }

    fn set(items: &[&str]) -> Option<BTreeSet<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn deps_list_the_attributes_a_segment_reads() {
        let d = deps(
            r#"c.plan == "pro" && c["country"] == "NL" && c.address.city != "" && c.tags.len() > 1"#,
        );
        assert_eq!(d.attributes, set(&["address", "country", "plan", "tags"]));
        assert_eq!(d.events, set(&[]));
        assert!(d.reads_any(&["plan"]));
        assert!(!d.reads_any(&["score", "stage"]));
        assert!(!d.reads_segment("other"));
    }

    #[test]
    fn behaviour_only_segments_read_no_attributes() {
        let d = deps(r#"count("order_completed", days(30)) == 0 && in_segment("customers")"#);
        assert_eq!(d.attributes, set(&[]));
        assert_eq!(d.events, set(&["order_completed"]));
        assert!(!d.reads_any(&["score", "stage", "plan"]));
        assert!(d.reads_segment("customers"));
        assert!(!d.reads_segment("other"));
    }

    #[test]
    fn literal_counts_are_listed_for_the_behaviour_index() {
        let d = deps(
            r#"count("order", days(30)) == 0 && count("page", #{ name: "Pricing" }, hours(1.5)) > 2
               && count("visit", 60000) > 0 && count("visit", days(c.window)) > 0"#,
        );
        let specs: Vec<(String, String, i64)> = d
            .counts
            .iter()
            .map(|c| {
                (
                    c.event.clone(),
                    serde_json::Value::Object(c.filter.clone()).to_string(),
                    c.window_ms,
                )
            })
            .collect();
        assert_eq!(
            specs,
            vec![
                ("order".to_string(), "{}".to_string(), 30 * 86_400_000),
                (
                    "page".to_string(),
                    r#"{"name":"Pricing"}"#.to_string(),
                    5_400_000
                ),
                ("visit".to_string(), "{}".to_string(), 60_000),
            ],
            "the count with a computed window is not listed"
        );
    }

    #[test]
    fn a_contact_used_as_a_whole_can_read_anything() {
        for body in [
            "helper(c)",
            "let k = \"plan\"; c[k] == \"pro\"",
            "c.to_string().len() > 0",
        ] {
            let src = format!("segment(\"s\");\nfn helper(x) {{ x.plan == \"pro\" }}\nfn matches(c) {{\n{body}\n}}\n");
            let engine = crate::build_engine(&Limits::default());
            let (loaded, diags) = check_segment(&engine, "s.rhai", &src, None);
            assert!(diags.is_empty(), "{body}: {diags:?}");
            let d = loaded.expect("loads").deps;
            assert_eq!(d.attributes, None, "{body}");
            assert!(d.reads_any(&["score"]), "{body}");
            assert!(d.reads_segment("any"), "{body}");
        }
    }

    #[test]
    fn a_computed_in_segment_name_depends_on_every_segment() {
        let d = deps(r#"in_segment(c.tier)"#);
        assert!(d.reads_segment("gold") && d.reads_segment("silver"));
        assert!(d.reads_any(&["tier"]));
    }

    #[test]
    fn reading_memberships_through_the_contact_depends_on_every_segment() {
        let d = deps(r#"c.segments.contains("vip") || c.score >= 50"#);
        assert_eq!(d.attributes, set(&["score", "segments"]));
        assert!(d.reads_segment("vip"));
        assert!(d.reads_any(&["score"]));
    }
}
