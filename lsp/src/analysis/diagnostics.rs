//! Diagnostics: the checker's findings for a document, converted to LSP positions.

use std::path::Path;

use herald_dsl::{Diagnostic as HeraldDiagnostic, Severity};
use tower_lsp::lsp_types::{Diagnostic, DiagnosticSeverity, NumberOrString, Range as LspRange};

use super::display_path;
use crate::project::{ProjectSnapshot, Role};
use crate::text::{line_starts, offset_to_position_with};

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
