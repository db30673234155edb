//! Herald's standard library as the editor sees it: module docs, each function's signature and
//! `///` documentation, and a file on disk to jump to (the modules are embedded in the binary,
//! so their source is written out once to a cache folder).

use std::path::PathBuf;
use std::sync::OnceLock;

use herald_stdlib::{StdModule, MODULES};

use crate::outline::{outline, FnInfo};

/// One stdlib module with its public functions.
#[derive(Debug)]
pub struct ModuleInfo {
    /// The module.
    pub module: &'static StdModule,
    /// Its public functions.
    pub functions: Vec<FnInfo>,
}

impl ModuleInfo {
    /// `herald/<name>`.
    pub fn import_path(&self) -> String {
        format!("herald/{}", self.module.name)
    }

    /// A function by name.
    pub fn function(&self, name: &str) -> Option<&FnInfo> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// Every stdlib module, parsed once.
pub fn modules() -> &'static [ModuleInfo] {
    static INFO: OnceLock<Vec<ModuleInfo>> = OnceLock::new();
    INFO.get_or_init(|| {
        MODULES
            .iter()
            .map(|m| ModuleInfo {
                module: m,
                functions: outline(m.source)
                    .functions
                    .into_iter()
                    .filter(|f| !f.private)
                    .collect(),
            })
            .collect()
    })
}

/// A module by import path (`herald/text`).
pub fn by_path(path: &str) -> Option<&'static ModuleInfo> {
    let name = path.strip_prefix("herald/")?;
    modules().iter().find(|m| m.module.name == name)
}

/// The module's source written to a cache folder (once per process, rewritten if it differs),
/// for go-to-definition.
pub fn source_file(info: &ModuleInfo) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("herald-lsp-{}", env!("CARGO_PKG_VERSION")));
    let path = dir
        .join("herald")
        .join(format!("{}.rhai", info.module.name));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(info.module.source) {
        std::fs::create_dir_all(path.parent()?).ok()?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, info.module.source).ok()?;
        std::fs::rename(&tmp, &path).ok()?;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_is_parsed_with_documented_functions() {
        for m in modules() {
            assert!(
                !m.functions.is_empty(),
                "{} has no functions",
                m.module.name
            );
            for f in &m.functions {
                assert!(
                    !f.doc.is_empty(),
                    "{}::{} is undocumented",
                    m.module.name,
                    f.name
                );
            }
            let file = source_file(m).expect("written");
            assert_eq!(std::fs::read_to_string(file).unwrap(), m.module.source);
        }
        assert!(by_path("herald/text")
            .unwrap()
            .function("first_name")
            .is_some());
        assert!(by_path("text").is_none());
    }
}
