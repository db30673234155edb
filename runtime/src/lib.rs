//! The Herald daemon as a library, laid out as its data flows:
//!
//! - [`http`]: the HTTP surface (ingest endpoints, management API, provider webhooks, probes);
//! - [`ingest`]: identity resolution, messageId dedupe ([`ingest::dedupe`]), the hand-off to
//!   the engine through the inbox, CSV import ([`ingest::import`]);
//! - [`store`]: the storage contract ([`store::Store`]), its records and the sled backend;
//! - [`engine`]: workers, timers, triggers, the run lifecycle, replay, effects and rendering;
//! - [`audience`]: segments, scoring, the per-contact behaviour index, backfills;
//! - [`delivery`]: per-channel queues by lane, concurrency and rate limits, the sends in
//!   flight; results go back to the contact's worker;
//! - [`consent`]: topics, consent and suppression records, the delivery policy every send
//!   passes, signed unsubscribe links;
//! - [`channels`]: the native channels and WebAssembly connectors messages leave through;
//! - [`reload`]: watching the project and swapping in a new version;
//! - [`daemon`]: the wiring of all of it into a running process.

pub mod analytics;
pub mod audience;
pub mod broadcast;
pub mod channels;
pub mod clock;
pub mod consent;
pub mod daemon;
pub mod delivery;
pub mod engagement;
pub mod engine;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod reload;
pub mod store;
pub mod sync;
pub mod trace;

/// `herald.toml`'s schema (the `herald-config` crate).
pub use herald_config as config;
/// Project loading and checking (the `herald-project` crate).
pub use herald_project as project;
/// Message templates (`herald-project`'s templates).
pub use herald_project::templates;
