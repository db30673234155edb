//! Mastodon connector for Herald: publishes a status.
//!
//! `POST {instance_url}/api/v1/statuses`, `Authorization: Bearer` with the
//! `MASTODON_ACCESS_TOKEN` secret (scope `write:statuses`), JSON body
//! `status`, `visibility`, optional `spoiler_text`, `language`,
//! `in_reply_to_id`, and Herald's idempotency key as `Idempotency-Key`
//! (Mastodon keeps it for an hour, so a retried post is not duplicated).
use herald_plugin_sdk::prelude::*;

struct Mastodon;

const SCHEMA: &str = include_str!("../config.schema.json");

impl Plugin for Mastodon {
    fn describe() -> Description {
        Description::new("mastodon", env!("CARGO_PKG_VERSION"))
            .display_name("Mastodon")
            .idempotent(true)
            .config_schema(serde_json::from_str(SCHEMA).expect("schema is valid JSON"))
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("instance_url").and_then(Value::as_str) {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(()),
            _ => Err(
                "`instance_url` must be the instance's base URL, e.g. https://mastodon.social"
                    .into(),
            ),
        }
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        if !msg.operation_name().is_empty() {
            return Err(SendError::InvalidInput(format!(
                "unsupported operation `{}`",
                msg.operation_name()
            )));
        }
        let status = msg
            .text
            .clone()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| SendError::InvalidInput("a status needs text".into()))?;
        let max = config::get("max_characters")
            .and_then(|v| v.as_u64())
            .unwrap_or(500) as usize;
        if status.chars().count() > max {
            return Err(SendError::InvalidInput(format!(
                "status is longer than {max} characters"
            )));
        }
        let payload = msg.payload_json();
        let mut body = json!({
            "status": status,
            "visibility": payload.get("visibility").and_then(Value::as_str).map(str::to_string)
                .or_else(|| config::get_str("visibility")).unwrap_or_else(|| "public".into()),
        });
        if let Some(s) = &msg.subject {
            body["spoiler_text"] = json!(s);
        }
        if let Some(l) = config::get_str("language") {
            body["language"] = json!(l);
        }
        if let Some(r) = payload.get("in_reply_to_id").and_then(Value::as_str) {
            body["in_reply_to_id"] = json!(r);
        }
        let base = config::require_str("instance_url")?;
        let resp = http::Request::post(&format!("{}/api/v1/statuses", base.trim_end_matches('/')))
            .bearer("MASTODON_ACCESS_TOKEN")
            .header("Idempotency-Key", &msg.idempotency_key)
            .json(&body)
            .send()?;
        if resp.status() == 422 {
            let err = resp.json_field("error").unwrap_or_default();
            return Err(SendError::InvalidInput(format!(
                "Mastodon rejected the status: {err}"
            )));
        }
        // 429 becomes rate-limited via Retry-After; other statuses map as usual.
        let resp = resp.error_for_status()?;
        let id = resp
            .json_field("id")
            .ok_or_else(|| SendError::Ambiguous("Mastodon returned no status id".into()))?;
        Ok(Sent::with_id(Some(id)).details(json!({ "url": resp.json_field("url") })))
    }
}

export_plugin!(Mastodon);
