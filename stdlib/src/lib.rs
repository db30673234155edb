//! Rhai modules shipped with Herald.
//!
//! Scripts import them by name, for example `import "herald/text" as text;`. The sources live
//! in `stdlib/modules/*.rhai`, are embedded at build time, and are documented with `///`
//! comments that the language server shows on hover.

/// One module of the standard library.
#[derive(Debug, Clone, Copy)]
pub struct StdModule {
    /// Import path without the `herald/` prefix.
    pub name: &'static str,
    /// Rhai source.
    pub source: &'static str,
    /// What the module is for.
    pub doc: &'static str,
}

/// Every module of the standard library.
pub static MODULES: &[StdModule] = &[
    StdModule {
        name: "text",
        source: include_str!("../modules/text.rhai"),
        doc: "String helpers for personalisation: names, greetings, truncation.",
    },
    StdModule {
        name: "time",
        source: include_str!("../modules/time.rhai"),
        doc: "Arithmetic on millisecond timestamps and durations.",
    },
];

/// Find a module by its import path (`herald/text` or `text`).
pub fn module(path: &str) -> Option<&'static StdModule> {
    let name = path.strip_prefix("herald/").unwrap_or(path);
    MODULES.iter().find(|m| m.name == name)
}
