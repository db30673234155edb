//! Effects: a step's intent made durable, the channel called, retries with backoff, the
//! result recorded; the ambiguous window when a crash falls between call and result.

#[allow(unused_imports)]
use super::*;

impl RunHost {
    /// Hand a send (or action) to its channel's delivery stage: the step is recorded as
    /// queued together with its intent, in one batch, and the run waits for the result, which
    /// comes back as a job on this contact's worker ([`Engine::record_delivery`]). The worker
    /// never waits on the provider.
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
        if !self.engine.state().channels.contains_key(&message.channel) {
            return self.fail_step(
                st,
                step,
                format!("channel \"{}\" is not configured", message.channel),
            );
        }
        step.status = StepStatus::Queued;
        step.attempts += 1;
        step.due_at = None;
        self.engine.failpoint("before_intent");
        let key = message.idempotency_key.clone();
        let priority = self
            .engine
            .version(&st.run.script_hash)
            .map(|w| w.decl.priority)
            .unwrap_or_default();
        let intent = Intent {
            run: st.run.id.clone(),
            step: step.seq,
            channel: message.channel.clone(),
            at: st.now,
            dispatched_at: None,
            priority,
            answered: None,
        };
        let mut batch = WriteBatch::new();
        // The first call of a step not yet recorded: both keys are new (a crash before the
        // batch is in takes both back; nothing went to the channel).
        if step.attempts == 1 && step.seq as usize >= st.journal.len() {
            batch.push(Write::NewEffect {
                run: st.run.id.clone(),
                step: step.clone(),
                key: key.clone(),
                intent: intent.clone(),
            });
        } else {
            batch
                .push(Write::Step {
                    run: st.run.id.clone(),
                    step: step.clone(),
                })
                .push(Write::Intent {
                    key: key.clone(),
                    intent: intent.clone(),
                });
        }
        if let Err(e) = self.store().apply(&batch) {
            st.store_error = Some(e);
            return Err(Interrupt::Park(
                "storage failed while recording an intent".into(),
            ));
        }
        st.record(step.clone());
        self.engine.flusher.request_flush();
        self.engine.delivery.submit(QueuedSend {
            key,
            run: st.run.id.clone(),
            contact: st.run.contact.clone(),
            step: step.seq,
            attempt: step.attempts,
            intent,
            message: Some(Box::new(message)),
        });
        st.wake = None;
        Err(Interrupt::Suspend)
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
        // Only the contact fields the channel declares go with the message.
        let fields: Map<String, Value> = state.channels[channel.as_str()]
            .contact_fields()
            .into_iter()
            .filter_map(|f| st.snapshot.get(&f).cloned().map(|v| (f, v)))
            .filter(|(_, v)| !v.is_null())
            .collect();
        let mut message = OutboundMessage {
            idempotency_key: key,
            channel: channel.clone(),
            template: template.cloned(),
            operation: operation.cloned(),
            run: st.run.id.clone(),
            workflow: st.run.workflow.clone(),
            contact: st.run.contact.clone(),
            to,
            to_name: crate::channels::display_name(&st.snapshot),
            subject: None,
            body: None,
            html: None,
            front_matter: Map::new(),
            fields,
            payload,
            topic: None,
            unsubscribe: None,
            tracked: false,
            seed: st.run.trigger["type"] == "broadcast"
                && st.run.trigger["properties"]["seed"] == true,
            holdout: st.run.trigger["holdout"] == true,
        };
        if let Some(template) = template {
            // The topic the template names (or the project's default), and for a marketing
            // topic the signed link that leaves it.
            message.topic = state
                .consent
                .topic_of(state.templates.topic(template, channel));
            if let Some(topic) = message
                .topic
                .clone()
                .filter(|t| state.consent.is_marketing(Some(t)))
            {
                let token = self.engine.link_keys().sign(&crate::consent::LinkClaims {
                    contact: st.run.contact.clone(),
                    topic,
                    message: message.idempotency_key.clone(),
                    channel: channel.clone(),
                });
                let base = self.engine.public_url();
                let url = crate::consent::ConsentSettings::unsubscribe_url(&base, &token);
                message.unsubscribe = Some(crate::channels::Unsubscribe {
                    // One-click (RFC 8058) only over https.
                    one_click: base.starts_with("https://").then(|| url.clone()),
                    url,
                });
            }
            let variants: Map<String, Value> = st
                .journal
                .iter()
                .filter(|s| s.kind == "variant" && s.status == StepStatus::Done)
                .map(|s| (s.name.clone(), s.result.clone()))
                .collect();
            let mut globals = template_globals(
                &st.snapshot,
                &st.run.trigger,
                &vars,
                &st.run.workflow,
                &st.run.id,
                variants,
            );
            let view_url = format!(
                "{}/v/{}",
                self.engine.public_url(),
                crate::engagement::view_token(
                    &self.engine.link_keys(),
                    &message.contact,
                    &message.idempotency_key,
                    channel,
                )
            );
            globals["message"] = json!({
                "topic": message.topic,
                "unsubscribe_url": message.unsubscribe.as_ref().map(|u| u.url.clone()),
                "view_url": view_url,
            });
            match state.templates.render(template, channel, &globals) {
                Ok(r) => {
                    message.subject = r.subject;
                    message.body = Some(r.body);
                    let track = state
                        .channel_config
                        .get(channel.as_str())
                        .is_none_or(|c| c.delivery.track);
                    message.html = match r.html {
                        // Links through the click redirect, the open pixel at the end.
                        Some(html) if track => {
                            message.tracked = true;
                            let keep: Vec<&str> = message
                                .unsubscribe
                                .as_ref()
                                .map(|u| u.url.as_str())
                                .into_iter()
                                .collect();
                            Some(crate::engagement::instrument(
                                &html,
                                &self.engine.link_keys(),
                                &self.engine.public_url(),
                                &message.contact,
                                &message.idempotency_key,
                                channel,
                                &keep,
                            ))
                        }
                        other => other,
                    };
                    message.front_matter = r.fields;
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
            StepCall::Variant { name, arms, bandit } => {
                let arm = match bandit {
                    None => pick_variant(&st.run.contact, name, arms),
                    Some(metric) => self.engine.bandit_arm(&st.run, name, arms, metric)?,
                };
                let mut input =
                    json!({"arms": arms.iter().map(|(n, w)| json!([n, w])).collect::<Vec<_>>()});
                if let Some(metric) = bandit {
                    input["bandit"] = json!(metric);
                }
                let step = self.new_step(st, &call, line, input);
                record(st, self, step, json!(arm))
            }
            StepCall::Consent {
                topic,
                status,
                source,
            } => {
                let status = if status == "unsubscribed" {
                    crate::model::ConsentStatus::Unsubscribed
                } else {
                    crate::model::ConsentStatus::Subscribed
                };
                // Evidence: the event the run last waited for (a confirmation click carries
                // the user agent and the message whose link was used).
                let waited = st
                    .journal
                    .iter()
                    .take(st.cursor)
                    .rev()
                    .find(|s| s.kind == "wait_for" && s.status == StepStatus::Done)
                    .map(|s| s.result.get("properties").cloned().unwrap_or(Value::Null));
                let prop = |k: &str| {
                    waited
                        .as_ref()
                        .and_then(|p| p.get(k))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                let evidence = crate::consent::Evidence {
                    ip: prop("ip"),
                    user_agent: prop("user_agent"),
                    message: prop("message_id").or_else(|| Some(st.run.id.clone())),
                };
                let rec = crate::consent::record(topic, status, st.now, source, &evidence);
                let mut batch = WriteBatch::new();
                batch.push(Write::Consent {
                    contact: st.run.contact.clone(),
                    record: rec.clone(),
                });
                if let Err(e) = self.store().apply(&batch) {
                    st.store_error = Some(e);
                    return Err(Interrupt::Park(
                        "storage failed while recording consent".into(),
                    ));
                }
                let input = json!({"topic": topic, "status": status.as_str(), "source": source});
                let step = self.new_step(st, &call, line, input);
                record(
                    st,
                    self,
                    step,
                    serde_json::to_value(&rec).unwrap_or(Value::Null),
                )
            }
            StepCall::Update { attrs } => {
                let contact_id = st.run.contact.clone();
                match self.engine.locked_live_contact(&contact_id) {
                    Ok(Some((guard, mut c))) => {
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

impl Engine {
    /// Record what came of a send (on the contact's worker) and continue the run: a result
    /// for a run that ended, or for an older attempt of the step, changes nothing.
    /// A send step the provider accepted: done, with the provider's answer as its result, and
    /// the provider's id mapped to it for later callbacks (in `batch`, with the step).
    pub(super) fn mark_sent(
        &self,
        run: &crate::model::Run,
        step: &mut Step,
        key: &str,
        channel: &str,
        d: &crate::channels::Delivery,
        batch: &mut WriteBatch,
    ) {
        if let Some(pid) = &d.provider_id {
            // Provider callbacks name the provider's id: remember whose message it was.
            batch.push(Write::ProviderMessage {
                channel: channel.to_string(),
                provider_id: pid.clone(),
                owner: crate::model::ProviderMessage {
                    contact: run.contact.clone(),
                    run: run.id.clone(),
                    step: step.seq,
                    key: key.to_string(),
                },
            });
        }
        step.status = StepStatus::Done;
        step.error = None;
        step.due_at = None;
        step.result = json!({
            "status": "sent",
            "message_id": key,
            "channel": channel,
            "template": step.input.get("template"),
            "operation": step.input.get("operation"),
            "provider_id": d.provider_id,
            "detail": d.detail,
        });
    }

    pub(super) fn record_delivery(&self, o: &Outcome) -> Result<(), EngineError> {
        // A run that ended (or is gone) owes nothing for its send but the intent's removal,
        // and, when its goal ended it while the send was out, the send's record: the message
        // went, and it counts (the run is not activated again).
        let Some(run) = self.store.run(&o.run)? else {
            self.store.remove_intent(&o.key)?;
            return Ok(());
        };
        if run.status.is_terminal() {
            return self.record_after_the_end(&run, o);
        }
        // A result for an older attempt of the step changes nothing.
        let journal = self.store.journal(&o.run)?;
        let last_step = journal.len() == o.step as usize + 1;
        let Some(mut step) = journal
            .into_iter()
            .nth(o.step as usize)
            .filter(|s| s.status == StepStatus::Queued && s.attempts == o.attempt)
        else {
            return Ok(());
        };
        let outcome = match &o.result {
            Ok(_) => "sent",
            Err(ChannelError::Skipped { .. }) => "skipped",
            Err(ChannelError::Deferred { .. }) => "deferred",
            Err(ChannelError::Transient(_)) | Err(ChannelError::RateLimited { .. }) => "retry",
            Err(ChannelError::Ambiguous(_)) => "ambiguous",
            Err(_) => "failed",
        };
        if o.called || outcome == "skipped" || outcome == "deferred" {
            self.metrics.send(&o.channel, outcome);
        }
        let now = self.clock.now_ms();
        step.finished_at = Some(now);
        let mut batch = WriteBatch::new();
        match &o.result {
            Ok(d) => {
                // A send that waited on the policy keeps the deferral in its result.
                let deferred = (step.result.get("status").and_then(Value::as_str)
                    == Some("deferred"))
                .then(|| step.result.clone());
                self.mark_sent(&run, &mut step, &o.key, &o.channel, d, &mut batch);
                if let (Some(mut was), Some(result)) = (deferred, step.result.as_object_mut()) {
                    if let Some(w) = was.as_object_mut() {
                        w.remove("status");
                    }
                    result.insert("deferred".into(), was);
                }
            }
            Err(ChannelError::Skipped { rule, reason }) => {
                step.status = StepStatus::Done;
                step.error = None;
                step.due_at = None;
                step.result = json!({
                    "status": "skipped",
                    "rule": rule,
                    "reason": reason,
                    "message_id": o.key,
                    "channel": o.channel,
                    "template": step.input.get("template"),
                    "topic": step.input.get("topic"),
                });
                tracing::info!(run = run.id, step = step.seq, rule = %rule, reason = %reason, "send skipped by the delivery policy");
            }
            Err(ChannelError::Deferred {
                until,
                rule,
                reason,
            }) => {
                // Not an attempt: the send waits on a durable timer (the run's), and the
                // policy decides again when it is due.
                step.attempts -= 1;
                step.status = StepStatus::Retrying;
                step.due_at = Some(*until);
                step.error = None;
                step.result = json!({
                    "status": "deferred",
                    "until": until,
                    "rule": rule,
                    "reason": reason,
                });
                tracing::info!(run = run.id, step = step.seq, rule = %rule, until, reason = %reason, "send deferred by the delivery policy");
            }
            Err(ChannelError::Ambiguous(msg)) => {
                step.status = StepStatus::Ambiguous;
                step.error = Some(msg.clone());
            }
            Err(e @ (ChannelError::Transient(_) | ChannelError::RateLimited { .. }))
                if !o.called || step.attempts < self.config.max_attempts =>
            {
                let mut delay = self.backoff(step.attempts);
                if let ChannelError::RateLimited { retry_after_ms, .. } = e {
                    delay = delay.max(*retry_after_ms as i64);
                }
                if !o.called {
                    // The send never started: it does not count as an attempt.
                    step.attempts -= 1;
                }
                step.status = StepStatus::Retrying;
                step.due_at = Some(now + delay);
                step.error = Some(e.to_string());
                tracing::info!(run = run.id, step = step.seq, attempt = step.attempts, delay_ms = delay, error = %e, "channel call will be retried");
            }
            Err(e) => {
                step.status = StepStatus::Failed;
                step.error = Some(if step.attempts > 1 {
                    format!("{e} (after {} attempts)", step.attempts)
                } else {
                    e.to_string()
                });
            }
        }
        batch.push(Write::Step {
            run: run.id.clone(),
            step: step.clone(),
        });
        if step.status != StepStatus::Ambiguous {
            batch.push(Write::IntentDone { key: o.key.clone() });
        }
        // The run goes on from here: marked running with its step, so that a crash before the
        // activation below has written the run leaves one the next start resumes, not a run
        // waiting on a send that is already recorded. A broadcast's own script (no `fn run`)
        // returns after its send: its run completes with the result, without activating it
        // again only to replay what is recorded.
        let mut run = run;
        let from = run.status;
        let completes = step.status == StepStatus::Done
            && last_step
            && run.wake_at.is_none()
            && self.ends_with_its_send(&run);
        if completes {
            run.status = RunStatus::Completed;
            run.updated_at = now;
            run.activations += 1;
            run.failed_activations = 0;
            run.ended.get_or_insert((RunStatus::Completed, now));
            batch.push(Write::Run(run.clone()));
        } else if from != RunStatus::Running {
            run.status = RunStatus::Running;
            run.updated_at = now;
            batch.push(Write::Run(run.clone()));
        }
        self.store.apply(&batch)?;
        if run.status != from {
            self.metrics.run_status(Some(from), run.status);
        }
        if let Some(since) = o.dispatched {
            self.delivery.note_window(&o.channel, since);
        }
        // The result is in the store: the same step may be queued again from here on (a
        // retry that is due at once).
        self.delivery.release(&o.key);
        if completes {
            return self.after_completion(&run);
        }
        self.activate(&run.id)
    }

    /// A send's result for a run that has ended: a converted run's message that the provider
    /// accepted is recorded as sent with its intent's removal (one batch); anything else only
    /// removes the intent.
    fn record_after_the_end(&self, run: &Run, o: &Outcome) -> Result<(), EngineError> {
        let step = match (&o.result, run.status) {
            (Ok(d), RunStatus::Converted) => self
                .store
                .journal(&run.id)?
                .into_iter()
                .nth(o.step as usize)
                .filter(|s| s.status == StepStatus::Queued && s.attempts == o.attempt)
                .map(|s| (s, d)),
            _ => None,
        };
        let Some((mut step, d)) = step else {
            self.store.remove_intent(&o.key)?;
            return Ok(());
        };
        if o.called {
            self.metrics.send(&o.channel, "sent");
        }
        step.finished_at = Some(self.clock.now_ms());
        let mut batch = WriteBatch::new();
        self.mark_sent(run, &mut step, &o.key, &o.channel, d, &mut batch);
        batch.push(Write::Step {
            run: run.id.clone(),
            step,
        });
        batch.push(Write::IntentDone { key: o.key.clone() });
        self.store.apply(&batch)?;
        if let Some(since) = o.dispatched {
            self.delivery.note_window(&o.channel, since);
        }
        Ok(())
    }

    /// Whether `run` is a broadcast recipient's whose script is the broadcast's own (its
    /// arm, then its send): nothing follows the send.
    fn ends_with_its_send(&self, run: &Run) -> bool {
        run.trigger["type"] == "broadcast"
            && self.version(&run.script_hash).is_ok_and(|w| {
                w.decl
                    .broadcast
                    .as_ref()
                    .is_some_and(|b| !b.custom_run && b.channel.is_some())
            })
    }
}
