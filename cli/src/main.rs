//! `herald`: the daemon and its command-line tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use herald_runtime::daemon::{Options, RunningDaemon};
use herald_runtime::project::Project;

/// mimalloc returns freed memory to the system and fragments less than the system allocator
/// under the daemon's many-threaded churn; it keeps resident memory close to live data.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's option enumeration.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

mod authoring;
mod bench;
mod broadcasts;
mod reports;

/// `herald --version`: the release, the channel plugin API it hosts, and the connectors it
/// carries.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let bundled = match herald_bundled::unavailable() {
        None => format!("{} bundled connectors", herald_bundled::all().len()),
        Some(reason) => format!("no bundled connectors: {reason}"),
    };
    format!(
        "{} (plugin API herald:channel@{}; {bundled})",
        env!("CARGO_PKG_VERSION"),
        herald_plugin_host::API_VERSION
    )
});

#[derive(Parser)]
#[command(
    name = "herald",
    version = VERSION.as_str(),
    about = "Marketing automation runtime: ingest, segments, durable workflows."
)]
struct Cli {
    /// Log line format on stderr: `text` for people, `json` (one object per line with
    /// `timestamp`, `level`, `target` and `message`) for log collectors.
    #[arg(long, global = true, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How `herald check` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CheckFormat {
    /// Rendered for people.
    Text,
    /// Machine-readable JSON.
    Json,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| "info,sled=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon for a project.
    Run {
        /// Project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Listen address (default from herald.toml, else 127.0.0.1:7700).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory (default DIR/.herald/data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Use a manual clock, moved with POST /v1/test/clock (journey tests, demos).
        #[arg(long)]
        test_clock: bool,
        /// Do not watch the project for changes (reload with POST /v1/reload instead).
        #[arg(long)]
        no_watch: bool,
    },
    /// Check a project's scripts, templates and settings without running it.
    Check {
        /// Project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// `text` (rendered like compiler errors, on stderr) or `json` (one object on stdout:
        /// every finding with its file, code, severity, message and 1-based position, plus
        /// the errors of loading plugin components).
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
    },
    /// Create a new project from the quickstart.
    Init {
        /// Directory to create.
        dir: PathBuf,
    },
    /// Measure ingest, activation and storage throughput on this machine.
    Bench(bench::BenchArgs),
    /// Serve the language server over stdio (editors start this).
    Lsp,
    /// Work with channel plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Render a template for a real contact through the running daemon.
    Preview {
        /// Template name (templates/NAME.liquid or NAME.mjml).
        template: String,
        /// Contact: Herald id, userId or anonymousId.
        #[arg(long)]
        contact: String,
        /// Channel whose template variant and address to use.
        #[arg(long, default_value = "email")]
        channel: String,
        /// Extra `vars`, as JSON.
        #[arg(long, default_value = "{}")]
        vars: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Broadcasts of the running daemon's project: schedule, pause, resume, cancel, test
    /// send, preview, progress.
    Broadcast {
        #[command(subcommand)]
        command: broadcasts::BroadcastCommand,
    },
    /// Numbers of the running daemon: a workflow's or a broadcast's sends, opens, clicks,
    /// bounces, complaints, unsubscribes and conversions, and their rates.
    Report {
        #[command(subcommand)]
        command: reports::ReportCommand,
    },
    /// The analytics behind the reports: rebuild check, facts export.
    Analytics {
        #[command(subcommand)]
        command: reports::AnalyticsCommand,
    },
    /// Why a contact got (or did not get) a message: the decision trace, oldest first.
    Why {
        /// Herald id, userId or anonymousId.
        contact: String,
        /// Print the trace as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Work with contacts in the running daemon.
    Contact {
        #[command(subcommand)]
        command: ContactCommand,
    },
    /// Import contacts from a CSV file into the running daemon.
    Import {
        /// The CSV file (first row: column names).
        file: PathBuf,
        /// Column holding the user id (default: user_id, id or email).
        #[arg(long)]
        id: Option<String>,
        /// Column types, e.g. `age:int,vip:bool,signed_up:date`.
        #[arg(long)]
        types: Option<String>,
        /// Column renames, e.g. `First Name:first_name,E-mail:email`.
        #[arg(long)]
        map: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum ContactCommand {
    /// Erase a contact and everything Herald holds about it (profile, events, runs,
    /// identities), keeping only a hashed entry so the person is not taken in again (GDPR's
    /// right to erasure).
    Delete {
        /// Herald id, userId or anonymousId.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Show what a component exports and imports, its describe() answer and API version, or
    /// why it is not a valid Herald plugin.
    Inspect {
        /// A plugin folder (what `herald.toml` points at) or its `.wasm` component; the
        /// `plugin.toml` beside it is required and checked as the daemon checks it.
        file: PathBuf,
    },
    /// Build a plugin folder with its language's tool (cargo, componentize-py, npm), write
    /// the component's `sha256`, `api_version`, `config_schema` and `contact_fields` (from its
    /// `describe()`) into `plugin.toml`, keeping the rest of the file, then inspect the folder.
    Pack {
        /// The plugin folder: `plugin.toml` and the component it names.
        dir: PathBuf,
        /// Do not run the build tool; pack the component as it is.
        #[arg(long)]
        no_build: bool,
    },
    /// Write a working connector skeleton: source, manifest, the WIT contract, cases for
    /// `herald plugin test` and (for Rust) the guest SDK.
    New {
        /// The plugin id: lower-case letters, digits and dashes. Also the folder's name.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: authoring::Lang,
        /// Where to create the folder.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Load a plugin folder as the daemon would and run its `test.toml` cases: sends against
    /// a loopback receiver standing in for the provider, and recorded callbacks.
    Test {
        /// The plugin folder.
        dir: PathBuf,
        /// The cases to run (default: `test.toml` in the folder).
        #[arg(long)]
        cases: Option<PathBuf>,
    },
}

/// Where the running daemon is.
#[derive(clap::Args)]
struct Remote {
    /// Project directory (its herald.toml gives the address and the admin token).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Daemon URL (default: from herald.toml).
    #[arg(long)]
    url: Option<String>,
}

impl Remote {
    fn resolve(&self) -> Result<(String, String)> {
        let config = herald_runtime::config::Config::load(&self.dir)?;
        let token = config
            .auth
            .token()
            .context("herald.toml has no admin token ([auth] admin_token or admin_token_env)")?;
        let url = self
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.server.listen));
        Ok((url, token))
    }
}

fn call(req: ureq::Request, body: Option<(&str, &[u8])>) -> Result<serde_json::Value> {
    let result = match body {
        Some((ct, b)) => req.set("content-type", ct).send_bytes(b),
        None => req.call(),
    };
    call_result(result)
}

fn call_result(result: Result<ureq::Response, ureq::Error>) -> Result<serde_json::Value> {
    match result {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(code, r)) => {
            let v: serde_json::Value = r.into_json().unwrap_or_default();
            if code == 207 {
                return Ok(v);
            }
            bail!(
                "HTTP {code}: {}",
                v["error"]["message"].as_str().unwrap_or("request failed")
            )
        }
        Err(e) => bail!("cannot reach the daemon: {e} (is `herald run` running?)"),
    }
}

const QUICKSTART: &[(&str, &str)] = &[
    (
        "herald.toml",
        include_str!("../../examples/quickstart/herald.toml"),
    ),
    (
        "workflows/welcome.rhai",
        include_str!("../../examples/quickstart/workflows/welcome.rhai"),
    ),
    (
        "templates/welcome.liquid",
        include_str!("../../examples/quickstart/templates/welcome.liquid"),
    ),
    (
        "templates/nudge.liquid",
        include_str!("../../examples/quickstart/templates/nudge.liquid"),
    ),
    (
        "templates/tips.liquid",
        include_str!("../../examples/quickstart/templates/tips.liquid"),
    ),
    (
        "templates/confirm.mjml",
        include_str!("../../examples/quickstart/templates/confirm.mjml"),
    ),
    (".gitignore", ".herald/\n"),
];

fn init(dir: &Path) -> Result<()> {
    if dir.join("herald.toml").exists() {
        bail!("{} already contains a herald.toml", dir.display());
    }
    for (rel, text) in QUICKSTART {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("files live in a directory"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "created a Herald project in {}\n  herald check {0}\n  herald run {0}",
        dir.display()
    );
    Ok(())
}

fn check(dir: &Path, format: CheckFormat) -> Result<bool> {
    let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
    let (project, report) = Project::load(dir, &engine);
    // Loading every connector as the daemon would (manifest, checksum, grant, secrets) needs
    // wasmtime, so it happens here and in the daemon, not in the shared project checker.
    let plugin_errors: Vec<String> = match &project {
        Some(p)
            if p.config
                .channels
                .values()
                .any(|c| matches!(c.kind, herald_runtime::config::ChannelKind::Plugin { .. })) =>
        {
            // The daemon's compile cache when the project has a data directory, else the
            // user's: checking again compiles nothing.
            let data = dir.join(&p.config.server.data);
            let cache = if data.is_dir() {
                Some(data.join("plugin-cache"))
            } else {
                herald_plugin_host::user_cache_dir()
            };
            let loader = herald_runtime::channels::PluginLoader::new(cache);
            match herald_runtime::engine::ProjectState::from_project(p, &loader) {
                Ok(_) => Vec::new(),
                Err(e) => vec![e.to_string()],
            }
        }
        _ => Vec::new(),
    };
    let ok = project.is_some() && plugin_errors.is_empty();
    if format == CheckFormat::Json {
        let diagnostics: Vec<serde_json::Value> = report
            .files
            .iter()
            .flat_map(|f| {
                f.diagnostics.iter().map(|d| {
                    let (line, column) = d.line_col(&f.source);
                    let (end_line, end_column) = herald_dsl::diagnostic::offset_to_line_col(
                        &f.source,
                        d.range.end.min(f.source.len()),
                    );
                    serde_json::json!({
                        "file": f.path,
                        "code": d.code,
                        "severity": if d.is_error() { "error" } else { "warning" },
                        "message": d.message,
                        "label": d.label,
                        "help": d.help,
                        "line": line,
                        "column": column,
                        "end_line": end_line,
                        "end_column": end_column,
                    })
                })
            })
            .collect();
        let out = serde_json::json!({
            "ok": ok,
            "diagnostics": diagnostics,
            "plugin_errors": plugin_errors,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ok);
    }
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    eprint!("{}", report.render(color));
    match project {
        Some(_) if !plugin_errors.is_empty() => {
            for e in &plugin_errors {
                eprintln!("error: {e}");
            }
            Ok(false)
        }
        Some(p) => {
            let broadcasts = match p.broadcasts.len() {
                0 => String::new(),
                n => format!(", {n} broadcast(s)"),
            };
            println!(
                "ok: {} workflow(s), {} template(s){broadcasts}",
                p.workflows.len(),
                p.templates.names().count()
            );
            Ok(true)
        }
        None => {
            let errors = report.error_count();
            eprintln!("error: {errors} problem(s) found in {}", dir.display());
            Ok(false)
        }
    }
}

fn run(opts: Options) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a signal that arrives while the daemon starts is handled, not fatal.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int, mut hup) = {
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        )
    };
    let daemon = RunningDaemon::start(opts)?;
    println!("herald listening on {}", daemon.url());
    let stop = daemon.stopper();
    let shared = daemon.shared.clone();
    std::thread::Builder::new()
        .name("herald-signals".into())
        .spawn(move || {
            rt.block_on(async {
                loop {
                    tokio::select! {
                        _ = int.recv() => break,
                        _ = term.recv() => break,
                        _ = hup.recv() => {
                            tracing::info!("SIGHUP: reloading the project");
                            let s = shared.clone();
                            // A refused reload is logged and kept for /v1/status by `reload`.
                            let _ = tokio::task::spawn_blocking(move || s.reload()).await;
                        }
                    }
                }
            });
            tracing::info!("shutting down: no new requests, finishing in-flight work");
            notify_systemd(&[sd_notify::NotifyState::Stopping]);
            let _ = stop.send(true);
        })?;
    // systemd (`Type=notify`): the daemon serves from here on.
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    daemon.wait();
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Tell the service manager about a state change when it asked to be told (`NOTIFY_SOCKET`;
/// without it this does nothing).
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

fn preview(
    template: &str,
    contact: &str,
    channel: &str,
    vars: &str,
    remote: &Remote,
) -> Result<bool> {
    let (url, token) = remote.resolve()?;
    let vars: serde_json::Value = serde_json::from_str(vars).context("--vars is not JSON")?;
    let body =
        serde_json::json!({"contact": contact, "channel": channel, "vars": vars}).to_string();
    let req = ureq::post(&format!("{url}/v1/templates/{template}/preview"))
        .set("authorization", &format!("Bearer {token}"));
    let v = call(req, Some(("application/json", body.as_bytes())))?;
    if let Some(to) = v["to"].as_str() {
        println!("To: {to}");
    }
    if let Some(fields) = v["fields"].as_object() {
        for (k, val) in fields {
            println!("{}: {}", k, val.as_str().unwrap_or_default());
        }
    }
    println!();
    println!("{}", v["body"].as_str().unwrap_or_default());
    if let Some(html) = v["html"].as_str() {
        println!("\n--- HTML ({} bytes) ---\n{html}", html.len());
    }
    Ok(true)
}

fn why(contact: &str, as_json: bool, remote: &Remote) -> Result<bool> {
    let (url, token) = remote.resolve()?;
    let id = percent_encoding::utf8_percent_encode(contact, percent_encoding::NON_ALPHANUMERIC);
    let req = ureq::get(&format!("{url}/v1/contacts/{id}/trace"))
        .set("authorization", &format!("Bearer {token}"));
    let v = call(req, None)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(true);
    }
    println!("contact {}", v["contact"].as_str().unwrap_or(contact));
    for e in v["trace"].as_array().into_iter().flatten() {
        let at = e["at"].as_i64().unwrap_or(0);
        println!(
            "{}  {:<11} {}",
            herald_runtime::clock::iso(at),
            e["kind"].as_str().unwrap_or(""),
            e["summary"].as_str().unwrap_or("")
        );
    }
    Ok(true)
}

fn import(
    file: &Path,
    id: Option<String>,
    types: Option<String>,
    map: Option<String>,
    remote: &Remote,
) -> Result<bool> {
    let (url, token) = remote.resolve()?;
    let input = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    let mut req = ureq::post(&format!("{url}/v1/import/contacts"))
        .set("authorization", &format!("Bearer {token}"));
    for (k, v) in [("id", id), ("types", types), ("map", map)] {
        if let Some(v) = v {
            req = req.query(k, &v);
        }
    }
    // Streamed: the file is never held in memory, here or in the daemon.
    let report = match req.set("content-type", "text/csv").send(input) {
        Ok(r) => r.into_json()?,
        Err(ureq::Error::Status(207, r)) => r.into_json()?,
        other => call_result(other)?,
    };
    let rejected = report["rejected_count"].as_u64().unwrap_or(0);
    println!(
        "imported {} row(s), {} unchanged, {} rejected (id column: {})",
        report["imported"],
        report["unchanged"],
        rejected,
        report["id_column"].as_str().unwrap_or("?")
    );
    for r in report["rejected"].as_array().into_iter().flatten() {
        eprintln!(
            "{}:{}: {}",
            file.display(),
            r["line"],
            r["reason"].as_str().unwrap_or_default()
        );
    }
    let listed = report["rejected"].as_array().map_or(0, Vec::len) as u64;
    if rejected > listed {
        eprintln!(
            "{}: {} more rejected row(s) not listed",
            file.display(),
            rejected - listed
        );
    }
    Ok(rejected == 0)
}

fn delete_contact(id: &str, remote: &Remote) -> Result<bool> {
    let (url, token) = remote.resolve()?;
    let path = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
    let req = ureq::delete(&format!("{url}/v1/contacts/{path}"))
        .set("authorization", &format!("Bearer {token}"));
    let answer = call(req, None)?;
    let removed = &answer["removed"];
    println!(
        "erased contact {}: {} event(s), {} run(s), {} identit(ies); {} suppression entr(ies) kept",
        removed["contact"].as_str().unwrap_or(id),
        removed["events"],
        removed["runs"],
        removed["identities"],
        removed["suppressed"]
    );
    Ok(true)
}

fn pack(dir: &Path, no_build: bool) -> Result<bool> {
    if !no_build {
        if let Err(e) = authoring::build(dir) {
            eprintln!("error: cannot build {}: {e:#}", dir.display());
            return Ok(false);
        }
    }
    match herald_plugin_host::pack(dir, herald_plugin_host::user_cache_dir()) {
        Ok(report) => {
            print!("{report}");
            Ok(report.is_valid())
        }
        Err(e) => {
            eprintln!("error: cannot pack {}: {e}", dir.display());
            Ok(false)
        }
    }
}

fn inspect(file: &Path) -> Result<bool> {
    // The user's compile cache: a second inspect of the same component compiles nothing.
    match herald_plugin_host::inspect_with_cache(file, herald_plugin_host::user_cache_dir()) {
        Ok(report) => {
            print!("{report}");
            Ok(report.is_valid())
        }
        Err(e) => {
            eprintln!(
                "error: {} is not a valid Herald plugin: {e}",
                file.display()
            );
            Ok(false)
        }
    }
}

fn main() -> ExitCode {
    // Return freed pages to the system at once rather than after a delay: the daemon's
    // resident memory then follows its live data (measured by `herald bench --waiting`).
    // An operator who sets `MIMALLOC_PURGE_DELAY` (or its older name `MIMALLOC_RESET_DELAY`)
    // chooses otherwise (README: tuning).
    let chosen = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !chosen {
        // SAFETY: a global allocator setting, changed before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run {
            dir,
            listen,
            data,
            test_clock,
            no_watch,
        } => run(Options {
            project: dir,
            listen,
            data,
            test_clock,
            watch: !no_watch,
        })
        .map(|_| true),
        Command::Check { dir, format } => check(&dir, format),
        Command::Init { dir } => init(&dir).map(|_| true),
        Command::Bench(args) => bench::run(args).map(|_| true),
        // The LSP specification: exit code 0 after `shutdown` then `exit`, 1 otherwise.
        Command::Lsp => herald_lsp::run_stdio()
            .map(|end| end.is_clean())
            .map_err(Into::into),
        Command::Plugin {
            command: PluginCommand::Inspect { file },
        } => inspect(&file),
        Command::Plugin {
            command: PluginCommand::Pack { dir, no_build },
        } => pack(&dir, no_build),
        Command::Plugin {
            command: PluginCommand::New { name, lang, dir },
        } => authoring::new_plugin(&name, lang, &dir).map(|made| {
            let tool = match lang {
                authoring::Lang::Rust => "cargo and the wasm32-wasip2 target".to_string(),
                authoring::Lang::Python => format!(
                    "componentize-py {}",
                    authoring::COMPONENTIZE_PY_VERSION
                ),
                authoring::Lang::Js => "Node.js 20 or newer with npm".to_string(),
            };
            println!(
                "wrote {shown}\n  build:  herald plugin pack {shown}   (needs {tool})\n  test:   herald plugin test {shown}",
                shown = made.display()
            );
            true
        }),
        Command::Plugin {
            command: PluginCommand::Test { dir, cases },
        } => authoring::test_plugin(&dir, cases.as_deref()),
        Command::Preview {
            template,
            contact,
            channel,
            vars,
            remote,
        } => preview(&template, &contact, &channel, &vars, &remote),
        Command::Broadcast { command } => broadcasts::run(command),
        Command::Report { command } => reports::report(command),
        Command::Analytics { command } => reports::analytics(command),
        Command::Why {
            contact,
            json,
            remote,
        } => why(&contact, json, &remote),
        Command::Contact {
            command: ContactCommand::Delete { id, remote },
        } => delete_contact(&id, &remote),
        Command::Import {
            file,
            id,
            types,
            map,
            remote,
        } => import(&file, id, types, map, &remote),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line of the shipped systemd unit.
    fn unit_exec_start() -> Vec<String> {
        let unit = include_str!("../../dist/systemd/herald.service");
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit has an ExecStart line");
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_systemd_unit_waits_for_readiness_and_its_command_line_parses() {
        let unit = include_str!("../../dist/systemd/herald.service");
        assert!(unit.lines().any(|l| l == "Type=notify"));
        assert!(unit
            .lines()
            .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"));
        let mut args = unit_exec_start();
        args[0] = "herald".into();
        let cli = Cli::try_parse_from(&args).expect("the unit's ExecStart is a valid command line");
        assert_eq!(cli.log_format, LogFormat::Json);
        match cli.command {
            Command::Run { dir, data, .. } => {
                assert_eq!(dir, PathBuf::from("/etc/herald"));
                assert_eq!(data, Some(PathBuf::from("/var/lib/herald")));
            }
            _ => panic!("the unit runs `herald run`"),
        }
    }
}
