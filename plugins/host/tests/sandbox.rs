//! Hostile plugins: each attack is denied or stopped with a clear error, and
//! the same LoadedPlugin keeps serving the next call.
mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_plugin_host::{CallLimits, Grant, LoadedPlugin, SendError, SendRequest};
use serde_json::json;

fn hostile(grant: Grant) -> LoadedPlugin {
    host()
        .load(&test_plugin_dir("hostile"), grant)
        .expect("load hostile")
}

/// Limits for the attacks: a call timeout that is only a hang guard (a loaded machine must
/// not turn a slow call into a time-limit error), a 32 MiB memory cap.
fn limits() -> CallLimits {
    CallLimits {
        timeout: Duration::from_secs(120),
        max_memory_bytes: 32 << 20,
        ..CallLimits::default()
    }
}

fn op(name: &str, payload: serde_json::Value) -> SendRequest {
    SendRequest {
        idempotency_key: format!("k-{name}"),
        operation: Some(name.into()),
        to: "x".into(),
        payload,
        ..Default::default()
    }
}

fn still_serves(p: &LoadedPlugin) {
    let ok = p.send(&SendRequest {
        idempotency_key: "after".into(),
        to: "x".into(),
        ..Default::default()
    });
    assert_eq!(
        ok.expect("plugin serves after the attack")
            .provider_message_id
            .as_deref(),
        Some("ok-after")
    );
}

fn sandbox_err(r: Result<herald_plugin_host::SendOutcome, SendError>) -> String {
    match r {
        Err(SendError::Sandbox(m)) => m,
        other => panic!("expected a sandbox error, got {other:?}"),
    }
}

/// A refused capability: never retried, with the refusal's reason.
fn denied_err(r: Result<herald_plugin_host::SendOutcome, SendError>) -> String {
    match r {
        Err(e @ SendError::Denied(_)) => {
            assert!(!e.is_retryable(), "a denial is never retried");
            e.to_string()
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn infinite_loop_is_interrupted() {
    let timeout = Duration::from_millis(500);
    let p = hostile(Grant {
        limits: CallLimits {
            timeout,
            ..limits()
        },
        ..Grant::default()
    });
    let t = Instant::now();
    let m = sandbox_err(p.send(&op("loop", json!({}))));
    assert!(
        m.contains("time limit exceeded") && m.contains("timeout_ms"),
        "{m}"
    );
    // The deadline, not anything earlier, ended the call.
    assert!(t.elapsed() >= timeout, "took {:?}", t.elapsed());
    still_serves(&p);
}

#[test]
fn memory_bomb_hits_the_cap() {
    let p = hostile(Grant {
        limits: limits(),
        ..Grant::default()
    });
    let m = sandbox_err(p.send(&op("memory-bomb", json!({}))));
    assert!(
        m.contains("memory limit exceeded") && m.contains("32 MiB") && m.contains("max_memory_mb"),
        "{m}"
    );
    still_serves(&p);
}

#[test]
fn panic_is_reported_with_its_message() {
    let p = hostile(Grant {
        limits: limits(),
        ..Grant::default()
    });
    let m = sandbox_err(p.send(&op("panic", json!({}))));
    assert!(
        m.contains("plugin panicked") && m.contains("hostile plugin panicked on purpose"),
        "{m}"
    );
    still_serves(&p);
}

#[test]
fn host_not_granted_is_denied() {
    let server = HttpServer::start(|_| Reply::json(200, json!({})));
    let p = hostile(Grant {
        limits: limits(),
        allow_private: true,
        ..Grant::default()
    });
    let m = denied_err(p.send(&op(
        "http",
        json!({ "url": format!("{}/steal", server.base_url()) }),
    )));
    assert!(
        m.contains("denied") && m.contains("not in the plugin's allowed hosts"),
        "{m}"
    );
    assert!(server.requests().is_empty(), "no request may leave");
    still_serves(&p);
}

#[test]
fn private_address_is_refused_unless_granted() {
    let server = HttpServer::start(|_| Reply::json(200, json!({"hello": "world"})));
    let url = format!("{}/internal", server.base_url());
    // The host is granted but private addresses are not.
    let p = hostile(Grant {
        limits: limits(),
        allowed_hosts: vec![server.host_port()],
        ..Grant::default()
    });
    let m = denied_err(p.send(&op("http", json!({ "url": url }))));
    assert!(m.contains("non-public address 127.0.0.1"), "{m}");
    assert!(server.requests().is_empty());
    // Cloud metadata endpoints are refused the same way (no packet is sent: the check precedes connect).
    let meta = hostile(Grant {
        limits: limits(),
        allowed_hosts: vec!["169.254.169.254".into()],
        ..Grant::default()
    });
    let m = denied_err(meta.send(&op(
        "http",
        json!({ "url": "http://169.254.169.254/latest/meta-data/" }),
    )));
    assert!(m.contains("non-public address"), "{m}");
    // With the operator's explicit grant it works.
    let ok = hostile(Grant {
        limits: limits(),
        allowed_hosts: vec![server.host_port()],
        allow_private: true,
        ..Grant::default()
    });
    let out = ok
        .send(&op("http", json!({ "url": url })))
        .expect("granted");
    assert_eq!(out.details["status"], 200);
    still_serves(&p);
}

#[test]
fn other_schemes_are_denied() {
    let p = hostile(Grant {
        limits: limits(),
        allowed_hosts: vec!["localhost".into()],
        allow_private: true,
        ..Grant::default()
    });
    let m = denied_err(p.send(&op("http", json!({ "url": "file:///etc/passwd" }))));
    assert!(m.contains("scheme `file`"), "{m}");
}

#[test]
fn filesystem_env_and_sockets_are_not_available() {
    let p = hostile(Grant {
        limits: limits(),
        ..Grant::default()
    });
    match p.send(&op("read-file", json!({ "path": "/etc/passwd" }))) {
        Err(SendError::InvalidInput(m)) => assert!(m.contains("read failed"), "{m}"),
        other => panic!("{other:?}"),
    }
    let env = p
        .send(&op("read-env", json!({})))
        .expect("env call returns");
    assert_eq!(
        env.details["env"],
        json!([]),
        "the guest sees no environment"
    );
    let server = HttpServer::start(|_| Reply::json(200, json!({})));
    match p.send(&op("tcp", json!({ "addr": server.host_port() }))) {
        Err(SendError::Transient(m)) => assert!(m.contains("tcp failed"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(server.requests().is_empty());
    still_serves(&p);
}

#[test]
fn secrets_never_reach_the_guest() {
    // A server that echoes back everything it receives.
    let server = HttpServer::start(|r| Reply {
        status: 200,
        headers: vec![(
            "X-Echo".into(),
            r.header("x-token").unwrap_or("").to_string(),
        )],
        body: format!("{} {}", r.header("x-token").unwrap_or(""), r.body_text()),
    });
    let mut grant = Grant {
        limits: limits(),
        allowed_hosts: vec![server.host_port()],
        allow_private: true,
        ..Grant::default()
    };
    grant
        .secrets
        .insert("DECLARED_SECRET".into(), "super-secret-value-123".into());
    grant
        .secrets
        .insert("OTHER_PLUGINS_SECRET".into(), "someone-elses-secret".into());
    let p = hostile(grant);
    let out = p
        .send(&op(
            "secret-echo",
            json!({ "url": format!("{}/echo", server.base_url()) }),
        ))
        .expect("echo");
    // The provider received the real value...
    let rec = server.only_request();
    assert_eq!(rec.header("x-token"), Some("super-secret-value-123"));
    assert_eq!(rec.body_text(), "token=super-secret-value-123");
    // ...but what came back into the guest was scrubbed.
    let details = out.details.to_string();
    assert!(!details.contains("super-secret-value-123"), "{details}");
    assert!(details.contains("{{secret:DECLARED_SECRET}}"), "{details}");
    // A secret the manifest does not declare cannot be used, even if the operator has it.
    let m = denied_err(p.send(&op(
        "undeclared-secret",
        json!({ "url": format!("{}/x", server.base_url()) }),
    )));
    assert!(
        m.contains("secret `OTHER_PLUGINS_SECRET` is not declared"),
        "{m}"
    );
    let m = denied_err(p.send(&op("hmac-undeclared", json!({}))));
    assert!(m.contains("not declared"), "{m}");
    assert_eq!(server.requests().len(), 1);
    still_serves(&p);
}

#[test]
fn smtp_without_grant_is_denied() {
    let p = hostile(Grant {
        limits: limits(),
        ..Grant::default()
    });
    let m = denied_err(p.send(&op("smtp", json!({}))));
    assert!(m.contains("smtp") && m.contains("does not declare"), "{m}");
}

#[test]
fn tampered_wasm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = test_plugin_dir("hostile");
    std::fs::copy(src.join("plugin.toml"), dir.path().join("plugin.toml")).unwrap();
    let mut wasm = std::fs::read(src.join("plugin.wasm")).unwrap();
    let last = wasm.len() - 1;
    wasm[last] ^= 0xff;
    std::fs::write(dir.path().join("plugin.wasm"), wasm).unwrap();
    let err = host().load(dir.path(), Grant::default()).unwrap_err();
    assert!(
        matches!(err, herald_plugin_host::PluginError::Checksum { .. }),
        "{err}"
    );
}

#[test]
fn concurrent_calls_and_pool_reuse() {
    let p = std::sync::Arc::new(hostile(Grant {
        limits: limits(),
        ..Grant::default()
    }));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                for j in 0..10 {
                    let key = format!("t{i}-{j}");
                    let out = p
                        .send(&SendRequest {
                            idempotency_key: key.clone(),
                            to: "x".into(),
                            ..Default::default()
                        })
                        .unwrap();
                    assert_eq!(out.provider_message_id, Some(format!("ok-{key}")));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(p.warm_instances() >= 1 && p.warm_instances() <= 4);
    // Idempotency support is visible in describe().
    assert!(p.describe().supports_idempotency);
}

#[test]
fn redirects_are_not_followed() {
    let server = HttpServer::start(|r| {
        if r.path == "/start" {
            Reply {
                status: 302,
                headers: vec![(
                    "Location".into(),
                    "http://169.254.169.254/latest/meta-data/".into(),
                )],
                body: String::new(),
            }
        } else {
            Reply::json(200, json!({}))
        }
    });
    let p = hostile(Grant {
        limits: limits(),
        allowed_hosts: vec![server.host_port()],
        allow_private: true,
        ..Grant::default()
    });
    let out = p
        .send(&op(
            "http",
            json!({ "url": format!("{}/start", server.base_url()) }),
        ))
        .expect("3xx is returned to the plugin");
    assert_eq!(out.details["status"], 302);
    assert_eq!(server.requests().len(), 1, "the redirect was not followed");
}

#[test]
fn request_floods_are_cut_off() {
    let server = HttpServer::start(|_| Reply::json(200, json!({})));
    let p = hostile(Grant {
        limits: CallLimits {
            max_http_requests_per_call: 5,
            ..limits()
        },
        allowed_hosts: vec![server.host_port()],
        allow_private: true,
        ..Grant::default()
    });
    let m = denied_err(p.send(&op(
        "http-flood",
        json!({ "url": format!("{}/flood", server.base_url()) }),
    )));
    assert!(m.contains("more than 5 HTTP requests in one call"), "{m}");
    assert_eq!(server.requests().len(), 5);
    // The budget is per call.
    let out = p
        .send(&op(
            "http",
            json!({ "url": format!("{}/one", server.base_url()) }),
        ))
        .expect("next call");
    assert_eq!(out.details["status"], 200);
}

#[test]
fn oversized_initial_memory_is_refused_at_instantiation() {
    let small = Grant {
        limits: CallLimits {
            max_memory_bytes: 32 << 20,
            ..limits()
        },
        ..Grant::default()
    };
    match host().load(&test_plugin_dir("fat"), small) {
        Err(herald_plugin_host::PluginError::Sandbox(m)) => {
            assert!(
                m.contains("memory limit exceeded") && m.contains("instantiation"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    // With room for its ballast the same plugin works.
    let roomy = Grant {
        limits: CallLimits {
            max_memory_bytes: 64 << 20,
            ..limits()
        },
        ..Grant::default()
    };
    let p = host()
        .load(&test_plugin_dir("fat"), roomy)
        .expect("fits in 64 MiB");
    let out = p
        .send(&SendRequest {
            idempotency_key: "k".into(),
            to: "x".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(out.provider_message_id.as_deref(), Some("k-0"));
}

#[test]
fn trap_after_an_outbound_request_is_ambiguous() {
    let server = HttpServer::start(|_| Reply::json(200, json!({})));
    let p = hostile(Grant {
        limits: limits(),
        allowed_hosts: vec![server.host_port()],
        allow_private: true,
        ..Grant::default()
    });
    match p.send(&op(
        "http-then-panic",
        json!({ "url": format!("{}/x", server.base_url()) }),
    )) {
        Err(SendError::Ambiguous(m)) => {
            assert!(
                m.starts_with("sandbox: plugin panicked") && m.contains("after 1 outbound request"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.requests().len(), 1);
    still_serves(&p);
}
