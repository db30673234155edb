//! HTTP: the Segment-compatible ingest API and the management API.

use crate::sync::LockExt as _;
use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::daemon::{Scope, Shared};
use crate::ingest::{parse_body, IngestError, MAX_BATCH_BYTES};
use crate::model::RunStatus;
use crate::store::IdKind;

mod admin;
mod broadcasts;
mod consent;
mod dashboard;
mod engagement;
mod ingest;
mod ops;
mod preferences;
pub mod rate;
mod reports;
pub mod serve;
mod webhooks;

#[allow(unused_imports)]
use self::{
    admin::*, broadcasts::*, consent::*, dashboard::*, engagement::*, ingest::*, ops::*,
    preferences::*, reports::*, webhooks::*,
};

/// A JSON error response: `{"error": {"code": "...", "message": "..."}}`. The ingest endpoints
/// also repeat `code` and `message` at the top level, next to `"success": false`, where the
/// Segment SDKs look for them when they report a failed upload.
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    message: String,
    segment: bool,
    /// Seconds for a `Retry-After` header, when the client should come back later.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            segment: false,
            retry_after: None,
        }
    }

    /// A request over a rate limit: 429 with `Retry-After`.
    fn rate_limited(refused: rate::Refused) -> Self {
        let secs = refused.retry_after_secs();
        ApiError {
            retry_after: Some(secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many requests: over the {} rate limit; retry in {secs} s",
                    refused.limit.name()
                ),
            )
        }
    }

    /// The same error in the shape the Segment SDKs read.
    fn for_segment(self) -> Self {
        ApiError {
            segment: true,
            ..self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.segment {
            json!({
                "success": false,
                "code": self.code,
                "message": self.message,
                "error": {"code": self.code, "message": self.message},
            })
        } else {
            json!({"error": {"code": self.code, "message": self.message}})
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            e.to_string(),
        )
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        match e {
            crate::engine::EngineError::Invalid(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m)
            }
            crate::engine::EngineError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            crate::engine::EngineError::Panicked(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            ),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "engine_error",
                other.to_string(),
            ),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Run blocking engine work off the async executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Parse a JSON request body into `T`, with a JSON error naming what is wrong.
fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("request body: {e}"),
        )
    })
}

/// Every route of the daemon.
pub fn router(shared: Arc<Shared>) -> Router {
    let mut r = Router::new()
        .route("/v1/batch", post(batch))
        .route("/v1/b", post(batch))
        .route("/v1/contacts/{id}", get(contact).delete(erase_contact))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(run_detail))
        .route("/v1/runs/{id}/steps/{step}/resolve", post(resolve_step))
        .route("/v1/runs/{id}/retry", post(retry_run))
        .route("/v1/resolve", post(resolve_bulk))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/workflows", get(workflows))
        .route("/v1/segments", get(segments))
        .route("/v1/segments/{name}", get(segment_detail))
        .route("/v1/contacts/{id}/score", get(contact_score))
        .route("/v1/contacts/{id}/trace", get(contact_trace))
        .route("/v1/templates/{name}/preview", post(preview_template))
        .route("/v1/import/contacts", post(import_contacts))
        .route("/v1/webhooks/{channel}", post(provider_webhook))
        .route("/v1/workflows/{name}/runs", post(start_run))
        .route(
            "/dashboard/login",
            get(dashboard_login_form).post(dashboard_login),
        )
        .route("/dashboard/logout", post(dashboard_logout))
        .route("/dashboard", get(dashboard_overview))
        .route("/dashboard/workflows/{name}", get(dashboard_workflow))
        .route("/dashboard/broadcasts/{name}", get(dashboard_broadcast))
        .route("/v1/reports/workflows/{name}", get(workflow_report))
        .route(
            "/v1/reports/workflows/{name}/experiments/{experiment}",
            get(workflow_experiment),
        )
        .route("/v1/reports/broadcasts/{name}", get(broadcast_report))
        .route(
            "/v1/reports/broadcasts/{name}/experiment",
            get(broadcast_experiment),
        )
        .route("/v1/reports/segments/{name}", get(segment_report))
        .route("/v1/reports/{dimension}", get(dimension_report))
        .route("/v1/export/facts", get(export_facts))
        .route("/v1/analytics/rebuild", post(rebuild_analytics))
        .route("/v1/broadcasts", get(list_broadcasts))
        .route("/v1/broadcasts/{name}", get(broadcast_detail))
        .route("/v1/broadcasts/{name}/schedule", post(schedule_broadcast))
        .route("/v1/broadcasts/{name}/test", post(test_broadcast))
        .route("/v1/broadcasts/{name}/decide", post(decide_broadcast))
        .route("/v1/broadcasts/{name}/preview", get(preview_broadcast))
        .route("/v1/broadcasts/{name}/{action}", post(control_broadcast))
        .route("/v1/reload", post(reload))
        .route("/v1/status", get(status))
        .route("/v1/channels", get(channels))
        .route("/v1/channels/{name}/pause", post(pause_channel))
        .route("/v1/channels/{name}/resume", post(resume_channel))
        .route("/v1/test/clock", post(test_clock))
        .route(
            "/v1/contacts/{id}/consent",
            get(get_consent).post(set_consent),
        )
        .route(
            "/v1/suppressions/{channel}",
            get(list_suppressions).post(import_suppressions),
        )
        .route(
            "/v1/suppressions/{channel}/{address}",
            axum::routing::delete(lift_suppression),
        )
        .route("/v1/links/rotate", post(rotate_links))
        .route("/u/{token}", get(preference_page).post(preference_post))
        .route("/o/{token}", get(open_pixel))
        .route("/c/{token}", get(click_redirect))
        .route("/v/{token}", get(view_in_browser))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    for (kind, short) in [
        ("identify", "i"),
        ("track", "t"),
        ("page", "p"),
        ("screen", "s"),
        ("group", "g"),
        ("alias", "a"),
    ] {
        r = r
            .route(
                &format!("/v1/{kind}"),
                post(move |s, c, h, b| single(kind, s, c, h, b)),
            )
            .route(
                &format!("/v1/{short}"),
                post(move |s, c, h, b| single(kind, s, c, h, b)),
            );
    }
    // A body that stops arriving ends the request instead of holding its connection.
    let body_timeout = std::time::Duration::from_millis(shared.server.body_timeout_ms.max(1));
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            read_only_guard,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .with_state(shared)
}

/// A page answer: HTML, never cached, never framed, nothing loaded from elsewhere.
fn html_page(status: StatusCode, html: String, csp: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, csp),
        ],
        html,
    )
        .into_response()
}
