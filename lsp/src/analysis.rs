//! Editor features over one document: diagnostics, completion, hover, signature help, go to
//! definition and document symbols. Everything here is a pure function of the text, a cursor
//! offset and a [`ProjectSnapshot`], so it is tested and benchmarked without a client.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use herald_dsl::api::{Context, DslFunction, DSL_FUNCTIONS};
use herald_dsl::{Diagnostic as HeraldDiagnostic, Severity};
use tower_lsp::lsp_types::{
    CompletionItem, CompletionItemKind, CompletionTextEdit, Diagnostic, DiagnosticSeverity,
    DocumentSymbol, Documentation, Hover, HoverContents, MarkupContent, MarkupKind, NumberOrString,
    ParameterInformation, ParameterLabel, Position, Range as LspRange, SignatureHelp,
    SignatureInformation, SymbolKind, TextEdit,
};

use crate::lexer::{lex, Kind, Token};
use crate::outline::{outline, FnInfo, Outline};
use crate::project::{ProjectSnapshot, Role};
use crate::stdlib;
use crate::text::{line_starts, offset_to_position_with, range_of};

/// Run `f`, turning a panic into `None`: a bug in analysis must never take the server down.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Rhai keywords offered by completion.
const KEYWORDS: &[&str] = &[
    "let", "const", "if", "else", "switch", "while", "loop", "for", "in", "do", "until", "break",
    "continue", "return", "throw", "try", "catch", "fn", "private", "import", "as", "true",
    "false",
];

/// Fields of the `trigger` map passed to `fn run`.
const TRIGGER_FIELDS: &[(&str, &str)] = &[
    (
        "event",
        "The event name that started the run (`manual` for manual runs).",
    ),
    ("properties", "The triggering event's properties, a map."),
    (
        "timestamp",
        "When the triggering event happened, in milliseconds since the epoch.",
    ),
    (
        "type",
        "`track`, `identify`, `page`, `screen`, `group`, `manual` or `workflow_completed`.",
    ),
];

/// Check a document as `herald check` would and convert the findings to LSP diagnostics.
///
/// A file of a project gets exactly the project checker's findings for it
/// ([`ProjectSnapshot::findings`], from [`crate::project::Workspace::project_findings`]). A
/// document on its own (outside any project, or a script the project does not load) gets
/// [`herald_dsl::check_script`] without a project context when it is a workflow, the segment
/// or scoring checks, a syntax check for other scripts, and the daemon's Liquid compilation
/// for a template.
pub fn diagnostics(
    engine: &rhai::Engine,
    path: &Path,
    role: Role,
    text: &str,
    project: &ProjectSnapshot,
    template_error: impl FnOnce(&str) -> Option<String>,
) -> Vec<Diagnostic> {
    if let Some(found) = &project.findings {
        return to_lsp(text, found);
    }
    let file = display_path(path, project);
    let mut found: Vec<HeraldDiagnostic> = Vec::new();
    match role {
        Role::Workflow => {
            found = herald_dsl::check_script(engine, &file, text, None).diagnostics;
        }
        Role::OtherScript => {
            let in_segments = path
                .parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n == "segments");
            let is_scoring = path.file_name().is_some_and(|n| n == "scoring.rhai");
            if in_segments {
                // The same checks as `herald check` (without the project's segment names).
                found = herald_dsl::check_segment(engine, &file, text, None).1;
            } else if is_scoring {
                found = herald_dsl::check_scoring(engine, &file, text).1;
            } else if let Err(err) = engine.compile_into_self_contained(&rhai::Scope::new(), text) {
                found.push(herald_dsl::analysis::error_diagnostic(
                    "H001", &file, text, &err,
                ));
            }
        }
        Role::Template => {
            if let Some(message) = template_error(text) {
                let end = text.find('\n').unwrap_or(text.len());
                found.push(
                    HeraldDiagnostic::error("L001", &file, 0..end, message)
                        .with_label("this template does not compile"),
                );
            }
        }
        Role::Other => {}
    }
    to_lsp(text, &found)
}

fn display_path(path: &Path, project: &ProjectSnapshot) -> String {
    project
        .root
        .as_ref()
        .and_then(|r| path.strip_prefix(r).ok())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Convert Herald diagnostics (byte ranges) to LSP diagnostics (UTF-16 positions). The label
/// and help follow the message on their own lines.
pub fn to_lsp(text: &str, found: &[HeraldDiagnostic]) -> Vec<Diagnostic> {
    let starts = line_starts(text);
    found
        .iter()
        .map(|d| {
            let start = d.range.start.min(text.len());
            let end = d.range.end.clamp(start, text.len());
            let range = LspRange::new(
                offset_to_position_with(text, &starts, start),
                offset_to_position_with(text, &starts, end),
            );
            let mut message = d.message.clone();
            if !d.label.is_empty()
                && d.label != d.message
                && d.label != "here"
                && d.label != "raised here"
            {
                message.push_str(&format!("\n{}", d.label));
            }
            if let Some(help) = &d.help {
                message.push_str(&format!("\nhelp: {help}"));
            }
            Diagnostic {
                range,
                severity: Some(match d.severity {
                    Severity::Error => DiagnosticSeverity::ERROR,
                    Severity::Warning => DiagnosticSeverity::WARNING,
                }),
                code: Some(NumberOrString::String(d.code.to_string())),
                source: Some("herald".into()),
                message,
                ..Diagnostic::default()
            }
        })
        .collect()
}

/// A document prepared for cursor queries.
pub struct Doc<'a> {
    /// The text.
    pub text: &'a str,
    /// Every token, comments included.
    pub all: Vec<Token>,
    /// Tokens without comments.
    pub code: Vec<Token>,
    /// Functions, imports and the declaration.
    pub outline: Outline,
}

/// Where the cursor is.
enum Spot {
    /// In a comment: nothing to offer.
    Comment,
    /// Inside string literal `code[i]`.
    Str(usize),
    /// After tokens `code[..i]`, typing the word `prefix` (possibly empty).
    Code { before: usize, word: Range<usize> },
}

/// The call whose argument list contains the cursor.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    name_range: Range<usize>,
    receiver: Receiver,
    arg: usize,
    /// Index of the opening parenthesis in `code`.
    open: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Receiver {
    None,
    Method,
    Module(String),
}

impl<'a> Doc<'a> {
    /// Lex and outline `text`.
    pub fn new(text: &'a str) -> Self {
        let all = lex(text);
        let code = all.iter().copied().filter(|t| !t.is_comment()).collect();
        Doc {
            text,
            all,
            code,
            outline: outline(text),
        }
    }

    fn spot(&self, offset: usize) -> Spot {
        // Inside a comment: a line comment includes its end (the cursor before the newline),
        // a block comment does not (the cursor after `*/`).
        let in_comment = self.all.iter().any(|t| {
            t.is_comment()
                && t.start < offset
                && (offset < t.end || (offset == t.end && t.text(self.text).starts_with("//")))
        });
        if in_comment {
            return Spot::Comment;
        }
        let before = self.code.partition_point(|t| t.end <= offset);
        if let Some(t) = self.code.get(before) {
            if t.is_str() && t.start < offset {
                return Spot::Str(before);
            }
            if t.kind == Kind::Ident && t.start < offset {
                return Spot::Code {
                    before,
                    word: t.start..offset,
                };
            }
        }
        if before > 0 {
            let t = self.code[before - 1];
            if t.end == offset {
                if t.kind == Kind::Ident {
                    return Spot::Code {
                        before: before - 1,
                        word: t.start..offset,
                    };
                }
                if matches!(t.kind, Kind::Str { closed: false }) {
                    return Spot::Str(before - 1);
                }
            }
        }
        Spot::Code {
            before,
            word: offset..offset,
        }
    }

    /// The call around `code[..before]`.
    fn call_before(&self, before: usize) -> Option<Call> {
        let src = self.text;
        let mut depth = 0usize;
        let mut arg = 0;
        let mut j = before;
        while j > 0 {
            j -= 1;
            let t = self.code[j];
            if t.kind != Kind::Punct {
                continue;
            }
            match t.text(src) {
                ")" | "]" | "}" => depth += 1,
                "(" if depth == 0 => {
                    let name = self.code[..j].last().filter(|n| n.kind == Kind::Ident)?;
                    let word = name.text(src);
                    if KEYWORDS.contains(&word) {
                        return None;
                    }
                    let k = j - 1;
                    if k > 0 && self.code[k - 1].is_ident(src, "fn") {
                        return None;
                    }
                    let receiver = if k > 0 && self.code[k - 1].is(src, ".") {
                        Receiver::Method
                    } else if k > 1
                        && self.code[k - 1].is(src, "::")
                        && self.code[k - 2].kind == Kind::Ident
                    {
                        Receiver::Module(self.code[k - 2].text(src).to_string())
                    } else {
                        Receiver::None
                    };
                    return Some(Call {
                        name: word.to_string(),
                        name_range: name.range(),
                        receiver,
                        arg,
                        open: j,
                    });
                }
                "(" | "[" | "{" | "#{" if depth > 0 => depth -= 1,
                "[" | "{" | "#{" | ";" if depth == 0 => return None,
                "," if depth == 0 => arg += 1,
                _ => {}
            }
        }
        None
    }

    /// The string literal argument `n` of the call opened at `open`, if it is one.
    fn literal_arg(&self, open: usize, n: usize) -> Option<String> {
        let mut depth = 0usize;
        let mut arg = 0;
        for (k, t) in self.code.iter().enumerate().skip(open + 1) {
            if t.kind == Kind::Punct {
                match t.text(self.text) {
                    "(" | "[" | "{" | "#{" => depth += 1,
                    ")" | "]" | "}" if depth == 0 => return None,
                    ")" | "]" | "}" => depth -= 1,
                    "," if depth == 0 => arg += 1,
                    _ => {}
                }
                continue;
            }
            if depth == 0 && arg == n && t.is_str() {
                let next_ok = self
                    .code
                    .get(k + 1)
                    .is_none_or(|x| x.is(self.text, ",") || x.is(self.text, ")"));
                return next_ok.then(|| t.str_value(self.text).to_string());
            }
        }
        None
    }

    /// The type of the declaration chain ending just before `code[dot]`: the return type of the
    /// DSL function that starts it (`Workflow` for `workflow("x").on_event("y")`).
    fn chain_type(&self, dot: usize) -> Option<&'static str> {
        let src = self.text;
        let mut depth = 0usize;
        let mut j = dot;
        while j > 0 {
            j -= 1;
            let t = self.code[j];
            if t.kind == Kind::Punct {
                match t.text(src) {
                    ")" | "]" | "}" => depth += 1,
                    "(" | "[" | "{" | "#{" => {
                        if depth == 0 {
                            return None;
                        }
                        depth -= 1
                    }
                    ";" if depth == 0 => return None,
                    _ => {}
                }
            } else if depth == 0 && t.kind == Kind::Ident {
                let chained = j > 0 && {
                    let p = self.code[j - 1];
                    p.is(src, ".") || p.is(src, "::") || p.is(src, "?.")
                };
                if !chained {
                    let f = free_fn(t.text(src))?;
                    return DSL_FUNCTIONS
                        .iter()
                        .any(|m| m.method && m.returns == f.returns)
                        .then_some(f.returns);
                }
            }
        }
        None
    }

    fn user_fn(&self, name: &str) -> Option<&FnInfo> {
        self.outline.functions.iter().find(|f| f.name == name)
    }

    /// Names in scope at `offset`: parameters of the enclosing function and `let`/`const`
    /// names declared before the cursor in that function (or at the top level).
    fn locals(&self, offset: usize) -> Vec<String> {
        let scope = self.outline.function_at(offset);
        let mut out: Vec<String> = scope.map(|f| f.params.clone()).unwrap_or_default();
        let (from, to) = match scope {
            Some(f) => (f.body.start, offset),
            None => (0, offset),
        };
        for w in self.code.windows(2) {
            if w[0].start < from || w[1].end > to {
                continue;
            }
            if (w[0].is_ident(self.text, "let") || w[0].is_ident(self.text, "const"))
                && w[1].kind == Kind::Ident
            {
                let in_other_fn = scope.is_none() && self.outline.function_at(w[0].start).is_some();
                if !in_other_fn {
                    out.push(w[1].text(self.text).to_string());
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A DSL function called as a free function.
pub fn free_fn(name: &str) -> Option<&'static DslFunction> {
    DSL_FUNCTIONS.iter().find(|f| !f.method && f.name == name)
}

/// A DSL declaration method of the chain type `on` (`Workflow`).
pub fn method_fn(name: &str, on: &str) -> Option<&'static DslFunction> {
    DSL_FUNCTIONS
        .iter()
        .find(|f| f.method && f.name == name && f.returns == on)
}

fn markdown(value: String) -> Documentation {
    Documentation::MarkupContent(MarkupContent {
        kind: MarkupKind::Markdown,
        value,
    })
}

fn context_note(f: &DslFunction) -> &'static str {
    match f.context {
        Context::Declaration if f.method => "Declaration method: chain it on `workflow(...)`.",
        Context::Declaration => "Declaration: call it at the top level of the script.",
        Context::Step => "Workflow step: call it inside `fn run(contact, trigger)`; journaled.",
        Context::Pure => "Pure helper: callable anywhere.",
        #[allow(unreachable_patterns)] // the DSL grows new contexts
        _ => "Callable inside functions.",
    }
}

/// Markdown documentation of a DSL function: signatures, docs and where it may be called.
pub fn dsl_doc(f: &DslFunction) -> String {
    format!(
        "```rhai\n{}\n```\n\n{}\n\n*{}*",
        f.signatures().join("\n"),
        f.doc,
        context_note(f)
    )
}

fn fn_doc(f: &FnInfo, module: Option<&str>) -> String {
    let sig = match module {
        Some(m) => format!("fn {m}::{}({})", f.name, f.params.join(", ")),
        None => f.signature(),
    };
    if f.doc.is_empty() {
        format!("```rhai\n{sig}\n```")
    } else {
        format!("```rhai\n{sig}\n```\n\n{}", f.doc)
    }
}

fn module_doc(m: &stdlib::ModuleInfo) -> String {
    let fns: Vec<String> = m
        .functions
        .iter()
        .map(|f| format!("- `{}({})`", f.name, f.params.join(", ")))
        .collect();
    format!(
        "```rhai\nimport \"{}\"\n```\n\n{}\n\n{}",
        m.import_path(),
        m.module.doc,
        fns.join("\n")
    )
}

fn item(label: &str, kind: CompletionItemKind) -> CompletionItem {
    CompletionItem {
        label: label.to_string(),
        kind: Some(kind),
        ..CompletionItem::default()
    }
}

/// Completion items at `offset`.
pub fn completion(doc: &Doc<'_>, offset: usize, project: &ProjectSnapshot) -> Vec<CompletionItem> {
    match doc.spot(offset) {
        Spot::Comment => Vec::new(),
        Spot::Str(i) => string_completion(doc, i, offset, project),
        Spot::Code { before, word } => code_completion(doc, before, word, offset, project),
    }
}

fn string_completion(
    doc: &Doc<'_>,
    i: usize,
    offset: usize,
    project: &ProjectSnapshot,
) -> Vec<CompletionItem> {
    let src = doc.text;
    let tok = doc.code[i];
    let content = tok.str_content(src);
    if offset < content.start || offset > content.end {
        return Vec::new();
    }
    let edit_range = range_of(src, content.clone());
    let with_edit = |mut it: CompletionItem| {
        it.text_edit = Some(CompletionTextEdit::Edit(TextEdit::new(
            edit_range,
            it.label.clone(),
        )));
        it
    };
    if i > 0 && doc.code[i - 1].is_ident(src, "import") {
        return stdlib::modules()
            .iter()
            .map(|m| {
                with_edit(CompletionItem {
                    detail: Some(m.module.doc.to_string()),
                    documentation: Some(markdown(module_doc(m))),
                    ..item(&m.import_path(), CompletionItemKind::MODULE)
                })
            })
            .collect();
    }
    let Some(call) = doc.call_before(i) else {
        return Vec::new();
    };
    let method = call.receiver == Receiver::Method;
    let free = call.receiver == Receiver::None && doc.user_fn(&call.name).is_none();
    let names: Vec<(String, CompletionItemKind, Option<String>)> =
        match (call.name.as_str(), call.arg) {
            ("send" | "action", 0) if free => project
                .channels
                .iter()
                .map(|(n, ty)| {
                    (
                        n.clone(),
                        CompletionItemKind::ENUM_MEMBER,
                        Some(format!("channel ({ty})")),
                    )
                })
                .collect(),
            ("send", 1) if free => {
                let channel = doc.literal_arg(call.open, 0);
                project
                    .templates
                    .iter()
                    .filter(|(n, _)| match n.rsplit_once('.') {
                        Some((_, ch)) => !project.channels.contains_key(ch),
                        None => true,
                    })
                    .map(|(n, info)| {
                        let specific = channel
                            .as_ref()
                            .and_then(|c| project.templates.get(&format!("{n}.{c}")));
                        let file = specific.unwrap_or(info);
                        let detail = file
                            .path
                            .file_name()
                            .map(|f| format!("templates/{}", f.to_string_lossy()));
                        (n.clone(), CompletionItemKind::FILE, detail)
                    })
                    .collect()
            }
            ("on_event" | "goal", 0) if method => events(project),
            ("wait_for", 0) if free => events(project),
            ("on_workflow_completed", 0) if method => project
                .workflows
                .keys()
                .map(|n| {
                    (
                        n.clone(),
                        CompletionItemKind::MODULE,
                        Some("workflow".into()),
                    )
                })
                .collect(),
            ("reentry", 0) if method => vec![
                (
                    "once".into(),
                    CompletionItemKind::VALUE,
                    Some("one run per contact, ever".into()),
                ),
                (
                    "always".into(),
                    CompletionItemKind::VALUE,
                    Some("a new run on every trigger".into()),
                ),
            ],
            _ => Vec::new(),
        };
    names
        .into_iter()
        .map(|(label, kind, detail)| {
            with_edit(CompletionItem {
                detail,
                ..item(&label, kind)
            })
        })
        .collect()
}

fn events(project: &ProjectSnapshot) -> Vec<(String, CompletionItemKind, Option<String>)> {
    project
        .events
        .iter()
        .map(|e| {
            (
                e.clone(),
                CompletionItemKind::EVENT,
                Some("event used in this project".into()),
            )
        })
        .collect()
}

fn code_completion(
    doc: &Doc<'_>,
    before: usize,
    word: Range<usize>,
    offset: usize,
    project: &ProjectSnapshot,
) -> Vec<CompletionItem> {
    let src = doc.text;
    let prev = before.checked_sub(1).map(|k| doc.code[k]);
    if let Some(p) = prev.filter(|p| p.is(src, ".") || p.is(src, "?.")) {
        let receiver = (before >= 2).then(|| doc.code[before - 2]);
        let name = receiver
            .filter(|r| r.kind == Kind::Ident)
            .map(|r| r.text(src));
        let before_receiver = (before >= 3).then(|| doc.code[before - 3]);
        let plain = before_receiver.is_none_or(|b| !b.is(src, ".") && !b.is(src, "?."));
        return match name {
            Some("contact") if plain => project
                .attributes
                .iter()
                .map(|a| CompletionItem {
                    detail: Some("contact attribute used in this project".into()),
                    ..item(a, CompletionItemKind::FIELD)
                })
                .collect(),
            Some("trigger") if plain => TRIGGER_FIELDS
                .iter()
                .map(|(n, d)| CompletionItem {
                    detail: Some(d.to_string()),
                    ..item(n, CompletionItemKind::FIELD)
                })
                .collect(),
            _ if p.is(src, ".") => match doc.chain_type(before - 1) {
                Some(on) => DSL_FUNCTIONS
                    .iter()
                    .filter(|f| f.method && f.returns == on)
                    .map(dsl_item)
                    .collect(),
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
    }
    if let Some(p) = prev.filter(|p| p.is(src, "::")) {
        let alias = (before >= 2)
            .then(|| doc.code[before - 2])
            .filter(|a| a.kind == Kind::Ident)
            .map(|a| a.text(src));
        let module = alias
            .and_then(|a| doc.outline.import_for(a))
            .and_then(|i| stdlib::by_path(&i.path));
        let _ = p;
        return module
            .map(|m| {
                m.functions
                    .iter()
                    .map(|f| CompletionItem {
                        detail: Some(f.signature()),
                        documentation: Some(markdown(fn_doc(f, alias))),
                        ..item(&f.name, CompletionItemKind::FUNCTION)
                    })
                    .collect()
            })
            .unwrap_or_default();
    }
    let _ = word;
    let in_fn = doc.outline.function_at(offset).is_some();
    let mut items: Vec<CompletionItem> = DSL_FUNCTIONS
        .iter()
        .filter(|f| !f.method)
        .filter(|f| match f.context {
            Context::Declaration => !in_fn,
            Context::Pure => true,
            #[allow(unreachable_patterns)] // steps, and contexts the DSL may add
            _ => in_fn,
        })
        .map(dsl_item)
        .collect();
    for f in &doc.outline.functions {
        if f.name == "run" || free_fn(&f.name).is_some() {
            continue;
        }
        items.push(CompletionItem {
            detail: Some(f.signature()),
            documentation: Some(markdown(fn_doc(f, None))),
            ..item(&f.name, CompletionItemKind::FUNCTION)
        });
    }
    for i in &doc.outline.imports {
        if let (Some(alias), Some(m)) = (&i.alias, stdlib::by_path(&i.path)) {
            items.push(CompletionItem {
                detail: Some(format!("import \"{}\"", i.path)),
                documentation: Some(markdown(module_doc(m))),
                ..item(alias, CompletionItemKind::MODULE)
            });
        }
    }
    for l in doc.locals(offset) {
        if !items.iter().any(|i| i.label == l) {
            items.push(item(&l, CompletionItemKind::VARIABLE));
        }
    }
    for k in KEYWORDS {
        items.push(item(k, CompletionItemKind::KEYWORD));
    }
    items
}

fn dsl_item(f: &DslFunction) -> CompletionItem {
    CompletionItem {
        detail: Some(f.signatures().join("  |  ")),
        documentation: Some(markdown(dsl_doc(f))),
        ..item(
            f.name,
            if f.method {
                CompletionItemKind::METHOD
            } else {
                CompletionItemKind::FUNCTION
            },
        )
    }
}

/// What the token at `offset` refers to.
enum Target<'d> {
    Dsl(&'static DslFunction, Range<usize>),
    UserFn(&'d FnInfo, Range<usize>),
    ModuleFn(
        &'static stdlib::ModuleInfo,
        &'static FnInfo,
        String,
        Range<usize>,
    ),
    Module(&'static stdlib::ModuleInfo, Range<usize>),
    Template(String, Option<String>, Range<usize>),
    Channel(String, Range<usize>),
    Workflow(String, Range<usize>),
    Field(String, Range<usize>),
}

fn token_at(doc: &Doc<'_>, offset: usize) -> Option<usize> {
    let k = doc.code.partition_point(|t| t.end < offset);
    let t = doc.code.get(k)?;
    if t.start <= offset && offset <= t.end {
        // Prefer an identifier that ends at the cursor over punctuation starting there.
        if t.kind == Kind::Punct && offset == t.start && k > 0 {
            let p = doc.code[k - 1];
            if p.end == offset && p.kind == Kind::Ident {
                return Some(k - 1);
            }
        }
        Some(k)
    } else {
        None
    }
}

fn target<'d>(doc: &'d Doc<'_>, offset: usize) -> Option<Target<'d>> {
    let src = doc.text;
    let k = token_at(doc, offset)?;
    let t = doc.code[k];
    let prev = k.checked_sub(1).map(|p| doc.code[p]);
    if t.kind == Kind::Ident {
        let name = t.text(src);
        if prev.is_some_and(|p| p.is(src, "::")) && k >= 2 {
            let alias = doc.code[k - 2].text(src);
            let m = doc
                .outline
                .import_for(alias)
                .and_then(|i| stdlib::by_path(&i.path))?;
            let f = m.function(name)?;
            return Some(Target::ModuleFn(m, f, alias.to_string(), t.range()));
        }
        if doc.code.get(k + 1).is_some_and(|n| n.is(src, "::")) {
            let m = doc
                .outline
                .import_for(name)
                .and_then(|i| stdlib::by_path(&i.path))?;
            return Some(Target::Module(m, t.range()));
        }
        let after_dot = prev.is_some_and(|p| p.is(src, ".") || p.is(src, "?."));
        if after_dot {
            if let Some(f) = doc.chain_type(k - 1).and_then(|on| method_fn(name, on)) {
                return Some(Target::Dsl(f, t.range()));
            }
            if k >= 2 && doc.code[k - 2].is_ident(src, "trigger") {
                return Some(Target::Field(name.to_string(), t.range()));
            }
            return None;
        }
        if let Some(f) = doc.user_fn(name) {
            return Some(Target::UserFn(f, t.range()));
        }
        if let Some(f) = free_fn(name) {
            return Some(Target::Dsl(f, t.range()));
        }
        if let Some(i) = doc.outline.import_for(name) {
            return stdlib::by_path(&i.path).map(|m| Target::Module(m, t.range()));
        }
        return None;
    }
    if t.is_str() {
        if prev.is_some_and(|p| p.is_ident(src, "import")) {
            return stdlib::by_path(t.str_value(src)).map(|m| Target::Module(m, t.range()));
        }
        let call = doc.call_before(k)?;
        let value = t.str_value(src).to_string();
        let free = call.receiver == Receiver::None && doc.user_fn(&call.name).is_none();
        return match (call.name.as_str(), call.arg, &call.receiver) {
            ("send" | "action", 0, _) if free => Some(Target::Channel(value, t.range())),
            ("send", 1, _) if free => Some(Target::Template(
                value,
                doc.literal_arg(call.open, 0),
                t.range(),
            )),
            ("on_workflow_completed", 0, Receiver::Method) => {
                Some(Target::Workflow(value, t.range()))
            }
            _ => None,
        };
    }
    None
}

/// The template file `send(channel, name)` renders: `NAME.CHANNEL.liquid` when it exists, else
/// `NAME.liquid`.
pub fn template_file(
    project: &ProjectSnapshot,
    name: &str,
    channel: Option<&str>,
) -> Option<PathBuf> {
    channel
        .and_then(|c| project.templates.get(&format!("{name}.{c}")))
        .or_else(|| project.templates.get(name))
        .map(|t| t.path.clone())
}

/// Hover documentation at `offset`: markdown and the range it describes.
pub fn hover(doc: &Doc<'_>, offset: usize, project: &ProjectSnapshot) -> Option<Hover> {
    let (value, range) = match target(doc, offset)? {
        Target::Dsl(f, r) => (dsl_doc(f), r),
        Target::UserFn(f, r) => (fn_doc(f, None), r),
        Target::ModuleFn(_, f, alias, r) => (fn_doc(f, Some(&alias)), r),
        Target::Module(m, r) => (module_doc(m), r),
        Target::Field(name, r) => {
            let (_, d) = TRIGGER_FIELDS.iter().find(|(n, _)| *n == name)?;
            (format!("`trigger.{name}`\n\n{d}"), r)
        }
        Target::Channel(name, r) => match project.channels.get(&name) {
            Some(ty) => (
                format!("Channel `{name}` (type `{ty}`), configured in `herald.toml`."),
                r,
            ),
            None => return None,
        },
        Target::Template(name, channel, r) => {
            let specific = channel
                .as_deref()
                .and_then(|c| project.templates.get(&format!("{name}.{c}")));
            let info = specific.or_else(|| project.templates.get(&name))?;
            let file = info.path.file_name()?.to_string_lossy().into_owned();
            let mut value = format!("Template `templates/{file}`");
            for (k, v) in &info.fields {
                value.push_str(&format!("\n- **{k}**: {v}"));
            }
            if let Some(e) = &info.error {
                value.push_str(&format!("\n\n**Does not compile:** {e}"));
            }
            (value, r)
        }
        Target::Workflow(name, r) => {
            let path = project.workflows.get(&name)?;
            let file = display_path(path, project);
            (format!("Workflow `{name}`, declared in `{file}`."), r)
        }
    };
    Some(Hover {
        contents: HoverContents::Markup(MarkupContent {
            kind: MarkupKind::Markdown,
            value,
        }),
        range: Some(range_of(doc.text, range)),
    })
}

/// Where go-to-definition leads: a file and a byte range inside it (`None` for the file's
/// start), or a range in this document.
#[derive(Debug, Clone, PartialEq)]
pub enum Definition {
    /// A range of the same document.
    Here(Range<usize>),
    /// Another file, at a byte range of its text (which the caller reads to convert).
    File(PathBuf, Range<usize>),
}

/// Go to definition at `offset`.
pub fn definition(doc: &Doc<'_>, offset: usize, project: &ProjectSnapshot) -> Option<Definition> {
    match target(doc, offset)? {
        Target::UserFn(f, _) => Some(Definition::Here(f.name_range.clone())),
        Target::ModuleFn(m, f, _, _) => Some(Definition::File(
            stdlib::source_file(m)?,
            f.name_range.clone(),
        )),
        Target::Module(m, _) => Some(Definition::File(stdlib::source_file(m)?, 0..0)),
        Target::Template(name, channel, _) => Some(Definition::File(
            template_file(project, &name, channel.as_deref())?,
            0..0,
        )),
        Target::Workflow(name, _) => {
            let path = project.workflows.get(&name)?.clone();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let range = outline(&text).decl.map(|d| d.name_range).unwrap_or(0..0);
            Some(Definition::File(path, range))
        }
        Target::Channel(name, _) => {
            let root = project.root.as_ref()?;
            project.channels.get(&name)?;
            let path = root.join("herald.toml");
            let text = std::fs::read_to_string(&path).ok()?;
            let header = [
                format!("[channels.{name}]"),
                format!("[channels.\"{name}\"]"),
            ];
            let start = header
                .iter()
                .find_map(|h| text.find(h.as_str()))
                .unwrap_or(0);
            let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
            Some(Definition::File(path, start..end))
        }
        Target::Dsl(..) | Target::Field(..) => None,
    }
}

/// Signature help for the call around `offset`.
pub fn signature_help(doc: &Doc<'_>, offset: usize) -> Option<SignatureHelp> {
    let before = match doc.spot(offset) {
        Spot::Comment => return None,
        Spot::Str(i) => i,
        Spot::Code { before, .. } => before,
    };
    let call = doc.call_before(before)?;
    let f = match &call.receiver {
        Receiver::Module(alias) => {
            let m = doc
                .outline
                .import_for(alias)
                .and_then(|i| stdlib::by_path(&i.path))?;
            let f = m.function(&call.name)?;
            let sig = format!("{alias}::{}({})", f.name, f.params.join(", "));
            return Some(single_signature(sig, f.params.clone(), &f.doc, call.arg));
        }
        Receiver::None => {
            if let Some(f) = doc.user_fn(&call.name) {
                let sig = format!("{}({})", f.name, f.params.join(", "));
                return Some(single_signature(sig, f.params.clone(), &f.doc, call.arg));
            }
            free_fn(&call.name)?
        }
        Receiver::Method => {
            let name_idx = doc
                .code
                .partition_point(|t| t.start < call.name_range.start);
            method_fn(&call.name, doc.chain_type(name_idx.checked_sub(1)?)?)?
        }
    };
    let params: Vec<Vec<String>> = f
        .overloads
        .iter()
        .map(|o| {
            o.iter()
                .map(|(n, t)| format!("{n}: {}", t.label()))
                .collect()
        })
        .collect();
    let active = params
        .iter()
        .position(|p| p.len() > call.arg)
        .unwrap_or(params.len().saturating_sub(1));
    let signatures = f
        .signatures()
        .into_iter()
        .zip(params)
        .map(|(label, ps)| SignatureInformation {
            label,
            documentation: Some(markdown(f.doc.to_string())),
            parameters: Some(
                ps.into_iter()
                    .map(|p| ParameterInformation {
                        label: ParameterLabel::Simple(p),
                        documentation: None,
                    })
                    .collect(),
            ),
            active_parameter: None,
        })
        .collect();
    Some(SignatureHelp {
        signatures,
        active_signature: Some(active as u32),
        active_parameter: Some(call.arg as u32),
    })
}

fn single_signature(label: String, params: Vec<String>, doc: &str, arg: usize) -> SignatureHelp {
    SignatureHelp {
        signatures: vec![SignatureInformation {
            label,
            documentation: (!doc.is_empty()).then(|| markdown(doc.to_string())),
            parameters: Some(
                params
                    .into_iter()
                    .map(|p| ParameterInformation {
                        label: ParameterLabel::Simple(p),
                        documentation: None,
                    })
                    .collect(),
            ),
            active_parameter: None,
        }],
        active_signature: Some(0),
        active_parameter: Some(arg as u32),
    }
}

/// Document symbols: the workflow declaration (with its triggers and goal), imports and
/// functions.
#[allow(deprecated)] // `DocumentSymbol::deprecated` must still be written.
pub fn symbols(doc: &Doc<'_>) -> Vec<DocumentSymbol> {
    let src = doc.text;
    let sym = |name: String,
               detail: Option<String>,
               kind: SymbolKind,
               range: Range<usize>,
               sel: Range<usize>,
               children: Option<Vec<DocumentSymbol>>| DocumentSymbol {
        name,
        detail,
        kind,
        tags: None,
        deprecated: None,
        range: range_of(src, range),
        selection_range: range_of(src, sel),
        children,
    };
    let mut out = Vec::new();
    for i in &doc.outline.imports {
        out.push(sym(
            i.alias.clone().unwrap_or_else(|| i.path.clone()),
            Some(format!("import \"{}\"", i.path)),
            SymbolKind::MODULE,
            i.range.clone(),
            i.path_range.clone(),
            None,
        ));
    }
    if let Some(d) = &doc.outline.decl {
        let children = d
            .parts
            .iter()
            .map(|p| {
                let kind = match p.method.as_str() {
                    "on_event" | "goal" | "on_workflow_completed" => SymbolKind::EVENT,
                    _ => SymbolKind::PROPERTY,
                };
                let name = match &p.arg {
                    Some(a) => format!("{}(\"{a}\")", p.method),
                    None => p.method.clone(),
                };
                sym(name, None, kind, p.range.clone(), p.range.clone(), None)
            })
            .collect();
        out.push(sym(
            d.name.clone(),
            Some("workflow".into()),
            SymbolKind::NAMESPACE,
            d.range.clone(),
            d.name_range.clone(),
            Some(children),
        ));
    }
    for f in &doc.outline.functions {
        out.push(sym(
            f.name.clone(),
            Some(f.signature()),
            SymbolKind::FUNCTION,
            f.range.clone(),
            f.name_range.clone(),
            None,
        ));
    }
    out.sort_by_key(|s| (s.range.start.line, s.range.start.character));
    out
}

/// Convenience for callers holding an LSP position.
pub fn offset_of(text: &str, pos: Position) -> usize {
    crate::text::position_to_offset(text, pos)
}
