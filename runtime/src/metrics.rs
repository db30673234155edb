//! Counters and gauges, exposed at `GET /metrics` in the Prometheus text format.

use crate::sync::LockExt as _;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::model::RunStatus;

const BUCKETS_MS: [f64; 10] = [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 500.0, 2000.0];

/// Every metric of the daemon.
#[derive(Default)]
pub struct Metrics {
    events: Mutex<BTreeMap<String, u64>>,
    rejected: Mutex<BTreeMap<String, u64>>,
    duplicates: AtomicU64,
    worker_panics: AtomicU64,
    runs_by_status: Mutex<BTreeMap<&'static str, i64>>,
    runs_started: Mutex<BTreeMap<String, u64>>,
    steps: Mutex<BTreeMap<String, u64>>,
    sends: Mutex<BTreeMap<(String, String), u64>>,
    conversions: Mutex<BTreeMap<String, u64>>,
    activation_buckets: [AtomicU64; BUCKETS_MS.len()],
    activation_count: AtomicU64,
    activation_sum_us: AtomicU64,
    reloads: Mutex<BTreeMap<&'static str, u64>>,
    rate_limited: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K, by: u64) {
    *m.locked().entry(k).or_default() += by;
}

impl Metrics {
    /// An accepted event of a Segment type.
    pub fn event(&self, kind: &str) {
        bump(&self.events, kind.to_string(), 1);
    }
    /// A rejected ingest request.
    pub fn rejected(&self, reason: &str) {
        bump(&self.rejected, reason.to_string(), 1);
    }
    /// An ingest request refused with 429 by the rate limit `limit` (`client_key`,
    /// `client_address`, …).
    pub fn rate_limited(&self, limit: &'static str) {
        bump(&self.rate_limited, limit, 1);
    }
    /// A retried message that was already accepted.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    /// A worker job that panicked (a bug in Herald; the worker went on).
    pub fn worker_panic(&self) {
        self.worker_panics.fetch_add(1, Ordering::Relaxed);
    }
    /// Worker jobs that panicked so far.
    pub fn worker_panics(&self) -> u64 {
        self.worker_panics.load(Ordering::Relaxed)
    }
    /// A run moved between statuses (`from` is `None` for a new run).
    pub fn run_status(&self, from: Option<RunStatus>, to: RunStatus) {
        let mut m = self.runs_by_status.locked();
        if let Some(f) = from {
            *m.entry(f.as_str()).or_default() -= 1;
        }
        *m.entry(to.as_str()).or_default() += 1;
    }
    /// Replace the run gauges (after counting stored runs at start-up).
    pub fn set_run_counts(&self, counts: BTreeMap<&'static str, i64>) {
        let mut m = self.runs_by_status.locked();
        for (k, v) in counts {
            *m.entry(k).or_default() += v;
        }
    }
    /// Runs by status as the gauges hold them.
    pub fn run_counts(&self) -> BTreeMap<String, i64> {
        let m = self.runs_by_status.locked();
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
    /// A run started.
    pub fn run_started(&self, workflow: &str) {
        bump(&self.runs_started, workflow.to_string(), 1);
    }
    /// A journal step was recorded.
    pub fn step(&self, kind: &str) {
        bump(&self.steps, kind.to_string(), 1);
    }
    /// A channel call finished with `outcome`.
    pub fn send(&self, channel: &str, outcome: &str) {
        bump(&self.sends, (channel.to_string(), outcome.to_string()), 1);
    }
    /// A goal was reached.
    pub fn conversion(&self, workflow: &str) {
        bump(&self.conversions, workflow.to_string(), 1);
    }
    /// A project reload succeeded or failed.
    pub fn reload(&self, ok: bool) {
        bump(&self.reloads, if ok { "ok" } else { "error" }, 1);
    }
    /// One activation took `us` microseconds.
    pub fn activation(&self, us: u64) {
        let ms = us as f64 / 1000.0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.activation_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.activation_count.fetch_add(1, Ordering::Relaxed);
        self.activation_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Sends so far through `channel` with `outcome`.
    pub fn sends(&self, channel: &str, outcome: &str) -> u64 {
        self.sends
            .locked()
            .get(&(channel.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Prometheus text exposition.
    pub fn render(&self, extra_gauges: &[(&str, &str, f64)]) -> String {
        let mut o = String::new();
        let line = |o: &mut String, s: String| {
            o.push_str(&s);
            o.push('\n');
        };
        line(&mut o, "# HELP herald_events_ingested_total Events accepted, by Segment type.\n# TYPE herald_events_ingested_total counter".into());
        for (k, v) in self.events.locked().iter() {
            line(
                &mut o,
                format!("herald_events_ingested_total{{type=\"{k}\"}} {v}"),
            );
        }
        line(&mut o, "# HELP herald_ingest_rejected_total Ingest requests refused, by reason.\n# TYPE herald_ingest_rejected_total counter".into());
        for (k, v) in self.rejected.locked().iter() {
            line(
                &mut o,
                format!("herald_ingest_rejected_total{{reason=\"{k}\"}} {v}"),
            );
        }
        line(&mut o, "# HELP herald_ingest_rate_limited_total Ingest requests refused with 429, by the rate limit they were over.\n# TYPE herald_ingest_rate_limited_total counter".into());
        for (k, v) in self.rate_limited.locked().iter() {
            line(
                &mut o,
                format!("herald_ingest_rate_limited_total{{limit=\"{k}\"}} {v}"),
            );
        }
        line(&mut o, "# HELP herald_ingest_duplicates_total Messages already accepted under the same messageId.\n# TYPE herald_ingest_duplicates_total counter".into());
        line(
            &mut o,
            format!(
                "herald_ingest_duplicates_total {}",
                self.duplicates.load(Ordering::Relaxed)
            ),
        );
        line(&mut o, "# HELP herald_worker_panics_total Worker jobs that panicked (a bug; the job's event stays queued for the next start).\n# TYPE herald_worker_panics_total counter".into());
        line(
            &mut o,
            format!("herald_worker_panics_total {}", self.worker_panics()),
        );
        line(
            &mut o,
            "# HELP herald_runs Runs by status.\n# TYPE herald_runs gauge".into(),
        );
        let runs = self.runs_by_status.locked();
        for s in RunStatus::ALL {
            line(
                &mut o,
                format!(
                    "herald_runs{{status=\"{}\"}} {}",
                    s.as_str(),
                    runs.get(s.as_str()).copied().unwrap_or(0)
                ),
            );
        }
        drop(runs);
        line(&mut o, "# HELP herald_runs_started_total Runs started, by workflow.\n# TYPE herald_runs_started_total counter".into());
        for (k, v) in self.runs_started.locked().iter() {
            line(
                &mut o,
                format!("herald_runs_started_total{{workflow=\"{k}\"}} {v}"),
            );
        }
        line(&mut o, "# HELP herald_steps_total Journal steps recorded, by kind.\n# TYPE herald_steps_total counter".into());
        for (k, v) in self.steps.locked().iter() {
            line(&mut o, format!("herald_steps_total{{kind=\"{k}\"}} {v}"));
        }
        line(&mut o, "# HELP herald_sends_total Channel calls, by channel and outcome.\n# TYPE herald_sends_total counter".into());
        for ((c, r), v) in self.sends.locked().iter() {
            line(
                &mut o,
                format!("herald_sends_total{{channel=\"{c}\",outcome=\"{r}\"}} {v}"),
            );
        }
        line(&mut o, "# HELP herald_conversions_total Goals reached, by workflow.\n# TYPE herald_conversions_total counter".into());
        for (k, v) in self.conversions.locked().iter() {
            line(
                &mut o,
                format!("herald_conversions_total{{workflow=\"{k}\"}} {v}"),
            );
        }
        line(&mut o, "# HELP herald_reloads_total Project reloads, by result.\n# TYPE herald_reloads_total counter".into());
        for (k, v) in self.reloads.locked().iter() {
            line(
                &mut o,
                format!("herald_reloads_total{{result=\"{k}\"}} {v}"),
            );
        }
        line(&mut o, "# HELP herald_activation_seconds Time to run one activation.\n# TYPE herald_activation_seconds histogram".into());
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            line(
                &mut o,
                format!(
                    "herald_activation_seconds_bucket{{le=\"{}\"}} {}",
                    b / 1000.0,
                    self.activation_buckets[i].load(Ordering::Relaxed)
                ),
            );
        }
        let count = self.activation_count.load(Ordering::Relaxed);
        line(
            &mut o,
            format!("herald_activation_seconds_bucket{{le=\"+Inf\"}} {count}"),
        );
        line(
            &mut o,
            format!(
                "herald_activation_seconds_sum {}",
                self.activation_sum_us.load(Ordering::Relaxed) as f64 / 1e6
            ),
        );
        line(&mut o, format!("herald_activation_seconds_count {count}"));
        for (name, help, v) in extra_gauges {
            line(
                &mut o,
                format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}"),
            );
        }
        o
    }
}
