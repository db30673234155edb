//! `plugin.toml`, the manifest that sits next to `plugin.wasm`.
//!
//! ```toml
//! id = "twilio-sms"                 # [a-z0-9-]+, equals describe().id
//! version = "0.1.0"                 # equals describe().version
//! api_version = "0.1.0"             # herald:channel version built against
//! description = "SMS via Twilio"    # optional
//! wasm = "plugin.wasm"              # optional, default plugin.wasm
//! sha256 = "…64 hex digits…"        # digest of the wasm file, checked on load
//! allowed_hosts = ["api.twilio.com"]
//! secrets = ["TWILIO_AUTH_TOKEN"]   # names the plugin may reference
//! smtp = false                      # whether it uses the smtp capability
//! config_schema = '{"type":"object"}'  # JSON Schema (string), equals describe()'s
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::PluginError;

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
    /// Read and validate `dir/plugin.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, PluginError> {
        let path = dir.join("plugin.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| PluginError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parse and validate manifest text (`path` is used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, PluginError> {
        let bad = |message: String| PluginError::Manifest {
            path: path.to_path_buf(),
            message,
        };
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
        for h in &m.allowed_hosts {
            crate::net::HostPattern::parse(h).map_err(|e| bad(format!("allowed_hosts: {e}")))?;
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
pub fn check_api_version(version: &str) -> Result<(), PluginError> {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let err = || PluginError::ApiVersion {
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

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
id = "demo"
version = "1.2.3"
api_version = "0.1.0"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
allowed_hosts = ["api.example.com", "*.example.org", "127.0.0.1:8080"]
secrets = ["TOKEN"]
"#;

    #[test]
    fn parses_valid_manifest() {
        let m = Manifest::parse(OK, Path::new("plugin.toml")).unwrap();
        assert_eq!(m.id, "demo");
        assert_eq!(m.wasm, "plugin.wasm");
        assert!(!m.smtp);
    }

    #[test]
    fn rejects_bad_fields() {
        let bad_id = OK.replace("id = \"demo\"", "id = \"Demo!\"");
        assert!(Manifest::parse(&bad_id, Path::new("p")).is_err());
        let bad_api = OK.replace("api_version = \"0.1.0\"", "api_version = \"0.2.0\"");
        assert!(matches!(
            Manifest::parse(&bad_api, Path::new("p")),
            Err(PluginError::ApiVersion { .. })
        ));
        let unknown = format!("{OK}\nfoo = 1\n");
        assert!(Manifest::parse(&unknown, Path::new("p")).is_err());
        let bad_sha = OK.replace(
            "0000000000000000000000000000000000000000000000000000000000000000",
            "xyz",
        );
        assert!(Manifest::parse(&bad_sha, Path::new("p")).is_err());
        let bad_host = OK.replace("\"api.example.com\"", "\"http://api.example.com/\"");
        assert!(Manifest::parse(&bad_host, Path::new("p")).is_err());
    }
}
