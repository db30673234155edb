//! Document symbols: imports, the workflow declaration and functions.

use std::ops::Range;

use tower_lsp::lsp_types::{DocumentSymbol, SymbolKind};

use super::doc::Doc;
use crate::text::range_of;

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
