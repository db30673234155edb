//! A Herald project on disk: `herald.toml`, `workflows/*.rhai`, `templates/*.liquid`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_dsl::{
    check_scoring, check_script, check_segment, Diagnostic, LoadedScoring, LoadedSegment,
    LoadedWorkflow, ProjectContext,
};
use sha2::{Digest, Sha256};

use crate::config::{ChannelConfig, Config};
use crate::templates::Templates;

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

/// Findings about one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// Path relative to the project.
    pub path: String,
    /// The text that was checked.
    pub source: String,
    /// What is wrong with it.
    pub diagnostics: Vec<Diagnostic>,
}

/// The outcome of checking a project.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Per-file findings (only files with findings).
    pub files: Vec<FileReport>,
    /// Problems that belong to no script (configuration, templates).
    pub errors: Vec<String>,
    /// Findings that do not stop the project from loading.
    pub warnings: Vec<String>,
}

impl CheckReport {
    /// Any error at all?
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
            || self
                .files
                .iter()
                .any(|f| f.diagnostics.iter().any(Diagnostic::is_error))
    }

    /// Render everything like a compiler would.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        for f in &self.files {
            out.push_str(&herald_dsl::render_diagnostics(
                &f.diagnostics,
                &f.source,
                color,
            ));
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

/// Content hash of a script.
pub fn script_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
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

fn read_sources(dir: &Path, sub: &str, report: &mut CheckReport) -> Vec<(String, String)> {
    list(&dir.join(sub), "rhai")
        .into_iter()
        .filter_map(|p| {
            let rel = format!("{sub}/{}", p.file_name()?.to_string_lossy());
            match std::fs::read_to_string(&p) {
                Ok(s) => Some((rel, s)),
                Err(e) => {
                    report.errors.push(format!("{rel}: {e}"));
                    None
                }
            }
        })
        .collect()
}

/// Segments by name and the optional scoring settings.
type Audience = (
    BTreeMap<String, Arc<SegmentVersion>>,
    Option<Arc<LoadedScoring>>,
);

/// Load `segments/*.rhai` and `scoring.rhai`.
fn load_audience(dir: &Path, engine: &rhai::Engine, report: &mut CheckReport) -> Audience {
    let sources = read_sources(dir, "segments", report);
    let names: std::collections::BTreeSet<String> = sources
        .iter()
        .filter_map(|(p, s)| check_segment(engine, p, s, None).0.map(|l| l.decl.name))
        .collect();
    let mut segments = BTreeMap::new();
    for (path, source) in sources {
        let (loaded, diags) = check_segment(engine, &path, &source, Some(&names));
        if !diags.is_empty() {
            report.files.push(FileReport {
                path: path.clone(),
                source: source.clone(),
                diagnostics: diags,
            });
        }
        if let Some(l) = loaded {
            let name = l.decl.name.clone();
            if segments.contains_key(&name) {
                report
                    .errors
                    .push(format!("{path}: segment \"{name}\" is declared twice"));
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
    let scoring = match std::fs::read_to_string(dir.join("scoring.rhai")) {
        Ok(source) => {
            let (loaded, diags) = check_scoring(engine, "scoring.rhai", &source);
            if !diags.is_empty() {
                report.files.push(FileReport {
                    path: "scoring.rhai".into(),
                    source,
                    diagnostics: diags,
                });
            }
            loaded.map(Arc::new)
        }
        Err(_) => None,
    };
    (segments, scoring)
}

impl Project {
    /// Load and check a project. The project is returned only when it has no errors.
    pub fn load(dir: &Path, engine: &rhai::Engine) -> (Option<Project>, CheckReport) {
        let mut report = CheckReport::default();
        let config = match Config::load(dir) {
            Ok(c) => c,
            Err(e) => {
                report.errors.push(e.to_string());
                return (None, report);
            }
        };
        for (name, ch) in &config.channels {
            if let ChannelConfig::Webhook { url, .. } = ch {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    report.errors.push(format!(
                        "herald.toml: channel \"{name}\": url must start with http:// or https://"
                    ));
                }
            }
        }
        let (templates, template_errors) = Templates::load(&dir.join("templates"));
        for e in template_errors {
            report.errors.push(format!("{}: {}", e.file, e.message));
        }
        report
            .warnings
            .extend(crate::templates::lint_dir(&dir.join("templates")));
        let sources: Vec<(String, String)> = list(&dir.join("workflows"), "rhai")
            .into_iter()
            .filter_map(|p| {
                let rel = format!("workflows/{}", p.file_name()?.to_string_lossy());
                match std::fs::read_to_string(&p) {
                    Ok(s) => Some((rel, s)),
                    Err(e) => {
                        report.errors.push(format!("{rel}: {e}"));
                        None
                    }
                }
            })
            .collect();
        // First pass: names, so that triggers can refer to any workflow of the project.
        let names: Vec<String> = sources
            .iter()
            .filter_map(|(p, s)| {
                check_script(engine, p, s, None)
                    .workflow
                    .map(|w| w.decl.name)
            })
            .collect();
        let (segments, scoring) = load_audience(dir, engine, &mut report);
        let mut ctx = context_for(&config, &templates, names);
        ctx.segments = segments.keys().cloned().collect();
        if let Some(s) = &scoring {
            ctx.stages = s.settings.stages.iter().map(|(n, _)| n.clone()).collect();
            ctx.stages.insert(s.settings.base_stage.clone());
        }
        let mut workflows: BTreeMap<String, Arc<WorkflowVersion>> = BTreeMap::new();
        for (path, source) in sources {
            let r = check_script(engine, &path, &source, Some(&ctx));
            let errors = r.has_errors();
            if !r.diagnostics.is_empty() {
                report.files.push(FileReport {
                    path: path.clone(),
                    source: source.clone(),
                    diagnostics: r.diagnostics,
                });
            }
            let Some(loaded) = r.workflow.filter(|_| !errors) else {
                continue;
            };
            let name = loaded.decl.name.clone();
            if let Some(other) = workflows.get(&name) {
                report.errors.push(format!(
                    "{path}: workflow \"{name}\" is already declared in {}",
                    other.path
                ));
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
        if report.has_errors() {
            return (None, report);
        }
        let project = Project {
            dir: dir.to_path_buf(),
            config,
            workflows,
            templates: Arc::new(templates),
            segments,
            scoring,
        };
        (Some(project), report)
    }
}
