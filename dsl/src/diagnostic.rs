//! Diagnostics with byte ranges, rendered with ariadne like rustc renders its errors.

use std::ops::Range;

use ariadne::{Config, IndexType, Label, Report, ReportKind, Source};
use serde::Serialize;

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The script cannot be loaded.
    Error,
    /// The script loads but probably does not do what was meant.
    Warning,
}

/// One finding about one script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable code, e.g. `H002`.
    pub code: &'static str,
    /// The headline.
    pub message: String,
    /// File the range refers to, as shown to the user.
    pub file: String,
    /// Byte range in the file's source.
    pub range: Range<usize>,
    /// What the label under the range says.
    pub label: String,
    /// A hint on how to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at `range`.
    pub fn error(
        code: &'static str,
        file: &str,
        range: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        Diagnostic {
            severity: Severity::Error,
            code,
            label: message.clone(),
            message,
            file: file.to_string(),
            range,
            help: None,
        }
    }

    /// A warning at `range`.
    pub fn warning(
        code: &'static str,
        file: &str,
        range: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, file, range, message)
        }
    }

    /// Replace the label text.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Add a hint.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// 1-based line and column (in characters) of the start of the range.
    pub fn line_col(&self, source: &str) -> (usize, usize) {
        offset_to_line_col(source, self.range.start)
    }

    /// Is this an error?
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// 1-based line and character column of a byte offset.
pub fn offset_to_line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, source[line_start..offset].chars().count() + 1)
}

/// Byte offset of a 1-based line and 1-based character column (Rhai's positions).
/// Positions past the end of a line clamp to the line's end.
pub fn line_col_to_offset(source: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line.max(1) {
        match source[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return source.len(),
        }
    }
    let line_text = source[start..].split('\n').next().unwrap_or("");
    let col_bytes: usize = line_text
        .chars()
        .take(column.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    start + col_bytes
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The range of the token starting at `offset`: a whole string literal, identifier or number,
/// else one character. Rhai reports points; editors and ariadne want ranges.
pub fn token_range(source: &str, offset: usize) -> Range<usize> {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let rest = &source[offset..];
    let mut chars = rest.char_indices();
    let Some((_, first)) = chars.next() else {
        return offset..offset;
    };
    let len = if first == '"' || first == '`' {
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices().skip(1) {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == first {
                end = i + 1;
                break;
            } else if c == '\n' && first == '"' {
                end = i;
                break;
            }
        }
        end
    } else if first.is_alphanumeric() || first == '_' {
        rest.char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map(|(i, _)| i)
            .unwrap_or(rest.len())
    } else {
        first.len_utf8()
    };
    offset..offset + len
}

/// Render diagnostics for one source file the way rustc does: file, line, column, code, the
/// offending range underlined with a label, and a help line.
pub fn render_diagnostics(diagnostics: &[Diagnostic], source: &str, color: bool) -> String {
    let mut out = Vec::new();
    for d in diagnostics {
        let kind = match d.severity {
            Severity::Error => ReportKind::Error,
            Severity::Warning => ReportKind::Warning,
        };
        let file = d.file.as_str();
        let range = clamp(&d.range, source);
        let mut report = Report::build(kind, (file, range.clone()))
            .with_config(
                Config::default()
                    .with_color(color)
                    .with_index_type(IndexType::Byte),
            )
            .with_code(d.code)
            .with_message(&d.message)
            .with_label(Label::new((file, range)).with_message(&d.label));
        if let Some(help) = &d.help {
            report = report.with_help(help);
        }
        report
            .finish()
            .write((file, Source::from(source)), &mut out)
            .expect("writing to a Vec cannot fail");
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn clamp(range: &Range<usize>, source: &str) -> Range<usize> {
    let start = range.start.min(source.len());
    let end = range.end.clamp(start, source.len());
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_with_non_ascii_text() {
        let src = "let é = \"ü\";\nsend(\"émail\", \"x\");\n";
        let off = line_col_to_offset(src, 2, 6);
        assert_eq!(&src[off..off + 1], "\"");
        assert_eq!(offset_to_line_col(src, off), (2, 6));
        assert_eq!(&src[token_range(src, off)], "\"émail\"");
    }

    #[test]
    fn identifier_tokens_extend_to_the_end_of_the_word() {
        let src = "foo_bar(1)";
        assert_eq!(token_range(src, 0), 0..7);
        assert_eq!(token_range(src, 7), 7..8);
        assert_eq!(token_range(src, 99), 10..10);
    }
}
