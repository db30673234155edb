//! The management API (admin token): contacts, runs and their journals, step resolution,
//! workflows and manual starts, reload, status, segments, scores, template previews, CSV import, and
//! the test clock.

#[allow(unused_imports)]
use super::*;

/// A management request must carry a token; a read-only token is refused for changes by
/// [`read_only_guard`] before any handler runs.
pub(super) fn check_admin(shared: &Shared, headers: &HeaderMap) -> ApiResult<()> {
    token_scope(shared, headers).map(|_| ())
}

/// The scope of the request's bearer token, or why it has none.
pub(super) fn token_scope(shared: &Shared, headers: &HeaderMap) -> ApiResult<Scope> {
    let credentials = shared.credentials();
    if !credentials.management_enabled() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin token is configured in herald.toml [auth]",
        ));
    }
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match got {
        Some(t) => credentials.token_scope(t).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the bearer token is not valid",
            )
        }),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send `Authorization: Bearer <admin token>`",
        )),
    }
}

/// Read-only tokens may look (`GET`, template previews) but not change anything: any other
/// request carrying one is refused here, whatever route it names.
pub(super) async fn read_only_guard(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let looks = request.method() == axum::http::Method::GET
        || request.method() == axum::http::Method::HEAD
        || (request.method() == axum::http::Method::POST
            && request.uri().path().starts_with("/v1/templates/")
            && request.uri().path().ends_with("/preview"));
    if !looks && matches!(token_scope(&shared, request.headers()), Ok(Scope::Read)) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only_token",
            "this token is read-only ([auth] read_tokens); changes need the admin token",
        )
        .into_response();
    }
    next.run(request).await
}

pub(super) fn find_contact(shared: &Shared, id: &str) -> ApiResult<crate::model::Contact> {
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

pub(super) fn run_summary(r: &crate::model::Run) -> Value {
    json!({
        "id": r.id, "workflow": r.workflow, "contact": r.contact, "status": r.status,
        "script_version": r.script_hash, "created_at": r.created_at, "updated_at": r.updated_at,
        "wake_at": r.wake_at, "reason": r.reason,
    })
}

pub(super) async fn contact(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
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
    })
    .await?
}

/// `DELETE /v1/contacts/{id}`: erase the contact (Herald id, userId or anonymousId) and
/// everything about it; a hashed suppression entry keeps it from being taken in again.
pub(super) async fn erase_contact(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let c = find_contact(&shared, &id)?;
        match shared.engine.erase_contact(&c.id) {
            Ok(Some(erasure)) => Ok(Json(json!({"erased": true, "removed": erasure}))),
            Ok(None) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no contact {id}"),
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_erased",
                format!("{e}; nothing was erased, retry"),
            )),
        }
    })
    .await?
}

#[derive(Deserialize)]
pub(super) struct RunQuery {
    pub(super) contact: Option<String>,
    pub(super) workflow: Option<String>,
    pub(super) status: Option<String>,
    pub(super) limit: Option<usize>,
}

pub(super) async fn list_runs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<RunQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
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
            q.workflow.as_ref().is_none_or(|w| &r.workflow == w)
                && status.is_none_or(|s| r.status == s)
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
    })
    .await?
}

pub(super) async fn run_detail(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
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
        v["script"] =
            json!({"hash": run.script_hash, "path": script.as_ref().map(|s| s.path.clone())});
        v["parked_reason"] = if run.status == RunStatus::Parked {
            json!(run.reason)
        } else {
            Value::Null
        };
        v["journal"] = json!(journal);
        Ok(Json(v))
    })
    .await?
}

#[derive(Deserialize)]
pub(super) struct ResolveBody {
    pub(super) delivered: bool,
}

pub(super) async fn resolve_step(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, step)): Path<(String, u32)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let body: ResolveBody = parse_json(&body)?;
    let engine = shared.engine.clone();
    blocking(move || -> ApiResult<()> {
        let run = engine.store.run(&id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "run_not_found",
                format!("no run \"{id}\""),
            )
        })?;
        Ok(engine.resolve_step(&run, step, body.delivered)?)
    })
    .await??;
    Ok(Json(json!({"resolved": true})))
}

/// `GET /v1/channels`: each channel's delivery queue by lane, sends in flight, limits, rate
/// and latency.
pub(super) async fn channels(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    Ok(Json(json!({"channels": shared.engine.delivery.status()})))
}

/// `POST /v1/channels/{name}/pause`: no new sends start on the channel (kept across restarts).
pub(super) async fn pause_channel(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(shared, headers, name, true).await
}

/// `POST /v1/channels/{name}/resume`: the channel's queued sends go out again.
pub(super) async fn resume_channel(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(shared, headers, name, false).await
}

async fn set_paused(
    shared: Arc<Shared>,
    headers: HeaderMap,
    name: String,
    paused: bool,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let engine = shared.engine.clone();
    let channel = name.clone();
    let found = blocking(move || engine.delivery.set_paused(&channel, paused)).await??;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "channel_not_found",
            format!("no channel \"{name}\""),
        ));
    }
    tracing::info!(
        channel = name,
        paused,
        "channel {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(Json(json!({"channel": name, "paused": paused})))
}

/// `POST /v1/resolve`: settle the ambiguous sends of a channel in a time range, in bulk
/// (`dry_run` lists them only).
pub(super) async fn resolve_bulk(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let req: crate::engine::BulkResolve = parse_json(&body)?;
    let engine = shared.engine.clone();
    let matched = blocking(move || engine.resolve_bulk(&req)).await??;
    let resolved = matched.iter().filter(|m| m.resolved).count();
    Ok(Json(
        json!({"matched": matched.len(), "resolved": resolved, "steps": matched}),
    ))
}

#[derive(Deserialize)]
pub(super) struct DeadLetterQuery {
    pub(super) channel: Option<String>,
    pub(super) limit: Option<usize>,
}

/// `GET /v1/dead-letters?channel=&limit=`: sends that failed for good, newest first.
pub(super) async fn dead_letters(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<DeadLetterQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let engine = shared.engine.clone();
    let limit = q.limit.unwrap_or(100).min(10_000);
    let list = blocking(move || engine.dead_letters(q.channel.as_deref(), limit)).await??;
    Ok(Json(json!({"dead_letters": list})))
}

/// `POST /v1/runs/{id}/retry`: send a dead letter again.
pub(super) async fn retry_run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let engine = shared.engine.clone();
    blocking(move || -> ApiResult<()> {
        let run = engine.store.run(&id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "run_not_found",
                format!("no run \"{id}\""),
            )
        })?;
        Ok(engine.retry_dead_letter(&run)?)
    })
    .await??;
    Ok(Json(json!({"retried": true})))
}

pub(super) async fn workflows(
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
pub(super) struct StartBody {
    pub(super) contact: String,
    #[serde(default)]
    pub(super) properties: Value,
}

pub(super) async fn start_run(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    check_admin(&shared, &headers)?;
    let body: StartBody = parse_json(&body)?;
    let props = if body.properties.is_null() {
        json!({})
    } else {
        body.properties
    };
    let id = blocking(move || -> ApiResult<String> {
        let c = find_contact(&shared, &body.contact)?;
        Ok(shared.engine.start_manual(&name, &c.id, props)?)
    })
    .await??;
    Ok((StatusCode::CREATED, Json(json!({"run": id}))).into_response())
}

pub(super) async fn reload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
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

pub(super) async fn status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
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
            "channels": shared.engine.delivery.status(),
            "clock": shared.engine.clock.now_ms(),
        })))
    })
    .await?
}

#[derive(Deserialize)]
pub(super) struct ClockBody {
    pub(super) advance_ms: Option<i64>,
    pub(super) set_ms: Option<i64>,
}

pub(super) async fn test_clock(
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

pub(super) async fn segments(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
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

pub(super) async fn segment_detail(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
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
    })
    .await?
}

pub(super) async fn contact_score(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let c = find_contact(&shared, &id)?;
        Ok(Json(shared.engine.explain_score(&c)?))
    })
    .await?
}

/// `GET /v1/contacts/{id}/trace`: the contact's decision trace, oldest first.
pub(super) async fn contact_trace(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let c = find_contact(&shared, &id)?;
        let trace = shared.engine.trace(&c)?;
        Ok(Json(json!({"contact": c.id, "trace": trace})))
    })
    .await?
}

#[derive(Deserialize)]
pub(super) struct PreviewBody {
    pub(super) contact: String,
    #[serde(default = "default_channel")]
    pub(super) channel: String,
    #[serde(default)]
    pub(super) vars: Value,
    #[serde(default)]
    pub(super) trigger: Value,
}

pub(super) fn default_channel() -> String {
    "email".into()
}

pub(super) async fn preview_template(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
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
    })
    .await?
}

/// Largest CSV upload.
const MAX_IMPORT_BYTES: usize = 1 << 30;

pub(super) async fn import_contacts(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<crate::ingest::import::ImportOptions>,
    body: Body,
) -> ApiResult<Response> {
    check_admin(&shared, &headers)?;
    // The upload goes to a temporary file as it arrives and is imported from there a chunk
    // of rows at a time: memory stays the same however large the file.
    let cannot_hold = |e: std::io::Error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_accepted",
            format!("cannot hold the upload: {e}"),
        )
    };
    let mut spool = tempfile::tempfile().map_err(cannot_hold)?;
    let mut body = body;
    let mut size = 0usize;
    {
        use http_body_util::BodyExt as _;
        use std::io::{Seek as _, Write as _};
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("reading the upload: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            size += data.len();
            if size > MAX_IMPORT_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "CSV imports are limited to {} MB per request; split the file",
                        MAX_IMPORT_BYTES >> 20
                    ),
                ));
            }
            spool.write_all(&data).map_err(cannot_hold)?;
        }
        spool.rewind().map_err(cannot_hold)?;
    }
    let report =
        crate::ingest::import::import_csv(&shared.ingestor, std::io::BufReader::new(spool), &q)
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
    let status = if report.rejected_count == 0 {
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
