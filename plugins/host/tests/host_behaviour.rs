//! Host mechanics: compile cache, manifest checks, deadline across blocking
//! host calls, pool replacement after traps.
mod common;

use std::time::Duration;

use common::*;
use herald_plugin_host::{
    CallLimits, Grant, HostOptions, PluginError, PluginHost, PoolingOptions, SendError, SendRequest,
};
use serde_json::json;

#[test]
fn compiled_components_are_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let host = PluginHost::new(Some(cache.path().to_path_buf())).unwrap();
    host.load(&test_plugin_dir("hostile"), Grant::default())
        .expect("first load");
    assert_eq!(host.compilations(), 1);
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().unwrap() == "cwasm");
    // A new host (a restart) loads from the cache.
    let host2 = PluginHost::new(Some(cache.path().to_path_buf())).unwrap();
    let p = host2
        .load(&test_plugin_dir("hostile"), Grant::default())
        .expect("cached load");
    assert_eq!(
        host2.compilations(),
        0,
        "loaded from the cache, not compiled"
    );
    assert!(p
        .send(&SendRequest {
            idempotency_key: "c".into(),
            to: "x".into(),
            ..Default::default()
        })
        .is_ok());
    // A corrupt cache entry is ignored and rewritten.
    std::fs::write(&files[0], b"garbage").unwrap();
    let host3 = PluginHost::new(Some(cache.path().to_path_buf())).unwrap();
    host3
        .load(&test_plugin_dir("hostile"), Grant::default())
        .expect("recompiles");
    assert_eq!(host3.compilations(), 1, "a corrupt entry is compiled again");
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 1000);
}

#[test]
fn manifest_id_must_match_describe() {
    let dir = tempfile::tempdir().unwrap();
    let src = test_plugin_dir("hostile");
    std::fs::copy(src.join("plugin.wasm"), dir.path().join("plugin.wasm")).unwrap();
    let manifest = std::fs::read_to_string(src.join("plugin.toml"))
        .unwrap()
        .replace("id = \"hostile\"", "id = \"impostor\"");
    std::fs::write(dir.path().join("plugin.toml"), manifest).unwrap();
    match host().load(dir.path(), Grant::default()) {
        Err(PluginError::InvalidPlugin(m)) => assert!(m.contains("describe() says hostile"), "{m}"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(dir.path().join("plugin.toml")).unwrap();
    assert!(matches!(
        host().load(dir.path(), Grant::default()),
        Err(PluginError::Io { .. })
    ));
}

#[test]
fn deadline_covers_blocking_host_calls() {
    // The server holds every request until the test lets it go, so only the call's own deadline
    // can end the call.
    let gate = Gate::new();
    let g = gate.clone();
    let server = HttpServer::start(move |_| {
        g.wait();
        Reply::json(200, json!({}))
    });
    let p = host()
        .load(
            &test_plugin_dir("hostile"),
            Grant {
                allowed_hosts: vec![server.host_port()],
                allow_private: true,
                limits: CallLimits {
                    timeout: Duration::from_millis(400),
                    ..CallLimits::default()
                },
                ..Grant::default()
            },
        )
        .unwrap();
    let r = p.send(&SendRequest {
        idempotency_key: "slow".into(),
        operation: Some("http".into()),
        to: "x".into(),
        payload: json!({ "url": format!("{}/slow", server.base_url()) }),
        ..Default::default()
    });
    assert!(
        !gate.is_open(),
        "the call ended while the server still held it"
    );
    gate.open();
    match r {
        // Either the plugin saw the timed-out request (outcome unknown) or the
        // epoch deadline stopped it right after the host call returned.
        Err(SendError::Ambiguous(m)) | Err(SendError::Sandbox(m)) => {
            assert!(m.contains("time") || m.contains("timed out"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn trapped_instances_are_replaced_not_reused() {
    let p = host()
        .load(
            &test_plugin_dir("hostile"),
            Grant {
                limits: CallLimits {
                    // Short, so the spin below ends soon; the plain calls take microseconds.
                    timeout: Duration::from_secs(1),
                    ..CallLimits::default()
                },
                ..Grant::default()
            },
        )
        .unwrap();
    let ok = SendRequest {
        idempotency_key: "a".into(),
        to: "x".into(),
        ..Default::default()
    };
    p.send(&ok).unwrap();
    assert_eq!(p.warm_instances(), 1);
    let panic = SendRequest {
        operation: Some("panic".into()),
        ..ok.clone()
    };
    assert!(matches!(p.send(&panic), Err(SendError::Sandbox(_))));
    assert_eq!(p.warm_instances(), 0, "the trapped instance was dropped");
    p.send(&ok).unwrap();
    assert_eq!(p.warm_instances(), 1);
    // Unknown operations are refused by the host before any call.
    let unknown = SendRequest {
        operation: Some("nope".into()),
        ..ok
    };
    assert!(
        matches!(p.send(&unknown), Err(SendError::InvalidInput(m)) if m.contains("no operation `nope`"))
    );
}

#[test]
fn local_rate_limit_applies_before_the_plugin() {
    let p = host()
        .load(
            &test_plugin_dir("hostile"),
            Grant {
                limits: CallLimits {
                    // One token per 100 s: however slow the machine, none comes back mid-test.
                    rate_per_second: Some(0.01),
                    burst: 2,
                    ..CallLimits::default()
                },
                ..Grant::default()
            },
        )
        .unwrap();
    let ok = SendRequest {
        idempotency_key: "a".into(),
        to: "x".into(),
        ..Default::default()
    };
    assert!(p.send(&ok).is_ok());
    assert!(p.send(&ok).is_ok());
    match p.send(&ok) {
        Err(SendError::RateLimited {
            retry_after_ms,
            message,
        }) => {
            assert!(
                retry_after_ms > 0 && retry_after_ms <= 100_000,
                "{retry_after_ms}"
            );
            assert!(message.contains("rate limit"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pooling_allocator_host_enforces_the_same_limits() {
    let host = PluginHost::with_options(HostOptions {
        cache_dir: None,
        pooling: Some(PoolingOptions {
            max_instances: 16,
            max_memory_bytes: 64 << 20,
        }),
    })
    .unwrap();
    let limits = CallLimits {
        // Short, so the spin below ends soon; the plain calls take microseconds.
        timeout: Duration::from_secs(1),
        max_memory_bytes: 32 << 20,
        ..CallLimits::default()
    };
    let p = host
        .load(
            &test_plugin_dir("hostile"),
            Grant {
                limits: limits.clone(),
                ..Grant::default()
            },
        )
        .unwrap();
    let ok = SendRequest {
        idempotency_key: "a".into(),
        to: "x".into(),
        ..Default::default()
    };
    for _ in 0..50 {
        p.clear_pool();
        p.send(&ok).unwrap();
    }
    let bomb = SendRequest {
        operation: Some("memory-bomb".into()),
        ..ok.clone()
    };
    assert!(
        matches!(p.send(&bomb), Err(SendError::Sandbox(m)) if m.contains("memory limit exceeded"))
    );
    let spin = SendRequest {
        operation: Some("loop".into()),
        ..ok.clone()
    };
    assert!(
        matches!(p.send(&spin), Err(SendError::Sandbox(m)) if m.contains("time limit exceeded"))
    );
    p.send(&ok).unwrap();
    // A grant larger than the pool's memory slots is refused up front.
    let too_big = CallLimits {
        max_memory_bytes: 128 << 20,
        ..limits
    };
    match host.load(
        &test_plugin_dir("hostile"),
        Grant {
            limits: too_big,
            ..Grant::default()
        },
    ) {
        Err(PluginError::Engine(m)) => assert!(m.contains("pooling allocator"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn concurrent_calls_beyond_the_cap_are_refused() {
    let gate = Gate::new();
    let g = gate.clone();
    let server = HttpServer::start(move |_| {
        g.wait();
        Reply::json(200, json!({}))
    });
    let p = std::sync::Arc::new(
        host()
            .load(
                &test_plugin_dir("hostile"),
                Grant {
                    allowed_hosts: vec![server.host_port()],
                    allow_private: true,
                    limits: CallLimits {
                        max_concurrent_calls: 2,
                        timeout: Duration::from_secs(600),
                        ..CallLimits::default()
                    },
                    ..Grant::default()
                },
            )
            .unwrap(),
    );
    let url = format!("{}/slow", server.base_url());
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let (p, url) = (p.clone(), url.clone());
            std::thread::spawn(move || {
                p.send(&SendRequest {
                    idempotency_key: format!("s{i}"),
                    operation: Some("http".into()),
                    to: "x".into(),
                    payload: json!({ "url": url }),
                    ..Default::default()
                })
            })
        })
        .collect();
    // Both slow calls are inside the plugin, held at the server.
    gate.wait_for_waiters(2);
    match p.send(&SendRequest {
        idempotency_key: "third".into(),
        to: "x".into(),
        ..Default::default()
    }) {
        Err(SendError::RateLimited { message, .. }) => {
            assert!(message.contains("2 calls already running"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    gate.open();
    for h in slow {
        assert!(h.join().unwrap().is_ok());
    }
    assert!(p
        .send(&SendRequest {
            idempotency_key: "after".into(),
            to: "x".into(),
            ..Default::default()
        })
        .is_ok());
}
