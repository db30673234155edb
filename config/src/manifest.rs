//! `plugin.toml`, the manifest that sits next to a connector's `plugin.wasm`: its schema and
//! the checks that need no WebAssembly runtime (shared by the plugin host, `herald check` and
//! the editor).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a manifest is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A field is missing or wrong.
    #[error("{0}")]
    Invalid(String),
    /// Built against a `herald:channel` version this Herald does not host.
    #[error("plugin API version {found} is not supported by this host (supports {supported})")]
    ApiVersion {
        /// What the manifest says.
        found: String,
        /// What this host implements.
        supported: String,
    },
}

/// The WIT API version this host implements.
pub const API_VERSION: &str = "0.1.0";

/// A parsed and validated `plugin.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin id.
    pub id: String,
    /// Plugin version.
    pub version: String,
    /// `herald:channel` API version.
    pub api_version: String,
    /// Human description.
    #[serde(default)]
    pub description: Option<String>,
    /// Wasm file name relative to the manifest.
    #[serde(default = "default_wasm")]
    pub wasm: String,
    /// Hex SHA-256 of the wasm file.
    pub sha256: String,
    /// Hosts the plugin needs to call.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Names of secrets the plugin references.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Whether the plugin submits mail through the host's SMTP relay.
    #[serde(default)]
    pub smtp: bool,
    /// JSON Schema of the configuration, as a JSON string.
    #[serde(default)]
    pub config_schema: Option<String>,
}

fn default_wasm() -> String {
    "plugin.wasm".into()
}

impl Manifest {
    /// Parse and validate manifest text (allowed host patterns are checked by the plugin host).
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let bad = ManifestError::Invalid;
        let m: Manifest = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if m.id.is_empty()
            || !m
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad(format!(
                "`id` must be non-empty lower-case letters, digits and dashes, got `{}`",
                m.id
            )));
        }
        if m.version.split('.').count() != 3 {
            return Err(bad(format!(
                "`version` must be semver MAJOR.MINOR.PATCH, got `{}`",
                m.version
            )));
        }
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("`sha256` must be 64 hex digits".into()));
        }
        if m.wasm.contains("..") || m.wasm.starts_with('/') {
            return Err(bad(
                "`wasm` must be a file name inside the plugin directory".into(),
            ));
        }
        for s in &m.secrets {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(bad(format!(
                    "secret name `{s}` must be letters, digits, `_` or `-`"
                )));
            }
        }
        if let Some(schema) = &m.config_schema {
            serde_json::from_str::<serde_json::Value>(schema)
                .map_err(|e| bad(format!("`config_schema` is not valid JSON: {e}")))?;
        }
        check_api_version(&m.api_version)?;
        Ok(m)
    }

    /// Path of the wasm file for a manifest found in `dir`.
    pub fn wasm_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.wasm)
    }

    /// The config schema as JSON, if declared.
    pub fn config_schema_json(&self) -> Option<serde_json::Value> {
        self.config_schema
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
    }
}

/// Accept `version` when it is compatible with [`API_VERSION`]: same major,
/// and before 1.0 also the same minor.
pub fn check_api_version(version: &str) -> Result<(), ManifestError> {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let err = || ManifestError::ApiVersion {
        found: version.to_string(),
        supported: API_VERSION.to_string(),
    };
    let (maj, min) = parse(version).ok_or_else(err)?;
    let (hmaj, hmin) = parse(API_VERSION).expect("valid host version");
    let ok = maj == hmaj && (hmaj > 0 || min == hmin);
    if ok {
        Ok(())
    } else {
        Err(err())
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
