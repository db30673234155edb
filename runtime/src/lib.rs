//! The Herald daemon: storage, the durable workflow engine, the ingest and management APIs.

pub mod api;
pub mod audience;
pub mod behaviour;
pub mod channels;
pub mod clock;
pub mod daemon;
pub mod dedupe;
pub mod engine;
pub mod import;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod store;
pub mod sync;
pub mod watch;

/// `herald.toml`'s schema (the `herald-config` crate).
pub use herald_config as config;
/// Project loading and checking (the `herald-project` crate).
pub use herald_project as project;
/// Message templates (`herald-project`'s templates).
pub use herald_project::templates;
