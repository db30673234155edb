//! Go to definition: script and stdlib functions, modules, templates, channels and workflows.

use std::ops::Range;
use std::path::PathBuf;

use super::doc::Doc;
use super::target::{target, Target};
use crate::outline::outline;
use crate::project::ProjectSnapshot;
use crate::stdlib;

/// The template file `send(channel, name)` renders: `NAME.CHANNEL.liquid` when it exists, else
/// `NAME.liquid`.
pub fn template_file(
    project: &ProjectSnapshot,
    name: &str,
    channel: Option<&str>,
) -> Option<PathBuf> {
    channel
        .and_then(|c| project.templates.get(&format!("{name}.{c}")))
        .or_else(|| project.templates.get(name))
        .map(|t| t.path.clone())
}

/// Where go-to-definition leads: a file and a byte range inside it (`None` for the file's
/// start), or a range in this document.
#[derive(Debug, Clone, PartialEq)]
pub enum Definition {
    /// A range of the same document.
    Here(Range<usize>),
    /// Another file, at a byte range of its text (which the caller reads to convert).
    File(PathBuf, Range<usize>),
}

/// Go to definition at `offset`.
pub fn definition(doc: &Doc<'_>, offset: usize, project: &ProjectSnapshot) -> Option<Definition> {
    match target(doc, offset)? {
        Target::UserFn(f, _) => Some(Definition::Here(f.name_range.clone())),
        Target::ModuleFn(m, f, _, _) => Some(Definition::File(
            stdlib::source_file(m)?,
            f.name_range.clone(),
        )),
        Target::Module(m, _) => Some(Definition::File(stdlib::source_file(m)?, 0..0)),
        Target::Template(name, channel, _) => Some(Definition::File(
            template_file(project, &name, channel.as_deref())?,
            0..0,
        )),
        Target::Workflow(name, _) => {
            let path = project.workflows.get(&name)?.clone();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let range = outline(&text).decl.map(|d| d.name_range).unwrap_or(0..0);
            Some(Definition::File(path, range))
        }
        Target::Channel(name, _) => {
            let root = project.root.as_ref()?;
            project.channels.get(&name)?;
            let path = root.join("herald.toml");
            let text = std::fs::read_to_string(&path).ok()?;
            let header = [
                format!("[channels.{name}]"),
                format!("[channels.\"{name}\"]"),
            ];
            let start = header
                .iter()
                .find_map(|h| text.find(h.as_str()))
                .unwrap_or(0);
            let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
            Some(Definition::File(path, start..end))
        }
        Target::Dsl(..) | Target::Field(..) => None,
    }
}
