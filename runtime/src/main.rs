//! `herald`: the daemon and its command-line tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use herald_runtime::daemon::{Options, RunningDaemon};
use herald_runtime::project::Project;

mod bench;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Marketing automation runtime: ingest, segments, durable workflows."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Create a new project from the quickstart.
    Init {
        /// Directory to create.
        dir: PathBuf,
    },
    /// Measure ingest, activation and storage throughput on this machine.
    Bench(bench::BenchArgs),
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

fn check(dir: &Path) -> Result<bool> {
    let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
    let (project, report) = Project::load(dir, &engine);
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    eprint!("{}", report.render(color));
    match project {
        Some(p) => {
            println!(
                "ok: {} workflow(s), {} template(s)",
                p.workflows.len(),
                p.templates.names().count()
            );
            Ok(true)
        }
        None => {
            let errors = report.errors.len()
                + report
                    .files
                    .iter()
                    .map(|f| f.diagnostics.iter().filter(|d| d.is_error()).count())
                    .sum::<usize>();
            eprintln!("error: {errors} problem(s) found in {}", dir.display());
            Ok(false)
        }
    }
}

fn run(opts: Options) -> Result<()> {
    let daemon = RunningDaemon::start(opts)?;
    println!("herald listening on {}", daemon.url());
    let stop = daemon.stopper();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        tracing::info!("shutting down: no new requests, finishing in-flight work");
        let _ = stop.send(true);
    });
    daemon.wait();
    tracing::info!("stopped cleanly");
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
                .unwrap_or_else(|_| "info,sled=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
        Command::Check { dir } => check(&dir),
        Command::Init { dir } => init(&dir).map(|_| true),
        Command::Bench(args) => bench::run(args).map(|_| true),
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
