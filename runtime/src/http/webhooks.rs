//! Provider callbacks (`POST /v1/webhooks/{channel}`), parsed by the channel's connector.

#[allow(unused_imports)]
use super::*;

/// Provider callbacks (delivered, opened, clicked, bounced, …): the channel's connector turns
/// the request into events, which land on the contact's timeline as `<channel>_<kind>` (for
/// example `email_opened`), count in metrics and can satisfy `wait_for`. Authenticity is the
/// connector's job (Twilio's request signature, Postmark's Basic credentials), so it gets the
/// request whole; a connector refuses what it cannot authenticate, and a refusal is a 400
/// `webhook_rejected` that records nothing.
pub(super) async fn provider_webhook(
    State(shared): State<Arc<Shared>>,
    Path(channel): Path<String>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let state = shared.engine.state();
    let plugin = state.plugins.get(&channel).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "channel_not_found",
            format!("no plugin channel \"{channel}\" receives webhooks"),
        )
    })?;
    let req = herald_plugin_host::WebhookRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
    };
    let events = blocking(move || plugin.parse_webhook(&req))
        .await?
        .map_err(|e| {
            shared.engine.metrics.rejected("webhook_rejected");
            ApiError::new(StatusCode::BAD_REQUEST, "webhook_rejected", e.to_string())
        })?;
    let callbacks = {
        let engine = shared.engine.clone();
        let channel = channel.clone();
        let now = shared.engine.clock.now_ms();
        blocking(move || -> Result<_, crate::store::StoreError> {
            let mut callbacks = crate::ingest::callbacks::timeline_events(
                engine.store.as_ref(),
                &channel,
                events,
                now,
            )?;
            // Bounces, complaints and unsubscribes reach the suppression list before the
            // provider hears back, so the next send to the address is already skipped.
            let changes = std::mem::take(&mut callbacks.suppression);
            if !changes.is_empty() {
                let mut batch = crate::store::WriteBatch::new();
                for w in changes {
                    batch.push(w);
                }
                engine.apply_durably(&batch)?;
            }
            Ok(callbacks)
        })
        .await??
    };
    let (messages, unmatched) = (callbacks.messages, callbacks.unmatched);
    let n = messages.len();
    let accepted = if n > 0 {
        shared
            .ingestor
            .ingest(messages)
            .await
            .map_err(ingest_error)?
            .accepted
    } else {
        0
    };
    Ok(Json(
        json!({"received": n + unmatched, "accepted": accepted, "unmatched": unmatched}),
    ))
}
