//! Host-side data types of the plugin API (the Rust face of `herald:channel@0.2.0`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::dkim::DkimSigner;

/// What the operator grants one plugin instance (one configured channel).
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Hosts the plugin may call in addition to those its manifest declares.
    /// Entries are `host`, `host:port` or `*.domain` patterns. Self-hosted
    /// endpoints (a Mastodon instance, a test server) are granted here.
    pub allowed_hosts: Vec<String>,
    /// Allow HTTP requests that resolve to loopback, private, link-local or
    /// otherwise non-public addresses. Off by default; tests turn it on.
    pub allow_private: bool,
    /// Secret values by name. Only names the manifest declares are usable;
    /// the plugin refers to them through placeholders and never sees them.
    pub secrets: HashMap<String, String>,
    /// The (non-secret) channel configuration, validated by the plugin on load.
    pub config: serde_json::Value,
    /// SMTP relay for plugins whose manifest declares `smtp = true`.
    pub smtp: Option<SmtpRelay>,
    /// Limits applied to every call.
    pub limits: CallLimits,
}

/// Connection security for an SMTP relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpSecurity {
    /// Plain text; only sensible on loopback or inside a trusted network.
    None,
    /// Plain connection upgraded with STARTTLS (required), usually port 587.
    #[default]
    StartTls,
    /// Implicit TLS from the first byte, usually port 465.
    Tls,
}

/// An operator-configured SMTP relay used by the `smtp` capability.
#[derive(Debug, Clone)]
pub struct SmtpRelay {
    /// Relay host name.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Transport security.
    pub security: SmtpSecurity,
    /// Optional AUTH credentials (username, password); host-side only.
    pub credentials: Option<(String, String)>,
    /// Connection and command timeout.
    pub timeout: Duration,
    /// Connections to the relay kept open for reuse between messages
    /// (default 4). Messages submitted at the same time beyond these open
    /// further connections, which are closed afterwards; 0 keeps none open.
    pub connections: usize,
    /// DKIM signing of each submitted message whose From domain is aligned with the
    /// signer's domain (`None`: messages are submitted as the plugin made them).
    pub dkim: Option<Arc<DkimSigner>>,
}

impl SmtpRelay {
    /// A plain-text relay on `host:port` (loopback test servers, local MTAs).
    pub fn plain(host: &str, port: u16) -> Self {
        SmtpRelay {
            host: host.into(),
            port,
            security: SmtpSecurity::None,
            credentials: None,
            timeout: Duration::from_secs(30),
            connections: 4,
            dkim: None,
        }
    }
}

/// Per-call resource limits and per-plugin rate limiting.
#[derive(Debug, Clone)]
pub struct CallLimits {
    /// Wall-clock budget for one call, host calls included. Enforced by epoch
    /// interruption for guest code and by timeouts on blocking host calls.
    pub timeout: Duration,
    /// Maximum size of each linear memory of an instance, in bytes.
    pub max_memory_bytes: usize,
    /// Maximum number of warm instances kept for reuse.
    pub pool_size: usize,
    /// Sends per second allowed for this plugin (`None` = unlimited).
    pub rate_per_second: Option<f64>,
    /// Burst size of the rate limiter.
    pub burst: u32,
    /// Maximum HTTP response body size returned to the guest, in bytes.
    pub max_http_body_bytes: usize,
    /// Maximum number of HTTP requests one call may make (further requests
    /// are denied), so a plugin cannot be turned into a traffic amplifier.
    pub max_http_requests_per_call: u32,
    /// Maximum number of calls running at once on this plugin (each on its
    /// own instance); further sends get `RateLimited`, further webhooks a
    /// sandbox error, instead of piling up instances and memory.
    pub max_concurrent_calls: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            timeout: Duration::from_secs(15),
            max_memory_bytes: 64 << 20,
            pool_size: 4,
            rate_per_second: None,
            burst: 10,
            max_http_body_bytes: 4 << 20,
            max_http_requests_per_call: 16,
            max_concurrent_calls: 32,
        }
    }
}

/// One named operation a plugin supports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Operation {
    /// Machine name (`SendRequest::operation`).
    pub name: String,
    /// Human description.
    pub description: String,
}

/// A plugin's answer to `describe()`, checked against its manifest on load.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Description {
    /// Plugin id (equals the manifest's).
    pub id: String,
    /// Plugin version (equals the manifest's).
    pub version: String,
    /// WIT API version the plugin was built against (from the manifest / export name).
    pub api_version: String,
    /// Human-readable name.
    pub display_name: String,
    /// Whether plain message delivery (`operation: None`) is supported.
    pub delivers_messages: bool,
    /// Named operations.
    pub operations: Vec<Operation>,
    /// Whether the provider honours the idempotency key, so the engine may
    /// retry the ambiguous window with the same key.
    pub supports_idempotency: bool,
    /// JSON Schema of the plugin configuration.
    pub config_schema: serde_json::Value,
    /// The contact fields the plugin receives (equals the manifest's `contact_fields`).
    pub contact_fields: Vec<String>,
}

impl Description {
    /// Whether `operation` (None = plain delivery) is supported.
    pub fn supports(&self, operation: Option<&str>) -> bool {
        match operation {
            None => self.delivers_messages,
            Some(op) => self.operations.iter().any(|o| o.name == op),
        }
    }
}

/// A message to deliver or an operation to perform.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendRequest {
    /// Stable key of this effect (same on every retry).
    pub idempotency_key: String,
    /// `None` to deliver a message, or an operation name.
    pub operation: Option<String>,
    /// Recipient (email address, phone number, audience member...).
    pub to: String,
    /// The recipient's display name.
    pub to_name: Option<String>,
    /// Subject / title.
    pub subject: Option<String>,
    /// Plain-text body.
    pub text: Option<String>,
    /// HTML body.
    pub html: Option<String>,
    /// Inbox preview text (email).
    pub preheader: Option<String>,
    /// Sender, from the template (`None`: the channel's configured sender).
    pub from: Option<String>,
    /// Reply-to address.
    pub reply_to: Option<String>,
    /// Further message headers (`List-Unsubscribe`, ...), in order.
    pub headers: Vec<(String, String)>,
    /// Subscription topic (`None`: transactional).
    pub topic: Option<String>,
    /// Unsubscribe addresses of a marketing message.
    pub unsubscribe: Option<Unsubscribe>,
    /// What Herald tracks in the message itself.
    pub tracking: Tracking,
    /// Where the message comes from (workflow, template, ...), for provider metadata.
    pub metadata: Vec<(String, String)>,
    /// The template's rendered front matter (JSON object).
    pub front_matter: serde_json::Value,
    /// Contact fields (JSON object). The host passes on only those the plugin's manifest
    /// declares in `contact_fields`.
    pub fields: serde_json::Value,
    /// Channel- or operation-specific payload (JSON).
    pub payload: serde_json::Value,
}

/// Unsubscribe addresses of a marketing message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Preference page: leave this topic or all.
    pub url: String,
    /// RFC 8058 one-click POST URL (https only).
    pub one_click_url: Option<String>,
}

/// Engagement Herald tracks itself in a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracking {
    /// An open pixel is in the HTML.
    pub opens: bool,
    /// Links in the HTML go through the click redirect.
    pub clicks: bool,
}

/// A successful send.
#[derive(Debug, Clone, PartialEq)]
pub struct SendOutcome {
    /// Provider id of the message/request, to correlate webhooks.
    pub provider_message_id: Option<String>,
    /// Extra details from the plugin (JSON object).
    pub details: serde_json::Value,
}

/// An inbound provider callback.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookRequest {
    /// HTTP method.
    pub method: String,
    /// Path after `/v1/webhooks/{channel}`.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers (names are lower-cased by the host).
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Vec<u8>,
}

/// One event extracted from a provider callback.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WebhookEvent {
    /// `delivered`, `bounced`, `deferred`, `opened`, `clicked`, `replied`, `unsubscribed`,
    /// `resubscribed` or `complained`.
    pub kind: String,
    /// For `bounced`: permanent or not, and the provider's reason.
    pub bounce: Option<Bounce>,
    /// Provider message id the event concerns.
    pub message_id: Option<String>,
    /// Recipient the event concerns.
    pub recipient: Option<String>,
    /// Provider-specific properties (JSON object).
    pub properties: serde_json::Value,
    /// Event time, ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// The provider says a machine did it (privacy proxy open, link scanner).
    pub machine: bool,
}

/// A bounce as the provider reported it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bounce {
    /// `hard`, `soft` or `undetermined`.
    pub kind: String,
    /// The provider's reason or code.
    pub reason: Option<String>,
}
