//! A forgiving lexer for editor features. Rhai's own tokenizer stops at the first error; an
//! editor needs tokens for half-typed text too, so this one never fails: an unterminated
//! string runs to the end of its line, an unknown character is a one-character punctuation.

use std::ops::Range;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A name or keyword.
    Ident,
    /// A string literal (`"..."` or a back-quoted template); `closed` is false when it is not
    /// terminated.
    Str {
        /// The closing quote is present.
        closed: bool,
    },
    /// A character literal.
    Char,
    /// A number.
    Number,
    /// A comment; `doc` for `///` and `/** */` comments.
    Comment {
        /// A documentation comment.
        doc: bool,
    },
    /// Operators and delimiters: `::`, `#{`, `?.` and `..` are one token, all else one
    /// character.
    Punct,
}

/// One token and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Its kind.
    pub kind: Kind,
    /// Byte offset of its first character.
    pub start: usize,
    /// Byte offset just after it.
    pub end: usize,
}

impl Token {
    /// Its byte range.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// Its text.
    pub fn text<'a>(&self, source: &'a str) -> &'a str {
        &source[self.start..self.end]
    }

    /// Is it this punctuation?
    pub fn is(&self, source: &str, punct: &str) -> bool {
        self.kind == Kind::Punct && self.text(source) == punct
    }

    /// Is it this identifier or keyword?
    pub fn is_ident(&self, source: &str, name: &str) -> bool {
        self.kind == Kind::Ident && self.text(source) == name
    }

    /// Is it a string literal?
    pub fn is_str(&self) -> bool {
        matches!(self.kind, Kind::Str { .. })
    }

    /// Is it a comment?
    pub fn is_comment(&self) -> bool {
        matches!(self.kind, Kind::Comment { .. })
    }

    /// The byte range of a string literal's contents, without its quotes (the whole token for
    /// other kinds).
    pub fn str_content(&self, source: &str) -> Range<usize> {
        if !matches!(self.kind, Kind::Str { .. } | Kind::Char) {
            return self.range();
        }
        let closed = matches!(self.kind, Kind::Str { closed: true })
            || (self.kind == Kind::Char
                && self.end > self.start + 1
                && source[..self.end].ends_with('\''));
        let end = if closed && self.end > self.start + 1 {
            self.end - 1
        } else {
            self.end
        };
        let start = (self.start + 1).min(end);
        debug_assert!(source.is_char_boundary(start) && source.is_char_boundary(end));
        start..end
    }

    /// The contents of a string literal (escapes left as written).
    pub fn str_value<'a>(&self, source: &'a str) -> &'a str {
        &source[self.str_content(source)]
    }
}

/// Split `source` into tokens, comments included. Never fails.
pub fn lex(source: &str) -> Vec<Token> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let kind = if c.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            let doc = bytes.get(i + 2) == Some(&b'/') && bytes.get(i + 3) != Some(&b'/');
            i = source[i..].find('\n').map(|n| i + n).unwrap_or(bytes.len());
            Kind::Comment { doc }
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let doc = bytes.get(i + 2) == Some(&b'*') && bytes.get(i + 3) != Some(&b'/');
            // Rhai block comments nest.
            let mut depth = 0usize;
            while i < bytes.len() {
                if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            Kind::Comment { doc }
        } else if c == b'"' || c == b'`' {
            let (end, closed) = string_end(source, i, c);
            i = end;
            Kind::Str { closed }
        } else if c == b'\'' {
            let (end, _) = string_end(source, i, c);
            i = end;
            Kind::Char
        } else if c.is_ascii_digit() {
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'_'
                    || (bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)))
            {
                i += 1;
            }
            Kind::Number
        } else if c == b'_' || c.is_ascii_alphabetic() || c >= 0x80 {
            let ch = source[i..].chars().next().expect("in bounds");
            if ch.is_alphabetic() || ch == '_' {
                i += source[i..]
                    .char_indices()
                    .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
                    .map(|(n, _)| n)
                    .unwrap_or(bytes.len() - i);
                Kind::Ident
            } else {
                i += ch.len_utf8();
                Kind::Punct
            }
        } else {
            let two = bytes.get(i..i + 2);
            i += match two {
                Some(b"::") | Some(b"#{") | Some(b"?.") | Some(b"..") => 2,
                _ => 1,
            };
            Kind::Punct
        };
        out.push(Token {
            kind,
            start,
            end: i,
        });
    }
    out
}

/// End of a quoted literal opened at `start` with `quote`, and whether it is closed. A `"` or
/// `'` literal stops at the end of its line; a back-quoted one may span lines.
fn string_end(source: &str, start: usize, quote: u8) -> (usize, bool) {
    let bytes = source.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote != b'`' => {
                i += 1;
                // Skip the escaped character, whatever its width.
                if let Some(c) = source.get(i..).and_then(|s| s.chars().next()) {
                    if c == '\n' {
                        continue;
                    }
                    i += c.len_utf8();
                }
            }
            b'\n' if quote != b'`' => return (i, false),
            b if b == quote => return (i + 1, true),
            _ => i += 1,
        }
    }
    (bytes.len(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(Kind, &str)> {
        lex(src).iter().map(|t| (t.kind, t.text(src))).collect()
    }

    #[test]
    fn lexes_calls_strings_and_comments() {
        let src = "/// doc\nsend(\"émail\", `t`); // c\ntext::x #{ a: 1.5 }";
        let k = kinds(src);
        assert_eq!(k[0], (Kind::Comment { doc: true }, "/// doc"));
        assert_eq!(k[1], (Kind::Ident, "send"));
        assert_eq!(k[3], (Kind::Str { closed: true }, "\"émail\""));
        assert_eq!(k[5], (Kind::Str { closed: true }, "`t`"));
        assert_eq!(k[8], (Kind::Comment { doc: false }, "// c"));
        assert_eq!(k[10], (Kind::Punct, "::"));
        assert_eq!(k[12], (Kind::Punct, "#{"));
        assert_eq!(k[15], (Kind::Number, "1.5"));
    }

    #[test]
    fn unterminated_strings_stop_at_the_line_end() {
        let src = "send(\"em\nwait(1)";
        let toks = lex(src);
        assert_eq!(toks[2].kind, Kind::Str { closed: false });
        assert_eq!(toks[2].str_value(src), "em");
        assert_eq!(toks[3].text(src), "wait");
    }

    #[test]
    fn never_panics_on_odd_input() {
        for src in [
            "\"\\",
            "'",
            "/*",
            "/* /* */",
            "é\u{301}\"\\é",
            "1.",
            "`${",
            "\\",
        ] {
            let toks = lex(src);
            for t in toks {
                let _ = t.text(src);
                let _ = t.str_value(src);
            }
        }
    }
}
