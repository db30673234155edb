//! `herald plugin inspect DIR|FILE.wasm`: what a component exports and imports,
//! its `describe()` answer and API version — or why it is not a Herald plugin,
//! its manifest checked as the daemon checks it.

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
    /// How the component was compiled for this run.
    pub compiled: Compiled,
}

/// Where `inspect` got the compiled component from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled now; no cache directory was given.
    Now,
    /// Compiled now and saved to the cache directory.
    NowCached(PathBuf),
    /// Taken from the cache directory: no compilation.
    FromCache(PathBuf),
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
        match &self.compiled {
            Compiled::Now => writeln!(f, "compiled: now (no cache)")?,
            Compiled::NowCached(d) => writeln!(f, "compiled: now, saved to {}", d.display())?,
            Compiled::FromCache(d) => writeln!(f, "compiled: reused from {}", d.display())?,
        }
        if let Some(m) = &self.manifest {
            writeln!(f, "manifest (plugin.toml):")?;
            writeln!(f, "  allowed hosts: {}", list(&m.allowed_hosts))?;
            writeln!(f, "  secrets: {}", list(&m.secrets))?;
            writeln!(f, "  smtp: {}", m.smtp)?;
            writeln!(f, "  contact fields: {}", list(&m.contact_fields))?;
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

/// Inspect a plugin folder or a `.wasm` file, compiling without a cache; see
/// [`inspect_with_cache`].
pub fn inspect(path: &Path) -> Result<InspectReport, PluginError> {
    inspect_with_cache(path, None)
}

/// Inspect a plugin folder (its `plugin.toml` names the component) or a `.wasm` file (its
/// `plugin.toml` is the one beside it). The manifest is required and checked as the daemon
/// checks it. Compiled components are kept in (and taken from) `cache_dir`, keyed by the
/// component's SHA-256 and the engine's compatibility hash, as the daemon keeps them.
/// Returns `Err` only when the file cannot be read or is not a WebAssembly component at all
/// (with the precise reason); otherwise the report lists every problem found.
pub fn inspect_with_cache(
    path: &Path,
    cache_dir: Option<PathBuf>,
) -> Result<InspectReport, PluginError> {
    let mut problems = Vec::new();
    let (dir, wasm_path) = if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (dir, Some(path.to_path_buf()))
    };
    // The manifest, read once: it names a folder's component (plugin.wasm unless it says
    // otherwise), and its problems are reported with the component's.
    let manifest_file = dir.join("plugin.toml");
    let manifest_read: Result<Manifest, String> = if manifest_file.exists() {
        std::fs::read_to_string(&manifest_file)
            .map_err(|e| format!("{}: {e}", manifest_file.display()))
            .and_then(|text| {
                crate::manifest::parse(&text, &manifest_file).map_err(|e| e.to_string())
            })
    } else {
        Err(format!(
            "no plugin.toml beside the component ({}): the daemon loads a plugin only with its manifest (id, version, api_version, sha256 and the grants it asks for)",
            manifest_file.display()
        ))
    };
    let wasm_path = wasm_path.unwrap_or_else(|| {
        manifest_read
            .as_ref()
            .map_or_else(|_| dir.join("plugin.wasm"), |m| m.wasm_path(&dir))
    });
    let wasm_path = wasm_path.as_path();
    let bytes = std::fs::read(wasm_path).map_err(|source| PluginError::Io {
        path: wasm_path.to_path_buf(),
        source,
    })?;
    check_component_header(&bytes)?;
    let sha256 = sha256_hex(&bytes);
    if let Some(d) = &cache_dir {
        let _ = std::fs::create_dir_all(d);
    }
    let host = PluginHost::new(cache_dir.clone())?;
    let component = host.compile(&bytes, &sha256, wasm_path)?;
    let compiled = match (&cache_dir, host.compilations()) {
        (None, _) => Compiled::Now,
        (Some(d), 0) => Compiled::FromCache(d.clone()),
        (Some(d), _) => Compiled::NowCached(d.clone()),
    };
    let engine = host.engine();
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let api_version = exports
        .iter()
        .find_map(|e| e.strip_prefix(CONNECTOR_EXPORT)?.strip_prefix('@'))
        .map(str::to_string);
    let revision = check_exports(engine, &component)
        .map_err(|e| problems.push(strip_prefix(e)))
        .ok();
    for i in &imports {
        if !(i.starts_with("herald:channel/") || i.starts_with("wasi:")) {
            problems.push(format!(
                "imports `{i}`, which the Herald host does not provide (only herald:channel/* and wasi:*)"
            ));
        }
    }
    let component_ok = problems.is_empty();
    let manifest = manifest_read.map_err(|e| problems.push(e)).ok();
    let mut description = None;
    // describe() runs whenever the component itself is sound, with or without a manifest.
    if component_ok {
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
        let revision = revision.expect("a sound component has a revision");
        match host.new_inner(&component, revision, shared) {
            Ok(inner) => match inner.call_blocking(crate::host::Call::Describe) {
                Ok((crate::host::Answer::Describe(raw), _)) => {
                    match convert_description(raw, api_version.as_deref().unwrap_or("?")) {
                        Ok(d) => {
                            if let Err(e) = jsonschema::validator_for(&d.config_schema) {
                                problems.push(format!(
                                    "describe().config-schema is not a valid JSON Schema: {e}"
                                ));
                            }
                            description = Some(d)
                        }
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
        if m.api_minor()
            != api_version
                .as_deref()
                .and_then(|v| v.split('.').nth(1)?.parse().ok())
        {
            problems.push(format!(
                "plugin.toml says api_version = \"{}\" but the component implements herald:channel@{}",
                m.api_version,
                api_version.as_deref().unwrap_or("?")
            ));
        }
        if let Err(e) = crate::host::check_contact_fields(m, d) {
            problems.push(strip_prefix(e));
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
        compiled,
    })
}

fn strip_prefix(e: PluginError) -> String {
    match e {
        PluginError::InvalidPlugin(m) => m,
        other => other.to_string(),
    }
}

/// `herald plugin pack DIR`: write into `DIR/plugin.toml` what must follow the component — its
/// `sha256`, the `api_version` it exports, and `config_schema` and `contact_fields` as
/// `describe()` gives them — keeping the rest of the file as the author wrote it (comments
/// too), then inspect the folder as the daemon would load it.
pub fn pack(dir: &Path, cache_dir: Option<PathBuf>) -> Result<InspectReport, PluginError> {
    let manifest_file = dir.join("plugin.toml");
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| PluginError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let bad = |message: String| PluginError::Manifest {
        path: manifest_file.clone(),
        message,
    };
    let mut doc: toml_edit::DocumentMut = read(&manifest_file)?
        .parse()
        .map_err(|e: toml_edit::TomlError| bad(e.to_string()))?;
    let wasm = dir.join(
        doc.get("wasm")
            .and_then(|v| v.as_str())
            .unwrap_or("plugin.wasm"),
    );
    let bytes = std::fs::read(&wasm).map_err(|source| PluginError::Io {
        path: wasm.clone(),
        source,
    })?;
    let write = |doc: &toml_edit::DocumentMut| {
        std::fs::write(&manifest_file, doc.to_string()).map_err(|source| PluginError::Io {
            path: manifest_file.clone(),
            source,
        })
    };
    doc["sha256"] = toml_edit::value(sha256_hex(&bytes));
    write(&doc)?;
    let report = inspect_with_cache(dir, cache_dir.clone())?;
    let mut changed = false;
    if let Some(version) = &report.api_version {
        if doc.get("api_version").and_then(|v| v.as_str()) != Some(version.as_str()) {
            doc["api_version"] = toml_edit::value(version.as_str());
            changed = true;
        }
    }
    if let Some(description) = &report.description {
        let declared = doc
            .get("config_schema")
            .and_then(|v| v.as_str())
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
        if declared.as_ref() != Some(&description.config_schema) {
            doc["config_schema"] = toml_edit::value(description.config_schema.to_string());
            changed = true;
        }
        let fields: Vec<&str> = doc
            .get("contact_fields")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if fields != description.contact_fields {
            if description.contact_fields.is_empty() {
                doc.remove("contact_fields");
            } else {
                doc["contact_fields"] = toml_edit::value(
                    description
                        .contact_fields
                        .iter()
                        .map(String::as_str)
                        .collect::<toml_edit::Array>(),
                );
            }
            changed = true;
        }
    }
    if changed {
        write(&doc)?;
        return inspect_with_cache(dir, cache_dir);
    }
    Ok(report)
}
