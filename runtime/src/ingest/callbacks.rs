//! Provider callbacks as timeline events: each event a connector parsed from a provider's
//! request (delivered, opened, clicked, bounced, …) is matched to the message Herald sent
//! (through the provider-message record written when the channel accepted it) and becomes a
//! `<channel>_<kind>` event on that contact's timeline, deduplicated against a repeated
//! callback.

use serde_json::{json, Value};

use crate::ingest::Message;
use crate::store::{Store, StoreError};

/// What a batch of callback events comes to.
#[derive(Debug, Default)]
pub struct Callbacks {
    /// Timeline events for messages Herald sent, ready for ingest.
    pub messages: Vec<Message>,
    /// Events about messages Herald did not send (or no longer knows).
    pub unmatched: usize,
    /// Suppression-list changes: hard bounces, complaints and unsubscribes suppress the
    /// address on the channel; a resubscription lifts an unsubscribe (never a bounce or a
    /// complaint). Applied whether or not the message is one Herald knows (an SMS STOP
    /// arrives as an inbound message).
    pub suppression: Vec<crate::store::Write>,
}

/// The suppression-list change a callback event makes, if any.
fn suppression_change(
    store: &dyn Store,
    channel: &str,
    ev: &herald_plugin_host::WebhookEvent,
    owner: Option<&crate::model::ProviderMessage>,
    now: i64,
) -> Result<Option<crate::store::Write>, StoreError> {
    use crate::model::{normalize_address, Suppression, SuppressionReason};
    let reason = match ev.kind.as_str() {
        "bounced" if ev.bounce.as_ref().is_some_and(|b| b.kind == "hard") => {
            SuppressionReason::HardBounce
        }
        "complained" => SuppressionReason::Complaint,
        "unsubscribed" => SuppressionReason::Unsubscribed,
        "resubscribed" => SuppressionReason::Unsubscribed,
        _ => return Ok(None),
    };
    // The recipient as the provider names it, else the address the message went to.
    let mut address = ev.recipient.clone().filter(|r| !r.trim().is_empty());
    if address.is_none() {
        if let Some(o) = owner {
            address = store
                .journal(&o.run)?
                .get(o.step as usize)
                .and_then(|s| s.input.get("to"))
                .and_then(Value::as_str)
                .map(str::to_string);
        }
    }
    let Some(address) = address.map(|a| normalize_address(&a)) else {
        return Ok(None);
    };
    if ev.kind == "resubscribed" {
        let lift = store
            .suppression(channel, &address)?
            .is_some_and(|s| s.reason == SuppressionReason::Unsubscribed);
        return Ok(lift.then(|| crate::store::Write::Unsuppress {
            channel: channel.to_string(),
            address,
        }));
    }
    let detail = ev
        .bounce
        .as_ref()
        .and_then(|b| b.reason.clone())
        .map(|r| r.chars().take(512).collect());
    Ok(Some(crate::store::Write::Suppress(Suppression {
        channel: channel.to_string(),
        address,
        reason,
        at: ev.timestamp_ms.unwrap_or(now),
        source: "callback".into(),
        detail,
    })))
}

/// Match `events` from a connector of `channel` to the messages they are about.
pub fn timeline_events(
    store: &dyn Store,
    channel: &str,
    events: Vec<herald_plugin_host::WebhookEvent>,
    now: i64,
) -> Result<Callbacks, StoreError> {
    let mut out = Callbacks::default();
    for ev in events {
        let owner = match &ev.message_id {
            Some(id) => store.provider_message(channel, id)?,
            None => None,
        };
        if let Some(w) = suppression_change(store, channel, &ev, owner.as_ref(), now)? {
            out.suppression.push(w);
        }
        let Some(owner) = owner else {
            out.unmatched += 1;
            tracing::info!(channel, kind = ev.kind, message = ?ev.message_id, "provider callback for a message Herald did not send");
            continue;
        };
        let mut props = match ev.properties.clone() {
            Value::Object(m) => m,
            _ => Default::default(),
        };
        props.insert("provider_message_id".into(), json!(ev.message_id));
        props.insert("recipient".into(), json!(ev.recipient));
        props.insert("run".into(), json!(owner.run));
        props.insert("step".into(), json!(owner.step));
        props.insert("message_id".into(), json!(owner.key));
        props.insert("channel".into(), json!(channel));
        if let Some(b) = &ev.bounce {
            // `hard`, `soft` or `undetermined`, as the connector read it from the provider.
            props.insert("bounce_type".into(), json!(b.kind));
            if let Some(reason) = &b.reason {
                props.insert("bounce_reason".into(), json!(reason));
            }
        }
        if ev.machine {
            props.insert("machine".into(), json!(true));
        }
        // Opens and clicks are one fact per message (and link), whether the provider or
        // Herald's own pixel and redirect saw it first; a machine's are kept apart.
        let engagement = matches!(ev.kind.as_str(), "opened" | "clicked");
        let kind = if engagement && ev.machine {
            format!("machine_{}", ev.kind)
        } else {
            ev.kind.clone()
        };
        let dedupe = if engagement {
            crate::engagement::dedupe_key(
                channel,
                &owner.key,
                &kind,
                ev.properties.get("url").and_then(Value::as_str),
            )
        } else {
            format!(
                "webhook:{channel}:{}:{}:{}",
                ev.message_id.as_deref().unwrap_or(""),
                ev.kind,
                ev.timestamp_ms.unwrap_or(0)
            )
        };
        out.messages.push(Message::for_contact(
            &owner.contact,
            &format!("{channel}_{kind}"),
            Value::Object(props),
            ev.timestamp_ms,
            Some(dedupe),
        ));
    }
    Ok(out)
}
