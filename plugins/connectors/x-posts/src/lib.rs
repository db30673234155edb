//! X (Twitter) posts connector for Herald.
//!
//! `POST {api_base}/2/tweets` with `Authorization: Bearer` (an OAuth 2.0
//! user-context token with `tweet.write`, secret `X_USER_ACCESS_TOKEN`) and the
//! JSON body `{"text": ..., "reply": {"in_reply_to_tweet_id": ...}}`.
//! Success is `201 {"data": {"id", "text"}}`; a 429 carries
//! `x-rate-limit-reset` (epoch seconds), turned into a retry-after.
use herald_plugin_sdk::prelude::*;

struct XPosts;

const SCHEMA: &str = include_str!("../config.schema.json");

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Plugin for XPosts {
    fn describe() -> Description {
        Description::new("x-posts", env!("CARGO_PKG_VERSION"))
            .display_name("X posts")
            .config_schema(serde_json::from_str(SCHEMA).expect("schema is valid JSON"))
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        if !msg.operation_name().is_empty() {
            return Err(SendError::InvalidInput(format!(
                "unsupported operation `{}`",
                msg.operation_name()
            )));
        }
        let text = msg
            .text
            .clone()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| SendError::InvalidInput("a post needs text".into()))?;
        let max = config::get("max_characters")
            .and_then(|v| v.as_u64())
            .unwrap_or(280) as usize;
        if text.chars().count() > max {
            return Err(SendError::InvalidInput(format!(
                "post is longer than {max} characters"
            )));
        }
        let payload = msg.payload_json();
        let mut body = json!({ "text": text });
        if let Some(r) = payload.get("in_reply_to_tweet_id").and_then(Value::as_str) {
            body["reply"] = json!({ "in_reply_to_tweet_id": r });
        }
        let base = config::get_str("api_base").unwrap_or_else(|| "https://api.x.com".into());
        let resp = http::Request::post(&format!("{}/2/tweets", base.trim_end_matches('/')))
            .bearer("X_USER_ACCESS_TOKEN")
            .json(&body)
            .send()?;
        match resp.status() {
            201 | 200 => {
                let id = resp
                    .json_field("/data/id")
                    .ok_or_else(|| SendError::Ambiguous("X returned no post id".into()))?;
                Ok(Sent::with_id(Some(id)))
            }
            429 => {
                let reset = resp
                    .header("x-rate-limit-reset")
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let wait_ms = reset
                    .map(|r| r.saturating_sub(now_secs()).max(1) * 1000)
                    .unwrap_or(15 * 60 * 1000);
                Err(SendError::RateLimited(RateLimit {
                    retry_after_ms: wait_ms,
                    message: resp.text(),
                }))
            }
            // 403 with "duplicate content" means the same text was already posted.
            403 if resp.text().contains("duplicate") => Err(SendError::InvalidInput(format!(
                "X refused a duplicate post: {}",
                resp.text()
            ))),
            _ => Err(resp
                .error_for_status()
                .err()
                .unwrap_or_else(|| SendError::Ambiguous("unexpected status".into()))),
        }
    }
}

export_plugin!(XPosts);
