//! Benchmark plugin. `send` does what a typical HTTP connector does before
//! its request — read config, build the provider's JSON body from the message
//! and contact fields — then hashes the body instead of sending it, so the
//! benchmark measures the plugin path (instantiate + call + return) against
//! the identical native function without network noise.
use herald_plugin_sdk::prelude::*;
use sha2::{Digest, Sha256};

struct Bench;

impl Plugin for Bench {
    fn describe() -> Description {
        Description::new("bench", env!("CARGO_PKG_VERSION"))
            .config_schema(json!({"type": "object"}))
            .contact_fields(&["first_name"])
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        let from = config::get_str("from").unwrap_or_default();
        let fields = msg.fields_json();
        let body = json!({
            "From": from,
            "To": msg.to,
            "Subject": msg.subject,
            "TextBody": msg.text,
            "HtmlBody": msg.html,
            "Metadata": { "key": msg.idempotency_key, "name": fields.get("first_name") },
        })
        .to_string();
        let digest = hex::encode(Sha256::digest(body.as_bytes()));
        Ok(Sent::with_id(Some(digest)))
    }
}

export_plugin!(Bench);
