//! Real-time audience: segments evaluated incrementally per contact, lead scores with lazy
//! decay, lifecycle stages, and the triggers they fire.
//!
//! On every event the engine re-evaluates, for that contact only, the segments whose
//! dependencies the event touches (its name, attribute changes, score changes, other segments
//! that changed). Each evaluation reports when its answer can change without a new event (the
//! oldest counted event leaving a rolling window, a score decaying below a stage threshold);
//! the earliest such moment becomes a timer, so "no purchase in 30 days" turns true by itself.

pub mod behaviour;

use crate::sync::LockExt as _;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use herald_dsl::{
    evaluate_segment, with_host, Host, Interrupt, Query, RuleCondition, StepCall, Trigger,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::audience::behaviour::{Behaviour, Specs};
use crate::engine::{Engine, EngineError, Job, ProjectState};
use crate::model::{
    AudienceState, Contact, Contribution, Event, EventFact, Membership, SegmentChange,
};
use crate::store::{Store, Timer, TimerTarget};
use herald_dsl::segment::count_key;

/// How many scored events a contact's state remembers (an event is processed again only if
/// the daemon stopped while it was queued, so only the latest can come back).
const SCORED_MEMORY: usize = 64;

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

/// How many recent contributions a score keeps for explanations before folding them.
const KEEP_CONTRIBUTIONS: usize = 200;

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

impl ProjectState {
    /// Event names the audience can use; `None` means any.
    pub fn audience_interest(&self) -> Option<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for s in self.segments.values() {
            names.extend(s.loaded.deps.events.clone()?);
        }
        let mut attributes = !self.segments.is_empty();
        if let Some(sc) = &self.scoring {
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

    fn has_audience(&self) -> bool {
        !self.segments.is_empty() || self.scoring.is_some()
    }

    /// Segments whose result can depend on the membership of `segment`.
    fn dependents<'a>(&'a self, segment: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.segments
            .iter()
            .filter(move |(n, s)| n.as_str() != segment && s.loaded.deps.reads_segment(segment))
            .map(|(n, _)| n)
    }
}

fn compare(op: &str, got: Option<&Value>, want: &Value) -> bool {
    let Some(got) = got.filter(|v| !v.is_null()) else {
        return false;
    };
    let num = |v: &Value| v.as_f64();
    match op {
        "exists" => true,
        "==" => match (num(got), num(want)) {
            (Some(a), Some(b)) => a == b,
            _ => got == want,
        },
        "!=" => match (num(got), num(want)) {
            (Some(a), Some(b)) => a != b,
            _ => got != want,
        },
        ">" | ">=" | "<" | "<=" => match (num(got), num(want)) {
            (Some(a), Some(b)) => match op {
                ">" => a > b,
                ">=" => a >= b,
                "<" => a < b,
                _ => a <= b,
            },
            _ => false,
        },
        "contains" => match (got, want) {
            (Value::String(a), Value::String(b)) => a.contains(b.as_str()),
            (Value::Array(a), b) => a.contains(b),
            _ => false,
        },
        "ends_with" => {
            matches!((got, want), (Value::String(a), Value::String(b)) if a.ends_with(b.as_str()))
        }
        _ => false,
    }
}

/// The contact as a run started now sees it: attributes with score and stage, and the
/// memberships of `aud` (which may not be stored yet).
fn view_of(contact: &Contact, aud: &AudienceState) -> Value {
    let mut v = contact.snapshot();
    v["segments"] = json!(aud.member_of().collect::<Vec<_>>());
    v
}

/// A score as contacts show it: two decimals.
fn round_score(score: f64) -> f64 {
    (score * 100.0).round() / 100.0
}

/// Points from attribute rules for a contact's current attributes.
fn attribute_points(state: &ProjectState, contact: &Contact) -> Vec<(String, f64)> {
    let Some(sc) = &state.scoring else {
        return Vec::new();
    };
    sc.rules
        .iter()
        .filter_map(|r| match &r.condition {
            Some(RuleCondition::Attribute {
                attribute,
                op,
                value,
            }) => compare(op, contact.attributes.get(attribute), value)
                .then(|| (r.name.clone(), r.points)),
            _ => None,
        })
        .collect()
}

/// What segment evaluations of one contact share: the contact's view and events, read once
/// and only when a segment asks for them.
struct SegmentData {
    store: Arc<dyn Store>,
    contact: Contact,
    snapshot: Option<Value>,
    events: Option<Vec<EventFact>>,
    /// The contact's behaviour index, when it is current.
    behaviour: Option<Behaviour>,
    /// The literal counts of the current segments.
    specs: Arc<Specs>,
    /// The index must be built from the events.
    rebuild: bool,
    members: BTreeSet<String>,
    now: i64,
    /// The earliest moment a counted event leaves its window, over the evaluations so far.
    expiry: Option<i64>,
}

impl SegmentData {
    fn set_member(&mut self, segment: &str, member: bool) {
        if member {
            self.members.insert(segment.to_string());
        } else {
            self.members.remove(segment);
        }
        if let Some(s) = &mut self.snapshot {
            s["segments"] = json!(self.members);
        }
    }
}

/// Host for segment evaluation: reads the contact, answers behaviour queries from its
/// events, and notes when an answer will change by itself.
struct SegmentHost(Rc<RefCell<SegmentData>>);

impl SegmentData {
    /// A count answered from the behaviour index, noting when its oldest event leaves the
    /// window; `None` when there is no current index or it does not track the count over
    /// that window.
    fn indexed_count(&mut self, key: &str, window: i64) -> Option<i64> {
        let now = self.now;
        let mut n = 0;
        for t in self
            .behaviour
            .as_ref()?
            .count(&self.specs, key, window)?
            .filter(|t| *t > now - window && *t <= now)
        {
            n += 1;
            let leaves = t + window;
            self.expiry = Some(self.expiry.map_or(leaves, |x| x.min(leaves)));
        }
        Some(n)
    }
}

impl Host for SegmentHost {
    fn step(&mut self, call: StepCall, _line: Option<usize>) -> Result<Value, Interrupt> {
        match call {
            StepCall::Now => Ok(json!(self.0.borrow().now)),
            other => Err(Interrupt::Fail(format!(
                "`{}` is a workflow step; segments only read data",
                other.kind()
            ))),
        }
    }

    fn contact_attr(&mut self, key: &str) -> Value {
        let mut d = self.0.borrow_mut();
        let d = &mut *d;
        let snapshot = d.snapshot.get_or_insert_with(|| {
            let mut s = d.contact.snapshot();
            s["segments"] = json!(d.members);
            s
        });
        if key == "*" {
            return snapshot.clone();
        }
        snapshot.get(key).cloned().unwrap_or(Value::Null)
    }

    fn log(&mut self, _message: &str) {}

    fn count_literal(
        &mut self,
        spec: &herald_dsl::segment::CountSpec,
        key: &str,
    ) -> Result<Value, Interrupt> {
        let indexed = self.0.borrow_mut().indexed_count(key, spec.window_ms);
        if let Some(n) = indexed {
            return Ok(json!(n));
        }
        self.query(Query::Count {
            event: spec.event.clone(),
            filter: Value::Object(spec.filter.clone()),
            window_ms: spec.window_ms,
        })
    }

    fn query(&mut self, q: Query) -> Result<Value, Interrupt> {
        let mut d = self.0.borrow_mut();
        let d = &mut *d;
        // Answered from the behaviour index when it covers the question.
        if let Query::InSegment { segment } = &q {
            return Ok(json!(d.members.contains(segment)));
        }
        match (&q, &d.behaviour) {
            (
                Query::Count {
                    event,
                    filter,
                    window_ms,
                },
                Some(_),
            ) => {
                let empty = serde_json::Map::new();
                let key = count_key(event, filter.as_object().unwrap_or(&empty));
                if let Some(n) = d.indexed_count(&key, *window_ms) {
                    return Ok(json!(n));
                }
            }
            (Query::LastSeen { event }, Some(b)) => {
                return Ok(b.seen(event).map_or(Value::Null, |(_, last)| json!(last)));
            }
            (Query::FirstSeen { event }, Some(b)) => {
                return Ok(b.seen(event).map_or(Value::Null, |(first, _)| json!(first)));
            }
            (_, None) => d.rebuild = true,
            _ => {}
        }
        if d.events.is_none() {
            let events = d
                .store
                .event_facts(&d.contact.id)
                .map_err(|e| Interrupt::Fail(format!("reading the contact's events: {e}")))?;
            d.events = Some(events);
        }
        let events = d.events.as_deref().unwrap_or_default();
        let named = |name: String| events.iter().filter(move |e| e.event == name);
        Ok(match q {
            Query::Count {
                event,
                filter,
                window_ms,
            } => {
                let now = d.now;
                let from = now - window_ms;
                let empty = serde_json::Map::new();
                let filter = filter.as_object().unwrap_or(&empty);
                let mut n = 0;
                for e in named(event) {
                    if e.timestamp > from && e.timestamp <= now && e.matches(filter) {
                        n += 1;
                        let leaves = e.timestamp + window_ms;
                        d.expiry = Some(d.expiry.map_or(leaves, |x| x.min(leaves)));
                    }
                }
                json!(n)
            }
            Query::LastSeen { event } => named(event)
                .map(|e| e.timestamp)
                .max()
                .map_or(Value::Null, |t| json!(t)),
            Query::FirstSeen { event } => named(event)
                .map(|e| e.timestamp)
                .min()
                .map_or(Value::Null, |t| json!(t)),
            Query::InSegment { segment } => json!(d.members.contains(&segment)),
        })
    }
}

impl Engine {
    /// A contact's view for scripts and templates: attributes, score, stage, segments.
    pub fn snapshot_of(&self, contact: &Contact) -> Value {
        let aud = crate::engine::audience_state(self.store.as_ref(), &contact.id)
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
    pub fn overlay(&self, contact: &mut Contact, aud: Option<&AudienceState>) {
        if self.state().scoring.is_none() {
            return;
        }
        if let Some(stage) = aud.and_then(|a| a.stage.as_ref()) {
            let score = aud.map_or(0.0, |a| a.score);
            contact
                .attributes
                .insert("score".into(), json!(round_score(score)));
            contact.attributes.insert("stage".into(), json!(stage));
        }
    }

    /// The audience timer of `contact` fired (`fired`: its due time, when a timer fired):
    /// take it and re-evaluate. A fired timer the state no longer waits on (left by a failed
    /// write) goes too, so it fires once, not again and again.
    pub(crate) fn audience_timer(
        &self,
        contact: &str,
        fired: Option<i64>,
    ) -> Result<(), EngineError> {
        forget_cached_state(contact);
        let timer_id = TimerTarget::Audience(contact.to_string());
        let st = crate::engine::audience_state(self.store.as_ref(), contact)?;
        if let Some(due) = fired.filter(|d| st.as_ref().and_then(|s| s.wake_at) != Some(*d)) {
            self.store.clear_timer(due, &timer_id)?;
        }
        if let Some(mut st) = st {
            if let Some(t) = st.wake_at.take() {
                self.store.clear_timer(t, &timer_id)?;
                crate::engine::put_audience_state(self.store.as_ref(), contact, &st)?;
            }
        }
        self.evaluate_audience(contact, None, None)
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
        if !self.state().has_audience() {
            return Ok(());
        }
        match self.live_contact(contact_id)? {
            Some(contact) => self.evaluate_audience_of(contact, event, only),
            None => Ok(()),
        }
    }

    /// [`evaluate_audience`](Self::evaluate_audience) for a contact already read.
    pub(crate) fn evaluate_audience_of(
        &self,
        mut contact: Contact,
        event: Option<&Event>,
        only: Option<&BTreeSet<String>>,
    ) -> Result<(), EngineError> {
        let state = self.state();
        if !state.has_audience() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        // Taken out of the worker's cache; it goes back only once written. Only the worker
        // that owns the contact caches it (after a merge, jobs routed by the old id can
        // evaluate the surviving contact elsewhere).
        let owned = crate::engine::current_worker()
            == Some(crate::engine::shard_of(&contact.id, self.worker_count()));
        let cached = if owned {
            STATES.with(|s| s.borrow_mut().remove(&contact.id))
        } else {
            None
        };
        let mut aud = match cached {
            Some(a) => a,
            None => {
                crate::engine::audience_state(self.store.as_ref(), &contact.id)?.unwrap_or_default()
            }
        };
        let mut wake: Option<i64> = None;

        // Scoring.
        let mut score_changed = false;
        if let Some(sc) = &state.scoring {
            let hl = sc.settings.half_life_ms;
            let attr_points: f64 = attribute_points(&state, &contact)
                .iter()
                .map(|(_, p)| p)
                .sum();
            let old_score = aud.score;
            let old_stage = aud
                .stage
                .clone()
                .unwrap_or_else(|| sc.settings.base_stage.clone());
            if let Some(e) = event.filter(|e| !aud.scored.contains(&e.seq)) {
                let before = aud.contributions.len();
                for r in &sc.rules {
                    let Some(RuleCondition::Event {
                        event: name,
                        filter,
                    }) = &r.condition
                    else {
                        continue;
                    };
                    if *name != e.event || !herald_dsl::decl::matches_filter(filter, &e.properties)
                    {
                        continue;
                    }
                    let mut points = r.points;
                    if let Some((max, period)) = r.cap {
                        let used: f64 = aud
                            .contributions
                            .iter()
                            .filter(|c| c.rule == r.name && c.at > now - period)
                            .map(|c| c.points)
                            .sum();
                        points = points.min(max - used);
                    }
                    if points.abs() > f64::EPSILON && (r.points < 0.0 || points > 0.0) {
                        aud.contributions.push(Contribution {
                            rule: r.name.clone(),
                            points,
                            at: now,
                            event: Some(e.event.clone()),
                        });
                    }
                }
                if aud.contributions.len() > before {
                    if aud.scored.len() >= SCORED_MEMORY {
                        aud.scored.remove(0);
                    }
                    aud.scored.push(e.seq);
                }
                aud.fold(hl, KEEP_CONTRIBUTIONS, now);
            }
            let event_points = aud.event_points(hl, now);
            let score = (attr_points + event_points).max(0.0);
            let stage = sc.settings.stage_of(score).to_string();
            // When decay will take the score below the current stage's threshold.
            if let Some(h) = hl {
                if let Some((_, t)) = sc.settings.stages.iter().rev().find(|(_, t)| score >= *t) {
                    let need = t - attr_points;
                    if event_points > 0.0 && need > 0.0 && need <= event_points {
                        let at = now + (h as f64 * (event_points / need).log2()).ceil() as i64 + 1;
                        wake = Some(wake.map_or(at, |w: i64| w.min(at)));
                    }
                }
            }
            aud.score = score;
            aud.stage = Some(stage.clone());
            let rounded = round_score(score);
            // Score and stage are part of the contact's view, not of its stored record (which
            // ingest owns): scripts, templates and the API see them through `overlay`.
            score_changed = round_score(old_score) != rounded || old_stage != stage;
            contact.attributes.insert("score".into(), json!(rounded));
            contact.attributes.insert("stage".into(), json!(stage));
            for wf in state.workflows.values() {
                for t in &wf.loaded.decl.triggers {
                    let (fire, props, tag) = match t {
                        Trigger::ScoreReached { score: n } if old_score < *n && score >= *n => (
                            true,
                            json!({"score": n, "value": rounded}),
                            format!("score{n}"),
                        ),
                        Trigger::StageChanged { stage: s } if *s == stage && old_stage != stage => {
                            (
                                true,
                                json!({"stage": s, "previous": old_stage}),
                                format!("stage-{s}"),
                            )
                        }
                        _ => (false, Value::Null, String::new()),
                    };
                    if fire {
                        let kind = if tag.starts_with("score") {
                            "score_reached"
                        } else {
                            "stage_changed"
                        };
                        let trigger = json!({"type": kind, "event": kind, "properties": props, "timestamp": now});
                        // Named after the event when there is one, so processing it again after
                        // a crash finds the run instead of starting a second one.
                        let id = match event {
                            Some(e) => {
                                format!("{}-{}-{}-e{}", wf.loaded.decl.name, tag, contact.id, e.seq)
                            }
                            None => format!("{}-{}-{}-{now}", wf.loaded.decl.name, tag, contact.id),
                        };
                        // The run sees the new score before it is stored: nothing of this
                        // evaluation is written until its end, so a crash replays all of it.
                        let view = view_of(&contact, &aud);
                        self.start_run_with_view(wf, &contact, view, trigger, id, true)?;
                    }
                }
            }
        }

        // Segments.
        if !state.segments.is_empty() {
            // Attributes this evaluation may see changed.
            let mut changed: Vec<&str> = Vec::new();
            if let Some(e) = event.filter(|e| matches!(e.kind.as_str(), "identify" | "group")) {
                changed.extend(["id", "user_id", "groups"]);
                if let Some(p) = e.properties.as_object() {
                    changed.extend(p.keys().map(String::as_str));
                }
            }
            if score_changed {
                changed.extend(["score", "stage"]);
            }
            // Names borrowed from the project state, which outlives this evaluation.
            let known = |n: &String| state.segments.get_key_value(n).map(|(k, _)| k);
            // Contacts merged into this one since its last evaluation bring attributes and
            // events: everything is looked at again.
            let merged = aud.merges != contact.merges;
            aud.merges = contact.merges;
            let mut todo: BTreeSet<&String> = BTreeSet::new();
            if merged || (only.is_none() && event.is_none()) {
                todo.extend(state.segments.keys());
            } else {
                // Segments reading an attribute that changed.
                if !changed.is_empty() {
                    todo.extend(
                        state
                            .segments
                            .iter()
                            .filter(|(_, s)| s.loaded.deps.reads_any(&changed))
                            .map(|(n, _)| n),
                    );
                }
                if let Some(o) = only {
                    todo.extend(o.iter().filter_map(known));
                } else if let Some(e) = event {
                    // Segments counting this event, or any event.
                    for k in [Some(e.event.clone()), None] {
                        todo.extend(state.segments_by_event.get(&k).into_iter().flatten());
                    }
                    // Windows that have run out since: their timer may not have fired yet.
                    todo.extend(
                        aud.expiries
                            .iter()
                            .filter(|(_, at)| **at <= now)
                            .filter_map(|(n, _)| known(n)),
                    );
                }
            }
            // The behaviour index, if it is current, with this event folded in.
            let basis = (contact.merges, state.segments_key);
            // Expiries of segments that are gone go; only after the segments changed can
            // there be any.
            if aud
                .behaviour
                .as_ref()
                .is_none_or(|b| b.segments != state.segments_key)
            {
                aud.expiries
                    .retain(|name, _| state.segments.contains_key(name));
            }
            let mut behaviour = aud
                .behaviour
                .take()
                .filter(|b| (b.merges, b.segments) == basis);
            if let (Some(b), Some(e)) = (&mut behaviour, event) {
                b.fold(e, &state.counts, now);
            }
            let data = Rc::new(RefCell::new(SegmentData {
                store: self.store.clone(),
                contact: contact.clone(),
                snapshot: None,
                events: None,
                behaviour,
                specs: state.counts.clone(),
                rebuild: false,
                // Only built when some segment reads memberships.
                members: if state.segments_read_members {
                    aud.member_of().cloned().collect()
                } else {
                    BTreeSet::new()
                },
                now,
                expiry: None,
            }));
            let mut host: Box<dyn Host> = Box::new(SegmentHost(data.clone()));
            let mut rounds = 0;
            while let Some(name) = todo.pop_first() {
                rounds += 1;
                if rounds > 4 * state.segments.len() + 8 {
                    tracing::warn!(
                        contact = contact.id,
                        "segments depend on each other in a cycle; stopped re-evaluating"
                    );
                    break;
                }
                let Some(seg) = state.segments.get(name) else {
                    continue;
                };
                data.borrow_mut().expiry = None;
                let fast =
                    seg.loaded.native.as_ref().and_then(|n| {
                        herald_dsl::native::evaluate(n, &mut SegmentHost(data.clone()))
                    });
                let result = match fast {
                    Some(b) => Ok(b),
                    None => {
                        let (result, back) = with_host(host, || {
                            evaluate_segment(&self.rhai, &seg.loaded.ast, &self.limits)
                        });
                        host = back;
                        result
                    }
                };
                match data.borrow().expiry {
                    Some(at) => aud.expiries.insert(name.clone(), at),
                    None => aud.expiries.remove(name),
                };
                let is_member = match result {
                    Ok(b) => b,
                    Err(msg) => {
                        tracing::warn!(
                            segment = name,
                            contact = contact.id,
                            error = msg,
                            "segment evaluation failed; membership unchanged"
                        );
                        continue;
                    }
                };
                if is_member == aud.segments.get(name).is_some_and(|m| m.member) {
                    continue;
                }
                let m = aud.segments.entry(name.clone()).or_insert(Membership {
                    since: now,
                    entries: 0,
                    member: false,
                });
                m.member = is_member;
                if is_member {
                    m.entries += 1;
                    m.since = now;
                }
                let entries = m.entries;
                data.borrow_mut().set_member(name, is_member);
                crate::engine::log_segment_change(
                    self.store.as_ref(),
                    name,
                    SegmentChange {
                        at: now,
                        contact: contact.id.clone(),
                        entered: is_member,
                    },
                )?;
                *self.segment_sizes.locked().entry(name.clone()).or_default() +=
                    if is_member { 1 } else { -1 };
                tracing::debug!(
                    segment = name,
                    contact = contact.id,
                    entered = is_member,
                    "segment membership changed"
                );
                todo.extend(state.dependents(name));
                for wf in state.workflows.values() {
                    let fires = wf.loaded.decl.triggers.iter().any(|t| match t {
                        Trigger::SegmentEntered { segment } => is_member && segment == name,
                        Trigger::SegmentExited { segment } => !is_member && segment == name,
                        _ => false,
                    });
                    if fires {
                        let kind = if is_member {
                            "segment_entered"
                        } else {
                            "segment_exited"
                        };
                        let trigger = json!({"type": kind, "event": kind, "properties": {"segment": name}, "timestamp": now});
                        let dir = if is_member { "in" } else { "out" };
                        let id = format!(
                            "{}-{}-{dir}{}-{}",
                            wf.loaded.decl.name, name, entries, contact.id
                        );
                        let view = view_of(&contact, &aud);
                        self.start_run_with_view(wf, &contact, view, trigger, id, true)?;
                    }
                }
            }

            drop(host);
            let mut d = data.borrow_mut();
            aud.behaviour = if d.rebuild {
                let facts = match d.events.take() {
                    Some(f) => f,
                    None => self.store.event_facts(&contact.id)?,
                };
                Some(Behaviour::build(&facts, &state.counts, basis, now))
            } else {
                d.behaviour.take()
            };
            drop(d);
            if let Some(at) = aud.expiries.values().filter(|at| **at > now).min() {
                wake = Some(wake.map_or(*at, |w| w.min(*at)));
            }
        }

        // Schedule the next self-triggered re-evaluation.
        let timer_id = TimerTarget::Audience(contact.id.clone());
        // A timer already due earlier stays: firing early only re-evaluates and schedules the
        // next one, and it saves moving the timer on every event.
        let wake = wake.filter(|w| *w > now);
        if let Some(w) = wake.filter(|w| aud.wake_at.is_none_or(|old| *w < old)) {
            if let Some(old) = aud.wake_at {
                self.store.clear_timer(old, &timer_id)?;
            }
            self.store.set_timer(&Timer {
                due: w,
                target: timer_id,
                contact: contact.id.clone(),
            })?;
            aud.wake_at = Some(w);
        }
        crate::engine::put_audience_state(self.store.as_ref(), &contact.id, &aud)?;
        if owned {
            STATES.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() >= CACHED_STATES {
                    s.clear();
                }
                s.insert(contact.id.clone(), aud);
            });
        }
        Ok(())
    }

    /// Explain a contact's score: every recent contribution with its decay applied.
    pub fn explain_score(&self, contact: &Contact) -> Result<Value, EngineError> {
        let state = self.state();
        let Some(sc) = &state.scoring else {
            return Err(EngineError::Invalid(
                "this project has no scoring.rhai".into(),
            ));
        };
        let hl = sc.settings.half_life_ms;
        let now = self.clock.now_ms();
        let aud =
            crate::engine::audience_state(self.store.as_ref(), &contact.id)?.unwrap_or_default();
        let mut items: Vec<Value> = aud
            .contributions
            .iter()
            .rev()
            .map(|c| {
                let value = c.points * AudienceState::decay(hl, c.at, now);
                json!({"rule": c.rule, "event": c.event, "at": c.at, "points": c.points, "value": (value * 1000.0).round() / 1000.0})
            })
            .collect();
        if aud.base.abs() > f64::EPSILON {
            let value = aud.base * AudienceState::decay(hl, aud.base_at, now);
            items.push(json!({"rule": "older activity", "at": aud.base_at, "points": aud.base, "value": (value * 1000.0).round() / 1000.0}));
        }
        let attrs: Vec<Value> = attribute_points(&state, contact)
            .into_iter()
            .map(|(r, p)| json!({"rule": r, "points": p, "value": p}))
            .collect();
        let total = (aud.event_points(hl, now)
            + attrs
                .iter()
                .filter_map(|a| a["value"].as_f64())
                .sum::<f64>())
        .max(0.0);
        Ok(json!({
            "contact": contact.id,
            "score": (total * 1000.0).round() / 1000.0,
            "stage": sc.settings.stage_of(total),
            "half_life_ms": hl,
            "at": now,
            "events": items,
            "attributes": attrs,
        }))
    }

    /// Evaluate changed segments over every stored contact in the background, without pausing
    /// ingest: contacts are queued to their workers in chunks.
    pub fn start_backfill(self: &Arc<Self>) {
        let state = self.state();
        let mut changed = BTreeSet::new();
        for (name, seg) in &state.segments {
            let key = format!("segment:{name}");
            if self.store.meta(&key).ok().flatten().as_deref() != Some(seg.hash.as_str()) {
                changed.insert(name.clone());
            }
        }
        if changed.is_empty() {
            return;
        }
        let engine = self.clone();
        std::thread::Builder::new()
            .name("herald-backfill".into())
            .spawn(move || {
                if let Err(e) = engine.backfill(changed, state) {
                    tracing::error!(error = %e, "segment backfill failed");
                }
            })
            .expect("spawn backfill");
    }

    fn backfill(
        &self,
        segments: BTreeSet<String>,
        state: Arc<ProjectState>,
    ) -> Result<(), EngineError> {
        let total = self.store.contact_count()? as u64;
        let started = self.clock.now_ms();
        *self.backfill.locked() = BackfillStatus {
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
            let ids = self.store.contact_ids(after.as_deref(), 2000)?;
            if ids.is_empty() {
                break;
            }
            for id in &ids {
                self.send_job(id, Job::Audience(id.clone(), Some(segments.clone())))?;
            }
            done += ids.len() as u64;
            after = ids.last().cloned();
            // Bound the queues: wait for this chunk before queueing the next.
            self.barrier();
            self.backfill.locked().done = done;
            if done % 100_000 < 2000 {
                tracing::info!(done, total, "segment backfill progress");
            }
        }
        for name in &segments {
            if let Some(seg) = state.segments.get(name) {
                self.store.put_meta(&format!("segment:{name}"), &seg.hash)?;
            }
        }
        let _ = self.flusher.commit_blocking();
        let mut b = self.backfill.locked();
        b.running = false;
        b.done = done;
        b.finished_at = Some(self.clock.now_ms());
        tracing::info!(?segments, contacts = done, "segment backfill finished");
        Ok(())
    }

    /// Count members of every segment (at start-up, in the background): from the clean
    /// shutdown's checkpoint when there is one (changes since the start are added to it),
    /// otherwise by replaying each segment's change log.
    pub(crate) fn count_segments(&self) -> Result<(), EngineError> {
        if let Some(saved) = self.store.checkpoint().and_then(|c| c.take_segments()) {
            let mut sizes = self.segment_sizes.locked();
            for (name, n) in saved {
                *sizes.entry(name).or_default() += n;
            }
        } else {
            let state = self.state();
            let mut sizes = BTreeMap::new();
            for name in state.segments.keys() {
                sizes.insert(name.clone(), self.store.member_count(name)? as i64);
            }
            *self.segment_sizes.locked() = sizes;
        }
        Ok(())
    }

    /// Count the members of segments the size gauges do not know yet, from their change logs.
    pub fn count_new_segments(&self) -> Result<(), EngineError> {
        let state = self.state();
        for name in state.segments.keys() {
            if self.segment_sizes.locked().contains_key(name) {
                continue;
            }
            let n = self.store.member_count(name)? as i64;
            self.segment_sizes.locked().entry(name.clone()).or_insert(n);
        }
        Ok(())
    }

    /// Current segment sizes.
    pub fn segment_sizes(&self) -> BTreeMap<String, i64> {
        let state = self.state();
        let sizes = self.segment_sizes.locked();
        state
            .segments
            .keys()
            .map(|k| (k.clone(), sizes.get(k).copied().unwrap_or(0)))
            .collect()
    }
}
