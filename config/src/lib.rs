//! # herald-config — the schema of `herald.toml`
//!
//! The daemon's settings, its channels and its credentials, as serde types. The daemon, `herald
//! check` and the language server read `herald.toml` through this one crate, so they accept and
//! refuse exactly the same files. No IO beyond reading the file itself (and, for plugin
//! grants, resolving `env:`/`file:` secret references when the host asks).
#![warn(missing_docs)]

pub mod grant;
pub mod manifest;
pub mod rate_limits;

pub use rate_limits::RateLimitsConfig;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server.
    #[serde(default)]
    pub server: ServerConfig,
    /// Credentials.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Channels by name.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    /// Engine tuning.
    #[serde(default)]
    pub engine: EngineConfig,
    /// How large a contact may grow.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Subscription topics by name (`[topics.newsletter]`): what a contact can subscribe to
    /// and leave. Once any is declared, every template names its topic (or the policy's
    /// `default_topic` applies).
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
    /// `[policy]`: the delivery policy every send passes.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[analytics]`: the facts and counters behind the reports.
    #[serde(default)]
    pub analytics: AnalyticsConfig,
}

/// `[analytics]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsConfig {
    /// Note a fact with every send result, engagement event and conversion and keep the
    /// report counters (default true). Off, reports stay at zero; a restart applies it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How one goal event that converts runs of several workflows and broadcasts shares its
    /// credit (and revenue) among them: `last_touch` (default: the run whose message came
    /// last), `first_touch`, or `even`.
    #[serde(default)]
    pub attribution: Attribution,
    /// The project's timezone (IANA name, default `UTC`): where a report's days begin and end.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Days the hourly counters are kept (default 90, at least 2); older hours are rolled up
    /// into daily counters (days in `timezone`), so a report over them is per day.
    #[serde(default = "default_hourly_days")]
    pub hourly_days: u32,
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_hourly_days() -> u32 {
    90
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            enabled: true,
            attribution: Attribution::default(),
            timezone: default_timezone(),
            hourly_days: default_hourly_days(),
        }
    }
}

/// An attribution model (`[analytics] attribution`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// The run whose message came last gets the credit.
    #[default]
    LastTouch,
    /// The run whose message came first gets the credit.
    FirstTouch,
    /// Every converted run gets an equal share.
    Even,
}

/// The topic of messages that are never marketing (a receipt, a password reset): consent
/// does not apply to it and it has no unsubscribe link, but a suppressed address (a hard
/// bounce, a complaint) still receives nothing. Always known; not declared in `[topics]`.
pub const TRANSACTIONAL_TOPIC: &str = "transactional";

/// `[topics.NAME]`: a subscription topic.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// What the preference page calls it (default: the topic's name).
    #[serde(default)]
    pub label: Option<String>,
    /// One sentence on the preference page about what the topic sends.
    #[serde(default)]
    pub description: Option<String>,
    /// The consent of a contact who has no record for this topic (default `subscribed`).
    #[serde(default)]
    pub default: ConsentStatus,
}

/// Whether a contact receives a topic.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ConsentStatus {
    /// Receives it.
    #[default]
    Subscribed,
    /// Does not.
    Unsubscribed,
}

impl ConsentStatus {
    /// `subscribed` or `unsubscribed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Subscribed => "subscribed",
            ConsentStatus::Unsubscribed => "unsubscribed",
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The topic of a template that names none (a declared topic). Without it, a template
    /// without `topic` is an error once topics are declared: nothing is transactional by
    /// default.
    #[serde(default)]
    pub default_topic: Option<String>,
    /// Frequency caps on marketing messages (`[[policy.caps]]`); a send over a cap is
    /// deferred until the cap allows it.
    #[serde(default)]
    pub caps: Vec<CapConfig>,
    /// Quiet hours per channel (`[policy.quiet_hours] sms = { start = "21:00", end =
    /// "09:00" }`), in each contact's own timezone; a marketing send inside them is deferred
    /// to their end.
    #[serde(default)]
    pub quiet_hours: BTreeMap<String, QuietHours>,
}

/// A frequency cap: at most `max` marketing messages to one contact in `days` (or
/// `hours`), on the channels named (every channel when none is).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapConfig {
    /// Channels the cap counts and holds (empty: every channel, across channels).
    #[serde(default)]
    pub channels: Vec<String>,
    /// Messages allowed in the window.
    pub max: u32,
    /// The window in days.
    #[serde(default)]
    pub days: Option<u32>,
    /// The window in hours (instead of days).
    #[serde(default)]
    pub hours: Option<u32>,
}

impl CapConfig {
    /// The window in milliseconds (0 when neither `days` nor `hours` is set).
    pub fn window_ms(&self) -> i64 {
        i64::from(self.days.unwrap_or(0)) * 86_400_000
            + i64::from(self.hours.unwrap_or(0)) * 3_600_000
    }

    /// What is wrong with it, in words.
    pub fn problem(&self) -> Option<String> {
        if self.max == 0 {
            return Some("a cap's `max` must be at least 1".into());
        }
        if self.window_ms() <= 0 {
            return Some("a cap needs its window: `days = N` or `hours = N`".into());
        }
        None
    }
}

/// Quiet hours of a channel: from `start` to `end` local time (`"21:00"` to `"09:00"` spans
/// midnight).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// When they begin, `HH:MM`.
    pub start: String,
    /// When they end, `HH:MM`.
    pub end: String,
}

/// `"HH:MM"` as (hour, minute).
pub fn parse_hh_mm(s: &str) -> Option<(u32, u32)> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

impl Config {
    /// The base of links the daemon serves to recipients (unsubscribe, preferences):
    /// `[server] public_url` without a trailing `/`. Without it the daemon uses the address
    /// it listens on.
    pub fn public_url(&self) -> Option<String> {
        self.server
            .public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string())
    }
}

/// `[limits]`: how large one contact may grow through ingest and imports. A message that would
/// take a contact past one of them is dropped with a reason (`rejected` in a batch's answer, a
/// 400 for a single call) and the rest of its batch is accepted; nothing already stored is
/// touched. The defaults are far above what a person's profile needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Traits (attributes) on one contact (default 1000).
    #[serde(default = "default_max_traits")]
    pub max_traits: usize,
    /// Size of one contact's traits, in bytes of JSON (default 262144, 256 KB).
    #[serde(default = "default_max_trait_bytes")]
    pub max_trait_bytes: usize,
    /// `userId`s on one contact, gained through `alias` and merges (default 100).
    #[serde(default = "default_max_user_ids")]
    pub max_user_ids: usize,
    /// `anonymousId`s on one contact: devices and browsers (default 1000).
    #[serde(default = "default_max_anonymous_ids")]
    pub max_anonymous_ids: usize,
    /// Groups one contact belongs to (default 100).
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// Contacts merged into one (default 1000).
    #[serde(default = "default_max_merges")]
    pub max_merges: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_traits: default_max_traits(),
            max_trait_bytes: default_max_trait_bytes(),
            max_user_ids: default_max_user_ids(),
            max_anonymous_ids: default_max_anonymous_ids(),
            max_groups: default_max_groups(),
            max_merges: default_max_merges(),
        }
    }
}

impl LimitsConfig {
    /// Limits that cannot work: a zero would refuse every contact.
    pub fn problems(&self) -> Vec<String> {
        [
            ("max_traits", self.max_traits),
            ("max_trait_bytes", self.max_trait_bytes),
            ("max_user_ids", self.max_user_ids),
            ("max_anonymous_ids", self.max_anonymous_ids),
            ("max_groups", self.max_groups),
            ("max_merges", self.max_merges),
        ]
        .into_iter()
        .filter(|(_, v)| *v == 0)
        .map(|(k, _)| format!("[limits] {k} = 0 would refuse every contact; raise it or remove it for the default"))
        .collect()
    }
}

fn default_max_traits() -> usize {
    1000
}

fn default_max_trait_bytes() -> usize {
    256 * 1024
}

fn default_max_user_ids() -> usize {
    100
}

fn default_max_anonymous_ids() -> usize {
    1000
}

fn default_max_groups() -> usize {
    100
}

fn default_max_merges() -> usize {
    1000
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address (overridden by `--listen`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Data directory, relative to the project (overridden by `--data`).
    #[serde(default = "default_data")]
    pub data: String,
    /// How long an accepted `messageId` is remembered, in hours (default 24, as Segment's
    /// look-back window): a message repeating one within it is answered 200 and dropped as a
    /// duplicate. Each id in the window takes about 8.5 bytes of memory.
    #[serde(default = "default_dedupe_hours")]
    pub dedupe_window_hours: u64,
    /// Connections open at once, at most (default 1024, and never more than the process's
    /// file limit allows). A connection beyond them is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Of `max_connections`, how many only the management API and `/healthz` may use (default
    /// 32): an operator and a health check still get in when clients take every other one.
    #[serde(default = "default_reserved_connections")]
    pub reserved_connections: usize,
    /// Milliseconds a client has to send a request's headers, and that an idle keep-alive
    /// connection stays open (default 10000).
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Milliseconds a client has to send a request's body (default 30000).
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// `[server.rate_limits]`: requests per write key and per client address on the ingest
    /// API, and the proxies trusted to name the client (applied on reload too).
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// The address recipients reach the daemon at, for the links it puts in messages
    /// (unsubscribe, preferences): `https://…` in production. Default: `http://` and
    /// `listen`. One-click unsubscribe (RFC 8058) is only offered over https.
    #[serde(default)]
    pub public_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            data: default_data(),
            dedupe_window_hours: default_dedupe_hours(),
            max_connections: default_max_connections(),
            reserved_connections: default_reserved_connections(),
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            rate_limits: RateLimitsConfig::default(),
            public_url: None,
        }
    }
}

fn default_max_connections() -> usize {
    1024
}

fn default_reserved_connections() -> usize {
    32
}

fn default_header_timeout_ms() -> u64 {
    10_000
}

fn default_body_timeout_ms() -> u64 {
    30_000
}

fn default_dedupe_hours() -> u64 {
    24
}

fn default_listen() -> String {
    "127.0.0.1:7700".into()
}

fn default_data() -> String {
    ".herald/data".into()
}

/// `[auth]`. Secrets can be given inline (development) or read from the environment.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Write keys accepted by the ingest API, with the rights of server keys (the name before
    /// there were two kinds; `herald check` suggests `server_keys`).
    #[serde(default)]
    pub write_keys: Vec<String>,
    /// Keys for browsers and apps, public by nature: they cannot send the event names channels
    /// own (`email_opened`, …) nor merge two known users with `alias`.
    #[serde(default)]
    pub client_keys: Vec<String>,
    /// Keys for servers, kept secret: every event name, every merge.
    #[serde(default)]
    pub server_keys: Vec<String>,
    /// Environment variable holding one more write key.
    pub write_key_env: Option<String>,
    /// Bearer token for the management API.
    pub admin_token: Option<String>,
    /// Environment variable holding the admin token.
    pub admin_token_env: Option<String>,
    /// Read-only tokens for the management API: reports, dashboards and lookups (`GET`
    /// routes and template previews); every change (reload, import, erasure, runs) needs the
    /// admin token.
    #[serde(default)]
    pub read_tokens: Vec<String>,
    /// Environment variable holding one more read-only token.
    pub read_token_env: Option<String>,
}

impl AuthConfig {
    /// Every server key (`server_keys`, `write_keys` and `write_key_env`).
    pub fn all_write_keys(&self) -> Vec<String> {
        let mut keys = self.server_keys.clone();
        keys.extend(self.write_keys.iter().cloned());
        if let Some(v) = self
            .write_key_env
            .as_ref()
            .and_then(|e| std::env::var(e).ok())
        {
            keys.push(v);
        }
        keys
    }

    /// The admin token, if configured.
    pub fn token(&self) -> Option<String> {
        self.admin_token_env
            .as_ref()
            .and_then(|e| std::env::var(e).ok())
            .or_else(|| self.admin_token.clone())
    }

    /// Every read-only token (`read_tokens` and `read_token_env`).
    pub fn all_read_tokens(&self) -> Vec<String> {
        let mut tokens = self.read_tokens.clone();
        if let Some(v) = self
            .read_token_env
            .as_ref()
            .and_then(|e| std::env::var(e).ok())
        {
            tokens.push(v);
        }
        tokens
    }

    /// Advice about the credentials that does not stop them working.
    pub fn warnings(&self) -> Vec<String> {
        if self.write_keys.is_empty() {
            return Vec::new();
        }
        vec!["[auth] write_keys are server keys: every event name and every merge; name them server_keys, and give browsers and apps client_keys".to_string()]
    }

    /// What is wrong with the credentials as configured: an empty write key or admin token
    /// (written so, or an environment variable that is set but empty) would let anyone in.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.write_keys.iter().any(|k| k.trim().is_empty()) {
            out.push(
                "[auth] write_keys contains an empty key, which would accept any client; remove it"
                    .to_string(),
            );
        }
        if let Some(var) = &self.write_key_env {
            if std::env::var(var).is_ok_and(|v| v.trim().is_empty()) {
                out.push(format!("[auth] write_key_env: the environment variable {var} is empty, which would accept any client"));
            }
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            out.push("[auth] admin_token is empty, which would open the management API to anyone; remove it to disable the API or set a token".to_string());
        }
        if self.read_tokens.iter().any(|t| t.trim().is_empty()) {
            out.push("[auth] read_tokens contains an empty token, which would let anyone read contacts and reports; remove it".to_string());
        }
        if let Some(var) = &self.read_token_env {
            if std::env::var(var).is_ok_and(|v| v.trim().is_empty()) {
                out.push(format!("[auth] read_token_env: the environment variable {var} is empty, which would let anyone read contacts and reports"));
            }
        }
        if let Some(var) = &self.admin_token_env {
            if std::env::var(var).is_ok_and(|v| v.trim().is_empty()) {
                out.push(format!("[auth] admin_token_env: the environment variable {var} is empty, which would open the management API to anyone"));
            }
        }
        out
    }
}

/// One `[channels.NAME]` table: what kind of channel, and how its delivery stage sends.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// The kind of channel and its own settings.
    pub kind: ChannelKind,
    /// Concurrency, rate and lane settings of the channel's delivery stage.
    pub delivery: DeliveryConfig,
}

/// How many sends a channel's delivery stage runs at once and how fast it may send. The keys
/// sit in the channel's own table (`concurrency = 64`, `rate_per_second = 100`,
/// `rate_group = "postmark-account"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Sends in flight at once (default 64; for a plugin channel with an SMTP relay, the
    /// relay's `connections`). A send waiting on its provider holds no thread; for a plugin
    /// channel it holds one wasm instance.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Sends started per second at most (default: no limit).
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// Channels naming the same group share one rate limit (channels on one provider
    /// account); the group's rate is the smallest `rate_per_second` among them.
    #[serde(default)]
    pub rate_group: Option<String>,
    /// Track opens and clicks of this channel's HTML messages (default true): links go
    /// through the daemon's click redirect and an open pixel is added. A link marked
    /// `data-herald-track="off"` is left alone either way.
    #[serde(default = "default_true")]
    pub track: bool,
}

fn default_true() -> bool {
    true
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: default_concurrency(),
            rate_per_second: None,
            rate_group: None,
            track: true,
        }
    }
}

fn default_concurrency() -> usize {
    64
}

impl DeliveryConfig {
    /// The keys of a channel table that belong to the delivery stage.
    pub const KEYS: [&'static str; 4] = ["concurrency", "rate_per_second", "rate_group", "track"];

    /// A setting that cannot work, in words.
    pub fn problem(&self) -> Option<String> {
        if self.concurrency == 0 || self.concurrency > 4096 {
            return Some(format!(
                "`concurrency` must be between 1 and 4096 (got {})",
                self.concurrency
            ));
        }
        match self.rate_per_second {
            Some(r) if !(r.is_finite() && r > 0.0) => Some(format!(
                "`rate_per_second` must be a positive number (got {r})"
            )),
            _ => None,
        }
    }
}

/// The kind of a `[channels.NAME]` table.
#[derive(Debug, Clone)]
pub enum ChannelKind {
    /// Append each message as a JSON line to a file.
    Outbox {
        /// The file, relative to the project directory.
        path: String,
        /// Contact attribute holding the address (`email`, `phone`, …).
        to: Option<String>,
        /// Deduplicate by idempotency key, so retries after a crash never write twice.
        idempotent: bool,
    },
    /// POST each message as JSON to a URL.
    Webhook {
        /// Target URL.
        url: String,
        /// Contact attribute holding the address.
        to: Option<String>,
        /// Request timeout in milliseconds.
        timeout_ms: u64,
    },
    /// A WebAssembly connector: `plugin = "plugins/twilio-sms"` (a folder with `plugin.toml`
    /// and `plugin.wasm`, relative to the project) or `plugin = "bundled:twilio-sms"` for a
    /// first-party connector built with Herald. The rest of the table is the operator's grant.
    Plugin {
        /// Where the plugin is.
        plugin: String,
        /// Contact attribute holding the address.
        to: Option<String>,
        /// Hosts, secrets, config, SMTP relay and limits granted to it.
        grant: Box<crate::grant::GrantConfig>,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum BuiltinChannel {
    Outbox {
        path: String,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        idempotent: bool,
    },
    Webhook {
        url: String,
        #[serde(default)]
        to: Option<String>,
        #[serde(default = "default_timeout")]
        timeout_ms: u64,
    },
}

impl<'de> Deserialize<'de> for ChannelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let mut delivery = toml::Table::new();
        for key in DeliveryConfig::KEYS {
            if let Some(v) = table.remove(key) {
                delivery.insert(key.to_string(), v);
            }
        }
        let explicit_concurrency = delivery.contains_key("concurrency");
        let mut delivery: DeliveryConfig = toml::Value::Table(delivery)
            .try_into()
            .map_err(D::Error::custom)?;
        if let Some(problem) = delivery.problem() {
            return Err(D::Error::custom(problem));
        }
        let kind = ChannelKind::from_table(table).map_err(D::Error::custom)?;
        if let ChannelKind::Plugin { grant, .. } = &kind {
            // Through an SMTP relay no more sends run at once than there are connections to
            // it: more in flight would only wait (each holding an instance and widening the
            // ambiguous window) without going out sooner.
            if let (false, Some(relay)) = (explicit_concurrency, &grant.smtp) {
                delivery.concurrency = relay.connections.max(1);
            }
        }
        Ok(ChannelConfig { kind, delivery })
    }
}

impl ChannelKind {
    fn from_table(mut table: toml::Table) -> Result<Self, String> {
        let is_plugin = match table.get("type").and_then(|t| t.as_str()) {
            Some("plugin") => true,
            Some(_) => false,
            None => table.contains_key("plugin"),
        };
        if is_plugin {
            table.remove("type");
            let plugin = table
                .remove("plugin")
                .and_then(|p| p.as_str().map(String::from))
                .ok_or_else(|| {
                    "a plugin channel needs `plugin = \"path/to/plugin\"` or \"bundled:<id>\""
                        .to_string()
                })?;
            let to = table
                .remove("to")
                .and_then(|p| p.as_str().map(String::from));
            let grant: crate::grant::GrantConfig = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| e.to_string())?;
            return Ok(ChannelKind::Plugin {
                plugin,
                to,
                grant: Box::new(grant),
            });
        }
        let builtin: BuiltinChannel = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        Ok(match builtin {
            BuiltinChannel::Outbox {
                path,
                to,
                idempotent,
            } => ChannelKind::Outbox {
                path,
                to,
                idempotent,
            },
            BuiltinChannel::Webhook {
                url,
                to,
                timeout_ms,
            } => ChannelKind::Webhook {
                url,
                to,
                timeout_ms,
            },
        })
    }
}

fn default_timeout() -> u64 {
    10_000
}

impl ChannelConfig {
    /// The contact attribute holding the recipient address.
    pub fn to_attribute(&self) -> Option<&str> {
        match &self.kind {
            ChannelKind::Outbox { to, .. }
            | ChannelKind::Webhook { to, .. }
            | ChannelKind::Plugin { to, .. } => to.as_deref(),
        }
    }
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Worker threads running activations; contacts are partitioned across them.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Attempts for a transient channel failure before the step fails.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles each attempt, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff_ms: i64,
    /// Operation limit per activation.
    #[serde(default = "default_ops")]
    pub max_operations: u64,
    /// Wall-clock deadline per activation, in milliseconds.
    #[serde(default = "default_deadline")]
    pub activation_deadline_ms: u64,
    /// sled page cache, in megabytes (default 32). Resident memory is roughly this, sled's
    /// per-page bookkeeping (grows with stored keys) and the process's own ~60 MB.
    #[serde(default = "default_cache")]
    pub cache_mb: u64,
    /// Accepted events the workers may owe at once (default 100,000). At the limit, ingest
    /// requests wait before they are accepted, so a burst is held back at the HTTP edge (a
    /// slow answer, which Segment's SDKs retry) instead of queued without bound in memory.
    #[serde(default = "default_backlog")]
    pub max_backlog: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: None,
            max_attempts: default_attempts(),
            backoff_ms: default_backoff(),
            max_operations: default_ops(),
            activation_deadline_ms: default_deadline(),
            cache_mb: default_cache(),
            max_backlog: default_backlog(),
        }
    }
}

fn default_backlog() -> usize {
    100_000
}
fn default_attempts() -> u32 {
    5
}
fn default_backoff() -> i64 {
    30_000
}
fn default_ops() -> u64 {
    1_000_000
}
fn default_deadline() -> u64 {
    2_000
}
/// 32 MB: `herald bench` measured no throughput difference against 64 MB (ingest, activations,
/// audience), and it keeps a million waiting runs under 300 MB resident.
fn default_cache() -> u64 {
    32
}

impl Config {
    /// Read `herald.toml` from a project directory.
    pub fn load(project: &Path) -> Result<Config, ConfigError> {
        let path = project.join("herald.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid { path, message })
    }

    /// Parse the text of a `herald.toml`.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}
