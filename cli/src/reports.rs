//! `herald report` and `herald analytics`: the running daemon's numbers (from its analytics
//! counters) as a table, JSON or CSV; the facts export; the rebuild check.

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::{call, Remote};

#[derive(Subcommand)]
pub enum ReportCommand {
    /// A workflow: totals, per script version, per step (stable keys), per variant, and each
    /// version's funnel.
    Workflow {
        /// The workflow's name.
        name: String,
        #[command(flatten)]
        opts: ReportOpts,
    },
    /// A broadcast: totals and per arm.
    Broadcast {
        /// The broadcast's name.
        name: String,
        #[command(flatten)]
        opts: ReportOpts,
    },
    /// A broadcast's arms, or a workflow's `variant(...)`, as an experiment: each arm's rate
    /// with its 95 % interval, the probability to beat the control, and the sequential
    /// test's always-valid p-value and decision.
    Experiment {
        /// The broadcast (or, with `--variant`, the workflow).
        name: String,
        /// The workflow's experiment: the name given to `variant(...)`.
        #[arg(long)]
        variant: Option<String>,
        /// `opened`, `clicked` or `converted` (default: a tested broadcast's own metric, else
        /// `clicked`).
        #[arg(long)]
        metric: Option<String>,
        /// The control arm (default: the first by name).
        #[arg(long)]
        control: Option<String>,
        #[command(flatten)]
        opts: ReportOpts,
    },
    /// Every channel.
    Channels {
        #[command(flatten)]
        opts: ReportOpts,
    },
    /// Deliverability by recipient domain.
    Domains {
        #[command(flatten)]
        opts: ReportOpts,
    },
    /// Every template.
    Templates {
        #[command(flatten)]
        opts: ReportOpts,
    },
    /// A segment's size at the end of each day, with the day's entries and exits.
    Segment {
        /// The segment's name.
        name: String,
        #[command(flatten)]
        opts: ReportOpts,
    },
}

/// How a report is printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
    /// One row per line, a header first.
    Csv,
}

#[derive(Args)]
pub struct ReportOpts {
    /// Start of the period (RFC 3339 or ms since the epoch); default: everything.
    #[arg(long)]
    from: Option<String>,
    /// End of the period (exclusive).
    #[arg(long)]
    to: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Same as `--format json`.
    #[arg(long)]
    json: bool,
    /// Same as `--format csv`.
    #[arg(long)]
    csv: bool,
    #[command(flatten)]
    remote: Remote,
}

impl ReportOpts {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else if self.csv {
            Format::Csv
        } else {
            self.format
        }
    }

    fn query(&self) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut q = Vec::new();
        if let Some(f) = &self.from {
            q.push(format!("from={}", enc(f)));
        }
        if let Some(t) = &self.to {
            q.push(format!("to={}", enc(t)));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

#[derive(Subcommand)]
pub enum AnalyticsCommand {
    /// Derive every fact again from the stored journals, timelines and runs and compare
    /// the fold with the live counters (exit status 1 when they differ).
    Rebuild {
        /// Replace the live counters with the rebuilt ones.
        #[arg(long)]
        write: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print message and engagement facts as NDJSON, from a cursor (for warehouses).
    Export {
        /// The cursor the last export printed on stderr (0: from the start).
        #[arg(long, default_value = "0")]
        after: String,
        /// At most this many facts.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
}

/// The columns of a table or CSV report.
const COLUMNS: [(&str, &str); 12] = [
    ("sent", "count"),
    ("skipped", "count"),
    ("failed", "count"),
    ("delivered", "count"),
    ("opened", "count"),
    ("clicked", "count"),
    ("bounced", "count"),
    ("complained", "count"),
    ("unsubscribed", "count"),
    ("converted", "count"),
    ("open_rate", "rate"),
    ("click_rate", "rate"),
];

/// Rows of a report: (section, key, numbers).
fn rows(v: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    if v["totals"].is_object() {
        out.push(("total".into(), String::new(), v["totals"].clone()));
    }
    for section in ["versions", "steps", "variants", "arms", "rows"] {
        for (k, n) in v[section].as_object().into_iter().flatten() {
            let name = match section {
                "versions" => "version",
                "steps" => "step",
                "variants" => "variant",
                "arms" => "arm",
                _ => "",
            };
            out.push((name.to_string(), k.clone(), n.clone()));
        }
    }
    out
}

fn cell(n: &Value, (name, kind): (&str, &str)) -> String {
    match kind {
        "rate" => format!("{:.1}%", n["rates"][name].as_f64().unwrap_or(0.0) * 100.0),
        _ => n["counts"][name].as_u64().unwrap_or(0).to_string(),
    }
}

fn print(v: &Value, format: Format) {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Csv => {
            let mut header = vec!["section".to_string(), "key".to_string()];
            header.extend(COLUMNS.iter().map(|(n, _)| n.to_string()));
            println!("{}", header.join(","));
            for (section, key, n) in rows(v) {
                let mut line = vec![section, csv_field(&key)];
                for c in COLUMNS {
                    line.push(match c.1 {
                        "rate" => format!("{:.4}", n["rates"][c.0].as_f64().unwrap_or(0.0)),
                        _ => cell(&n, c),
                    });
                }
                println!("{}", line.join(","));
            }
        }
        Format::Table => {
            let rows = rows(v);
            let width = rows
                .iter()
                .map(|(s, k, _)| s.len() + k.len() + 1)
                .max()
                .unwrap_or(5)
                .max(5);
            let mut head = format!("{:<width$}", "");
            for (name, _) in COLUMNS {
                head.push_str(&format!(" {:>12}", name.to_uppercase()));
            }
            println!("{head}");
            for (section, key, n) in rows {
                let label = if key.is_empty() {
                    section
                } else {
                    format!("{section} {key}")
                };
                let mut line = format!("{label:<width$}");
                for c in COLUMNS {
                    line.push_str(&format!(" {:>12}", cell(&n, c)));
                }
                println!("{line}");
            }
        }
    }
}

/// A segment's sizes per day.
fn print_sizes(v: &Value, format: Format) {
    let days = v["days"].as_array().cloned().unwrap_or_default();
    let n = |d: &Value, k: &str| d[k].as_i64().unwrap_or(0);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Csv => {
            println!("day,size,entered,exited");
            for d in &days {
                let day = d["day"].as_str().unwrap_or("");
                let (size, entered, exited) = (n(d, "size"), n(d, "entered"), n(d, "exited"));
                println!("{day},{size},{entered},{exited}");
            }
        }
        Format::Table => {
            println!(
                "segment {} ({} members now; days in {})",
                v["segment"].as_str().unwrap_or(""),
                v["members"],
                v["timezone"].as_str().unwrap_or("UTC")
            );
            println!(
                "{:<10} {:>10} {:>10} {:>10}",
                "DAY", "SIZE", "ENTERED", "EXITED"
            );
            for d in &days {
                println!(
                    "{:<10} {:>10} {:>10} {:>10}",
                    d["day"].as_str().unwrap_or(""),
                    n(d, "size"),
                    n(d, "entered"),
                    n(d, "exited")
                );
            }
        }
    }
}

/// A workflow report's funnels, one table per script version.
fn print_funnel(v: &Value) {
    for (version, steps) in v["funnel"].as_object().into_iter().flatten() {
        let steps = steps.as_array().cloned().unwrap_or_default();
        if steps.is_empty() {
            continue;
        }
        let width = steps
            .iter()
            .filter_map(|s| s["key"].as_str())
            .map(str::len)
            .max()
            .unwrap_or(4)
            .max(4);
        println!();
        println!("funnel of version {version}");
        println!(
            "{:<width$} {:>8} {:>8} {:>9} {:>6}  {:<24} NEXT",
            "STEP", "REACHED", "SENT", "TIMED OUT", "HERE", "ENDED HERE"
        );
        let pairs = |o: &Value| {
            o.as_object()
                .into_iter()
                .flatten()
                .map(|(k, n)| format!("{k} {}", n.as_u64().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for s in steps {
            let n = |k: &str| s[k].as_u64().unwrap_or(0);
            println!(
                "{:<width$} {:>8} {:>8} {:>9} {:>6}  {:<24} {}",
                s["key"].as_str().unwrap_or(""),
                n("reached"),
                n("sent"),
                n("timed_out"),
                n("here"),
                pairs(&s["ended"]),
                pairs(&s["next"]),
            );
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn get(remote: &Remote, path: &str) -> Result<Value> {
    let (url, token) = remote.resolve()?;
    call(
        ureq::get(&format!("{url}{path}")).set("authorization", &format!("Bearer {token}")),
        None,
    )
}

fn name_path(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn print_experiment(v: &Value, format: Format) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let a = &v["analysis"];
    let csv = format == Format::Csv;
    if csv {
        println!(
            "arm,sent,reached,rate,interval_low,interval_high,probability_to_beat_control,p_value"
        );
    } else {
        println!(
            "experiment by {} (control {}, alpha {})",
            v["metric"].as_str().unwrap_or(""),
            a["control"].as_str().unwrap_or(""),
            a["alpha"]
        );
        println!(
            "{:<12} {:>8} {:>8} {:>8} {:>17} {:>9} {:>9}",
            "ARM", "SENT", "REACHED", "RATE", "95% INTERVAL", "P(BEAT)", "P-VALUE"
        );
    }
    let pct = |x: &Value| {
        x.as_f64()
            .map_or("-".to_string(), |f| format!("{:.1}%", f * 100.0))
    };
    for arm in a["arms"].as_array().into_iter().flatten() {
        let i = &arm["interval"];
        if csv {
            println!(
                "{},{},{},{},{},{},{},{}",
                csv_field(arm["arm"].as_str().unwrap_or("")),
                arm["sent"],
                arm["reached"],
                arm["rate"],
                i[0],
                i[1],
                arm["probability_to_beat_control"],
                arm["p_value"]
            );
        } else {
            println!(
                "{:<12} {:>8} {:>8} {:>8} {:>17} {:>9} {:>9}",
                arm["arm"].as_str().unwrap_or(""),
                arm["sent"],
                arm["reached"],
                pct(&arm["rate"]),
                format!("{} – {}", pct(&i[0]), pct(&i[1])),
                pct(&arm["probability_to_beat_control"]),
                arm["p_value"]
                    .as_f64()
                    .map_or("-".to_string(), |p| format!("{p:.4}"))
            );
        }
    }
    if !csv {
        match a["winner"].as_str() {
            Some(w) => println!("the sequential test picks arm {w}"),
            None => println!("undecided: no arm is ahead of every other at this level yet"),
        }
        if let Some(w) = v["decision"]["winner"].as_str() {
            println!(
                "the broadcast sent arm {w} to the rest (decided by {})",
                v["decision"]["by"].as_str().unwrap_or("")
            );
        }
    }
}

pub fn report(command: ReportCommand) -> Result<bool> {
    if let ReportCommand::Experiment {
        name,
        variant,
        metric,
        control,
        opts,
    } = &command
    {
        let mut q = Vec::new();
        for (k, v) in [("metric", metric), ("control", control)] {
            if let Some(v) = v {
                q.push(format!("{k}={}", name_path(v)));
            }
        }
        let path = match variant {
            Some(exp) => format!(
                "/v1/reports/workflows/{}/experiments/{}",
                name_path(name),
                name_path(exp)
            ),
            None => format!("/v1/reports/broadcasts/{}/experiment", name_path(name)),
        };
        let v = get(&opts.remote, &format!("{path}?{}", q.join("&")))?;
        print_experiment(&v, opts.format());
        return Ok(true);
    }
    let (path, opts) = match &command {
        ReportCommand::Workflow { name, opts } => {
            (format!("/v1/reports/workflows/{}", name_path(name)), opts)
        }
        ReportCommand::Broadcast { name, opts } => {
            (format!("/v1/reports/broadcasts/{}", name_path(name)), opts)
        }
        ReportCommand::Channels { opts } => ("/v1/reports/channels".to_string(), opts),
        ReportCommand::Domains { opts } => ("/v1/reports/domains".to_string(), opts),
        ReportCommand::Templates { opts } => ("/v1/reports/templates".to_string(), opts),
        ReportCommand::Segment { name, opts } => {
            let v = get(
                &opts.remote,
                &format!("/v1/reports/segments/{}{}", name_path(name), opts.query()),
            )?;
            print_sizes(&v, opts.format());
            return Ok(true);
        }
        ReportCommand::Experiment { .. } => unreachable!("answered above"),
    };
    let v = get(&opts.remote, &format!("{path}{}", opts.query()))?;
    print(&v, opts.format());
    if opts.format() == Format::Table {
        print_funnel(&v);
    }
    Ok(true)
}

pub fn analytics(command: AnalyticsCommand) -> Result<bool> {
    match command {
        AnalyticsCommand::Rebuild { write, remote } => {
            let (url, token) = remote.resolve()?;
            let v = call(
                ureq::post(&format!("{url}/v1/analytics/rebuild"))
                    .set("authorization", &format!("Bearer {token}")),
                Some((
                    "application/json",
                    json!({ "write": write }).to_string().as_bytes(),
                )),
            )?;
            let differences = v["differences"].as_array().cloned().unwrap_or_default();
            println!(
                "{} facts rebuilt from the stored records into {} counters",
                v["facts"], v["counters"]
            );
            if differences.is_empty() {
                println!("the live counters equal the rebuilt ones");
                return Ok(true);
            }
            println!("{} counters differ:", differences.len());
            for d in differences.iter().take(50) {
                println!(
                    "  {}: live {}, rebuilt {}",
                    d["counter"].as_str().unwrap_or(""),
                    d["live"],
                    d["rebuilt"]
                );
            }
            if write {
                println!("the live counters are now the rebuilt ones");
                return Ok(true);
            }
            Ok(false)
        }
        AnalyticsCommand::Export {
            after,
            limit,
            remote,
        } => {
            let (url, token) = remote.resolve()?;
            let response = ureq::get(&format!(
                "{url}/v1/export/facts?after={}&limit={limit}",
                name_path(&after)
            ))
            .set("authorization", &format!("Bearer {token}"))
            .call();
            match response {
                Ok(r) => {
                    let next = r.header("x-herald-next-cursor").unwrap_or("").to_string();
                    // Streamed: an export can be larger than a string read is allowed to be.
                    std::io::copy(&mut r.into_reader(), &mut std::io::stdout().lock())?;
                    eprintln!("next cursor: {next}");
                    Ok(true)
                }
                Err(ureq::Error::Status(code, r)) => {
                    let v: Value = r.into_json().unwrap_or_default();
                    bail!(
                        "HTTP {code}: {}",
                        v["error"]["message"].as_str().unwrap_or("request failed")
                    )
                }
                Err(e) => bail!("cannot reach the daemon: {e} (is `herald run` running?)"),
            }
        }
    }
}
