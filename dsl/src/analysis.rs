//! Static analysis of workflow scripts: compile errors with ranges, the declaration, and lints
//! that need the project (channels, templates, workflows).
//!
//! Codes:
//!
//! | code | meaning |
//! |------|---------|
//! | H001 | syntax error |
//! | H002 | unknown channel |
//! | H003 | unknown template |
//! | H004 | unknown workflow in a trigger |
//! | H005 | wrong number of arguments for a DSL function |
//! | H006 | wrong argument type for a DSL function |
//! | H007 | workflow declaration missing or repeated |
//! | H008 | `fn run(contact, trigger)` missing |
//! | H009 | error while evaluating the script's top level |
//! | H010 | unknown operation of a channel |
//! | H030 | broadcast declaration missing or repeated, or a workflow in `broadcasts/` |
//! | H031 | a broadcast's message is incomplete or contradictory |
//! | H032 | a workflow's or broadcast's name has a character reports key numbers by (`:`, `@`) or a control character |
//! | H033 | a step label that is not 1 to 64 letters, digits, `_`, `-` or `.` |

use std::collections::{BTreeMap, BTreeSet};

use rhai::{ASTNode, Dynamic, Engine, EvalAltResult, Expr, Position, Scope, AST};

use crate::api::{self, ArgType};
use crate::decl::{collect_declarations, Declared, Trigger, WorkflowDecl};
use crate::diagnostic::{line_col_to_offset, token_range, Diagnostic};

/// What a script may refer to in its project.
#[derive(Debug, Clone, Default)]
pub struct ProjectContext {
    /// Channel name → operations it supports for `action` (empty: not known, any accepted).
    pub channels: BTreeMap<String, Vec<String>>,
    /// Template names as `send` refers to them: `welcome` for `templates/welcome.liquid`, and
    /// `welcome.sms` for the channel-specific `templates/welcome.sms.liquid`.
    pub templates: BTreeSet<String>,
    /// Names of every workflow in the project.
    pub workflows: BTreeSet<String>,
    /// Names of every segment in the project.
    pub segments: BTreeSet<String>,
    /// Lifecycle stages from `scoring.rhai` (empty when there is no scoring).
    pub stages: BTreeSet<String>,
}

/// A compiled workflow script and what it declares.
#[derive(Debug, Clone)]
pub struct LoadedWorkflow {
    /// The declaration from the top level.
    pub decl: WorkflowDecl,
    /// The compiled script, with imported stdlib modules embedded.
    pub ast: AST,
    /// Event names this script may `wait_for`; `None` when one is computed at run time
    /// (then any event may be awaited).
    pub waited_events: Option<BTreeSet<String>>,
}

impl LoadedWorkflow {
    /// Every event name that can matter to runs of this script (triggers, goal, waits);
    /// `None` means any event can.
    pub fn interesting_events(&self) -> Option<BTreeSet<String>> {
        let mut names = self.waited_events.clone()?;
        for t in &self.decl.triggers {
            if let Trigger::Event { name, .. } = t {
                names.insert(name.clone());
            }
        }
        if let Some(g) = &self.decl.goal {
            names.insert(g.event.clone());
        }
        Some(names)
    }
}

/// Literal event names passed to `wait_for`, or `None` if any call computes its event name.
pub fn waited_events(ast: &AST) -> Option<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let mut dynamic = false;
    ast.walk(&mut |path: &[ASTNode]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _))) => call,
            Some(ASTNode::Stmt(rhai::Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        if call.name.as_str() == "wait_for" && call.namespace.is_empty() {
            match call.args.first() {
                Some(Expr::StringConstant(s, _)) => {
                    names.insert(s.to_string());
                }
                _ => dynamic = true,
            }
        }
        true
    });
    (!dynamic).then_some(names)
}

/// Everything `herald check` knows about one script.
#[derive(Debug, Clone)]
pub struct ScriptReport {
    /// The workflow, when the script compiled and declared one.
    pub workflow: Option<LoadedWorkflow>,
    /// Errors and warnings, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl ScriptReport {
    /// True when any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Compile a workflow script and read its declaration, reporting only what stops it loading.
pub fn load_workflow(
    engine: &Engine,
    file: &str,
    source: &str,
) -> Result<LoadedWorkflow, Vec<Diagnostic>> {
    let report = check_script(engine, file, source, None);
    match report.workflow {
        Some(w) if !report.has_errors() => Ok(w),
        _ => Err(report
            .diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .collect()),
    }
}

/// Compile a script (imports embedded) and run its top level to collect what it declares.
/// A compile error is `Err` (H001); an error while running the top level comes back as the
/// third element (H009) alongside whatever was declared before it.
pub(crate) fn compile_and_declare(
    engine: &Engine,
    file: &str,
    source: &str,
) -> Result<(AST, Declared, Option<Diagnostic>), Box<Diagnostic>> {
    let ast = engine
        .compile_into_self_contained(&Scope::new(), source)
        .map_err(|e| Box::new(error_diagnostic("H001", file, source, &e)))?;
    let (result, declared) = collect_declarations(|| engine.run_ast(&ast));
    let load_error = result
        .err()
        .map(|e| error_diagnostic("H009", file, source, &e));
    Ok((ast, declared, load_error))
}

/// Check one workflow script. With a [`ProjectContext`], also lint references to channels,
/// templates and workflows.
pub fn check_script(
    engine: &Engine,
    file: &str,
    source: &str,
    project: Option<&ProjectContext>,
) -> ScriptReport {
    let mut diagnostics = Vec::new();
    let (ast, declared, load_error) = match compile_and_declare(engine, file, source) {
        Ok(loaded) => loaded,
        Err(d) => {
            diagnostics.push(*d);
            return ScriptReport {
                workflow: None,
                diagnostics,
            };
        }
    };

    lint_calls(&ast, file, source, project, &mut diagnostics);

    let decls = declared.workflows;
    if let Some(d) = load_error {
        // A call already reported by a lint fails again when evaluated: say it once.
        if !diagnostics.iter().any(|x| x.range.start == d.range.start) {
            diagnostics.push(d);
        }
    }

    let mut workflow = None;
    match decls.len() {
        0 => diagnostics.push(
            Diagnostic::error("H007", file, 0..0, "this script declares no workflow")
                .with_label("expected `workflow(\"name\")` at the top level")
                .with_help(
                    "start the file with `workflow(\"my_workflow\").on_event(\"signed_up\");`",
                ),
        ),
        _ => {
            for extra in &decls[1..] {
                let range = line_range(source, extra.line);
                diagnostics.push(
                    Diagnostic::error(
                        "H007",
                        file,
                        range,
                        format!(
                            "a second workflow \"{}\" is declared in this file",
                            extra.name
                        ),
                    )
                    .with_label("only one `workflow(...)` per file")
                    .with_help("move each workflow into its own file under workflows/"),
                );
            }
            let decl = decls[0].clone();
            diagnostics.extend(name_problem("workflow", &decl, file, source));
            if let Some(project) = project {
                lint_triggers(&decl, file, source, project, &mut diagnostics);
            }
            workflow = Some(LoadedWorkflow {
                decl,
                waited_events: waited_events(&ast),
                ast: ast.clone(),
            });
        }
    }

    let has_run = ast.iter_functions().any(|f| f.name == "run");
    if !has_run {
        diagnostics.push(
            Diagnostic::error(
                "H008",
                file,
                0..0,
                "this workflow has no `fn run(contact, trigger)`",
            )
            .with_label("the journey starts in `fn run`")
            .with_help("add `fn run(contact, trigger) { ... }` with the workflow's steps"),
        );
    } else if let Some(f) = ast
        .iter_functions()
        .find(|f| f.name == "run" && f.params.len() != 2)
    {
        diagnostics.push(
            Diagnostic::error(
                "H008",
                file,
                fn_declaration_range(source, "run"),
                format!(
                    "`fn run` takes (contact, trigger), not {} parameter(s)",
                    f.params.len()
                ),
            )
            .with_label("declared here")
            .with_help("write `fn run(contact, trigger) { ... }`"),
        );
    }

    diagnostics.sort_by_key(|d| (d.range.start, d.code));
    diagnostics.dedup();
    ScriptReport {
        workflow: workflow.filter(|_| has_run),
        diagnostics,
    }
}

/// What [`check_broadcast`] found.
#[derive(Debug)]
pub struct BroadcastReport {
    /// The broadcast as a workflow (its declaration carries the [`BroadcastSpec`]), when it
    /// loads.
    ///
    /// [`BroadcastSpec`]: crate::decl::BroadcastSpec
    pub workflow: Option<LoadedWorkflow>,
    /// The source the runtime stores and replays: the file, plus the generated
    /// `fn run(contact, trigger)` when the file defines none.
    pub source: String,
    /// Every finding, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

/// Check one broadcast file (`broadcasts/NAME.rhai`). A broadcast without its own
/// `fn run(contact, trigger)` sends its template (or one of its arms) on its channel: that
/// function is generated from the declaration and appended to the source the runtime runs.
pub fn check_broadcast(
    engine: &Engine,
    file: &str,
    source: &str,
    project: Option<&ProjectContext>,
) -> BroadcastReport {
    let fail = |diagnostics: Vec<Diagnostic>| BroadcastReport {
        workflow: None,
        source: source.to_string(),
        diagnostics,
    };
    let (ast, declared, load_error) = match compile_and_declare(engine, file, source) {
        Ok(loaded) => loaded,
        Err(d) => return fail(vec![*d]),
    };
    if let Some(d) = load_error {
        let mut diagnostics = Vec::new();
        lint_calls(&ast, file, source, project, &mut diagnostics);
        if !diagnostics.iter().any(|x| x.range.start == d.range.start) {
            diagnostics.push(d);
        }
        return fail(diagnostics);
    }
    let mut diagnostics = Vec::new();
    for w in declared.workflows.iter().filter(|w| w.broadcast.is_none()) {
        diagnostics.push(
            Diagnostic::error(
                "H030",
                file,
                line_range(source, w.line),
                format!("workflow \"{}\" is declared in broadcasts/", w.name),
            )
            .with_label("not a broadcast")
            .with_help(
                "workflows live in workflows/; a broadcast file starts with `broadcast(\"name\")`",
            ),
        );
    }
    let broadcasts: Vec<&WorkflowDecl> = declared
        .workflows
        .iter()
        .filter(|w| w.broadcast.is_some())
        .collect();
    let Some(decl) = broadcasts.first().copied() else {
        diagnostics.push(
            Diagnostic::error("H030", file, 0..0, "this file declares no broadcast")
                .with_label("expected `broadcast(\"name\")` at the top level")
                .with_help(
                    "start the file with `broadcast(\"spring_sale\").audience(\"newsletter\").channel(\"email\").template(\"spring\").topic(\"newsletter\");`",
                ),
        );
        return fail(diagnostics);
    };
    diagnostics.extend(name_problem("broadcast", decl, file, source));
    for extra in &broadcasts[1..] {
        diagnostics.push(
            Diagnostic::error(
                "H030",
                file,
                line_range(source, extra.line),
                format!(
                    "a second broadcast \"{}\" is declared in this file",
                    extra.name
                ),
            )
            .with_label("only one `broadcast(...)` per file"),
        );
    }
    let mut decl = decl.clone();
    let at = line_range(source, decl.line);
    let has_run = ast.iter_functions().any(|f| f.name == "run");
    let spec = decl.broadcast.get_or_insert_with(Default::default);
    spec.custom_run = has_run;
    let mut incomplete = |message: String, help: &str| {
        diagnostics.push(
            Diagnostic::error("H031", file, at.clone(), message)
                .with_label("this broadcast")
                .with_help(help.to_string()),
        );
    };
    if spec.topic.is_none() {
        incomplete(
            format!("broadcast \"{}\" names no topic", decl.name),
            "add `.topic(\"newsletter\")`: the subscription topic recipients can leave",
        );
    }
    if !decl.triggers.is_empty() {
        incomplete(
            "a broadcast has no triggers: it starts when it is scheduled".into(),
            "remove `.on_event(...)`; start it with `herald broadcast schedule NAME`",
        );
    }
    match (spec.test_share, &spec.winner) {
        (Some(_), None) => incomplete(
            "`.test_share(...)` needs `.winner(...)`: how the test is decided".into(),
            "add `.winner(\"clicked\", hours(4))`",
        ),
        (None, Some(_)) => incomplete(
            "`.winner(...)` needs `.test_share(...)`: the share of the audience that tests the arms".into(),
            "add `.test_share(20)`",
        ),
        (Some(_), Some(rule)) => {
            if spec.arms.is_empty() || has_run {
                incomplete(
                    "an A/B test needs `.arms(...)` and the generated send (no `fn run`)".into(),
                    "declare `.arms(#{ a: \"template_a\", b: \"template_b\" })` and remove `fn run`",
                );
            }
            if rule.metric == "converted" && decl.goal.is_none() {
                incomplete(
                    "a test decided by \"converted\" needs the broadcast's `.goal(...)`".into(),
                    "add `.goal(\"order_completed\", days(3))`, or decide by \"clicked\"",
                );
            }
        }
        (None, None) => {}
    }
    let mut generated = String::new();
    if has_run {
        if matches!(spec.send_at, Some(crate::decl::SendAt::LocalTime { .. })) {
            incomplete(
                "`.send_at(\"HH:MM\")` needs the generated run: with your own `fn run`, call `wait_until(\"HH:MM\")` first in it".into(),
                "use an RFC 3339 instant in `.send_at(...)`, or remove `fn run`",
            );
        }
    } else {
        match (&spec.channel, &spec.template, spec.arms.is_empty()) {
            (None, _, _) => incomplete(
                format!("broadcast \"{}\" names no channel", decl.name),
                "add `.channel(\"email\")`, or write `fn run(contact, trigger)` with its steps",
            ),
            (Some(_), None, true) => incomplete(
                format!("broadcast \"{}\" names no template", decl.name),
                "add `.template(\"name\")` or `.arms(#{ a: \"template_a\", b: \"template_b\" })`",
            ),
            (Some(_), Some(_), false) => incomplete(
                "a broadcast sends either one template or arms, not both".into(),
                "remove `.template(...)` or `.arms(...)`",
            ),
            (Some(channel), _, _) => generated = generated_run(&decl.name, channel, spec),
        }
    }
    let full = format!("{source}{generated}");
    let report = check_script(engine, file, &full, project);
    // The generated function is Herald's: nothing in it is reported against the file.
    diagnostics.extend(report.diagnostics.into_iter().filter(|d| {
        d.range.start <= source.len()
                    && d.code != "H007"
                    // A missing `fn run` is the incomplete declaration reported above.
                    && (has_run || d.code != "H008")
    }));
    diagnostics.sort_by_key(|d| (d.range.start, d.code));
    diagnostics.dedup();
    let ok = !diagnostics.iter().any(Diagnostic::is_error);
    BroadcastReport {
        workflow: report.workflow.filter(|_| ok).map(|mut w| {
            w.decl = decl;
            w
        }),
        source: full,
        diagnostics,
    }
}

/// `fn run` of a broadcast that defines none: wait for the local send time when there is one,
/// pick the arm, send.
/// A workflow's or broadcast's name must not hold the characters its numbers are keyed by
/// (`workflow:NAME`, `version:NAME@…`, `variant:NAME:…`): two names would share counters.
fn name_problem(what: &str, decl: &WorkflowDecl, file: &str, source: &str) -> Option<Diagnostic> {
    let bad = decl
        .name
        .chars()
        .find(|c| matches!(c, ':' | '@') || c.is_control())?;
    let range = match source.find(&format!("\"{}\"", decl.name)) {
        Some(at) => at..at + decl.name.len() + 2,
        None => line_range(source, decl.line),
    };
    Some(
        Diagnostic::error(
            "H032",
            file,
            range,
            format!("{what} \"{}\" has {bad:?} in its name", decl.name),
        )
        .with_label("not allowed in a name")
        .with_help(
            "use letters, digits, `_`, `-` or `.`: reports key their numbers by `:` and `@`",
        ),
    )
}

fn generated_run(name: &str, channel: &str, spec: &crate::decl::BroadcastSpec) -> String {
    let lit = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut body = String::new();
    if let Some(crate::decl::SendAt::LocalTime { hour, minute }) = spec.send_at {
        body.push_str(&format!("    wait_until(\"{hour:02}:{minute:02}\");\n"));
    }
    match &spec.template {
        Some(t) => body.push_str(&format!("    send({}, {});\n", lit(channel), lit(t))),
        None => {
            let arms: Vec<String> = spec.arms.iter().map(|(a, _)| lit(a)).collect();
            let templates: Vec<String> = spec
                .arms
                .iter()
                .map(|(a, t)| format!("{}: {}", lit(a), lit(t)))
                .collect();
            // A tested broadcast's runs carry their arms' weights: even for the testers, the
            // winner's alone for the rest.
            let arms = match spec.test_share {
                Some(_) => "trigger.properties.arms".to_string(),
                None => format!("[{}]", arms.join(", ")),
            };
            body.push_str(&format!(
                "    let arm = variant({}, {arms});\n    let templates = #{{ {} }};\n    send({}, templates[arm]);\n",
                lit(name),
                templates.join(", "),
                lit(channel)
            ));
        }
    }
    format!("\n\n// Generated by Herald from the declaration above.\nfn run(contact, trigger) {{\n{body}}}\n")
}

/// The range from `fn` to the end of the name in the first declaration of function `name`
/// (`fn run`, `fn  run (`), or `0..0` when the source does not spell one out.
pub(crate) fn fn_declaration_range(source: &str, name: &str) -> std::ops::Range<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    for (at, _) in source.match_indices("fn") {
        if source[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let after_fn = &source[at + 2..];
        let rest = after_fn.trim_start();
        if rest.len() == after_fn.len() {
            continue;
        }
        let Some(after_name) = rest.strip_prefix(name) else {
            continue;
        };
        if after_name.trim_start().starts_with('(') {
            return at..source.len() - after_name.len();
        }
    }
    0..0
}

/// The range of `"name"` where the script spells it out as a string literal, else `fallback`
/// (a name computed while loading appears nowhere in the source).
pub(crate) fn quoted_range(
    source: &str,
    name: &str,
    fallback: std::ops::Range<usize>,
) -> std::ops::Range<usize> {
    let needle = format!("\"{name}\"");
    match source.find(&needle) {
        Some(start) => start..start + needle.len(),
        None => fallback,
    }
}

/// The byte range of a 1-based line, without its newline.
pub(crate) fn line_range(source: &str, line: usize) -> std::ops::Range<usize> {
    let start = line_col_to_offset(source, line.max(1), 1);
    let end = source[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(source.len());
    start..end
}

fn pos_range(source: &str, pos: Position) -> std::ops::Range<usize> {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => token_range(source, line_col_to_offset(source, l, c)),
        (Some(l), None) => line_range(source, l),
        _ => source.len()..source.len(),
    }
}

/// Turn a Rhai error (parse or evaluation) into a diagnostic with a range.
pub fn error_diagnostic(
    code: &'static str,
    file: &str,
    source: &str,
    err: &EvalAltResult,
) -> Diagnostic {
    let (message, pos) = describe_error(err);
    let range = pos_range(source, pos);
    let label = if code == "H001" {
        "here"
    } else {
        "raised here"
    };
    Diagnostic::error(code, file, range, message).with_label(label)
}

fn describe_error(err: &EvalAltResult) -> (String, Position) {
    match err {
        EvalAltResult::ErrorParsing(ty, pos) => (format!("syntax error: {ty}"), *pos),
        EvalAltResult::ErrorInFunctionCall(name, _, inner, pos) => {
            let (msg, p) = describe_error(inner);
            if p.is_none() {
                (format!("in `{name}`: {msg}"), *pos)
            } else {
                (msg, p)
            }
        }
        // `throw` with an empty (or blank) value still needs words.
        EvalAltResult::ErrorRuntime(v, pos) => match v.to_string() {
            m if m.trim().is_empty() => ("the script threw an error with no message".into(), *pos),
            m => (m, *pos),
        },
        EvalAltResult::ErrorTooManyOperations(pos) => (
            "the script exceeded its operation limit while loading (an endless loop?)".into(),
            *pos,
        ),
        other => {
            let text = other.to_string();
            let text = match text.rfind(" (line ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            (text, other.position())
        }
    }
}

/// The static type of a literal argument, if it is one.
fn literal_type(expr: &Expr) -> Option<&'static str> {
    Some(match expr {
        Expr::StringConstant(..) | Expr::InterpolatedString(..) => "string",
        Expr::IntegerConstant(..) => "int",
        Expr::FloatConstant(..) => "float",
        Expr::BoolConstant(..) => "bool",
        Expr::Map(..) => "map",
        Expr::Array(..) => "array",
        Expr::Unit(..) => "()",
        Expr::CharConstant(..) => "char",
        Expr::DynamicConstant(v, _) => dynamic_type(v)?,
        _ => return None,
    })
}

fn dynamic_type(v: &Dynamic) -> Option<&'static str> {
    Some(if v.is_map() {
        "map"
    } else if v.is_array() {
        "array"
    } else if v.is_string() {
        "string"
    } else if v.is_int() {
        "int"
    } else if v.is_float() {
        "float"
    } else if v.is_bool() {
        "bool"
    } else {
        return None;
    })
}

fn accepts(ty: ArgType, literal: &str) -> bool {
    match ty {
        ArgType::Any => true,
        ArgType::String => literal == "string",
        ArgType::Int => literal == "int",
        ArgType::Number => literal == "int" || literal == "float",
        ArgType::Map => literal == "map",
        ArgType::Array => literal == "array",
        ArgType::Instant => literal == "int" || literal == "string",
        ArgType::Arms => literal == "array" || literal == "map",
    }
}

fn lint_calls(
    ast: &AST,
    file: &str,
    source: &str,
    project: Option<&ProjectContext>,
    out: &mut Vec<Diagnostic>,
) {
    let user_fns: BTreeSet<(String, usize)> = ast
        .iter_functions()
        .map(|f| (f.name.to_string(), f.params.len()))
        .collect();
    ast.walk(&mut |path: &[ASTNode]| {
        let (call, pos, method) = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, pos))) => (call, *pos, false),
            Some(ASTNode::Expr(Expr::MethodCall(call, pos))) => (call, *pos, true),
            Some(ASTNode::Stmt(rhai::Stmt::FnCall(call, pos))) => (call, *pos, false),
            _ => return true,
        };
        if call.is_operator_call() || !call.namespace.is_empty() {
            return true;
        }
        let name = call.name.as_str();
        let Some(f) = api::lookup(name) else {
            return true;
        };
        if f.method != method || user_fns.contains(&(name.to_string(), call.args.len())) {
            return true;
        }
        let args: Vec<&Expr> = call.args.iter().collect();
        let name_range = pos_range(source, pos);
        if !f.arities().contains(&args.len()) {
            let sigs = f.signatures().join("\n      ");
            out.push(
                Diagnostic::error(
                    "H005",
                    file,
                    name_range,
                    format!(
                        "`{name}` takes {} argument(s), but {} were given",
                        join_arities(&f.arities()),
                        args.len()
                    ),
                )
                .with_label(format!("called with {} argument(s)", args.len()))
                .with_help(format!("expected {sigs}")),
            );
            return true;
        }
        // Type check literals against every overload of this arity; report when none fits.
        let overloads: Vec<_> = f
            .overloads
            .iter()
            .filter(|o| o.len() == args.len())
            .collect();
        for (i, arg) in args.iter().enumerate() {
            let Some(lit) = literal_type(arg) else {
                continue;
            };
            if !overloads.iter().any(|o| accepts(o[i].1, lit)) {
                let (pname, pty) = overloads[0][i];
                out.push(
                    Diagnostic::error(
                        "H006",
                        file,
                        pos_range(source, arg.position()),
                        format!(
                            "argument `{pname}` of `{name}` must be {}, found {lit}",
                            pty.label()
                        ),
                    )
                    .with_label(format!("this is {lit}"))
                    .with_help(format!("expected {}", f.signatures().join(" or "))),
                );
            }
        }
        if name == "label" {
            if let Some(Expr::StringConstant(label, lpos)) = args.first() {
                if let Some(problem) = crate::host::label_problem(label) {
                    out.push(
                        Diagnostic::error("H033", file, pos_range(source, *lpos), problem)
                            .with_label("not a step label")
                            .with_help("reports key a step's numbers by its label"),
                    );
                }
            }
        }
        if let Some(project) = project {
            lint_references(name, &args, file, source, project, out);
        }
        true
    });
}

fn join_arities(a: &[usize]) -> String {
    let parts: Vec<String> = a.iter().map(|n| n.to_string()).collect();
    parts.join(" or ")
}

fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a String>) -> Option<&'a String> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn lint_references(
    name: &str,
    args: &[&Expr],
    file: &str,
    source: &str,
    project: &ProjectContext,
    out: &mut Vec<Diagnostic>,
) {
    if name != "send" && name != "action" {
        return;
    }
    let Some(Expr::StringConstant(channel, cpos)) = args.first() else {
        return;
    };
    let Some(operations) = project.channels.get(channel.as_str()) else {
        let mut d = Diagnostic::error(
            "H002",
            file,
            pos_range(source, *cpos),
            format!("unknown channel \"{channel}\""),
        )
        .with_label("no channel of this name in herald.toml");
        let known: Vec<&String> = project.channels.keys().collect();
        d = match closest(channel, project.channels.keys()) {
            Some(c) => d.with_help(format!("did you mean \"{c}\"?")),
            None if known.is_empty() => {
                d.with_help("declare channels under [channels.<name>] in herald.toml")
            }
            None => d.with_help(format!(
                "channels in herald.toml: {}",
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        out.push(d);
        return;
    };
    match (name, args.get(1)) {
        ("send", Some(Expr::StringConstant(template, tpos))) => {
            let specific = format!("{template}.{channel}");
            if !project.templates.contains(template.as_str())
                && !project.templates.contains(&specific)
            {
                let mut d = Diagnostic::error(
                    "H003",
                    file,
                    pos_range(source, *tpos),
                    format!("unknown template \"{template}\""),
                )
                .with_label(format!(
                    "no templates/{template}.liquid or templates/{specific}.liquid"
                ));
                if let Some(c) = closest(template, project.templates.iter()) {
                    d = d.with_help(format!("did you mean \"{c}\"?"));
                }
                out.push(d);
            }
        }
        ("action", Some(Expr::StringConstant(op, opos)))
            if !operations.is_empty() && !operations.iter().any(|o| o == op.as_str()) =>
        {
            out.push(
                Diagnostic::error(
                    "H010",
                    file,
                    pos_range(source, *opos),
                    format!("channel \"{channel}\" has no operation \"{op}\""),
                )
                .with_label("unknown operation")
                .with_help(format!(
                    "operations of \"{channel}\": {}",
                    operations.join(", ")
                )),
            );
        }
        _ => {}
    }
}

fn lint_triggers(
    decl: &WorkflowDecl,
    file: &str,
    source: &str,
    project: &ProjectContext,
    out: &mut Vec<Diagnostic>,
) {
    for t in &decl.triggers {
        let (kind, name, known, code) = match t {
            Trigger::SegmentEntered { segment } | Trigger::SegmentExited { segment } => {
                ("segment", segment, &project.segments, "H013")
            }
            Trigger::StageChanged { stage } => ("stage", stage, &project.stages, "H016"),
            _ => ("", &String::new(), &project.segments, ""),
        };
        if !kind.is_empty() && !known.contains(name) {
            let mut d = Diagnostic::error(
                code,
                file,
                quoted_range(source, name, line_range(source, decl.line)),
                format!("unknown {kind} \"{name}\" in a trigger"),
            );
            d = match closest(name, known.iter()) {
                Some(c) => d.with_help(format!("did you mean \"{c}\"?")),
                None if kind == "segment" => d.with_label("no segments/*.rhai declares it"),
                None => d.with_label("scoring.rhai declares no such stage"),
            };
            out.push(d);
        }
        if let Trigger::WorkflowCompleted { workflow } = t {
            if !project.workflows.contains(workflow) {
                let mut d = Diagnostic::error(
                    "H004",
                    file,
                    quoted_range(source, workflow, line_range(source, decl.line)),
                    format!("unknown workflow \"{workflow}\" in a trigger"),
                )
                .with_label("no workflow of this name in the project");
                if let Some(c) = closest(workflow, project.workflows.iter()) {
                    d = d.with_help(format!("did you mean \"{c}\"?"));
                }
                out.push(d);
            }
        }
    }
}
