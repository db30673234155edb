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

/// A time of day: (hour, minute).
pub type TimeOfDay = (u32, u32);

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
    /// `[[policy.caps]]`.
    pub caps: Vec<herald_config::CapConfig>,
    /// `[policy.quiet_hours]`: channel → (start, end) as (hour, minute).
    pub quiet_hours: BTreeMap<String, (TimeOfDay, TimeOfDay)>,
}

impl ConsentSettings {
    /// From the project's settings.
    pub fn from_config(config: &Config) -> ConsentSettings {
        ConsentSettings {
            topics: config.topics.clone(),
            default_topic: config.policy.default_topic.clone(),
            public_url: config.public_url(),
            caps: config.policy.caps.clone(),
            quiet_hours: config
                .policy
                .quiet_hours
                .iter()
                .filter_map(|(ch, q)| {
                    Some((
                        ch.clone(),
                        (
                            herald_config::parse_hh_mm(&q.start)?,
                            herald_config::parse_hh_mm(&q.end)?,
                        ),
                    ))
                })
                .collect(),
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
    /// Not now: the send waits (a durable timer) until `until`, then the policy decides again.
    Defer {
        /// When it may go (milliseconds since the epoch).
        until: i64,
        /// `frequency_cap` or `quiet_hours`.
        rule: &'static str,
        /// In words.
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
    /// Sends passed by the caps whose results are not recorded yet, and this send's key:
    /// counted as sent, so two sends decided at once cannot both pass a cap.
    pub holds: Option<(&'a CapHolds, &'a str)>,
}

/// Marketing sends the frequency caps let through whose result is not in the journal yet.
/// The cap decision and the hold are taken under one lock, so sends to one contact decided
/// at the same moment (two channels, or one dispatch batch) are counted against each other.
#[derive(Debug, Default)]
pub struct CapHolds {
    inner: std::sync::Mutex<HoldMap>,
}

#[derive(Debug, Default)]
struct HoldMap {
    /// contact → (send key, time it was let through, channel).
    by_contact: std::collections::HashMap<String, Vec<(String, i64, String)>>,
    /// send key → contact.
    by_key: std::collections::HashMap<String, String>,
}

impl CapHolds {
    /// The send's result is recorded (sent, failed, skipped or deferred): the journal
    /// counts it from now on.
    pub fn release(&self, key: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(contact) = m.by_key.remove(key) {
            if let Some(list) = m.by_contact.get_mut(&contact) {
                list.retain(|(k, _, _)| k != key);
                if list.is_empty() {
                    m.by_contact.remove(&contact);
                }
            }
        }
    }

    /// Sends held now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }

    /// No send is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Policy<'_> {
    /// Decide whether `message` (of a workflow in lane `priority`) goes out now. Actions are
    /// not messages to a person and always pass.
    pub fn decide(
        &self,
        message: &OutboundMessage,
        priority: Priority,
        now: i64,
    ) -> Result<Decision, StoreError> {
        if message.template.is_none() {
            return Ok(Decision::Send);
        }
        if message.holdout {
            return Ok(Decision::Skip {
                rule: "holdout",
                reason: "the run is in the holdout group: it sends nothing, its goal still counts"
                    .into(),
            });
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
            // A seed send (a broadcast's test) is not held by caps or quiet hours.
            ConsentStatus::Subscribed if message.seed => Ok(Decision::Send),
            ConsentStatus::Subscribed => self.pacing(message, now),
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

impl Policy<'_> {
    /// Quiet hours, then frequency caps, for a marketing message the contact may receive.
    fn pacing(&self, message: &OutboundMessage, now: i64) -> Result<Decision, StoreError> {
        if let Some(&((sh, sm), (eh, em))) = self.settings.quiet_hours.get(&message.channel) {
            let tz = self.store.contact(&message.contact)?.and_then(|c| {
                c.attributes
                    .get("timezone")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            });
            let end = crate::engine::next_local_time(now, tz.as_deref(), eh, em);
            let start = crate::engine::next_local_time(now, tz.as_deref(), sh, sm);
            // Inside the quiet hours exactly when their end comes before their next start.
            if end < start {
                return Ok(Decision::Defer {
                    until: end,
                    rule: "quiet_hours",
                    reason: format!(
                        "quiet hours on `{}` ({sh:02}:{sm:02}–{eh:02}:{em:02} in {})",
                        message.channel,
                        tz.as_deref().unwrap_or("UTC")
                    ),
                });
            }
        }
        let caps: Vec<&herald_config::CapConfig> = self
            .settings
            .caps
            .iter()
            .filter(|c| c.channels.is_empty() || c.channels.contains(&message.channel))
            .collect();
        if caps.is_empty() {
            return Ok(Decision::Send);
        }
        let widest = caps.iter().map(|c| c.window_ms()).max().unwrap_or(0);
        // Held from the count to the hold, so a send decided meanwhile sees this one.
        let mut holds = self
            .holds
            .map(|(h, key)| (h.inner.lock().unwrap_or_else(|e| e.into_inner()), key));
        // The contact's marketing messages sent within the widest window: (time, channel).
        let mut sent: Vec<(i64, String)> = Vec::new();
        let mut recorded: std::collections::HashSet<String> = Default::default();
        for run in self.store.runs_of_contact(&message.contact)? {
            if run.updated_at < now - widest {
                continue;
            }
            for (i, step) in self.store.journal(&run.id)?.into_iter().enumerate() {
                // A result in the journal: the hold (if any) no longer needs counting.
                if step.kind == "send"
                    && matches!(
                        step.status,
                        crate::model::StepStatus::Done
                            | crate::model::StepStatus::Failed
                            | crate::model::StepStatus::Ambiguous
                    )
                {
                    recorded.insert(format!("{}:{i}", run.id));
                }
                let at = step.finished_at.unwrap_or(0);
                let marketing = step
                    .input
                    .get("topic")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| self.settings.is_marketing(Some(t)));
                if step.kind == "send"
                    && step.status == crate::model::StepStatus::Done
                    && step.result.get("status").and_then(|s| s.as_str()) == Some("sent")
                    && marketing
                    && at > now - widest
                {
                    let ch = step
                        .input
                        .get("channel")
                        .and_then(|c| c.as_str())
                        .unwrap_or("")
                        .to_string();
                    sent.push((at, ch));
                }
            }
        }
        // Let through but not recorded yet: counted as sent.
        if let Some((m, own)) = &holds {
            for (key, at, channel) in m.by_contact.get(&message.contact).into_iter().flatten() {
                if key != own && !recorded.contains(key) && *at > now - widest {
                    sent.push((*at, channel.clone()));
                }
            }
        }
        sent.sort();
        let mut until: Option<(i64, String)> = None;
        for cap in caps {
            let window = cap.window_ms();
            let counted: Vec<i64> = sent
                .iter()
                .filter(|(at, ch)| {
                    *at > now - window && (cap.channels.is_empty() || cap.channels.contains(ch))
                })
                .map(|(at, _)| *at)
                .collect();
            if counted.len() >= cap.max as usize {
                // Allowed again once enough of them have left the window.
                let oldest = counted[counted.len() - cap.max as usize];
                let free = oldest + window;
                let scope = if cap.channels.is_empty() {
                    "every channel".to_string()
                } else {
                    cap.channels.join(", ")
                };
                let reason = format!(
                    "frequency cap: {} marketing messages in {} on {scope} already",
                    counted.len(),
                    human_window(window)
                );
                if until.as_ref().is_none_or(|(u, _)| free > *u) {
                    until = Some((free, reason));
                }
            }
        }
        Ok(match until {
            Some((until, reason)) => Decision::Defer {
                until,
                rule: "frequency_cap",
                reason,
            },
            None => {
                if let Some((m, key)) = holds.as_mut() {
                    let m = &mut **m;
                    if m.by_key
                        .insert(key.to_string(), message.contact.clone())
                        .is_none()
                    {
                        m.by_contact
                            .entry(message.contact.clone())
                            .or_default()
                            .push((key.to_string(), now, message.channel.clone()));
                    }
                }
                Decision::Send
            }
        })
    }
}

fn human_window(ms: i64) -> String {
    if ms % 86_400_000 == 0 {
        format!("{} days", ms / 86_400_000)
    } else {
        format!("{} hours", ms / 3_600_000)
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
