//! What the language server knows about the project around a document: what `herald check`
//! reports for it, and names worth completing (channels, templates, workflows, events and
//! contact attributes used anywhere in the project).
//!
//! Diagnostics of a project's files come from the one project checker that `herald check` and
//! the daemon use ([`herald_project::check`]), run over the files on disk with the editor's
//! open buffers laid over them ([`Workspace::project_findings`]), so the editor shows each
//! file exactly what `herald check` reports for it. The snapshot below only gathers names for
//! completion, hover and navigation: a project is the nearest folder with a `herald.toml`;
//! channels are the keys of its `[channels]` table; templates are `templates/*.liquid` and
//! `*.mjml`; workflow names come from checking each `workflows/*.rhai` without a context.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use herald_dsl::Diagnostic as HeraldDiagnostic;
use herald_project::{DiskSources, FileKind, Overlay};
use rhai::Engine;

use crate::lexer::{lex, Kind, Token};

/// Where a document sits in its project, which decides how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `workflows/*.rhai` of a project, or a `.rhai` file outside any project: a workflow script.
    Workflow,
    /// Another `.rhai` file (segments, scoring, tests, helpers). In a project, segments and
    /// scoring get the project checker's findings; other scripts a syntax check.
    OtherScript,
    /// `templates/*.liquid` or `templates/*.mjml`.
    Template,
    /// Anything else.
    Other,
}

/// Facts about one workflow script that other files care about.
#[derive(Debug, Clone, Default)]
pub struct ScriptFacts {
    /// The declared workflow, when the script compiles and declares one.
    pub workflow: Option<String>,
    /// Event names it mentions (`on_event`, `wait_for`, `goal`).
    pub events: BTreeSet<String>,
    /// Contact attributes it reads (`contact.x`) or writes (`update(#{ x: ... })`).
    pub attributes: BTreeSet<String>,
}

/// One template file.
#[derive(Debug, Clone)]
pub struct TemplateInfo {
    /// The file.
    pub path: PathBuf,
    /// Why it does not compile, if it does not.
    pub error: Option<String>,
    /// Front-matter fields, for hover.
    pub fields: Vec<(String, String)>,
}

/// Everything known about a project at one moment.
#[derive(Debug, Clone, Default)]
pub struct ProjectSnapshot {
    /// The project folder, if the document is in one.
    pub root: Option<PathBuf>,
    /// What the project checker reports for the document itself (`herald check`'s findings
    /// for this file), when it is one of the files a project loads; `None` otherwise, and
    /// then the document is checked on its own.
    pub findings: Option<Vec<HeraldDiagnostic>>,
    /// Channel name → its `type` in `herald.toml`.
    pub channels: BTreeMap<String, String>,
    /// Template name → file (broken templates included, so they can be opened).
    pub templates: BTreeMap<String, TemplateInfo>,
    /// Workflow name → the file declaring it.
    pub workflows: BTreeMap<String, PathBuf>,
    /// Event names mentioned anywhere in the project.
    pub events: BTreeSet<String>,
    /// Contact attribute names mentioned anywhere in the project.
    pub attributes: BTreeSet<String>,
}

type Stamp = (SystemTime, u64);

#[derive(Default)]
struct Caches {
    scripts: HashMap<PathBuf, (Stamp, Arc<ScriptFacts>)>,
    buffers: HashMap<PathBuf, (u64, Arc<ScriptFacts>)>,
    templates: HashMap<PathBuf, (Stamp, TemplateInfo, BTreeSet<String>)>,
}

/// Scans projects on demand, caching per-file results by modification time (files on disk) or
/// content hash (open buffers).
pub struct Workspace {
    engine: Arc<Engine>,
    parser: liquid::Parser,
    caches: Mutex<Caches>,
    /// The last project check: every open document of a project asks for the same one after
    /// an edit, so it is computed once (see [`Workspace::project_findings`]).
    checked: Mutex<Option<(u64, Arc<herald_project::CheckReport>)>>,
    /// Bumped by [`Workspace::invalidate`]: files the client reported changed.
    disk_generation: std::sync::atomic::AtomicU64,
}

/// An open buffer: its path and text.
pub struct Buffer<'a> {
    /// Absolute path of the document.
    pub path: &'a Path,
    /// Its current, possibly unsaved, text.
    pub text: &'a str,
}

impl Workspace {
    /// A workspace checking scripts with `engine` (built by [`herald_dsl::build_engine`]).
    pub fn new(engine: Arc<Engine>) -> Self {
        Workspace {
            engine,
            parser: liquid::ParserBuilder::with_stdlib()
                .build()
                .expect("the liquid stdlib parser builds"),
            caches: Mutex::new(Caches::default()),
            checked: Mutex::new(None),
            disk_generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The engine scripts are checked with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Forget cached facts about files on disk (after the client reports changed files).
    pub fn invalidate(&self) {
        let mut c = self.caches.lock().expect("cache lock");
        c.scripts.clear();
        c.templates.clear();
        self.disk_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Compile a template's text the way the daemon does; the error message if it fails.
    pub fn template_error(&self, text: &str) -> Option<String> {
        compile_template(&self.parser, text).err()
    }

    /// Snapshot the project containing `path`. `buffers` are open documents whose text replaces
    /// the file on disk; `exclude` is the document being checked, whose own facts the caller
    /// supplies.
    pub fn snapshot(&self, path: &Path, buffers: &[Buffer<'_>], exclude: &Path) -> ProjectSnapshot {
        let Some(root) = find_root(path) else {
            return ProjectSnapshot::default();
        };
        let mut snap = ProjectSnapshot {
            root: Some(root.clone()),
            ..ProjectSnapshot::default()
        };
        let config = std::fs::read_to_string(root.join("herald.toml"));
        let config_text = buffers
            .iter()
            .find(|b| b.path == root.join("herald.toml"))
            .map(|b| b.text.to_string())
            .or_else(|| config.ok());
        if let Some(Ok(table)) = config_text.as_deref().map(toml::from_str::<toml::Table>) {
            {
                if let Some(channels) = table.get("channels").and_then(|c| c.as_table()) {
                    for (name, ch) in channels {
                        let ty = ch
                            .get("type")
                            .and_then(|t| t.as_str())
                            .unwrap_or("?")
                            .to_string();
                        snap.channels.insert(name.clone(), ty);
                    }
                }
            }
        }

        let mut caches = self.caches.lock().expect("cache lock");
        let mut template_files = list(&root.join("templates"), "liquid");
        template_files.extend(list(&root.join("templates"), "mjml"));
        template_files.sort();
        for p in template_files {
            let Some(name) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(herald_project::templates::template_name)
                .map(|(n, _)| n.to_string())
            else {
                continue;
            };
            let buffer = buffers.iter().find(|b| b.path == p);
            let (info, attrs) = match buffer {
                Some(b) => self.template_facts(&p, b.text),
                None => {
                    let stamp = stamp(&p);
                    match caches.templates.get(&p) {
                        Some((s, info, attrs)) if Some(*s) == stamp => {
                            (info.clone(), attrs.clone())
                        }
                        _ => {
                            let text = std::fs::read_to_string(&p).unwrap_or_default();
                            let facts = self.template_facts(&p, &text);
                            if let Some(s) = stamp {
                                caches
                                    .templates
                                    .insert(p.clone(), (s, facts.0.clone(), facts.1.clone()));
                            }
                            facts
                        }
                    }
                }
            };
            snap.attributes.extend(attrs);
            snap.templates.insert(name, info);
        }

        for p in list(&root.join("workflows"), "rhai") {
            if p == exclude {
                continue;
            }
            let facts = match buffers.iter().find(|b| b.path == p) {
                Some(b) => {
                    let hash = hash_text(b.text);
                    match caches.buffers.get(&p) {
                        Some((h, f)) if *h == hash => f.clone(),
                        _ => {
                            let f = Arc::new(self.script_facts(&p, b.text));
                            caches.buffers.insert(p.clone(), (hash, f.clone()));
                            f
                        }
                    }
                }
                None => {
                    let stamp = stamp(&p);
                    match caches.scripts.get(&p) {
                        Some((s, f)) if Some(*s) == stamp => f.clone(),
                        _ => {
                            let text = std::fs::read_to_string(&p).unwrap_or_default();
                            let f = Arc::new(self.script_facts(&p, &text));
                            if let Some(s) = stamp {
                                caches.scripts.insert(p.clone(), (s, f.clone()));
                            }
                            f
                        }
                    }
                }
            };
            if let Some(name) = &facts.workflow {
                snap.workflows
                    .entry(name.clone())
                    .or_insert_with(|| p.clone());
            }
            snap.events.extend(facts.events.iter().cloned());
            snap.attributes.extend(facts.attributes.iter().cloned());
        }
        drop(caches);
        snap
    }

    /// What `herald check` reports for the document at `path` whose text is `text`, with the
    /// open `buffers` in place of their files on disk: the project checker's findings for
    /// that file. `None` when the document is not one of the files a project loads
    /// (`herald.toml`, `workflows/*.rhai`, `segments/*.rhai`, `scoring.rhai`, templates).
    pub fn project_findings(
        &self,
        path: &Path,
        text: &str,
        buffers: &[Buffer<'_>],
    ) -> Option<Vec<HeraldDiagnostic>> {
        let root = herald_project::find_root(path).or_else(|| {
            // `herald.toml` itself is the root of its project.
            (path.file_name()? == "herald.toml").then(|| path.parent().map(Path::to_path_buf))?
        })?;
        let rel = relative(&root, path)?;
        if herald_project::file_kind(&rel) == FileKind::Other {
            return None;
        }
        let mut overlay: BTreeMap<String, &str> = buffers
            .iter()
            .filter_map(|b| Some((relative(&root, b.path)?, b.text)))
            .collect();
        overlay.insert(rel.clone(), text);
        let key = self.check_key(&root, &overlay);
        let cached = self
            .checked
            .lock()
            .expect("check cache lock")
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, r)| r.clone());
        let report = match cached {
            Some(r) => r,
            None => {
                let mut sources = Overlay::new(DiskSources::new(&root));
                for (r, t) in &overlay {
                    sources.set(r.clone(), *t);
                }
                let report = Arc::new(herald_project::check(&root, &sources, &self.engine).report);
                *self.checked.lock().expect("check cache lock") = Some((key, report.clone()));
                report
            }
        };
        Some(report.for_file(&rel).to_vec())
    }

    /// What a project check depends on: the project folder, the open buffers, and the files on
    /// disk it reads (by modification time and size; other files, such as plugin folders, by
    /// the client's change reports).
    fn check_key(&self, root: &Path, overlay: &BTreeMap<String, &str>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut h);
        overlay.hash(&mut h);
        self.disk_generation
            .load(std::sync::atomic::Ordering::Relaxed)
            .hash(&mut h);
        for file in ["herald.toml", "scoring.rhai"] {
            stamp(&root.join(file)).hash(&mut h);
        }
        for dir in ["workflows", "segments", "templates"] {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            entries.sort();
            for p in entries {
                p.hash(&mut h);
                stamp(&p).hash(&mut h);
            }
        }
        h.finish()
    }

    /// Facts about a workflow script: its declared name exactly as `herald check` finds it
    /// (checking it without a context), and the names it mentions.
    pub fn script_facts(&self, path: &Path, text: &str) -> ScriptFacts {
        let file = path.to_string_lossy();
        let report =
            crate::analysis::guarded(|| herald_dsl::check_script(&self.engine, &file, text, None));
        let mut facts = lexical_facts(text);
        facts.workflow = report.and_then(|r| r.workflow.map(|w| w.decl.name));
        facts
    }

    fn template_facts(&self, path: &Path, text: &str) -> (TemplateInfo, BTreeSet<String>) {
        let error = compile_template(&self.parser, text).err();
        let fields = herald_dsl::template::split_front_matter(text)
            .map(|(f, _)| f)
            .unwrap_or_default();
        let attrs = template_attributes(text);
        (
            TemplateInfo {
                path: path.to_path_buf(),
                error,
                fields,
            },
            attrs,
        )
    }
}

/// The nearest ancestor folder of `path` holding a `herald.toml`.
pub fn find_root(path: &Path) -> Option<PathBuf> {
    herald_project::find_root(path)
}

/// `path` relative to `root`, `/`-separated.
fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// How a file at `path` is checked.
pub fn role_of(path: &Path) -> Role {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let root = find_root(path);
    match ext {
        "rhai" => match &root {
            None => Role::Workflow,
            Some(r) if path.parent() == Some(&r.join("workflows")) => Role::Workflow,
            Some(_) => Role::OtherScript,
        },
        "liquid" | "mjml" => Role::Template,
        _ => Role::Other,
    }
}

fn stamp(p: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn hash_text(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Event and attribute names a script mentions, found lexically (works on broken scripts too).
pub fn lexical_facts(text: &str) -> ScriptFacts {
    let toks: Vec<Token> = lex(text).into_iter().filter(|t| !t.is_comment()).collect();
    let mut facts = ScriptFacts::default();
    for (i, t) in toks.iter().enumerate() {
        if t.kind != Kind::Ident {
            continue;
        }
        let name = t.text(text);
        let next = |k: usize| toks.get(i + k);
        match name {
            "on_event" | "wait_for" | "goal" => {
                if let (Some(p), Some(s)) = (next(1), next(2)) {
                    if p.is(text, "(") && matches!(s.kind, Kind::Str { closed: true }) {
                        let v = s.str_value(text);
                        if !v.is_empty() {
                            facts.events.insert(v.to_string());
                        }
                    }
                }
            }
            "contact" => {
                if let (Some(dot), Some(attr)) = (next(1), next(2)) {
                    if (dot.is(text, ".") || dot.is(text, "?.")) && attr.kind == Kind::Ident {
                        facts.attributes.insert(attr.text(text).to_string());
                    }
                }
            }
            // update(#{ key: value, other: value })
            "update"
                if next(1).is_some_and(|t| t.is(text, "("))
                    && next(2).is_some_and(|t| t.is(text, "#{")) =>
            {
                let mut depth = 0usize;
                let mut k = i + 3;
                while let Some(t) = toks.get(k) {
                    let s = t.text(text);
                    if t.kind == Kind::Punct && matches!(s, "(" | "[" | "{" | "#{") {
                        depth += 1;
                    } else if t.kind == Kind::Punct && matches!(s, ")" | "]" | "}") {
                        if depth == 0 {
                            break;
                        }
                        depth -= 1;
                    } else if depth == 0
                        && (t.kind == Kind::Ident || matches!(t.kind, Kind::Str { .. }))
                        && toks.get(k + 1).is_some_and(|c| c.is(text, ":"))
                        && toks
                            .get(k - 1)
                            .is_some_and(|p| p.is(text, "#{") || p.is(text, ","))
                    {
                        let key = if t.is_str() {
                            t.str_value(text)
                        } else {
                            t.text(text)
                        };
                        if !key.is_empty() {
                            facts.attributes.insert(key.to_string());
                        }
                    }
                    k += 1;
                }
            }
            _ => {}
        }
    }
    facts
}

/// `contact.xxx` in a Liquid template.
fn template_attributes(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("contact.") {
        let before_ok = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
        let after = &rest[i + "contact.".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if before_ok && !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
            out.insert(name);
        }
        rest = after;
    }
    out
}

/// Compile a template as the daemon does: every front-matter value and the body are Liquid.
fn compile_template(parser: &liquid::Parser, text: &str) -> Result<(), String> {
    let (fields, body) = herald_dsl::template::split_front_matter(text)?;
    for (k, v) in fields {
        parser
            .parse(&v)
            .map_err(|e| format!("front matter `{k}`: {e}"))?;
    }
    parser.parse(body).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_facts_find_events_and_attributes() {
        let src = r#"workflow("w").on_event("signed_up").goal("paid", days(3));
fn run(contact, trigger) {
    let x = wait_for("opened", days(1));
    if contact.plan == "pro" { update(#{ lifecycle: "mql", "score": 3, nested: #{ no: 1 } }); }
    // contact.commented_out
}"#;
        let f = lexical_facts(src);
        assert_eq!(
            f.events.iter().collect::<Vec<_>>(),
            ["opened", "paid", "signed_up"]
        );
        assert_eq!(
            f.attributes.iter().collect::<Vec<_>>(),
            ["lifecycle", "nested", "plan", "score"]
        );
    }

    #[test]
    fn template_attributes_skip_lookalikes() {
        let a = template_attributes("{{ contact.first_name }} {{ mycontact.x }} {{contact.plan}}");
        assert_eq!(a.iter().collect::<Vec<_>>(), ["first_name", "plan"]);
    }
}
