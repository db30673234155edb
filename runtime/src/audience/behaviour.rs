//! A per-contact index of behaviour, kept in the contact's audience state so that segment
//! queries (`count`, `first_seen`, `last_seen`) are answered without reading the contact's
//! event history on every event.
//!
//! What it keeps follows the segments: first and last time of every event name, and for every
//! `count` written with literal arguments (`count("order", #{ plan: "pro" }, days(30))`) the
//! matching events still inside the window. Any other count (a computed name or window) is
//! answered from the stored events. Entries are keyed by event sequence number, so folding an
//! event that a build already saw changes nothing: the index is exact however event processing
//! and rebuilds interleave.
//!
//! The index is rebuilt from the stored events when the segments change (events no segment
//! used were not folded in) and when contacts were merged into its contact (their events moved
//! in).

use std::collections::BTreeMap;

use herald_dsl::segment::CountSpec;
use serde::{Deserialize, Serialize};

use crate::model::{Event, EventFact};

/// The counts the current segments ask for with literal arguments, by [`CountSpec::key`]; the window of
/// each is the longest asked for.
pub type Specs = BTreeMap<String, CountSpec>;

/// Collect the literal counts of a set of segments.
pub fn specs<'a>(counts: impl IntoIterator<Item = &'a CountSpec>) -> Specs {
    let mut out = Specs::new();
    for c in counts {
        out.entry(c.key())
            .and_modify(|s: &mut CountSpec| s.window_ms = s.window_ms.max(c.window_ms))
            .or_insert_with(|| c.clone());
    }
    out
}

/// The behaviour index of one contact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Behaviour {
    /// The contact's merge count when the index was built.
    pub merges: u32,
    /// [`ProjectState::segments_key`](crate::engine::ProjectState::segments_key) when it was
    /// built: the counts it tracks, and the events folded in, follow the segments.
    pub segments: u64,
    /// First and last timestamp per event name.
    pub names: BTreeMap<String, (i64, i64)>,
    /// Per count key with matching events in its window: `(sequence, timestamp)`, by sequence.
    pub tracked: BTreeMap<String, Vec<(u64, i64)>>,
}

fn see(names: &mut BTreeMap<String, (i64, i64)>, event: &str, t: i64) {
    match names.get_mut(event) {
        Some((first, last)) => {
            *first = (*first).min(t);
            *last = (*last).max(t);
        }
        None => {
            names.insert(event.to_string(), (t, t));
        }
    }
}

impl Behaviour {
    /// Fold one processed event in (folding an event twice changes nothing).
    pub fn fold(&mut self, event: &Event, specs: &Specs, now: i64) {
        see(&mut self.names, &event.event, event.timestamp);
        for (k, spec) in specs {
            if spec.event == event.event
                && event.timestamp > now.saturating_sub(spec.window_ms)
                && herald_dsl::decl::matches_filter(&spec.filter, &event.properties)
            {
                let entries = self.tracked.entry(k.clone()).or_default();
                if let Err(i) = entries.binary_search_by_key(&event.seq, |e| e.0) {
                    entries.insert(i, (event.seq, event.timestamp));
                }
            }
        }
        self.tracked.retain(|k, entries| {
            let window = specs.get(k).map_or(0, |s| s.window_ms);
            let oldest = now.saturating_sub(window);
            entries.retain(|(_, t)| *t > oldest);
            !entries.is_empty()
        });
    }

    /// Timestamps of the events a count can include, when the index tracks it over `window`.
    pub fn count<'a>(
        &'a self,
        specs: &Specs,
        key: &str,
        window: i64,
    ) -> Option<impl Iterator<Item = i64> + 'a> {
        specs.get(key).filter(|s| s.window_ms >= window)?;
        Some(self.tracked.get(key).into_iter().flatten().map(|(_, t)| *t))
    }

    /// First and last timestamp of an event name.
    pub fn seen(&self, event: &str) -> Option<(i64, i64)> {
        self.names.get(event).copied()
    }

    /// Build the index from a contact's events.
    pub fn build(facts: &[EventFact], specs: &Specs, basis: (u32, u64), now: i64) -> Behaviour {
        let mut b = Behaviour {
            merges: basis.0,
            segments: basis.1,
            ..Behaviour::default()
        };
        for f in facts {
            see(&mut b.names, &f.event, f.timestamp);
            for (k, spec) in specs {
                if spec.event == f.event
                    && f.timestamp > now.saturating_sub(spec.window_ms)
                    && f.matches(&spec.filter)
                {
                    b.tracked
                        .entry(k.clone())
                        .or_default()
                        .push((f.seq, f.timestamp));
                }
            }
        }
        for entries in b.tracked.values_mut() {
            entries.sort_unstable();
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    const DAY: i64 = 86_400_000;

    fn event(seq: u64, name: &str, at: i64, props: Value) -> Event {
        Event {
            seq,
            kind: "track".into(),
            event: name.into(),
            properties: props,
            message_id: None,
            timestamp: at,
            received_at: at,
            context: Value::Null,
        }
    }

    fn facts(events: &[Event]) -> Vec<EventFact> {
        events
            .iter()
            .map(|e| {
                let props = Some(e.properties.to_string());
                EventFact::new(e.seq, e.event.clone(), e.timestamp, props)
            })
            .collect()
    }

    fn counted(b: &Behaviour, specs: &Specs, key: &str, window: i64, now: i64) -> Option<usize> {
        b.count(specs, key, window)
            .map(|ts| ts.filter(|t| *t > now - window && *t <= now).count())
    }

    #[test]
    fn the_index_answers_literal_counts_and_folding_is_idempotent() {
        let history = vec![
            event(1, "order", DAY, json!({"plan": "pro"})),
            event(2, "order", 20 * DAY, json!({"plan": "free"})),
            event(3, "visit", 25 * DAY, json!({})),
        ];
        let now = 32 * DAY;
        let pro: Map<String, Value> = json!({"plan": "pro"}).as_object().unwrap().clone();
        let specs = specs(&[
            CountSpec {
                event: "order".into(),
                filter: Map::new(),
                window_ms: 30 * DAY,
            },
            CountSpec {
                event: "order".into(),
                filter: pro.clone(),
                window_ms: 7 * DAY,
            },
        ]);
        let pro_key = herald_dsl::segment::count_key("order", &pro);
        let mut b = Behaviour::build(&facts(&history), &specs, (0, 7), now);
        assert_eq!(
            counted(&b, &specs, "order", 30 * DAY, now),
            Some(1),
            "day 1 is outside"
        );
        assert_eq!(counted(&b, &specs, &pro_key, 7 * DAY, now), Some(0));
        assert_eq!(
            counted(&b, &specs, "order", 60 * DAY, now),
            None,
            "window not covered"
        );
        assert_eq!(
            counted(&b, &specs, "visit", DAY, now),
            None,
            "not a literal count"
        );
        assert_eq!(b.seen("order"), Some((DAY, 20 * DAY)));
        assert_eq!(b.seen("visit"), Some((25 * DAY, 25 * DAY)));

        // Event 2 was in the build; processing it again counts nothing twice.
        b.fold(&history[1], &specs, now);
        let fresh = event(4, "order", now, json!({"plan": "pro"}));
        b.fold(&fresh, &specs, now);
        b.fold(&fresh, &specs, now);
        assert_eq!(counted(&b, &specs, "order", 30 * DAY, now), Some(2));
        assert_eq!(counted(&b, &specs, &pro_key, 7 * DAY, now), Some(1));
        assert_eq!(b.seen("order"), Some((DAY, now)));

        // Building again from every event gives the same index.
        let mut all = history.clone();
        all.push(fresh);
        assert_eq!(Behaviour::build(&facts(&all), &specs, (0, 7), now), b);

        // Entries leave as their window passes.
        b.fold(
            &event(5, "visit", now + 8 * DAY, json!({})),
            &specs,
            now + 8 * DAY,
        );
        assert_eq!(
            counted(&b, &specs, &pro_key, 7 * DAY, now + 8 * DAY),
            Some(0)
        );
        assert!(
            !b.tracked.contains_key(&pro_key),
            "empty entries are dropped"
        );
    }
}
