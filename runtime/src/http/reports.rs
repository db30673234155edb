//! The reports API: a workflow's, a broadcast's, the channels' and the recipient domains'
//! numbers from the analytics counters, the facts export stream, and the rebuild check.

#[allow(unused_imports)]
use super::*;

use std::collections::BTreeMap;

use crate::analytics::{self, Numbers, Period};

#[derive(Deserialize, Default)]
pub(super) struct ReportQuery {
    /// Start of the period: RFC 3339 or ms since the epoch.
    #[serde(default)]
    from: Option<String>,
    /// End of the period (exclusive).
    #[serde(default)]
    to: Option<String>,
    /// A metric whose series the report adds (`sent`, `opened`, …).
    #[serde(default)]
    series: Option<String>,
    /// The series' points: `hour` (default) or `day` (in `[analytics] timezone`).
    #[serde(default)]
    by: Option<String>,
}

/// Instants a report accepts: 1970 to 9999, so period arithmetic cannot overflow.
const LATEST_MS: i64 = 253_402_300_799_999;

fn instant(name: &str, s: &str) -> ApiResult<i64> {
    let ms = match s.parse::<i64>() {
        Ok(ms) => Some(ms),
        Err(_) => herald_dsl::engine::parse_rfc3339_ms(s),
    };
    match ms {
        Some(ms) if (0..=LATEST_MS).contains(&ms) => Ok(ms),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{name}: \"{s}\" is outside the years 1970 to 9999"),
        )),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{name}: \"{s}\" is neither an RFC 3339 instant nor ms since the epoch"),
        )),
    }
}

impl ReportQuery {
    fn period(&self) -> ApiResult<Period> {
        let p = Period {
            from: self
                .from
                .as_deref()
                .map(|s| instant("from", s))
                .transpose()?,
            to: self.to.as_deref().map(|s| instant("to", s)).transpose()?,
        };
        if let (Some(f), Some(t)) = (p.from, p.to) {
            if t <= f {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "to must come after from",
                ));
            }
        }
        Ok(p)
    }

    /// The series asked for: its metric, and whether per day.
    fn metric(&self) -> ApiResult<Option<(String, bool)>> {
        let by_day = match self.by.as_deref() {
            None | Some("hour") => false,
            Some("day") => true,
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("by: \"{other}\" is neither hour nor day"),
                ))
            }
        };
        match &self.series {
            None => Ok(None),
            Some(m) if analytics::METRICS.contains(&m.as_str()) => Ok(Some((m.clone(), by_day))),
            Some(m) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "series: no metric \"{m}\" (one of {})",
                    analytics::METRICS.join(", ")
                ),
            )),
        }
    }
}

fn period_json(p: Period) -> Value {
    json!({"from": p.from, "to": p.to})
}

/// The period of the same length just before `p`, when `p` has both ends.
fn previous(p: Period) -> Option<Period> {
    let (from, to) = (p.from?, p.to?);
    Some(Period {
        from: Some(from.saturating_sub(to - from).max(0)),
        to: Some(from),
    })
}

/// The holdout group of a workflow or broadcast (`scope`: `workflow:NAME` or
/// `broadcast:NAME`) and the lift over it: conversions per run started, treated against held
/// out, as an experiment (null without a holdout).
fn holdout_json(store: &dyn crate::store::Store, scope: &str, p: Period) -> ApiResult<Value> {
    let held = analytics::numbers(store, &format!("holdout:{scope}"), p)?;
    let started = |n: &Numbers| n.counts.get("started").copied().unwrap_or(0);
    if started(&held) == 0 {
        return Ok(Value::Null);
    }
    let treated = analytics::numbers(store, scope, p)?;
    let arm = |name: &str, n: &Numbers| analytics::experiments::ArmData {
        arm: name.to_string(),
        sent: started(n),
        reached: n.counts.get("converted").copied().unwrap_or(0),
    };
    let lift = analytics::experiments::analyse(
        &[arm("holdout", &held), arm("treated", &treated)],
        "holdout",
        analytics::experiments::ALPHA,
    );
    Ok(json!({"totals": held, "lift": lift}))
}

/// A scope's totals over the previous period, for comparison (null without one).
fn previous_json(store: &dyn crate::store::Store, scope: &str, p: Period) -> ApiResult<Value> {
    Ok(match previous(p) {
        Some(prev) => json!({
            "period": period_json(prev),
            "totals": analytics::numbers(store, scope, prev)?,
        }),
        None => Value::Null,
    })
}

/// Scopes under `prefix`, keyed by what follows it.
fn by_suffix(
    store: &dyn crate::store::Store,
    prefix: &str,
    period: Period,
) -> ApiResult<BTreeMap<String, Numbers>> {
    Ok(analytics::numbers_by_scope(store, prefix, period)?
        .into_iter()
        .filter_map(|(scope, n)| Some((scope.strip_prefix(prefix)?.to_string(), n)))
        .collect())
}

fn series_json(
    store: &dyn crate::store::Store,
    scope: &str,
    metric: Option<(String, bool)>,
    period: Period,
    tz: chrono_tz::Tz,
) -> ApiResult<Value> {
    Ok(match metric {
        Some((m, false)) => {
            let points: Vec<Value> = analytics::series(store, scope, &m, period)?
                .into_iter()
                .map(|(at, n)| json!({"hour": at, "count": n}))
                .collect();
            json!({"metric": m, "hourly": points})
        }
        Some((m, true)) => {
            let points: Vec<Value> = analytics::rollup::daily_series(store, scope, &m, period, tz)?
                .into_iter()
                .map(|(at, n)| {
                    json!({"day": analytics::rollup::date_of(at, tz), "start": at, "count": n})
                })
                .collect();
            json!({"metric": m, "timezone": tz.name(), "daily": points})
        }
        None => Value::Null,
    })
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} named \"{name}\""),
    )
}

/// `GET /v1/reports/workflows/{name}?from=&to=&series=`: totals, per version, per step
/// (stable keys), per variant, and each version's funnel.
pub(super) async fn workflow_report(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<ReportQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let period = q.period()?;
    let metric = q.metric()?;
    blocking(move || -> ApiResult<Json<Value>> {
        let store = shared.engine.store.as_ref();
        shared.engine.analytics.fold_all(store)?;
        let scope = format!("workflow:{name}");
        let known = shared.engine.state().workflows.contains_key(&name)
            || !analytics::numbers_by_scope(store, &format!("{scope}\0"), Period::default())?
                .is_empty();
        if !known {
            return Err(not_found("workflow", &name));
        }
        let versions = by_suffix(store, &format!("version:{name}@"), period)?;
        let steps = by_suffix(store, &format!("step:{name}@"), period)?;
        let variants = by_suffix(store, &format!("variant:{name}:"), period)?;
        let funnel = analytics::funnel(store, &name, period)?;
        Ok(Json(json!({
            "workflow": name,
            "period": period_json(period),
            "totals": analytics::numbers(store, &scope, period)?,
            "versions": versions,
            "steps": steps,
            "variants": variants,
            "funnel": funnel,
            "series": series_json(store, &scope, metric, period, shared.engine.analytics.days().tz)?,
            "previous": previous_json(store, &scope, period)?,
            "holdout": holdout_json(store, &scope, period)?,
        })))
    })
    .await?
}

/// `GET /v1/reports/segments/{name}?from=&to=`: the segment's size at the end of each day
/// (`[analytics] timezone`), with the day's entries and exits.
pub(super) async fn segment_report(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<ReportQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let period = q.period()?;
    blocking(move || -> ApiResult<Json<Value>> {
        let store = shared.engine.store.as_ref();
        // Folded first: the size now then includes no change the counters lack.
        shared.engine.analytics.fold_all(store)?;
        let Some(members) = shared.engine.segment_sizes().get(&name).copied() else {
            return Err(not_found("segment", &name));
        };
        let tz = shared.engine.analytics.days().tz;
        let now = shared.engine.clock.now_ms();
        let days = analytics::rollup::segment_sizes(store, &name, members, period, now, tz)?;
        Ok(Json(json!({
            "segment": name,
            "members": members,
            "timezone": tz.name(),
            "period": period_json(period),
            "days": days,
        })))
    })
    .await?
}

/// `GET /v1/reports/broadcasts/{name}?from=&to=&series=`: totals and per arm.
pub(super) async fn broadcast_report(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<ReportQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let period = q.period()?;
    let metric = q.metric()?;
    blocking(move || -> ApiResult<Json<Value>> {
        let store = shared.engine.store.as_ref();
        shared.engine.analytics.fold_all(store)?;
        let known = shared.engine.state().broadcasts.contains_key(&name)
            || shared.engine.broadcast_record(&name)?.is_some();
        if !known {
            return Err(not_found("broadcast", &name));
        }
        let scope = format!("broadcast:{name}");
        Ok(Json(json!({
            "broadcast": name,
            "period": period_json(period),
            "totals": analytics::numbers(store, &scope, period)?,
            "arms": by_suffix(store, &format!("arm:{name}:"), period)?,
            // A tested broadcast's winner sent to the rest of its audience.
            "rest": analytics::numbers_by_scope(store, &format!("rest:{name}\0"), period)?
                .remove(&format!("rest:{name}")),
            "series": series_json(store, &scope, metric, period, shared.engine.analytics.days().tz)?,
            "previous": previous_json(store, &scope, period)?,
            "holdout": holdout_json(store, &scope, period)?,
        })))
    })
    .await?
}

/// `GET /v1/reports/channels` and `GET /v1/reports/domains` (deliverability by recipient
/// domain), `?from=&to=`.
pub(super) async fn dimension_report(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(dimension): Path<String>,
    Query(q): Query<ReportQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let prefix = match dimension.as_str() {
        "channels" => "channel:",
        "domains" => "domain:",
        "templates" => "template:",
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no report \"{other}\": use workflows/NAME, broadcasts/NAME, channels, domains or templates"),
            ))
        }
    };
    let period = q.period()?;
    blocking(move || -> ApiResult<Json<Value>> {
        let store = shared.engine.store.as_ref();
        shared.engine.analytics.fold_all(store)?;
        Ok(Json(json!({
            "report": dimension,
            "period": period_json(period),
            "rows": by_suffix(store, prefix, period)?,
        })))
    })
    .await?
}

#[derive(Deserialize)]
pub(super) struct ExportQuery {
    /// The last sequence number already loaded (0: from the start).
    #[serde(default)]
    after: Option<String>,
    /// At most this many facts (default 10,000, at most 100,000).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/export/facts?after=&limit=`: message and engagement facts as NDJSON, in log
/// order; `x-herald-next-cursor` is the `after` of the next call.
pub(super) async fn export_facts(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    check_admin(&shared, &headers)?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(s) => s.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                format!("after: \"{s}\" is not a cursor (the x-herald-next-cursor of the last call, or 0)"),
            )
        })?,
    };
    let limit = q.limit.unwrap_or(10_000).clamp(1, 100_000);
    blocking(move || -> ApiResult<Response> {
        let store = shared.engine.store.as_ref();
        shared.engine.analytics.fold_all(store)?;
        let facts = analytics::facts_after(store, after, limit)?;
        let next = facts.last().map_or(after, |f| f.seq);
        let mut body = String::new();
        for f in &facts {
            body.push_str(&serde_json::to_string(f).unwrap_or_default());
            body.push('\n');
        }
        let mut response = ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
        response
            .headers_mut()
            .insert("x-herald-next-cursor", header::HeaderValue::from(next));
        Ok(response)
    })
    .await?
}

#[derive(Deserialize, Default)]
struct RebuildBody {
    /// Replace the live counters with the rebuilt ones (default: only compare).
    #[serde(default)]
    write: bool,
}

/// `POST /v1/analytics/rebuild` `{"write": false}`: derive the facts again from the stored
/// journals, timelines and runs and compare their fold with the live counters.
pub(super) async fn rebuild_analytics(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let body: RebuildBody = if body.is_empty() {
        RebuildBody::default()
    } else {
        parse_json(&body)?
    };
    blocking(move || -> ApiResult<Json<Value>> {
        let store = shared.engine.store.as_ref();
        let r = shared.engine.analytics.rebuild(store, body.write)?;
        Ok(Json(json!(r)))
    })
    .await?
}

#[derive(Deserialize, Default)]
pub(super) struct ExperimentQuery {
    /// `opened`, `clicked` or `converted` (default: a tested broadcast's own metric, else
    /// `clicked`).
    #[serde(default)]
    metric: Option<String>,
    /// The control arm (default: the first by name).
    #[serde(default)]
    control: Option<String>,
    /// Significance level of the sequential test (default 0.05).
    #[serde(default)]
    alpha: Option<f64>,
}

impl ExperimentQuery {
    fn metric(&self, default: &str) -> ApiResult<String> {
        let m = self.metric.clone().unwrap_or_else(|| default.to_string());
        if !herald_dsl::WINNER_METRICS.contains(&m.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "metric: an experiment is measured by {}, not \"{m}\"",
                    herald_dsl::WINNER_METRICS.join(", ")
                ),
            ));
        }
        Ok(m)
    }

    fn alpha(&self) -> ApiResult<f64> {
        match self.alpha {
            None => Ok(analytics::experiments::ALPHA),
            Some(a) if a > 0.0 && a < 0.5 => Ok(a),
            Some(a) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("alpha: a significance level between 0 and 0.5, not {a}"),
            )),
        }
    }
}

fn experiment_json(
    store: &dyn crate::store::Store,
    arms: Vec<(String, String)>,
    metric: &str,
    q: &ExperimentQuery,
    alpha: f64,
) -> ApiResult<Value> {
    let (looks, per_run) = analytics::arm_looks(store, &arms, metric)?;
    let control = q
        .control
        .clone()
        .or_else(|| arms.first().map(|(a, _)| a.clone()))
        .unwrap_or_default();
    if !arms.iter().any(|(a, _)| *a == control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("control: no arm \"{control}\""),
        ));
    }
    let analysis = analytics::experiments::analyse_looks(&looks, &control, alpha);
    // Conversions are per run: where a workflow's variant counts its runs, they are the
    // trials (`sent` in each arm), else the messages sent.
    let trials = if per_run { "runs" } else { "messages" };
    Ok(json!({"metric": metric, "trials": trials, "analysis": analysis}))
}

/// `GET /v1/reports/broadcasts/{name}/experiment?metric=&control=&alpha=`: a broadcast's
/// arms as an experiment.
pub(super) async fn broadcast_experiment(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<ExperimentQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let alpha = q.alpha()?;
    blocking(move || -> ApiResult<Json<Value>> {
        let store = shared.engine.store.as_ref();
        shared.engine.analytics.fold_all(store)?;
        let record = shared.engine.broadcast_record(&name)?;
        let spec = shared
            .engine
            .state()
            .broadcasts
            .get(&name)
            .and_then(|w| w.loaded.decl.broadcast.clone());
        let arms: Vec<String> = match (&record, &spec) {
            (Some(r), _) if r.test.is_some() => r.test.as_ref().unwrap().arms.clone(),
            (_, Some(s)) => s.arms.iter().map(|(a, _)| a.clone()).collect(),
            (Some(_), None) => {
                analytics::numbers_by_scope(store, &format!("arm:{name}:"), Period::default())?
                    .keys()
                    .filter_map(|k| k.strip_prefix(&format!("arm:{name}:")).map(str::to_string))
                    .collect()
            }
            (None, None) => return Err(not_found("broadcast", &name)),
        };
        if arms.len() < 2 {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("broadcast \"{name}\" has no arms: it is not an experiment"),
            ));
        }
        let default_metric = record
            .as_ref()
            .and_then(|r| r.test.as_ref().map(|t| t.metric.clone()))
            .unwrap_or_else(|| "clicked".into());
        let metric = q.metric(&default_metric)?;
        let scoped = arms
            .into_iter()
            .map(|a| (a.clone(), format!("arm:{name}:{a}")))
            .collect();
        let mut out = experiment_json(store, scoped, &metric, &q, alpha)?;
        out["broadcast"] = json!(name);
        if let Some(d) = record.and_then(|r| r.test.and_then(|t| t.decision)) {
            out["decision"] = json!(d);
        }
        Ok(Json(out))
    })
    .await?
}

/// `GET /v1/reports/workflows/{name}/experiments/{experiment}?metric=&control=&alpha=`: a
/// workflow's `variant(experiment, ...)` as an experiment.
pub(super) async fn workflow_experiment(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((name, experiment)): Path<(String, String)>,
    Query(q): Query<ExperimentQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let alpha = q.alpha()?;
    let metric = q.metric("clicked")?;
    blocking(move || -> ApiResult<Json<Value>> {
        let store = shared.engine.store.as_ref();
        shared.engine.analytics.fold_all(store)?;
        let prefix = format!("variant:{name}:{experiment}:");
        let arms: Vec<(String, String)> =
            analytics::numbers_by_scope(store, &prefix, Period::default())?
                .keys()
                .filter_map(|k| Some((k.strip_prefix(&prefix)?.to_string(), k.clone())))
                .collect();
        if arms.is_empty() {
            let known = shared.engine.state().workflows.contains_key(&name);
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                if known {
                    format!("workflow \"{name}\" has counted nothing for an experiment \"{experiment}\" (its `variant(\"{experiment}\", ...)`)")
                } else {
                    format!("no workflow named \"{name}\"")
                },
            ));
        }
        let mut out = experiment_json(store, arms, &metric, &q, alpha)?;
        out["workflow"] = json!(name);
        out["experiment"] = json!(experiment);
        Ok(Json(out))
    })
    .await?
}
