//! What operators do to sends: settle ambiguous ones in bulk, list the sends that failed for
//! good (the dead letters) and send them again.

#[allow(unused_imports)]
use super::*;

/// Which ambiguous sends a bulk resolve settles.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkResolve {
    /// The channel.
    pub channel: String,
    /// Only intents recorded at or after this time (ms since the epoch).
    #[serde(default)]
    pub since: Option<i64>,
    /// Only intents recorded before this time.
    #[serde(default)]
    pub until: Option<i64>,
    /// Record them as delivered (true) or send them again (false).
    pub delivered: bool,
    /// Only list what would be settled.
    #[serde(default)]
    pub dry_run: bool,
}

/// One send a bulk resolve matched.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Matched {
    /// The run.
    pub run: String,
    /// The journal step.
    pub step: u32,
    /// The run's contact.
    pub contact: String,
    /// When the intent was recorded.
    pub at: i64,
    /// Whether it was settled (false on a dry run, or with the reason it could not be).
    pub resolved: bool,
    /// Why it could not be settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A send that failed for good.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// The run (failed).
    pub run: String,
    /// The workflow.
    pub workflow: String,
    /// The contact.
    pub contact: String,
    /// The journal step.
    pub step: u32,
    /// The channel.
    pub channel: String,
    /// `send` or `action`.
    pub kind: String,
    /// The step's name (`email:welcome`, …).
    pub name: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: Option<String>,
    /// When it failed.
    pub failed_at: Option<i64>,
}

impl Engine {
    /// Settle the ambiguous sends of a channel in a time range: the intents left by a crash
    /// whose runs are parked. Parked runs keep their intents, so this reads the intents, not
    /// every run.
    pub fn resolve_bulk(&self, req: &BulkResolve) -> Result<Vec<Matched>, EngineError> {
        let mut matched = Vec::new();
        for (_, intent) in self.store.intents()? {
            if intent.channel != req.channel
                || req.since.is_some_and(|s| intent.at < s)
                || req.until.is_some_and(|u| intent.at >= u)
            {
                continue;
            }
            let Some(run) = self.store.run(&intent.run)? else {
                continue;
            };
            if run.status != RunStatus::Parked {
                continue;
            }
            let ambiguous = self
                .store
                .journal(&run.id)?
                .get(intent.step as usize)
                .is_some_and(|s| matches!(s.status, StepStatus::Ambiguous | StepStatus::Intent));
            if !ambiguous {
                continue;
            }
            let mut m = Matched {
                run: run.id.clone(),
                step: intent.step,
                contact: run.contact.clone(),
                at: intent.at,
                resolved: false,
                error: None,
            };
            if !req.dry_run {
                match self.resolve_step(&run, intent.step, req.delivered) {
                    Ok(()) => m.resolved = true,
                    Err(e) => m.error = Some(e.to_string()),
                }
            }
            matched.push(m);
        }
        matched.sort_by(|a, b| (a.at, &a.run).cmp(&(b.at, &b.run)));
        Ok(matched)
    }

    /// Sends that failed for good: failed runs whose failing step is a send or an action,
    /// newest first, optionally of one channel.
    pub fn dead_letters(
        &self,
        channel: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, EngineError> {
        let mut failed = Vec::new();
        self.store.scan_runs(&mut |r| {
            if r.status == RunStatus::Failed {
                failed.push(r);
            }
            true
        })?;
        let mut out = Vec::new();
        for run in failed {
            let journal = self.store.journal(&run.id)?;
            let Some(step) = journal
                .iter()
                .rev()
                .find(|s| s.status == StepStatus::Failed)
            else {
                continue;
            };
            if step.idempotency_key.is_none() {
                continue;
            }
            let ch = step
                .input
                .get("channel")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if channel.is_some_and(|c| c != ch) {
                continue;
            }
            out.push(DeadLetter {
                run: run.id.clone(),
                workflow: run.workflow.clone(),
                contact: run.contact.clone(),
                step: step.seq,
                channel: ch,
                kind: step.kind.clone(),
                name: step.name.clone(),
                attempts: step.attempts,
                error: step.error.clone(),
                failed_at: step.finished_at,
            });
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.failed_at));
        out.truncate(limit);
        Ok(out)
    }

    /// Send a dead letter again: its run goes back to waiting and the failed step is sent as a
    /// new series of attempts. Runs on the contact's worker.
    pub fn retry_dead_letter(&self, run: &Run) -> Result<(), EngineError> {
        let (tx, rx) = mpsc::channel();
        self.send_job(
            &run.contact,
            Job::Retry {
                run: run.id.clone(),
                reply: tx,
            },
        )?;
        rx.recv().map_err(|_| EngineError::Stopped)?
    }

    pub(super) fn retry_inner(&self, run_id: &str) -> Result<(), String> {
        // A broadcast's progress counted this run as ended.
        self.broadcaster.forget_progress();
        let mut run = self
            .store
            .run(run_id)
            .map_err(|e| e.to_string())?
            .ok_or("no such run")?;
        if run.status != RunStatus::Failed {
            return Err(format!(
                "run {run_id} is {}, not failed",
                run.status.as_str()
            ));
        }
        let journal = self.store.journal(run_id).map_err(|e| e.to_string())?;
        let Some(mut step) = journal.last().cloned() else {
            return Err(format!("run {run_id} has no steps"));
        };
        if step.status != StepStatus::Failed || step.idempotency_key.is_none() {
            return Err(format!("run {run_id} did not fail on a send or an action"));
        }
        let now = self.clock.now_ms();
        step.status = StepStatus::Retrying;
        step.attempts = 0;
        step.due_at = Some(now);
        run.status = RunStatus::Waiting;
        run.reason = None;
        run.error_line = None;
        run.updated_at = now;
        let mut batch = WriteBatch::new();
        batch
            .push(Write::Step {
                run: run.id.clone(),
                step,
            })
            .push(Write::Run(run.clone()));
        self.store.apply(&batch).map_err(|e| e.to_string())?;
        self.metrics
            .run_status(Some(RunStatus::Failed), RunStatus::Waiting);
        tracing::info!(run = run_id, "dead letter sent again by an operator");
        self.activate(run_id).map_err(|e| e.to_string())
    }
}
