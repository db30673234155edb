//! What an event sets off: waits it satisfies, goals it reaches, runs it starts (re-entry
//! rules), manual starts.

#[allow(unused_imports)]
use super::*;

impl Engine {
    pub(crate) fn live_contact(&self, id: &str) -> Result<Option<Contact>, StoreError> {
        let mut id = id.to_string();
        for _ in 0..16 {
            match self.store.contact(&id)? {
                Some(c) => match &c.merged_into {
                    Some(next) => id = next.clone(),
                    None => return Ok(Some(c)),
                },
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The live contact `id` leads to, with its contact stripe locked: the contact read after
    /// the lock is taken, and still live (not merged away meanwhile).
    pub(crate) fn locked_live_contact(
        &self,
        id: &str,
    ) -> Result<Option<(crate::sync::Stripes<'_>, Contact)>, StoreError> {
        loop {
            let Some(found) = self.live_contact(id)? else {
                return Ok(None);
            };
            let guard = self.contact_locks.contacts([found.id.as_str()]);
            match self.store.contact(&found.id)? {
                Some(c) if c.merged_into.is_none() => return Ok(Some((guard, c))),
                // Merged (or erased) between the read and the lock: look again.
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    pub(super) fn process_event_inner(
        &self,
        item: &InboxItem,
        event: Option<Box<Event>>,
    ) -> Result<(), EngineError> {
        let Some(contact) = self.live_contact(&item.contact)? else {
            return Ok(());
        };
        let event = match event {
            Some(e) => *e,
            None => match self.store.event(&contact.id, item.event_seq)? {
                Some(e) => e,
                None => match self.store.event(&item.contact, item.event_seq)? {
                    Some(e) => e,
                    None => return Ok(()),
                },
            },
        };
        let (waited, goal) = {
            let w = self.waited.read_locked();
            (
                w.0.as_ref().is_none_or(|n| n.contains(&event.event)),
                w.1.as_ref().is_none_or(|n| n.contains(&event.event)),
            )
        };
        // 1. Runs waiting for this event.
        let waits = if waited {
            self.store.waits(&contact.id, &event.event)?
        } else {
            Vec::new()
        };
        for w in waits {
            if herald_dsl::decl::matches_filter(&w.filter, &event.properties) {
                self.resolve_wait(&contact, &w, &event)?;
            }
        }
        // 2. Goals of runs in flight, and of runs that completed within their goal's window
        //    (a broadcast's run completes once its message is sent; its goal comes later).
        let runs = if goal {
            self.store.runs_of_contact(&contact.id)?
        } else {
            Vec::new()
        };
        let mut converting = Vec::new();
        for run in runs {
            if run.status.is_terminal() && run.status != RunStatus::Completed {
                continue;
            }
            let Ok(wf) = self.version(&run.script_hash) else {
                continue;
            };
            if let Some(goal) = &wf.decl.goal {
                if goal.event == event.event
                    && event.timestamp.max(event.received_at) - run.created_at <= goal.window_ms
                {
                    converting.push(run);
                }
            }
        }
        // One goal event's credit is shared among the runs it converts, by the declared
        // model, so the workflows' and broadcasts' attributed conversions add up to one.
        let credits = self.credits(&converting)?;
        for (run, credit) in converting.into_iter().zip(credits) {
            self.convert(run, &event, credit)?;
        }
        // 3. Triggers.
        let state = self.state();
        for wf in state.workflows.values() {
            if wf.loaded.decl.triggered_by(&event.event, &event.properties) {
                let run_id = format!("{}-{:016x}", wf.loaded.decl.name, event.seq);
                self.start_run(wf, &contact, event.script_value(), run_id, true)?;
            }
        }
        // 4. Score and segments.
        crate::audience::Audience::new(self).evaluate_contact(contact, Some(&event), None)?;
        Ok(())
    }

    pub(super) fn resolve_wait(
        &self,
        contact: &Contact,
        w: &WaitReg,
        event: &Event,
    ) -> Result<(), EngineError> {
        let journal = self.store.journal(&w.run)?;
        if let Some(step) = journal.get(w.step as usize) {
            if step.status == StepStatus::Pending && step.kind == "wait_for" {
                let mut step = step.clone();
                step.status = StepStatus::Done;
                step.result = event.script_value();
                step.contact = Some(self.snapshot_of(contact));
                step.finished_at = Some(self.clock.now_ms());
                self.store.put_step(&w.run, &step)?;
            }
        }
        self.store.remove_wait(&contact.id, &event.event, &w.run)?;
        self.activate(&w.run)
    }

    /// Each converting run's share (thousandths) of one goal event's credit: by the time of
    /// its last (or first) message sent, or evenly (`[analytics] attribution`). Runs that
    /// sent nothing get credit only when none of them did.
    fn credits(&self, runs: &[Run]) -> Result<Vec<u32>, EngineError> {
        if runs.len() <= 1 {
            return Ok(vec![1000; runs.len()]);
        }
        let model = self.state().attribution;
        let mut touches = Vec::with_capacity(runs.len());
        for r in runs {
            let sent: Vec<i64> = self
                .store
                .journal(&r.id)?
                .iter()
                .filter(|s| {
                    s.kind == "send"
                        && s.status == StepStatus::Done
                        && s.result.get("status").and_then(Value::as_str) == Some("sent")
                })
                .filter_map(|s| s.finished_at)
                .collect();
            touches.push(match model {
                herald_config::Attribution::FirstTouch => sent.iter().min().copied(),
                _ => sent.iter().max().copied(),
            });
        }
        let any = touches.iter().any(Option::is_some);
        let eligible: Vec<bool> = touches.iter().map(|t| t.is_some() || !any).collect();
        let n = eligible.iter().filter(|e| **e).count().max(1) as u32;
        Ok(match model {
            herald_config::Attribution::Even => {
                // Thousandths that add up to 1000: the remainder to the first ones.
                let (each, mut rest) = (1000 / n, 1000 % n);
                eligible
                    .iter()
                    .map(|e| {
                        if !e {
                            return 0;
                        }
                        let extra = u32::from(rest > 0);
                        rest = rest.saturating_sub(1);
                        each + extra
                    })
                    .collect()
            }
            m => {
                let key = |i: usize| touches[i].unwrap_or(runs[i].created_at);
                let pick = (0..runs.len())
                    .filter(|i| eligible[*i])
                    .reduce(|a, b| {
                        let better = match m {
                            herald_config::Attribution::FirstTouch => key(b) < key(a),
                            _ => key(b) > key(a),
                        };
                        if better {
                            b
                        } else {
                            a
                        }
                    })
                    .unwrap_or(0);
                (0..runs.len())
                    .map(|i| if i == pick { 1000 } else { 0 })
                    .collect()
            }
        })
    }

    pub(super) fn convert(
        &self,
        mut run: Run,
        event: &Event,
        credit: u32,
    ) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        run.credit = Some(credit);
        self.cancel_pending(&mut run)?;
        let from = run.status;
        run.status = RunStatus::Converted;
        run.converted_at = Some(now);
        // A run still on its way ends here (one that had ended keeps how it ended).
        run.ended.get_or_insert((RunStatus::Converted, now));
        // Segment's `revenue` (a number, or a numeric string) in `currency` (default USD).
        let p = &event.properties;
        let amount = p.get("revenue").and_then(|r| {
            r.as_f64()
                .or_else(|| r.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
        });
        run.revenue = amount.filter(|a| a.is_finite() && a.abs() < 1e13).map(|a| {
            let currency = p
                .get("currency")
                .and_then(Value::as_str)
                .map(|c| c.trim().to_ascii_uppercase())
                .filter(|c| c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()))
                .unwrap_or_else(|| "USD".into());
            ((a * 100.0).round() as i64, currency)
        });
        run.updated_at = now;
        self.store.put_run(&run)?;
        self.metrics.run_status(Some(from), RunStatus::Converted);
        self.metrics.conversion(&run.workflow);
        tracing::debug!(run = run.id, workflow = run.workflow, "goal reached");
        Ok(())
    }

    /// Drop the timer and wait registration of a run that will not be activated again.
    pub(super) fn cancel_pending(&self, run: &mut Run) -> Result<(), EngineError> {
        if let Some(t) = run.wake_at.take() {
            self.store
                .clear_timer(t, &TimerTarget::Run(run.id.clone()))?;
        }
        if let Some(last) = self.store.journal(&run.id)?.last() {
            if last.kind == "wait_for" && last.status == StepStatus::Pending {
                self.store.remove_wait(&run.contact, &last.name, &run.id)?;
            }
        }
        Ok(())
    }

    pub(super) fn start_manual_inner(
        &self,
        workflow: &str,
        contact: &str,
        properties: Value,
    ) -> Result<String, String> {
        let state = self.state();
        let wf = state
            .workflows
            .get(workflow)
            .ok_or_else(|| format!("no workflow named \"{workflow}\""))?;
        let decl = &wf.loaded.decl;
        if !decl.triggers.is_empty() && !decl.triggers.contains(&Trigger::Manual) {
            return Err(format!(
                "workflow \"{workflow}\" has no manual trigger: add `.manual()` to its declaration"
            ));
        }
        let c = self
            .live_contact(contact)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no contact \"{contact}\""))?;
        let id = format!(
            "{}-m{:014x}",
            workflow,
            self.store.next_id().map_err(|e| e.to_string())?
        );
        let trigger = json!({"type": "manual", "event": "manual", "properties": properties, "timestamp": self.clock.now_ms()});
        self.start_run(wf, &c, trigger, id.clone(), false)
            .map_err(|e| e.to_string())?;
        self.flusher.commit_blocking()?;
        Ok(id)
    }

    pub(crate) fn start_run(
        &self,
        wf: &WorkflowVersion,
        contact: &Contact,
        trigger: Value,
        run_id: String,
        check_reentry: bool,
    ) -> Result<bool, EngineError> {
        let view = self.snapshot_of(contact);
        self.start_run_with_view(wf, contact, view, trigger, run_id, check_reentry)
    }

    /// [`start_run`](Self::start_run) with the contact's view given (`start_contact`).
    pub(crate) fn start_run_with_view(
        &self,
        wf: &WorkflowVersion,
        contact: &Contact,
        view: Value,
        trigger: Value,
        run_id: String,
        check_reentry: bool,
    ) -> Result<bool, EngineError> {
        if self.store.run(&run_id)?.is_some() {
            return Ok(false);
        }
        let now = self.clock.now_ms();
        let name = &wf.loaded.decl.name;
        if check_reentry {
            if let Some(prev) = self.store.entry(name, &contact.id)? {
                let allowed = match wf.loaded.decl.reentry {
                    Reentry::Once => false,
                    Reentry::Always => true,
                    Reentry::After { cooldown_ms } => now - prev.started_at >= cooldown_ms,
                };
                if !allowed {
                    return Ok(false);
                }
            }
        }
        // A declared share of the runs is held out (never a broadcast's seed send).
        let mut trigger = trigger;
        if let Some(share) = wf.loaded.decl.holdout {
            let seed = trigger["properties"]["seed"] == true;
            if !seed && crate::analytics::in_holdout(name, &contact.id, share) {
                trigger["holdout"] = json!(true);
            }
        }
        let run = Run::new(
            run_id.clone(),
            name.clone(),
            wf.hash.clone(),
            contact.id.clone(),
            trigger,
            view,
            now,
        );
        self.store.create_run(&run)?;
        self.metrics.run_started(name);
        self.metrics.run_status(None, RunStatus::Running);
        tracing::debug!(
            run = run_id,
            workflow = name.as_str(),
            contact = contact.id.as_str(),
            "run started"
        );
        self.activate_new(run)?;
        Ok(true)
    }
}
