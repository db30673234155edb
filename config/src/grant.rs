//! A plugin channel's grant as the operator writes it in `herald.toml`.
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
//! connections = 4                        # connections kept open to the relay
//!
//! [channels.email.smtp.dkim]             # optional: DKIM-sign every message before DATA
//! domain = "shop.example"                # d=; messages whose From is not in it go unsigned
//! selector = "herald2026"                # s=; the key is published at herald2026._domainkey.shop.example
//! private_key = "keys/dkim.pem"          # PEM path (relative: to the project), or env:VAR / file:PATH
//! algorithm = "rsa-sha256"               # or ed25519-sha256
//! # headers = ["From", "To", "Subject"]  # signed header fields (default: see DkimConfig::headers)
//! ```
//!
//! Secret values are references: `env:NAME` (environment variable),
//! `file:PATH` (file contents, trailing newline trimmed). Literal values are
//! refused so secrets do not end up in a committed config file.
//!
//! This is the schema only; the plugin host turns it into a grant
//! (`herald_plugin_host::GrantConfigExt::into_grant`).

use std::collections::HashMap;

use serde::Deserialize;

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

impl GrantConfig {
    /// The plugin's configuration as the plugin sees it: an absent `config` is `{}`.
    pub fn plugin_config(&self) -> serde_json::Value {
        if self.config.is_null() {
            serde_json::json!({})
        } else {
            self.config.clone()
        }
    }
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
    /// Connections to the relay kept open between messages and reused
    /// (default 4). At most this many messages are submitted at once (at
    /// least one); the rest wait for a free connection. It is also the
    /// channel's delivery `concurrency` unless that is set.
    #[serde(default = "default_smtp_connections")]
    pub connections: usize,
    /// DKIM signing of every message submitted to this relay (`[channels.X.smtp.dkim]`).
    #[serde(default)]
    pub dkim: Option<DkimConfig>,
}

/// `[channels.X.smtp.dkim]`: the plugin host signs each message it submits to the relay
/// (RFC 6376, relaxed/relaxed canonicalization) when the message's From domain is `domain`
/// or a subdomain of it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the public key is published as a TXT record at
    /// `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key in PEM form (PKCS#8, or PKCS#1 for RSA): a file path, relative to the
    /// project directory, or a secret reference (`env:VAR` holding the PEM itself, or
    /// `file:PATH` read like other secrets).
    pub private_key: String,
    /// `rsa-sha256` (default) or `ed25519-sha256`; the key must be of that kind.
    #[serde(default)]
    pub algorithm: DkimAlgorithmConfig,
    /// Header fields to sign (`h=`), in addition to the DKIM-Signature itself; each one is
    /// signed as often as it occurs in the message, and `From` must be among them. Default:
    /// From, To, Subject, Date, Message-ID, MIME-Version, Content-Type, Reply-To,
    /// List-Unsubscribe, List-Unsubscribe-Post, Cc.
    pub headers: Option<Vec<String>>,
}

/// A DKIM signing algorithm in config form.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum DkimAlgorithmConfig {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376); an RSA key of 2048 bits or more.
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 over the SHA-256 hash (RFC 8463).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

fn default_smtp_port() -> u16 {
    587
}

fn default_smtp_connections() -> usize {
    4
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

/// `limits = {...}`; unset fields keep the host's defaults.
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
    /// The `[smtp.dkim]` table cannot be used (empty domain, unreadable or unsuitable key, …).
    #[error("smtp.dkim: {0}")]
    Dkim(String),
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
