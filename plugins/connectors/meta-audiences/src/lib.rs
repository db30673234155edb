//! Meta Custom Audiences connector for Herald.
//!
//! Operations `audience-add` and `audience-remove` call
//! `POST` / `DELETE {api_base}/{api_version}/{audience_id}/users` with
//! `{"payload": {"schema": [...], "data": [[...]]}}`. Every identifier is
//! normalised as Meta's customer-list rules require and SHA-256 hashed
//! (lower-case hex) inside the plugin, so plain PII never leaves Herald:
//!
//! | key | source | normalisation |
//! |---|---|---|
//! | EMAIL | `to` or `fields.email` | trim, lower-case |
//! | PHONE | `fields.phone` | digits only, no leading zeros, country code kept |
//! | FN / LN | `fields.first_name` / `last_name` | lower-case, letters only (UTF-8 kept) |
//! | CT | `fields.city` | lower-case, letters only, no spaces |
//! | ST | `fields.state` | lower-case, 2-letter code |
//! | ZIP | `fields.zip` | lower-case, no spaces or dashes; US: first 5 digits |
//! | COUNTRY | `fields.country` | lower-case ISO 3166-1 alpha-2 |
//! | GEN | `fields.gender` | `m` or `f` |
//! | DOBY / DOBM / DOBD | `fields.birthdate` (YYYY-MM-DD) | YYYY, MM, DD |
//! | EXTERN_ID | `fields.external_id` | not hashed |
//!
//! Adding or removing a member twice has the same effect as once, so the
//! plugin declares idempotency support.
use herald_plugin_sdk::prelude::*;
use sha2::{Digest, Sha256};

struct MetaAudiences;

const SCHEMA: &str = include_str!("../config.schema.json");

/// Lower-case hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Meta's normalisation of one identifier, or None when the value is unusable.
pub fn normalise(key: &str, raw: &str) -> Option<String> {
    let v = raw.trim();
    let out = match key {
        "EMAIL" => {
            let e = v.to_lowercase();
            if !e.contains('@') {
                return None;
            }
            e
        }
        "PHONE" => {
            let digits: String = v.chars().filter(|c| c.is_ascii_digit()).collect();
            let digits = digits.trim_start_matches('0').to_string();
            if digits.len() < 7 {
                return None;
            }
            digits
        }
        "FN" | "LN" => v
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphabetic())
            .collect(),
        "CT" => v
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphabetic())
            .collect(),
        "ST" => v
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphabetic())
            .take(2)
            .collect(),
        "ZIP" => {
            let z: String = v
                .to_lowercase()
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .collect();
            if z.len() >= 5 && z.chars().take(5).all(|c| c.is_ascii_digit()) {
                z[..5].to_string()
            } else {
                z
            }
        }
        "COUNTRY" => v
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphabetic())
            .collect(),
        "GEN" => match v.to_lowercase().chars().next()? {
            'm' => "m".into(),
            'f' => "f".into(),
            _ => return None,
        },
        _ => v.to_string(),
    };
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

fn identifiers(msg: &Outbound) -> Vec<(&'static str, String)> {
    let f = msg.fields_json();
    let s = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
    let mut ids = Vec::new();
    let email = if msg.to.contains('@') {
        Some(msg.to.clone())
    } else {
        s("email")
    };
    let mut push = |key: &'static str, v: Option<String>, hash: bool| {
        if let Some(n) = v.as_deref().and_then(|v| normalise(key, v)) {
            ids.push((key, if hash { sha256_hex(&n) } else { n }));
        }
    };
    push("EMAIL", email, true);
    push("PHONE", s("phone"), true);
    push("FN", s("first_name"), true);
    push("LN", s("last_name"), true);
    push("CT", s("city"), true);
    push("ST", s("state"), true);
    push("ZIP", s("zip"), true);
    push("COUNTRY", s("country"), true);
    push("GEN", s("gender"), true);
    if let Some(b) = s("birthdate") {
        let parts: Vec<&str> = b.split('-').collect();
        if parts.len() == 3 && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())) {
            push("DOBY", Some(parts[0].to_string()), true);
            push("DOBM", Some(format!("{:0>2}", parts[1])), true);
            push("DOBD", Some(format!("{:0>2}", parts[2])), true);
        }
    }
    push("EXTERN_ID", s("external_id"), false);
    ids
}

impl Plugin for MetaAudiences {
    fn describe() -> Description {
        Description::new("meta-audiences", env!("CARGO_PKG_VERSION"))
            .display_name("Meta Custom Audiences")
            .contact_fields(&["email", "phone", "first_name", "last_name", "city", "state", "zip", "country", "gender", "birthdate", "external_id"])
            .delivers_messages(false)
            .idempotent(true)
            .operation("audience-add", "Add the contact to the Custom Audience")
            .operation(
                "audience-remove",
                "Remove the contact from the Custom Audience",
            )
            .config_schema(serde_json::from_str(SCHEMA).expect("schema is valid JSON"))
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("audience_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) => Ok(()),
            _ => Err("`audience_id` must be the numeric Custom Audience id".into()),
        }
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        let method = match msg.operation_name() {
            "audience-add" => "POST",
            "audience-remove" => "DELETE",
            other => {
                return Err(SendError::InvalidInput(format!(
                    "unsupported operation `{other}`"
                )))
            }
        };
        let ids = identifiers(&msg);
        if ids.is_empty() {
            return Err(SendError::InvalidInput(
                "no usable identifier (email, phone, external_id...)".into(),
            ));
        }
        let schema: Vec<&str> = ids.iter().map(|(k, _)| *k).collect();
        let row: Vec<&str> = ids.iter().map(|(_, v)| v.as_str()).collect();
        let body = json!({ "payload": { "schema": schema, "data": [row] } });
        let base =
            config::get_str("api_base").unwrap_or_else(|| "https://graph.facebook.com".into());
        let version = config::get_str("api_version").unwrap_or_else(|| "v21.0".into());
        let audience = config::require_str("audience_id")?;
        let url = format!("{}/{version}/{audience}/users", base.trim_end_matches('/'));
        let resp = http::Request::new(method, &url)
            .bearer("META_ACCESS_TOKEN")
            .json(&body)
            .send()?;
        if !(200..300).contains(&resp.status()) {
            // Graph API errors: {"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}
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
                4 | 17 | 32 | 613 | 80003 => SendError::RateLimited(RateLimit {
                    retry_after_ms: 60_000,
                    message,
                }),
                _ => resp
                    .error_for_status()
                    .err()
                    .unwrap_or(SendError::Ambiguous(message)),
            });
        }
        let j = resp.json();
        let invalid = j
            .get("num_invalid_entries")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if invalid > 0 {
            return Err(SendError::InvalidInput(format!(
                "Meta rejected the identifiers: {}",
                j.get("invalid_entry_samples")
                    .cloned()
                    .unwrap_or(Value::Null)
            )));
        }
        Ok(Sent::with_id(resp.json_field("session_id")).details(json!({
            "audience_id": j.get("audience_id"),
            "num_received": j.get("num_received"),
            "schema": schema,
        })))
    }
}

export_plugin!(MetaAudiences);
