//! Probes and metrics for operators: `/healthz` (alive), `/readyz` (accepting work),
//! `/metrics` (Prometheus).

#[allow(unused_imports)]
use super::*;

pub(super) async fn healthz(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "workflows": shared.engine.state().workflows.len(),
        "worker_panics": shared.engine.metrics.worker_panics(),
        "dedupe_window_ids": shared.ingestor.dedupe_len(),
    }))
}

/// Readiness, apart from liveness: 200 while the daemon accepts new work, 503 once a shutdown
/// has begun (load balancers and `systemctl` stop sending traffic; `/healthz` stays "alive").
pub(super) async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
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

pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    blocking(move || -> Response {
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
    })
    .await
    .unwrap_or_else(IntoResponse::into_response)
}
