//! The open pixel (`GET /o/{token}`) and the click redirect (`GET /c/{token}`) of tracked
//! messages. A token that does not verify is a 404 (and never a redirect: the destination
//! comes only from a signed token); a valid one answers at once whatever happens to the
//! event, which is ingested like a provider callback (durable, deduplicated, on the
//! contact's timeline, handed to the engine).

#[allow(unused_imports)]
use super::*;

use crate::engagement::{timeline_event, verify_click, verify_open, Engagement};

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        "This link is not valid: it was changed, or made by another Herald.\n",
    )
        .into_response()
}

/// Record an open or click as a timeline event; failures are logged, never shown to the
/// person who clicked.
async fn record(shared: Arc<Shared>, e: Engagement, headers: &HeaderMap) {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let engine = shared.engine.clone();
    let now = engine.clock.now_ms();
    let message =
        blocking(move || timeline_event(engine.store.as_ref(), &e, ua.as_deref(), now)).await;
    match message {
        Ok(Ok(Some(m))) => {
            if let Err(e) = shared.ingestor.ingest(vec![m]).await {
                tracing::warn!(error = %e, "recording an open or click failed");
            }
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "recording an open or click failed"),
        Err(_) => tracing::warn!("recording an open or click failed: the task did not finish"),
    }
}

/// `GET /o/{token}`: the open pixel.
pub(super) async fn open_pixel(
    State(shared): State<Arc<Shared>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(e) = verify_open(&shared.engine.link_keys(), &token) else {
        return not_found();
    };
    record(shared, e, &headers).await;
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, max-age=0"),
        ],
        PIXEL,
    )
        .into_response()
}

/// `GET /v/{token}`: the message as it was sent ("view in browser"), from its journaled step.
pub(super) async fn view_in_browser(
    State(shared): State<Arc<Shared>>,
    Path(token): Path<String>,
) -> Response {
    let Ok(e) = crate::engagement::verify_view(&shared.engine.link_keys(), &token) else {
        return not_found();
    };
    let engine = shared.engine.clone();
    let found = blocking(move || -> Option<String> {
        let (run, step) = e.message.rsplit_once(':')?;
        let step: usize = step.parse().ok()?;
        let journal = engine.store.journal(run).ok()?;
        let input = &journal.get(step)?.input;
        if input.get("contact").and_then(Value::as_str) != Some(e.contact.as_str()) {
            return None;
        }
        match input.get("html").and_then(Value::as_str) {
            Some(html) => Some(html.to_string()),
            None => input.get("body").and_then(Value::as_str).map(|b| {
                format!(
                    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head><body><pre style=\"white-space:pre-wrap;font:1rem/1.5 system-ui,sans-serif\">{}</pre></body></html>",
                    html_escape::encode_text(input.get("subject").and_then(Value::as_str).unwrap_or("Message")),
                    html_escape::encode_text(b)
                )
            }),
        }
    })
    .await;
    match found {
        Ok(Some(html)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "private, no-store"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; img-src * data:; style-src 'unsafe-inline'; font-src *",
                ),
            ],
            html,
        )
            .into_response(),
        _ => not_found(),
    }
}

/// `GET /c/{token}`: record the click and redirect to the link's destination.
pub(super) async fn click_redirect(
    State(shared): State<Arc<Shared>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(e) = verify_click(&shared.engine.link_keys(), &token) else {
        return not_found();
    };
    let url = e.url.clone().unwrap_or_default();
    record(shared, e, &headers).await;
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, url.as_str()),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
    )
        .into_response()
}
