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

mod outbox;
mod plugin;
mod webhook;

pub use outbox::OutboxChannel;
pub use plugin::{PluginChannel, PluginLoader};
pub use webhook::WebhookChannel;

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
    /// The plugin sandbox refused a capability the send needed; never retried (the grant in
    /// `herald.toml` must change first).
    #[error("denied by the plugin sandbox: {0}")]
    Denied(String),
}

/// A channel's answer to one send, still to come.
pub type SendFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Delivery, ChannelError>> + Send + 'a>,
>;

/// A destination for messages and actions.
pub trait Channel: Send + Sync {
    /// Does a retry with the same idempotency key never duplicate the effect?
    fn supports_idempotency(&self) -> bool;
    /// Operations accepted by `action` (empty: any).
    fn operations(&self) -> Vec<String> {
        Vec::new()
    }
    /// Deliver a message or perform an action. The delivery stage runs many of these futures
    /// at once on a few threads, so a channel waiting on its provider must not hold the
    /// thread: use async I/O, or `tokio::task::block_in_place` around short blocking work.
    fn send<'a>(&'a self, message: &'a OutboundMessage) -> SendFuture<'a>;
}
