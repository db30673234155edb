//! Editor features over one document: diagnostics, completion, hover, signature help, go to
//! definition and document symbols. Everything here is a pure function of the text, a cursor
//! offset and a [`ProjectSnapshot`], so it is tested and benchmarked without a client.

mod completion;
mod definition;
mod diagnostics;
mod doc;
mod hover;
mod signature;
mod symbols;
mod target;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use herald_dsl::api::{DslFunction, DSL_FUNCTIONS};
use tower_lsp::lsp_types::{Documentation, MarkupContent, MarkupKind, Position};

use crate::project::ProjectSnapshot;

pub use completion::completion;
pub use definition::{definition, template_file, Definition};
pub use diagnostics::{diagnostics, to_lsp};
pub use doc::Doc;
pub use hover::{dsl_doc, hover};
pub use signature::signature_help;
pub use symbols::symbols;

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

fn display_path(path: &Path, project: &ProjectSnapshot) -> String {
    project
        .root
        .as_ref()
        .and_then(|r| path.strip_prefix(r).ok())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Convenience for callers holding an LSP position.
pub fn offset_of(text: &str, pos: Position) -> usize {
    crate::text::position_to_offset(text, pos)
}
