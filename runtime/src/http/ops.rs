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
            (
                "herald_rate_limit_addresses",
                "Client addresses the ingest rate limits keep track of (at most [server.rate_limits] max_addresses each).",
                shared.rate_limits().tracked_addresses() as f64,
            ),
        ]);
        render_channels(&mut body, &shared.engine.delivery.status());
        render_analytics(&mut body, shared.engine.store.as_ref());
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

/// The analytics counters per workflow, broadcast and channel (not per step or variant, to
/// keep the label sets few), as Prometheus counters.
fn render_analytics(body: &mut String, store: &dyn crate::store::Store) {
    use std::fmt::Write as _;
    let label = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let _ = writeln!(body, "# HELP herald_messages_total Messages and their engagement counted by the analytics, per workflow, broadcast and channel.\n# TYPE herald_messages_total counter");
    for kind in ["workflow", "broadcast", "channel"] {
        let Ok(scopes) = crate::analytics::numbers_by_scope(
            store,
            &format!("{kind}:"),
            crate::analytics::Period::default(),
        ) else {
            continue;
        };
        for (scope, n) in scopes {
            let name = scope.strip_prefix(&format!("{kind}:")).unwrap_or(&scope);
            for (metric, v) in &n.counts {
                let _ = writeln!(
                    body,
                    "herald_messages_total{{kind=\"{kind}\",name=\"{}\",metric=\"{metric}\"}} {v}",
                    label(name)
                );
            }
        }
    }
}

/// The delivery stage's gauges and counters, per channel.
fn render_channels(
    body: &mut String,
    channels: &std::collections::BTreeMap<String, crate::delivery::ChannelStatus>,
) {
    use std::fmt::Write as _;
    let _ = writeln!(body, "# HELP herald_channel_queued Sends waiting for their channel, by lane.\n# TYPE herald_channel_queued gauge");
    for (name, c) in channels {
        for (lane, n) in &c.queued {
            let _ = writeln!(
                body,
                "herald_channel_queued{{channel=\"{name}\",lane=\"{lane}\"}} {n}"
            );
        }
    }
    type Gauge = (
        &'static str,
        &'static str,
        fn(&crate::delivery::ChannelStatus) -> f64,
    );
    let gauges: [Gauge; 6] = [
        ("herald_channel_in_flight", "Sends between dispatch and result.", |c| c.in_flight as f64),
        ("herald_channel_allowance", "Sends the channel may have in flight now (below its concurrency after the provider asked to slow down).", |c| c.allowance as f64),
        ("herald_channel_paused", "1 while an operator has paused the channel.", |c| if c.paused { 1.0 } else { 0.0 }),
        ("herald_channel_send_rate", "Sends started per second over the last ten seconds.", |c| c.rate),
        ("herald_channel_latency_mean_ms", "Mean time the provider took to answer.", |c| c.mean_latency_ms),
        ("herald_channel_ambiguous_window_mean_ms", "Mean time from a send's dispatch mark to its recorded result.", |c| c.mean_ambiguous_window_ms),
    ];
    for (metric, help, value) in gauges {
        let _ = writeln!(body, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for (name, c) in channels {
            let _ = writeln!(body, "{metric}{{channel=\"{name}\"}} {}", value(c));
        }
    }
    let _ = writeln!(body, "# HELP herald_channel_throttled_total Calls the provider refused as too many (429, 454).\n# TYPE herald_channel_throttled_total counter");
    for (name, c) in channels {
        let _ = writeln!(
            body,
            "herald_channel_throttled_total{{channel=\"{name}\"}} {}",
            c.throttled
        );
    }
}
