//! Per-send overhead of the plugin path against a native Rust channel doing
//! the same work, in one run:
//!
//! * `native`      — the Rust function below (config read, JSON body, SHA-256);
//! * `plugin warm` — `LoadedPlugin::send` on a pooled, already-instantiated
//!   instance (the steady state);
//! * `plugin cold` — the pool is cleared before every call, so each send
//!   instantiates from the pre-instantiation, calls and drops the instance;
//! * `plugin cold, pooling alloc` — the same with `HostOptions::pooling`;
//! * one-off costs: compiling the component, loading it from the on-disk cache.
//!
//! The plugin (`plugins/testdata/bench`) does exactly what `native_send`
//! does. Overhead = plugin time − native time. Run with
//! `cargo bench -p herald-plugin-host --bench send_overhead`.

use std::time::{Duration, Instant};

use herald_plugin_host::{Grant, HostOptions, PluginHost, PoolingOptions, SendRequest};
use serde_json::json;
use sha2::{Digest, Sha256};

fn native_send(config: &serde_json::Value, msg: &SendRequest) -> String {
    let from = config
        .get("from")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let body = json!({
        "From": from,
        "To": msg.to,
        "Subject": msg.subject,
        "TextBody": msg.text,
        "HtmlBody": msg.html,
        "Metadata": { "key": msg.idempotency_key, "name": msg.fields.get("first_name") },
    })
    .to_string();
    hex::encode(Sha256::digest(body.as_bytes()))
}

fn measure(name: &str, iters: u32, mut f: impl FnMut(u32)) -> Duration {
    for i in 0..(iters / 10).max(1) {
        f(i); // warm-up
    }
    let start = Instant::now();
    for i in 0..iters {
        f(i);
    }
    let per = start.elapsed() / iters;
    println!(
        "{name:<28} {:>10.2} µs/send  ({iters} sends)",
        per.as_secs_f64() * 1e6
    );
    per
}

fn main() {
    let dir = herald_bundled::testdata_dir().join("bench");
    let config = json!({ "from": "Shop <news@shop.example>" });
    let grant = || Grant {
        config: config.clone(),
        ..Grant::default()
    };
    let msg = |i: u32| SendRequest {
        idempotency_key: format!("run-{i}:step-1"),
        to: "ada@example.org".into(),
        subject: Some("Welcome to the shop".into()),
        text: Some("Hello Ada, thanks for subscribing.".into()),
        html: Some("<p>Hello <b>Ada</b>, thanks for subscribing.</p>".into()),
        fields: json!({ "first_name": "Ada", "last_name": "Lovelace", "plan": "pro" }),
        ..Default::default()
    };

    let cache = std::env::temp_dir().join(format!("herald-bench-cache-{}", std::process::id()));
    let t = Instant::now();
    let host = PluginHost::new(Some(cache.clone())).expect("host");
    let plugin = host.load(&dir, grant()).expect("load bench plugin");
    let compile = t.elapsed();
    let t = Instant::now();
    let host2 = PluginHost::new(Some(cache.clone())).expect("host");
    let _cached = host2.load(&dir, grant()).expect("cached load");
    let cached = t.elapsed();

    // Same answer on both paths.
    let m = msg(1);
    assert_eq!(
        plugin.send(&m).unwrap().provider_message_id.as_deref(),
        Some(native_send(&config, &m).as_str())
    );

    println!("herald plugin send overhead (bench plugin vs native function)");
    println!(
        "load + compile component   {:>10.2} ms",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "load from on-disk cache    {:>10.2} ms",
        cached.as_secs_f64() * 1e3
    );
    let msgs: Vec<SendRequest> = (0..1000).map(msg).collect();
    let native = measure("native", 20_000, |i| {
        std::hint::black_box(native_send(&config, &msgs[(i % 1000) as usize]));
    });
    let warm = measure("plugin warm (pooled)", 20_000, |i| {
        std::hint::black_box(plugin.send(&msgs[(i % 1000) as usize]).unwrap());
    });
    let cold = measure("plugin cold (instantiate)", 2_000, |i| {
        plugin.clear_pool();
        std::hint::black_box(plugin.send(&msgs[(i % 1000) as usize]).unwrap());
    });
    let pooled_host = PluginHost::with_options(HostOptions {
        cache_dir: Some(cache.clone()),
        pooling: Some(PoolingOptions::default()),
    })
    .expect("pooling host");
    let pooled = pooled_host.load(&dir, grant()).expect("load (pooling)");
    let cold_pooling = measure("plugin cold, pooling alloc", 2_000, |i| {
        pooled.clear_pool();
        std::hint::black_box(pooled.send(&msgs[(i % 1000) as usize]).unwrap());
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "overhead warm: {:.2} µs/send, cold: {:.2} µs/send, cold with pooling: {:.2} µs/send (target < 50 µs)",
        us(warm.saturating_sub(native)),
        us(cold.saturating_sub(native)),
        us(cold_pooling.saturating_sub(native))
    );
    println!(
        "throughput: native {:.0}/s, plugin warm {:.0}/s on one thread",
        1.0 / native.as_secs_f64(),
        1.0 / warm.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(cache);
}
