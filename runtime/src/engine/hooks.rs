//! Test-only hooks, compiled only into test builds (`cargo test`, through the `test-hooks`
//! feature that the test crates enable with a dev-dependency); a release build has none.
//!
//! - `HERALD_FAILPOINT=<name>`: the process kills itself with SIGKILL when it reaches the named
//!   point (`before_intent`, `after_intent`, `after_send`, `after_event`), so crash tests hit
//!   the exact window they test. `ingest_mid_batch` kills it half-way through writing an ingest
//!   request's batch (the store's part: `store::sled_backend`).
//! - A worker panics on the event [`PANIC_EVENT`] (and on a manual start of a workflow of that
//!   name), and an activation after the first of a run of workflow [`PANIC_WORKFLOW`] panics:
//!   stand-ins for bugs, to test that nothing hangs on a panic.

/// An event the test build's worker panics on, standing in for a bug.
pub const PANIC_EVENT: &str = "test_worker_panic";
/// A workflow whose activations after the first panic in the test build.
pub const PANIC_WORKFLOW: &str = "test_activation_panic";

/// The failpoint named in `HERALD_FAILPOINT`, read once at start.
pub(super) fn failpoint_from_env() -> Option<String> {
    std::env::var("HERALD_FAILPOINT")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Kill the process with SIGKILL when `armed` names the point `name`.
pub(super) fn failpoint(armed: Option<&str>, name: &str) {
    if armed == Some(name) {
        tracing::warn!(failpoint = name, "failpoint reached: killing the process");
        // SAFETY: kill(2) on our own pid with SIGKILL has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
