//! What a plugin call in flight costs: resident memory and threads, with every call held open
//! by a loopback receiver that answers only when all of them have arrived.
//!
//! For the bundled `webhook` connector (Rust) it starts `CALLS` calls at once on a runtime with
//! one worker thread, waits until the receiver holds all of them, and reports the growth of
//! resident memory per call (each call in flight has its own wasm instance) and of the process's
//! threads (none per call: a call waiting on the network holds no thread). Run with
//! `cargo bench -p herald-plugin-host --bench in_flight_memory`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_plugin_host::{CallLimits, Grant, PluginHost, SendRequest};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CALLS: usize = 200;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// A receiver on loopback that reads each request and answers it once `hold` requests have
/// arrived (or at once, before that is set).
async fn receiver(
    listener: tokio::net::TcpListener,
    arrived: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    hold: Arc<AtomicUsize>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        stream.set_nodelay(true).ok();
        let (arrived, release, hold) = (arrived.clone(), release.clone(), hold.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                // One request: headers, then the body its content-length announces.
                let (head_end, length) = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                while buf.len() < head_end + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..head_end + length);
                let n = arrived.fetch_add(1, Ordering::SeqCst) + 1;
                let wanted = hold.load(Ordering::SeqCst);
                if wanted > 0 {
                    if n >= wanted {
                        release.notify_waiters();
                    } else {
                        let notified = release.notified();
                        if arrived.load(Ordering::SeqCst) < wanted {
                            notified.await;
                        }
                    }
                }
                let body = br#"{"id":"rcv"}"#;
                let head = format!(
                    "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let mut answer = head.into_bytes();
                answer.extend_from_slice(body);
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (arrived, release, hold) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(AtomicUsize::new(0)),
    );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(receiver(
        listener,
        arrived.clone(),
        release.clone(),
        hold.clone(),
    ));

    let host = PluginHost::new(None).expect("engine");
    let grant = Grant {
        allowed_hosts: vec![format!("127.0.0.1:{port}")],
        allow_private: true,
        secrets: [("WEBHOOK_SIGNING_KEY".to_string(), "k".to_string())].into(),
        config: json!({ "url": format!("http://127.0.0.1:{port}/hooks") }),
        smtp: None,
        limits: CallLimits {
            timeout: Duration::from_secs(120),
            max_concurrent_calls: CALLS,
            pool_size: CALLS,
            ..CallLimits::default()
        },
    };
    let plugin = Arc::new(
        host.load(&herald_bundled::packaged_dir().join("webhook"), grant)
            .expect("load the webhook connector"),
    );
    let request = |i: usize| SendRequest {
        idempotency_key: format!("run-{i}:0"),
        to: "ada@example.org".into(),
        text: Some("hi".into()),
        ..Default::default()
    };
    // Warm up: one instance, the HTTP client, the runtime.
    runtime
        .block_on(plugin.send_async(&request(0)))
        .expect("warm-up send");
    let (rss_before, threads_before) = (resident_bytes(), threads());

    hold.store(arrived.load(Ordering::SeqCst) + CALLS, Ordering::SeqCst);
    let measured = {
        let plugin = plugin.clone();
        let arrived = arrived.clone();
        let hold = hold.clone();
        std::thread::spawn(move || {
            let calls: Vec<_> = (1..=CALLS)
                .map(|i| runtime.spawn(plugin.send_async(&request(i))))
                .collect();
            // Measure while every call is held by the receiver.
            while arrived.load(Ordering::SeqCst) < hold.load(Ordering::SeqCst) - 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let during = (resident_bytes(), threads());
            runtime.block_on(async {
                for c in calls {
                    c.await.expect("task").expect("send");
                }
            });
            during
        })
        .join()
        .unwrap()
    };
    let (rss_during, threads_during) = measured;
    let per_call = rss_during.saturating_sub(rss_before) as f64 / CALLS as f64;
    println!("plugin calls held in flight at once   {CALLS} (bundled webhook connector, Rust)");
    println!(
        "resident memory per call in flight    {:.2} MiB   ({:.1} MiB before, {:.1} MiB with all in flight)",
        per_call / (1 << 20) as f64,
        rss_before as f64 / (1 << 20) as f64,
        rss_during as f64 / (1 << 20) as f64
    );
    println!(
        "threads                               {threads_before} before, {threads_during} with all in flight (a call waiting on the network holds none)"
    );
    println!(
        "warm instances afterwards             {}",
        plugin.warm_instances()
    );
}
