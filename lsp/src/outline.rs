//! The shape of a script, found lexically so that it is there even while the script does not
//! compile: functions with their doc comments, imports, and the workflow declaration.

use std::ops::Range;

use crate::lexer::{lex, Kind, Token};

/// A script function (`fn name(a, b) { ... }`).
#[derive(Debug, Clone, PartialEq)]
pub struct FnInfo {
    /// Its name.
    pub name: String,
    /// Where the name is.
    pub name_range: Range<usize>,
    /// Parameter names.
    pub params: Vec<String>,
    /// From `fn` (or `private`) to the closing brace (or the end of the text).
    pub range: Range<usize>,
    /// The body, between its braces (empty when there is no body yet).
    pub body: Range<usize>,
    /// Text of the `///` comments right above it.
    pub doc: String,
    /// Declared `private`.
    pub private: bool,
}

impl FnInfo {
    /// `name(a, b)`.
    pub fn signature(&self) -> String {
        format!("fn {}({})", self.name, self.params.join(", "))
    }
}

/// `import "path" as alias;`
#[derive(Debug, Clone, PartialEq)]
pub struct ImportInfo {
    /// The import path as written (`herald/text`).
    pub path: String,
    /// The string literal's range.
    pub path_range: Range<usize>,
    /// The alias, if any.
    pub alias: Option<String>,
    /// The whole statement.
    pub range: Range<usize>,
}

/// One chained call of the workflow declaration (`.on_event("x")`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeclPart {
    /// Method name.
    pub method: String,
    /// First string argument, if any.
    pub arg: Option<String>,
    /// From the method name to its closing parenthesis.
    pub range: Range<usize>,
}

/// The `workflow("name")...;` statement.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclInfo {
    /// The declared name.
    pub name: String,
    /// The name's string literal.
    pub name_range: Range<usize>,
    /// The whole statement.
    pub range: Range<usize>,
    /// Chained methods.
    pub parts: Vec<DeclPart>,
}

/// Everything [`outline`] finds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outline {
    /// Script functions, in source order.
    pub functions: Vec<FnInfo>,
    /// Imports, in source order.
    pub imports: Vec<ImportInfo>,
    /// The first top-level workflow declaration.
    pub decl: Option<DeclInfo>,
}

impl Outline {
    /// The function whose body contains `offset`.
    pub fn function_at(&self, offset: usize) -> Option<&FnInfo> {
        self.functions
            .iter()
            .find(|f| f.body.start <= offset && offset <= f.body.end && f.body.end > f.body.start)
    }

    /// The stdlib path imported under `alias`.
    pub fn import_for(&self, alias: &str) -> Option<&ImportInfo> {
        self.imports
            .iter()
            .find(|i| i.alias.as_deref() == Some(alias))
    }
}

/// Index of the bracket closing the one opened at `open`, if it is closed.
pub fn matching(source: &str, toks: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        if t.kind != Kind::Punct {
            continue;
        }
        match t.text(source) {
            "(" | "[" | "{" | "#{" => depth += 1,
            ")" | "]" | "}" => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

/// Outline a script.
pub fn outline(source: &str) -> Outline {
    let all = lex(source);
    let mut out = Outline::default();
    // Doc comments preceding each code token.
    let mut code: Vec<Token> = Vec::with_capacity(all.len());
    let mut docs: Vec<String> = Vec::with_capacity(all.len());
    let mut pending: Vec<&str> = Vec::new();
    for t in &all {
        match t.kind {
            Kind::Comment { doc: true } => {
                let text = t.text(source);
                let body = text
                    .strip_prefix("///")
                    .map(|s| s.strip_prefix(' ').unwrap_or(s))
                    .or_else(|| {
                        text.strip_prefix("/**")
                            .map(|s| s.strip_suffix("*/").unwrap_or(s).trim())
                    })
                    .unwrap_or("");
                pending.push(body);
            }
            Kind::Comment { doc: false } => pending.clear(),
            _ => {
                docs.push(pending.join("\n"));
                pending.clear();
                code.push(*t);
            }
        }
    }
    let mut i = 0;
    while i < code.len() {
        let t = code[i];
        let text = t.text(source);
        if t.kind == Kind::Ident && text == "fn" {
            let private = i > 0 && code[i - 1].is_ident(source, "private");
            let start = if private { code[i - 1].start } else { t.start };
            let doc = if private {
                docs[i - 1].clone()
            } else {
                docs[i].clone()
            };
            let Some(name) = code.get(i + 1).filter(|n| n.kind == Kind::Ident) else {
                i += 1;
                continue;
            };
            let mut params = Vec::new();
            let mut k = i + 2;
            if code.get(k).is_some_and(|p| p.is(source, "(")) {
                k += 1;
                while let Some(p) = code.get(k) {
                    if p.is(source, ")") {
                        k += 1;
                        break;
                    }
                    if p.is(source, "{") {
                        break;
                    }
                    if p.kind == Kind::Ident {
                        params.push(p.text(source).to_string());
                    }
                    k += 1;
                }
            }
            let (body, end, end_idx) = if code.get(k).is_some_and(|b| b.is(source, "{")) {
                match matching(source, &code, k) {
                    Some(c) => (code[k].end..code[c].start, code[c].end, c + 1),
                    None => (code[k].end..source.len(), source.len(), code.len()),
                }
            } else {
                let end = code
                    .get(k.saturating_sub(1))
                    .map(|t| t.end)
                    .unwrap_or(name.end);
                (name.end..name.end, end, k)
            };
            out.functions.push(FnInfo {
                name: name.text(source).to_string(),
                name_range: name.range(),
                params,
                range: start..end,
                body,
                doc,
                private,
            });
            i = end_idx.max(i + 1);
            continue;
        }
        if t.kind == Kind::Ident && text == "import" {
            if let Some(p) = code.get(i + 1).filter(|p| p.is_str()) {
                let mut alias = None;
                let mut end = p.end;
                if code.get(i + 2).is_some_and(|a| a.is_ident(source, "as")) {
                    if let Some(a) = code.get(i + 3).filter(|a| a.kind == Kind::Ident) {
                        alias = Some(a.text(source).to_string());
                        end = a.end;
                    }
                }
                out.imports.push(ImportInfo {
                    path: p.str_value(source).to_string(),
                    path_range: p.range(),
                    alias,
                    range: t.start..end,
                });
            }
        }
        if t.kind == Kind::Ident
            && text == "workflow"
            && out.decl.is_none()
            && (i == 0 || !code[i - 1].is(source, "."))
            && code.get(i + 1).is_some_and(|p| p.is(source, "("))
        {
            if let Some(n) = code.get(i + 2).filter(|n| n.is_str()) {
                let mut parts = Vec::new();
                let mut k = matching(source, &code, i + 1).map_or(code.len(), |c| c + 1);
                let mut end = code
                    .get(k.saturating_sub(1))
                    .map(|t| t.end)
                    .unwrap_or(n.end);
                while code.get(k).is_some_and(|d| d.is(source, ".")) {
                    let Some(m) = code.get(k + 1).filter(|m| m.kind == Kind::Ident) else {
                        break;
                    };
                    let mut close = k + 2;
                    let mut arg = None;
                    if code.get(k + 2).is_some_and(|p| p.is(source, "(")) {
                        close = matching(source, &code, k + 2).map_or(code.len(), |c| c + 1);
                        arg = code
                            .get(k + 3)
                            .filter(|a| a.is_str())
                            .map(|a| a.str_value(source).to_string());
                    }
                    end = code
                        .get(close.saturating_sub(1))
                        .map(|t| t.end)
                        .unwrap_or(m.end);
                    parts.push(DeclPart {
                        method: m.text(source).to_string(),
                        arg,
                        range: m.start..end,
                    });
                    k = close;
                }
                if code.get(k).is_some_and(|s| s.is(source, ";")) {
                    end = code[k].end;
                }
                out.decl = Some(DeclInfo {
                    name: n.str_value(source).to_string(),
                    name_range: n.range(),
                    range: t.start..end,
                    parts,
                });
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlines_a_workflow() {
        let src = r#"import "herald/text" as text;
/// Welcome.
workflow("welcome")
    .on_event("signed_up")
    .reentry("once");

/// Says hi.
/// Twice.
fn greet(name, n) { if n > 0 { name } else { "" } }

fn run(contact, trigger) {
    send("email", "welcome");
"#;
        let o = outline(src);
        assert_eq!(o.imports[0].path, "herald/text");
        assert_eq!(o.imports[0].alias.as_deref(), Some("text"));
        let d = o.decl.clone().unwrap();
        assert_eq!(d.name, "welcome");
        assert_eq!(d.parts.len(), 2);
        assert_eq!(d.parts[0].arg.as_deref(), Some("signed_up"));
        assert!(src[d.range.clone()].ends_with("reentry(\"once\");"));
        assert_eq!(o.functions.len(), 2);
        assert_eq!(o.functions[0].doc, "Says hi.\nTwice.");
        assert_eq!(o.functions[0].params, ["name", "n"]);
        assert!(src[o.functions[0].range.clone()].ends_with("} }"));
        // The unfinished `run` extends to the end of the text.
        let run = &o.functions[1];
        assert_eq!(run.body.end, src.len());
        let inside = src.find("send").unwrap();
        assert_eq!(o.function_at(inside).unwrap().name, "run");
        assert!(o.function_at(0).is_none());
    }
}
