//! `herald bench`: throughput of the real daemon on this machine, against raw sled as the
//! reference, all in one run so the ratios are comparable on a noisy machine.

use herald_runtime::sync::LockExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use herald_runtime::daemon::{Options, RunningDaemon};
use serde_json::json;

/// Options of `herald bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Events sent through `/v1/batch` (and raw records written to sled).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Messages per batch request.
    #[arg(long, default_value_t = 250)]
    batch: usize,
    /// Distinct users the events come from (default: one per ten events).
    #[arg(long)]
    users: Option<usize>,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Runs started for the activation benchmark.
    #[arg(long, default_value_t = 10_000)]
    runs: usize,
    /// Runs left waiting on timers, to measure memory and restart time (0 skips it).
    #[arg(long, default_value_t = 0)]
    waiting: usize,
    /// Segments defined for the audience benchmark (0 skips it).
    #[arg(long, default_value_t = 100)]
    segments: usize,
    /// Scoring rules defined for the audience benchmark.
    #[arg(long, default_value_t = 20)]
    rules: usize,
    /// Contacts a new segment is backfilled over (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    backfill: usize,
    /// Runs sent through a native webhook channel and through the webhook plugin (0 skips it).
    #[arg(long, default_value_t = 3000)]
    channel_runs: usize,
    /// Runs sent again to a receiver that answers after `--provider-latency-ms`, as provider
    /// APIs do (0 skips it).
    #[arg(long, default_value_t = 3000)]
    slow_channel_runs: usize,
    /// How long the slow receiver takes to answer, in milliseconds.
    #[arg(long, default_value_t = 50)]
    provider_latency_ms: u64,
    /// The benchmark channel's `concurrency` (sends in flight at once).
    #[arg(long, default_value_t = 256)]
    send_concurrency: usize,
    /// Recipients of the broadcast benchmark through the outbox channel (0 skips it). The
    /// README's figure is for 1,000,000.
    #[arg(long, default_value_t = 100_000)]
    broadcast: usize,
    /// Contacts of the analytics benchmark: each sends `go` (a run that sends one email) and
    /// `bought` (its goal), with analytics on and off (0 skips it).
    #[arg(long, default_value_t = 5_000)]
    analytics: usize,
    /// Facts fed straight into the analytics fold for the report query benchmark: one
    /// workflow with 5 versions × 20 steps × 4 variants over 90 days (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    report_facts: usize,
    /// Recipients of the same broadcast through the webhook plugin to a loopback receiver
    /// answering after `--provider-latency-ms` (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    broadcast_plugin: usize,
    /// Saved script changes timed from save to serving (0 skips it).
    #[arg(long, default_value_t = 20)]
    reloads: usize,
    /// Also print, for the audience benchmark, the CPU time per event of each group of the
    /// daemon's threads (ingest, workers, sled's IO) in the best round of each kind (Linux).
    #[arg(long)]
    threads: bool,
}

const WRITE_KEY: &str = "bench-key";
const TOKEN: &str = "bench-token";

fn project(dir: &Path, workflow: &str) -> Result<()> {
    // The daemon's default page cache unless HERALD_BENCH_CACHE_MB says otherwise.
    let cache = std::env::var("HERALD_BENCH_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|mb| format!("\n[engine]\ncache_mb = {mb}\n"))
        .unwrap_or_default();
    std::fs::create_dir_all(dir.join("workflows"))?;
    std::fs::create_dir_all(dir.join("templates"))?;
    std::fs::write(
        dir.join("herald.toml"),
        format!(
            "[auth]\nwrite_keys = [\"{WRITE_KEY}\"]\nadmin_token = \"{TOKEN}\"\n\n[channels.email]\ntype = \"outbox\"\npath = \"outbox.jsonl\"\nto = \"email\"\n{cache}"
        ),
    )?;
    std::fs::write(
        dir.join("templates/hello.liquid"),
        "---\nsubject: Hi {{ contact.first_name }}\n---\nHello!\n",
    )?;
    std::fs::write(dir.join("workflows/bench.rhai"), workflow)?;
    Ok(())
}

/// A bare sled database in a temporary directory, configured like the daemon's.
fn bare_sled() -> Result<(tempfile::TempDir, sled::Db)> {
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(herald_runtime::config::EngineConfig::default().cache_mb << 20)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    Ok((dir, db))
}

fn raw_sled(n: usize, batch: usize) -> Result<f64> {
    let (_dir, db) = bare_sled()?;
    let tree = db.open_tree("events")?;
    let payload = serde_json::to_vec(
        &json!({"type": "track", "event": "page_viewed", "properties": {"path": "/pricing", "n": 1}}),
    )?;
    let start = Instant::now();
    let mut i = 0u64;
    while (i as usize) < n {
        let mut b = sled::Batch::default();
        for _ in 0..batch.min(n - i as usize) {
            b.insert(&i.to_be_bytes(), payload.clone());
            i += 1;
        }
        tree.apply_batch(b)?;
        db.flush()?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The writes ingest makes for `n` track events from `users` users — the event under its
/// contact's key, one insert each, and one record of the batch's messageIds, flushed per
/// batch — without HTTP, parsing or identity resolution: how much of ingest's cost is the
/// shape of its keys.
fn raw_sled_ingest_shape(n: usize, users: usize, batch: usize) -> Result<f64> {
    let (_dir, db) = bare_sled()?;
    let events = db.open_tree("events")?;
    let ids = db.open_tree("dedupe")?;
    let now = 1_796_000_000_000;
    let payload = herald_runtime::store::enc_event(&herald_runtime::model::Event {
        seq: 0,
        kind: "track".into(),
        event: "page_viewed".into(),
        properties: json!({"path": "/pricing"}),
        message_id: Some("m0-000000-page_viewed".into()),
        timestamp: now,
        received_at: now,
        context: serde_json::Value::Null,
    })?;
    let start = Instant::now();
    let mut i = 0usize;
    while i < n {
        let mut record = Vec::new();
        for _ in 0..batch.min(n - i) {
            let mut key = format!("c_{:012x}", i % users.max(1)).into_bytes();
            key.push(0);
            key.extend_from_slice(&(i as u64).to_be_bytes());
            events.insert(key, payload.clone())?;
            let id = format!("m{}-{i}-page_viewed", i % 4);
            record.extend_from_slice(&(id.len() as u16).to_be_bytes());
            record.extend_from_slice(id.as_bytes());
            i += 1;
        }
        ids.insert((i as u64).to_be_bytes(), record)?;
        db.flush()?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> Result<()> {
    agent
        .post(url)
        .set("authorization", &format!("Basic {}", base64_user()))
        .set("content-type", "application/json")
        .send_string(body)
        .map_err(|e| anyhow::anyhow!("POST {url}: {e}"))?;
    Ok(())
}

/// POST `msgs` to the daemon at `base` as one `/v1/batch` request.
fn post_batch(agent: &ureq::Agent, base: &str, msgs: Vec<serde_json::Value>) -> Result<()> {
    post(
        agent,
        &format!("{base}/v1/batch"),
        &json!({ "batch": msgs }).to_string(),
    )
}

fn base64_user() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
}

/// Send `n` track events from `clients` threads; events come from `users` distinct users.
/// Request bodies are built before the clock starts, so the rate is the server's.
fn ingest_http(
    url: &str,
    n: usize,
    users: usize,
    batch: usize,
    clients: usize,
    events: &[&str],
) -> Result<f64> {
    let per_client = n.div_ceil(clients);
    let users_per_client = users.div_ceil(clients).max(1);
    let ready = Arc::new(std::sync::Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let url = format!("{url}/v1/batch");
            let names: Vec<String> = events.iter().map(|e| e.to_string()).collect();
            let ready = ready.clone();
            std::thread::spawn(move || -> Result<()> {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
                let mut bodies = Vec::new();
                let mut sent = 0;
                while sent < per_client {
                    let k = batch.min(per_client - sent);
                    let msgs: Vec<_> = (0..k)
                        .map(|i| {
                            json!({"type": "track", "userId": format!("u{c}-{}", (sent + i) % users_per_client),
                                   "event": names[(sent + i) % names.len()],
                                   "messageId": format!("m{c}-{}-{}", sent + i, names[(sent + i) % names.len()]),
                                   "properties": {"path": "/pricing"}})
                        })
                        .collect();
                    bodies.push(json!({"batch": msgs}).to_string());
                    sent += k;
                }
                ready.wait();
                for body in bodies {
                    post(&agent, &url, &body)?;
                }
                Ok(())
            })
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    Ok((per_client * clients) as f64 / start.elapsed().as_secs_f64())
}

fn wait_for_runs(d: &RunningDaemon, workflow: &str, n: usize, status: &str) -> Result<()> {
    let metrics = &d.shared.engine.metrics;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        d.shared.engine.barrier();
        let text = metrics.render(&[]);
        let count = text
            .lines()
            .find(|l| l.starts_with(&format!("herald_runs{{status=\"{status}\"}}")))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if count as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("only {count} of {n} runs of {workflow} reached {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start a daemon on a free loopback port for a benchmark project.
fn start_daemon(dir: &Path, watch: bool) -> Result<RunningDaemon> {
    Ok(RunningDaemon::start(Options {
        project: dir.into(),
        listen: Some("127.0.0.1:0".into()),
        data: None,
        test_clock: false,
        watch,
    })?)
}

/// Run every benchmark and print a report.
pub fn run(args: BenchArgs) -> Result<()> {
    println!(
        "herald bench: {} events from {} users in batches of {} from {} clients, {} runs",
        args.events,
        args.users.unwrap_or(args.events / 10).max(1),
        args.batch,
        args.clients,
        args.runs
    );

    // Interleaved rounds, best of each (as for the audience benchmark): a shared machine's
    // noise only ever slows a run, and one short run of the reference alone moved the ratio
    // by a third. Every round starts from an empty database and a new daemon.
    let users = args.users.unwrap_or(args.events / 10).max(1);
    let workflow = "workflow(\"bench\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    send(\"email\", \"hello\");\n}\n";
    let (mut raw, mut ingest, mut shaped) = (0f64, 0f64, 0f64);
    for _ in 0..ROUNDS {
        raw = raw.max(raw_sled(args.events, args.batch).context("raw sled benchmark")?);
        let dir = tempfile::tempdir()?;
        project(dir.path(), workflow)?;
        let d = start_daemon(dir.path(), false)?;
        ingest = ingest.max(ingest_http(
            &d.url(),
            args.events,
            users,
            args.batch,
            args.clients,
            &["page_viewed"],
        )?);
        // Nothing of this daemon runs on while the references are measured.
        d.shutdown();
        drop(dir);
        shaped = shaped.max(
            raw_sled_ingest_shape(args.events, users, args.batch)
                .context("raw sled benchmark with ingest's keys")?,
        );
    }
    println!("raw sled batched writes      {raw:>12.0} records/s   (reference: batches of {}, flushed per batch; best of {ROUNDS} rounds)", args.batch);
    println!("ingest over HTTP /v1/batch   {ingest:>12.0} events/s    ratio to raw sled: {:.2} (target >= 0.50)", ingest / raw);
    println!("raw sled, ingest's writes    {shaped:>12.0} events/s    (event insert per event, messageIds per batch; context, not the target: ingest / this = {:.2})", ingest / shaped);

    let dir = tempfile::tempdir()?;
    project(dir.path(), workflow)?;
    let d = start_daemon(dir.path(), false)?;
    let start = Instant::now();
    ingest_http(
        &d.url(),
        args.runs,
        args.runs,
        args.batch,
        args.clients,
        &["go"],
    )?;
    wait_for_runs(&d, "bench", args.runs, "completed")?;
    let act = args.runs as f64 / start.elapsed().as_secs_f64();
    println!("workflow activations         {act:>12.0} runs/s      (ingest + trigger + render + outbox send + completion)");
    d.shutdown();

    if args.analytics > 0 {
        analytics_overhead(args.analytics, args.batch, args.clients)?;
    }
    if args.report_facts > 0 {
        report_query(args.report_facts)?;
    }
    if args.broadcast > 0 {
        broadcasts(&args, act)?;
    }
    if args.channel_runs > 0 {
        channels(
            args.channel_runs,
            args.slow_channel_runs,
            args.provider_latency_ms,
            args.send_concurrency,
            args.batch,
            args.clients,
        )?;
    }
    if args.segments > 0 {
        audience(&args)?;
    }
    if args.backfill > 0 {
        backfill(args.backfill)?;
    }
    if args.reloads > 0 {
        reloads(args.reloads)?;
    }
    if args.waiting > 0 {
        waiting(args.waiting, args.batch, args.clients)?;
    }
    Ok(())
}

fn reloads(n: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = "workflow(\"bench\").on_event(\"go\");\nfn run(contact, trigger) {\n    send(\"email\", \"hello\");\n}\n";
    project(dir.path(), base)?;
    let d = start_daemon(dir.path(), true)?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let source = format!("{base}// revision {i}\n");
        let want = herald_runtime::project::script_hash(&source);
        // Let every event of the previous save be delivered and handled, so that each
        // measurement covers exactly one save: wait until the reload counters stay still.
        let counters = || {
            let s = d.shared.reload_stats.locked();
            (s.applied, s.refused, s.skipped_identical)
        };
        let mut last = counters();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = counters();
            if now == last {
                break;
            }
            last = now;
        }
        let start = Instant::now();
        std::fs::write(dir.path().join("workflows/bench.rhai"), &source)?;
        loop {
            if d.shared
                .engine
                .state()
                .workflows
                .get("bench")
                .is_some_and(|w| w.hash == want)
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("revision {i} was not served within 10 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "save to serving (hot reload)  median {:>7.1} ms   max {:.1} ms over {n} saves (debounce {} ms; target median < 300 ms)",
        times[n / 2],
        times[n - 1],
        herald_runtime::reload::DEBOUNCE.as_millis()
    );
    d.shutdown();
    Ok(())
}

/// The daemon as a child process (`herald run`), so its memory is measured alone.
struct Child {
    child: std::process::Child,
    url: String,
}

impl Child {
    fn start(dir: &Path) -> Result<Child> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "run",
                &dir.to_string_lossy(),
                "--no-watch",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("HERALD_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(120);
        while ureq::get(&format!("{url}/healthz")).call().is_err() {
            if Instant::now() > deadline {
                anyhow::bail!("the daemon did not start");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Child { child, url })
    }

    fn rss_mb(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    fn status(&self) -> Result<serde_json::Value> {
        Ok(ureq::get(&format!("{}/v1/status", self.url))
            .set("authorization", &format!("Bearer {TOKEN}"))
            .call()
            .map_err(|e| anyhow::anyhow!("status: {e}"))?
            .into_json()?)
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait()?;
        Ok(())
    }
}

/// `n` runs parked on a 30-day timer in a separate daemon process: its resident memory, and
/// the time a restart takes to serve again with them pending.
fn waiting(n: usize, batch: usize, clients: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    project(dir.path(), "workflow(\"sleepy\").on_event(\"signup\");\nfn run(contact, trigger) {\n    wait(days(30));\n    send(\"email\", \"hello\");\n}\n")?;
    let d = Child::start(dir.path())?;
    let start = Instant::now();
    ingest_http(&d.url, n, n, batch, clients, &["signup"])?;
    loop {
        if d.status()?["pending_timers"].as_u64().unwrap_or(0) as usize >= n {
            break;
        }
        if start.elapsed() > Duration::from_secs(3600) {
            anyhow::bail!("the runs did not all reach their timer");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = start.elapsed().as_secs_f64();
    println!("runs waiting on timers       {n:>12}          created in {secs:.1} s");
    println!("daemon resident memory       {:>12.0} MB         (the herald process alone; target < 300 MB)", d.rss_mb());
    d.stop()?;
    let start = Instant::now();
    let d = Child::start(dir.path())?;
    let serving = start.elapsed().as_secs_f64();
    let pending = d.status()?["pending_timers"].as_u64().unwrap_or(0);
    println!("restart to serving           {serving:>12.2} s          with {pending} pending timers (target < 10 s)");
    println!(
        "daemon resident memory       {:>12.0} MB         after the restart",
        d.rss_mb()
    );
    d.stop()?;
    Ok(())
}

/// Twenty event names; segments and rules spread over them as real projects do.
const EVENT_NAMES: [&str; 20] = [
    "page_viewed",
    "product_viewed",
    "added_to_cart",
    "checkout_started",
    "order_completed",
    "email_opened",
    "email_clicked",
    "signed_up",
    "logged_in",
    "search",
    "video_played",
    "webinar_joined",
    "demo_requested",
    "trial_started",
    "plan_changed",
    "invited_user",
    "support_ticket",
    "review_posted",
    "app_opened",
    "feature_used",
];

/// Rounds of the audience benchmark.
const ROUNDS: usize = 3;

/// Ingest with events fully processed (stored, then scored and segmented) with `segments`
/// segments and `rules` scoring rules, against the same stream with none.
fn audience(args: &BenchArgs) -> Result<()> {
    let n = args.events.min(50_000);
    let users = args.users.unwrap_or(n / 10).max(1);
    let run = |with_audience: bool| -> Result<(f64, Vec<(String, f64)>)> {
        let dir = tempfile::tempdir()?;
        project(
            dir.path(),
            "workflow(\"bench\").manual();\nfn run(contact, trigger) {}\n",
        )?;
        if with_audience {
            std::fs::create_dir_all(dir.path().join("segments"))?;
            for i in 0..args.segments {
                let e = EVENT_NAMES[i % EVENT_NAMES.len()];
                let src = format!(
                    "segment(\"s{i}\");\nfn matches(contact) {{\n    count(\"{e}\", days({})) >= {}\n}}\n",
                    1 + i % 30,
                    1 + i % 4
                );
                std::fs::write(dir.path().join(format!("segments/s{i}.rhai")), src)?;
            }
            let mut scoring = String::from(
                "scoring().half_life(days(14)).stage(\"lead\", 20).stage(\"mql\", 50);\n",
            );
            for i in 0..args.rules {
                scoring.push_str(&format!(
                    "rule(\"r{i}\").on_event(\"{}\").points({}).cap(30, days(1));\n",
                    EVENT_NAMES[i % EVENT_NAMES.len()],
                    1 + i % 7
                ));
            }
            std::fs::write(dir.path().join("scoring.rhai"), scoring)?;
        }
        let d = start_daemon(dir.path(), false)?;
        let before = thread_cpu();
        let start = Instant::now();
        ingest_http(&d.url(), n, users, args.batch, args.clients, &EVENT_NAMES)?;
        d.shared.engine.barrier();
        let rate = n as f64 / start.elapsed().as_secs_f64();
        let after = thread_cpu();
        d.shutdown();
        let per_event: Vec<(String, f64)> = after
            .into_iter()
            .map(|(group, secs)| {
                let used = secs - before.get(&group).copied().unwrap_or(0.0);
                (group, used * 1e6 / n as f64)
            })
            .filter(|(_, us)| *us >= 0.05)
            .collect();
        Ok((rate, per_event))
    };
    // Three interleaved rounds, best of each: a shared machine's noise only ever slows a run.
    let (mut plain, mut with) = ((0f64, Vec::new()), (0f64, Vec::new()));
    for _ in 0..ROUNDS {
        let p = run(false)?;
        if p.0 > plain.0 {
            plain = p;
        }
        let w = run(true)?;
        if w.0 > with.0 {
            with = w;
        }
    }
    let ((plain, plain_cpu), (with, with_cpu)) = (plain, with);
    println!("processed events, no audience {plain:>11.0} events/s    ({n} events over {} names, {users} users; best of {ROUNDS} rounds)", EVENT_NAMES.len());
    println!(
        "processed events, audience   {with:>12.0} events/s    {} segments + {} rules; ratio {:.2} (target >= 0.50)",
        args.segments,
        args.rules,
        with / plain
    );
    if args.threads {
        for (name, rate, cpu) in [
            ("no audience", plain, plain_cpu),
            ("audience", with, with_cpu),
        ] {
            let mut cpu = cpu;
            cpu.sort_by(|a, b| b.1.total_cmp(&a.1));
            let total: f64 = cpu.iter().map(|(_, us)| us).sum();
            let groups: Vec<String> = cpu.iter().map(|(g, us)| format!("{g} {us:.1}")).collect();
            println!(
                "  cpu per event, {name:<12} {total:>5.1} µs in {:.1} µs of wall time: {}",
                1e6 / rate,
                groups.join(", ")
            );
        }
    }
    Ok(())
}

/// CPU seconds used so far by this process's live threads, by thread name without its
/// trailing number (`herald-worker-1` counts as `herald-worker`). Threads that have ended
/// (the load generator's, by the time this is read) are not included. Empty off Linux.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut groups = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return groups;
    };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let group = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches('-')
            .to_string();
        // The first field of schedstat is the time spent on a CPU, in nanoseconds.
        let ns: f64 = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        *groups.entry(group).or_default() += ns / 1e9;
    }
    groups
}

/// Backfill of a new segment over `n` stored contacts.
fn backfill(n: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    project(
        dir.path(),
        "workflow(\"bench\").manual();\nfn run(contact, trigger) {}\n",
    )?;
    {
        use herald_runtime::store::Store;
        let store =
            herald_runtime::store::SledStore::open(&dir.path().join(".herald/data"), 64 << 20)?;
        for i in 0..n {
            let mut c = herald_runtime::model::Contact::new(format!("c_{i:012x}"), 0);
            c.attributes.insert(
                "plan".into(),
                json!(if i % 3 == 0 { "pro" } else { "free" }),
            );
            store.put_contact(&c)?;
        }
        store.flush()?;
    }
    std::fs::create_dir_all(dir.path().join("segments"))?;
    std::fs::write(
        dir.path().join("segments/pro.rhai"),
        "segment(\"pro\");\nfn matches(contact) { contact.plan == \"pro\" }\n",
    )?;
    let start = Instant::now();
    let d = start_daemon(dir.path(), false)?;
    loop {
        let b = d.shared.engine.backfill.locked().clone();
        if !b.running && b.finished_at.is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("backfill did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let members = d.shared.engine.store.member_count("pro")?;
    println!(
        "segment backfill             {:>12.0} contacts/s  {n} contacts in {secs:.1} s, {members} members (target: 1M in < 60 s)",
        n as f64 / secs
    );
    d.shutdown();
    Ok(())
}

/// An HTTP/1.1 server on loopback that answers every request `200 {}` (keep-alive), standing in
/// for a webhook receiver.
/// A loopback HTTP receiver answering every request `{}` after `delay` (each answer written
/// at once, so no delayed-ACK stall adds to it).
fn http_sink(delay: Duration) -> Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut out) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                loop {
                    let mut len = 0usize;
                    let mut first = true;
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let l = line.trim_end();
                        if l.is_empty() && !first {
                            break;
                        }
                        first = false;
                        if let Some((k, v)) = l.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    if out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

/// Runs per second through the whole engine when the step's channel is the native webhook
/// channel, and when it is the webhook WebAssembly connector: against a receiver that answers
/// at once, and against one that answers after `latency_ms`, as a provider's API does. The
/// ratio of the two rates says how well the engine hides a provider's latency.
fn channels(
    n: usize,
    slow_n: usize,
    latency_ms: u64,
    concurrency: usize,
    batch: usize,
    clients: usize,
) -> Result<()> {
    let instant = http_sink(Duration::ZERO)?;
    let slow = http_sink(Duration::from_millis(latency_ms))?;
    std::env::set_var("HERALD_BENCH_SIGNING_KEY", "bench-signing-key");
    let table = |plugin: bool, sink: &str| {
        if plugin {
            format!(
                "[channels.hook]\nplugin = \"bundled:webhook\"\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = true\n\
                 concurrency = {concurrency}\n\
                 config = {{ url = \"{sink}/in\" }}\nsecrets = {{ WEBHOOK_SIGNING_KEY = \"env:HERALD_BENCH_SIGNING_KEY\" }}\n"
            )
        } else {
            format!("[channels.hook]\ntype = \"webhook\"\nurl = \"{sink}/in\"\nconcurrency = {concurrency}\n")
        }
    };
    let mut instant_rates = Vec::new();
    for (plugin, label) in [
        (false, "native webhook channel"),
        (true, "webhook plugin (wasm)"),
    ] {
        let rate = send_rate(&table(plugin, &instant), n, batch, clients, label)?;
        println!("sends through the engine      {rate:>11.0} runs/s      {label}, instant receiver ({n} runs, one HTTP call each)");
        instant_rates.push(rate);
    }
    println!("plugin / native throughput    {:>11.2}             (target: plugin within 2x, i.e. >= 0.50)", instant_rates[1] / instant_rates[0]);
    if slow_n > 0 {
        for (i, (plugin, label)) in [
            (false, "native webhook channel"),
            (true, "webhook plugin (wasm)"),
        ]
        .into_iter()
        .enumerate()
        {
            let rate = send_rate(&table(plugin, &slow), slow_n, batch, clients, label)?;
            println!(
                "sends through the engine      {rate:>11.0} runs/s      {label}, receiver answering after {latency_ms} ms ({slow_n} runs, concurrency {concurrency}); latency hiding {:.3} of the instant rate (target >= 0.8)",
                rate / instant_rates[i]
            );
        }
    }
    Ok(())
}

/// Broadcasts: one to every contact through the outbox channel, and one through the webhook
/// plugin to a loopback receiver that answers after the provider latency, each in its own
/// daemon process (so its resident memory can be read), next to the workflow activation rate.
fn broadcasts(args: &BenchArgs, activations: f64) -> Result<()> {
    let outbox = broadcast_rate(args, args.broadcast, "email", "", "outbox channel")?;
    println!(
        "broadcast, outbox channel    {:>12.0} recipients/s ({} recipients in {:.1} s; target: 1,000,000 in under 100 s); ratio to workflow activations: {:.2}",
        outbox.0,
        args.broadcast,
        args.broadcast as f64 / outbox.0,
        outbox.0 / activations
    );
    println!(
        "  resident memory            {:>12.0} MB before scheduling, {:.0} MB at most while sending (the snapshot is paged: it should not grow with the audience)",
        outbox.1, outbox.2
    );
    if args.broadcast_plugin > 0 {
        let sink = http_sink(Duration::from_millis(args.provider_latency_ms))?;
        let table = format!(
            "[channels.hook]\nplugin = \"bundled:webhook\"\nallowed_hosts = [\"127.0.0.1\"]\nallow_private = true\n\
             concurrency = {}\nconfig = {{ url = \"{sink}/in\" }}\nsecrets = {{ WEBHOOK_SIGNING_KEY = \"env:HERALD_BENCH_SIGNING_KEY\" }}\n",
            args.send_concurrency
        );
        std::env::set_var("HERALD_BENCH_SIGNING_KEY", "bench-signing-key");
        let plugin = broadcast_rate(
            args,
            args.broadcast_plugin,
            "hook",
            &table,
            "webhook plugin",
        )?;
        println!(
            "broadcast, webhook plugin    {:>12.0} recipients/s ({} recipients, receiver answering after {} ms, concurrency {}); ratio to the outbox rate: {:.2} (target >= 0.50)",
            plugin.0,
            args.broadcast_plugin,
            args.provider_latency_ms,
            args.send_concurrency,
            plugin.0 / outbox.0
        );
    }
    Ok(())
}

/// One broadcast to `n` contacts on `channel`: (recipients per second from schedule to the
/// last message sent, resident MB before scheduling, peak resident MB while sending).
fn broadcast_rate(
    args: &BenchArgs,
    n: usize,
    channel: &str,
    table: &str,
    label: &str,
) -> Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir()?;
    project(
        dir.path(),
        "workflow(\"bench\").manual();\nfn run(contact, trigger) {}\n",
    )?;
    let toml = std::fs::read_to_string(dir.path().join("herald.toml"))?;
    std::fs::write(
        dir.path().join("herald.toml"),
        format!("{toml}\n[topics.news]\nlabel = \"News\"\n\n{table}"),
    )?;
    std::fs::write(
        dir.path().join("templates/hello.liquid"),
        "---\ntopic: news\nsubject: Hi {{ contact.first_name }}\n---\nHello! {{ message.unsubscribe_url }}\n",
    )?;
    std::fs::create_dir_all(dir.path().join("broadcasts"))?;
    std::fs::write(
        dir.path().join("broadcasts/news.rhai"),
        format!(
            "broadcast(\"news\").channel(\"{channel}\").template(\"hello\").topic(\"news\");\n"
        ),
    )?;
    let d = Child::start(dir.path())?;
    identify_http(&d.url, n, args.batch, args.clients)?;
    // Every contact is stored before the snapshot starts.
    let metrics = |d: &Child| -> Result<String> {
        Ok(ureq::get(&format!("{}/metrics", d.url))
            .set("authorization", &format!("Bearer {TOKEN}"))
            .call()
            .map_err(|e| anyhow::anyhow!("metrics: {e}"))?
            .into_string()?)
    };
    let count = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let deadline = Instant::now() + Duration::from_secs(3600);
    while count(&metrics(&d)?, "herald_contacts ") < n as u64 {
        if Instant::now() > deadline {
            anyhow::bail!("{label}: the contacts were not all stored");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = d.rss_mb();
    let start = Instant::now();
    ureq::post(&format!("{}/v1/broadcasts/news/schedule", d.url))
        .set("authorization", &format!("Bearer {TOKEN}"))
        .send_string("{}")
        .map_err(|e| anyhow::anyhow!("schedule: {e}"))?;
    let sent = format!("herald_sends_total{{channel=\"{channel}\",outcome=\"sent\"}}");
    let mut peak = before;
    loop {
        peak = peak.max(d.rss_mb());
        let done = count(&metrics(&d)?, &sent);
        if done >= n as u64 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("{label}: only {done} of {n} messages were sent");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    d.stop()?;
    Ok((rate, before, peak))
}

/// Create `n` contacts with an email address through `/v1/batch` identify calls.
fn identify_http(url: &str, n: usize, batch: usize, clients: usize) -> Result<()> {
    let per_client = n.div_ceil(clients);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let url = format!("{url}/v1/batch");
            std::thread::spawn(move || -> Result<()> {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build();
                let lo = c * per_client;
                let hi = ((c + 1) * per_client).min(n);
                let mut i = lo;
                while i < hi {
                    let k = batch.min(hi - i);
                    let msgs: Vec<_> = (i..i + k)
                        .map(|j| {
                            json!({"type": "identify", "userId": format!("b{j}"),
                                   "messageId": format!("id-{j}"),
                                   "traits": {"email": format!("b{j}@example.com"), "first_name": "B"}})
                        })
                        .collect();
                    post(&agent, &url, &json!({ "batch": msgs }).to_string())?;
                    i += k;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    Ok(())
}

/// Runs per second of a one-send workflow through the channel `table` configures.
fn send_rate(table: &str, n: usize, batch: usize, clients: usize, label: &str) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    project(dir.path(), "workflow(\"bench\").on_event(\"go\").reentry(\"always\");\nfn run(contact, trigger) {\n    action(\"hook\", \"event\", #{ n: 1 });\n}\n")?;
    let toml = std::fs::read_to_string(dir.path().join("herald.toml"))?;
    std::fs::write(dir.path().join("herald.toml"), format!("{toml}\n{table}"))?;
    let d = start_daemon(dir.path(), false)?;
    let start = Instant::now();
    ingest_http(&d.url(), n, n, batch, clients, &["go"])?;
    wait_for_runs(&d, "bench", n, "completed")?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let sent = d.shared.engine.metrics.sends("hook", "sent");
    let window = d
        .shared
        .engine
        .delivery
        .status()
        .get("hook")
        .map_or(0.0, |c| c.mean_ambiguous_window_ms);
    d.shutdown();
    if sent as usize != n {
        anyhow::bail!("{label}: {sent} of {n} sends succeeded");
    }
    println!("  mean ambiguous window        {window:>11.1} ms        ({label}: from the dispatch mark, durable before the call, to the recorded result)");
    Ok(rate)
}

/// Events per second with analytics on and off (best of interleaved rounds each), in a stated
/// mix: per contact an `identify` and a `go` that starts a run sending one tracked HTML email;
/// then, a minute later on the test clock, half of the messages opened (their pixel fetched),
/// a fifth clicked (their link followed, one request each, as mail clients make them) and a
/// tenth of the contacts sending the goal `bought`.
fn analytics_overhead(n: usize, batch: usize, clients: usize) -> Result<()> {
    let workflow = "workflow(\"bench\").on_event(\"go\").goal(\"bought\", days(1));\nfn run(contact, trigger) {\n    send(\"email\", \"hello\");\n}\n";
    let (mut on, mut off) = (0f64, 0f64);
    let mut mix = (0, 0, 0, 0);
    for _ in 0..ROUNDS {
        for enabled in [true, false] {
            let dir = tempfile::tempdir()?;
            project(dir.path(), workflow)?;
            let toml = std::fs::read_to_string(dir.path().join("herald.toml"))?;
            std::fs::write(
                dir.path().join("herald.toml"),
                format!("{toml}\n[server]\npublic_url = \"{TRACKED}\"\n\n[analytics]\nenabled = {enabled}\n"),
            )?;
            std::fs::write(
                dir.path().join("templates/hello.html"),
                "<p>Hello {{ contact.first_name }}!</p>\n<p><a href=\"https://shop.example/spring\">See what is new</a></p>\n",
            )?;
            let d = RunningDaemon::start(Options {
                project: dir.path().into(),
                listen: Some("127.0.0.1:0".into()),
                data: None,
                test_clock: true,
                watch: false,
            })?;
            let base = d.url();
            let per_client = n.div_ceil(clients);
            let runs = per_client * clients;
            // Each client posts its contacts' `identify` and `go`, then the sends go out.
            let started = Instant::now();
            let posted = per_client_threads(clients, |c, agent| {
                let users: Vec<usize> = (0..per_client).collect();
                for chunk in users.chunks((batch / 2).max(1)) {
                    let msgs: Vec<_> = chunk
                        .iter()
                        .flat_map(|u| {
                            let user = format!("a{c}-{u}");
                            [
                                json!({"type": "identify", "userId": user, "traits": {"email": format!("{user}@example.com"), "first_name": "Ada"}}),
                                json!({"type": "track", "userId": user, "event": "go"}),
                            ]
                        })
                        .collect();
                    post_batch(agent, &base, msgs)?;
                }
                Ok(())
            });
            posted?;
            wait_for_runs(&d, "bench", runs, "completed")?;
            let sending = started.elapsed();
            // Untimed: a minute passes (engagement sooner than ten seconds after a send is a
            // machine's), and the mailboxes read their messages.
            ureq::post(&format!("{base}/v1/test/clock"))
                .set("authorization", &format!("Bearer {TOKEN}"))
                .send_json(json!({"advance_ms": 60_000}))
                .map_err(|e| anyhow::anyhow!("advancing the test clock: {e}"))?;
            let links = tracked_links(&dir.path().join("outbox.jsonl"))?;
            if links.len() != runs {
                anyhow::bail!(
                    "{} tracked messages in the outbox, {runs} expected",
                    links.len()
                );
            }
            let opens: Vec<String> = links.iter().step_by(2).map(|(o, _)| o.clone()).collect();
            let clicks: Vec<String> = links.iter().step_by(5).map(|(_, c)| c.clone()).collect();
            let buyers = (0..per_client).step_by(10).count() * clients;
            let started = Instant::now();
            let engaged = per_client_threads(clients, |c, agent| {
                let quiet = ureq::AgentBuilder::new()
                    .redirects(0)
                    .timeout(Duration::from_secs(60))
                    .build();
                for url in opens.iter().chain(&clicks).skip(c).step_by(clients) {
                    let path = url.strip_prefix(TRACKED).unwrap_or(url);
                    match quiet
                        .get(&format!("{base}{path}"))
                        .set("user-agent", MAIL_CLIENT)
                        .call()
                    {
                        // The pixel, or the click's redirect (not followed).
                        Ok(r) if matches!(r.status(), 200 | 302) => {}
                        other => anyhow::bail!("GET {path}: {:?}", other.map(|r| r.status())),
                    }
                }
                let users: Vec<usize> = (0..per_client).step_by(10).collect();
                for chunk in users.chunks(batch.max(1)) {
                    let msgs: Vec<_> = chunk
                        .iter()
                        .map(|u| json!({"type": "track", "userId": format!("a{c}-{u}"), "event": "bought", "properties": {"revenue": 9}}))
                        .collect();
                    post_batch(agent, &base, msgs)?;
                }
                Ok(())
            });
            engaged?;
            wait_for_runs(&d, "bench", buyers, "converted")?;
            if enabled {
                // Counted too: every send, open, click and conversion folded (`fold_all`
                // takes at most 50 pages at a time; a large backlog takes more calls).
                let store = d.shared.engine.store.as_ref();
                let want = (runs, opens.len(), clicks.len(), buyers);
                let mut counted = None;
                for _ in 0..1000 {
                    d.shared.engine.analytics.fold_all(store)?;
                    let totals = herald_runtime::analytics::numbers(
                        store,
                        "workflow:bench",
                        herald_runtime::analytics::Period::default(),
                    )?;
                    let count = |m: &str| totals.counts.get(m).copied().unwrap_or(0) as usize;
                    let now = (
                        count("sent"),
                        count("opened"),
                        count("clicked"),
                        count("converted"),
                    );
                    if now == want || counted == Some(now) {
                        counted = Some(now);
                        break;
                    }
                    counted = Some(now);
                }
                if counted != Some(want) {
                    anyhow::bail!(
                        "analytics counted (sent, opened, clicked, converted) {counted:?}, {want:?} happened"
                    );
                }
            }
            let events = 2 * runs + opens.len() + clicks.len() + buyers;
            mix = (runs, opens.len(), clicks.len(), buyers);
            let rate = events as f64 / (sending + started.elapsed()).as_secs_f64();
            if enabled {
                on = on.max(rate);
            } else {
                off = off.max(rate);
            }
            d.shutdown();
        }
    }
    let (runs, opens, clicks, buyers) = mix;
    println!("events with analytics on     {on:>12.0} events/s    (per round: {runs} identify and {runs} `go`, each run sending a tracked HTML email; {opens} opens and {clicks} clicks by their links; {buyers} goal events; counted and folded; best of {ROUNDS} rounds)");
    println!(
        "events with analytics off    {off:>12.0} events/s    ratio on/off: {:.2} (target >= 0.80)",
        on / off
    );
    Ok(())
}

/// The base of the tracked links in the analytics benchmark's messages (the daemon's public
/// URL; requests go to its listening address with the same path).
const TRACKED: &str = "http://herald.bench";

/// A mail client's user agent (not a proxy's or a scanner's).
const MAIL_CLIENT: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari/537.36";

/// Run `f(client index, agent)` on `clients` threads at once; the first error, if any.
fn per_client_threads(
    clients: usize,
    f: impl Fn(usize, &ureq::Agent) -> Result<()> + Sync,
) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let f = &f;
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(60))
                        .build();
                    f(c, &agent)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
            })
            .collect::<Result<Vec<()>>>()
            .map(|_| ())
    })
}

/// Each message's open pixel and click link, in the outbox's order.
fn tracked_links(outbox: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(outbox)?;
    let find = |html: &str, prefix: &str| -> Option<String> {
        let i = html.find(prefix)?;
        let rest = &html[i..];
        Some(rest[..rest.find('"')?].to_string())
    };
    text.lines()
        .map(|line| {
            let m: serde_json::Value = serde_json::from_str(line)?;
            let html = m["html"].as_str().unwrap_or_default();
            match (
                find(html, &format!("{TRACKED}/o/")),
                find(html, &format!("{TRACKED}/c/")),
            ) {
                (Some(o), Some(c)) => Ok((o, c)),
                _ => anyhow::bail!("a message without its pixel and tracked link: {html}"),
            }
        })
        .collect()
}

/// Fold `n` facts of one workflow (5 versions × 20 steps × 4 variants, spread over 90 days)
/// straight into the analytics counters of a fresh store, then time the named report query:
/// the workflow's hourly series of sends over the 90 days, and its per-step totals.
fn report_query(n: usize) -> Result<()> {
    use herald_runtime::analytics::{self, Counts, Fact, FoldedFact, Period, HOUR_MS};
    let dir = tempfile::tempdir()?;
    let store = herald_runtime::store::SledStore::open(dir.path(), 64 << 20)?;
    let end = 1_796_724_000_000i64;
    let span = 90 * 24 * HOUR_MS;
    let start_at = end - span;
    let mut shapes = Vec::new();
    for v in 0..5 {
        for step in 0..20 {
            for arm in 0..4 {
                shapes.push(FoldedFact {
                    seq: 0,
                    fact: Fact {
                        step: Some(step),
                        channel: Some("email".into()),
                        ..Default::default()
                    },
                    contact: String::new(),
                    workflow: "onboarding".into(),
                    version: format!("{v}{}", "a".repeat(63)),
                    broadcast: None,
                    phase: None,
                    holdout: false,
                    step_key: Some(format!("send/email/step{step}#1")),
                    from_key: Some(match step {
                        0 => "start".to_string(),
                        s => format!("send/email/step{}#1", s - 1),
                    }),
                    template: Some(format!("step{step}")),
                    domain: Some("example.com".into()),
                    variants: [("subject".to_string(), format!("arm{arm}"))].into(),
                    experiment: None,
                    goal_step: None,
                });
            }
        }
    }
    let kinds = [
        "sent",
        "sent",
        "sent",
        "sent",
        "sent",
        "opened",
        "opened",
        "clicked",
        "converted",
        "delivered",
    ];
    let fold = Instant::now();
    let mut counts = Counts::default();
    for i in 0..n {
        let f = &mut shapes[i % 400];
        f.fact.kind.clear();
        f.fact.kind.push_str(kinds[(i / 400) % kinds.len()]);
        f.fact.at = start_at + (i as i64).wrapping_mul(7_919_000) % span;
        counts.add(f, true);
        if counts.0.len() >= 1_000_000 {
            std::mem::take(&mut counts).apply(&store)?;
        }
    }
    counts.apply(&store)?;
    let folded = fold.elapsed().as_secs_f64();
    let period = Period {
        from: Some(start_at),
        to: Some(end),
    };
    let mut best = f64::MAX;
    let mut points = 0;
    for _ in 0..5 {
        let q = Instant::now();
        points = analytics::series(&store, "workflow:onboarding", "sent", period)?.len();
        best = best.min(q.elapsed().as_secs_f64() * 1000.0);
    }
    let mut steps_ms = f64::MAX;
    let mut steps = 0;
    for _ in 0..5 {
        let q = Instant::now();
        steps = analytics::numbers_by_scope(&store, "step:onboarding@", Period::default())?.len();
        steps_ms = steps_ms.min(q.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "analytics fold               {:>12.0} facts/s     ({n} facts of 5 versions x 20 steps x 4 variants over 90 days, fed straight into the fold)",
        n as f64 / folded
    );
    println!("report query, hourly series  {best:>12.1} ms          {points} hours of one workflow's sends over 90 days (target < 200 ms)");
    println!("report query, step totals    {steps_ms:>12.1} ms          {steps} steps (5 versions x 20) with every metric");
    Ok(())
}
