//! Consent, suppression and the delivery policy every send passes.
//!
//! - **Topics** (`[topics.NAME]` in `herald.toml`) are what a contact subscribes to; a
//!   template names its topic. A contact's consent per topic is a stored record with time,
//!   source and evidence ([`ConsentRecord`]); without one the topic's default applies. The
//!   built-in `transactional` topic needs no consent and carries no unsubscribe link.
//! - **Suppression**: an address on a channel's suppression list (a hard bounce, a complaint,
//!   an invalid address, a provider's unsubscribe report, an operator) receives nothing on
//!   that channel, whatever the message's topic or priority.
//! - **The policy** ([`Policy::decide`]) is evaluated when the delivery stage takes a send,
//!   not when the step is queued, so an unsubscribe that arrives while the send waits still
//!   counts. Its outcome is journaled on the step (`send()` returns it).
//! - **Links** (`token.rs`): unsubscribe and preference URLs carry signed tokens.

pub mod token;

use std::collections::BTreeMap;

use herald_config::{Config, ConsentStatus, TopicConfig, TRANSACTIONAL_TOPIC};
use herald_dsl::Priority;
use serde::Serialize;

use crate::channels::OutboundMessage;
use crate::model::{normalize_address, ConsentRecord, Suppression};
use crate::store::{Store, StoreError};

pub use token::{BadToken, LinkClaims, LinkKeys};

/// The parts of `herald.toml` the policy and the preference page read, swapped on reload.
#[derive(Debug, Clone, Default)]
pub struct ConsentSettings {
    /// Declared topics.
    pub topics: BTreeMap<String, TopicConfig>,
    /// `[policy] default_topic`.
    pub default_topic: Option<String>,
    /// `[server] public_url`, without a trailing `/` (`None`: the address the daemon listens
    /// on, [`crate::engine::Engine::public_url`]).
    pub public_url: Option<String>,
}

impl ConsentSettings {
    /// From the project's settings.
    pub fn from_config(config: &Config) -> ConsentSettings {
        ConsentSettings {
            topics: config.topics.clone(),
            default_topic: config.policy.default_topic.clone(),
            public_url: config.public_url(),
        }
    }

    /// The topic a message from a template with front-matter `topic` is sent under.
    pub fn topic_of(&self, declared: Option<&str>) -> Option<String> {
        declared
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .or_else(|| self.default_topic.clone())
    }

    /// Whether `topic` is one a contact can leave (a declared, non-transactional topic).
    pub fn is_marketing(&self, topic: Option<&str>) -> bool {
        topic.is_some_and(|t| t != TRANSACTIONAL_TOPIC)
    }

    /// A contact's consent for `topic` given its records: its record, else the topic's
    /// default (`subscribed` for a topic no longer declared).
    pub fn status(&self, records: &[ConsentRecord], topic: &str) -> ConsentStatus {
        records
            .iter()
            .find(|r| r.topic == topic)
            .map(|r| r.status)
            .unwrap_or_else(|| {
                self.topics
                    .get(topic)
                    .map(|t| t.default)
                    .unwrap_or_default()
            })
    }

    /// The unsubscribe page for a message: `BASE/u/TOKEN`.
    pub fn unsubscribe_url(base: &str, token: &str) -> String {
        format!("{base}/u/{token}")
    }
}

/// What the policy decided for one send.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Decision {
    /// Send it now.
    Send,
    /// Do not send it; the rule that decided and why.
    Skip {
        /// `suppression` or `consent`.
        rule: &'static str,
        /// In words, for the journal and `herald why`.
        reason: String,
    },
    /// The policy could not decide (its records could not be read): the send is queued again.
    Wait(String),
}

/// The delivery policy: one evaluation before every send.
pub struct Policy<'a> {
    /// Storage (consent and suppression records).
    pub store: &'a dyn Store,
    /// The project's topics.
    pub settings: &'a ConsentSettings,
}

impl Policy<'_> {
    /// Decide whether `message` (of a workflow in lane `priority`) goes out now. Actions are
    /// not messages to a person and always pass.
    pub fn decide(
        &self,
        message: &OutboundMessage,
        priority: Priority,
    ) -> Result<Decision, StoreError> {
        if message.template.is_none() {
            return Ok(Decision::Send);
        }
        if let Some(to) = message.to.as_deref().filter(|t| !t.trim().is_empty()) {
            let address = normalize_address(to);
            if let Some(s) = self.store.suppression(&message.channel, &address)? {
                return Ok(Decision::Skip {
                    rule: "suppression",
                    reason: suppressed_reason(&s),
                });
            }
        }
        let topic = message.topic.as_deref();
        if priority == Priority::Transactional || !self.settings.is_marketing(topic) {
            return Ok(Decision::Send);
        }
        let topic = topic.expect("a marketing message has a topic");
        let records = self.store.consent(&message.contact)?;
        match self.settings.status(&records, topic) {
            ConsentStatus::Subscribed => Ok(Decision::Send),
            ConsentStatus::Unsubscribed => Ok(Decision::Skip {
                rule: "consent",
                reason: match records.iter().find(|r| r.topic == topic) {
                    Some(r) => format!(
                        "the contact is unsubscribed from `{topic}` ({} at {})",
                        r.source,
                        crate::clock::iso(r.at)
                    ),
                    None => format!(
                        "the contact never subscribed to `{topic}`, whose default is unsubscribed"
                    ),
                },
            }),
        }
    }
}

fn suppressed_reason(s: &Suppression) -> String {
    format!(
        "{} is suppressed on channel `{}`: {} since {}{}",
        s.address,
        s.channel,
        s.reason.as_str(),
        crate::clock::iso(s.at),
        s.detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    )
}

/// A consent record's write, with the evidence of the request that made it.
pub fn record(
    topic: &str,
    status: ConsentStatus,
    at: i64,
    source: &str,
    evidence: &Evidence,
) -> ConsentRecord {
    ConsentRecord {
        topic: topic.to_string(),
        status,
        at,
        source: source.to_string(),
        ip: evidence.ip.clone(),
        user_agent: evidence.user_agent.clone(),
        message: evidence.message.clone(),
    }
}

/// What is known of the request behind a consent change.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// The client's address.
    pub ip: Option<String>,
    /// The client's user agent (at most 512 bytes kept).
    pub user_agent: Option<String>,
    /// The message whose link was used.
    pub message: Option<String>,
}
