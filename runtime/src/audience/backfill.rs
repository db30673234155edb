//! Segment backfills: when a segment is new or its definition changed, every stored contact
//! is evaluated against it in the background, without pausing ingest.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;

use crate::engine::{Engine, EngineError, Job, ProjectState};
use crate::sync::LockExt as _;

/// Progress of segment backfills.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillStatus {
    /// Segments being (or last) backfilled.
    pub segments: Vec<String>,
    /// Contacts queued so far.
    pub done: u64,
    /// Contacts to evaluate.
    pub total: u64,
    /// Whether a backfill is running.
    pub running: bool,
    /// When the last backfill started and finished (ms).
    pub started_at: Option<i64>,
    /// Finished.
    pub finished_at: Option<i64>,
}

/// Evaluate changed segments over every stored contact in the background, without pausing
/// ingest: contacts are queued to their workers in chunks.
pub(crate) fn start(engine: &Arc<Engine>) {
    let state = engine.state();
    let mut changed = BTreeSet::new();
    for (name, seg) in &state.segments {
        let key = format!("segment:{name}");
        if engine.store.meta(&key).ok().flatten().as_deref() != Some(seg.hash.as_str()) {
            changed.insert(name.clone());
        }
    }
    if changed.is_empty() {
        return;
    }
    let engine = engine.clone();
    std::thread::Builder::new()
        .name("herald-backfill".into())
        .spawn(move || {
            if let Err(e) = run(&engine, changed, state) {
                tracing::error!(error = %e, "segment backfill failed");
            }
        })
        .expect("spawn backfill");
}

/// Queue every stored contact for an evaluation of `segments`, a chunk at a time, then
/// record the backfilled versions.
fn run(
    engine: &Engine,
    segments: BTreeSet<String>,
    state: Arc<ProjectState>,
) -> Result<(), EngineError> {
    let total = engine.store.contact_count()? as u64;
    let started = engine.clock.now_ms();
    *engine.backfill.locked() = BackfillStatus {
        segments: segments.iter().cloned().collect(),
        done: 0,
        total,
        running: true,
        started_at: Some(started),
        finished_at: None,
    };
    tracing::info!(?segments, contacts = total, "segment backfill started");
    let mut after: Option<String> = None;
    let mut done = 0u64;
    loop {
        let ids = engine.store.contact_ids(after.as_deref(), 2000)?;
        if ids.is_empty() {
            break;
        }
        for id in &ids {
            engine.send_job(id, Job::Audience(id.clone(), Some(segments.clone())))?;
        }
        done += ids.len() as u64;
        after = ids.last().cloned();
        // Bound the queues: wait for this chunk before queueing the next.
        engine.barrier();
        engine.backfill.locked().done = done;
        if done % 100_000 < 2000 {
            tracing::info!(done, total, "segment backfill progress");
        }
    }
    for name in &segments {
        if let Some(seg) = state.segments.get(name) {
            engine
                .store
                .put_meta(&format!("segment:{name}"), &seg.hash)?;
        }
    }
    let _ = engine.flusher.commit_blocking();
    let mut b = engine.backfill.locked();
    b.running = false;
    b.done = done;
    b.finished_at = Some(engine.clock.now_ms());
    tracing::info!(?segments, contacts = done, "segment backfill finished");
    Ok(())
}
