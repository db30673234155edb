//! # herald-project — one loader and checker for a Herald project
//!
//! A project is a folder: `herald.toml`, `workflows/*.rhai`, `segments/*.rhai`,
//! `scoring.rhai` and `templates/*.liquid` / `*.mjml`. [`check`] reads it through a
//! [`Sources`] (the disk, or the disk with an editor's unsaved buffers laid over it), checks
//! every file, and returns every finding attached to the file it is about, with the loaded
//! [`Project`] when nothing is an error.
//!
//! The daemon, hot reload, `herald check` and the language server all call [`check`]; the
//! editor shows a file exactly the diagnostics `herald check` reports for it. What is not here:
//! loading a plugin component (wasmtime), which only the daemon and `herald check` do.
#![warn(missing_docs)]

pub mod sources;
pub mod templates;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_config::{ChannelKind, Config};
use herald_dsl::{
    check_scoring, check_script, check_segment, Diagnostic, LoadedScoring, LoadedSegment,
    LoadedWorkflow, ProjectContext,
};
use sha2::{Digest, Sha256};

pub use sources::{DiskSources, Overlay, Sources};
use templates::Templates;

/// `herald.toml` cannot be read or is not valid.
pub const CONFIG_INVALID: &str = "C001";
/// A channel's settings are not valid.
pub const CHANNEL_INVALID: &str = "C002";
/// A plugin channel's folder does not hold a valid plugin (manifest, component digest).
pub const PLUGIN_INVALID: &str = "C003";
/// A plugin declares a secret the channel's grant does not supply.
pub const PLUGIN_SECRET_MISSING: &str = "C004";
/// A plugin channel's `config` does not match the plugin's `config_schema`.
pub const PLUGIN_CONFIG_INVALID: &str = "C005";
/// A template does not compile (or cannot be read, or exists twice).
pub const TEMPLATE_INVALID: &str = "L001";
/// A template reads a variable that can never be set.
pub const TEMPLATE_UNKNOWN_VARIABLE: &str = "L002";
/// A template names no topic though the project declares topics (and no `default_topic`).
pub const TEMPLATE_NO_TOPIC: &str = "L003";
/// A template names a topic the project does not declare.
pub const TEMPLATE_UNKNOWN_TOPIC: &str = "L004";
/// A script cannot be read, or declares a name another file already declares.
pub const SCRIPT_CONFLICT: &str = "H020";

/// One version of one workflow script.
pub struct WorkflowVersion {
    /// sha256 of the source.
    pub hash: String,
    /// Path relative to the project.
    pub path: String,
    /// The source text.
    pub source: String,
    /// Compiled script and declaration.
    pub loaded: LoadedWorkflow,
}

/// One version of one segment definition.
pub struct SegmentVersion {
    /// sha256 of the source.
    pub hash: String,
    /// Path relative to the project.
    pub path: String,
    /// Compiled segment.
    pub loaded: LoadedSegment,
}

/// Findings about one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Path relative to the project (`/`-separated).
    pub path: String,
    /// The text that was checked.
    pub source: String,
    /// What is wrong with it, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

/// Every finding of one check, by file.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Files with findings, in the order they were checked.
    pub files: Vec<FileReport>,
}

impl CheckReport {
    /// Any error at all?
    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    /// How many findings are errors.
    pub fn error_count(&self) -> usize {
        self.all().filter(|d| d.is_error()).count()
    }

    /// Every finding.
    pub fn all(&self) -> impl Iterator<Item = &Diagnostic> {
        self.files.iter().flat_map(|f| f.diagnostics.iter())
    }

    /// The findings about the file at `path` (relative to the project).
    pub fn for_file(&self, path: &str) -> &[Diagnostic] {
        self.files
            .iter()
            .find(|f| f.path == path)
            .map_or(&[], |f| f.diagnostics.as_slice())
    }

    fn push(&mut self, path: &str, source: &str, d: Diagnostic) {
        match self.files.iter_mut().find(|f| f.path == path) {
            Some(f) => f.diagnostics.push(d),
            None => self.files.push(FileReport {
                path: path.to_string(),
                source: source.to_string(),
                diagnostics: vec![d],
            }),
        }
    }

    fn extend(&mut self, path: &str, source: &str, ds: Vec<Diagnostic>) {
        for d in ds {
            self.push(path, source, d);
        }
    }

    /// Render everything like a compiler would: settings and template findings first, one
    /// line each (their messages carry their own position), then script findings with the
    /// offending source underlined.
    pub fn render(&self, color: bool) -> String {
        let line_style = |d: &Diagnostic| !d.code.starts_with('H');
        let mut out = String::new();
        for errors in [true, false] {
            for f in &self.files {
                for d in f
                    .diagnostics
                    .iter()
                    .filter(|d| line_style(d) && d.is_error() == errors)
                {
                    let kind = if errors { "error" } else { "warning" };
                    if d.code == TEMPLATE_UNKNOWN_VARIABLE {
                        let (line, _) = d.line_col(&f.source);
                        out.push_str(&format!("{kind}: {}:{line}: {}\n", d.file, d.message));
                    } else {
                        out.push_str(&format!("{kind}: {}: {}\n", d.file, d.message));
                    }
                }
            }
        }
        for f in &self.files {
            let script: Vec<Diagnostic> = f
                .diagnostics
                .iter()
                .filter(|d| !line_style(d))
                .cloned()
                .collect();
            if !script.is_empty() {
                out.push_str(&herald_dsl::render_diagnostics(&script, &f.source, color));
            }
        }
        out
    }
}

/// A loaded project.
pub struct Project {
    /// The project directory.
    pub dir: PathBuf,
    /// `herald.toml`.
    pub config: Config,
    /// Workflows by name.
    pub workflows: BTreeMap<String, Arc<WorkflowVersion>>,
    /// Templates.
    pub templates: Arc<Templates>,
    /// Segments by name.
    pub segments: BTreeMap<String, Arc<SegmentVersion>>,
    /// `scoring.rhai`, if the project has one.
    pub scoring: Option<Arc<LoadedScoring>>,
    /// Broadcasts by name (`broadcasts/*.rhai`), each as the workflow it runs as: its
    /// `source` is the file plus the generated `fn run` when the file has none.
    pub broadcasts: BTreeMap<String, Arc<WorkflowVersion>>,
}

/// What one check of a project found.
pub struct Checked {
    /// Every finding, by file.
    pub report: CheckReport,
    /// The names scripts were checked against; `None` when `herald.toml` is unusable (then
    /// scripts get only the checks that need no project).
    pub context: Option<ProjectContext>,
    /// The project, when nothing is an error.
    pub project: Option<Project>,
}

/// Content hash of a script.
pub fn script_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

/// The names scripts may refer to.
pub fn context_for(
    config: &Config,
    templates: &Templates,
    workflows: impl IntoIterator<Item = String>,
) -> ProjectContext {
    ProjectContext {
        channels: config
            .channels
            .keys()
            .map(|k| (k.clone(), Vec::new()))
            .collect(),
        templates: templates.names().cloned().collect(),
        workflows: workflows.into_iter().collect(),
        ..Default::default()
    }
}

/// How a file of a project is loaded, decided by where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `herald.toml`.
    Config,
    /// `workflows/*.rhai`.
    Workflow,
    /// `segments/*.rhai`.
    Segment,
    /// `scoring.rhai`.
    Scoring,
    /// `templates/*.liquid`, `templates/*.mjml`.
    Template,
    /// `broadcasts/*.rhai`.
    Broadcast,
    /// Anything else: not part of what the daemon loads.
    Other,
}

/// The kind of the file at `rel` (relative to the project, `/`-separated).
pub fn file_kind(rel: &str) -> FileKind {
    match rel.split_once('/') {
        None if rel == "herald.toml" => FileKind::Config,
        None if rel == "scoring.rhai" => FileKind::Scoring,
        Some(("workflows", name)) if !name.contains('/') && name.ends_with(".rhai") => {
            FileKind::Workflow
        }
        Some(("segments", name)) if !name.contains('/') && name.ends_with(".rhai") => {
            FileKind::Segment
        }
        Some(("broadcasts", name)) if !name.contains('/') && name.ends_with(".rhai") => {
            FileKind::Broadcast
        }
        Some(("templates", name))
            if !name.contains('/')
                && (templates::template_name(name).is_some()
                    || templates::html_part_name(name).is_some()) =>
        {
            FileKind::Template
        }
        _ => FileKind::Other,
    }
}

/// The folder of `path` holding the project it belongs to: the nearest ancestor with a
/// `herald.toml`.
pub fn find_root(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .find(|d| d.join("herald.toml").is_file())
        .map(Path::to_path_buf)
}

/// The `.rhai` files of `folder`, read; a file that cannot be read is a finding.
fn read_scripts(
    sources: &dyn Sources,
    folder: &str,
    report: &mut CheckReport,
) -> Vec<(String, String)> {
    sources
        .list(folder)
        .into_iter()
        .filter(|n| n.ends_with(".rhai"))
        .filter_map(|name| {
            let rel = format!("{folder}/{name}");
            match sources.read(&rel) {
                Ok(s) => Some((rel, s)),
                Err(e) => {
                    report.push(
                        &rel,
                        "",
                        Diagnostic::error(SCRIPT_CONFLICT, &rel, 0..0, format!("cannot read: {e}")),
                    );
                    None
                }
            }
        })
        .collect()
}

/// Where `needle` first appears in `source`, or the start of the file.
fn range_of(source: &str, needle: &str) -> std::ops::Range<usize> {
    source
        .find(needle)
        .map_or(0..0, |start| start..start + needle.len())
}

/// Where `key` is set in the TOML table `table` (`[table]` and the lines after it, up to the
/// next table header), if it is written that way.
fn table_key_range(source: &str, table: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    let mut inside = false;
    for line in source.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed.trim_start_matches('[').trim_end_matches(']').trim() == table;
        } else if inside {
            let lead = line.len() - line.trim_start().len();
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(offset + lead..offset + lead + key.len());
                }
            }
        }
        offset += line.len();
    }
    None
}

/// The byte range of 1-based `line` in `source`.
fn line_range(source: &str, line: usize) -> std::ops::Range<usize> {
    let mut start = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return start..start + l.trim_end_matches(['\r', '\n']).len();
        }
        start += l.len();
    }
    0..0
}

/// Read and check `herald.toml`.
fn check_config(sources: &dyn Sources, report: &mut CheckReport) -> Option<Config> {
    let file = "herald.toml";
    let text = match sources.read(file) {
        Ok(t) => t,
        Err(e) => {
            report.push(
                file,
                "",
                Diagnostic::error(CONFIG_INVALID, file, 0..0, format!("cannot be read: {e}")),
            );
            return None;
        }
    };
    let config = match toml::from_str::<Config>(&text) {
        Ok(c) => c,
        Err(e) => {
            let range = e.span().unwrap_or(0..0);
            let d = Diagnostic::error(CONFIG_INVALID, file, range, e.to_string())
                .with_label(e.message().to_string());
            report.push(file, &text, d);
            return None;
        }
    };
    for advice in config.auth.warnings() {
        let d = Diagnostic::warning(CONFIG_INVALID, file, range_of(&text, "write_keys"), advice)
            .with_label("server keys");
        report.push(file, &text, d);
    }
    for advice in config.server.rate_limits.warnings() {
        let d = Diagnostic::warning(
            CONFIG_INVALID,
            file,
            range_of(&text, "trusted_proxies"),
            advice,
        )
        .with_label("trusts every peer");
        report.push(file, &text, d);
    }
    for problem in config.auth.problems() {
        let d = Diagnostic::error(CONFIG_INVALID, file, range_of(&text, "[auth]"), problem)
            .with_label("credentials");
        report.push(file, &text, d);
    }
    for problem in config.limits.problems() {
        let d = Diagnostic::error(CONFIG_INVALID, file, range_of(&text, "[limits]"), problem)
            .with_label("limit");
        report.push(file, &text, d);
    }
    for (name, ch) in &config.channels {
        if let ChannelKind::Webhook { url, .. } = &ch.kind {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                let d = Diagnostic::error(
                    CHANNEL_INVALID,
                    file,
                    range_of(&text, &format!("\"{url}\"")),
                    format!("channel \"{name}\": url must start with http:// or https://"),
                )
                .with_label("not an http(s) URL");
                report.push(file, &text, d);
            }
        }
    }
    if config.analytics.timezone.parse::<chrono_tz::Tz>().is_err() {
        let tz = &config.analytics.timezone;
        let d = Diagnostic::error(
            CONFIG_INVALID,
            file,
            range_of(&text, &format!("\"{tz}\"")),
            format!(
                "[analytics] timezone: \"{tz}\" is not an IANA timezone (e.g. \"Europe/Berlin\")"
            ),
        )
        .with_label("unknown timezone");
        report.push(file, &text, d);
    }
    if config.analytics.hourly_days < 2 {
        let d = Diagnostic::error(
            CONFIG_INVALID,
            file,
            range_of(&text, "hourly_days"),
            "[analytics] hourly_days: keep the hourly counters for at least 2 days",
        )
        .with_label("too short");
        report.push(file, &text, d);
    }
    for problem in topic_problems(&config) {
        let d = Diagnostic::error(CONFIG_INVALID, file, range_of(&text, &problem.0), problem.1)
            .with_label("topics");
        report.push(file, &text, d);
    }
    check_plugins(sources, &config, &text, report);
    Some(config)
}

/// Mistakes in `[topics]`, `[policy]` and `[server] public_url`: (text to point at, message).
fn topic_problems(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in config.topics.keys() {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            out.push((
                format!("[topics.{name}]"),
                format!("topic `{name}`: a topic name is lower-case letters, digits, `_` and `-`"),
            ));
        }
        if name == herald_config::TRANSACTIONAL_TOPIC {
            out.push((
                format!("[topics.{name}]"),
                "`transactional` is built in (no consent, no unsubscribe link) and cannot be \
                 declared"
                    .to_string(),
            ));
        }
    }
    if let Some(t) = &config.policy.default_topic {
        if t != herald_config::TRANSACTIONAL_TOPIC && !config.topics.contains_key(t) {
            out.push((
                "default_topic".into(),
                format!("[policy] default_topic `{t}` is not a declared topic ([topics.{t}])"),
            ));
        }
    }
    for cap in &config.policy.caps {
        if let Some(p) = cap.problem() {
            out.push(("[[policy.caps]]".into(), format!("[[policy.caps]]: {p}")));
        }
        for ch in &cap.channels {
            if !config.channels.contains_key(ch) {
                out.push((
                    format!("\"{ch}\""),
                    format!(
                        "[[policy.caps]] names channel `{ch}`, which herald.toml does not declare"
                    ),
                ));
            }
        }
    }
    for (ch, q) in &config.policy.quiet_hours {
        if !config.channels.contains_key(ch) {
            out.push((
                "[policy.quiet_hours]".into(),
                format!(
                    "[policy.quiet_hours] names channel `{ch}`, which herald.toml does not declare"
                ),
            ));
        }
        for t in [&q.start, &q.end] {
            if herald_config::parse_hh_mm(t).is_none() {
                out.push((
                    format!("\"{t}\""),
                    format!("[policy.quiet_hours] {ch}: `{t}` is not a time of day (HH:MM)"),
                ));
            }
        }
    }
    if let Some(u) = &config.server.public_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(['?', '#']) {
            out.push((
                "public_url".into(),
                format!("[server] public_url `{u}` must be an http:// or https:// URL without query or fragment"),
            ));
        }
    }
    out
}

/// Every template names a declared topic (or `transactional`), or takes `default_topic`.
fn check_template_topics(config: &Config, files: &[(String, String)], report: &mut CheckReport) {
    for (file, source) in files {
        // An HTML part has no front matter: its `.liquid` names the topic.
        if file.ends_with(".html") {
            continue;
        }
        let Ok((fields, _)) = herald_dsl::template::split_front_matter(source) else {
            continue;
        };
        let topic = fields.iter().find(|(k, _)| k == "topic").map(|(_, v)| v);
        match topic {
            None if !config.topics.is_empty() && config.policy.default_topic.is_none() => {
                let known = config.topics.keys().cloned().collect::<Vec<_>>().join(", ");
                let d = Diagnostic::error(
                    TEMPLATE_NO_TOPIC,
                    file,
                    0..source.find('\n').unwrap_or(source.len()),
                    format!(
                        "this template names no topic: add `topic: …` to its front matter \
                         ({known}, or transactional), or set [policy] default_topic"
                    ),
                )
                .with_label("no topic");
                report.push(file, source, d);
            }
            Some(t)
                if t != herald_config::TRANSACTIONAL_TOPIC && !config.topics.contains_key(t) =>
            {
                let d = Diagnostic::error(
                    TEMPLATE_UNKNOWN_TOPIC,
                    file,
                    table_line_range(source, "topic:"),
                    format!(
                        "topic `{t}` is not declared in herald.toml (add [topics.{t}], or use \
                         transactional)"
                    ),
                )
                .with_label("unknown topic");
                report.push(file, source, d);
            }
            _ => {}
        }
    }
}

/// The line of the first line of `source` that starts with `prefix` (after indentation).
fn table_line_range(source: &str, prefix: &str) -> std::ops::Range<usize> {
    let mut offset = 0;
    for line in source.split_inclusive('\n') {
        if line.trim_start().starts_with(prefix) {
            return offset..offset + line.trim_end().len();
        }
        offset += line.len();
    }
    0..0
}

/// The checks of a plugin channel that need no WebAssembly runtime, for plugins in a folder of
/// the project: the manifest, the component's digest, the secrets the grant supplies. (A
/// `bundled:` connector is checked when it is built; loading a component, `describe` and
/// `validate-config` need wasmtime and happen in the daemon and `herald check`.)
fn check_plugins(sources: &dyn Sources, config: &Config, text: &str, report: &mut CheckReport) {
    let file = "herald.toml";
    for (name, ch) in &config.channels {
        let ChannelKind::Plugin { plugin, grant, .. } = &ch.kind else {
            continue;
        };
        if plugin.starts_with("bundled:") {
            continue;
        }
        let at = range_of(text, &format!("\"{plugin}\""));
        let dir = plugin.trim_end_matches('/');
        let invalid = |message: String| {
            Diagnostic::error(
                PLUGIN_INVALID,
                file,
                at.clone(),
                format!("channel \"{name}\": {message}"),
            )
            .with_label("not a valid plugin")
        };
        let manifest = match sources.read(&format!("{dir}/plugin.toml")) {
            Err(e) => {
                report.push(file, text, invalid(format!("{dir}/plugin.toml: {e}")));
                continue;
            }
            Ok(t) => match herald_config::manifest::Manifest::parse(&t) {
                Ok(m) => m,
                Err(e) => {
                    report.push(file, text, invalid(format!("{dir}/plugin.toml: {e}")));
                    continue;
                }
            },
        };
        let wasm = format!("{dir}/{}", manifest.wasm);
        match sources.read_bytes(&wasm) {
            Err(e) => report.push(file, text, invalid(format!("{wasm}: {e}"))),
            Ok(bytes) => {
                let actual = herald_config::manifest::sha256_hex(&bytes);
                if !actual.eq_ignore_ascii_case(&manifest.sha256) {
                    report.push(
                        file,
                        text,
                        invalid(format!(
                            "{wasm} has sha256 {actual}, plugin.toml says {}",
                            manifest.sha256
                        )),
                    );
                }
            }
        }
        if let Some(schema) = manifest.config_schema_json() {
            if let Err(message) =
                herald_config::manifest::check_config_schema(&schema, &grant.plugin_config())
            {
                report.push(
                    file,
                    text,
                    Diagnostic::error(
                        PLUGIN_CONFIG_INVALID,
                        file,
                        table_key_range(text, &format!("channels.{name}"), "config")
                            .unwrap_or_else(|| at.clone()),
                        format!("channel \"{name}\": {message}"),
                    )
                    .with_label("does not match the plugin's config_schema"),
                );
            }
        }
        for secret in &manifest.secrets {
            if !grant.secrets.contains_key(secret) {
                report.push(
                    file,
                    text,
                    Diagnostic::warning(
                        PLUGIN_SECRET_MISSING,
                        file,
                        at.clone(),
                        format!(
                            "channel \"{name}\": the plugin declares the secret `{secret}`, which \
                             `secrets` does not supply"
                        ),
                    )
                    .with_label("secret not granted"),
                );
            }
        }
    }
}

/// Load `templates/`, reporting what does not compile and what can never be set.
fn check_templates(
    sources: &dyn Sources,
    config: Option<&Config>,
    report: &mut CheckReport,
) -> Templates {
    let (templates, errors, files) = Templates::load_files(sources);
    if let Some(config) = config {
        check_template_topics(config, &files, report);
    }
    let text_of = |file: &str| {
        files
            .iter()
            .find(|(f, _)| f == file)
            .map_or("", |(_, t)| t.as_str())
    };
    for e in errors {
        let source = text_of(&e.file);
        let first_line = 0..source.find('\n').unwrap_or(source.len());
        let d = Diagnostic::error(TEMPLATE_INVALID, &e.file, first_line, e.message)
            .with_label("this template does not compile");
        report.push(&e.file, source, d);
    }
    for (file, source) in &files {
        for u in templates::lint(file, source) {
            let d = Diagnostic::warning(
                TEMPLATE_UNKNOWN_VARIABLE,
                file,
                line_range(source, u.line),
                u.to_string(),
            )
            .with_label("never set");
            report.push(file, source, d);
        }
    }
    templates
}

/// Segments by name and the optional scoring settings.
type Audience = (
    BTreeMap<String, Arc<SegmentVersion>>,
    Option<Arc<LoadedScoring>>,
);

/// Load `segments/*.rhai` and `scoring.rhai`.
fn check_audience(
    sources: &dyn Sources,
    engine: &rhai::Engine,
    report: &mut CheckReport,
) -> Audience {
    let scripts = read_scripts(sources, "segments", report);
    let names: BTreeSet<String> = scripts
        .iter()
        .filter_map(|(p, s)| check_segment(engine, p, s, None).0.map(|l| l.decl.name))
        .collect();
    let mut segments: BTreeMap<String, Arc<SegmentVersion>> = BTreeMap::new();
    for (path, source) in scripts {
        let (loaded, diags) = check_segment(engine, &path, &source, Some(&names));
        report.extend(&path, &source, diags);
        if let Some(l) = loaded {
            let name = l.decl.name.clone();
            if let Some(other) = segments.get(&name) {
                let d = Diagnostic::error(
                    SCRIPT_CONFLICT,
                    &path,
                    range_of(&source, &format!("\"{name}\"")),
                    format!("segment \"{name}\" is already declared in {}", other.path),
                )
                .with_label("declared twice");
                report.push(&path, &source, d);
                continue;
            }
            segments.insert(
                name,
                Arc::new(SegmentVersion {
                    hash: script_hash(&source),
                    path,
                    loaded: l,
                }),
            );
        }
    }
    let scoring = match sources.read("scoring.rhai") {
        Ok(source) => {
            let (loaded, diags) = check_scoring(engine, "scoring.rhai", &source);
            report.extend("scoring.rhai", &source, diags);
            loaded.map(Arc::new)
        }
        Err(_) => None,
    };
    (segments, scoring)
}

/// Check the project that `sources` hold (in folder `dir`): every file, every finding.
pub fn check(dir: &Path, sources: &dyn Sources, engine: &rhai::Engine) -> Checked {
    let mut report = CheckReport::default();
    let config = check_config(sources, &mut report);
    let templates = check_templates(sources, config.as_ref(), &mut report);
    let scripts = read_scripts(sources, "workflows", &mut report);
    // First pass: names, so that triggers can refer to any workflow of the project.
    let names: Vec<String> = scripts
        .iter()
        .filter_map(|(p, s)| {
            check_script(engine, p, s, None)
                .workflow
                .map(|w| w.decl.name)
        })
        .collect();
    let (segments, scoring) = check_audience(sources, engine, &mut report);
    let context = config.as_ref().map(|config| {
        let mut ctx = context_for(config, &templates, names);
        ctx.segments = segments.keys().cloned().collect();
        if let Some(s) = &scoring {
            ctx.stages = s.settings.stages.iter().map(|(n, _)| n.clone()).collect();
            ctx.stages.insert(s.settings.base_stage.clone());
        }
        ctx
    });
    let mut workflows: BTreeMap<String, Arc<WorkflowVersion>> = BTreeMap::new();
    for (path, source) in scripts {
        let r = check_script(engine, &path, &source, context.as_ref());
        let errors = r.has_errors();
        report.extend(&path, &source, r.diagnostics);
        let Some(loaded) = r.workflow.filter(|_| !errors) else {
            continue;
        };
        let name = loaded.decl.name.clone();
        if loaded.decl.broadcast.is_some() {
            let d = Diagnostic::error(
                "H030",
                &path,
                range_of(&source, &format!("\"{name}\"")),
                format!("broadcast \"{name}\" is declared in workflows/"),
            )
            .with_label("not a workflow")
            .with_help("move it to broadcasts/: a broadcast is sent once, when it is scheduled");
            report.push(&path, &source, d);
            continue;
        }
        if let Some(other) = workflows.get(&name) {
            let d = Diagnostic::error(
                SCRIPT_CONFLICT,
                &path,
                range_of(&source, &format!("\"{name}\"")),
                format!("workflow \"{name}\" is already declared in {}", other.path),
            )
            .with_label("declared twice");
            report.push(&path, &source, d);
            continue;
        }
        workflows.insert(
            name,
            Arc::new(WorkflowVersion {
                hash: script_hash(&source),
                path,
                source,
                loaded,
            }),
        );
    }
    let broadcasts = check_broadcasts(
        sources,
        engine,
        config.as_ref(),
        context.as_ref(),
        &templates,
        &workflows,
        &mut report,
    );
    let project = match config {
        Some(config) if !report.has_errors() => Some(Project {
            broadcasts,
            dir: dir.to_path_buf(),
            config,
            workflows,
            templates: Arc::new(templates),
            segments,
            scoring,
        }),
        _ => None,
    };
    Checked {
        report,
        context,
        project,
    }
}

/// Load `broadcasts/*.rhai`: each file checked as a script, then against the project (its
/// audience, channel, templates and topic, its name unique among workflows and broadcasts).
fn check_broadcasts(
    sources: &dyn Sources,
    engine: &rhai::Engine,
    config: Option<&Config>,
    context: Option<&ProjectContext>,
    templates: &Templates,
    workflows: &BTreeMap<String, Arc<WorkflowVersion>>,
    report: &mut CheckReport,
) -> BTreeMap<String, Arc<WorkflowVersion>> {
    let mut out: BTreeMap<String, Arc<WorkflowVersion>> = BTreeMap::new();
    for (path, source) in read_scripts(sources, "broadcasts", report) {
        let r = herald_dsl::check_broadcast(engine, &path, &source, context);
        let mut errors = r.diagnostics.iter().any(Diagnostic::is_error);
        report.extend(&path, &source, r.diagnostics);
        let Some(loaded) = r.workflow else {
            continue;
        };
        let name = loaded.decl.name.clone();
        let spec = loaded.decl.broadcast.clone().unwrap_or_default();
        let mut problem = |needle: &str, code: &'static str, message: String, label: &str| {
            let at = source.find(needle).map_or_else(
                || line_range(&source, loaded.decl.line),
                |s| s..s + needle.len(),
            );
            report.push(
                &path,
                &source,
                Diagnostic::error(code, &path, at, message).with_label(label.to_string()),
            );
            errors = true;
        };
        if let Some(other) = workflows.get(&name).or_else(|| out.get(&name)) {
            problem(
                &format!("\"{name}\""),
                SCRIPT_CONFLICT,
                format!("\"{name}\" is already declared in {}", other.path),
                "declared twice",
            );
        }
        if let (Some(ctx), Some(segment)) = (context, &spec.audience) {
            if !ctx.segments.contains(segment) {
                let known = ctx.segments.iter().cloned().collect::<Vec<_>>().join(", ");
                problem(
                    &format!("\"{segment}\""),
                    "H031",
                    format!("no segment named \"{segment}\" (segments: {known})"),
                    "unknown segment",
                );
            }
        }
        if let Some(config) = config {
            if let Some(channel) = &spec.channel {
                if !config.channels.contains_key(channel) {
                    problem(
                        &format!("\"{channel}\""),
                        "H002",
                        format!("no channel named \"{channel}\" in herald.toml"),
                        "unknown channel",
                    );
                }
            }
            if let Some(topic) = &spec.topic {
                if topic != herald_config::TRANSACTIONAL_TOPIC && !config.topics.contains_key(topic)
                {
                    problem(
                        &format!("\"{topic}\""),
                        TEMPLATE_UNKNOWN_TOPIC,
                        format!(
                            "topic `{topic}` is not declared in herald.toml (add [topics.{topic}])"
                        ),
                        "unknown topic",
                    );
                }
            }
            let sent: Vec<&String> = spec
                .template
                .iter()
                .chain(spec.arms.iter().map(|(_, t)| t))
                .collect();
            for template in sent {
                let Some(channel) = &spec.channel else { break };
                if !templates.resolves(template, channel) {
                    problem(
                        &format!("\"{template}\""),
                        "H003",
                        format!(
                            "no template \"{template}\" for channel \"{channel}\" in templates/"
                        ),
                        "unknown template",
                    );
                    continue;
                }
                let topic = templates
                    .topic(template, channel)
                    .map(str::to_string)
                    .or_else(|| config.policy.default_topic.clone());
                let declared = |t: &String| {
                    t == herald_config::TRANSACTIONAL_TOPIC || config.topics.contains_key(t)
                };
                if spec.topic.as_ref().is_some_and(declared) && topic != spec.topic {
                    problem(
                        &format!("\"{template}\""),
                        "H031",
                        format!(
                            "template \"{template}\" is on topic `{}`, the broadcast on `{}`: they must agree",
                            topic.as_deref().unwrap_or("none"),
                            spec.topic.as_deref().unwrap_or("none")
                        ),
                        "topic differs",
                    );
                }
            }
        }
        if errors {
            continue;
        }
        out.insert(
            name,
            Arc::new(WorkflowVersion {
                hash: script_hash(&r.source),
                path,
                source: r.source,
                loaded,
            }),
        );
    }
    out
}

impl Project {
    /// Load and check the project in `dir` from disk. The project is returned only when it
    /// has no errors.
    pub fn load(dir: &Path, engine: &rhai::Engine) -> (Option<Project>, CheckReport) {
        let checked = check(dir, &DiskSources::new(dir), engine);
        (checked.project, checked.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_told_apart_by_where_they_sit() {
        assert_eq!(file_kind("herald.toml"), FileKind::Config);
        assert_eq!(file_kind("workflows/w.rhai"), FileKind::Workflow);
        assert_eq!(file_kind("segments/s.rhai"), FileKind::Segment);
        assert_eq!(file_kind("scoring.rhai"), FileKind::Scoring);
        assert_eq!(file_kind("templates/a.liquid"), FileKind::Template);
        assert_eq!(file_kind("templates/a.mjml"), FileKind::Template);
        assert_eq!(file_kind("templates/a.txt"), FileKind::Other);
        assert_eq!(file_kind("workflows/sub/w.rhai"), FileKind::Other);
        assert_eq!(file_kind("tests/t.rhai"), FileKind::Other);
    }

    #[test]
    fn a_config_error_points_into_herald_toml_and_scripts_are_still_checked() {
        let mut o = Overlay::new(DiskSources::new("/nonexistent-herald-project"));
        o.set(
            "herald.toml",
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n",
        );
        o.set(
            "workflows/w.rhai",
            "workflow(\"w\").on_event(\"x\");\nfn run(contact, trigger) {\n    wait(\"soon\");\n}\n",
        );
        let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
        let c = check(Path::new("/p"), &o, &engine);
        assert!(c.project.is_none() && c.context.is_none());
        let toml = c.report.for_file("herald.toml");
        assert_eq!(toml.len(), 1, "{toml:?}");
        assert_eq!(toml[0].code, CONFIG_INVALID);
        assert!(toml[0].message.contains("lisen"), "{}", toml[0].message);
        assert!(toml[0].range.start > 0, "located: {:?}", toml[0].range);
        assert!(c
            .report
            .for_file("workflows/w.rhai")
            .iter()
            .any(|d| d.code == "H006"));
    }
}
