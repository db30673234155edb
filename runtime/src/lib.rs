//! The Herald daemon: storage, the durable workflow engine, the ingest and management APIs.

pub mod api;
pub mod audience;
pub mod behaviour;
pub mod channels;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dedupe;
pub mod engine;
pub mod import;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod project;
pub mod store;
pub mod templates;
pub mod watch;
