//! What the token under the cursor refers to, shared by hover and go to definition.

use std::ops::Range;

use herald_dsl::api::DslFunction;

use super::doc::{Doc, Receiver};
use super::{free_fn, method_fn};
use crate::lexer::Kind;
use crate::outline::FnInfo;
use crate::stdlib;

/// What the token at `offset` refers to.
pub(super) enum Target<'d> {
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

pub(super) fn target<'d>(doc: &'d Doc<'_>, offset: usize) -> Option<Target<'d>> {
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
