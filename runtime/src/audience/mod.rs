//! Real-time audience: segments evaluated incrementally per contact, lead scores with lazy
//! decay, lifecycle stages, and the triggers they fire.
//!
//! On every event the engine re-evaluates, for that contact only, the segments whose
//! dependencies the event touches (its name, attribute changes, score changes, other segments
//! that changed). Each evaluation reports when its answer can change without a new event (the
//! oldest counted event leaving a rolling window, a score decaying below a stage threshold);
//! the earliest such moment becomes a timer, so "no purchase in 30 days" turns true by itself.
//!
//! The logic lives in `Audience`, which borrows the engine, and in one evaluation of one
//! contact (`Evaluation`): load the state, score (`scoring.rs`), evaluate segments
//! (`segments.rs`, against the host in `segment_host.rs`), schedule the next wake-up, write
//! the state. Backfills are in `backfill.rs`, the behaviour index in [`behaviour`]. The
//! [`Engine`] keeps thin entry points that forward here (at the bottom of this file).

mod backfill;
pub mod behaviour;
mod scoring;
mod segment_host;
mod segments;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use herald_dsl::RuleCondition;
use serde_json::{json, Value};

pub use self::backfill::BackfillStatus;
use crate::engine::{Engine, EngineError, ProjectState};
use crate::model::{AudienceState, Contact, Event};
use crate::store::{Timer, TimerTarget};

/// Audience states a worker keeps decoded between events of the same contacts.
const CACHED_STATES: usize = 8192;

thread_local! {
    /// A worker's decoded audience states: only the contact's worker writes them, so the copy
    /// here is the stored one, or the one the worker's batch writes at its end.
    static STATES: RefCell<std::collections::HashMap<String, AudienceState>> =
        RefCell::new(std::collections::HashMap::new());
}

/// Drop this thread's cached audience states (they may be ahead of the store).
pub(crate) fn forget_cached_states() {
    STATES.with(|s| s.borrow_mut().clear());
}

/// Drop this thread's cached audience state of one contact.
pub(crate) fn forget_cached_state(contact: &str) {
    STATES.with(|s| s.borrow_mut().remove(contact));
}

/// Take this thread's cached audience state of one contact out of the cache.
fn take_cached_state(contact: &str) -> Option<AudienceState> {
    STATES.with(|s| s.borrow_mut().remove(contact))
}

/// Put a contact's audience state, as just written, into this thread's cache (emptied first
/// when full).
fn cache_state(contact: String, aud: AudienceState) {
    STATES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= CACHED_STATES {
            s.clear();
        }
        s.insert(contact, aud);
    });
}

/// Event names the audience of `state` can use; `None` means any.
fn interest(state: &ProjectState) -> Option<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for s in state.segments.values() {
        names.extend(s.loaded.deps.events.clone()?);
    }
    let mut attributes = !state.segments.is_empty();
    if let Some(sc) = &state.scoring {
        for r in &sc.rules {
            match &r.condition {
                Some(RuleCondition::Event { event, .. }) => {
                    names.insert(event.clone());
                }
                Some(RuleCondition::Attribute { .. }) => attributes = true,
                None => {}
            }
        }
    }
    if attributes {
        names.insert("identify".into());
        names.insert("group".into());
    }
    Some(names)
}

/// Whether the project has segments or scoring to evaluate.
fn has_audience(state: &ProjectState) -> bool {
    !state.segments.is_empty() || state.scoring.is_some()
}

/// The contact as a run started now sees it: attributes with score and stage, and the
/// memberships of `aud` (which may not be stored yet).
fn view_of(contact: &Contact, aud: &AudienceState) -> Value {
    let mut v = contact.snapshot();
    v["segments"] = json!(aud.member_of().collect::<Vec<_>>());
    v
}

/// The audience logic of one engine: contacts' views, evaluations, score explanations and
/// segment sizes (the last two in `scoring.rs` and `segments.rs`).
#[derive(Clone, Copy)]
pub(crate) struct Audience<'e> {
    engine: &'e Engine,
}

impl<'e> Audience<'e> {
    /// The audience logic of `engine`.
    pub(crate) fn new(engine: &'e Engine) -> Self {
        Audience { engine }
    }

    /// A contact's view for scripts and templates: attributes, score, stage, segments.
    pub(crate) fn snapshot_of(&self, contact: &Contact) -> Value {
        let aud = crate::engine::audience_state(self.engine.store.as_ref(), &contact.id)
            .ok()
            .flatten();
        let mut c = contact.clone();
        self.overlay(&mut c, aud.as_ref());
        let mut v = c.snapshot();
        v["segments"] = json!(aud
            .as_ref()
            .map(|a| a.member_of().collect::<Vec<_>>())
            .unwrap_or_default());
        v
    }

    /// Put the lead score and stage of the last audience evaluation into the contact's
    /// attributes, as scripts, templates and the API see them.
    pub(crate) fn overlay(&self, contact: &mut Contact, aud: Option<&AudienceState>) {
        if self.engine.state().scoring.is_none() {
            return;
        }
        if let Some(stage) = aud.and_then(|a| a.stage.as_ref()) {
            let score = aud.map_or(0.0, |a| a.score);
            contact
                .attributes
                .insert("score".into(), json!(scoring::round_score(score)));
            contact.attributes.insert("stage".into(), json!(stage));
        }
    }

    /// The audience timer of `contact` fired (`fired`: its due time, when a timer fired):
    /// take it and re-evaluate. A fired timer the state no longer waits on (left by a failed
    /// write) goes too, so it fires once, not again and again.
    pub(crate) fn timer(&self, contact: &str, fired: Option<i64>) -> Result<(), EngineError> {
        let store = self.engine.store.as_ref();
        forget_cached_state(contact);
        let timer_id = TimerTarget::Audience(contact.to_string());
        let st = crate::engine::audience_state(store, contact)?;
        if let Some(due) = fired.filter(|d| st.as_ref().and_then(|s| s.wake_at) != Some(*d)) {
            store.clear_timer(due, &timer_id)?;
        }
        if let Some(mut st) = st {
            if let Some(t) = st.wake_at.take() {
                store.clear_timer(t, &timer_id)?;
                crate::engine::put_audience_state(store, contact, &st)?;
            }
        }
        self.evaluate(contact, None, None)
    }

    /// Update the score and segment memberships of one contact, firing triggers.
    /// `event` is what just happened (`None`: a timer or a backfill); `only` limits the
    /// segments evaluated.
    pub(crate) fn evaluate(
        &self,
        contact_id: &str,
        event: Option<&Event>,
        only: Option<&BTreeSet<String>>,
    ) -> Result<(), EngineError> {
        if !has_audience(&self.engine.state()) {
            return Ok(());
        }
        match self.engine.live_contact(contact_id)? {
            Some(contact) => self.evaluate_contact(contact, event, only),
            None => Ok(()),
        }
    }

    /// [`evaluate`](Self::evaluate) for a contact already read: its state is loaded, it is
    /// scored, its segments evaluated, its next wake-up scheduled and its state written, in
    /// that order. An error ends the evaluation before its state is written.
    pub(crate) fn evaluate_contact(
        &self,
        contact: Contact,
        event: Option<&Event>,
        only: Option<&BTreeSet<String>>,
    ) -> Result<(), EngineError> {
        let state = self.engine.state();
        if !has_audience(&state) {
            return Ok(());
        }
        let mut evaluation = Evaluation::load(self.engine, &state, contact, event)?;
        let score_changed = evaluation.score()?;
        evaluation.segments(only, score_changed)?;
        evaluation.schedule_wake()?;
        evaluation.write()
    }
}

/// One evaluation of one contact's audience: the state it started from, changed step by
/// step and written once at its end.
struct Evaluation<'a> {
    engine: &'a Engine,
    state: &'a ProjectState,
    /// The contact, with the score and stage of this evaluation once scored.
    contact: Contact,
    /// What just happened (`None`: a timer or a backfill).
    event: Option<&'a Event>,
    now: i64,
    aud: AudienceState,
    /// This thread is the contact's worker, so the state goes back into its cache.
    owned: bool,
    /// The earliest moment an answer can change without a new event.
    wake: Option<i64>,
}

impl<'a> Evaluation<'a> {
    /// Start an evaluation of `contact`: its audience state from this worker's cache, or
    /// else as stored.
    fn load(
        engine: &'a Engine,
        state: &'a ProjectState,
        contact: Contact,
        event: Option<&'a Event>,
    ) -> Result<Self, EngineError> {
        let now = engine.clock.now_ms();
        // Taken out of the worker's cache; it goes back only once written. Only the worker
        // that owns the contact caches it (after a merge, jobs routed by the old id can
        // evaluate the surviving contact elsewhere).
        let owned = crate::engine::current_worker()
            == Some(crate::engine::shard_of(&contact.id, engine.worker_count()));
        let cached = if owned {
            take_cached_state(&contact.id)
        } else {
            None
        };
        let aud = match cached {
            Some(a) => a,
            None => crate::engine::audience_state(engine.store.as_ref(), &contact.id)?
                .unwrap_or_default(),
        };
        Ok(Evaluation {
            engine,
            state,
            contact,
            event,
            now,
            aud,
            owned,
            wake: None,
        })
    }

    /// Re-evaluate the contact by itself at `at` at the latest.
    fn wake_at(&mut self, at: i64) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    /// Schedule the next self-triggered re-evaluation. A timer already due earlier stays:
    /// firing early only re-evaluates and schedules the next one, and it saves moving the
    /// timer on every event.
    fn schedule_wake(&mut self) -> Result<(), EngineError> {
        let store = self.engine.store.as_ref();
        let timer_id = TimerTarget::Audience(self.contact.id.clone());
        let now = self.now;
        let wake = self.wake.filter(|w| *w > now);
        if let Some(w) = wake.filter(|w| self.aud.wake_at.is_none_or(|old| *w < old)) {
            if let Some(old) = self.aud.wake_at {
                store.clear_timer(old, &timer_id)?;
            }
            store.set_timer(&Timer {
                due: w,
                target: timer_id,
                contact: self.contact.id.clone(),
            })?;
            self.aud.wake_at = Some(w);
        }
        Ok(())
    }

    /// Write the contact's audience state (with the worker's batch when in one) and, on the
    /// contact's worker, put it back into the cache.
    fn write(self) -> Result<(), EngineError> {
        crate::engine::put_audience_state(self.engine.store.as_ref(), &self.contact.id, &self.aud)?;
        if self.owned {
            cache_state(self.contact.id, self.aud);
        }
        Ok(())
    }
}

// The engine's audience entry points: each forwards to the audience logic above.

impl ProjectState {
    /// Event names the audience can use; `None` means any.
    pub fn audience_interest(&self) -> Option<BTreeSet<String>> {
        interest(self)
    }
}

impl Engine {
    /// A contact's view for scripts and templates: attributes, score, stage, segments.
    pub fn snapshot_of(&self, contact: &Contact) -> Value {
        Audience::new(self).snapshot_of(contact)
    }

    /// Put the lead score and stage of the last audience evaluation into the contact's
    /// attributes, as scripts, templates and the API see them.
    pub fn overlay(&self, contact: &mut Contact, aud: Option<&AudienceState>) {
        Audience::new(self).overlay(contact, aud)
    }

    /// The audience timer of `contact` fired (`fired`: its due time, when a timer fired):
    /// take it and re-evaluate. A fired timer the state no longer waits on (left by a failed
    /// write) goes too, so it fires once, not again and again.
    pub(crate) fn audience_timer(
        &self,
        contact: &str,
        fired: Option<i64>,
    ) -> Result<(), EngineError> {
        Audience::new(self).timer(contact, fired)
    }

    /// Update the score and segment memberships of one contact, firing triggers.
    /// `event` is what just happened (`None`: a timer or a backfill); `only` limits the
    /// segments evaluated.
    pub(crate) fn evaluate_audience(
        &self,
        contact_id: &str,
        event: Option<&Event>,
        only: Option<&BTreeSet<String>>,
    ) -> Result<(), EngineError> {
        Audience::new(self).evaluate(contact_id, event, only)
    }

    /// Explain a contact's score: every recent contribution with its decay applied.
    pub fn explain_score(&self, contact: &Contact) -> Result<Value, EngineError> {
        Audience::new(self).explain_score(contact)
    }

    /// Evaluate changed segments over every stored contact in the background, without pausing
    /// ingest: contacts are queued to their workers in chunks.
    pub fn start_backfill(self: &Arc<Self>) {
        backfill::start(self)
    }

    /// Count members of every segment (at start-up, in the background): from the clean
    /// shutdown's checkpoint when there is one, otherwise from the change logs.
    pub(crate) fn count_segments(&self) -> Result<(), EngineError> {
        Audience::new(self).count_segments()
    }

    /// Count the members of segments the size gauges do not know yet, from their change logs.
    pub fn count_new_segments(&self) -> Result<(), EngineError> {
        Audience::new(self).count_new_segments()
    }

    /// Current segment sizes.
    pub fn segment_sizes(&self) -> BTreeMap<String, i64> {
        Audience::new(self).segment_sizes()
    }
}
