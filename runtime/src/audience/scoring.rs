//! Lead scoring: points from event rules (within their caps) that decay with the project's
//! half-life, points from attribute rules, the lifecycle stage the score falls in, the score
//! and stage triggers, and score explanations.

use herald_dsl::{LoadedScoring, RuleCondition, ScoringDecl, Trigger};
use serde_json::{json, Value};

use super::{view_of, Audience, Evaluation};
use crate::engine::{EngineError, ProjectState};
use crate::model::{AudienceState, Contact, Contribution, Event};

/// How many scored events a contact's state remembers (an event is processed again only if
/// the daemon stopped while it was queued, so only the latest can come back).
const SCORED_MEMORY: usize = 64;

/// How many recent contributions a score keeps for explanations before folding them.
const KEEP_CONTRIBUTIONS: usize = 200;

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

/// A score as contacts show it: two decimals.
pub(super) fn round_score(score: f64) -> f64 {
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

/// Add the points the event rules award `e` (within their caps) to `aud`, remember `e` as
/// scored when any rule did, and fold contributions too old to keep one by one.
fn apply_event_rules(aud: &mut AudienceState, sc: &LoadedScoring, e: &Event, now: i64) {
    let before = aud.contributions.len();
    for r in &sc.rules {
        let Some(RuleCondition::Event {
            event: name,
            filter,
        }) = &r.condition
        else {
            continue;
        };
        if *name != e.event || !herald_dsl::decl::matches_filter(filter, &e.properties) {
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
    aud.fold(sc.settings.half_life_ms, KEEP_CONTRIBUTIONS, now);
}

/// When decay will take `score` below the threshold of its stage: `None` without decay, below
/// every threshold, or when the attribute points alone keep the stage.
fn stage_lapse(
    settings: &ScoringDecl,
    score: f64,
    attr_points: f64,
    event_points: f64,
    now: i64,
) -> Option<i64> {
    let h = settings.half_life_ms?;
    let (_, t) = settings.stages.iter().rev().find(|(_, t)| score >= *t)?;
    let need = t - attr_points;
    (event_points > 0.0 && need > 0.0 && need <= event_points)
        .then(|| now + (h as f64 * (event_points / need).log2()).ceil() as i64 + 1)
}

/// A contact's score and stage before and after one evaluation.
struct ScoreChange {
    old_score: f64,
    old_stage: String,
    score: f64,
    /// `score` as contacts show it.
    rounded: f64,
    stage: String,
}

/// What `t` fires with after `c`: the trigger's kind, its properties and the tag its run ids
/// carry; `None` when it does not fire.
fn score_trigger(t: &Trigger, c: &ScoreChange) -> Option<(&'static str, Value, String)> {
    match t {
        Trigger::ScoreReached { score: n } if c.old_score < *n && c.score >= *n => Some((
            "score_reached",
            json!({"score": n, "value": c.rounded}),
            format!("score{n}"),
        )),
        Trigger::StageChanged { stage: s } if *s == c.stage && c.old_stage != c.stage => Some((
            "stage_changed",
            json!({"stage": s, "previous": c.old_stage}),
            format!("stage-{s}"),
        )),
        _ => None,
    }
}

impl Evaluation<'_> {
    /// Score the contact, when the project scores: this event's rules, decay, attribute
    /// rules, the stage, a wake-up for when decay lowers the stage, the score and stage put
    /// into the contact's view, and the score and stage triggers. Returns whether the score
    /// as shown or the stage changed.
    pub(super) fn score(&mut self) -> Result<bool, EngineError> {
        let Some(sc) = self.state.scoring.as_deref() else {
            return Ok(false);
        };
        let hl = sc.settings.half_life_ms;
        let now = self.now;
        let attr_points: f64 = attribute_points(self.state, &self.contact)
            .iter()
            .map(|(_, p)| p)
            .sum();
        let old_score = self.aud.score;
        let old_stage = self
            .aud
            .stage
            .clone()
            .unwrap_or_else(|| sc.settings.base_stage.clone());
        if let Some(e) = self.event.filter(|e| !self.aud.scored.contains(&e.seq)) {
            apply_event_rules(&mut self.aud, sc, e, now);
        }
        let event_points = self.aud.event_points(hl, now);
        let score = (attr_points + event_points).max(0.0);
        let stage = sc.settings.stage_of(score).to_string();
        if let Some(at) = stage_lapse(&sc.settings, score, attr_points, event_points, now) {
            self.wake_at(at);
        }
        self.aud.score = score;
        self.aud.stage = Some(stage.clone());
        let rounded = round_score(score);
        // Score and stage are part of the contact's view, not of its stored record (which
        // ingest owns): scripts, templates and the API see them through `overlay`.
        let changed = round_score(old_score) != rounded || old_stage != stage;
        self.contact
            .attributes
            .insert("score".into(), json!(rounded));
        self.contact.attributes.insert("stage".into(), json!(stage));
        self.fire_score_triggers(&ScoreChange {
            old_score,
            old_stage,
            score,
            rounded,
            stage,
        })?;
        Ok(changed)
    }

    /// Start the runs of workflows triggered by the score reaching a threshold or the stage
    /// changing.
    fn fire_score_triggers(&self, change: &ScoreChange) -> Result<(), EngineError> {
        let now = self.now;
        let contact = &self.contact;
        for wf in self.state.workflows.values() {
            for t in &wf.loaded.decl.triggers {
                let Some((kind, props, tag)) = score_trigger(t, change) else {
                    continue;
                };
                let trigger =
                    json!({"type": kind, "event": kind, "properties": props, "timestamp": now});
                // Named after the event when there is one, so processing it again after
                // a crash finds the run instead of starting a second one.
                let id = match self.event {
                    Some(e) => {
                        format!("{}-{}-{}-e{}", wf.loaded.decl.name, tag, contact.id, e.seq)
                    }
                    None => format!("{}-{}-{}-{now}", wf.loaded.decl.name, tag, contact.id),
                };
                // The run sees the new score before it is stored: nothing of this
                // evaluation is written until its end, so a crash replays all of it.
                let view = view_of(contact, &self.aud);
                self.engine
                    .start_run_with_view(wf, contact, view, trigger, id, true)?;
            }
        }
        Ok(())
    }
}

impl Audience<'_> {
    /// Explain a contact's score: every recent contribution with its decay applied.
    pub(crate) fn explain_score(&self, contact: &Contact) -> Result<Value, EngineError> {
        let engine = self.engine;
        let state = engine.state();
        let Some(sc) = &state.scoring else {
            return Err(EngineError::Invalid(
                "this project has no scoring.rhai".into(),
            ));
        };
        let hl = sc.settings.half_life_ms;
        let now = engine.clock.now_ms();
        let aud =
            crate::engine::audience_state(engine.store.as_ref(), &contact.id)?.unwrap_or_default();
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
}
