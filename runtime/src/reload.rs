//! Hot reload: watch the project, debounce bursts (editors that save through a temporary file
//! and a rename produce several events), and reload only when the content changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use sha2::{Digest, Sha256};

use crate::daemon::Shared;
use crate::project::Project;
use crate::sync::LockExt as _;

/// How long the watcher waits for a burst of file events to settle.
pub const DEBOUNCE: Duration = Duration::from_millis(75);

/// Keeps the watcher alive; dropping it stops watching.
pub struct ProjectWatcher {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
}

/// Is this path part of what the daemon serves (as opposed to data, outboxes, editor droppings)?
pub fn is_project_file(project: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(project) else {
        return false;
    };
    let mut parts = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next().unwrap_or_default();
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A directory created or removed as a whole: the files inside may have been written
    // before the watcher saw the directory, so treat it as a change.
    if rel.components().count() == 1
        && matches!(
            first.as_str(),
            "workflows" | "segments" | "templates" | "broadcasts"
        )
    {
        return true;
    }
    match first.as_str() {
        "herald.toml" => true,
        "workflows" => name.ends_with(".rhai"),
        "templates" => {
            name.ends_with(".liquid") || name.ends_with(".mjml") || name.ends_with(".html")
        }
        "segments" | "broadcasts" => name.ends_with(".rhai"),
        "scoring.rhai" => true,
        "plugins" => true,
        _ => false,
    }
}

fn collect(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
}

/// The plugin folders the project's channels name (bundled connectors are in the binary).
pub fn plugin_dirs(project: &Path) -> Vec<PathBuf> {
    let Ok(config) = crate::config::Config::load(project) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = config
        .channels
        .values()
        .filter_map(|c| match &c.kind {
            crate::config::ChannelKind::Plugin { plugin, .. }
                if !plugin.starts_with("bundled:") =>
            {
                Some(project.join(plugin))
            }
            _ => None,
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// A hash over every file that makes up the served project, to tell real changes from
/// identical saves. A plugin folder counts with its manifest's text and its components'
/// size and modification time (hashing megabytes of wasm on every save would be slow).
pub fn fingerprint(project: &Path) -> String {
    let mut files = vec![project.join("herald.toml"), project.join("scoring.rhai")];
    collect(&project.join("workflows"), "rhai", &mut files);
    collect(&project.join("segments"), "rhai", &mut files);
    collect(&project.join("broadcasts"), "rhai", &mut files);
    collect(&project.join("templates"), "liquid", &mut files);
    collect(&project.join("templates"), "mjml", &mut files);
    collect(&project.join("templates"), "html", &mut files);
    let plugins = plugin_dirs(project);
    for dir in &plugins {
        files.push(dir.join("plugin.toml"));
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_default());
        h.update([0]);
    }
    for dir in &plugins {
        let mut wasm = Vec::new();
        collect(dir, "wasm", &mut wasm);
        wasm.sort();
        for f in wasm {
            h.update(f.to_string_lossy().as_bytes());
            if let Ok(m) = std::fs::metadata(&f) {
                h.update(m.len().to_le_bytes());
                let modified = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                h.update(modified.to_le_bytes());
            }
            h.update([0]);
        }
    }
    hex::encode(h.finalize())
}

/// Start watching the project of `shared`.
pub fn watch(shared: Arc<Shared>) -> Result<ProjectWatcher, String> {
    let project = shared
        .project_dir
        .canonicalize()
        .map_err(|e| e.to_string())?;
    let root = project.clone();
    // Plugin folders outside the project are watched as well (those named when the daemon
    // started; one added later is picked up by the next reload's fingerprint).
    let plugin_roots: Vec<PathBuf> = plugin_dirs(&project)
        .into_iter()
        .filter_map(|d| d.canonicalize().ok())
        .collect();
    let outside: Vec<PathBuf> = plugin_roots
        .iter()
        .filter(|d| !d.starts_with(&project))
        .cloned()
        .collect();
    let mut debouncer =
        new_debouncer(
            DEBOUNCE,
            None,
            move |result: DebounceEventResult| match result {
                Ok(events) => {
                    // Reads (including our own, when fingerprinting) are not changes.
                    let relevant = events.iter().any(|e| {
                        !matches!(e.kind, notify_debouncer_full::notify::EventKind::Access(_))
                            && e.paths.iter().any(|p| {
                                is_project_file(&root, p)
                                    || plugin_roots.iter().any(|d| p.starts_with(d))
                            })
                    });
                    if relevant {
                        shared.reload_if_changed();
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "file watcher error");
                    }
                }
            },
        )
        .map_err(|e| e.to_string())?;
    debouncer
        .watch(&project, RecursiveMode::Recursive)
        .map_err(|e| e.to_string())?;
    for dir in &outside {
        if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a plugin folder; reload by hand after replacing it");
        }
    }
    tracing::info!(dir = %project.display(), "watching the project for changes");
    Ok(ProjectWatcher {
        _debouncer: debouncer,
    })
}

impl Shared {
    /// Reload the project from disk; on errors the current version keeps serving.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        *self.fingerprint.locked() = crate::reload::fingerprint(&self.project_dir);
        let (project, report) = Project::load(&self.project_dir, self.engine.rhai());
        let checked = match project {
            None => Err(report.render(false)),
            Some(p) if p.config.server.listen != self.server.listen || p.config.server.data != self.server.data => Err(format!(
                "herald.toml: [server] listen/data changed ({} -> {}, {} -> {}); these need a restart, so nothing of this change was applied\n",
                self.server.listen, p.config.server.listen, self.server.data, p.config.server.data
            )),
            Some(p) => Ok(p),
        };
        let project = match checked {
            Ok(p) => p,
            Err(text) => return self.refused(text),
        };
        let changed = match self.engine.swap_project(&project) {
            Ok(c) => c,
            Err(e) => return self.refused(format!("{e}\n")),
        };
        // Rotated keys and tokens apply with the rest of the change.
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(
            crate::daemon::Credentials::from_config(&project.config.auth),
        );
        self.ingestor.set_limits(project.config.limits.clone());
        // So do changed rate limits; the ones left as they were keep their buckets.
        let limits = self
            .rate_limits()
            .reconfigured(&project.config.server.rate_limits);
        *self.rate_limits.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(limits);
        self.engine.metrics.reload(true);
        {
            let mut stats = self.reload_stats.locked();
            stats.applied += 1;
            stats.last_applied_at = Some(self.engine.clock.now_ms());
        }
        *self.last_reload_error.locked() = None;
        tracing::info!(?changed, "project reloaded");
        Ok(changed)
    }

    /// A reload that was refused: logged, counted and kept for `/v1/status`.
    fn refused(&self, text: String) -> Result<Vec<String>, String> {
        tracing::error!("reload refused; the previous version keeps serving:\n{text}");
        self.engine.metrics.reload(false);
        self.reload_stats.locked().refused += 1;
        *self.last_reload_error.locked() = Some(text.clone());
        Err(text)
    }

    /// Reload when the project's files differ from what was last loaded (the file watcher
    /// calls this after a debounced burst of events).
    pub fn reload_if_changed(&self) {
        let fp = crate::reload::fingerprint(&self.project_dir);
        if *self.fingerprint.locked() == fp {
            self.reload_stats.locked().skipped_identical += 1;
            tracing::debug!("saved files are identical to the loaded project; nothing to do");
            return;
        }
        let _ = self.reload();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_files_trigger_a_reload() {
        let p = Path::new("/p");
        assert!(is_project_file(p, Path::new("/p/herald.toml")));
        assert!(is_project_file(p, Path::new("/p/workflows/welcome.rhai")));
        assert!(is_project_file(p, Path::new("/p/templates/welcome.liquid")));
        assert!(!is_project_file(
            p,
            Path::new("/p/workflows/.welcome.rhai.swp")
        ));
        assert!(!is_project_file(p, Path::new("/p/.herald/data/db")));
        assert!(!is_project_file(
            p,
            Path::new("/p/.herald/outbox/email.jsonl")
        ));
        assert!(!is_project_file(p, Path::new("/elsewhere/herald.toml")));
        assert!(is_project_file(p, Path::new("/p/segments")));
        assert!(is_project_file(p, Path::new("/p/segments/pro.rhai")));
        assert!(is_project_file(p, Path::new("/p/scoring.rhai")));
    }
}
