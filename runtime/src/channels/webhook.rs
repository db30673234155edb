//! The native webhook channel: each message POSTed as JSON, with an `Idempotency-Key`.

#[allow(unused_imports)]
use super::*;
use herald_plugin_host::net::error_chain;

/// POSTs each message as JSON, with the idempotency key in an `Idempotency-Key` header.
pub struct WebhookChannel {
    url: String,
    client: reqwest::Client,
}

impl WebhookChannel {
    /// A webhook channel posting to `url`, keeping up to `connections` idle connections for
    /// reuse (the channel's delivery concurrency, so sends in flight do not reconnect).
    pub fn new(url: String, timeout: Duration, connections: usize) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(connections.max(1))
            .build()
            // Only a broken TLS setup makes the builder fail; the default one cannot.
            .unwrap_or_else(|_| reqwest::Client::new());
        WebhookChannel { url, client }
    }

    async fn post(&self, message: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let body =
            serde_json::to_vec(message).map_err(|e| ChannelError::InvalidInput(e.to_string()))?;
        let response = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("idempotency-key", &message.idempotency_key)
            .body(body)
            .send()
            .await
            // The request may or may not have reached the server; the key makes a retry safe.
            .map_err(|e| ChannelError::Transient(error_chain(&e)))?;
        let code = response.status().as_u16();
        let retry = retry_after_ms(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| ChannelError::Transient(error_chain(&e)))?;
        if response_ok(code) {
            let detail = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let provider_id = detail.get("id").and_then(Value::as_str).map(String::from);
            return Ok(Delivery {
                provider_id,
                detail,
            });
        }
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
}

fn response_ok(code: u16) -> bool {
    (200..300).contains(&code)
}

fn retry_after_ms(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s * 1000)
        .unwrap_or(1000)
}

impl Channel for WebhookChannel {
    fn supports_idempotency(&self) -> bool {
        true
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> SendFuture<'a> {
        Box::pin(self.post(message))
    }
}
