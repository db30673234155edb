//! `herald plugin inspect FILE.wasm`: what a component exports and imports,
//! its `describe()` answer and API version — or why it is not a Herald plugin.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::host::{check_component_header, check_exports, convert_description, CONNECTOR_EXPORT};
use crate::manifest::{sha256_hex, Manifest};
use crate::state::Shared;
use crate::types::{CallLimits, Description};
use crate::{PluginError, PluginHost};

/// What `inspect` found. `problems` is empty for a valid plugin.
#[derive(Debug, Clone)]
pub struct InspectReport {
    /// The inspected file.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the file (what `plugin.toml`'s `sha256` must say).
    pub sha256: String,
    /// `herald:channel` API version from the connector export name.
    pub api_version: Option<String>,
    /// Component exports (interface names).
    pub exports: Vec<String>,
    /// Component imports (interface names).
    pub imports: Vec<String>,
    /// The `describe()` answer, when the component could be instantiated.
    pub description: Option<Description>,
    /// `plugin.toml` next to the file, when present and parseable.
    pub manifest: Option<Manifest>,
    /// Every reason the file is not a valid, consistent Herald plugin.
    pub problems: Vec<String>,
}

impl InspectReport {
    /// Whether the component is a valid Herald plugin.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(())` when valid, otherwise the problems as [`PluginError::InvalidPlugin`].
    pub fn ensure_valid(&self) -> Result<(), PluginError> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(PluginError::InvalidPlugin(self.problems.join("; ")))
        }
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file: {}", self.path.display())?;
        writeln!(f, "size: {} bytes", self.size)?;
        writeln!(f, "sha256: {}", self.sha256)?;
        writeln!(
            f,
            "api version: {}",
            self.api_version
                .as_deref()
                .unwrap_or("(none: no herald:channel/connector export)")
        )?;
        writeln!(f, "exports:")?;
        for e in &self.exports {
            writeln!(f, "  {e}")?;
        }
        writeln!(f, "imports:")?;
        for i in &self.imports {
            writeln!(f, "  {i}")?;
        }
        match &self.description {
            Some(d) => {
                writeln!(f, "describe():")?;
                writeln!(f, "  id: {}", d.id)?;
                writeln!(f, "  version: {}", d.version)?;
                writeln!(f, "  display name: {}", d.display_name)?;
                writeln!(f, "  delivers messages: {}", d.delivers_messages)?;
                writeln!(f, "  supports idempotency: {}", d.supports_idempotency)?;
                writeln!(
                    f,
                    "  operations:{}",
                    if d.operations.is_empty() {
                        " (none)"
                    } else {
                        ""
                    }
                )?;
                for o in &d.operations {
                    writeln!(f, "    {} - {}", o.name, o.description)?;
                }
                writeln!(f, "  config schema: {}", d.config_schema)?;
            }
            None => writeln!(f, "describe(): (not available)")?,
        }
        if let Some(m) = &self.manifest {
            writeln!(f, "manifest (plugin.toml):")?;
            writeln!(f, "  allowed hosts: {}", list(&m.allowed_hosts))?;
            writeln!(f, "  secrets: {}", list(&m.secrets))?;
            writeln!(f, "  smtp: {}", m.smtp)?;
        }
        if self.problems.is_empty() {
            write!(f, "verdict: valid Herald plugin")
        } else {
            writeln!(f, "verdict: NOT a valid Herald plugin")?;
            for (i, p) in self.problems.iter().enumerate() {
                if i + 1 == self.problems.len() {
                    write!(f, "  - {p}")?;
                } else {
                    writeln!(f, "  - {p}")?;
                }
            }
            Ok(())
        }
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

/// Inspect a `.wasm` file. Returns `Err` only when the file cannot be read
/// or is not a WebAssembly component at all (with the precise reason);
/// otherwise the report lists every problem found.
pub fn inspect(wasm_path: &Path) -> Result<InspectReport, PluginError> {
    let bytes = std::fs::read(wasm_path).map_err(|source| PluginError::Io {
        path: wasm_path.to_path_buf(),
        source,
    })?;
    check_component_header(&bytes)?;
    let sha256 = sha256_hex(&bytes);
    let host = PluginHost::new(None)?;
    let component = host.compile(&bytes, &sha256, wasm_path)?;
    let engine = host.engine();
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let mut problems = Vec::new();
    let api_version = exports
        .iter()
        .find_map(|e| e.strip_prefix(CONNECTOR_EXPORT)?.strip_prefix('@'))
        .map(str::to_string);
    if let Err(e) = check_exports(engine, &component) {
        problems.push(strip_prefix(e));
    }
    for i in &imports {
        if !(i.starts_with("herald:channel/") || i.starts_with("wasi:")) {
            problems.push(format!(
                "imports `{i}`, which the Herald host does not provide (only herald:channel/* and wasi:*)"
            ));
        }
    }
    let manifest_path = wasm_path.parent().map(|d| d.join("plugin.toml"));
    let manifest = match manifest_path.as_deref().filter(|p| p.exists()) {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => match crate::manifest::parse(&text, p) {
                Ok(m) => Some(m),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            Err(e) => {
                problems.push(format!("{}: {e}", p.display()));
                None
            }
        },
        None => None,
    };
    let mut description = None;
    if problems.is_empty() {
        let id = manifest
            .as_ref()
            .map_or("inspect", |m| m.id.as_str())
            .to_string();
        let shared = Shared::new(
            id,
            vec![],
            false,
            Default::default(),
            &Default::default(),
            serde_json::json!({}),
            false,
            None,
            CallLimits::default(),
        )
        .map_err(PluginError::Engine)?;
        match host.new_inner(&component, shared) {
            Ok(inner) => match inner.call_blocking(crate::host::Call::Describe) {
                Ok((crate::host::Answer::Describe(raw), _)) => {
                    match convert_description(raw, api_version.as_deref().unwrap_or("?")) {
                        Ok(d) => description = Some(d),
                        Err(e) => problems.push(strip_prefix(e)),
                    }
                }
                Ok(_) => unreachable!("describe answers with a description"),
                Err(f) => problems.push(format!("describe() failed: {}", f.message)),
            },
            Err(e) => problems.push(strip_prefix(e)),
        }
    }
    if let (Some(m), Some(d)) = (&manifest, &description) {
        if !m.sha256.eq_ignore_ascii_case(&sha256) {
            problems.push(format!(
                "plugin.toml sha256 {} does not match the file ({sha256})",
                m.sha256
            ));
        }
        if m.id != d.id || m.version != d.version {
            problems.push(format!(
                "plugin.toml says {} {} but describe() says {} {}",
                m.id, m.version, d.id, d.version
            ));
        }
        if let Some(schema) = m.config_schema_json() {
            if schema != d.config_schema {
                problems.push("plugin.toml config_schema differs from describe()".into());
            }
        }
    }
    Ok(InspectReport {
        path: wasm_path.to_path_buf(),
        size: bytes.len() as u64,
        sha256,
        api_version,
        exports,
        imports,
        description,
        manifest,
        problems,
    })
}

fn strip_prefix(e: PluginError) -> String {
    match e {
        PluginError::InvalidPlugin(m) => m,
        other => other.to_string(),
    }
}
