//! The native webhook channel: each message POSTed as JSON, with an `Idempotency-Key`.

#[allow(unused_imports)]
use super::*;

/// POSTs each message as JSON, with the idempotency key in an `Idempotency-Key` header.
pub struct WebhookChannel {
    url: String,
    agent: ureq::Agent,
}

impl WebhookChannel {
    /// A webhook channel posting to `url`, keeping up to `connections` idle connections for
    /// reuse (the channel's delivery concurrency, so sends in flight do not reconnect).
    pub fn new(url: String, timeout: Duration, connections: usize) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .max_idle_connections(connections.max(1))
            .max_idle_connections_per_host(connections.max(1))
            .build();
        WebhookChannel { url, agent }
    }
}

fn retry_after_ms(resp: &ureq::Response) -> u64 {
    resp.header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s * 1000)
        .unwrap_or(1000)
}

impl Channel for WebhookChannel {
    fn supports_idempotency(&self) -> bool {
        true
    }

    fn send(&self, message: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let body = serde_json::to_string(message)
            .map_err(|e| ChannelError::InvalidInput(e.to_string()))?;
        let result = self
            .agent
            .post(&self.url)
            .set("content-type", "application/json")
            .set("idempotency-key", &message.idempotency_key)
            .send_string(&body);
        match result {
            Ok(resp) => {
                let text = resp.into_string().unwrap_or_default();
                let detail = serde_json::from_str(&text).unwrap_or(Value::String(text));
                let provider_id = detail.get("id").and_then(Value::as_str).map(String::from);
                Ok(Delivery {
                    provider_id,
                    detail,
                })
            }
            Err(ureq::Error::Status(code, resp)) => {
                let retry = retry_after_ms(&resp);
                let text = resp.into_string().unwrap_or_default();
                let msg = format!(
                    "HTTP {code}: {}",
                    text.chars().take(300).collect::<String>()
                );
                Err(match code {
                    401 | 403 => ChannelError::Unauthorized(msg),
                    429 => ChannelError::RateLimited {
                        retry_after_ms: retry,
                        message: msg,
                    },
                    408 | 500..=599 => ChannelError::Transient(msg),
                    _ => ChannelError::InvalidInput(msg),
                })
            }
            // The request may or may not have reached the server; the key makes a retry safe.
            Err(ureq::Error::Transport(t)) => Err(ChannelError::Transient(t.to_string())),
        }
    }
}
