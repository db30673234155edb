//! A Herald channel connector: POSTs each message as JSON to the configured `url`, and turns
//! signed delivery callbacks into Herald events.
//!
//! The host (Herald) provides only what `wit/channel.wit` imports: `http` to the hosts the
//! manifest or the operator allow, `smtp`, `crypto` with secrets the plugin never sees,
//! `config` and `log`. There is no `wasi:http`, no file system, no environment, no sockets.
//! What the plugin prints goes to the daemon's log; a panic's message is the step's error.
use herald_plugin_sdk::prelude::*;

struct ExampleConnector;

/// JSON Schema of the channel's `config` in herald.toml; the host checks it before
/// `validate_config` runs and names each mistake by where it is.
fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["url"],
        "properties": { "url": { "type": "string", "description": "Where messages are POSTed" } },
        "additionalProperties": false
    })
}

impl Plugin for ExampleConnector {
    fn describe() -> Description {
        Description::new("example-connector", env!("CARGO_PKG_VERSION"))
            .display_name("Example connector")
            .config_schema(schema())
            // Only these contact fields reach the plugin (plugin.toml says the same).
            .contact_fields(&["email", "first_name"])
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("url").and_then(Value::as_str) {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
            _ => Err("`url` must be an http(s) URL".into()),
        }
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        let to = msg.require_to()?.to_string();
        println!("sending {} to {to}", msg.idempotency_key);
        let body = json!({
            "id": msg.idempotency_key,
            "to": to,
            "to_name": msg.to_name,
            "subject": msg.subject,
            "text": msg.text,
            "fields": msg.fields_json(),
        });
        let resp = http::Request::post(&config::require_str("url")?)
            .header("Content-Type", "application/json")
            // The same key on every retry of this message: the receiver can deduplicate.
            .header("Idempotency-Key", &msg.idempotency_key)
            .json(&body)
            // A refused or failed connection, a timeout: typed errors the engine retries or not.
            .send()?
            // 401/403 unauthorized, 429 rate limited, 5xx transient, other 4xx invalid input.
            .error_for_status()?;
        let id = resp.json_field("id");
        log::info("message accepted", &[("id", id.as_deref().unwrap_or(""))]);
        Ok(Sent::with_id(id))
    }

    fn parse_webhook(req: WebhookRequest) -> Result<Vec<WebhookEvent>, String> {
        if req.method != "POST" {
            return Err("callbacks are POSTed".into());
        }
        // Fail closed: without the secret nothing can be verified, so nothing is accepted.
        let expected = crypto::hmac_sha256("WEBHOOK_SECRET", &req.body)
            .map_err(|e| format!("WEBHOOK_SECRET is not available ({e}); callbacks are refused"))?;
        let presented = req.header("x-signature").ok_or("missing X-Signature")?;
        if !crypto::constant_time_eq(hex::encode(expected).as_bytes(), presented.as_bytes()) {
            return Err("invalid X-Signature".into());
        }
        let j = req.body_json()?;
        let event = match j["type"].as_str() {
            Some("delivered") => WebhookEvent::new(EventKind::Delivered),
            Some("bounced") => {
                let kind = if j["permanent"].as_bool() == Some(true) {
                    BounceKind::Hard
                } else {
                    BounceKind::Soft
                };
                WebhookEvent::bounced(kind, None)
            }
            _ => return Ok(vec![]),
        };
        Ok(vec![event
            .message_id(j["id"].as_str().map(Into::into))
            .recipient(j["to"].as_str().map(Into::into))])
    }
}

export_plugin!(ExampleConnector);
