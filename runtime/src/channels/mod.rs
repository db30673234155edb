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

/// The contact fields Herald's own channels (`outbox`, `webhook`) pass on.
pub const NATIVE_CONTACT_FIELDS: &[&str] = &["email", "phone", "name", "first_name", "last_name"];

/// The recipient's display name from a contact snapshot: `name`, else `first_name` and
/// `last_name`.
pub fn display_name(contact: &Value) -> Option<String> {
    let text = |k: &str| {
        contact
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if let Some(n) = text("name") {
        return Some(n.to_string());
    }
    let full = [text("first_name"), text("last_name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    (!full.is_empty()).then_some(full)
}

/// A message or action handed to a channel.
///
/// It is journaled as the step's input, so its serialized form is read back by later
/// versions: records written before `front_matter` existed kept the front matter under
/// `fields`, and are read that way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "OutboundRecord")]
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
    /// The recipient's display name: the contact's `name`, else `first_name` and `last_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_name: Option<String>,
    /// Rendered subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Rendered body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Rendered HTML (MJML templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The template's other rendered front-matter fields (`from`, `reply_to`, `preheader`,
    /// `topic`, ...). Always written, so a record tells which form it has.
    #[serde(default)]
    pub front_matter: Map<String, Value>,
    /// Contact fields the channel asked for ([`Channel::contact_fields`]), as the contact had
    /// them when the step ran.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
    /// Action payload.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
    /// The subscription topic the message is sent under (`None`: the project declares no
    /// topics and the template names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// How the recipient leaves the topic: for marketing messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Unsubscribe>,
    /// Herald rewrote the HTML's links through its click redirect and added its open pixel.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tracked: bool,
    /// A broadcast's test send to its seed list: frequency caps and quiet hours do not hold
    /// it (consent and suppression still do).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seed: bool,
    /// The run is in its workflow's or broadcast's holdout group: the message is not sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holdout: bool,
}

/// The unsubscribe links of a message (`List-Unsubscribe`, and a link in the body).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unsubscribe {
    /// The preference page, where the recipient can leave this topic or every topic.
    pub url: String,
    /// The URL a single POST unsubscribes with (RFC 8058 one-click), offered only over https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_click: Option<String>,
}

/// The serialized form of [`OutboundMessage`], old and new.
#[derive(Deserialize)]
struct OutboundRecord {
    idempotency_key: String,
    channel: String,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    run: String,
    workflow: String,
    contact: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    to_name: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    front_matter: Option<Map<String, Value>>,
    #[serde(default)]
    fields: Map<String, Value>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    unsubscribe: Option<Unsubscribe>,
    #[serde(default)]
    tracked: bool,
    #[serde(default)]
    seed: bool,
    #[serde(default)]
    holdout: bool,
}

impl From<OutboundRecord> for OutboundMessage {
    fn from(r: OutboundRecord) -> Self {
        // Before `front_matter`, `fields` held the front matter and no contact fields.
        let (front_matter, fields) = match r.front_matter {
            Some(front_matter) => (front_matter, r.fields),
            None => (r.fields, Map::new()),
        };
        OutboundMessage {
            idempotency_key: r.idempotency_key,
            channel: r.channel,
            template: r.template,
            operation: r.operation,
            run: r.run,
            workflow: r.workflow,
            contact: r.contact,
            to: r.to,
            to_name: r.to_name,
            subject: r.subject,
            body: r.body,
            html: r.html,
            front_matter,
            fields,
            payload: r.payload,
            topic: r.topic,
            unsubscribe: r.unsubscribe,
            tracked: r.tracked,
            seed: r.seed,
            holdout: r.holdout,
        }
    }
}

impl OutboundMessage {
    /// A front-matter value as text.
    pub fn front_matter_str(&self, key: &str) -> Option<String> {
        match self.front_matter.get(key)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
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
    /// The delivery policy decided not to send (consent, suppression): not a failure, and
    /// never retried. The step records it and `send()` returns it.
    #[error("skipped by the delivery policy ({rule}): {reason}")]
    Skipped {
        /// The rule that decided: `consent` or `suppression`.
        rule: String,
        /// Why, in words.
        reason: String,
    },
    /// The delivery policy holds the send until `until` (quiet hours, a frequency cap): not
    /// a failure and not an attempt; the policy decides again then.
    #[error("deferred by the delivery policy ({rule}) until {until}: {reason}")]
    Deferred {
        /// When it may go.
        until: i64,
        /// `quiet_hours` or `frequency_cap`.
        rule: String,
        /// Why, in words.
        reason: String,
    },
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
    /// The contact fields this channel receives with each message
    /// ([`OutboundMessage::fields`]); nothing else of the contact is passed on.
    fn contact_fields(&self) -> Vec<String> {
        NATIVE_CONTACT_FIELDS
            .iter()
            .map(|f| f.to_string())
            .collect()
    }
    /// Deliver a message or perform an action. The delivery stage runs many of these futures
    /// at once on a few threads, so a channel waiting on its provider must not hold the
    /// thread: use async I/O, or `tokio::task::block_in_place` around short blocking work.
    fn send<'a>(&'a self, message: &'a OutboundMessage) -> SendFuture<'a>;
}
