//! Channels: where rendered messages and actions leave Herald.
//!
//! The engine only knows the [`Channel`] trait. Built-in channels: `outbox` (JSON lines in a
//! file, for staging and dry runs) and `webhook` (JSON over HTTP). WebAssembly connectors
//! implement the same trait.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A message or action handed to a channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboundMessage {
    /// `run:step`; the same for every attempt of the same step.
    pub idempotency_key: String,
    /// Channel name.
    pub channel: String,
    /// Template name (`send`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Operation name (`action`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The run.
    pub run: String,
    /// The workflow.
    pub workflow: String,
    /// The contact.
    pub contact: String,
    /// Recipient address, from the channel's `to` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Rendered subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Rendered body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Rendered HTML (MJML templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Other rendered front-matter fields.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
    /// Action payload.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
}

/// What a channel reports after a successful call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    /// The provider's id for the message, if it has one.
    pub provider_id: Option<String>,
    /// Anything else the provider answered.
    pub detail: Value,
}

/// Why a channel call failed; the engine decides retries from the kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChannelError {
    /// The request can never succeed as is.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Credentials were refused.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Slow down; try again after the given time.
    #[error("rate limited (retry after {retry_after_ms} ms): {message}")]
    RateLimited {
        /// Suggested wait.
        retry_after_ms: u64,
        /// Provider message.
        message: String,
    },
    /// A temporary failure; retrying may succeed.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The provider cannot tell whether the effect happened.
    #[error("ambiguous outcome: {0}")]
    Ambiguous(String),
}

/// A destination for messages and actions.
pub trait Channel: Send + Sync {
    /// Does a retry with the same idempotency key never duplicate the effect?
    fn supports_idempotency(&self) -> bool;
    /// Operations accepted by `action` (empty: any).
    fn operations(&self) -> Vec<String> {
        Vec::new()
    }
    /// Deliver a message or perform an action.
    fn send(&self, message: &OutboundMessage) -> Result<Delivery, ChannelError>;
}

/// Appends one JSON line per message to a file.
pub struct OutboxChannel {
    path: PathBuf,
    idempotent: bool,
    state: Mutex<Option<HashSet<String>>>,
}

impl OutboxChannel {
    /// An outbox writing to `path`. With `idempotent`, a key already in the file is not
    /// written again.
    pub fn new(path: PathBuf, idempotent: bool) -> Self {
        OutboxChannel {
            path,
            idempotent,
            state: Mutex::new(None),
        }
    }

    fn known_keys(&self) -> HashSet<String> {
        let mut keys = HashSet::new();
        if let Ok(f) = std::fs::File::open(&self.path) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if let Some(k) = v.get("idempotency_key").and_then(Value::as_str) {
                        keys.insert(k.to_string());
                    }
                }
            }
        }
        keys
    }
}

impl Channel for OutboxChannel {
    fn supports_idempotency(&self) -> bool {
        self.idempotent
    }

    fn send(&self, message: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| ChannelError::Transient("outbox lock poisoned".into()))?;
        if self.idempotent {
            let keys = state.get_or_insert_with(|| self.known_keys());
            if keys.contains(&message.idempotency_key) {
                return Ok(Delivery {
                    provider_id: Some(message.idempotency_key.clone()),
                    detail: Value::Null,
                });
            }
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ChannelError::Transient(format!("{}: {e}", dir.display())))?;
        }
        let mut line =
            serde_json::to_vec(message).map_err(|e| ChannelError::InvalidInput(e.to_string()))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| ChannelError::Transient(format!("{}: {e}", self.path.display())))?;
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .map_err(|e| ChannelError::Ambiguous(format!("{}: {e}", self.path.display())))?;
        if let Some(keys) = state.as_mut() {
            keys.insert(message.idempotency_key.clone());
        }
        Ok(Delivery {
            provider_id: Some(message.idempotency_key.clone()),
            detail: Value::Null,
        })
    }
}

/// POSTs each message as JSON, with the idempotency key in an `Idempotency-Key` header.
pub struct WebhookChannel {
    url: String,
    agent: ureq::Agent,
}

impl WebhookChannel {
    /// A webhook channel posting to `url`.
    pub fn new(url: String, timeout: Duration) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        WebhookChannel { url, agent }
    }
}

fn retry_after_ms(resp: &ureq::Response) -> u64 {
    resp.header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s * 1000)
        .unwrap_or(1000)
}

impl Channel for WebhookChannel {
    fn supports_idempotency(&self) -> bool {
        true
    }

    fn send(&self, message: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let body = serde_json::to_string(message)
            .map_err(|e| ChannelError::InvalidInput(e.to_string()))?;
        let result = self
            .agent
            .post(&self.url)
            .set("content-type", "application/json")
            .set("idempotency-key", &message.idempotency_key)
            .send_string(&body);
        match result {
            Ok(resp) => {
                let text = resp.into_string().unwrap_or_default();
                let detail = serde_json::from_str(&text).unwrap_or(Value::String(text));
                let provider_id = detail.get("id").and_then(Value::as_str).map(String::from);
                Ok(Delivery {
                    provider_id,
                    detail,
                })
            }
            Err(ureq::Error::Status(code, resp)) => {
                let retry = retry_after_ms(&resp);
                let text = resp.into_string().unwrap_or_default();
                let msg = format!(
                    "HTTP {code}: {}",
                    text.chars().take(300).collect::<String>()
                );
                Err(match code {
                    401 | 403 => ChannelError::Unauthorized(msg),
                    429 => ChannelError::RateLimited {
                        retry_after_ms: retry,
                        message: msg,
                    },
                    408 | 500..=599 => ChannelError::Transient(msg),
                    _ => ChannelError::InvalidInput(msg),
                })
            }
            // The request may or may not have reached the server; the key makes a retry safe.
            Err(ureq::Error::Transport(t)) => Err(ChannelError::Transient(t.to_string())),
        }
    }
}

/// Loads WebAssembly connectors with one shared wasmtime host (compiled components are cached
/// on disk, so a restart or a reload does not compile them again).
pub struct PluginLoader {
    cache: Option<PathBuf>,
    host: std::sync::OnceLock<Result<Arc<herald_plugin_host::PluginHost>, String>>,
}

impl PluginLoader {
    /// A loader caching compiled components in `cache` (none: compile in memory each time).
    pub fn new(cache: Option<PathBuf>) -> Self {
        PluginLoader {
            cache,
            host: std::sync::OnceLock::new(),
        }
    }

    fn host(&self) -> Result<Arc<herald_plugin_host::PluginHost>, String> {
        self.host
            .get_or_init(|| {
                herald_plugin_host::PluginHost::new(self.cache.clone())
                    .map(Arc::new)
                    .map_err(|e| format!("cannot start the plugin host: {e}"))
            })
            .clone()
    }

    /// Load the plugin of channel `name`: `spec` is `bundled:<id>` (a first-party connector
    /// embedded in this binary) or a plugin folder relative to the project.
    pub fn load(
        &self,
        project: &std::path::Path,
        name: &str,
        spec: &str,
        grant: &herald_plugin_host::GrantConfig,
    ) -> Result<PluginChannel, String> {
        use herald_plugin_host::GrantConfigExt as _;
        let grant = grant
            .clone()
            .into_grant()
            .map_err(|e| format!("channel \"{name}\": {e}"))?;
        let plugin = match spec.strip_prefix("bundled:") {
            Some(id) => {
                let bundled = herald_bundled::get(id)
                    .map_err(|e| format!("channel \"{name}\": plugin {spec}: {e}"))?;
                self.host()?
                    .load_embedded(spec, bundled.manifest, bundled.wasm, grant)
                    .map_err(|e| format!("channel \"{name}\": plugin {spec}: {e}"))?
            }
            None => {
                let dir = project.join(spec);
                self.host()?
                    .load(&dir, grant)
                    .map_err(|e| format!("channel \"{name}\": plugin {}: {e}", dir.display()))?
            }
        };
        Ok(PluginChannel {
            plugin: Arc::new(plugin),
        })
    }
}

/// A channel served by a WebAssembly connector.
pub struct PluginChannel {
    /// The loaded connector.
    pub plugin: Arc<herald_plugin_host::LoadedPlugin>,
}

impl Channel for PluginChannel {
    fn supports_idempotency(&self) -> bool {
        self.plugin.describe().supports_idempotency
    }

    fn operations(&self) -> Vec<String> {
        self.plugin
            .describe()
            .operations
            .iter()
            .map(|o| o.name.clone())
            .collect()
    }

    fn send(&self, m: &OutboundMessage) -> Result<Delivery, ChannelError> {
        use herald_plugin_host::SendError as E;
        let req = herald_plugin_host::SendRequest {
            idempotency_key: m.idempotency_key.clone(),
            operation: m.operation.clone(),
            to: m.to.clone().unwrap_or_default(),
            subject: m.subject.clone(),
            text: m.body.clone(),
            html: m.html.clone(),
            fields: Value::Object(m.fields.clone()),
            payload: m.payload.clone(),
        };
        match self.plugin.send(&req) {
            Ok(out) => Ok(Delivery {
                provider_id: out.provider_message_id,
                detail: out.details,
            }),
            Err(E::InvalidInput(s)) => Err(ChannelError::InvalidInput(s)),
            Err(E::Unauthorized(s)) => Err(ChannelError::Unauthorized(s)),
            Err(E::RateLimited {
                retry_after_ms,
                message,
            }) => Err(ChannelError::RateLimited {
                retry_after_ms,
                message,
            }),
            Err(E::Transient(s)) => Err(ChannelError::Transient(s)),
            Err(E::Ambiguous(s)) => Err(ChannelError::Ambiguous(s)),
            // A trap, timeout or memory cap before anything left the sandbox: retried with
            // backoff, so a passing hiccup recovers and a broken plugin fails the step.
            Err(E::Sandbox(s)) => Err(ChannelError::Transient(format!("plugin sandbox: {s}"))),
        }
    }
}
