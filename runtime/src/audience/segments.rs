//! Segment evaluation for one contact: which segments an evaluation looks at, their
//! memberships and change log, the entered/exited triggers, the behaviour index kept for the
//! next evaluation, and the segment sizes the engine serves.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use herald_dsl::{evaluate_segment, with_host, Host, Trigger};
use serde_json::json;

use super::segment_host::{SegmentData, SegmentHost};
use super::{view_of, Audience, Evaluation};
use crate::audience::behaviour::Behaviour;
use crate::engine::{EngineError, ProjectState};
use crate::model::{Event, Membership, SegmentChange};
use crate::project::SegmentVersion;
use crate::sync::LockExt as _;

/// Segments whose result can depend on the membership of `segment`.
fn dependents<'a>(
    state: &'a ProjectState,
    segment: &'a str,
) -> impl Iterator<Item = &'a String> + 'a {
    state
        .segments
        .iter()
        .filter(move |(n, s)| n.as_str() != segment && s.loaded.deps.reads_segment(segment))
        .map(|(n, _)| n)
}

/// Attributes an evaluation after `event` may see changed (`score_changed`: the score as
/// shown or the stage).
fn changed_attributes(event: Option<&Event>, score_changed: bool) -> Vec<&str> {
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
    changed
}

impl<'a> Evaluation<'a> {
    /// Evaluate the segments this evaluation may change, when the project has any: their
    /// memberships, change log entries, sizes and entered/exited triggers; then keep the
    /// behaviour index and wake up again when the earliest counting window runs out.
    /// `only` limits the segments evaluated; `score_changed` says the score as shown or the
    /// stage changed.
    pub(super) fn segments(
        &mut self,
        only: Option<&BTreeSet<String>>,
        score_changed: bool,
    ) -> Result<(), EngineError> {
        if self.state.segments.is_empty() {
            return Ok(());
        }
        let todo = self.segments_to_evaluate(only, score_changed);
        // The behaviour index, if it is current, with this event folded in.
        let basis = (self.contact.merges, self.state.segments_key);
        let behaviour = self.current_behaviour(basis);
        let data = Rc::new(RefCell::new(SegmentData {
            store: self.engine.store.clone(),
            contact: self.contact.clone(),
            snapshot: None,
            events: None,
            behaviour,
            specs: self.state.counts.clone(),
            rebuild: false,
            // Only built when some segment reads memberships.
            members: if self.state.segments_read_members {
                self.aud.member_of().cloned().collect()
            } else {
                BTreeSet::new()
            },
            now: self.now,
            expiry: None,
        }));
        self.evaluate_segments(todo, &data)?;
        self.keep_behaviour(&data, basis)?;
        let now = self.now;
        let next = self.aud.expiries.values().filter(|at| **at > now).min();
        if let Some(at) = next.copied() {
            self.wake_at(at);
        }
        Ok(())
    }

    /// The segments to look at: every one after a merge (contacts merged into this one since
    /// its last evaluation bring attributes and events) or for a plain re-evaluation;
    /// otherwise those reading an attribute that changed, plus those in `only` or, after an
    /// event, those counting it and those whose window has run out since. Notes the contact's
    /// merges as seen.
    fn segments_to_evaluate(
        &mut self,
        only: Option<&BTreeSet<String>>,
        score_changed: bool,
    ) -> BTreeSet<&'a String> {
        let state = self.state;
        let event = self.event;
        let now = self.now;
        let changed = changed_attributes(event, score_changed);
        // Names borrowed from the project state, which outlives this evaluation.
        let known = |n: &String| state.segments.get_key_value(n).map(|(k, _)| k);
        let merged = self.aud.merges != self.contact.merges;
        self.aud.merges = self.contact.merges;
        let mut todo: BTreeSet<&'a String> = BTreeSet::new();
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
                    self.aud
                        .expiries
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .filter_map(|(n, _)| known(n)),
                );
            }
        }
        todo
    }

    /// The contact's behaviour index, taken out of its state, if it was built on `basis`
    /// (merges and segments), with this evaluation's event folded in. When the segments
    /// changed, expiries of segments that are gone go first.
    fn current_behaviour(&mut self, basis: (u32, u64)) -> Option<Behaviour> {
        let state = self.state;
        // Expiries of segments that are gone go; only after the segments changed can
        // there be any.
        if self
            .aud
            .behaviour
            .as_ref()
            .is_none_or(|b| b.segments != state.segments_key)
        {
            self.aud
                .expiries
                .retain(|name, _| state.segments.contains_key(name));
        }
        let mut behaviour = self
            .aud
            .behaviour
            .take()
            .filter(|b| (b.merges, b.segments) == basis);
        if let (Some(b), Some(e)) = (&mut behaviour, self.event) {
            b.fold(e, &state.counts, self.now);
        }
        behaviour
    }

    /// Evaluate the segments of `todo` in name order, and the segments reading the
    /// membership of one whose answer changed, until none is left (or the segments turn out
    /// to depend on each other in a cycle).
    fn evaluate_segments(
        &mut self,
        mut todo: BTreeSet<&'a String>,
        data: &Rc<RefCell<SegmentData>>,
    ) -> Result<(), EngineError> {
        let state = self.state;
        let mut host: Box<dyn Host> = Box::new(SegmentHost(data.clone()));
        let mut rounds = 0;
        while let Some(name) = todo.pop_first() {
            rounds += 1;
            if rounds > 4 * state.segments.len() + 8 {
                tracing::warn!(
                    contact = self.contact.id,
                    "segments depend on each other in a cycle; stopped re-evaluating"
                );
                break;
            }
            let Some(seg) = state.segments.get(name) else {
                continue;
            };
            let (result, back) = self.evaluate_one(name, seg, data, host);
            host = back;
            let is_member = match result {
                Ok(b) => b,
                Err(msg) => {
                    tracing::warn!(
                        segment = name,
                        contact = self.contact.id,
                        error = msg,
                        "segment evaluation failed; membership unchanged"
                    );
                    continue;
                }
            };
            if is_member == self.aud.segments.get(name).is_some_and(|m| m.member) {
                continue;
            }
            let entries = self.change_membership(name, is_member, data)?;
            todo.extend(dependents(state, name));
            self.fire_segment_triggers(name, is_member, entries)?;
        }
        Ok(())
    }

    /// Evaluate one segment, natively when its `matches` is simple enough, otherwise as a
    /// script against `host` (handed back), and note in the state when its answer will
    /// change by itself.
    fn evaluate_one(
        &mut self,
        name: &str,
        seg: &SegmentVersion,
        data: &Rc<RefCell<SegmentData>>,
        host: Box<dyn Host>,
    ) -> (Result<bool, String>, Box<dyn Host>) {
        data.borrow_mut().expiry = None;
        let fast = seg
            .loaded
            .native
            .as_ref()
            .and_then(|n| herald_dsl::native::evaluate(n, &mut SegmentHost(data.clone())));
        let (result, host) = match fast {
            Some(b) => (Ok(b), host),
            None => with_host(host, || {
                evaluate_segment(&self.engine.rhai, &seg.loaded.ast, &self.engine.limits)
            }),
        };
        match data.borrow().expiry {
            Some(at) => self.aud.expiries.insert(name.to_string(), at),
            None => self.aud.expiries.remove(name),
        };
        (result, host)
    }

    /// Record that the contact entered (`is_member`) or left the segment `name`: its
    /// membership, the memberships segments read, the segment's change log and its size.
    /// Returns how many times the contact has entered the segment.
    fn change_membership(
        &mut self,
        name: &str,
        is_member: bool,
        data: &RefCell<SegmentData>,
    ) -> Result<u64, EngineError> {
        let now = self.now;
        let m = self
            .aud
            .segments
            .entry(name.to_string())
            .or_insert(Membership {
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
            self.engine.store.as_ref(),
            name,
            SegmentChange {
                at: now,
                contact: self.contact.id.clone(),
                entered: is_member,
            },
        )?;
        *self
            .engine
            .segment_sizes
            .locked()
            .entry(name.to_string())
            .or_default() += if is_member { 1 } else { -1 };
        tracing::debug!(
            segment = name,
            contact = self.contact.id,
            entered = is_member,
            "segment membership changed"
        );
        Ok(entries)
    }

    /// Start the runs of workflows triggered by the contact entering (`is_member`) or
    /// leaving the segment `name`; `entries` (the contact's entries so far) names the runs.
    fn fire_segment_triggers(
        &self,
        name: &str,
        is_member: bool,
        entries: u64,
    ) -> Result<(), EngineError> {
        let now = self.now;
        let contact = &self.contact;
        for wf in self.state.workflows.values() {
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
                let view = view_of(contact, &self.aud);
                self.engine
                    .start_run_with_view(wf, contact, view, trigger, id, true)?;
            }
        }
        Ok(())
    }

    /// Keep the behaviour index in the state for the next evaluation: the one the segments
    /// read, or one built from the stored events when a segment asked what it did not cover.
    fn keep_behaviour(
        &mut self,
        data: &RefCell<SegmentData>,
        basis: (u32, u64),
    ) -> Result<(), EngineError> {
        let mut d = data.borrow_mut();
        self.aud.behaviour = if d.rebuild {
            let facts = match d.events.take() {
                Some(f) => f,
                None => self.engine.store.event_facts(&self.contact.id)?,
            };
            Some(Behaviour::build(
                &facts,
                &self.state.counts,
                basis,
                self.now,
            ))
        } else {
            d.behaviour.take()
        };
        Ok(())
    }
}

impl Audience<'_> {
    /// Count members of every segment (at start-up, in the background): from the clean
    /// shutdown's checkpoint when there is one (changes since the start are added to it),
    /// otherwise by replaying each segment's change log.
    pub(crate) fn count_segments(&self) -> Result<(), EngineError> {
        let engine = self.engine;
        if let Some(saved) = engine.store.checkpoint().and_then(|c| c.take_segments()) {
            let mut sizes = engine.segment_sizes.locked();
            for (name, n) in saved {
                *sizes.entry(name).or_default() += n;
            }
        } else {
            let state = engine.state();
            let mut sizes = BTreeMap::new();
            for name in state.segments.keys() {
                sizes.insert(name.clone(), engine.store.member_count(name)? as i64);
            }
            *engine.segment_sizes.locked() = sizes;
        }
        Ok(())
    }

    /// Count the members of segments the size gauges do not know yet, from their change logs.
    pub(crate) fn count_new_segments(&self) -> Result<(), EngineError> {
        let engine = self.engine;
        let state = engine.state();
        for name in state.segments.keys() {
            if engine.segment_sizes.locked().contains_key(name) {
                continue;
            }
            let n = engine.store.member_count(name)? as i64;
            engine
                .segment_sizes
                .locked()
                .entry(name.clone())
                .or_insert(n);
        }
        Ok(())
    }

    /// Current segment sizes.
    pub(crate) fn segment_sizes(&self) -> BTreeMap<String, i64> {
        let state = self.engine.state();
        let sizes = self.engine.segment_sizes.locked();
        state
            .segments
            .keys()
            .map(|k| (k.clone(), sizes.get(k).copied().unwrap_or(0)))
            .collect()
    }
}
