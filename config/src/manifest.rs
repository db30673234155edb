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

/// The WIT API version this host implements (what new plugins target).
pub const API_VERSION: &str = "0.2.0";

/// Every `herald:channel` version this host loads: the current one and the earlier ones it
/// adapts, newest first.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["0.2.0", "0.1.0"];

/// At most this many `contact_fields` in a manifest.
pub const MAX_CONTACT_FIELDS: usize = 64;

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
    /// The contact fields the plugin receives in `outbound.fields` (API 0.2.0 and later):
    /// nothing else of a contact reaches the plugin.
    #[serde(default)]
    pub contact_fields: Vec<String>,
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
        if m.contact_fields.len() > MAX_CONTACT_FIELDS {
            return Err(bad(format!(
                "`contact_fields` names {} fields; at most {MAX_CONTACT_FIELDS} are allowed",
                m.contact_fields.len()
            )));
        }
        for f in &m.contact_fields {
            if f.is_empty()
                || f.len() > 128
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                return Err(bad(format!(
                    "contact field `{f}` must be letters, digits, `_`, `-` or `.`"
                )));
            }
        }
        if !m.contact_fields.is_empty() && m.api_minor() < Some(2) {
            return Err(bad(format!(
                "`contact_fields` needs api_version 0.2.0 or later (this manifest says {}): \
                 a 0.1.0 plugin receives the template's front matter in `fields`",
                m.api_version
            )));
        }
        Ok(m)
    }

    /// The minor version of `api_version` (the API is before 1.0, so it tells revisions apart).
    pub fn api_minor(&self) -> Option<u64> {
        self.api_version.split('.').nth(1)?.parse().ok()
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

/// Accept `version` when it is compatible with one of [`SUPPORTED_API_VERSIONS`]: same
/// major, and before 1.0 also the same minor.
pub fn check_api_version(version: &str) -> Result<(), ManifestError> {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let err = || ManifestError::ApiVersion {
        found: version.to_string(),
        supported: SUPPORTED_API_VERSIONS.join(" and "),
    };
    let (maj, min) = parse(version).ok_or_else(err)?;
    let ok = SUPPORTED_API_VERSIONS.iter().any(|host| {
        let (hmaj, hmin) = parse(host).expect("valid host version");
        maj == hmaj && (hmaj > 0 || min == hmin)
    });
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

/// Check a channel's `config` against the plugin's `config_schema` (JSON Schema); each
/// mistake is named by where it is (`config.url`).
pub fn check_config_schema(
    schema: &serde_json::Value,
    config: &serde_json::Value,
) -> Result<(), String> {
    if schema.as_object().is_none_or(|o| o.is_empty()) {
        return Ok(());
    }
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("the plugin's config_schema is not a valid JSON Schema: {e}"))?;
    let problems: Vec<String> = validator
        .iter_errors(config)
        .take(10)
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() || at == "/" {
                "config".to_string()
            } else {
                format!("config{}", at.replace('/', "."))
            };
            format!("{at}: {e}")
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "config does not match the plugin's config_schema: {}",
            problems.join("; ")
        ))
    }
}
