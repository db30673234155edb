//! Wiring: open storage, load the project, start the engine, serve HTTP, shut down cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::clock::{Clock, ManualClock, SystemClock};
use crate::engine::Engine;
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::project::Project;
use crate::store::{Flusher, SledStore, Store};

/// Daemon start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The project has errors.
    #[error("the project has errors:\n{0}")]
    Project(String),
    /// Storage could not be opened.
    #[error("cannot open the data directory {path}: {source}")]
    Storage {
        /// Data directory.
        path: PathBuf,
        /// Why.
        source: crate::store::StoreError,
    },
    /// The engine failed to start.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Runtime failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct Options {
    /// Project directory.
    pub project: PathBuf,
    /// Listen address; `herald.toml` or 127.0.0.1:7700 when `None`.
    pub listen: Option<String>,
    /// Data directory; `herald.toml` or `PROJECT/.herald/data` when `None`.
    pub data: Option<PathBuf>,
    /// Use a manual clock moved through `POST /v1/test/clock`.
    pub test_clock: bool,
    /// Watch the project and hot-reload changes.
    pub watch: bool,
}

/// What a write key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A browser's or an app's key (public): no channel-owned event names, no merging of two
    /// known users.
    Client,
    /// A server's key (secret): everything.
    Server,
}

/// The credentials clients present, as configured in `[auth]`.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Server keys (none empty: the project loader refuses empty keys).
    pub write_keys: Vec<String>,
    /// Client keys, for browsers and apps.
    pub client_keys: Vec<String>,
    /// Management token.
    pub admin_token: Option<String>,
    /// Read-only management tokens.
    pub read_tokens: Vec<String>,
}

/// What a management token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reports, dashboards and lookups.
    Read,
    /// Everything.
    Full,
}

impl Credentials {
    /// The credentials of `[auth]`, empty values left out.
    pub fn from_config(auth: &crate::config::AuthConfig) -> Self {
        Credentials {
            write_keys: auth
                .all_write_keys()
                .into_iter()
                .filter(|k| !k.trim().is_empty())
                .collect(),
            client_keys: auth
                .client_keys
                .iter()
                .filter(|k| !k.trim().is_empty())
                .cloned()
                .collect(),
            admin_token: auth.token().filter(|t| !t.trim().is_empty()),
            read_tokens: auth
                .all_read_tokens()
                .into_iter()
                .filter(|t| !t.trim().is_empty())
                .collect(),
        }
    }

    /// The kind of write key `key` is, if it is one. Compared in constant time, so the time
    /// an answer takes says nothing about how much of a guess was right.
    pub fn write_key_kind(&self, key: &str) -> Option<KeyKind> {
        // Every key is compared, so the time does not reveal which one matched either.
        let server = self
            .write_keys
            .iter()
            .fold(false, |found, k| found | constant_time_eq(k, key));
        let client = self
            .client_keys
            .iter()
            .fold(false, |found, k| found | constant_time_eq(k, key));
        match (server, client) {
            (true, _) => Some(KeyKind::Server),
            (false, true) => Some(KeyKind::Client),
            (false, false) => None,
        }
    }

    /// Is `token` the admin token? (constant time)
    pub fn accepts_admin_token(&self, token: &str) -> bool {
        self.admin_token
            .as_deref()
            .is_some_and(|t| constant_time_eq(t, token))
    }

    /// What `token` may do, if it is a management token at all (constant time).
    pub fn token_scope(&self, token: &str) -> Option<Scope> {
        let read = self
            .read_tokens
            .iter()
            .fold(false, |found, t| found | constant_time_eq(t, token));
        match (self.accepts_admin_token(token), read) {
            (true, _) => Some(Scope::Full),
            (false, true) => Some(Scope::Read),
            (false, false) => None,
        }
    }

    /// Is any management token configured?
    pub fn management_enabled(&self) -> bool {
        self.admin_token.is_some() || !self.read_tokens.is_empty()
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Shared {
    /// The ingest rate limits in force now.
    pub fn rate_limits(&self) -> Arc<crate::http::rate::RateLimits> {
        self.rate_limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The credentials in force now.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// State shared by the HTTP handlers.
pub struct Shared {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The ingest path.
    pub ingestor: Ingestor,
    /// Write keys and the admin token: swapped whole by a reload, so a rotation applies at once.
    pub credentials: std::sync::RwLock<Arc<Credentials>>,
    /// `[server.rate_limits]`: swapped whole by a reload (unchanged limits keep their state).
    pub rate_limits: std::sync::RwLock<Arc<crate::http::rate::RateLimits>>,
    /// Whether `/v1/test/clock` is enabled.
    pub test_clock: bool,
    /// Project directory.
    pub project_dir: PathBuf,
    /// The last failed reload, rendered.
    pub last_reload_error: Mutex<Option<String>>,
    /// `[server]` as the daemon started with it: changes need a restart.
    pub server: crate::config::ServerConfig,
    /// Fingerprint of the project files last loaded (or refused).
    pub fingerprint: Mutex<String>,
    /// Reload counters: applied, refused, skipped because nothing changed.
    pub reload_stats: Mutex<ReloadStats>,
    /// Whether the daemon accepts new work: set once the listener serves, cleared when a
    /// shutdown begins (`/readyz`).
    pub serving: std::sync::atomic::AtomicBool,
}

/// What hot reload has done so far.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStats {
    /// Reloads that swapped in a new project.
    pub applied: u64,
    /// Reloads refused (the previous version kept serving).
    pub refused: u64,
    /// Saves that changed nothing.
    pub skipped_identical: u64,
    /// When the last reload was applied (ms since the epoch).
    pub last_applied_at: Option<i64>,
}

/// A daemon running on its own thread and runtime (used by `herald run`, tests and `herald bench`).
pub struct RunningDaemon {
    /// The bound address.
    pub addr: SocketAddr,
    /// Shared state (tests reach into the engine).
    pub shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _watcher: Option<crate::reload::ProjectWatcher>,
}

fn resolve_dir(project: &Path, configured: &str) -> PathBuf {
    let p = PathBuf::from(configured);
    if p.is_absolute() {
        p
    } else {
        project.join(p)
    }
}

impl RunningDaemon {
    /// Load the project, open storage, start the engine and bind the listener.
    pub fn start(opts: Options) -> Result<RunningDaemon, DaemonError> {
        let limits = herald_dsl::Limits::default();
        let checker = herald_dsl::build_engine(&limits);
        let (project, report) = Project::load(&opts.project, &checker);
        let project = project.ok_or_else(|| DaemonError::Project(report.render(false)))?;
        let data = opts
            .data
            .clone()
            .unwrap_or_else(|| resolve_dir(&opts.project, &project.config.server.data));
        std::fs::create_dir_all(&data)?;
        let store = SledStore::open(&data, project.config.engine.cache_mb * 1024 * 1024).map_err(
            |source| DaemonError::Storage {
                path: data.clone(),
                source,
            },
        )?;
        store.set_notes_facts(project.config.analytics.enabled);
        let store: Arc<dyn Store> = Arc::new(store);
        let clock: Arc<dyn Clock> = if opts.test_clock {
            let start = std::env::var("HERALD_TEST_CLOCK_START")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| SystemClock.now_ms());
            Arc::new(ManualClock::new(start))
        } else {
            Arc::new(SystemClock)
        };
        let flusher = Flusher::start(store.clone());
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::start(
            store,
            flusher.clone(),
            clock,
            metrics,
            &project,
            crate::channels::PluginLoader::new(Some(data.join("plugin-cache"))),
        )?;
        let shared = Arc::new(Shared {
            ingestor: Ingestor::new(
                engine.clone(),
                (project.config.server.dedupe_window_hours as i64).saturating_mul(3_600_000),
                project.config.limits.clone(),
            )
            .map_err(|source| DaemonError::Storage {
                path: data.clone(),
                source,
            })?,
            credentials: std::sync::RwLock::new(Arc::new(Credentials::from_config(
                &project.config.auth,
            ))),
            rate_limits: std::sync::RwLock::new(Arc::new(crate::http::rate::RateLimits::new(
                &project.config.server.rate_limits,
            ))),
            test_clock: opts.test_clock,
            project_dir: opts.project.clone(),
            last_reload_error: Mutex::new(None),
            server: project.config.server.clone(),
            fingerprint: Mutex::new(crate::reload::fingerprint(&opts.project)),
            reload_stats: Mutex::new(ReloadStats::default()),
            serving: std::sync::atomic::AtomicBool::new(false),
            engine: engine.clone(),
        });
        let watcher = if opts.watch {
            Some(crate::reload::watch(shared.clone()).map_err(|e| {
                DaemonError::Io(std::io::Error::other(format!(
                    "cannot watch the project: {e}"
                )))
            })?)
        } else {
            None
        };
        let listen = opts
            .listen
            .clone()
            .unwrap_or_else(|| project.config.server.listen.clone());
        let std_listener =
            std::net::TcpListener::bind(&listen).map_err(|source| DaemonError::Listen {
                addr: listen.clone(),
                source,
            })?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        engine.set_listen_url(format!("http://{addr}"));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("herald-http")
            .enable_all()
            .build()?;
        let app = crate::http::router(shared.clone());
        let limits = crate::http::serve::ConnectionLimits::from_config(&project.config.server);
        let e2 = engine.clone();
        let e3 = engine.clone();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("herald-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(std_listener).expect("listener");
                    let timers = tokio::spawn(e2.clone().timer_loop(stop_rx.clone()));
                    let mut srx = stop_rx.clone();
                    let s2 = serving.clone();
                    s2.serving.store(true, std::sync::atomic::Ordering::SeqCst);
                    let stopped = async move {
                        let _ = srx.wait_for(|s| *s).await;
                        s2.serving.store(false, std::sync::atomic::Ordering::SeqCst);
                    };
                    let server = crate::http::serve::serve(listener, app, limits, stop_rx.clone());
                    tokio::join!(stopped, server);
                    let _ = timers.await;
                });
                e3.shutdown();
                flusher.stop();
            })?;
        tracing::info!(%addr, data = %data.display(), workflows = project.workflows.len(), "herald is serving");
        Ok(RunningDaemon {
            addr,
            shared,
            stop,
            thread: Some(thread),
            _watcher: watcher,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:7700`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, finish in-flight work, flush, and wait for it all.
    pub fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Block until the daemon stops (after [`RunningDaemon::stopper`] fires).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// A handle that stops the daemon from another thread.
    pub fn stopper(&self) -> tokio::sync::watch::Sender<bool> {
        self.stop.clone()
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
