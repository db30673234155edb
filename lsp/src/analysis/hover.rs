//! Hover, and the markdown documentation of DSL functions, script functions and modules that
//! completion shows too.

use herald_dsl::api::{Context, DslFunction};
use tower_lsp::lsp_types::{Hover, HoverContents, MarkupContent, MarkupKind};

use super::doc::Doc;
use super::target::{target, Target};
use super::{display_path, TRIGGER_FIELDS};
use crate::outline::FnInfo;
use crate::project::ProjectSnapshot;
use crate::stdlib;
use crate::text::range_of;

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

pub(super) fn fn_doc(f: &FnInfo, module: Option<&str>) -> String {
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

pub(super) fn module_doc(m: &stdlib::ModuleInfo) -> String {
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
