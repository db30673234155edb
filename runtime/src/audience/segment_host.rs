//! The host a segment's `matches` runs against: it reads the contact, answers behaviour
//! queries from the contact's behaviour index or, when the index does not cover a question,
//! from the stored events, and notes when an answer will change by itself.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use herald_dsl::segment::count_key;
use herald_dsl::{Host, Interrupt, Query, StepCall};
use serde_json::{json, Value};

use crate::audience::behaviour::{Behaviour, Specs};
use crate::model::{Contact, EventFact};
use crate::store::Store;

/// What segment evaluations of one contact share: the contact's view and events, read once
/// and only when a segment asks for them.
pub(super) struct SegmentData {
    /// Where the contact's events are read from.
    pub(super) store: Arc<dyn Store>,
    /// The contact, with the score and stage of this evaluation.
    pub(super) contact: Contact,
    /// The contact's view, built when a segment first reads an attribute.
    pub(super) snapshot: Option<Value>,
    /// The contact's stored events, read when a segment first needs them.
    pub(super) events: Option<Vec<EventFact>>,
    /// The contact's behaviour index, when it is current.
    pub(super) behaviour: Option<Behaviour>,
    /// The literal counts of the current segments.
    pub(super) specs: Arc<Specs>,
    /// The index must be built from the events.
    pub(super) rebuild: bool,
    /// The segments the contact is in (only kept when some segment reads memberships).
    pub(super) members: BTreeSet<String>,
    /// The time of the evaluation.
    pub(super) now: i64,
    /// The earliest moment a counted event leaves its window, over the evaluations so far.
    pub(super) expiry: Option<i64>,
}

impl SegmentData {
    /// Record that the contact entered (`member`) or left `segment`.
    pub(super) fn set_member(&mut self, segment: &str, member: bool) {
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
pub(super) struct SegmentHost(pub(super) Rc<RefCell<SegmentData>>);

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
