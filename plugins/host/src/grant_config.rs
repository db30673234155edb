//! Deserialisable form of a [`Grant`], for the operator's `herald.toml`.
//!
//! ```toml
//! [channels.sms]
//! plugin = "plugins/twilio-sms"          # read by the runtime, ignored here
//! allowed_hosts = []                     # extra hosts beyond the manifest's
//! allow_private = false
//! config = { account_sid = "AC…", from = "+14155550199" }
//! secrets = { TWILIO_AUTH_TOKEN = "env:TWILIO_AUTH_TOKEN" }   # or "file:/run/secrets/twilio"
//! limits = { timeout_ms = 15000, max_memory_mb = 64, pool_size = 4, rate_per_second = 10.0, burst = 20 }
//!
//! [channels.email.smtp]
//! host = "smtp.example.com"
//! port = 587
//! security = "starttls"                  # none | starttls | tls
//! username = "herald"
//! password = "env:SMTP_PASSWORD"
//! ```
//!
//! Secret values are references: `env:NAME` (environment variable),
//! `file:PATH` (file contents, trailing newline trimmed). Literal values are
//! refused so secrets do not end up in a committed config file.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::types::{CallLimits, Grant, SmtpRelay, SmtpSecurity};

/// A channel's grant as written in `herald.toml`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GrantConfig {
    /// Extra hosts granted to the plugin.
    pub allowed_hosts: Vec<String>,
    /// Allow private/loopback destinations.
    pub allow_private: bool,
    /// Plugin configuration (passed to `validate-config` and `config.get`).
    pub config: serde_json::Value,
    /// Secret name → `env:VAR` or `file:PATH`.
    pub secrets: HashMap<String, String>,
    /// SMTP relay, for plugins that declare `smtp = true`.
    pub smtp: Option<SmtpConfig>,
    /// Call limits.
    pub limits: LimitsConfig,
    /// Ignored here (the runtime's plugin path); accepted so the whole
    /// channel table can be deserialised.
    pub plugin: Option<String>,
}

/// `[channels.X.smtp]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SmtpConfig {
    /// Relay host.
    pub host: String,
    /// Relay port (default 587).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `none`, `starttls` (default) or `tls`.
    #[serde(default)]
    pub security: SecurityConfig,
    /// AUTH user.
    pub username: Option<String>,
    /// AUTH password reference (`env:` / `file:`).
    pub password: Option<String>,
    /// Timeout in milliseconds (default 30000).
    pub timeout_ms: Option<u64>,
}

fn default_smtp_port() -> u16 {
    587
}

/// SMTP transport security in config form.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecurityConfig {
    /// Plain text.
    None,
    /// STARTTLS (required).
    #[default]
    Starttls,
    /// Implicit TLS.
    Tls,
}

/// `limits = {...}`; unset fields keep [`CallLimits::default`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LimitsConfig {
    /// Wall-clock budget per call.
    pub timeout_ms: Option<u64>,
    /// Memory cap per instance memory, MiB.
    pub max_memory_mb: Option<usize>,
    /// Warm instances kept.
    pub pool_size: Option<usize>,
    /// Sends per second.
    pub rate_per_second: Option<f64>,
    /// Burst size.
    pub burst: Option<u32>,
    /// HTTP requests allowed per call.
    pub max_http_requests_per_call: Option<u32>,
    /// Calls running at once.
    pub max_concurrent_calls: Option<usize>,
}

/// Why a grant could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantConfigError {
    /// A secret reference is not `env:` or `file:`.
    #[error("secret `{name}`: `{reference}` is not a reference; use env:VAR or file:PATH")]
    NotAReference {
        /// Secret name.
        name: String,
        /// What was written.
        reference: String,
    },
    /// The environment variable is not set.
    #[error("secret `{name}`: environment variable `{var}` is not set")]
    MissingEnv {
        /// Secret name.
        name: String,
        /// Variable.
        var: String,
    },
    /// The file could not be read.
    #[error("secret `{name}`: cannot read `{path}`: {message}")]
    File {
        /// Secret name.
        name: String,
        /// Path.
        path: String,
        /// OS error.
        message: String,
    },
}

/// Resolve an `env:` / `file:` secret reference.
pub fn resolve_secret(name: &str, reference: &str) -> Result<String, GrantConfigError> {
    if let Some(var) = reference.strip_prefix("env:") {
        std::env::var(var).map_err(|_| GrantConfigError::MissingEnv {
            name: name.into(),
            var: var.into(),
        })
    } else if let Some(path) = reference.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| GrantConfigError::File {
                name: name.into(),
                path: path.into(),
                message: e.to_string(),
            })
    } else {
        Err(GrantConfigError::NotAReference {
            name: name.into(),
            reference: reference.into(),
        })
    }
}

impl GrantConfig {
    /// Resolve secret references and build the [`Grant`].
    pub fn into_grant(self) -> Result<Grant, GrantConfigError> {
        let mut secrets = HashMap::new();
        for (name, reference) in &self.secrets {
            secrets.insert(name.clone(), resolve_secret(name, reference)?);
        }
        let smtp = match self.smtp {
            None => None,
            Some(s) => {
                let credentials = match (s.username, s.password) {
                    (Some(u), Some(p)) => Some((u, resolve_secret("smtp.password", &p)?)),
                    _ => None,
                };
                Some(SmtpRelay {
                    host: s.host,
                    port: s.port,
                    security: match s.security {
                        SecurityConfig::None => SmtpSecurity::None,
                        SecurityConfig::Starttls => SmtpSecurity::StartTls,
                        SecurityConfig::Tls => SmtpSecurity::Tls,
                    },
                    credentials,
                    timeout: Duration::from_millis(s.timeout_ms.unwrap_or(30_000)),
                })
            }
        };
        let d = CallLimits::default();
        let l = self.limits;
        Ok(Grant {
            allowed_hosts: self.allowed_hosts,
            allow_private: self.allow_private,
            secrets,
            config: if self.config.is_null() {
                serde_json::json!({})
            } else {
                self.config
            },
            smtp,
            limits: CallLimits {
                timeout: l.timeout_ms.map(Duration::from_millis).unwrap_or(d.timeout),
                max_memory_bytes: l
                    .max_memory_mb
                    .map(|m| m << 20)
                    .unwrap_or(d.max_memory_bytes),
                pool_size: l.pool_size.unwrap_or(d.pool_size),
                rate_per_second: l.rate_per_second.or(d.rate_per_second),
                burst: l.burst.unwrap_or(d.burst),
                max_http_body_bytes: d.max_http_body_bytes,
                max_http_requests_per_call: l
                    .max_http_requests_per_call
                    .unwrap_or(d.max_http_requests_per_call),
                max_concurrent_calls: l.max_concurrent_calls.unwrap_or(d.max_concurrent_calls),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_channel_table_and_resolves_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        std::env::set_var("HERALD_TEST_GRANT_PASSWORD", "from-env");
        let text = format!(
            r#"
plugin = "plugins/twilio-sms"
allowed_hosts = ["api.example.com"]
config = {{ account_sid = "AC1", from = "+1555" }}
secrets = {{ TOKEN = "file:{}" }}
limits = {{ timeout_ms = 2500, max_memory_mb = 16, rate_per_second = 5.0 }}
[smtp]
host = "smtp.example.com"
username = "herald"
password = "env:HERALD_TEST_GRANT_PASSWORD"
"#,
            file.display()
        );
        let cfg: GrantConfig = toml::from_str(&text).unwrap();
        let g = cfg.into_grant().unwrap();
        assert_eq!(g.secrets["TOKEN"], "from-file");
        assert_eq!(g.config["account_sid"], "AC1");
        assert_eq!(g.limits.timeout, Duration::from_millis(2500));
        assert_eq!(g.limits.max_memory_bytes, 16 << 20);
        assert_eq!(g.limits.rate_per_second, Some(5.0));
        let smtp = g.smtp.unwrap();
        assert_eq!((smtp.port, smtp.security), (587, SmtpSecurity::StartTls));
        assert_eq!(smtp.credentials, Some(("herald".into(), "from-env".into())));
    }

    #[test]
    fn literal_and_missing_secrets_are_refused() {
        assert!(matches!(
            resolve_secret("T", "hunter2"),
            Err(GrantConfigError::NotAReference { .. })
        ));
        assert!(matches!(
            resolve_secret("T", "env:HERALD_SURELY_UNSET_VARIABLE_123"),
            Err(GrantConfigError::MissingEnv { .. })
        ));
        assert!(matches!(
            resolve_secret("T", "file:/nonexistent/herald/secret"),
            Err(GrantConfigError::File { .. })
        ));
    }
}
