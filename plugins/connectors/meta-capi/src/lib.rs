//! Meta Conversions API connector for Herald.
//!
//! Operation `conversion` sends one server event to
//! `POST {api_base}/{api_version}/{pixel_id}/events`:
//! `{"data": [{"event_name", "event_time", "event_id", "action_source",
//! "event_source_url", "user_data": {...hashed...}, "custom_data": {...}}]}`.
//! `event_id` is Herald's idempotency key, so Meta deduplicates a retried
//! event (and a browser pixel event with the same id) — hence idempotency
//! support. `user_data` identifiers are normalised and SHA-256 hashed per
//! Meta's customer-information parameter rules (`em`, `ph`, `fn`, `ln`, `ct`,
//! `st`, `zp`, `country`, `external_id`); `client_ip_address`,
//! `client_user_agent`, `fbc` and `fbp` are sent unhashed as documented.
//!
//! Payload: `event_name` (required), `event_time` (unix seconds, default
//! now), `event_source_url`, `custom_data` (object: value, currency,
//! content_ids...), `client_ip_address`, `client_user_agent`, `fbc`, `fbp`.
use herald_plugin_sdk::prelude::*;
use sha2::{Digest, Sha256};

struct MetaCapi;

const SCHEMA: &str = include_str!("../config.schema.json");

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn norm(key: &str, v: &str) -> Option<String> {
    let v = v.trim().to_lowercase();
    let out: String = match key {
        "em" => v,
        "ph" => v
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect::<String>()
            .trim_start_matches('0')
            .to_string(),
        "fn" | "ln" | "ct" => v.chars().filter(|c| c.is_alphabetic()).collect(),
        "st" | "country" => v
            .chars()
            .filter(|c| c.is_ascii_alphabetic())
            .take(2)
            .collect(),
        "zp" => v
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect(),
        _ => v,
    };
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

impl Plugin for MetaCapi {
    fn describe() -> Description {
        Description::new("meta-capi", env!("CARGO_PKG_VERSION"))
            .display_name("Meta Conversions API")
            .contact_fields(&["email", "phone", "first_name", "last_name", "city", "state", "zip", "country", "external_id"])
            .delivers_messages(false)
            .idempotent(true)
            .operation(
                "conversion",
                "Send a server-side conversion event (event_id = idempotency key)",
            )
            .config_schema(serde_json::from_str(SCHEMA).expect("schema is valid JSON"))
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("pixel_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) => Ok(()),
            _ => Err("`pixel_id` must be the numeric pixel / dataset id".into()),
        }
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        if msg.operation_name() != "conversion" {
            return Err(SendError::InvalidInput(format!(
                "unsupported operation `{}`",
                msg.operation_name()
            )));
        }
        let p = msg.payload_json();
        let f = msg.fields_json();
        let event_name = p
            .get("event_name")
            .and_then(Value::as_str)
            .ok_or_else(|| SendError::InvalidInput("payload.event_name is required".into()))?;
        let event_time = p
            .get("event_time")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0)
            });
        let mut user = serde_json::Map::new();
        let email = if msg.to.contains('@') {
            Some(msg.to.clone())
        } else {
            f.get("email").and_then(Value::as_str).map(str::to_string)
        };
        let sources = [
            ("em", email),
            (
                "ph",
                f.get("phone").and_then(Value::as_str).map(str::to_string),
            ),
            (
                "fn",
                f.get("first_name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            (
                "ln",
                f.get("last_name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            (
                "ct",
                f.get("city").and_then(Value::as_str).map(str::to_string),
            ),
            (
                "st",
                f.get("state").and_then(Value::as_str).map(str::to_string),
            ),
            (
                "zp",
                f.get("zip").and_then(Value::as_str).map(str::to_string),
            ),
            (
                "country",
                f.get("country").and_then(Value::as_str).map(str::to_string),
            ),
            (
                "external_id",
                f.get("external_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
        ];
        for (key, v) in sources {
            if let Some(n) = v.as_deref().and_then(|v| norm(key, v)) {
                user.insert(key.into(), json!([hash(&n)]));
            }
        }
        for key in ["client_ip_address", "client_user_agent", "fbc", "fbp"] {
            if let Some(v) = p.get(key).and_then(Value::as_str) {
                user.insert(key.into(), json!(v));
            }
        }
        if user.is_empty() {
            return Err(SendError::InvalidInput(
                "no customer information parameter for user_data".into(),
            ));
        }
        let mut event = json!({
            "event_name": event_name,
            "event_time": event_time,
            "event_id": msg.idempotency_key,
            "action_source": p.get("action_source").and_then(Value::as_str).map(str::to_string)
                .or_else(|| config::get_str("action_source")).unwrap_or_else(|| "system_generated".into()),
            "user_data": user,
        });
        if let Some(u) = p.get("event_source_url").and_then(Value::as_str) {
            event["event_source_url"] = json!(u);
        }
        if let Some(c) = p.get("custom_data").filter(|c| c.is_object()) {
            event["custom_data"] = c.clone();
        }
        let mut body = json!({ "data": [event] });
        if let Some(code) = config::get_str("test_event_code") {
            body["test_event_code"] = json!(code);
        }
        let base =
            config::get_str("api_base").unwrap_or_else(|| "https://graph.facebook.com".into());
        let version = config::get_str("api_version").unwrap_or_else(|| "v21.0".into());
        let pixel = config::require_str("pixel_id")?;
        let resp = http::Request::post(&format!(
            "{}/{version}/{pixel}/events",
            base.trim_end_matches('/')
        ))
        .bearer("META_ACCESS_TOKEN")
        .json(&body)
        .send()?;
        if !(200..300).contains(&resp.status()) {
            let j = resp.json();
            let code = j
                .pointer("/error/code")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let message = j
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            return Err(match code {
                190 | 200 | 10 => SendError::Unauthorized(format!("Graph API {code}: {message}")),
                4 | 17 | 32 | 613 => SendError::RateLimited(RateLimit {
                    retry_after_ms: 60_000,
                    message,
                }),
                100 => SendError::InvalidInput(format!("Graph API {code}: {message}")),
                _ => resp
                    .error_for_status()
                    .err()
                    .unwrap_or(SendError::Ambiguous(message)),
            });
        }
        let received = resp
            .json()
            .get("events_received")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if received != 1 {
            return Err(SendError::Ambiguous(format!(
                "Meta reported {received} events received"
            )));
        }
        Ok(Sent::with_id(resp.json_field("fbtrace_id"))
            .details(json!({ "events_received": received, "event_id": msg.idempotency_key })))
    }
}

export_plugin!(MetaCapi);
