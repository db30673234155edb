//! Error types.

use std::path::PathBuf;

/// Errors loading, inspecting or calling a plugin (other than `send`).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `plugin.toml` is missing, unparseable or inconsistent.
    #[error("invalid manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The wasm file does not match the manifest's `sha256`.
    #[error("sha256 mismatch for {path}: manifest says {expected}, file is {actual}")]
    Checksum {
        /// The wasm file.
        path: PathBuf,
        /// Manifest value.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// The file is not a valid Herald plugin component (precise reason inside).
    #[error("not a valid Herald plugin: {0}")]
    InvalidPlugin(String),
    /// The plugin targets an API version this host does not implement.
    #[error("plugin API version {found} is not supported by this host (supports {supported})")]
    ApiVersion {
        /// Version the plugin declares.
        found: String,
        /// Version the host implements.
        supported: String,
    },
    /// The plugin rejected the operator's configuration.
    #[error("configuration rejected by plugin `{plugin}`: {message}")]
    Config {
        /// Plugin id.
        plugin: String,
        /// The plugin's reason.
        message: String,
    },
    /// The plugin trapped, timed out, ran out of memory or was denied.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// The plugin rejected a webhook request.
    #[error("webhook rejected: {0}")]
    Webhook(String),
    /// The wasmtime engine could not be created or the component compiled.
    #[error("engine: {0}")]
    Engine(String),
}

/// Why a `send` failed. The engine maps each case to a policy: fail,
/// retry with backoff, slow down, or park.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The request can never succeed as is. Do not retry.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Credentials are wrong or missing. Do not retry; needs an operator.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Slow down and retry after `retry_after_ms`.
    #[error("rate limited (retry after {retry_after_ms} ms): {message}")]
    RateLimited {
        /// Delay before the next attempt.
        retry_after_ms: u64,
        /// Provider or host message.
        message: String,
    },
    /// Nothing was delivered; retry with backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// Outcome unknown; retry with the same key only if the plugin supports idempotency.
    #[error("ambiguous: {0}")]
    Ambiguous(String),
    /// The sandbox stopped the call: trap, panic, timeout or memory cap.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// The host refused a capability the call used (a host not allowed, a private address,
    /// an undeclared secret, SMTP without a relay): whatever the plugin answered, the send
    /// failed, and retrying cannot help until the operator changes the grant.
    #[error("denied: {0}")]
    Denied(String),
}

impl SendError {
    /// Whether the engine may retry this error (possibly after a delay).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SendError::RateLimited { .. } | SendError::Transient(_)
        )
    }
}
