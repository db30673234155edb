//! Herald's workflow DSL.
//!
//! This crate owns everything about Herald scripts that does not touch the outside world:
//! the sandboxed Rhai [`Engine`](rhai::Engine) (built by [`build_engine`], shared by the daemon
//! and the language server so they never disagree), the DSL surface registered on it, the
//! workflow declaration model, static analysis and ariadne-rendered diagnostics.
//!
//! The crate performs no IO. Step functions (`send`, `wait`, …) delegate to a [`Host`] that the
//! runtime binds for the duration of one activation with [`with_host`].

pub mod analysis;
pub mod api;
pub mod decl;
pub mod diagnostic;
pub mod engine;
pub mod host;
pub mod native;
pub mod segment;
pub mod template;
pub mod value;

pub use analysis::{
    check_broadcast, check_script, load_workflow, BroadcastReport, LoadedWorkflow, ProjectContext,
};
pub use api::{DslFunction, DSL_FUNCTIONS};
pub use decl::{
    BroadcastSpec, Goal, Priority, Reentry, RuleCondition, RuleDecl, ScoringDecl, SegmentDecl,
    SendAt, Trigger, WinnerRule, WorkflowDecl, WINNER_METRICS,
};
pub use diagnostic::{render_diagnostics, Diagnostic, Severity};
pub use engine::{build_engine, run_activation, ActivationEnd, Limits};
pub use host::{label_problem, with_host, Host, Interrupt, Query, StepCall, WaitTarget};
pub use segment::{
    check_scoring, check_segment, evaluate_segment, LoadedScoring, LoadedSegment, SegmentDeps,
};
