//! # herald-plugin-host — sandboxed channel plugins for Herald
//!
//! Herald's channel connectors (email, SMS, social, ads, webhooks) are
//! WebAssembly components implementing the `herald:channel@0.2.0` WIT world
//! (`plugins/wit/channel.wit`); components built against `0.1.0` still load, adapted by
//! the host. This crate runs them under wasmtime:
//!
//! * one [`PluginHost`] per process: a single engine with the component model
//!   and epoch interruption, an epoch ticker thread, and an optional on-disk
//!   cache of compiled components (keyed by wasm digest and engine version);
//! * [`PluginHost::load`] checks `plugin.toml` (id, version, API version,
//!   sha256 of the wasm, allowed hosts, secret names, config schema), compiles,
//!   links against *only* the capabilities below, calls `describe` and
//!   `validate-config`, and returns a [`LoadedPlugin`];
//! * every call runs on a warm instance from a small per-plugin pool under a
//!   wall-clock timeout (epoch interruption + timeouts on blocking host
//!   calls) and a memory cap; a trapped instance is discarded;
//! * capabilities: HTTP to manifest-declared or operator-granted hosts only,
//!   public addresses only unless granted, secrets substituted by name on the
//!   way out and scrubbed on the way in; SMTP submission through the
//!   operator's relay ([`smtp_client`]: pooled persistent connections), each
//!   message DKIM-signed when the relay's grant configures a key ([`dkim`]);
//!   HMAC-SHA256 keyed by secret name; config lookup; structured logging.
//!   WASI is linked for `std` but grants nothing: no files, no environment,
//!   no sockets.
//!
//! [`HostOptions::pooling`] switches to wasmtime's pooling allocator, which
//! makes (re-)instantiation several times cheaper. [`GrantConfig`] is the
//! `herald.toml` form of a [`Grant`], with secrets referenced as `env:VAR` or
//! `file:PATH`. [`inspect`] explains what a `.wasm` file is.
//!
//! Calls are asynchronous: a plugin waiting on the network (an HTTP request, an
//! SMTP relay) holds no thread, only its instance. [`LoadedPlugin::send_async`]
//! is the call for async code; [`LoadedPlugin::send`] and the other blocking
//! calls run on the host's own small runtime and may be used from any thread.
#![warn(missing_docs)]

mod compat;
pub mod dkim;
mod error;
pub mod grant_config;
mod host;
mod inspect;
pub mod manifest;
pub mod net;
pub mod ratelimit;
pub mod smtp_client;
mod state;
mod types;

/// `wasmtime::component::bindgen!` output for the `herald:channel@0.2.0` `plugin` world, the
/// revision this host implements.
#[allow(missing_docs, clippy::all)]
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
}

/// The same for `herald:channel@0.1.0`, whose components the host still loads ([`compat`]).
#[allow(missing_docs, clippy::all)]
pub(crate) mod bindings_v1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/0.1.0",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use dkim::{DkimAlgorithm, DkimSigner};
pub use error::{PluginError, SendError};
pub use grant_config::{GrantConfig, GrantConfigExt};
pub use host::{HostOptions, LoadedPlugin, PluginHost, PoolingOptions};
pub use inspect::{inspect, inspect_with_cache, pack, Compiled, InspectReport};
pub use manifest::check_config_schema;

/// The user's cache directory for compiled components (`$XDG_CACHE_HOME/herald/plugin-cache`,
/// else `~/.cache/herald/plugin-cache`), for commands run outside a project's data directory.
pub fn user_cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .map(|d| d.join("herald").join("plugin-cache"))
}
pub use manifest::{Manifest, API_VERSION, SUPPORTED_API_VERSIONS};
pub use types::{
    Bounce, CallLimits, Description, Grant, Operation, SendOutcome, SendRequest, SmtpRelay,
    SmtpSecurity, Tracking, Unsubscribe, WebhookEvent, WebhookRequest,
};

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn loaded_plugin_is_send_sync() {
        assert_send_sync::<crate::LoadedPlugin>();
        assert_send_sync::<crate::PluginHost>();
    }
}
