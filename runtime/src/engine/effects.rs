//! Effects: a step's intent made durable, the channel called, retries with backoff, the
//! result recorded; the ambiguous window when a crash falls between call and result.

#[allow(unused_imports)]
use super::*;

impl RunHost {
    pub(super) fn call_channel(
        &self,
        st: &mut RunState,
        mut step: Step,
    ) -> Result<Value, Interrupt> {
        let message: OutboundMessage = match serde_json::from_value(step.input.clone()) {
            Ok(m) => m,
            Err(e) => {
                return self.fail_step(st, step, format!("recorded message is unreadable: {e}"))
            }
        };
        let Some(channel) = self.engine.state().channels.get(&message.channel).cloned() else {
            return self.fail_step(
                st,
                step,
                format!("channel \"{}\" is not configured", message.channel),
            );
        };
        if step.status != StepStatus::Intent || step.attempts == 0 {
            step.status = StepStatus::Intent;
            step.attempts += 1;
            self.engine.failpoint("before_intent");
            self.save(st, &step)?;
            let key = message.idempotency_key.clone();
            let intent = Intent {
                run: st.run.id.clone(),
                step: step.seq,
                channel: message.channel.clone(),
                at: st.now,
            };
            if let Err(e) = self.store().put_intent(&key, &intent) {
                st.store_error = Some(e);
                return Err(Interrupt::Park(
                    "storage failed while recording an intent".into(),
                ));
            }
            self.durable()?;
        } else {
            step.attempts += 1;
        }
        self.engine.failpoint("after_intent");
        let result = channel.send(&message);
        self.engine.failpoint("after_send");
        let key = message.idempotency_key.clone();
        let outcome = match &result {
            Ok(_) => "sent",
            Err(ChannelError::Transient(_)) | Err(ChannelError::RateLimited { .. }) => "retry",
            Err(ChannelError::Ambiguous(_)) => "ambiguous",
            Err(_) => "failed",
        };
        self.engine.metrics.send(&message.channel, outcome);
        step.finished_at = Some(self.engine.clock.now_ms());
        let value = match result {
            Ok(d) => {
                if let Some(pid) = &d.provider_id {
                    // Provider callbacks name the provider's id: remember whose message it was.
                    let owner = crate::model::ProviderMessage {
                        contact: st.run.contact.clone(),
                        run: st.run.id.clone(),
                        step: step.seq,
                        key: key.clone(),
                    };
                    if let Err(e) = self
                        .store()
                        .put_provider_message(&message.channel, pid, &owner)
                    {
                        st.store_error = Some(e);
                    }
                }
                step.status = StepStatus::Done;
                step.error = None;
                step.due_at = None;
                step.result = json!({
                    "message_id": key,
                    "channel": message.channel,
                    "template": message.template,
                    "operation": message.operation,
                    "provider_id": d.provider_id,
                    "detail": d.detail,
                });
                Ok(step.result.clone())
            }
            Err(ChannelError::Ambiguous(msg)) => {
                step.status = StepStatus::Ambiguous;
                step.error = Some(msg);
                Err(Interrupt::Park(ambiguous_reason(&step)))
            }
            Err(e @ (ChannelError::Transient(_) | ChannelError::RateLimited { .. }))
                if step.attempts < self.engine.config.max_attempts =>
            {
                let mut delay = self.engine.backoff(step.attempts);
                if let ChannelError::RateLimited { retry_after_ms, .. } = &e {
                    delay = delay.max(*retry_after_ms as i64);
                }
                let due = st.now + delay;
                step.status = StepStatus::Retrying;
                step.due_at = Some(due);
                step.error = Some(e.to_string());
                st.wake = Some(due);
                tracing::info!(run = st.run.id, step = step.seq, attempt = step.attempts, delay_ms = delay, error = %e, "channel call will be retried");
                Err(Interrupt::Suspend)
            }
            Err(e) => {
                step.status = StepStatus::Failed;
                let msg = if step.attempts > 1 {
                    format!("{e} (after {} attempts)", step.attempts)
                } else {
                    e.to_string()
                };
                step.error = Some(msg.clone());
                Err(Interrupt::Fail(format!(
                    "{} {} failed: {msg}",
                    step.kind, step.name
                )))
            }
        };
        self.save(st, &step)?;
        if step.status != StepStatus::Ambiguous {
            if let Err(e) = self.store().remove_intent(&key) {
                st.store_error = Some(e);
            }
        }
        self.durable()?;
        if value.is_ok() || step.status == StepStatus::Failed {
            st.cursor += 1;
        }
        value
    }

    pub(super) fn fail_step(
        &self,
        st: &mut RunState,
        mut step: Step,
        msg: String,
    ) -> Result<Value, Interrupt> {
        step.status = StepStatus::Failed;
        step.error = Some(msg.clone());
        step.finished_at = Some(st.now);
        self.save(st, &step)?;
        st.cursor += 1;
        Err(Interrupt::Fail(msg))
    }

    pub(super) fn effect(
        &self,
        st: &mut RunState,
        call: &StepCall,
        line: Option<usize>,
    ) -> Result<Value, Interrupt> {
        let state = self.engine.state();
        let key = format!("{}:{}", st.run.id, st.cursor);
        let (channel, template, operation, vars, payload) = match call {
            StepCall::Send {
                channel,
                template,
                vars,
            } => (channel, Some(template), None, vars.clone(), Value::Null),
            StepCall::Action {
                channel,
                operation,
                payload,
            } => (channel, None, Some(operation), Value::Null, payload.clone()),
            _ => unreachable!("effect() is only called for send and action"),
        };
        let mut step = self.new_step(st, call, line, json!({"channel": channel}));
        step.idempotency_key = Some(key.clone());
        step.status = StepStatus::Intent;
        step.finished_at = None;
        if !state.channels.contains_key(channel.as_str()) {
            return self.fail_step(
                st,
                step,
                format!("channel \"{channel}\" is not configured in herald.toml"),
            );
        }
        let to_attr = state
            .channel_config
            .get(channel.as_str())
            .and_then(|c| c.to_attribute());
        let to = to_attr
            .and_then(|a| st.snapshot.get(a))
            .and_then(|v| v.as_str())
            .map(String::from);
        let mut message = OutboundMessage {
            idempotency_key: key,
            channel: channel.clone(),
            template: template.cloned(),
            operation: operation.cloned(),
            run: st.run.id.clone(),
            workflow: st.run.workflow.clone(),
            contact: st.run.contact.clone(),
            to,
            subject: None,
            body: None,
            html: None,
            fields: Map::new(),
            payload,
        };
        if let Some(template) = template {
            let variants: Map<String, Value> = st
                .journal
                .iter()
                .filter(|s| s.kind == "variant" && s.status == StepStatus::Done)
                .map(|s| (s.name.clone(), s.result.clone()))
                .collect();
            let globals = template_globals(
                &st.snapshot,
                &st.run.trigger,
                &vars,
                &st.run.workflow,
                &st.run.id,
                variants,
            );
            match state.templates.render(template, channel, &globals) {
                Ok(r) => {
                    message.subject = r.subject;
                    message.body = Some(r.body);
                    message.html = r.html;
                    message.fields = r.fields;
                }
                Err(e) => return self.fail_step(st, step, e),
            }
        }
        step.input = serde_json::to_value(&message).unwrap_or(Value::Null);
        step.attempts = 0;
        self.call_channel(st, step)
    }

    pub(super) fn perform(
        &self,
        st: &mut RunState,
        call: StepCall,
        line: Option<usize>,
    ) -> Result<Value, Interrupt> {
        self.engine.metrics.step(call.kind());
        let record = |st: &mut RunState,
                      this: &Self,
                      mut step: Step,
                      result: Value|
         -> Result<Value, Interrupt> {
            step.result = result.clone();
            this.save(st, &step)?;
            st.cursor += 1;
            Ok(result)
        };
        match &call {
            StepCall::Send { .. } | StepCall::Action { .. } => self.effect(st, &call, line),
            StepCall::Now => {
                let step = self.new_step(st, &call, line, Value::Null);
                record(st, self, step, json!(st.now))
            }
            StepCall::Random => {
                let step = self.new_step(st, &call, line, Value::Null);
                record(st, self, step, json!(rand::random::<f64>()))
            }
            StepCall::Variant { name, arms } => {
                let arm = pick_variant(&st.run.contact, name, arms);
                let input =
                    json!({"arms": arms.iter().map(|(n, w)| json!([n, w])).collect::<Vec<_>>()});
                let step = self.new_step(st, &call, line, input);
                record(st, self, step, json!(arm))
            }
            StepCall::Update { attrs } => {
                let contact_id = st.run.contact.clone();
                let guard = self.engine.contact_lock.locked();
                match self.engine.live_contact(&contact_id) {
                    Ok(Some(mut c)) => {
                        if let Some(map) = attrs.as_object() {
                            c.merge_attributes(map);
                            c.updated_at = st.now;
                            if let Err(e) = self.store().put_contact(&c) {
                                st.store_error = Some(e);
                                return Err(Interrupt::Park(
                                    "storage failed while updating the contact".into(),
                                ));
                            }
                            drop(guard);
                            // Segments reading these attributes re-evaluate after this job.
                            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                            let state = self.engine.state();
                            // Attribute rules of the scoring may change the score, and with it
                            // the segments that read score or stage.
                            let scored = state.scoring.as_ref().is_some_and(|sc| {
                                sc.rules.iter().any(|r| {
                                    matches!(&r.condition, Some(herald_dsl::RuleCondition::Attribute { attribute, .. }) if keys.contains(&attribute.as_str()))
                                })
                            });
                            let affected: std::collections::BTreeSet<String> = state
                                .segments
                                .iter()
                                .filter(|(_, s)| s.loaded.deps.reads_any(&keys))
                                .map(|(n, _)| n.clone())
                                .collect();
                            if scored || !affected.is_empty() {
                                let _ = self
                                    .engine
                                    .send_job(&c.id, Job::Audience(c.id.clone(), Some(affected)));
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        st.store_error = Some(e);
                        return Err(Interrupt::Park(
                            "storage failed while reading the contact".into(),
                        ));
                    }
                }
                merge_snapshot(&mut st.snapshot, attrs);
                let mut step = self.new_step(st, &call, line, attrs.clone());
                step.contact = Some(st.snapshot.clone());
                record(st, self, step, Value::Null)
            }
            StepCall::Wait { duration_ms } => self.pending(
                st,
                &call,
                line,
                json!({"duration_ms": duration_ms}),
                st.now + duration_ms,
            ),
            StepCall::WaitUntil { target } => {
                let due = match target {
                    WaitTarget::At(t) => *t,
                    WaitTarget::LocalTime { hour, minute } => {
                        let tz = st
                            .snapshot
                            .get("timezone")
                            .and_then(Value::as_str)
                            .map(String::from);
                        next_local_time(st.now, tz.as_deref(), *hour, *minute)
                    }
                };
                let input = match target {
                    WaitTarget::At(t) => json!({"at": t}),
                    WaitTarget::LocalTime { hour, minute } => {
                        json!({"local_time": format!("{hour:02}:{minute:02}"), "at": due})
                    }
                };
                self.pending(st, &call, line, input, due)
            }
            StepCall::WaitFor {
                event,
                filter,
                timeout_ms,
            } => {
                let due = st.now + timeout_ms;
                let reg = WaitReg {
                    run: st.run.id.clone(),
                    step: st.cursor as u32,
                    filter: filter.as_object().cloned().unwrap_or_default(),
                };
                if let Err(e) = self.store().put_wait(&st.run.contact, event, &reg) {
                    st.store_error = Some(e);
                    return Err(Interrupt::Park(
                        "storage failed while registering a wait".into(),
                    ));
                }
                self.pending(
                    st,
                    &call,
                    line,
                    json!({"event": event, "filter": filter, "timeout_ms": timeout_ms}),
                    due,
                )
            }
        }
    }

    pub(super) fn pending(
        &self,
        st: &mut RunState,
        call: &StepCall,
        line: Option<usize>,
        input: Value,
        due: i64,
    ) -> Result<Value, Interrupt> {
        let mut step = self.new_step(st, call, line, input);
        step.status = StepStatus::Pending;
        step.due_at = Some(due);
        step.finished_at = None;
        self.save(st, &step)?;
        if due <= st.now {
            // A wait that is already over (zero duration, a past instant): finish it now.
            let rec = st.journal[st.cursor].clone();
            return self.replay(st, rec, call);
        }
        st.wake = Some(due);
        Err(Interrupt::Suspend)
    }
}
