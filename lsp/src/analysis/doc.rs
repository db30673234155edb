//! The document model shared by the cursor features: tokens, outline and what surrounds a
//! cursor offset (a comment, a string, a call and its argument, a declaration chain, locals).

use std::ops::Range;

use herald_dsl::api::DSL_FUNCTIONS;

use super::{free_fn, KEYWORDS};
use crate::lexer::{lex, Kind, Token};
use crate::outline::{outline, FnInfo, Outline};

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
pub(super) enum Spot {
    /// In a comment: nothing to offer.
    Comment,
    /// Inside string literal `code[i]`.
    Str(usize),
    /// After tokens `code[..i]`, typing the word `prefix` (possibly empty).
    Code { before: usize, word: Range<usize> },
}

/// The call whose argument list contains the cursor.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) name: String,
    pub(super) name_range: Range<usize>,
    pub(super) receiver: Receiver,
    pub(super) arg: usize,
    /// Index of the opening parenthesis in `code`.
    pub(super) open: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Receiver {
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

    pub(super) fn spot(&self, offset: usize) -> Spot {
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
    pub(super) fn call_before(&self, before: usize) -> Option<Call> {
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
    pub(super) fn literal_arg(&self, open: usize, n: usize) -> Option<String> {
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
    pub(super) fn chain_type(&self, dot: usize) -> Option<&'static str> {
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

    pub(super) fn user_fn(&self, name: &str) -> Option<&FnInfo> {
        self.outline.functions.iter().find(|f| f.name == name)
    }

    /// Names in scope at `offset`: parameters of the enclosing function and `let`/`const`
    /// names declared before the cursor in that function (or at the top level).
    pub(super) fn locals(&self, offset: usize) -> Vec<String> {
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
