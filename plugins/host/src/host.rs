//! The wasmtime engine, component cache, instance pool and call path.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use crate::bindings::herald::channel::types as wit;
use crate::bindings::{Plugin, PluginPre};
use crate::bindings_v1::{Plugin as PluginV1, PluginPre as PluginPreV1};
use crate::compat;
use crate::manifest as manifest_file;
use crate::manifest::{check_config_schema, sha256_hex, Manifest};
use crate::net::HostPattern;
use crate::ratelimit::RateLimiter;
use crate::state::{HostState, Shared, STDERR_CAPACITY};
use crate::types::*;
use crate::{PluginError, SendError};

/// How long a plugin channel waits after an SMTP relay asked it to slow down.
const SMTP_THROTTLE_PAUSE: Duration = Duration::from_secs(1);

/// Interval of the epoch ticker that drives interruption.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Stops the epoch ticker thread when the last owner goes away.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start_ticker(engine: &Engine) -> Arc<Ticker> {
    let stop = Arc::new(AtomicBool::new(false));
    let weak = engine.weak();
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("herald-plugin-epoch".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("spawn epoch ticker");
    Arc::new(Ticker { stop })
}

/// The host's own tokio runtime: it runs the blocking calls ([`LoadedPlugin::send`],
/// loading, inspection) for callers outside async code. Async callers run plugin calls on
/// their own runtime.
pub(crate) struct IoRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl IoRuntime {
    fn new() -> Result<Arc<IoRuntime>, PluginError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("herald-plugin-io")
            .enable_all()
            .build()
            .map_err(|e| PluginError::Engine(format!("cannot start the plugin runtime: {e}")))?;
        Ok(Arc::new(IoRuntime {
            runtime: Some(runtime),
        }))
    }

    /// Run `future` on this runtime and wait for it (from any thread, also one inside
    /// another runtime).
    pub(crate) fn block_on<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let runtime = self.runtime.as_ref().expect("runtime present until drop");
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .expect("a plugin call task ended without an answer")
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        // May be dropped inside another runtime, where waiting is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Build the engine configuration every Herald host uses.
pub(crate) fn engine_config(pooling: Option<&PoolingOptions>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    if let Some(p) = pooling {
        let n = p.max_instances.max(1);
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_memory_size(p.max_memory_bytes);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Options of a [`PluginHost`].
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Directory for compiled components, reused across restarts.
    pub cache_dir: Option<PathBuf>,
    /// Use wasmtime's pooling instance allocator: memory slots are reserved
    /// up front and recycled, which makes instantiating (a cold send, the
    /// replacement of a trapped instance) several times cheaper. `None` (the
    /// default) allocates on demand.
    pub pooling: Option<PoolingOptions>,
}

/// Sizing of the pooling allocator (see [`HostOptions::pooling`]).
#[derive(Debug, Clone)]
pub struct PoolingOptions {
    /// Maximum number of live plugin instances across all plugins (warm
    /// pools plus in-flight calls). Instantiation beyond it fails.
    pub max_instances: u32,
    /// Upper bound of any grant's `max_memory_bytes`.
    pub max_memory_bytes: usize,
}

impl Default for PoolingOptions {
    fn default() -> Self {
        PoolingOptions {
            max_instances: 256,
            max_memory_bytes: 256 << 20,
        }
    }
}

/// One wasmtime engine shared by all plugins, with an optional on-disk cache
/// of compiled components.
pub struct PluginHost {
    engine: Engine,
    pooling: Option<PoolingOptions>,
    linker: Arc<Linker<HostState>>,
    cache_dir: Option<PathBuf>,
    ticker: Arc<Ticker>,
    io: Arc<IoRuntime>,
    compiled: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

pub(crate) fn make_linker(engine: &Engine) -> Result<Linker<HostState>, PluginError> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| PluginError::Engine(format!("linking WASI: {e}")))?;
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Engine(format!("linking herald:channel: {e}")))?;
    PluginV1::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
        .map_err(|e| PluginError::Engine(format!("linking herald:channel@0.1.0: {e}")))?;
    Ok(linker)
}

impl PluginHost {
    /// Create the engine (component model, epoch interruption). Compiled
    /// components are cached in `cache_dir` across restarts when given.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        Self::with_options(HostOptions {
            cache_dir,
            pooling: None,
        })
    }

    /// Create a host with explicit [`HostOptions`].
    pub fn with_options(options: HostOptions) -> Result<Self, PluginError> {
        let HostOptions { cache_dir, pooling } = options;
        let engine = Engine::new(&engine_config(pooling.as_ref()))
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| PluginError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let linker = Arc::new(make_linker(&engine)?);
        let ticker = start_ticker(&engine);
        Ok(PluginHost {
            engine,
            pooling,
            linker,
            cache_dir,
            ticker,
            io: IoRuntime::new()?,
            compiled: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How many components this host compiled (rather than loaded from its cache).
    pub fn compilations(&self) -> u64 {
        self.compiled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Compile `bytes` (digest `sha`) or load the cached compilation.
    pub(crate) fn compile(
        &self,
        bytes: &[u8],
        sha: &str,
        wasm_path: &Path,
    ) -> Result<Component, PluginError> {
        check_component_header(bytes)?;
        let cache_file = self.cache_dir.as_ref().map(|dir| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            dir.join(format!("{sha}-{:016x}.cwasm", h.finish()))
        });
        if let Some(file) = &cache_file {
            // Read into memory rather than mmap the file: a cache file changed
            // underneath a live mapping would crash the process (SIGBUS).
            if let Ok(data) = std::fs::read(file) {
                // SAFETY: the bytes come from `Component::serialize` of an engine
                // with the same compatibility hash (it is part of the file name),
                // in the operator's cache directory; wasmtime validates the
                // header and refuses artifacts from other versions/configs.
                match unsafe { Component::deserialize(&self.engine, &data) } {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(cache = %file.display(), "ignoring unusable cached component: {e}")
                    }
                }
            }
        }
        self.compiled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::InvalidPlugin(format!("{}: {e}", wasm_path.display())))?;
        if let Some(file) = &cache_file {
            match component.serialize() {
                Ok(data) => {
                    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::write(&tmp, &data)
                        .and_then(|_| std::fs::rename(&tmp, file))
                        .is_err()
                    {
                        let _ = std::fs::remove_file(&tmp);
                        tracing::warn!(cache = %file.display(), "could not write component cache");
                    }
                }
                Err(e) => tracing::warn!("could not serialize component: {e}"),
            }
        }
        Ok(component)
    }

    /// Link `component` and wrap it with its shared state and an empty pool.
    pub(crate) fn new_inner(
        &self,
        component: &Component,
        revision: Revision,
        shared: Shared,
    ) -> Result<Arc<Inner>, PluginError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::InvalidPlugin(format!("cannot link: {e}")))?;
        let pre = match revision {
            Revision::V2 => {
                Pre::V2(PluginPre::new(pre).map_err(|e| PluginError::InvalidPlugin(e.to_string()))?)
            }
            Revision::V1 => Pre::V1(
                PluginPreV1::new(pre).map_err(|e| PluginError::InvalidPlugin(e.to_string()))?,
            ),
        };
        let limits = shared.limits.clone();
        Ok(Arc::new(Inner {
            engine: self.engine.clone(),
            pre,
            shared: Arc::new(shared),
            pool: Mutex::new(Vec::new()),
            rate: RateLimiter::new(limits.rate_per_second, limits.burst),
            in_flight: AtomicUsize::new(0),
            io: self.io.clone(),
            _ticker: self.ticker.clone(),
        }))
    }

    /// Load the plugin in `plugin_dir` (`plugin.toml` + wasm): check the
    /// manifest and the wasm digest, compile (or load from cache), link it
    /// against the granted capabilities, call `describe` and check it against
    /// the manifest, and have the plugin validate `grant.config`.
    pub fn load(&self, plugin_dir: &Path, grant: Grant) -> Result<LoadedPlugin, PluginError> {
        let manifest = manifest_file::load(plugin_dir)?;
        let wasm_path = manifest.wasm_path(plugin_dir);
        let bytes = std::fs::read(&wasm_path).map_err(|source| PluginError::Io {
            path: wasm_path.clone(),
            source,
        })?;
        self.load_checked(manifest, &bytes, &wasm_path, plugin_dir, grant)
    }

    /// Load a plugin from its packaged manifest text and component bytes (a
    /// connector embedded in the binary), with exactly the checks of
    /// [`PluginHost::load`]; `origin` names it in messages (e.g. `bundled:webhook`).
    pub fn load_embedded(
        &self,
        origin: &str,
        manifest: &str,
        wasm: &[u8],
        grant: Grant,
    ) -> Result<LoadedPlugin, PluginError> {
        let dir = Path::new(origin);
        let manifest = manifest_file::parse(manifest, &dir.join("plugin.toml"))?;
        let wasm_path = manifest.wasm_path(dir);
        self.load_checked(manifest, wasm, &wasm_path, dir, grant)
    }

    fn load_checked(
        &self,
        manifest: Manifest,
        bytes: &[u8],
        wasm_path: &Path,
        plugin_dir: &Path,
        grant: Grant,
    ) -> Result<LoadedPlugin, PluginError> {
        if let Some(p) = &self.pooling {
            if grant.limits.max_memory_bytes > p.max_memory_bytes {
                return Err(PluginError::Engine(format!(
                    "grant allows {} MiB of memory but the pooling allocator is sized for {} MiB",
                    grant.limits.max_memory_bytes >> 20,
                    p.max_memory_bytes >> 20
                )));
            }
        }
        let actual = sha256_hex(bytes);
        if !actual.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(PluginError::Checksum {
                path: wasm_path.to_path_buf(),
                expected: manifest.sha256.clone(),
                actual,
            });
        }
        let component = self.compile(bytes, &actual, wasm_path)?;
        let revision = check_exports(&self.engine, &component)?;
        if Some(revision.minor()) != manifest.api_minor() {
            return Err(PluginError::InvalidPlugin(format!(
                "the component implements herald:channel@{} but plugin.toml says api_version = \"{}\"",
                revision.version(),
                manifest.api_version
            )));
        }
        let mut hosts = Vec::new();
        for h in manifest
            .allowed_hosts
            .iter()
            .chain(grant.allowed_hosts.iter())
        {
            hosts.push(HostPattern::parse(h).map_err(|e| PluginError::Manifest {
                path: plugin_dir.join("plugin.toml"),
                message: format!("allowed host: {e}"),
            })?);
        }
        let declared: HashSet<String> = manifest.secrets.iter().cloned().collect();
        for name in &manifest.secrets {
            if !grant.secrets.contains_key(name) {
                tracing::warn!(plugin = %manifest.id, secret = %name, "declared secret not supplied by the operator");
            }
        }
        let config = if grant.config.is_null() {
            serde_json::json!({})
        } else {
            grant.config.clone()
        };
        let shared = Shared::new(
            manifest.id.clone(),
            hosts,
            grant.allow_private,
            declared,
            &grant.secrets,
            config.clone(),
            manifest.smtp,
            grant.smtp.as_ref(),
            grant.limits.clone(),
        )
        .map_err(PluginError::Engine)?;
        let inner = self.new_inner(&component, revision, shared)?;

        let raw = match inner.call_blocking(Call::Describe) {
            Ok((Answer::Describe(d), _)) => d,
            Ok(_) => unreachable!("describe answers with a description"),
            Err(f) => {
                return Err(PluginError::Sandbox(format!("describe(): {}", f.message)));
            }
        };
        let description = convert_description(raw, &manifest.api_version)?;
        if description.id != manifest.id || description.version != manifest.version {
            return Err(PluginError::InvalidPlugin(format!(
                "describe() says {} {} but plugin.toml says {} {}",
                description.id, description.version, manifest.id, manifest.version
            )));
        }
        if let Some(schema) = manifest.config_schema_json() {
            if schema != description.config_schema {
                return Err(PluginError::InvalidPlugin(
                    "describe().config-schema differs from plugin.toml's config_schema".into(),
                ));
            }
        }
        check_contact_fields(&manifest, &description)?;
        // The operator's config against the plugin's JSON Schema first: a located reason for
        // each mistake, whatever the plugin's own validate-config says.
        check_config_schema(&description.config_schema, &config).map_err(|message| {
            PluginError::Config {
                plugin: manifest.id.clone(),
                message,
            }
        })?;
        let verdict = match inner.call_blocking(Call::ValidateConfig(config.to_string())) {
            Ok((Answer::ValidateConfig(v), _)) => v,
            Ok(_) => unreachable!("validate-config answers with a verdict"),
            Err(f) => {
                return Err(PluginError::Sandbox(format!(
                    "validate-config(): {}",
                    f.message
                )));
            }
        };
        if let Err(message) = verdict {
            return Err(PluginError::Config {
                plugin: manifest.id.clone(),
                message,
            });
        }
        Ok(LoadedPlugin {
            inner,
            description,
            manifest,
        })
    }
}

/// Refuse core modules and garbage with a precise reason.
pub(crate) fn check_component_header(bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(PluginError::InvalidPlugin(
            "not a WebAssembly binary (missing \\0asm magic)".into(),
        ));
    }
    if bytes[6..8] == [0, 0] {
        return Err(PluginError::InvalidPlugin(
            "this is a core WebAssembly module, not a component; build for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)"
                .into(),
        ));
    }
    Ok(())
}

/// The export every plugin must have, without version.
pub(crate) const CONNECTOR_EXPORT: &str = "herald:channel/connector";

/// The `herald:channel` revision a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revision {
    /// 0.1.0, adapted by [`compat`].
    V1,
    /// 0.2.0, the current one.
    V2,
}

impl Revision {
    pub(crate) fn version(self) -> &'static str {
        match self {
            Revision::V1 => "0.1.0",
            Revision::V2 => "0.2.0",
        }
    }

    pub(crate) fn minor(self) -> u64 {
        match self {
            Revision::V1 => 1,
            Revision::V2 => 2,
        }
    }
}

/// Which supported `herald:channel/connector` the component exports.
pub(crate) fn check_exports(
    engine: &Engine,
    component: &Component,
) -> Result<Revision, PluginError> {
    let ty = component.component_type();
    let names: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    for (revision, version) in [(Revision::V2, "0.2.0"), (Revision::V1, "0.1.0")] {
        if names.contains(&format!("{CONNECTOR_EXPORT}@{version}")) {
            return Ok(revision);
        }
    }
    let supported = crate::SUPPORTED_API_VERSIONS
        .iter()
        .map(|v| format!("`{CONNECTOR_EXPORT}@{v}`"))
        .collect::<Vec<_>>()
        .join(" or ");
    if let Some(other) = names.iter().find(|n| n.starts_with(CONNECTOR_EXPORT)) {
        return Err(PluginError::InvalidPlugin(format!(
            "exports `{other}` but this host implements {supported}"
        )));
    }
    Err(PluginError::InvalidPlugin(format!(
        "does not export {supported} (exports: {})",
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    )))
}

/// `describe().contact-fields` must name what the manifest grants, so what an operator reads
/// in `plugin.toml` (and `herald plugin inspect`) is what the plugin gets.
pub(crate) fn check_contact_fields(
    manifest: &Manifest,
    description: &Description,
) -> Result<(), PluginError> {
    let mut declared = manifest.contact_fields.clone();
    let mut described = description.contact_fields.clone();
    declared.sort();
    described.sort();
    if declared != described {
        return Err(PluginError::InvalidPlugin(format!(
            "describe().contact-fields [{}] differs from plugin.toml's contact_fields [{}] \
             (`herald plugin pack` writes them from describe)",
            description.contact_fields.join(", "),
            manifest.contact_fields.join(", ")
        )));
    }
    Ok(())
}

pub(crate) fn convert_description(
    d: wit::Description,
    api_version: &str,
) -> Result<Description, PluginError> {
    let config_schema = serde_json::from_str(&d.config_schema).map_err(|e| {
        PluginError::InvalidPlugin(format!("describe().config-schema is not valid JSON: {e}"))
    })?;
    Ok(Description {
        id: d.id,
        version: d.version,
        api_version: api_version.to_string(),
        display_name: d.display_name,
        delivers_messages: d.delivers_messages,
        operations: d
            .operations
            .into_iter()
            .map(|o| Operation {
                name: o.name,
                description: o.description,
            })
            .collect(),
        supports_idempotency: d.supports_idempotency,
        config_schema,
        contact_fields: d.contact_fields,
    })
}

/// Linked, ready to instantiate: one per plugin, of the revision it implements.
pub(crate) enum Pre {
    V1(PluginPreV1<HostState>),
    V2(PluginPre<HostState>),
}

/// An instance's typed exports.
enum Bindings {
    V1(PluginV1),
    V2(Plugin),
}

/// A warm instance: its store and typed exports.
struct Warm {
    store: Store<HostState>,
    plugin: Bindings,
}

/// One call into a plugin's `connector` export.
pub(crate) enum Call {
    Describe,
    ValidateConfig(String),
    Send(Box<wit::Outbound>),
    ParseWebhook(wit::WebhookRequest),
}

/// The export's answer, one variant per [`Call`].
pub(crate) enum Answer {
    Describe(wit::Description),
    ValidateConfig(Result<(), String>),
    Send(Result<wit::Sent, wit::SendError>),
    ParseWebhook(Result<Vec<wit::WebhookEvent>, String>),
}

/// What the host saw during a call besides its answer.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    /// Capability requests the host refused.
    pub(crate) denials: Vec<String>,
    /// The SMTP relay asked to slow down.
    pub(crate) throttled: bool,
}

/// A call that the sandbox stopped.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    /// Outbound effects attempted before the failure.
    pub(crate) effects: u32,
    /// The call was refused because too many calls were running.
    pub(crate) busy: bool,
    /// Capabilities the host refused during the call.
    pub(crate) denials: Vec<String>,
}

pub(crate) struct Inner {
    engine: Engine,
    pre: Pre,
    pub(crate) shared: Arc<Shared>,
    pool: Mutex<Vec<Warm>>,
    pub(crate) rate: RateLimiter,
    in_flight: AtomicUsize,
    io: Arc<IoRuntime>,
    _ticker: Arc<Ticker>,
}

/// Decrements the in-flight counter when a call ends (also when its future is dropped).
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    /// A new store under the call limits: guest code yields to the executor at every epoch
    /// tick and is interrupted once the call's deadline has passed.
    fn new_store(&self) -> Store<HostState> {
        let mut store = Store::new(&self.engine, HostState::new(self.shared.clone()));
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        store.data_mut().deadline = Instant::now() + self.shared.limits.timeout;
        store
    }

    async fn instantiate(&self) -> Result<Warm, Failure> {
        let mut store = self.new_store();
        let instance = match &self.pre {
            Pre::V2(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V2),
            Pre::V1(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V1),
        };
        match instance {
            Ok(plugin) => Ok(Warm { store, plugin }),
            Err(e) => Err(Failure {
                message: classify(&e, store.data(), &self.shared.limits, "instantiation"),
                effects: 0,
                busy: false,
                denials: Vec::new(),
            }),
        }
    }

    /// Run `call` on a warm (or new) instance under the call limits. Returns the answer and
    /// what the host saw during the call. The instance goes back to the pool unless it
    /// trapped. While the plugin waits on the network no thread is held.
    pub(crate) async fn call(self: Arc<Self>, call: Call) -> Result<(Answer, Notes), Failure> {
        let max = self.shared.limits.max_concurrent_calls.max(1);
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Failure {
                message: format!("busy: {max} calls already running on this plugin"),
                effects: 0,
                busy: true,
                denials: Vec::new(),
            });
        }
        let _guard = InFlight(self.clone());
        let warm = self.pool.lock().expect("pool lock").pop();
        let mut warm = match warm {
            Some(w) => w,
            None => self.instantiate().await?,
        };
        let limits = &self.shared.limits;
        {
            let data = warm.store.data_mut();
            data.deadline = Instant::now() + limits.timeout;
            data.denials.clear();
            data.mark_output();
            data.limiter.hit = false;
            data.http_requests = 0;
            data.effects = 0;
            data.throttled = false;
        }
        warm.store.set_epoch_deadline(1);
        let store = &mut warm.store;
        let call_name = match &call {
            Call::Describe => "describe",
            Call::ValidateConfig(_) => "validate-config",
            Call::Send(_) => "send",
            Call::ParseWebhook(_) => "parse-webhook",
        };
        let result = match &warm.plugin {
            Bindings::V2(plugin) => {
                let connector = plugin.herald_channel_connector();
                match call {
                    Call::Describe => connector.call_describe(store).await.map(Answer::Describe),
                    Call::ValidateConfig(c) => connector
                        .call_validate_config(store, &c)
                        .await
                        .map(Answer::ValidateConfig),
                    Call::Send(m) => connector.call_send(store, &m).await.map(Answer::Send),
                    Call::ParseWebhook(r) => connector
                        .call_parse_webhook(store, &r)
                        .await
                        .map(Answer::ParseWebhook),
                }
            }
            Bindings::V1(plugin) => {
                let connector = plugin.herald_channel_connector();
                match call {
                    Call::Describe => connector
                        .call_describe(store)
                        .await
                        .map(|d| Answer::Describe(compat::description_from_v1(d))),
                    Call::ValidateConfig(c) => connector
                        .call_validate_config(store, &c)
                        .await
                        .map(Answer::ValidateConfig),
                    Call::Send(m) => connector
                        .call_send(store, &compat::outbound_to_v1(&m))
                        .await
                        .map(|r| Answer::Send(compat::sent_from_v1(r))),
                    Call::ParseWebhook(r) => connector
                        .call_parse_webhook(store, &compat::webhook_request_to_v1(&r))
                        .await
                        .map(|r| Answer::ParseWebhook(compat::events_from_v1(r))),
                }
            }
        };
        warm.store.data().log_output(call_name);
        match result {
            Ok(answer) => {
                let data = warm.store.data_mut();
                let notes = Notes {
                    denials: std::mem::take(&mut data.denials),
                    throttled: data.throttled,
                };
                let reusable = warm.store.data().stderr.contents().len() < STDERR_CAPACITY / 2
                    && warm.store.data().stdout.contents().len() < STDERR_CAPACITY / 2;
                if reusable {
                    let mut pool = self.pool.lock().expect("pool lock");
                    if pool.len() < limits.pool_size {
                        pool.push(warm);
                    }
                }
                Ok((answer, notes))
            }
            Err(e) => {
                let message = classify(&e, warm.store.data(), limits, "call");
                tracing::warn!(plugin = %self.shared.id, "plugin call stopped: {message}");
                // The trapped instance is dropped here; the next call gets a fresh one.
                Err(Failure {
                    message,
                    effects: warm.store.data().effects,
                    busy: false,
                    denials: std::mem::take(&mut warm.store.data_mut().denials),
                })
            }
        }
    }

    /// [`Inner::call`] from blocking code: runs on the host's runtime and waits.
    pub(crate) fn call_blocking(self: &Arc<Self>, call: Call) -> Result<(Answer, Notes), Failure> {
        let me = self.clone();
        self.io.block_on(me.call(call))
    }

    /// Number of warm instances currently pooled.
    pub(crate) fn pooled(&self) -> usize {
        self.pool.lock().expect("pool lock").len()
    }

    /// Drop all warm instances.
    pub(crate) fn clear_pool(&self) {
        self.pool.lock().expect("pool lock").clear();
    }
}

/// Turn a wasmtime error into a precise, operator-readable reason.
/// Lines of a guest's traceback kept in a call's error.
const TRACEBACK_LINES: usize = 30;
/// Bytes of a guest's traceback kept in a call's error.
const TRACEBACK_BYTES: usize = 4096;

fn classify(e: &wasmtime::Error, state: &HostState, limits: &CallLimits, phase: &str) -> String {
    if state.limiter.hit {
        return format!(
            "memory limit exceeded: the plugin tried to grow its memory beyond {} MiB during {phase} (raise it with `limits = {{ max_memory_mb = … }}` in the channel's table of herald.toml; Python and JavaScript runtimes need about 128)",
            limits.max_memory_bytes >> 20
        );
    }
    let stderr = state.stderr_text();
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "time limit exceeded: {phase} ran longer than {} ms and was interrupted (`limits = {{ timeout_ms = … }}` in the channel's table of herald.toml)",
            limits.timeout.as_millis()
        ),
        Some(Trap::UnreachableCodeReached) => abort_reason(&stderr),
        Some(trap) => format!("plugin trapped during {phase}: {trap}"),
        None => format!("plugin failed during {phase}: {e}"),
    }
}

/// Lines a guest runtime writes on its way down that say nothing about why.
const ABORT_NOISE: &[&str] = &["Redirecting call to abort() to mozalloc_abort"];

/// Why a guest aborted, from what it wrote to stderr: a Rust panic's message; or an uncaught
/// Python or JavaScript exception's message first, then its traceback, so the step's error
/// shows what was raised and where. (componentize-py ends an exception with a Rust panic of
/// its own, whose message only says that Python threw: the exception's is the line before.)
fn abort_reason(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !ABORT_NOISE.iter().any(|n| l.contains(n)))
        .collect();
    let panic_at = lines.iter().position(|l| l.contains("panicked at"));
    let traceback = |lines: &[&str]| {
        let last = lines.last().copied().unwrap_or_default();
        let tail = lines[lines.len().saturating_sub(TRACEBACK_LINES)..].join("\n");
        format!(
            "plugin aborted: {}\n{}",
            crate::state::clip(last, 1024),
            crate::state::clip(&tail, TRACEBACK_BYTES)
        )
    };
    match panic_at {
        Some(i) if lines[..i].iter().any(|l| l.starts_with("Traceback")) => traceback(&lines[..i]),
        Some(i) => match lines.get(i + 1) {
            Some(msg) => format!("plugin panicked: {msg}"),
            None => format!("plugin panicked: {}", lines[i]),
        },
        None if !lines.is_empty() => traceback(&lines),
        None => "plugin aborted (wasm `unreachable` executed)".to_string(),
    }
}

/// A loaded, checked plugin with a pool of warm instances. Cheap to share
/// between threads (`Send + Sync`); every call runs on its own instance.
pub struct LoadedPlugin {
    pub(crate) inner: Arc<Inner>,
    description: Description,
    manifest: Manifest,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("id", &self.description.id)
            .field("version", &self.description.version)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// The plugin's `describe()` answer, taken at load time.
    pub fn describe(&self) -> &Description {
        &self.description
    }

    /// The plugin's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of warm instances currently pooled (for metrics and tests).
    pub fn warm_instances(&self) -> usize {
        self.inner.pooled()
    }

    /// Drop every warm instance, so the next call instantiates afresh.
    pub fn clear_pool(&self) {
        self.inner.clear_pool()
    }

    /// Deliver a message or perform an operation, waiting for the answer. For
    /// async code, [`LoadedPlugin::send_async`] does the same without holding the thread.
    pub fn send(&self, req: &SendRequest) -> Result<SendOutcome, SendError> {
        let call = self.send_async(req);
        self.inner.io.block_on(call)
    }

    /// Deliver a message or perform an operation. The returned future owns what
    /// it needs (it may be spawned), and while the plugin waits on the network
    /// it holds no thread, only its instance.
    ///
    /// Errors the plugin reports are passed through; a trap, panic, timeout or
    /// memory-cap hit becomes [`SendError::Sandbox`]. A call in which the host
    /// refused a capability becomes [`SendError::Denied`] whatever the plugin
    /// answered (never retried). A trap *after* the plugin
    /// dispatched an HTTP request or SMTP submission becomes
    /// [`SendError::Ambiguous`] instead (message prefixed `sandbox:`), since
    /// the provider may have acted: the engine retries it with the same key
    /// only for idempotent plugins. A transient failure after the SMTP relay
    /// asked to slow down becomes [`SendError::RateLimited`]. A local rate
    /// limit or an active provider slow-down returns [`SendError::RateLimited`]
    /// without calling the plugin.
    pub fn send_async(
        &self,
        req: &SendRequest,
    ) -> impl std::future::Future<Output = Result<SendOutcome, SendError>> + Send + 'static {
        // Only a send the plugin cannot take pays for its message.
        let refusal =
            (!self.description.supports(req.operation.as_deref())).then(|| match &req.operation {
                Some(op) => format!("plugin `{}` has no operation `{op}`", self.description.id),
                None => format!("plugin `{}` does not deliver messages", self.description.id),
            });
        let inner = self.inner.clone();
        // Only the contact fields the manifest declares leave the host.
        let fields: serde_json::Map<String, serde_json::Value> = match &req.fields {
            serde_json::Value::Object(all) => self
                .manifest
                .contact_fields
                .iter()
                .filter_map(|k| all.get(k).map(|v| (k.clone(), v.clone())))
                .collect(),
            _ => Default::default(),
        };
        let msg = wit::Outbound {
            idempotency_key: req.idempotency_key.clone(),
            operation: req.operation.clone(),
            to: req.to.clone(),
            to_name: req.to_name.clone(),
            subject: req.subject.clone(),
            text: req.text.clone(),
            html: req.html.clone(),
            preheader: req.preheader.clone(),
            from: req.from.clone(),
            reply_to: req.reply_to.clone(),
            headers: req.headers.clone(),
            topic: req.topic.clone(),
            unsubscribe: req.unsubscribe.as_ref().map(|u| wit::Unsubscribe {
                url: u.url.clone(),
                one_click_url: u.one_click_url.clone(),
            }),
            tracking: wit::Tracking {
                opens: req.tracking.opens,
                clicks: req.tracking.clicks,
            },
            metadata: req.metadata.clone(),
            front_matter: json_or_empty(&req.front_matter),
            fields: serde_json::Value::Object(fields).to_string(),
            payload: json_or_empty(&req.payload),
        };
        async move {
            if let Some(refusal) = refusal {
                return Err(SendError::InvalidInput(refusal));
            }
            inner.rate.acquire()?;
            let (answer, notes) = inner
                .clone()
                .call(Call::Send(Box::new(msg)))
                .await
                .map_err(|f| {
                    if !f.denials.is_empty() {
                        // A plugin that traps after a refusal failed because of it.
                        SendError::Denied(f.denials.join("; "))
                    } else if f.busy {
                        SendError::RateLimited {
                            retry_after_ms: 50,
                            message: f.message,
                        }
                    } else if f.effects > 0 {
                        SendError::Ambiguous(format!(
                            "sandbox: {} (after {} outbound request(s): the outcome is unknown)",
                            f.message, f.effects
                        ))
                    } else {
                        SendError::Sandbox(f.message)
                    }
                })?;
            let Answer::Send(result) = answer else {
                unreachable!("send answers with a send result")
            };
            // A refused capability fails the send whatever the plugin made of it.
            if !notes.denials.is_empty() {
                return Err(SendError::Denied(notes.denials.join("; ")));
            }
            match result {
                Ok(sent) => {
                    inner.rate.on_success();
                    Ok(SendOutcome {
                        provider_message_id: sent.provider_message_id,
                        details: serde_json::from_str(&sent.details)
                            .unwrap_or(serde_json::Value::Null),
                    })
                }
                Err(wit::SendError::Transient(m)) if notes.throttled => {
                    inner.rate.on_rate_limited(SMTP_THROTTLE_PAUSE);
                    Err(SendError::RateLimited {
                        retry_after_ms: SMTP_THROTTLE_PAUSE.as_millis() as u64,
                        message: m,
                    })
                }
                Err(e) => Err(match e {
                    wit::SendError::InvalidInput(m) => SendError::InvalidInput(m),
                    wit::SendError::Unauthorized(m) => SendError::Unauthorized(m),
                    wit::SendError::RateLimited(r) => {
                        inner
                            .rate
                            .on_rate_limited(Duration::from_millis(r.retry_after_ms));
                        SendError::RateLimited {
                            retry_after_ms: r.retry_after_ms,
                            message: r.message,
                        }
                    }
                    wit::SendError::Transient(m) => SendError::Transient(m),
                    wit::SendError::Ambiguous(m) => SendError::Ambiguous(m),
                }),
            }
        }
    }

    /// Turn a provider callback into events. Blocking.
    pub fn parse_webhook(&self, req: &WebhookRequest) -> Result<Vec<WebhookEvent>, PluginError> {
        let wreq = wit::WebhookRequest {
            method: req.method.to_ascii_uppercase(),
            path: req.path.clone(),
            query: req.query.clone(),
            headers: req
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            body: req.body.clone(),
        };
        let result = match self.inner.call_blocking(Call::ParseWebhook(wreq)) {
            Ok((Answer::ParseWebhook(r), _)) => r,
            Ok(_) => unreachable!("parse-webhook answers with events"),
            Err(f) => return Err(PluginError::Sandbox(f.message)),
        };
        let events = result.map_err(PluginError::Webhook)?;
        Ok(events
            .into_iter()
            .map(|e| WebhookEvent {
                kind: event_kind_name(&e.kind).to_string(),
                bounce: match &e.kind {
                    wit::EventKind::Bounced(b) => Some(crate::types::Bounce {
                        kind: match b.kind {
                            wit::BounceKind::Hard => "hard",
                            wit::BounceKind::Soft => "soft",
                            wit::BounceKind::Undetermined => "undetermined",
                        }
                        .to_string(),
                        reason: b.reason.clone(),
                    }),
                    _ => None,
                },
                message_id: e.message_id,
                recipient: e.recipient,
                properties: serde_json::from_str(&e.properties)
                    .unwrap_or(serde_json::Value::Object(Default::default())),
                timestamp_ms: e.timestamp_ms,
                machine: e.machine,
            })
            .collect())
    }
}

fn json_or_empty(v: &serde_json::Value) -> String {
    if v.is_null() {
        "{}".to_string()
    } else {
        v.to_string()
    }
}

/// The Herald name of an event kind.
pub(crate) fn event_kind_name(k: &wit::EventKind) -> &'static str {
    match k {
        wit::EventKind::Delivered => "delivered",
        wit::EventKind::Bounced(_) => "bounced",
        wit::EventKind::Deferred => "deferred",
        wit::EventKind::Opened => "opened",
        wit::EventKind::Clicked => "clicked",
        wit::EventKind::Replied => "replied",
        wit::EventKind::Unsubscribed => "unsubscribed",
        wit::EventKind::Resubscribed => "resubscribed",
        wit::EventKind::Complained => "complained",
    }
}

#[cfg(test)]
mod abort_tests {
    use super::abort_reason;

    #[test]
    fn a_python_exception_under_componentize_py_is_named_by_its_own_message() {
        let stderr = "Traceback (most recent call last):\n  File \"app.py\", line 90, in send\n    \
                      reply = json.loads(body)\njson.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)\n\
                      thread '<unnamed>' panicked at src/lib.rs:1:1:\nPython function threw an unexpected exception\n";
        let reason = abort_reason(stderr);
        assert!(
            reason.starts_with("plugin aborted: json.decoder.JSONDecodeError: Expecting value"),
            "{reason}"
        );
        assert!(
            reason.contains("File \"app.py\", line 90, in send"),
            "{reason}"
        );
        assert!(!reason.contains("Python function threw"), "{reason}");
    }

    #[test]
    fn a_javascript_runtimes_last_words_do_not_hide_the_exception() {
        let stderr = "invalid variant tag value undefined (received SyntaxError: JSON.parse: unexpected character) specified for SendError\n\
                      Redirecting call to abort() to mozalloc_abort\n\n";
        let reason = abort_reason(stderr);
        assert!(
            reason.starts_with(
                "plugin aborted: invalid variant tag value undefined (received SyntaxError"
            ),
            "{reason}"
        );
    }

    #[test]
    fn a_rust_panic_is_named_by_its_message() {
        let stderr = "thread '<unnamed>' panicked at src/lib.rs:3:5:\nno subject\nnote: run with RUST_BACKTRACE=1\n";
        assert_eq!(abort_reason(stderr), "plugin panicked: no subject");
        assert_eq!(
            abort_reason(""),
            "plugin aborted (wasm `unreachable` executed)"
        );
    }
}
