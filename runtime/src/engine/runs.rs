//! The run lifecycle: recovery at start, counts by status, activation (replaying the script
//! against its journal), settling ambiguous steps, finishing and what follows a completion.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// Re-queue what a crash left behind: queued events, and runs caught mid-activation.
    pub(super) fn recover(&self) -> Result<(), EngineError> {
        let inbox = self.store.inbox()?;
        if !inbox.is_empty() {
            tracing::info!(count = inbox.len(), "re-queueing accepted events");
        }
        for (key, items) in inbox {
            let ticket = Ticket::new(key, items.len());
            self.submit_events(
                items
                    .into_iter()
                    .map(|item| Queued {
                        item,
                        event: None,
                        ticket: ticket.clone(),
                    })
                    .collect(),
            );
        }
        // Sends the last process queued: those it never started go out again; those it may
        // have started are the ambiguous window. Runs already parked for an operator stay
        // quiet: they were reported when they parked.
        let (mut requeued, mut parked, mut answered) = (0usize, 0usize, 0usize);
        for (key, intent) in self.store.intents()? {
            let Some(run) = self.store.run(&intent.run)? else {
                continue;
            };
            if run.status == RunStatus::Parked {
                parked += 1;
                continue;
            }
            if intent.dispatched_at.is_none() {
                requeued += 1;
            } else if intent.answered.is_some() {
                answered += 1;
            } else {
                tracing::warn!(
                    key,
                    run = intent.run,
                    step = intent.step,
                    channel = intent.channel,
                    "effect in the ambiguous window at start-up"
                );
            }
            self.send_job(&run.contact, Job::Activate(TimerTarget::Run(run.id), None))?;
        }
        if requeued > 0 {
            tracing::info!(count = requeued, "re-queueing sends that had not started");
        }
        if answered > 0 {
            tracing::info!(
                count = answered,
                "recording sends the provider had accepted before the process stopped"
            );
        }
        if parked > 0 {
            tracing::info!(
                count = parked,
                "runs parked on an ambiguous send wait for an operator (GET /v1/runs?status=parked)"
            );
        }
        Ok(())
    }

    /// Count stored runs by status for the metrics gauges (at start, before any work), and
    /// resume runs a crash left running. After a clean shutdown no run is running and the
    /// counts come from its checkpoint, so nothing is scanned.
    pub(crate) fn count_runs(&self) -> Result<(), EngineError> {
        if let Some(saved) = self.store.checkpoint().and_then(|c| c.take_runs()) {
            if saved.get(RunStatus::Running.as_str()).copied().unwrap_or(0) == 0 {
                let counts = RunStatus::ALL
                    .into_iter()
                    .filter_map(|s| saved.get(s.as_str()).map(|n| (s.as_str(), *n)))
                    .collect();
                self.metrics.set_run_counts(counts);
                tracing::info!(
                    "run, contact and timer counts restored from the shutdown checkpoint"
                );
                return Ok(());
            }
        }
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut running = Vec::new();
        self.store.scan_runs(&mut |r| {
            *counts.entry(r.status.as_str()).or_default() += 1;
            if r.status == RunStatus::Running {
                running.push((r.id.clone(), r.contact.clone()));
            }
            true
        })?;
        self.metrics.set_run_counts(counts);
        for (id, contact) in running {
            let _ = self.send_job(&contact, Job::Activate(TimerTarget::Run(id), None));
        }
        Ok(())
    }

    pub(super) fn resolve_inner(
        &self,
        run_id: &str,
        seq: u32,
        delivered: bool,
    ) -> Result<(), String> {
        let run = self
            .store
            .run(run_id)
            .map_err(|e| e.to_string())?
            .ok_or("no such run")?;
        if run.status != RunStatus::Parked {
            return Err(format!(
                "run {run_id} is {}, not parked",
                run.status.as_str()
            ));
        }
        let journal = self.store.journal(run_id).map_err(|e| e.to_string())?;
        let mut step = journal.get(seq as usize).cloned().ok_or("no such step")?;
        if !matches!(step.status, StepStatus::Ambiguous | StepStatus::Intent) {
            return Err(format!("step {seq} is not ambiguous"));
        }
        let now = self.clock.now_ms();
        if delivered {
            step.status = StepStatus::Done;
            step.result = json!({"message_id": step.idempotency_key, "resolved_by": "operator"});
            step.finished_at = Some(now);
        } else {
            step.status = StepStatus::Retrying;
            step.due_at = Some(now);
        }
        step.error = None;
        self.store
            .put_step(run_id, &step)
            .map_err(|e| e.to_string())?;
        if let Some(key) = &step.idempotency_key {
            self.store.remove_intent(key).map_err(|e| e.to_string())?;
        }
        let mut run = run;
        run.status = RunStatus::Waiting;
        run.reason = None;
        self.store.put_run(&run).map_err(|e| e.to_string())?;
        self.metrics
            .run_status(Some(RunStatus::Parked), RunStatus::Waiting);
        self.activate(run_id).map_err(|e| e.to_string())
    }

    /// Run one activation of a run.
    pub(super) fn activate(&self, run_id: &str) -> Result<(), EngineError> {
        self.activate_fired(run_id, None)
    }

    /// Activate a run; `fired`: the due time of the timer that woke it, if one did. A fired
    /// timer the run no longer waits on (left by a failed write) goes, so it fires once, not
    /// again and again.
    pub(super) fn activate_fired(
        &self,
        run_id: &str,
        fired: Option<i64>,
    ) -> Result<(), EngineError> {
        let run = self.store.run(run_id)?;
        self.activate_run(run_id, run, fired, None)
    }

    /// The first activation of a run just created (nothing of it to read back: no journal).
    pub(super) fn activate_new(&self, run: Run) -> Result<(), EngineError> {
        let id = run.id.clone();
        self.activate_run(&id, Some(run), None, Some(Vec::new()))
    }

    /// Activate `run` as read (`journal`: its journal, when known without a read).
    fn activate_run(
        &self,
        run_id: &str,
        run: Option<Run>,
        fired: Option<i64>,
        journal: Option<Vec<crate::model::Step>>,
    ) -> Result<(), EngineError> {
        let waits_on = run
            .as_ref()
            .filter(|r| !r.status.is_terminal())
            .and_then(|r| r.wake_at);
        if let Some(due) = fired.filter(|d| waits_on != Some(*d)) {
            self.store
                .clear_timer(due, &TimerTarget::Run(run_id.to_string()))?;
        }
        let Some(mut run) = run else {
            return Ok(());
        };
        if run.status.is_terminal() {
            return Ok(());
        }
        let woke_at = run.wake_at.take();
        if run.status != RunStatus::Running {
            // Marked running before anything of the activation is written: a crash in the
            // middle leaves a run the next start resumes, never one that waits on a timer or
            // a send already gone.
            let before = run.status;
            run.status = RunStatus::Running;
            self.store.put_run(&run)?;
            self.metrics.run_status(Some(before), RunStatus::Running);
        }
        if let Some(t) = woke_at {
            self.store
                .clear_timer(t, &TimerTarget::Run(run.id.clone()))?;
        }
        let from = run.status;
        let started = Instant::now();
        let workflow = match self.version(&run.script_hash) {
            Ok(w) => w,
            Err(msg) => {
                self.finish(&mut run, from, RunStatus::Parked, Some(msg), None)?;
                return Ok(());
            }
        };
        let journal = match journal {
            Some(j) => j,
            None => self.store.journal(&run.id)?,
        };
        let state = RunState {
            now: self.clock.now_ms(),
            snapshot: run.start_contact.clone(),
            run: run.clone(),
            journal,
            cursor: 0,
            wake: None,
            logs: Vec::new(),
            store_error: None,
            label: None,
            step_label: None,
        };
        let shared = Rc::new(RefCell::new(state));
        let me = self
            .me
            .get()
            .and_then(|w| w.upgrade())
            .ok_or(EngineError::Stopped)?;
        let host: Box<dyn Host> = Box::new(RunHost {
            engine: me,
            state: shared.clone(),
        });
        // A panic under the script (a bug in a host function, most likely) parks the run with
        // the panic as its reason; `with_host` unbinds the host however the call ends.
        let end = match self.guard(
            || format!("activation of run {}", run.id),
            || {
                with_host(host, || {
                    #[cfg(any(test, feature = "test-hooks"))]
                    if run.workflow == hooks::PANIC_WORKFLOW && run.activations > 0 {
                        panic!("injected by a test");
                    }
                    run_activation(&self.rhai, &workflow.ast, &run.trigger, &self.limits)
                })
                .0
            },
        ) {
            Ok(end) => end,
            Err(panic) => {
                ActivationEnd::Parked(format!("internal error: the activation panicked: {panic}"))
            }
        };
        let state = Rc::try_unwrap(shared)
            .map_err(|_| EngineError::Invalid("host still referenced".into()))?
            .into_inner();
        self.metrics
            .activation(started.elapsed().as_micros() as u64);
        run.activations += 1;
        run.failed_activations = 0;
        run.logs.extend(state.logs);
        let excess = run.logs.len().saturating_sub(50);
        run.logs.drain(..excess);
        if let Some(e) = state.store_error {
            return Err(EngineError::Store(e));
        }
        match end {
            ActivationEnd::Completed => {
                self.finish(&mut run, from, RunStatus::Completed, None, None)?;
                self.after_completion(&run)?;
            }
            ActivationEnd::Suspended => {
                if let Some(due) = state.wake {
                    self.set_run_timer(&mut run, due)?;
                    if due <= self.clock.now_ms() {
                        self.timer_wake.notify_one();
                    }
                }
                self.finish(&mut run, from, RunStatus::Waiting, None, None)?;
            }
            ActivationEnd::Exited(reason) => {
                self.cancel_pending(&mut run)?;
                self.finish(
                    &mut run,
                    from,
                    RunStatus::Exited,
                    Some(reason).filter(|r| !r.is_empty()),
                    None,
                )?;
            }
            ActivationEnd::Parked(reason) => {
                tracing::warn!(run = run.id, reason, "run parked");
                self.finish(&mut run, from, RunStatus::Parked, Some(reason), None)?;
            }
            ActivationEnd::Failed { message, line, .. } => {
                tracing::warn!(
                    run = run.id,
                    workflow = run.workflow,
                    line,
                    message,
                    "run failed"
                );
                self.cancel_pending(&mut run)?;
                self.finish(&mut run, from, RunStatus::Failed, Some(message), line)?;
            }
        }
        Ok(())
    }

    pub(super) fn finish(
        &self,
        run: &mut Run,
        from: RunStatus,
        to: RunStatus,
        reason: Option<String>,
        line: Option<usize>,
    ) -> Result<(), EngineError> {
        run.status = to;
        run.reason = reason;
        run.error_line = line;
        run.updated_at = self.clock.now_ms();
        // How it first ended stays (a later conversion or retry does not change it).
        if matches!(
            to,
            RunStatus::Completed | RunStatus::Exited | RunStatus::Failed
        ) && run.ended.is_none()
        {
            run.ended = Some((to, run.updated_at));
        }
        self.store.put_run(run)?;
        if from != to {
            self.metrics.run_status(Some(from), to);
        }
        Ok(())
    }

    pub(super) fn after_completion(&self, run: &Run) -> Result<(), EngineError> {
        let state = self.state();
        let chained: Vec<_> = state
            .workflows
            .values()
            .filter(|wf| {
                wf.loaded.decl.triggers.iter().any(
                    |t| matches!(t, Trigger::WorkflowCompleted { workflow } if *workflow == run.workflow),
                )
            })
            .collect();
        // Most runs start nothing: the contact is read only when one does.
        if chained.is_empty() {
            return Ok(());
        }
        let Some(contact) = self.live_contact(&run.contact)? else {
            return Ok(());
        };
        for wf in chained {
            let trigger = json!({"type": "workflow_completed", "event": "workflow_completed",
                "properties": {"workflow": run.workflow, "run": run.id}, "timestamp": self.clock.now_ms()});
            self.start_run(
                wf,
                &contact,
                trigger,
                format!("{}-after-{}", wf.loaded.decl.name, run.id),
                true,
            )?;
        }
        Ok(())
    }
}
