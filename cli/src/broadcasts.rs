//! `herald broadcast`: the broadcasts of the running daemon's project, their life cycle and
//! progress, through the management API.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::{call, Remote};

#[derive(Subcommand)]
pub enum BroadcastCommand {
    /// Every broadcast of the project and where it is (draft until scheduled).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// A scheduled broadcast's record and where each recipient's message is.
    Show {
        /// The broadcast's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start sending it: pinned to the file version the daemon serves now. Saving a broadcast
    /// file never sends it; this does.
    Schedule {
        /// The broadcast's name.
        name: String,
        /// RFC 3339 instant to start at (default: the file's `.send_at(...)`, else now).
        #[arg(long)]
        at: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop starting recipients until `resume`.
    Pause {
        /// The broadcast's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Go on where a paused broadcast stopped.
    Resume {
        /// The broadcast's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop for good: no further recipient is started.
    Cancel {
        /// The broadcast's name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Decide a testing broadcast's A/B test now and send the winner to the rest of the
    /// audience: the arm named, or the best by the declared metric so far.
    Decide {
        /// The broadcast's name.
        name: String,
        /// The winning arm (default: the declared metric decides).
        arm: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Send the current file version to a seed list now (kept out of its numbers).
    Test {
        /// The broadcast's name.
        name: String,
        /// Seed contacts (Herald id, userId or anonymousId), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Render what a contact would receive.
    Preview {
        /// The broadcast's name.
        name: String,
        /// Herald id, userId or anonymousId.
        #[arg(long)]
        contact: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub fn run(command: BroadcastCommand) -> Result<bool> {
    match command {
        BroadcastCommand::List { remote } => {
            let v = get(&remote, "/v1/broadcasts")?;
            println!(
                "{:<24} {:<13} {:>10} {:>10}  FILE",
                "NAME", "STATUS", "RECIPIENTS", "STARTED"
            );
            for b in v["broadcasts"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<13} {:>10} {:>10}  {}",
                    b["name"].as_str().unwrap_or(""),
                    b["status"].as_str().unwrap_or(""),
                    b["record"]["recipients"]
                        .as_u64()
                        .map_or("-".into(), |n| n.to_string()),
                    b["record"]["dispatched"]
                        .as_u64()
                        .map_or("-".into(), |n| n.to_string()),
                    b["path"].as_str().unwrap_or("")
                );
            }
            Ok(true)
        }
        BroadcastCommand::Show { name, remote } => {
            let v = get(&remote, &format!("/v1/broadcasts/{name}"))?;
            print_progress(&v);
            Ok(true)
        }
        BroadcastCommand::Schedule { name, at, remote } => {
            let body = match at {
                Some(at) => json!({ "at": at }),
                None => json!({}),
            };
            let v = post(&remote, &format!("/v1/broadcasts/{name}/schedule"), &body)?;
            println!(
                "broadcast {name} scheduled (version {}), starts at {}",
                short(&v["hash"]),
                v["start_at"]
            );
            Ok(true)
        }
        BroadcastCommand::Pause { name, remote } => control(&remote, &name, "pause"),
        BroadcastCommand::Resume { name, remote } => control(&remote, &name, "resume"),
        BroadcastCommand::Cancel { name, remote } => control(&remote, &name, "cancel"),
        BroadcastCommand::Decide { name, arm, remote } => {
            let body = match arm {
                Some(arm) => json!({ "arm": arm }),
                None => json!({}),
            };
            let v = post(&remote, &format!("/v1/broadcasts/{name}/decide"), &body)?;
            let d = &v["test"]["decision"];
            println!(
                "broadcast {name}: arm {} wins; sending it to the rest of the audience",
                d["winner"].as_str().unwrap_or("")
            );
            print_arms(&d["arms"], v["test"]["metric"].as_str().unwrap_or(""));
            Ok(true)
        }
        BroadcastCommand::Test { name, to, remote } => {
            let v = post(
                &remote,
                &format!("/v1/broadcasts/{name}/test"),
                &json!({ "contacts": to }),
            )?;
            for r in v["runs"].as_array().into_iter().flatten() {
                println!("started {}", r.as_str().unwrap_or(""));
            }
            Ok(true)
        }
        BroadcastCommand::Preview {
            name,
            contact,
            remote,
        } => {
            let v = get(
                &remote,
                &format!(
                    "/v1/broadcasts/{name}/preview?contact={}",
                    percent_encoding::utf8_percent_encode(
                        &contact,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ),
            )?;
            if let Some(arm) = v["arm"].as_str() {
                println!("Arm: {arm}");
            }
            if let Some(to) = v["to"].as_str() {
                println!("To: {to}");
            }
            if let Some(subject) = v["subject"].as_str() {
                println!("Subject: {subject}");
            }
            println!("\n{}", v["body"].as_str().unwrap_or_default());
            Ok(true)
        }
    }
}

fn print_progress(v: &Value) {
    let r = &v["record"];
    let p = &v["progress"];
    println!(
        "broadcast {}: {}",
        v["name"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or("")
    );
    println!("  version    {}", short(&r["hash"]));
    println!(
        "  audience   {}",
        r["audience"].as_str().unwrap_or("every contact")
    );
    println!("  recipients {}", p["recipients"]);
    println!("  started    {}", p["started"]);
    println!("  waiting    {}", p["waiting"]);
    println!("  queued     {}", p["queued"]);
    let deferred = p["deferred"].as_object().cloned().unwrap_or_default();
    let total: u64 = deferred.values().filter_map(Value::as_u64).sum();
    println!("  deferred   {total}");
    for (rule, n) in deferred {
        println!("    {n:>8}  {rule}");
    }
    println!("  sent       {}", p["sent"]);
    println!("  failed     {}", p["failed"]);
    println!("  ambiguous  {}", p["ambiguous"]);
    let skipped = p["skipped"].as_object().cloned().unwrap_or_default();
    let total: u64 = skipped.values().filter_map(Value::as_u64).sum();
    println!("  skipped    {total}");
    for (why, n) in skipped {
        println!("    {n:>8}  {why}");
    }
    if p["held"].as_u64().unwrap_or(0) > 0 {
        println!("  held       {} (waiting for the test's winner)", p["held"]);
    }
    let t = &r["test"];
    if t.is_object() {
        let metric = t["metric"].as_str().unwrap_or("");
        println!(
            "  A/B test   {}% of the audience, decided by {metric}",
            t["share"]
        );
        match t["decision"].as_object() {
            Some(d) => {
                println!(
                    "  winner     {} (decided by {})",
                    d["winner"].as_str().unwrap_or(""),
                    d["by"].as_str().unwrap_or("")
                );
                print_arms(&d["arms"], metric);
            }
            None => {
                if let Some(due) = t["testers_started_at"].as_i64() {
                    let after = t["after_ms"].as_i64().unwrap_or(0);
                    println!("  decided at {} (ms since the epoch)", due + after);
                }
                print_arms(&v["test_results"], metric);
            }
        }
    }
}

/// Each arm's numbers of an A/B test.
fn print_arms(arms: &Value, metric: &str) {
    let Some(arms) = arms.as_object() else { return };
    println!(
        "    {:<12} {:>8} {:>8} {:>9} {:>7}",
        "ARM",
        "TESTERS",
        "SENT",
        metric.to_uppercase(),
        "RATE"
    );
    for (arm, a) in arms {
        println!(
            "    {:<12} {:>8} {:>8} {:>9} {:>6.1}%",
            arm,
            a["testers"],
            a["sent"],
            a["reached"],
            a["rate"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
}

fn short(v: &Value) -> String {
    v.as_str().unwrap_or("").chars().take(12).collect()
}

fn control(remote: &Remote, name: &str, action: &str) -> Result<bool> {
    let v = post(
        remote,
        &format!("/v1/broadcasts/{name}/{action}"),
        &json!({}),
    )?;
    println!("broadcast {name}: {}", v["status"].as_str().unwrap_or(""));
    Ok(true)
}

fn get(remote: &Remote, path: &str) -> Result<Value> {
    let (url, token) = remote.resolve()?;
    call(
        ureq::get(&format!("{url}{path}")).set("authorization", &format!("Bearer {token}")),
        None,
    )
}

fn post(remote: &Remote, path: &str, body: &Value) -> Result<Value> {
    let (url, token) = remote.resolve()?;
    call(
        ureq::post(&format!("{url}{path}")).set("authorization", &format!("Bearer {token}")),
        Some(("application/json", body.to_string().as_bytes())),
    )
}
