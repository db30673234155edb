//! The broadcasts API: list, preview for a real contact, test send to a seed list, schedule,
//! pause, resume, cancel, progress.

#[allow(unused_imports)]
use super::*;

use crate::broadcast::{status_name, BroadcastRecord, MAX_SEEDS};

/// A broadcast's record as the API shows it.
fn record_json(r: &BroadcastRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["status"] = json!(status_name(r.status));
    v
}

/// `GET /v1/broadcasts`: every broadcast of the project, with its record once scheduled.
pub(super) async fn list_broadcasts(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let state = shared.engine.state();
        let records = shared.engine.broadcast_records()?;
        let mut out = Vec::new();
        for (name, wf) in &state.broadcasts {
            let record = records.iter().find(|r| &r.name == name);
            out.push(json!({
                "name": name,
                "path": wf.path,
                "version": wf.hash,
                "spec": wf.loaded.decl.broadcast,
                "status": record.map_or("draft", |r| status_name(r.status)),
                "record": record.map(record_json),
            }));
        }
        for r in records
            .iter()
            .filter(|r| !state.broadcasts.contains_key(&r.name))
        {
            out.push(json!({"name": r.name, "path": r.path, "version": r.hash,
                "status": status_name(r.status), "record": record_json(r)}));
        }
        Ok(Json(json!({"broadcasts": out})))
    })
    .await?
}

/// `GET /v1/broadcasts/{name}`: the record and where each recipient's message is.
pub(super) async fn broadcast_detail(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let Some(r) = shared.engine.broadcast_record(&name)? else {
            let known = shared.engine.state().broadcasts.contains_key(&name);
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                if known {
                    format!("broadcast \"{name}\" is a draft: it has not been scheduled")
                } else {
                    format!("no broadcast named \"{name}\"")
                },
            ));
        };
        let progress = shared.engine.broadcast_progress(&r)?;
        let mut out = json!({"name": name, "status": status_name(r.status), "record": record_json(&r), "progress": progress});
        // An undecided test: each arm's numbers so far.
        if r.test.as_ref().is_some_and(|t| t.decision.is_none()) {
            out["test_results"] = json!(shared.engine.test_results(&r)?);
        }
        Ok(Json(out))
    })
    .await?
}

#[derive(Deserialize)]
struct ScheduleBody {
    /// RFC 3339 instant; overrides the file's `.send_at(...)`.
    #[serde(default)]
    at: Option<String>,
}

/// `POST /v1/broadcasts/{name}/schedule` `{"at": "2026-12-24T09:00:00Z"}` (optional).
pub(super) async fn schedule_broadcast(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let body: ScheduleBody = if body.is_empty() {
            ScheduleBody { at: None }
        } else {
            parse_json(&body)?
        };
        let at = match &body.at {
            Some(s) => Some(herald_dsl::engine::parse_rfc3339_ms(s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("at: \"{s}\" is not an RFC 3339 instant such as 2026-12-24T09:00:00Z"),
                )
            })?),
            None => None,
        };
        let r = shared.engine.schedule_broadcast(&name, at)?;
        Ok(Json(record_json(&r)))
    })
    .await?
}

/// `POST /v1/broadcasts/{name}/{pause|resume|cancel}`.
pub(super) async fn control_broadcast(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    if !matches!(action.as_str(), "pause" | "resume" | "cancel") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no action \"{action}\": use schedule, pause, resume, cancel, decide, test or preview"),
        ));
    }
    blocking(move || -> ApiResult<Json<Value>> {
        Ok(Json(record_json(
            &shared.engine.control_broadcast(&name, &action)?,
        )))
    })
    .await?
}

#[derive(Deserialize)]
struct DecideBody {
    /// The winning arm; without it the declared metric decides.
    #[serde(default)]
    arm: Option<String>,
}

/// `POST /v1/broadcasts/{name}/decide` `{"arm": "b"}` (optional): decide a testing
/// broadcast's A/B test now and send the winner to the rest of its audience.
pub(super) async fn decide_broadcast(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let body: DecideBody = if body.is_empty() {
            DecideBody { arm: None }
        } else {
            parse_json(&body)?
        };
        Ok(Json(record_json(
            &shared.engine.decide_broadcast(&name, body.arm.as_deref())?,
        )))
    })
    .await?
}

#[derive(Deserialize)]
struct SeedBody {
    contacts: Vec<String>,
}

/// `POST /v1/broadcasts/{name}/test` `{"contacts": [...]}`: send the current file version to a
/// seed list now (outside the broadcast's audience and numbers).
pub(super) async fn test_broadcast(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    if body.len() > 64 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a seed list is at most {MAX_SEEDS} contacts"),
        ));
    }
    blocking(move || -> ApiResult<Json<Value>> {
        let body: SeedBody = parse_json(&body)?;
        if body.contacts.len() > MAX_SEEDS {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "a seed list is at most {MAX_SEEDS} contacts; this one has {}",
                    body.contacts.len()
                ),
            ));
        }
        let mut ids = Vec::new();
        for c in &body.contacts {
            ids.push(find_contact(&shared, c)?.id);
        }
        let runs = shared.engine.test_broadcast(&name, &ids)?;
        Ok(Json(json!({"broadcast": name, "runs": runs})))
    })
    .await?
}

#[derive(Deserialize)]
pub(super) struct PreviewQuery {
    contact: String,
}

/// `GET /v1/broadcasts/{name}/preview?contact=ID`: what the contact would receive.
pub(super) async fn preview_broadcast(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let c = find_contact(&shared, &q.contact)?;
        Ok(Json(shared.engine.preview_broadcast(&name, &c)?))
    })
    .await?
}
