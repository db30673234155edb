//! Completion: names, keywords and members at the cursor, and project names inside strings.

use std::ops::Range;

use herald_dsl::api::{Context, DslFunction, DSL_FUNCTIONS};
use tower_lsp::lsp_types::{CompletionItem, CompletionItemKind, CompletionTextEdit, TextEdit};

use super::doc::{Doc, Receiver, Spot};
use super::hover::{dsl_doc, fn_doc, module_doc};
use super::{free_fn, markdown, KEYWORDS, TRIGGER_FIELDS};
use crate::lexer::Kind;
use crate::project::ProjectSnapshot;
use crate::stdlib;
use crate::text::range_of;

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
            ("priority", 0) if method => herald_dsl::Priority::ALL
                .into_iter()
                .map(|p| {
                    (
                        p.as_str().to_string(),
                        CompletionItemKind::VALUE,
                        Some(
                            match p {
                                herald_dsl::Priority::Transactional => "served first",
                                herald_dsl::Priority::Normal => "the default lane",
                                herald_dsl::Priority::Bulk => "served last",
                            }
                            .into(),
                        ),
                    )
                })
                .collect(),
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
