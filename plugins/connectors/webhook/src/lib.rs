//! Generic outbound webhook for Herald.
//!
//! POSTs a JSON envelope to the configured URL:
//!
//! ```json
//! {"id": "<idempotency key>", "type": "message" | "<operation>", "timestamp": 1700000000,
//!  "to": "...", "to_name": ..., "from": ..., "reply_to": ..., "subject": ...,
//!  "preheader": ..., "text": ..., "html": ..., "topic": ..., "headers": [["Name", "value"]],
//!  "unsubscribe": {"url": ..., "one_click_url": ...} | null, "metadata": {...},
//!  "front_matter": {...}, "fields": {...}, "payload": {...}}
//! ```
//!
//! `fields` holds the contact's `email`, `phone`, `name`, `first_name` and
//! `last_name` (those it has); `front_matter` the template's rendered front
//! matter. (Before version 0.2.0 of this connector, `fields` held the front
//! matter and there was no `front_matter`.)
//!
//! with headers `Idempotency-Key: <id>`, `X-Herald-Timestamp: <unix seconds>`
//! and `X-Herald-Signature: sha256=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`.
//! The HMAC key (`WEBHOOK_SIGNING_KEY`) stays in the host: the plugin asks the
//! host's `crypto` capability to sign. Receivers verify by recomputing the
//! HMAC over the timestamp, a dot and the raw body, and should reject stale
//! timestamps and dedupe on `Idempotency-Key`.
//!
//! The connector only sends: it accepts no callbacks, so every request to
//! `/v1/webhooks/<channel>` for it is refused. A receiver that wants to report
//! back to Herald sends events through the ingest API with a server key, which
//! is authenticated already.
use herald_plugin_sdk::prelude::*;

struct Webhook;

const SCHEMA: &str = include_str!("../config.schema.json");

impl Plugin for Webhook {
    fn describe() -> Description {
        let mut d = Description::new("webhook", env!("CARGO_PKG_VERSION"))
            .display_name("Outbound webhook")
            .contact_fields(&["email", "phone", "name", "first_name", "last_name"])
            .config_schema(serde_json::from_str(SCHEMA).expect("schema is valid JSON"));
        // Any operation name is forwarded as the envelope `type`.
        for op in ["event", "audience-add", "audience-remove", "conversion"] {
            d = d.operation(op, "forwarded as the envelope `type`");
        }
        d
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("url").and_then(Value::as_str) {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(()),
            _ => Err("`url` must be an http(s) URL".into()),
        }
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let kind = if msg.operation_name().is_empty() {
            "message"
        } else {
            msg.operation_name()
        };
        let metadata: serde_json::Map<String, Value> = msg
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let envelope = json!({
            "id": msg.idempotency_key,
            "type": kind,
            "timestamp": timestamp,
            "to": msg.to,
            "to_name": msg.to_name,
            "from": msg.from,
            "reply_to": msg.reply_to,
            "subject": msg.subject,
            "preheader": msg.preheader,
            "text": msg.text,
            "html": msg.html,
            "topic": msg.topic,
            "headers": msg.headers,
            "unsubscribe": msg.unsubscribe.as_ref().map(|u| json!({
                "url": u.url,
                "one_click_url": u.one_click_url,
            })),
            "metadata": metadata,
            "front_matter": msg.front_matter_json(),
            "fields": msg.fields_json(),
            "payload": msg.payload_json(),
        });
        let body = envelope.to_string();
        let signed = format!("{timestamp}.{body}");
        let mac = crypto::hmac_sha256("WEBHOOK_SIGNING_KEY", signed.as_bytes())
            .map_err(|e| SendError::Unauthorized(format!("cannot sign: {e}")))?;
        let url = config::require_str("url")?;
        let mut req = http::Request::post(&url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &msg.idempotency_key)
            .header("X-Herald-Timestamp", &timestamp.to_string())
            .header(
                "X-Herald-Signature",
                &format!("sha256={}", hex::encode(mac)),
            );
        if let Some(Value::Object(extra)) = config::get("headers") {
            for (k, v) in extra {
                req = req.header(&k, v.as_str().unwrap_or_default());
            }
        }
        let resp = req.body(body).send()?.error_for_status()?;
        Ok(Sent::with_id(resp.json_field("id")).details(json!({ "status": resp.status() })))
    }

    fn parse_webhook(_req: WebhookRequest) -> Result<Vec<WebhookEvent>, String> {
        Err(
            "the webhook connector only sends and accepts no callbacks; report events \
             to Herald through the ingest API with a server key"
                .into(),
        )
    }
}

export_plugin!(Webhook);
