//! Where a project's files come from: the disk, or the disk with an editor's unsaved buffers
//! laid over it. The loader reads only through [`Sources`], so the daemon, `herald check` and
//! the language server check the same text the same way.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Read access to a project's files, by `/`-separated paths relative to the project root
/// (`herald.toml`, `workflows/welcome.rhai`).
pub trait Sources {
    /// The text of the file at `rel`; an error of kind `NotFound` when there is none.
    fn read(&self, rel: &str) -> io::Result<String>;
    /// The names of the files directly in the folder `rel_dir` (`workflows`), sorted; empty
    /// when the folder does not exist.
    fn list(&self, rel_dir: &str) -> Vec<String>;
    /// The bytes of the file at `rel` (a plugin's component), which no editor buffer replaces.
    fn read_bytes(&self, rel: &str) -> io::Result<Vec<u8>>;
}

/// A project folder on disk.
#[derive(Debug, Clone)]
pub struct DiskSources {
    root: PathBuf,
}

impl DiskSources {
    /// The project in `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DiskSources { root: root.into() }
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Sources for DiskSources {
    fn read(&self, rel: &str) -> io::Result<String> {
        std::fs::read_to_string(self.root.join(rel))
    }

    fn read_bytes(&self, rel: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.root.join(rel))
    }

    fn list(&self, rel_dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join(rel_dir))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Files of `base` with some replaced (or added) by in-memory text: an editor's open buffers
/// over the files on disk.
#[derive(Debug, Clone)]
pub struct Overlay<S> {
    base: S,
    files: BTreeMap<String, String>,
}

impl<S: Sources> Overlay<S> {
    /// `base` with nothing laid over it yet.
    pub fn new(base: S) -> Self {
        Overlay {
            base,
            files: BTreeMap::new(),
        }
    }

    /// Lay `text` over the file at `rel` (relative to the project, `/`-separated).
    pub fn set(&mut self, rel: impl Into<String>, text: impl Into<String>) {
        self.files.insert(rel.into(), text.into());
    }
}

impl<S: Sources> Sources for Overlay<S> {
    fn read(&self, rel: &str) -> io::Result<String> {
        match self.files.get(rel) {
            Some(text) => Ok(text.clone()),
            None => self.base.read(rel),
        }
    }

    fn read_bytes(&self, rel: &str) -> io::Result<Vec<u8>> {
        self.base.read_bytes(rel)
    }

    fn list(&self, rel_dir: &str) -> Vec<String> {
        let mut names = self.base.list(rel_dir);
        let prefix = format!("{rel_dir}/");
        for rel in self.files.keys() {
            if let Some(name) = rel.strip_prefix(&prefix) {
                if !name.contains('/') && !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_replaces_and_adds_files_over_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::write(dir.path().join("workflows/a.rhai"), "on disk").unwrap();
        std::fs::write(dir.path().join("workflows/b.rhai"), "b").unwrap();
        let mut o = Overlay::new(DiskSources::new(dir.path()));
        o.set("workflows/a.rhai", "unsaved");
        o.set("workflows/new.rhai", "new");
        assert_eq!(o.read("workflows/a.rhai").unwrap(), "unsaved");
        assert_eq!(o.read("workflows/b.rhai").unwrap(), "b");
        assert_eq!(o.list("workflows"), ["a.rhai", "b.rhai", "new.rhai"]);
        assert!(o.list("segments").is_empty());
        assert_eq!(
            o.read("herald.toml").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
