//! HTTP: the Segment-compatible ingest API and the management API.

use crate::sync::LockExt as _;
use std::io::Read;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::daemon::Shared;
use crate::ingest::{parse_body, IngestError, MAX_BATCH_BYTES};
use crate::model::RunStatus;
use crate::store::IdKind;

/// A JSON error response: `{"error": {"code": "...", "message": "..."}}`. The ingest endpoints
/// also repeat `code` and `message` at the top level, next to `"success": false`, where the
/// Segment SDKs look for them when they report a failed upload.
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    message: String,
    segment: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            segment: false,
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
        (self.status, Json(body)).into_response()
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
        .route("/v1/contacts/{id}", get(contact))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(run_detail))
        .route("/v1/runs/{id}/steps/{step}/resolve", post(resolve_step))
        .route("/v1/workflows", get(workflows))
        .route("/v1/segments", get(segments))
        .route("/v1/segments/{name}", get(segment_detail))
        .route("/v1/contacts/{id}/score", get(contact_score))
        .route("/v1/templates/{name}/preview", post(preview_template))
        .route("/v1/import/contacts", post(import_contacts))
        .route("/v1/webhooks/{channel}", post(provider_webhook))
        .route("/v1/workflows/{name}/runs", post(start_run))
        .route("/v1/reload", post(reload))
        .route("/v1/status", get(status))
        .route("/v1/test/clock", post(test_clock))
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
                post(move |s, h, b| single(kind, s, h, b)),
            )
            .route(
                &format!("/v1/{short}"),
                post(move |s, h, b| single(kind, s, h, b)),
            );
    }
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(shared)
}

fn basic_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map(|(u, _)| u.to_string())
            .unwrap_or(text),
    )
}

fn check_write_key(
    shared: &Shared,
    headers: &HeaderMap,
    body_key: Option<String>,
) -> ApiResult<()> {
    let key = basic_user(headers).or(body_key);
    match key {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_write_key",
            "send the write key as the HTTP Basic user name",
        )),
        Some(k) if shared.write_keys.iter().any(|w| w == &k) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_write_key",
            "the write key is not valid",
        )),
    }
}

fn check_admin(shared: &Shared, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = &shared.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin token is configured in herald.toml [auth]",
        ));
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match got {
        Some(t) if t == token => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the bearer token is not valid",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send `Authorization: Bearer <admin token>`",
        )),
    }
}

fn decode_body(headers: &HeaderMap, body: Bytes) -> ApiResult<Vec<u8>> {
    let gz = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gz {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(MAX_BATCH_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_gzip",
                format!("gzip body could not be decoded: {e}"),
            )
        })?;
    Ok(out)
}

/// Read the body. Up to 4 MB is read even though 500 KB is the limit, so that a client that
/// is still sending learns what was wrong instead of seeing a broken connection.
async fn read_limited(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, 4 * 1024 * 1024)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds the limit of {MAX_BATCH_BYTES} bytes (500 KB)"),
            )
        })
}

async fn ingest(
    kind: Option<&str>,
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    accept(kind, shared, headers, body)
        .await
        .map_err(ApiError::for_segment)
}

async fn accept(
    kind: Option<&str>,
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_limited(body).await?;
    let bytes = decode_body(&headers, bytes)?;
    let parsed = parse_body(kind, &bytes);
    let body_key = match &parsed {
        Ok((_, k)) => k.clone(),
        Err(_) => None,
    };
    // Authenticate before reporting payload problems, so that keyless probes learn nothing.
    if let Err(e) = check_write_key(
        &shared,
        &headers,
        body_key.or_else(|| {
            serde_json::from_slice::<Value>(&bytes)
                .ok()?
                .get("writeKey")?
                .as_str()
                .map(String::from)
        }),
    ) {
        shared.engine.metrics.rejected(e.code);
        return Err(e);
    }
    let (messages, _) = parsed.map_err(|e| {
        let err = ingest_error(e);
        shared.engine.metrics.rejected(err.code);
        err
    })?;
    let accepted = shared
        .ingestor
        .ingest(messages)
        .await
        .map_err(ingest_error)?;
    Ok(Json(
        json!({"success": true, "accepted": accepted.accepted, "duplicates": accepted.duplicates}),
    )
    .into_response())
}

fn ingest_error(e: IngestError) -> ApiError {
    match e {
        IngestError::Invalid { code, message } => {
            let status = if code == "payload_too_large" {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            ApiError::new(status, code, message)
        }
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_accepted",
            format!("{other}; nothing was accepted, retry"),
        ),
    }
}

async fn single(
    kind: &'static str,
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ingest(Some(kind), shared, headers, body).await
}

async fn batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ingest(None, shared, headers, body).await
}

fn find_contact(shared: &Shared, id: &str) -> ApiResult<crate::model::Contact> {
    let store = &shared.engine.store;
    let mut cid = store.contact(id)?.map(|c| c.id);
    if cid.is_none() {
        cid = store.identity(IdKind::User, id)?;
    }
    if cid.is_none() {
        cid = store.identity(IdKind::Anonymous, id)?;
    }
    // Follow merges to the contact that now holds the history.
    let contact = match cid {
        Some(c) => shared.engine.live_contact(&c)?,
        None => None,
    };
    contact.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "contact_not_found",
            format!("no contact with id, userId or anonymousId \"{id}\""),
        )
    })
}

fn run_summary(r: &crate::model::Run) -> Value {
    json!({
        "id": r.id, "workflow": r.workflow, "contact": r.contact, "status": r.status,
        "script_version": r.script_hash, "created_at": r.created_at, "updated_at": r.updated_at,
        "wake_at": r.wake_at, "reason": r.reason,
    })
}

async fn contact(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let mut c = find_contact(&shared, &id)?;
    let aud = shared.engine.store.audience(&c.id)?;
    shared.engine.overlay(&mut c, aud.as_ref());
    let segments: Vec<&String> = aud.iter().flat_map(|a| a.member_of()).collect();
    let events = shared.engine.store.recent_events(&c.id, 50)?;
    let runs: Vec<Value> = shared
        .engine
        .store
        .runs_of_contact(&c.id)?
        .iter()
        .map(run_summary)
        .collect();
    Ok(Json(json!({
        "id": c.id, "attributes": c.attributes, "user_ids": c.user_ids, "anonymous_ids": c.anonymous_ids,
        "groups": c.groups, "created_at": c.created_at, "updated_at": c.updated_at,
        "recent_events": events, "runs": runs,
        "segments": segments,
    })))
}

#[derive(Deserialize)]
struct RunQuery {
    contact: Option<String>,
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<RunQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let status = match &q.status {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_status",
                format!("unknown status \"{s}\""),
            )
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).min(10_000);
    let keep = |r: &crate::model::Run| {
        q.workflow.as_ref().is_none_or(|w| &r.workflow == w) && status.is_none_or(|s| r.status == s)
    };
    let mut runs = Vec::new();
    if let Some(c) = &q.contact {
        let c = find_contact(&shared, c)?;
        runs = shared
            .engine
            .store
            .runs_of_contact(&c.id)?
            .into_iter()
            .filter(|r| keep(r))
            .take(limit)
            .collect();
    } else {
        shared.engine.store.scan_runs(&mut |r| {
            if keep(&r) {
                runs.push(r);
            }
            runs.len() < limit
        })?;
    }
    Ok(Json(
        json!({"runs": runs.iter().map(run_summary).collect::<Vec<_>>()}),
    ))
}

async fn run_detail(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let store = &shared.engine.store;
    let run = store.run(&id)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!("no run \"{id}\""),
        )
    })?;
    let journal = store.journal(&id)?;
    let script = store.script(&run.script_hash)?;
    let mut v = run_summary(&run);
    v["trigger"] = run.trigger.clone();
    v["activations"] = json!(run.activations);
    v["error_line"] = json!(run.error_line);
    v["converted_at"] = json!(run.converted_at);
    v["logs"] = json!(run.logs);
    v["script"] = json!({"hash": run.script_hash, "path": script.as_ref().map(|s| s.path.clone())});
    v["parked_reason"] = if run.status == RunStatus::Parked {
        json!(run.reason)
    } else {
        Value::Null
    };
    v["journal"] = json!(journal);
    Ok(Json(v))
}

#[derive(Deserialize)]
struct ResolveBody {
    delivered: bool,
}

async fn resolve_step(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, step)): Path<(String, u32)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let body: ResolveBody = parse_json(&body)?;
    let run = shared.engine.store.run(&id)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!("no run \"{id}\""),
        )
    })?;
    let engine = shared.engine.clone();
    blocking(move || engine.resolve_step(&run, step, body.delivered)).await??;
    Ok(Json(json!({"resolved": true})))
}

async fn workflows(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let state = shared.engine.state();
    let list: Vec<Value> = state
        .workflows
        .values()
        .map(|w| json!({"name": w.loaded.decl.name, "path": w.path, "version": w.hash, "triggers": w.loaded.decl.triggers,
                        "goal": w.loaded.decl.goal, "reentry": w.loaded.decl.reentry}))
        .collect();
    Ok(Json(json!({"workflows": list})))
}

#[derive(Deserialize)]
struct StartBody {
    contact: String,
    #[serde(default)]
    properties: Value,
}

async fn start_run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    check_admin(&shared, &headers)?;
    let body: StartBody = parse_json(&body)?;
    let c = find_contact(&shared, &body.contact)?;
    let engine = shared.engine.clone();
    let props = if body.properties.is_null() {
        json!({})
    } else {
        body.properties
    };
    let id = blocking(move || engine.start_manual(&name, &c.id, props)).await??;
    Ok((StatusCode::CREATED, Json(json!({"run": id}))).into_response())
}

async fn reload(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let s = shared.clone();
    let result = blocking(move || s.reload()).await?;
    match result {
        Ok(changed) => Ok(Json(json!({"reloaded": true, "changed": changed}))),
        Err(report) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "project_invalid",
            report,
        )),
    }
}

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let state = shared.engine.state();
    let versions: Value = state
        .workflows
        .iter()
        .map(|(k, w)| (k.clone(), json!(w.hash)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Ok(Json(json!({
        "workflows": versions,
        "last_reload_error": shared.last_reload_error.locked().clone(),
        "reloads": shared.reload_stats.locked().clone(),
        "backfill": shared.engine.backfill.locked().clone(),
        "pending_timers": shared.engine.store.timer_count()?,
        "clock": shared.engine.clock.now_ms(),
    })))
}

#[derive(Deserialize)]
struct ClockBody {
    advance_ms: Option<i64>,
    set_ms: Option<i64>,
}

async fn test_clock(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    if !shared.test_clock {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the test clock is only available with `herald run --test-clock`",
        ));
    }
    check_admin(&shared, &headers)?;
    let body: ClockBody = parse_json(&body)?;
    // Let everything already accepted settle first, so that moving time is deterministic.
    let engine = shared.engine.clone();
    blocking(move || engine.barrier()).await?;
    let clock = &shared.engine.clock;
    let target = match (body.set_ms, body.advance_ms) {
        (Some(t), _) => t,
        (None, Some(d)) => clock.now_ms() + d,
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "give advance_ms or set_ms",
            ))
        }
    };
    clock.set_ms(target);
    shared.engine.poke_timers();
    Ok(Json(json!({"now": clock.now_ms()})))
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "workflows": shared.engine.state().workflows.len(),
        "worker_panics": shared.engine.metrics.worker_panics(),
        "dedupe_window_ids": shared.ingestor.dedupe_len(),
    }))
}

/// Readiness, apart from liveness: 200 while the daemon accepts new work, 503 once a shutdown
/// has begun (load balancers and `systemctl` stop sending traffic; `/healthz` stays "alive").
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.serving.load(std::sync::atomic::Ordering::SeqCst) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stopping"})),
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let timers = shared.engine.store.timer_count().unwrap_or(0) as f64;
    let contacts = shared.engine.store.contact_count().unwrap_or(0) as f64;
    let mut body = shared.engine.metrics.render(&[
        (
            "herald_pending_timers",
            "Pending timers: runs waiting and scheduled segment re-evaluations.",
            timers,
        ),
        ("herald_contacts", "Stored contacts.", contacts),
        (
            "herald_engine_backlog",
            "Accepted events the workers have not processed yet.",
            shared.engine.backlog.queued() as f64,
        ),
    ]);
    body.push_str("# HELP herald_segment_size Current members of each segment.\n# TYPE herald_segment_size gauge\n");
    for (name, size) in shared.engine.segment_sizes() {
        body.push_str(&format!(
            "herald_segment_size{{segment=\"{name}\"}} {size}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn segments(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let state = shared.engine.state();
    let sizes = shared.engine.segment_sizes();
    let list: Vec<Value> = state
        .segments
        .values()
        .map(|s| {
            let name = &s.loaded.decl.name;
            json!({"name": name, "path": s.path, "version": s.hash, "size": sizes.get(name).copied().unwrap_or(0),
                   "depends_on_events": s.loaded.deps.events, "depends_on_segments": s.loaded.deps.segments})
        })
        .collect();
    let backfill = shared.engine.backfill.locked().clone();
    Ok(Json(json!({"segments": list, "backfill": backfill})))
}

async fn segment_detail(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let state = shared.engine.state();
    let seg = state.segments.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "segment_not_found",
            format!("no segment \"{name}\""),
        )
    })?;
    let store = &shared.engine.store;
    let size = shared
        .engine
        .segment_sizes()
        .get(&name)
        .copied()
        .unwrap_or(0);
    Ok(Json(json!({
        "name": name,
        "path": seg.path,
        "version": seg.hash,
        "size": size,
        "recent": store.segment_changes(&name, 50)?,
        "members": store.members(&name, 100)?,
    })))
}

async fn contact_score(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let c = find_contact(&shared, &id)?;
    Ok(Json(shared.engine.explain_score(&c)?))
}

#[derive(Deserialize)]
struct PreviewBody {
    contact: String,
    #[serde(default = "default_channel")]
    channel: String,
    #[serde(default)]
    vars: Value,
    #[serde(default)]
    trigger: Value,
}

fn default_channel() -> String {
    "email".into()
}

async fn preview_template(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let body: PreviewBody = parse_json(&body)?;
    let c = find_contact(&shared, &body.contact)?;
    let vars = if body.vars.is_null() {
        json!({})
    } else {
        body.vars
    };
    let trigger = if body.trigger.is_null() {
        json!({"properties": {}})
    } else {
        body.trigger
    };
    Ok(Json(shared.engine.preview(
        &name,
        &body.channel,
        &c,
        vars,
        trigger,
    )?))
}

async fn import_contacts(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<crate::import::ImportOptions>,
    body: Body,
) -> ApiResult<Response> {
    check_admin(&shared, &headers)?;
    let bytes = axum::body::to_bytes(body, 256 * 1024 * 1024)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "CSV imports are limited to 256 MB per request",
            )
        })?;
    let report = crate::import::import_csv(&shared.ingestor, &bytes, &q)
        .await
        .map_err(|e| match e {
            crate::ingest::IngestError::Invalid { code, message } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_accepted",
                other.to_string(),
            ),
        })?;
    let status = if report.rejected.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((
        status,
        Json(serde_json::to_value(&report).unwrap_or_default()),
    )
        .into_response())
}

/// Provider callbacks (delivered, opened, clicked, bounced, …): the channel's connector turns
/// the request into events, which land on the contact's timeline as `<channel>_<kind>` (for
/// example `email_opened`), count in metrics and can satisfy `wait_for`. Authenticity is the
/// connector's job (for example Twilio's request signature).
async fn provider_webhook(
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
    let mut messages = Vec::new();
    let mut unmatched = 0;
    for ev in events {
        let owner = match &ev.message_id {
            Some(id) => shared.engine.store.meta(&format!("pmsg:{channel}:{id}"))?,
            None => None,
        };
        let Some(owner) = owner.and_then(|o| serde_json::from_str::<Value>(&o).ok()) else {
            unmatched += 1;
            tracing::info!(channel, kind = ev.kind, message = ?ev.message_id, "provider callback for a message Herald did not send");
            continue;
        };
        let mut props = match ev.properties.clone() {
            Value::Object(m) => m,
            _ => Default::default(),
        };
        props.insert("provider_message_id".into(), json!(ev.message_id));
        props.insert("recipient".into(), json!(ev.recipient));
        props.insert("run".into(), owner["run"].clone());
        props.insert("step".into(), owner["step"].clone());
        props.insert("message_id".into(), owner["key"].clone());
        props.insert("channel".into(), json!(channel));
        let contact = owner["contact"].as_str().unwrap_or_default().to_string();
        let dedupe = format!(
            "webhook:{channel}:{}:{}:{}",
            ev.message_id.as_deref().unwrap_or(""),
            ev.kind,
            ev.timestamp_ms.unwrap_or(0)
        );
        messages.push(crate::ingest::Message::for_contact(
            &contact,
            &format!("{channel}_{}", ev.kind),
            Value::Object(props),
            ev.timestamp_ms,
            Some(dedupe),
        ));
    }
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
