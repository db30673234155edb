//! Worker threads: one queue per worker, contacts partitioned over them, each job run under a
//! panic guard; the write batch a worker gathers while it handles a batch of jobs (segment changes,
//! audience states, finished inbox records), written in one order that recovery relies on.

#[allow(unused_imports)]
use super::*;

/// What a worker's current batch of jobs owes the store at its end.
#[derive(Default)]
pub(super) struct Batch {
    /// Segment entries and exits, by segment, oldest first.
    pub(super) changes: BTreeMap<String, Vec<crate::model::SegmentChange>>,
    /// Audience states evaluated in the batch (encoded), written after the changes they logged.
    pub(super) states: HashMap<String, Vec<u8>>,
    /// Inbox records whose events were processed in the batch.
    pub(super) tickets: Vec<Arc<Ticket>>,
}

thread_local! {
    /// The batch a worker thread is in, if any; other threads write at once.
    pub(super) static BATCH: std::cell::RefCell<Option<Batch>> = const { std::cell::RefCell::new(None) };
}

pub(super) fn begin_batch() {
    BATCH.with(|b| *b.borrow_mut() = Some(Batch::default()));
}

/// `f` on this thread's batch, if it is in one.
pub(super) fn in_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> Option<R> {
    BATCH.with(|b| b.borrow_mut().as_mut().map(f))
}

/// Hand `value` to this thread's batch with `put`; outside a batch it comes back, for the
/// caller to write at once.
pub(super) fn to_batch<T>(value: T, put: impl FnOnce(&mut Batch, T)) -> Option<T> {
    BATCH.with(|b| match b.borrow_mut().as_mut() {
        Some(b) => {
            put(b, value);
            None
        }
        None => Some(value),
    })
}

/// Log a segment change: with the worker's batch when in one (written at its end, one record
/// per segment), otherwise at once.
pub(crate) fn log_segment_change(
    store: &dyn Store,
    segment: &str,
    change: crate::model::SegmentChange,
) -> Result<(), StoreError> {
    let change = to_batch(change, |b, c| {
        b.changes.entry(segment.to_string()).or_default().push(c)
    });
    match change {
        Some(c) => store.log_segment_change(segment, &c),
        None => Ok(()),
    }
}

/// A contact's audience state as this thread last wrote it: the batch's unwritten copy first,
/// then the store.
pub(crate) fn audience_state(
    store: &dyn Store,
    contact: &str,
) -> Result<Option<crate::model::AudienceState>, StoreError> {
    let pending = in_batch(|b| b.states.get(contact).map(|s| crate::store::dec_audience(s)));
    match pending.flatten() {
        Some(s) => s.map(Some),
        None => store.audience(contact),
    }
}

/// Write a contact's audience state: with the worker's batch when in one (after the batch's
/// segment changes, so a crash never keeps a membership whose change was not logged: the
/// events are processed again and log it), otherwise at once.
pub(crate) fn put_audience_state(
    store: &dyn Store,
    contact: &str,
    state: &crate::model::AudienceState,
) -> Result<(), StoreError> {
    let encoded = to_batch(crate::store::enc_audience(state)?, |b, e| {
        b.states.insert(contact.to_string(), e);
    });
    match encoded {
        Some(e) => store.put_audience_encoded(contact, e),
        None => Ok(()),
    }
}

thread_local! {
    /// The index of the worker running on this thread, if it is one.
    pub(super) static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the worker running on this thread, if it is one.
pub(crate) fn current_worker() -> Option<usize> {
    WORKER.with(|w| w.get())
}

pub(crate) fn shard_of(contact: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in contact.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % n as u64) as usize
}

/// A worker's queues as seen by those who hand it jobs. Results of sends have their own queue,
/// served before the next job of the main one, so a result does not wait behind a backlog of
/// ingested events: the ambiguous window (dispatch mark to recorded result) stays short.
pub(crate) struct WorkerQueue {
    jobs: mpsc::Sender<Job>,
    results: mpsc::Sender<Job>,
    /// A [`Job::Nudge`] is on its way through `jobs`; more results need no other.
    nudged: Arc<std::sync::atomic::AtomicBool>,
}

/// A worker's end of its queues.
pub(crate) struct WorkerInbox {
    jobs: mpsc::Receiver<Job>,
    results: mpsc::Receiver<Job>,
    nudged: Arc<std::sync::atomic::AtomicBool>,
}

impl WorkerQueue {
    pub(crate) fn new() -> (WorkerQueue, WorkerInbox) {
        let (jobs, jobs_rx) = mpsc::channel();
        let (results, results_rx) = mpsc::channel();
        let nudged = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (
            WorkerQueue {
                jobs,
                results,
                nudged: nudged.clone(),
            },
            WorkerInbox {
                jobs: jobs_rx,
                results: results_rx,
                nudged,
            },
        )
    }

    pub(crate) fn send(&self, job: Job) -> Result<(), mpsc::SendError<Job>> {
        use std::sync::atomic::Ordering;
        match job {
            Job::Delivered(_) => {
                self.results.send(job)?;
                // A worker waiting on its main queue must wake up for it.
                if !self.nudged.swap(true, Ordering::AcqRel) {
                    self.jobs.send(Job::Nudge)?;
                }
                Ok(())
            }
            other => self.jobs.send(other),
        }
    }
}

impl WorkerInbox {
    /// Take the results waiting, to be handled before anything else.
    fn results(&self) -> Vec<Job> {
        // Cleared before looking, so a result queued after the look brings a new nudge.
        self.nudged
            .store(false, std::sync::atomic::Ordering::Release);
        self.results.try_iter().collect()
    }
}

impl Engine {
    pub(super) fn worker(self: Arc<Self>, inbox: WorkerInbox) {
        while let Ok(job) = inbox.jobs.recv() {
            let mut batch = vec![job];
            while batch.len() < 256 {
                match inbox.jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let mut barriers = Vec::new();
            begin_batch();
            for job in batch {
                for result in inbox.results() {
                    self.handle(result);
                }
                match job {
                    Job::Barrier(tx) => barriers.push(tx),
                    Job::Nudge => {}
                    other => self.handle(other),
                }
            }
            for result in inbox.results() {
                self.handle(result);
            }
            self.end_batch();
            // What a batch wrote becomes durable with the next group commit; the worker only
            // waits for it when someone asked (a barrier). Effects on the outside world wait
            // for their own intent to be durable, and accepted events stay in the inbox until
            // processed, so nothing depends on this flush finishing before the next batch.
            if barriers.is_empty() {
                self.flusher.request_flush();
            } else if let Err(e) = self.flusher.commit_blocking() {
                tracing::error!(error = %e, "flush failed");
            }
            for b in barriers {
                let _ = b.send(());
            }
        }
        // Stopping: results that came after the last nudge are still recorded.
        let left = inbox.results();
        if !left.is_empty() {
            begin_batch();
            for result in left {
                self.handle(result);
            }
            self.end_batch();
        }
    }

    /// Runs `f`, catching a panic (a bug in Herald): it is logged with `what` (built only
    /// then), counted in `herald_worker_panics_total`, and returned as its message, so one bad
    /// job never takes a worker, and with it every contact hashed to that worker, down.
    pub(super) fn guard<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl FnOnce() -> T,
    ) -> Result<T, String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            tracing::error!(
                job = what(),
                panic = message,
                "a worker job panicked; the worker goes on"
            );
            self.metrics.worker_panic();
            message
        })
    }

    pub(super) fn handle(&self, job: Job) {
        match job {
            Job::Inbox(q) => {
                let seq = q.item.event_seq;
                let done = self.guard(
                    || format!("event {seq} (it stays queued for the next start)"),
                    || {
                        #[cfg(any(test, feature = "test-hooks"))]
                        if q.event
                            .as_ref()
                            .is_some_and(|e| e.event == hooks::PANIC_EVENT)
                        {
                            panic!("injected by a test");
                        }
                        self.process_event(*q)
                    },
                );
                if let Ok(Err(e)) = done {
                    tracing::error!(seq, error = %e, "processing event failed; it stays queued");
                }
                self.backlog.done();
            }
            Job::Activate(target, fired) => {
                let done = self.guard(
                    || format!("activation of {target}"),
                    || match &target {
                        TimerTarget::Audience(contact) => self.audience_timer(contact, fired),
                        TimerTarget::Run(run) => self.activate_fired(run, fired),
                    },
                );
                let failure = match done {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => {
                        tracing::error!(%target, error = %e, "activation failed; it is retried");
                        Some(Err(e.to_string()))
                    }
                    Err(panic) => Some(Ok(panic)),
                };
                if let Some(failure) = failure {
                    if let Err(e) = self.after_failed_activation(&target, failure) {
                        tracing::error!(%target, error = %e, "could not schedule the retry of a failed activation");
                    }
                }
                self.inflight.locked().remove(&target);
            }
            Job::Audience(contact, only) => {
                let done = self.guard(
                    || format!("audience of {contact}"),
                    || self.evaluate_audience(&contact, None, only.as_ref()),
                );
                if let Ok(Err(e)) = done {
                    tracing::error!(contact, error = %e, "audience evaluation failed");
                }
            }
            Job::Start {
                workflow,
                contact,
                properties,
                reply,
            } => {
                let result = self
                    .guard(
                        || format!("start of {workflow} for {contact}"),
                        || {
                            #[cfg(any(test, feature = "test-hooks"))]
                            if workflow == hooks::PANIC_EVENT {
                                panic!("injected by a test");
                            }
                            self.start_manual_inner(&workflow, &contact, properties)
                        },
                    )
                    .map_err(EngineError::Panicked)
                    .and_then(|r| r.map_err(EngineError::Invalid));
                let _ = reply.send(result);
            }
            Job::Broadcast {
                version,
                recipients,
                arms,
                done,
            } => {
                let mut failed = 0;
                for (contact, run) in recipients {
                    let result = self.guard(
                        || format!("broadcast {} for {contact}", version.loaded.decl.name),
                        || self.start_broadcast_run(&version, &contact, run, arms.clone()),
                    );
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(contact, error = %e, "starting a broadcast run failed");
                            failed += 1;
                        }
                        Err(panic) => {
                            tracing::error!(contact, panic, "starting a broadcast run panicked");
                            failed += 1;
                        }
                    }
                }
                let _ = done.send(failed);
            }
            Job::Erase { contact, reply } => {
                let result = self
                    .guard(
                        || format!("erasure of {contact}"),
                        || self.erase_now(&contact),
                    )
                    .map_err(EngineError::Panicked)
                    .and_then(|r| r);
                let _ = reply.send(result);
            }
            Job::Resolve {
                run,
                step,
                delivered,
                reply,
            } => {
                let result = self
                    .guard(
                        || format!("step {step} of run {run}"),
                        || self.resolve_inner(&run, step, delivered),
                    )
                    .map_err(EngineError::Panicked)
                    .and_then(|r| r.map_err(EngineError::Invalid));
                let _ = reply.send(result);
            }
            Job::Barrier(tx) => {
                let _ = tx.send(());
            }
            Job::Nudge => {}
            Job::Retry { run, reply } => {
                let result = self
                    .guard(|| format!("retry of run {run}"), || self.retry_inner(&run))
                    .map_err(EngineError::Panicked)
                    .and_then(|r| r.map_err(EngineError::Invalid));
                let _ = reply.send(result);
            }
            Job::Delivered(outcome) => {
                let key = outcome.key.clone();
                let done = self.guard(
                    || format!("result of send {key}"),
                    || self.record_delivery(&outcome),
                );
                if let Ok(Err(e)) = done {
                    tracing::error!(key, error = %e, "recording a send's result failed; the next start settles it");
                }
                self.delivery.release(&key);
                self.cap_holds.release(&key);
            }
        }
    }

    /// An activation ended in an error (`Err`: its message) or a panic (`Ok`: its message)
    /// after its timer was taken: without a new timer, nothing would ever wake it again.
    /// A run that panicked is parked with the panic as its reason (retrying a bug only repeats
    /// it; parked runs are visible in the API and the metrics); after an error (storage, most
    /// likely) it is retried later. An audience re-evaluation is retried either way.
    pub(super) fn after_failed_activation(
        &self,
        target: &TimerTarget,
        failure: Result<String, String>,
    ) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        let id = match target {
            TimerTarget::Run(run) => run.as_str(),
            TimerTarget::Audience(contact) => {
                let Some(mut st) = audience_state(self.store.as_ref(), contact)? else {
                    return Ok(());
                };
                if st.wake_at.is_none() {
                    let due = now + self.backoff(4);
                    self.store.set_timer(&Timer {
                        due,
                        target: target.clone(),
                        contact: contact.to_string(),
                    })?;
                    st.wake_at = Some(due);
                    put_audience_state(self.store.as_ref(), contact, &st)?;
                    crate::audience::forget_cached_state(contact);
                }
                return Ok(());
            }
        };
        let Some(mut run) = self.store.run(id)? else {
            return Ok(());
        };
        if run.status.is_terminal() {
            return Ok(());
        }
        let from = run.status;
        if let Some(t) = run.wake_at.take() {
            self.store
                .clear_timer(t, &TimerTarget::Run(run.id.clone()))?;
        }
        match failure {
            Ok(panic) => {
                let reason = format!("internal error: the activation panicked: {panic}");
                self.finish(&mut run, from, RunStatus::Parked, Some(reason), None)
            }
            Err(error) => {
                run.failed_activations += 1;
                if run.failed_activations >= crate::model::MAX_FAILED_ACTIVATIONS {
                    let reason = format!(
                        "internal error: {} activations in a row failed; the last: {error}",
                        run.failed_activations
                    );
                    return self.finish(&mut run, from, RunStatus::Parked, Some(reason), None);
                }
                let due = now + self.backoff(run.failed_activations + 2);
                self.set_run_timer(&mut run, due)?;
                run.updated_at = now;
                self.store.put_run(&run)?;
                Ok(())
            }
        }
    }

    /// Process one accepted event; once every event of its inbox record is processed, the
    /// record goes. An error leaves the record, so the event is processed again at start-up
    /// (processing is idempotent: run ids are deterministic, the behaviour index is keyed by
    /// event, and scoring remembers the events it scored).
    pub(super) fn process_event(&self, q: Queued) -> Result<(), EngineError> {
        if let Err(e) = self.process_event_inner(&q.item, q.event) {
            // Only this event stays queued (in a record of its own); the rest of its request's
            // record can go when they are done.
            let key = self.store.next_id()?;
            self.store.push_inbox(key, std::slice::from_ref(&q.item))?;
            self.complete(&q.ticket)?;
            return Err(e);
        }
        #[cfg(any(test, feature = "test-hooks"))]
        if self.failpoint.is_some() {
            // Make what processing wrote durable, then die before the inbox record goes.
            self.write_batch()?;
            let _ = self.flusher.commit_blocking();
            self.failpoint("after_event");
        }
        self.complete(&q.ticket)
    }

    /// Write what a worker's batch owes so far (the batch goes on): its segment changes, one
    /// record per segment, and the audience states that follow from them, in one atomic
    /// [`WriteBatch`], so a crash never keeps a state without the changes it logged.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn write_batch(&self) -> Result<(), EngineError> {
        self.write_batch_with(Vec::new())
    }

    /// [`Engine::write_batch`], with `done` inbox records removed in the same batch.
    fn write_batch_with(&self, done: Vec<u64>) -> Result<(), EngineError> {
        let (changes, states) = in_batch(|b| {
            (
                std::mem::take(&mut b.changes),
                std::mem::take(&mut b.states),
            )
        })
        .unwrap_or_default();
        let mut batch = WriteBatch::new();
        for (segment, changes) in changes {
            batch.push(Write::SegmentChanges { segment, changes });
        }
        for (contact, encoded) in states {
            batch.push(Write::Audience { contact, encoded });
        }
        for key in done {
            batch.push(Write::InboxDone { key });
        }
        self.store.apply(&batch)?;
        Ok(())
    }

    /// End a worker's batch: its changes, its states and the removal of the inbox records
    /// its events finished are written as one batch. If it fails, the records stay (the
    /// events are processed again at the next start, from the states last written) and the
    /// worker's cached states, which may be ahead of the store, are dropped.
    pub(super) fn end_batch(&self) {
        let tickets = BATCH
            .with(|b| {
                b.borrow_mut()
                    .as_mut()
                    .map(|b| std::mem::take(&mut b.tickets))
            })
            .unwrap_or_default();
        let done: Vec<u64> = tickets
            .iter()
            .filter(|t| t.finish_one())
            .map(|t| t.key)
            .collect();
        let written = self.write_batch_with(done);
        BATCH.with(|b| b.borrow_mut().take());
        if let Err(e) = written {
            tracing::error!(error = %e, "writing a batch's segment changes, audience states and finished inbox records failed; its events stay queued");
            crate::audience::forget_cached_states();
        }
    }

    /// One event of an inbox record is done; the last one removes the record (inside a
    /// worker's batch: when the batch ends).
    pub(super) fn complete(&self, ticket: &Arc<Ticket>) -> Result<(), EngineError> {
        match to_batch(ticket.clone(), |b, t| b.tickets.push(t)) {
            Some(t) => self.complete_now(&t),
            None => Ok(()),
        }
    }

    pub(super) fn complete_now(&self, ticket: &Ticket) -> Result<(), EngineError> {
        if ticket.finish_one() {
            self.store.remove_inbox(ticket.key)?;
        }
        Ok(())
    }

    /// Wait until every worker has finished what was queued before this call.
    pub fn barrier(&self) {
        let receivers: Vec<_> = {
            let workers = self.workers.locked();
            workers
                .iter()
                .filter_map(|w| {
                    let (tx, rx) = mpsc::channel();
                    w.send(Job::Barrier(tx)).ok().map(|_| rx)
                })
                .collect()
        };
        for rx in receivers {
            let _ = rx.recv();
        }
    }
}
