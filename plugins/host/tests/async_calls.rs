//! Plugin calls are asynchronous: a call waiting on the network holds no thread.

mod common;

use common::*;
use herald_plugin_host::{CallLimits, SendRequest};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn many_plugin_calls_wait_on_the_network_at_once_on_a_single_thread() {
    const CALLS: usize = 48;
    let gate = Gate::new();
    let held = gate.clone();
    let server = HttpServer::start(move |_| {
        held.wait();
        Reply::json(202, json!({ "id": "rcv" }))
    });
    let mut grant = loopback_grant(
        &server,
        json!({ "url": format!("{}/hooks", server.base_url()) }),
        &[("WEBHOOK_SIGNING_KEY", "k")],
    );
    grant.limits = CallLimits {
        timeout: Duration::from_secs(120),
        max_concurrent_calls: CALLS,
        pool_size: CALLS,
        ..CallLimits::default()
    };
    let plugin = Arc::new(load_connector("webhook", grant));
    // One thread drives every call: all of them can reach the server at the same time only
    // if none of them holds the thread while it waits for its answer.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            gate.wait_for_waiters(CALLS);
            gate.open();
        })
    };
    let results = runtime.block_on(async {
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                plugin.send_async(&SendRequest {
                    idempotency_key: format!("run-{i}:0"),
                    to: "ada@example.org".into(),
                    text: Some("hi".into()),
                    ..Default::default()
                })
            })
            .collect();
        let mut results = Vec::new();
        let handles: Vec<_> = calls.into_iter().map(tokio::task::spawn).collect();
        for h in handles {
            results.push(h.await.expect("call task"));
        }
        results
    });
    opener.join().unwrap();
    assert_eq!(results.len(), CALLS);
    for r in &results {
        assert_eq!(
            r.as_ref().expect("send").provider_message_id.as_deref(),
            Some("rcv")
        );
    }
    assert_eq!(server.requests().len(), CALLS);
    // A component instance serves one call at a time: each call in flight had its own, and
    // all of them are kept warm for the next calls.
    assert_eq!(plugin.warm_instances(), CALLS);
}
