//! A contact's decision trace: in time order, the events that came in, segment entries and
//! exits, score points and the stage, runs started (and events that started none, with the
//! re-entry rule that decided), every step with its policy decision, consent changes and
//! suppressions. The answer to "why did Jane get this, and why did Joe not?"
//! (`GET /v1/contacts/{id}/trace`, `herald why CONTACT`).

use serde::Serialize;
use serde_json::{json, Value};

use crate::engine::{Engine, EngineError};
use crate::model::{Contact, StepStatus};

/// Events read for a trace (the newest).
pub const TRACE_EVENTS: usize = 500;
/// Changes read per segment's log when looking for the contact's entries and exits.
const SEGMENT_LOG_WINDOW: usize = 5000;

/// One line of a trace.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceEntry {
    /// When (milliseconds since the epoch).
    pub at: i64,
    /// `event`, `segment`, `score`, `run`, `not_started`, `step`, `consent`, `suppression`.
    pub kind: &'static str,
    /// One line in words.
    pub summary: String,
    /// The record behind it.
    pub detail: Value,
}

impl Engine {
    /// The decision trace of a (live) contact, oldest first.
    pub fn trace(&self, contact: &Contact) -> Result<Vec<TraceEntry>, EngineError> {
        let mut out = Vec::new();
        let id = &contact.id;
        let events = self.store.recent_events(id, TRACE_EVENTS)?;
        for e in &events {
            out.push(TraceEntry {
                at: e.timestamp,
                kind: "event",
                summary: format!("{} `{}` came in", e.kind, e.event),
                detail: json!({"seq": e.seq, "event": e.event, "properties": e.properties,
                    "received_at": e.received_at}),
            });
        }
        // Segment entries and exits from the segments' change logs (their newest part).
        let state = self.state();
        for segment in state.segments.keys() {
            for ch in self.store.segment_changes(segment, SEGMENT_LOG_WINDOW)? {
                if &ch.contact == id {
                    out.push(TraceEntry {
                        at: ch.at,
                        kind: "segment",
                        summary: format!(
                            "{} segment `{segment}`",
                            if ch.entered { "entered" } else { "left" }
                        ),
                        detail: json!({"segment": segment, "entered": ch.entered}),
                    });
                }
            }
        }
        if let Some(a) = self.store.audience(id)? {
            for c in &a.contributions {
                out.push(TraceEntry {
                    at: c.at,
                    kind: "score",
                    summary: format!(
                        "{:+} points from rule `{}`{}",
                        c.points,
                        c.rule,
                        c.event
                            .as_deref()
                            .map(|e| format!(" for `{e}`"))
                            .unwrap_or_default()
                    ),
                    detail: json!({"rule": c.rule, "points": c.points, "event": c.event,
                        "score_now": a.score, "stage_now": a.stage}),
                });
            }
        }
        // Runs and their steps.
        let runs = self.store.runs_of_contact(id)?;
        for run in &runs {
            out.push(TraceEntry {
                at: run.created_at,
                kind: "run",
                summary: format!(
                    "run {} of `{}` started by `{}` ({} now)",
                    run.id,
                    run.workflow,
                    run.trigger
                        .get("event")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    run.status.as_str()
                ),
                detail: json!({"run": run.id, "workflow": run.workflow, "status": run.status.as_str(),
                    "reason": run.reason, "trigger": run.trigger}),
            });
            for step in self.store.journal(&run.id)? {
                let at = step.finished_at.unwrap_or(step.started_at);
                out.push(TraceEntry {
                    at,
                    kind: "step",
                    summary: step_summary(&run.workflow, &step),
                    detail: json!({"run": run.id, "step": step.seq, "kind": step.kind,
                        "name": step.name, "status": step.status, "result": step.result,
                        "error": step.error, "due_at": step.due_at}),
                });
            }
        }
        // Events that could have started a run and did not: the re-entry rule decided.
        for wf in state.workflows.values() {
            let decl = &wf.loaded.decl;
            let mut theirs: Vec<&crate::model::Run> =
                runs.iter().filter(|r| r.workflow == decl.name).collect();
            theirs.sort_by_key(|r| r.created_at);
            for e in &events {
                if !decl.triggered_by(&e.event, &e.properties) {
                    continue;
                }
                let run_id = format!("{}-{:016x}", decl.name, e.seq);
                if runs.iter().any(|r| r.id == run_id) {
                    continue;
                }
                let before = theirs
                    .iter()
                    .rev()
                    .find(|r| r.created_at <= e.received_at.max(e.timestamp));
                let why = match (&decl.reentry, before) {
                    (herald_dsl::Reentry::Once, Some(r)) => {
                        format!("re-entry `once`: run {} started before", r.id)
                    }
                    (herald_dsl::Reentry::After { cooldown_ms }, Some(r)) => format!(
                        "re-entry cooldown of {} h: run {} started {} h before",
                        cooldown_ms / 3_600_000,
                        r.id,
                        (e.received_at - r.created_at) / 3_600_000
                    ),
                    _ => "no run was started for it (the workflow changed, or the event came before it existed)".into(),
                };
                out.push(TraceEntry {
                    at: e.received_at,
                    kind: "not_started",
                    summary: format!("`{}` did not start `{}`: {why}", e.event, decl.name),
                    detail: json!({"workflow": decl.name, "event_seq": e.seq, "rule": "reentry"}),
                });
            }
        }
        for r in self.store.consent(id)? {
            out.push(TraceEntry {
                at: r.at,
                kind: "consent",
                summary: format!("{} `{}` ({})", r.status.as_str(), r.topic, r.source),
                detail: serde_json::to_value(&r).unwrap_or_default(),
            });
        }
        for (channel, cfg) in &state.channel_config {
            let Some(address) = cfg
                .to_attribute()
                .and_then(|a| contact.attributes.get(a))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let address = crate::model::normalize_address(address);
            if let Some(s) = self.store.suppression(channel, &address)? {
                out.push(TraceEntry {
                    at: s.at,
                    kind: "suppression",
                    summary: format!(
                        "{} suppressed on `{channel}`: {}",
                        s.address,
                        s.reason.as_str()
                    ),
                    detail: serde_json::to_value(&s).unwrap_or_default(),
                });
            }
        }
        out.sort_by_key(|e| e.at);
        Ok(out)
    }
}

fn step_summary(workflow: &str, step: &crate::model::Step) -> String {
    let what = match step.kind.as_str() {
        "send" => format!(
            "send `{}` on `{}`",
            step.input
                .get("template")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            step.input
                .get("channel")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ),
        kind => format!("{kind} `{}`", step.name),
    };
    let outcome = match (step.kind.as_str(), step.status) {
        ("send", StepStatus::Done) => match step.result.get("status").and_then(Value::as_str) {
            Some("skipped") => format!(
                "skipped by {}: {}",
                step.result["rule"].as_str().unwrap_or("?"),
                step.result["reason"].as_str().unwrap_or("")
            ),
            _ => match step.result.get("deferred") {
                Some(d) => format!(
                    "sent, after being deferred by {}",
                    d["rule"].as_str().unwrap_or("?")
                ),
                None => "sent".into(),
            },
        },
        (_, StepStatus::Retrying)
            if step.result.get("status").and_then(Value::as_str) == Some("deferred") =>
        {
            format!(
                "deferred by {} until {}: {}",
                step.result["rule"].as_str().unwrap_or("?"),
                crate::clock::iso(step.result["until"].as_i64().unwrap_or(0)),
                step.result["reason"].as_str().unwrap_or("")
            )
        }
        (_, status) => format!("{status:?}").to_lowercase(),
    };
    format!("`{workflow}` step {}: {what}: {outcome}", step.seq)
}
