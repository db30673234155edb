//! The delivery stage: where sends wait for their channel and run many at once.
//!
//! A worker that reaches a send records the step as queued together with its intent (one
//! atomic batch) and hands the send here; it never waits on a provider. Each channel has:
//!
//! - a queue ordered by lane ([`Priority`]: transactional, normal, bulk), so a password reset
//!   never waits behind a newsletter;
//! - a dispatcher thread that starts sends up to its `concurrency`; the sends themselves are
//!   futures on the stage's small async runtime, so a send waiting on its provider holds no
//!   thread (hundreds can be in flight on two threads);
//! - a [`Pacer`] for its `rate_per_second`, shared by the channels of one `rate_group`;
//! - adaptive slow-down: a provider that answers "too many requests" (HTTP 429, SMTP 454, a
//!   `Retry-After`) holds the channel for the time it asked and halves the sends in flight,
//!   which grow back by one per run of successes;
//! - a pause switch the operator sets through the API.
//!
//! Before a provider is called, the intent is marked dispatched and made durable; the marks of
//! all sends about to start share one group commit. A crash before the mark leaves a send that
//! was never made (queued again at start); after it, the ambiguous window as before. The result
//! goes back to the contact's worker as a job ([`Sink`]), which records it and continues the
//! run: the stage writes no run state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use herald_dsl::Priority;
use serde::Serialize;

use crate::channels::{Channel, ChannelError, Delivery, OutboundMessage};
use crate::clock::Clock;
use crate::config::DeliveryConfig;
use crate::model::Intent;
use crate::store::{Flusher, Store};
use crate::sync::{LockExt as _, RwLockExt as _};

mod pacer;

pub use pacer::Pacer;

/// Queued sends per channel whose rendered message is kept in memory. Beyond that a queued
/// send keeps only its identity (about 150 bytes) and its message is read back from the run's
/// journal when its turn comes, so a slow channel with a long queue costs little memory.
pub const MESSAGES_IN_MEMORY: usize = 10_000;

/// Successes in a row after which a slowed-down channel allows one more send in flight.
const GROW_AFTER: u32 = 8;

/// Sends a dispatcher starts with one group commit of their dispatch marks, at most.
const DISPATCH_BATCH: usize = 256;

/// Threads of the runtime that carries the sends in flight.
const SEND_THREADS: usize = 2;

/// A send handed to the stage: the journal step it belongs to and its intent.
pub struct QueuedSend {
    /// The idempotency key (`run:step`).
    pub key: String,
    /// The run.
    pub run: String,
    /// The run's contact (its worker gets the result).
    pub contact: String,
    /// The journal step.
    pub step: u32,
    /// The step's attempt this send is; a result for an older attempt is ignored.
    pub attempt: u32,
    /// The intent as recorded; re-written with `dispatched_at` before the call.
    pub intent: Intent,
    /// The rendered message; `None` when it was left in the journal (a long queue).
    pub message: Option<Box<OutboundMessage>>,
}

/// What came of a send, for the contact's worker.
pub struct Outcome {
    /// The idempotency key.
    pub key: String,
    /// The run.
    pub run: String,
    /// The run's contact.
    pub contact: String,
    /// The journal step.
    pub step: u32,
    /// The attempt.
    pub attempt: u32,
    /// The channel.
    pub channel: String,
    /// The provider's answer.
    pub result: Result<Delivery, ChannelError>,
    /// Whether the provider was called (false: the send did not start and can simply be
    /// queued again).
    pub called: bool,
    /// When the dispatch mark was made (the ambiguous window opened), if it was.
    pub dispatched: Option<Instant>,
}

/// Where results go: the engine, which hands each to the contact's worker.
pub trait Sink: Send + Sync {
    /// A send finished (or could not start).
    fn delivered(&self, outcome: Outcome);
    /// The delivery policy's decision for a send about to start (consent, suppression).
    fn decide(&self, _send: &QueuedSend, _message: &OutboundMessage) -> crate::consent::Decision {
        crate::consent::Decision::Send
    }
    /// A crash test's failpoint; nothing in a build without test hooks.
    fn failpoint(&self, _name: &str) {}
}

/// One channel's part of the stage.
struct ChannelStage {
    name: String,
    channel: RwLock<Arc<dyn Channel>>,
    /// The channel's own pacer, used when it is in no rate group.
    own_pacer: Arc<Pacer>,
    /// The pacer in use: its own or its group's.
    pacer: RwLock<Arc<Pacer>>,
    state: Mutex<Lanes>,
    wake: Condvar,
    stats: Stats,
}

/// A channel's queue and the state of its sender threads.
struct Lanes {
    /// One queue per [`Priority`], served in that order.
    queues: [VecDeque<QueuedSend>; 3],
    /// Queued sends holding their message in memory.
    messages: usize,
    /// The channel's dispatcher thread is running.
    dispatcher: bool,
    /// Sends between dispatch and result.
    in_flight: usize,
    /// The configured limit of sends in flight.
    concurrency: usize,
    /// The limit as slowed down by the provider's answers (at most `concurrency`).
    allowance: usize,
    /// Successes since the allowance last grew.
    successes: u32,
    /// No send starts before this (a provider's `Retry-After`).
    hold_until: Option<Instant>,
    /// Paused by an operator.
    paused: bool,
    /// The stage is stopping: no new sends start.
    stopping: bool,
}

impl Lanes {
    fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    fn pop(&mut self) -> Option<QueuedSend> {
        let send = self.queues.iter_mut().find_map(VecDeque::pop_front)?;
        if send.message.is_some() {
            self.messages -= 1;
        }
        Some(send)
    }
}

/// Counters of one channel.
#[derive(Default)]
struct Stats {
    dispatched: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
    latency_us_sum: AtomicU64,
    latency_count: AtomicU64,
    window_us_sum: AtomicU64,
    window_count: AtomicU64,
    /// Send starts per second over the last [`RATE_SECONDS`] seconds (second, count).
    starts: Mutex<[(u64, u64); RATE_SECONDS]>,
}

/// How one channel is doing, for `/v1/status` and the metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChannelStatus {
    /// Sends waiting, by lane.
    pub queued: std::collections::BTreeMap<&'static str, usize>,
    /// Sends between dispatch and result.
    pub in_flight: usize,
    /// The configured limit of sends in flight.
    pub concurrency: usize,
    /// The limit as the provider's answers allow it now.
    pub allowance: usize,
    /// Paused by an operator.
    pub paused: bool,
    /// Milliseconds the provider asked the channel to wait, still to go.
    pub held_ms: u64,
    /// The configured rate limit.
    pub rate_limit: Option<f64>,
    /// Sends started per second over the last ten seconds.
    pub rate: f64,
    /// Mean time the provider took to answer, in milliseconds.
    pub mean_latency_ms: f64,
    /// Mean ambiguous window, in milliseconds: from the dispatch mark (durable before the
    /// call) to the result recorded by the contact's worker. A crash inside it leaves a send
    /// that may or may not have happened.
    pub mean_ambiguous_window_ms: f64,
    /// Sends started since the daemon started.
    pub dispatched: u64,
    /// Calls that succeeded.
    pub succeeded: u64,
    /// Calls that failed (each retry counts).
    pub failed: u64,
    /// Calls the provider refused as too many.
    pub throttled: u64,
}

/// The delivery stage of every channel.
pub struct DeliveryStage {
    store: Arc<dyn Store>,
    flusher: Arc<Flusher>,
    clock: Arc<dyn Clock>,
    sink: OnceLock<Weak<dyn Sink>>,
    channels: RwLock<HashMap<String, Arc<ChannelStage>>>,
    groups: Mutex<HashMap<String, Arc<Pacer>>>,
    /// Keys of sends queued or in flight in this process. A send enters once; the contact's
    /// worker takes it out after it recorded the result.
    registry: Mutex<HashSet<String>>,
    /// Dispatcher threads, one per channel with work.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Where sends in flight run.
    runtime: SendRuntime,
}

/// The async runtime of the sends in flight; shut down without waiting when the stage goes
/// (which may happen inside another runtime, where waiting is not allowed).
struct SendRuntime(Option<tokio::runtime::Runtime>);

impl SendRuntime {
    fn new() -> SendRuntime {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SEND_THREADS)
            .thread_name("herald-send")
            .enable_all()
            .build()
            .expect("start the delivery runtime");
        SendRuntime(Some(runtime))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("runtime present until drop")
            .handle()
    }
}

impl Drop for SendRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Counts a send out of its channel's in-flight sends when it is done, however it ends.
struct InFlight(Arc<ChannelStage>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.locked().in_flight -= 1;
        self.0.wake.notify_all();
    }
}

impl DeliveryStage {
    /// A stage with no channels yet ([`DeliveryStage::configure`] adds them).
    pub fn new(store: Arc<dyn Store>, flusher: Arc<Flusher>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(DeliveryStage {
            store,
            flusher,
            clock,
            sink: OnceLock::new(),
            channels: RwLock::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            registry: Mutex::new(HashSet::new()),
            threads: Mutex::new(Vec::new()),
            runtime: SendRuntime::new(),
        })
    }

    /// Where results go (set once, by the engine).
    pub fn set_sink(&self, sink: Weak<dyn Sink>) {
        let _ = self.sink.set(sink);
    }

    /// Take the channels of a (re)loaded project: new channels get a stage, existing ones the
    /// new channel object and settings; sends already queued stay queued. A channel no longer
    /// configured keeps its stage, so what it has queued still goes out.
    pub fn configure(&self, channels: &[(String, Arc<dyn Channel>, DeliveryConfig)]) {
        let mut groups = self.groups.locked();
        // A group's rate is the smallest of its members'.
        let mut group_rates: HashMap<&str, Option<f64>> = HashMap::new();
        for (_, _, d) in channels {
            if let Some(g) = &d.rate_group {
                let rate = group_rates.entry(g.as_str()).or_insert(d.rate_per_second);
                *rate = match (*rate, d.rate_per_second) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        let mut map = self.channels.write_locked();
        for (name, channel, d) in channels {
            let group = d.rate_group.as_ref().map(|g| {
                let rate = group_rates.get(g.as_str()).copied().flatten();
                let p = groups
                    .entry(g.clone())
                    .or_insert_with(|| Arc::new(Pacer::new(rate)));
                p.set_rate(rate);
                p.clone()
            });
            if let Some(stage) = map.get(name) {
                *stage.channel.write_locked() = channel.clone();
                stage.own_pacer.set_rate(d.rate_per_second);
                *stage.pacer.write_locked() = group.unwrap_or_else(|| stage.own_pacer.clone());
                let mut st = stage.state.locked();
                if st.concurrency != d.concurrency {
                    st.concurrency = d.concurrency;
                    st.allowance = d.concurrency;
                    st.successes = 0;
                }
                drop(st);
                stage.wake.notify_all();
                continue;
            }
            let paused = self
                .store
                .meta(&paused_key(name))
                .ok()
                .flatten()
                .is_some_and(|v| v == "1");
            let own_pacer = Arc::new(Pacer::new(d.rate_per_second));
            map.insert(
                name.clone(),
                Arc::new(ChannelStage {
                    name: name.clone(),
                    channel: RwLock::new(channel.clone()),
                    pacer: RwLock::new(group.unwrap_or_else(|| own_pacer.clone())),
                    own_pacer,
                    state: Mutex::new(Lanes {
                        queues: Default::default(),
                        messages: 0,
                        dispatcher: false,
                        in_flight: 0,
                        concurrency: d.concurrency,
                        allowance: d.concurrency,
                        successes: 0,
                        hold_until: None,
                        paused,
                        stopping: false,
                    }),
                    wake: Condvar::new(),
                    stats: Stats::default(),
                }),
            );
        }
    }

    /// Is this send queued or in flight in this process?
    pub fn holds(&self, key: &str) -> bool {
        self.registry.locked().contains(key)
    }

    /// Hand a send to its channel. Returns false (and queues nothing) when the same key is
    /// already queued or in flight, or the channel has no stage.
    pub fn submit(self: &Arc<Self>, mut send: QueuedSend) -> bool {
        let Some(stage) = self
            .channels
            .read_locked()
            .get(&send.intent.channel)
            .cloned()
        else {
            return false;
        };
        if !self.registry.locked().insert(send.key.clone()) {
            return false;
        }
        let start_dispatcher = {
            let mut st = stage.state.locked();
            if st.messages >= MESSAGES_IN_MEMORY {
                send.message = None;
            }
            if send.message.is_some() {
                st.messages += 1;
            }
            st.queues[lane_index(send.intent.priority)].push_back(send);
            let wanted = !st.dispatcher && !st.stopping;
            if wanted {
                st.dispatcher = true;
            }
            wanted
        };
        if start_dispatcher {
            self.spawn_dispatcher(stage.clone());
        }
        stage.wake.notify_all();
        true
    }

    /// The contact's worker recorded the result of a send dispatched at `since`: the ambiguous
    /// window of that send (dispatch mark to recorded result) closed now.
    pub fn note_window(&self, channel: &str, since: Instant) {
        if let Some(stage) = self.channels.read_locked().get(channel) {
            let us = since.elapsed().as_micros() as u64;
            stage.stats.window_us_sum.fetch_add(us, Ordering::Relaxed);
            stage.stats.window_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The contact's worker recorded the result of `key`: it may be queued again.
    pub fn release(&self, key: &str) {
        self.registry.locked().remove(key);
    }

    /// Pause or resume a channel; the setting is kept across restarts. Sends in flight finish;
    /// queued ones wait.
    pub fn set_paused(
        &self,
        channel: &str,
        paused: bool,
    ) -> Result<bool, crate::store::StoreError> {
        let Some(stage) = self.channels.read_locked().get(channel).cloned() else {
            return Ok(false);
        };
        self.store
            .put_meta(&paused_key(channel), if paused { "1" } else { "0" })?;
        self.flusher
            .commit_blocking()
            .map_err(crate::store::StoreError::Backend)?;
        stage.state.locked().paused = paused;
        stage.wake.notify_all();
        Ok(true)
    }

    /// Each channel's queue, in-flight count, rate and latency.
    pub fn status(&self) -> std::collections::BTreeMap<String, ChannelStatus> {
        let channels: Vec<Arc<ChannelStage>> =
            self.channels.read_locked().values().cloned().collect();
        channels
            .into_iter()
            .map(|stage| (stage.name.clone(), stage.status()))
            .collect()
    }

    /// Stop starting sends and wait for those in flight; their results reach the workers.
    /// Queued sends stay durable and are queued again at the next start.
    pub fn shutdown(&self) {
        let channels: Vec<Arc<ChannelStage>> =
            self.channels.read_locked().values().cloned().collect();
        for stage in &channels {
            stage.state.locked().stopping = true;
            stage.wake.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.locked());
        for t in threads {
            let _ = t.join();
        }
        for stage in &channels {
            let mut st = stage.state.locked();
            while st.in_flight > 0 {
                st = stage.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    fn spawn_dispatcher(self: &Arc<Self>, stage: Arc<ChannelStage>) {
        let me = self.clone();
        let name = format!("herald-dispatch-{}", stage.name);
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || me.dispatcher(stage));
        match spawned {
            Ok(handle) => {
                let mut threads = self.threads.locked();
                threads.retain(|t| !t.is_finished());
                threads.push(handle);
            }
            Err(e) => tracing::error!(error = %e, "could not start a delivery thread"),
        }
    }

    /// A channel's dispatcher: take the sends the limits allow now, start them.
    fn dispatcher(self: Arc<Self>, stage: Arc<ChannelStage>) {
        loop {
            let batch = {
                let mut st = stage.state.locked();
                loop {
                    if st.stopping {
                        st.dispatcher = false;
                        stage.wake.notify_all();
                        return;
                    }
                    let now = Instant::now();
                    let held = st.hold_until.filter(|t| *t > now);
                    if held.is_none() {
                        st.hold_until = None;
                    }
                    let room = st.allowance.saturating_sub(st.in_flight);
                    if !st.paused && held.is_none() && room > 0 && st.queued() > 0 {
                        let mut batch = Vec::with_capacity(room.min(DISPATCH_BATCH));
                        while batch.len() < room.min(DISPATCH_BATCH) {
                            match st.pop() {
                                Some(send) => batch.push(send),
                                None => break,
                            }
                        }
                        st.in_flight += batch.len();
                        break batch;
                    }
                    st = match held {
                        Some(t) => {
                            stage
                                .wake
                                .wait_timeout(st, t - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => stage.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
                    };
                }
            };
            self.dispatch(&stage, batch);
        }
    }

    /// Start a batch of sends: pace them, mark their intents dispatched (one group commit for
    /// all that may start now), then run the provider calls as futures.
    fn dispatch(self: &Arc<Self>, stage: &Arc<ChannelStage>, batch: Vec<QueuedSend>) {
        let pacer = stage.pacer.read_locked().clone();
        let mut ready = Vec::with_capacity(batch.len());
        for send in batch {
            let guard = InFlight(stage.clone());
            let slot = pacer.reserve();
            let now = Instant::now();
            if slot > now {
                // Start what is marked before waiting for the next slot.
                self.launch(stage, std::mem::take(&mut ready));
                std::thread::sleep(slot - now);
            }
            if let Some(marked) = self.mark(stage, send, guard) {
                ready.push(marked);
            }
        }
        self.launch(stage, ready);
    }

    /// Record a send's dispatch mark (not yet flushed). A send that cannot start is answered
    /// at once (not called: it is simply queued again).
    fn mark(
        &self,
        stage: &ChannelStage,
        mut send: QueuedSend,
        guard: InFlight,
    ) -> Option<(QueuedSend, Box<OutboundMessage>, InFlight)> {
        // A run that ended while its send waited (its goal was reached, it was exited) sends
        // nothing more.
        let ended = matches!(self.store.run(&send.run), Ok(Some(r)) if r.status.is_terminal());
        let message = if ended {
            Err("the run ended before the send started".to_string())
        } else {
            match send.message.take() {
                Some(m) => Ok(m),
                None => self.message_from_journal(&send),
            }
        };
        // One policy evaluation, as the send is taken: a send the policy skips is answered
        // at once, never called.
        let message = match message {
            Ok(m) => {
                let decision = match self.sink.get().and_then(Weak::upgrade) {
                    Some(sink) => sink.decide(&send, &m),
                    None => crate::consent::Decision::Send,
                };
                match decision {
                    crate::consent::Decision::Send => Ok(m),
                    crate::consent::Decision::Wait(why) => Err(why),
                    crate::consent::Decision::Defer {
                        until,
                        rule,
                        reason,
                    } => {
                        let sink = self.sink.get().and_then(Weak::upgrade);
                        let result = Err(ChannelError::Deferred {
                            until,
                            rule: rule.to_string(),
                            reason,
                        });
                        self.answer(stage, sink.as_deref(), send, result, false, None);
                        drop(guard);
                        return None;
                    }
                    crate::consent::Decision::Skip { rule, reason } => {
                        let sink = self.sink.get().and_then(Weak::upgrade);
                        let result = Err(ChannelError::Skipped {
                            rule: rule.to_string(),
                            reason,
                        });
                        self.answer(stage, sink.as_deref(), send, result, false, None);
                        drop(guard);
                        return None;
                    }
                }
            }
            Err(e) => Err(e),
        };
        send.intent.dispatched_at = Some(self.clock.now_ms());
        let marked = message.and_then(|m| {
            self.store
                .put_intent(&send.key, &send.intent)
                .map(|_| m)
                .map_err(|e| format!("storage failed: {e}"))
        });
        match marked {
            Ok(message) => Some((send, message, guard)),
            Err(e) => {
                self.not_started(stage, send, e);
                drop(guard);
                None
            }
        }
    }

    /// Make the marks of `ready` durable (one flush), then run their calls.
    fn launch(
        self: &Arc<Self>,
        stage: &Arc<ChannelStage>,
        ready: Vec<(QueuedSend, Box<OutboundMessage>, InFlight)>,
    ) {
        if ready.is_empty() {
            return;
        }
        if let Err(e) = self.flusher.commit_blocking() {
            for (send, _, guard) in ready {
                self.not_started(stage, send, format!("storage failed: {e}"));
                drop(guard);
            }
            return;
        }
        let dispatched = Instant::now();
        let sink = self.sink.get().and_then(Weak::upgrade);
        for (send, message, guard) in ready {
            if let Some(s) = &sink {
                s.failpoint("after_intent");
            }
            stage.stats.note_start();
            let channel = stage.channel.read_locked().clone();
            let (stage, sink, me) = (stage.clone(), sink.clone(), self.clone());
            self.runtime.handle().spawn(async move {
                let _guard = guard;
                let started = Instant::now();
                let result = channel.send(&message).await;
                stage.stats.note_latency(started.elapsed());
                if let Some(s) = &sink {
                    s.failpoint("after_send");
                }
                stage.adapt(&result);
                let mut send = send;
                if let Ok(d) = &result {
                    me.note_answer(&mut send, d);
                    if let Some(s) = &sink {
                        s.failpoint("after_answer");
                    }
                }
                me.answer(
                    &stage,
                    sink.as_deref(),
                    send,
                    result,
                    true,
                    Some(dispatched),
                );
            });
        }
    }

    /// Keep the provider's acceptance on the intent (durable with the next group commit, no
    /// waiting here): a crash before the contact's worker records the result then finds the
    /// send made, not ambiguous.
    fn note_answer(&self, send: &mut QueuedSend, d: &Delivery) {
        send.intent.answered = Some(crate::model::Answered {
            provider_id: d.provider_id.clone(),
            detail: d.detail.clone(),
        });
        match self.store.put_intent(&send.key, &send.intent) {
            Ok(()) => self.flusher.request_flush(),
            Err(e) => {
                tracing::warn!(key = send.key, error = %e, "could not note a provider's answer on its intent")
            }
        }
    }

    /// A send that did not start: its outcome says so, and the worker queues it again.
    fn not_started(&self, stage: &ChannelStage, send: QueuedSend, why: String) {
        let sink = self.sink.get().and_then(Weak::upgrade);
        let result = Err(ChannelError::Transient(format!(
            "the send did not start: {why}"
        )));
        self.answer(stage, sink.as_deref(), send, result, false, None);
    }

    /// Hand an outcome to the contact's worker.
    fn answer(
        &self,
        stage: &ChannelStage,
        sink: Option<&dyn Sink>,
        send: QueuedSend,
        result: Result<Delivery, ChannelError>,
        called: bool,
        dispatched: Option<Instant>,
    ) {
        let outcome = Outcome {
            key: send.key,
            run: send.run,
            contact: send.contact,
            step: send.step,
            attempt: send.attempt,
            channel: stage.name.clone(),
            result,
            called,
            dispatched,
        };
        match sink {
            Some(s) => s.delivered(outcome),
            None => self.release(&outcome.key),
        }
    }

    /// A queued send's message, read back from its run's journal.
    fn message_from_journal(&self, send: &QueuedSend) -> Result<Box<OutboundMessage>, String> {
        let journal = self
            .store
            .journal(&send.run)
            .map_err(|e| format!("storage failed: {e}"))?;
        let step = journal
            .get(send.step as usize)
            .ok_or_else(|| format!("step {} of run {} is gone", send.step, send.run))?;
        serde_json::from_value(step.input.clone())
            .map(Box::new)
            .map_err(|e| format!("recorded message is unreadable: {e}"))
    }
}

impl ChannelStage {
    /// Slow down on "too many requests", grow back on success.
    fn adapt(&self, result: &Result<Delivery, ChannelError>) {
        let mut st = self.state.locked();
        match result {
            Ok(_) => {
                self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                if st.allowance < st.concurrency {
                    st.successes += 1;
                    if st.successes >= GROW_AFTER {
                        st.successes = 0;
                        st.allowance += 1;
                        drop(st);
                        self.wake.notify_one();
                    }
                }
            }
            Err(ChannelError::RateLimited { retry_after_ms, .. }) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                let until = Instant::now() + Duration::from_millis(*retry_after_ms);
                st.hold_until = Some(st.hold_until.map_or(until, |t| t.max(until)));
                st.allowance = (st.allowance / 2).max(1);
                st.successes = 0;
                tracing::info!(
                    channel = self.name,
                    retry_after_ms,
                    allowance = st.allowance,
                    "the provider asked to slow down"
                );
            }
            Err(_) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn status(&self) -> ChannelStatus {
        let st = self.state.locked();
        let now = Instant::now();
        let pacer = self.pacer.read_locked().clone();
        let count = self.stats.latency_count.load(Ordering::Relaxed);
        ChannelStatus {
            queued: Priority::ALL
                .into_iter()
                .map(|p| (p.as_str(), st.queues[lane_index(p)].len()))
                .collect(),
            in_flight: st.in_flight,
            concurrency: st.concurrency,
            allowance: st.allowance,
            paused: st.paused,
            held_ms: st
                .hold_until
                .filter(|t| *t > now)
                .map_or(0, |t| (t - now).as_millis() as u64),
            rate_limit: pacer.rate(),
            rate: self.stats.rate(now),
            mean_latency_ms: if count == 0 {
                0.0
            } else {
                self.stats.latency_us_sum.load(Ordering::Relaxed) as f64 / count as f64 / 1000.0
            },
            mean_ambiguous_window_ms: {
                let n = self.stats.window_count.load(Ordering::Relaxed);
                if n == 0 {
                    0.0
                } else {
                    self.stats.window_us_sum.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0
                }
            },
            dispatched: self.stats.dispatched.load(Ordering::Relaxed),
            succeeded: self.stats.succeeded.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            throttled: self.stats.throttled.load(Ordering::Relaxed),
        }
    }
}

/// The window of the observed send rate, in seconds.
const RATE_SECONDS: usize = 10;

/// Seconds since the process started (for the rate buckets).
fn second(now: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    now.duration_since(*START.get_or_init(Instant::now))
        .as_secs()
}

impl Stats {
    fn note_start(&self) {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        let sec = second(Instant::now());
        let mut starts = self.starts.locked();
        let slot = &mut starts[sec as usize % RATE_SECONDS];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += 1;
    }

    fn note_latency(&self, took: Duration) {
        self.latency_us_sum
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts per second over the last full seconds of the window.
    fn rate(&self, now: Instant) -> f64 {
        let sec = second(now);
        let starts = self.starts.locked();
        let recent: u64 = starts
            .iter()
            .filter(|(s, _)| *s < sec && sec - *s <= RATE_SECONDS as u64)
            .map(|(_, n)| n)
            .sum();
        recent as f64 / RATE_SECONDS as f64
    }
}

fn lane_index(p: Priority) -> usize {
    match p {
        Priority::Transactional => 0,
        Priority::Normal => 1,
        Priority::Bulk => 2,
    }
}

/// Where a channel's pause is kept.
fn paused_key(channel: &str) -> String {
    format!("channel_paused:{channel}")
}

#[cfg(test)]
mod tests;
