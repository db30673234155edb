//! Replay: the host a run's script talks to during an activation. A recorded step returns
//! its recorded result; the first new step is journaled (a wait ends the activation, an effect is
//! performed by `effects`).

#[allow(unused_imports)]
use super::*;

pub(super) struct RunState {
    pub(super) now: i64,
    pub(super) snapshot: Value,
    pub(super) run: Run,
    pub(super) journal: Vec<Step>,
    pub(super) cursor: usize,
    pub(super) wake: Option<i64>,
    pub(super) logs: Vec<String>,
    pub(super) store_error: Option<StoreError>,
    /// The script's `label(...)` waiting for its step.
    pub(super) label: Option<String>,
    /// The label of the step being taken (the one before it, taken from `label`).
    pub(super) step_label: Option<String>,
}

impl RunState {
    /// Put a step that was just written into the in-memory journal.
    pub(super) fn record(&mut self, step: Step) {
        let i = step.seq as usize;
        if i < self.journal.len() {
            self.journal[i] = step;
        } else {
            self.journal.push(step);
        }
    }
}

pub(super) struct RunHost {
    pub(super) engine: Arc<Engine>,
    pub(super) state: Rc<RefCell<RunState>>,
}

pub(super) fn merge_snapshot(snapshot: &mut Value, attrs: &Value) {
    if let (Some(s), Some(a)) = (snapshot.as_object_mut(), attrs.as_object()) {
        for (k, v) in a {
            if v.is_null() {
                s.remove(k);
            } else {
                s.insert(k.clone(), v.clone());
            }
        }
    }
}

pub(super) fn ambiguous_reason(step: &Step) -> String {
    format!(
        "ambiguous delivery at step {} ({} {}): the outcome of the channel call is unknown, so it was not repeated; \
         resolve with POST /v1/runs/<run>/steps/{}/resolve and {{\"delivered\": true|false}}",
        step.seq, step.kind, step.name, step.seq
    )
}

impl Host for RunHost {
    fn step(&mut self, call: StepCall, line: Option<usize>) -> Result<Value, Interrupt> {
        let state = self.state.clone();
        let mut st = state.borrow_mut();
        if st.store_error.is_some() {
            return Err(Interrupt::Park(
                "storage failed earlier in this activation".into(),
            ));
        }
        // A label names the step that follows it, recorded or new.
        st.step_label = st.label.take();
        if let Some(rec) = st.journal.get(st.cursor).cloned() {
            return self.replay(&mut st, rec, &call);
        }
        self.perform(&mut st, call, line)
    }

    fn contact_attr(&mut self, key: &str) -> Value {
        let st = self.state.borrow();
        if key == "*" {
            return st.snapshot.clone();
        }
        st.snapshot.get(key).cloned().unwrap_or(Value::Null)
    }

    fn label(&mut self, name: &str) {
        self.state.borrow_mut().label = Some(name.to_string());
    }

    fn log(&mut self, message: &str) {
        let mut st = self.state.borrow_mut();
        if st.logs.len() < 100 {
            st.logs.push(message.chars().take(1000).collect());
        }
    }
}

impl RunHost {
    pub(super) fn store(&self) -> &dyn Store {
        self.engine.store.as_ref()
    }

    pub(super) fn save(&self, st: &mut RunState, step: &Step) -> Result<(), Interrupt> {
        match self.store().put_step(&st.run.id, step) {
            Ok(()) => {
                st.record(step.clone());
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                st.store_error = Some(e);
                Err(Interrupt::Park(format!(
                    "storage failed while recording a step: {msg}"
                )))
            }
        }
    }

    pub(super) fn new_step(
        &self,
        st: &RunState,
        call: &StepCall,
        line: Option<usize>,
        input: Value,
    ) -> Step {
        Step {
            seq: st.cursor as u32,
            kind: call.kind().to_string(),
            name: call.name(),
            input,
            status: StepStatus::Done,
            result: Value::Null,
            error: None,
            attempts: 0,
            due_at: None,
            contact: None,
            idempotency_key: None,
            line,
            started_at: st.now,
            finished_at: Some(st.now),
            label: st.step_label.clone(),
        }
    }

    pub(super) fn fresh_snapshot(&self, st: &mut RunState) -> Value {
        match self.engine.live_contact(&st.run.contact) {
            Ok(Some(c)) => self.engine.snapshot_of(&c),
            _ => st.snapshot.clone(),
        }
    }

    pub(super) fn replay(
        &self,
        st: &mut RunState,
        rec: Step,
        call: &StepCall,
    ) -> Result<Value, Interrupt> {
        if rec.kind != call.kind() || rec.name != call.name() {
            return Err(Interrupt::Park(format!(
                "non-determinism at step {}: the journal recorded `{} {}` but the script now calls `{} {}`",
                rec.seq,
                rec.kind,
                rec.name,
                call.kind(),
                call.name()
            )));
        }
        match rec.status {
            StepStatus::Done => {
                if let Some(c) = &rec.contact {
                    st.snapshot = c.clone();
                }
                st.cursor += 1;
                Ok(rec.result)
            }
            StepStatus::Failed => {
                st.cursor += 1;
                let error = rec.error.unwrap_or_else(|| "step failed".into());
                // An effect the provider refused: say which step it was.
                Err(Interrupt::Fail(
                    if rec.attempts > 0 && rec.idempotency_key.is_some() {
                        format!("{} {} failed: {error}", rec.kind, rec.name)
                    } else {
                        error
                    },
                ))
            }
            StepStatus::Pending => {
                let due = rec.due_at.unwrap_or(i64::MAX);
                if st.now < due {
                    st.wake = Some(due);
                    return Err(Interrupt::Suspend);
                }
                // The wait is over (for wait_for: timed out).
                let mut step = rec;
                step.status = StepStatus::Done;
                step.result = Value::Null;
                step.finished_at = Some(st.now);
                let snap = self.fresh_snapshot(st);
                step.contact = Some(snap.clone());
                if step.kind == "wait_for" {
                    if let Err(e) =
                        self.store()
                            .remove_wait(&st.run.contact, &step.name, &st.run.id)
                    {
                        st.store_error = Some(e);
                    }
                }
                self.save(st, &step)?;
                st.snapshot = snap;
                st.cursor += 1;
                Ok(Value::Null)
            }
            StepStatus::Retrying => {
                let due = rec.due_at.unwrap_or(0);
                if st.now < due {
                    st.wake = Some(due);
                    return Err(Interrupt::Suspend);
                }
                self.call_channel(st, rec)
            }
            StepStatus::Intent => self.settle_ambiguous(st, rec),
            StepStatus::Ambiguous => Err(Interrupt::Park(ambiguous_reason(&rec))),
            StepStatus::Queued => {
                let key = rec.idempotency_key.clone().unwrap_or_default();
                if self.engine.delivery.holds(&key) {
                    // Queued or in flight in this process: its result continues the run.
                    st.wake = None;
                    return Err(Interrupt::Suspend);
                }
                let intent = match self.store().intent(&key) {
                    Ok(intent) => intent,
                    Err(e) => {
                        st.store_error = Some(e);
                        return Err(Interrupt::Park(
                            "storage failed while reading an intent".into(),
                        ));
                    }
                };
                if let Some(answered) = intent.as_ref().and_then(|i| i.answered.clone()) {
                    // The provider accepted it before the process stopped; only the run had
                    // not recorded it yet.
                    return self.settle_answered(st, rec, &key, answered);
                }
                if intent.and_then(|i| i.dispatched_at).is_some() {
                    // The provider may have been called before the process stopped.
                    self.settle_ambiguous(st, rec)
                } else {
                    // The process stopped before the send started: queue it again, as the
                    // same attempt.
                    let mut step = rec;
                    step.attempts = step.attempts.saturating_sub(1);
                    self.call_channel(st, step)
                }
            }
        }
    }

    /// A queued send whose provider's acceptance was noted on its intent: recorded as sent.
    fn settle_answered(
        &self,
        st: &mut RunState,
        rec: Step,
        key: &str,
        answered: crate::model::Answered,
    ) -> Result<Value, Interrupt> {
        let channel = step_channel(&rec);
        let mut step = rec;
        step.finished_at = Some(st.now);
        let delivery = crate::channels::Delivery {
            provider_id: answered.provider_id,
            detail: answered.detail,
        };
        // The step and the intent's removal in one batch: never a done step whose intent
        // could send it again, nor a removed intent under a queued step.
        let mut batch = crate::store::WriteBatch::new();
        self.engine
            .mark_sent(&st.run, &mut step, key, &channel, &delivery, &mut batch);
        batch.push(crate::store::Write::Step {
            run: st.run.id.clone(),
            step: step.clone(),
        });
        batch.push(crate::store::Write::IntentDone {
            key: key.to_string(),
        });
        let marked = self.store().apply(&batch);
        if let Err(e) = marked {
            st.store_error = Some(e);
            return Err(Interrupt::Park(
                "storage failed while recording a send".into(),
            ));
        }
        st.record(step.clone());
        self.engine.metrics.send(&channel, "sent");
        tracing::info!(
            run = st.run.id,
            step = step.seq,
            channel,
            "a send the provider accepted before the process stopped is recorded as sent"
        );
        st.cursor += 1;
        Ok(step.result)
    }

    /// A step whose provider call may or may not have happened (the process stopped between
    /// the intent and the result): sent again with the same key where the channel honours
    /// idempotency keys, otherwise marked ambiguous and parked for an operator.
    fn settle_ambiguous(&self, st: &mut RunState, rec: Step) -> Result<Value, Interrupt> {
        let channel = step_channel(&rec);
        let idempotent = self
            .engine
            .state()
            .channels
            .get(&channel)
            .is_some_and(|c| c.supports_idempotency());
        if idempotent {
            tracing::info!(
                run = st.run.id,
                step = rec.seq,
                channel,
                "retrying an effect from the ambiguous window with the same idempotency key"
            );
            self.call_channel(st, rec)
        } else {
            let mut step = rec;
            step.status = StepStatus::Ambiguous;
            step.error = Some("the process stopped after this effect's intent was recorded and before its result was; the channel does not support idempotency keys, so it was not retried".into());
            self.save(st, &step)?;
            self.engine.metrics.send(&channel, "ambiguous");
            Err(Interrupt::Park(ambiguous_reason(&step)))
        }
    }
}

/// The channel a recorded send step went to.
fn step_channel(rec: &Step) -> String {
    rec.input
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}
