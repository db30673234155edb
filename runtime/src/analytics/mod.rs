//! Analytics: message and engagement facts, folded into counters as they arrive.
//!
//! **Facts.** The store itself notes a *fact* in the same write batch as the record it comes
//! from (so whenever the record is stored, so is its fact), into the open *generation* of
//! facts:
//!
//! * a send step that reaches its result: `sent`, `skipped` (by the delivery policy) or
//!   `failed`;
//! * an engagement or provider fact on a contact's timeline, recognised by the `messageId`s
//!   only Herald gives (`engagement:…`, `webhook:…`): `delivered`, `opened`, `clicked`,
//!   `machine_opened`, `machine_clicked`, `bounced`, `complained`, `unsubscribed`, `replied`;
//! * a run's start (`started`), its goal reached (`converted`), and how a workflow run first
//!   ended (`completed`, `exited`, `run_failed`; a run its goal ended on its way has no end
//!   fact: its `converted` fact counts it as `goal_reached` where it ended);
//! * for a workflow's funnel, every other step's arrival (`reached`: a wait as soon as it
//!   began) and a `wait_for` that timed out (`timed_out`).
//!
//! Every fact has a deterministic id (`send:RUN:STEP`, the event's `messageId`,
//! `converted:RUN`), so a record written again after a crash notes the same fact again and it
//! is counted once.
//!
//! **The fold.** One thread seals the open generation (writers note into a new one, and the
//! sealing waits for the writes under way, so every fact of a sealed generation has its
//! record stored or never will), takes its facts in pages, adds what they are about (the
//! run's workflow, script version and broadcast, the stable key of the step, the variants
//! the run took, channel, template, recipient domain), and writes in **one atomic batch**:
//! the new counter values, the enriched message and engagement facts in an append-only log
//! (`f` + sequence: the export stream; a run's start, funnel arrivals and end are counted,
//! not logged), a marker per fact id (none for a run's start, noted once), and the cursor
//! (the generation and the last fact id folded). A folded generation is dropped whole, at
//! the cost of its pages: no fact is removed one by one. A crash repeats nothing: the fold
//! goes on after the cursor, and the markers keep a fact noted again (in a later
//! generation) from counting twice; the counters always equal a fold of the facts up to the
//! cursor. `rebuild` derives the facts again from the journals, timelines and runs, folds
//! them into fresh counters and compares.
//!
//! **Counters** are kept per scope (a workflow, a version, a step, a variant, a broadcast,
//! an arm, a channel, a template, a recipient domain), per metric, in total and per hour.
//! Unique clicks count a message's first human click; `clicks` counts every link's.
//! A broadcast's seed sends (its tests) stay out of every number.

pub mod experiments;
pub mod rollup;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::{
    Event, Run, RunStatus, RunSummary, SegmentChange, Step, StepStatus, StepSummary,
};
use crate::store::{Store, StoreError, Write, WriteBatch};
use crate::sync::LockExt as _;

/// The fold's cursor: the generation of facts it is folding (u64 BE) and the id of the last
/// fact it folded there.
const CURSOR: &[u8] = b"g";
/// Key prefix of a folded fact's marker (`d` `\0` id → sequence).
const FOLDED: &[u8] = b"d\0";
/// Key prefix of a unique marker (`u` `\0` message `\0` metric).
const UNIQUE: &[u8] = b"u\0";
/// Key prefix of the folded facts' log (`f` `\0` sequence, u64 BE).
const LOG: &[u8] = b"f\0";
/// Key prefix of an hourly counter (`c` `\0` scope `\0` metric `\0` hour, ten digits).
const COUNTER: &[u8] = b"c\0";
/// Key prefix of a total counter (`t` `\0` scope `\0` metric).
const TOTALS: &[u8] = b"t\0";
/// The last sequence number of the log.
const LAST_SEQ: &[u8] = b"s";
/// Noted facts folded per batch.
const PAGE: usize = 1000;
/// Pages one [`Folder::fold_all`] folds at most.
pub const FOLD_ALL_PAGES: usize = 50;
/// One hour, in ms.
pub const HOUR_MS: i64 = 3_600_000;

/// The kinds of fact an event on a timeline can be (`<channel>_<kind>`).
const EVENT_KINDS: [&str; 9] = [
    "delivered",
    "opened",
    "clicked",
    "machine_opened",
    "machine_clicked",
    "bounced",
    "complained",
    "unsubscribed",
    "replied",
];

/// The metrics a report shows, in order.
pub const METRICS: [&str; 21] = [
    "started",
    "sent",
    "skipped",
    "held_out",
    "failed",
    "delivered",
    "opened",
    "machine_opened",
    "clicked",
    "clicks",
    "machine_clicked",
    "bounced",
    "bounced_hard",
    "bounced_soft",
    "complained",
    "unsubscribed",
    "replied",
    "converted",
    "completed",
    "exited",
    "run_failed",
];

/// A fact as the store notes it, before the fold adds what it is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// Deterministic id: the same fact noted twice is counted once.
    pub id: String,
    /// `sent`, `skipped`, `failed`, `opened`, … or `converted`.
    pub kind: String,
    /// When it happened (ms).
    pub at: i64,
    /// The run it belongs to.
    pub run: String,
    /// The journal step of the message, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// The channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A click's link name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A bounce's type (`hard`, `soft`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce: Option<String>,
    /// A skip's rule (`consent`, `suppression`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// A conversion's revenue: minor units (cents) and currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue: Option<(i64, String)>,
    /// A conversion's share of its goal event's credit, in thousandths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<u32>,
    /// Of a `segment` fact: the segment, and how many contacts entered and left it in the
    /// hour (`at`) by one record of its change log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// See `segment`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub entered: u64,
    /// See `segment`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exited: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The facts a record of a segment's change log notes: per hour it spans, how many entered
/// and left (the fold counts them; they are not message facts, so not in the export).
pub fn facts_of_segment(segment: &str, seq: u64, changes: &[SegmentChange]) -> Vec<Fact> {
    let mut by_hour: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for c in changes {
        let e = by_hour.entry(c.at.div_euclid(HOUR_MS)).or_default();
        if c.entered {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    by_hour
        .into_iter()
        .map(|(hour, (entered, exited))| Fact {
            id: format!("segment:{seq:016x}:{hour}"),
            kind: "segment".into(),
            at: hour * HOUR_MS,
            segment: Some(segment.to_string()),
            entered,
            exited,
            ..Default::default()
        })
        .collect()
}

/// The kinds of journal step a workflow's funnel shows (`now()` and `random()` are reads,
/// not steps a person would name).
pub const FUNNEL_KINDS: [&str; 8] = [
    "send",
    "action",
    "wait",
    "wait_until",
    "wait_for",
    "update",
    "consent",
    "variant",
];

/// The facts a step's record notes: a send's result once it has one (`sent`, `skipped`,
/// `failed`); for the funnel, any other step's arrival (`reached`, as soon as it is
/// recorded: a run waiting there has reached it) and a `wait_for` that timed out.
pub fn facts_of_step(run: &str, step: &Step) -> Vec<Fact> {
    if step.kind == "send" {
        return fact_of_step(run, step).into_iter().collect();
    }
    // A broadcast's steps are no journey's: no funnel (and a million facts fewer).
    if !FUNNEL_KINDS.contains(&step.kind.as_str()) || crate::broadcast::is_recipient_run(run) {
        return Vec::new();
    }
    let mut out = vec![Fact {
        id: format!("reached:{run}:{}", step.seq),
        kind: "reached".into(),
        at: step.started_at,
        run: run.to_string(),
        step: Some(step.seq),
        ..Default::default()
    }];
    if step.kind == "wait_for" && step.status == StepStatus::Done && step.result.is_null() {
        out.push(Fact {
            id: format!("timed_out:{run}:{}", step.seq),
            kind: "timed_out".into(),
            at: step.finished_at.unwrap_or(step.started_at),
            run: run.to_string(),
            step: Some(step.seq),
            ..Default::default()
        });
    }
    out
}

/// The fact a send step's record notes, once the step has its result.
pub fn fact_of_step(run: &str, step: &Step) -> Option<Fact> {
    if step.kind != "send" {
        return None;
    }
    let kind = match step.status {
        StepStatus::Done => match step.result.get("status").and_then(Value::as_str) {
            Some("skipped") => "skipped",
            _ => "sent",
        },
        StepStatus::Failed => "failed",
        _ => return None,
    };
    Some(Fact {
        id: format!("send:{run}:{}", step.seq),
        kind: kind.into(),
        at: step.finished_at.unwrap_or(step.started_at),
        run: run.to_string(),
        step: Some(step.seq),
        channel: step
            .input
            .get("channel")
            .and_then(Value::as_str)
            .map(str::to_string),
        rule: step
            .result
            .get("rule")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Default::default()
    })
}

/// The fact an event on a contact's timeline notes: only Herald's own engagement and
/// provider facts (their `messageId`s cannot come from a client).
pub fn fact_of_event(event: &Event) -> Option<Fact> {
    let id = event.message_id.as_deref()?;
    if !crate::ingest::RESERVED_MESSAGE_ID_PREFIXES
        .iter()
        .any(|p| id.starts_with(p))
    {
        return None;
    }
    let channel = event.properties.get("channel").and_then(Value::as_str)?;
    let kind = event.event.strip_prefix(channel)?.strip_prefix('_')?;
    if !EVENT_KINDS.contains(&kind) {
        return None;
    }
    let run = event.properties.get("run").and_then(Value::as_str)?;
    let text = |k: &str| {
        event
            .properties
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Some(Fact {
        id: id.to_string(),
        kind: kind.to_string(),
        at: event.timestamp,
        run: run.to_string(),
        step: event
            .properties
            .get("step")
            .and_then(Value::as_u64)
            .map(|s| s as u32),
        channel: Some(channel.to_string()),
        link: text("link").or_else(|| text("url")),
        bounce: text("bounce_type"),
        ..Default::default()
    })
}

/// The fact a new run's first record notes: it started.
pub fn fact_of_new_run(run: &Run) -> Option<Fact> {
    Some(Fact {
        id: format!("started:{}", run.id),
        kind: "started".into(),
        at: run.created_at,
        run: run.id.clone(),
        ..Default::default()
    })
}

/// The fact a workflow run's record notes once it first ended: `completed`, `exited` or
/// `run_failed` (counted at the step where it ended, for the funnel; a broadcast's runs have
/// none). A run its goal ended on its way has none: its `converted` fact, noted by the same
/// record, counts it as `goal_reached` at that step (one fact fewer to fold per conversion).
pub fn fact_of_end(run: &Run) -> Option<Fact> {
    if run.trigger["type"] == "broadcast" {
        return None;
    }
    let (status, at) = run.ended?;
    let kind = match status {
        RunStatus::Completed => "completed",
        RunStatus::Exited => "exited",
        RunStatus::Failed => "run_failed",
        _ => return None,
    };
    Some(Fact {
        id: format!("ended:{}", run.id),
        kind: kind.into(),
        at,
        run: run.id.clone(),
        ..Default::default()
    })
}

/// The facts a run's record notes: that it converted, or how it ended otherwise.
pub fn facts_of_run(run: &Run) -> Vec<Fact> {
    fact_of_run(run)
        .into_iter()
        .chain(fact_of_end(run))
        .collect()
}

/// The fact a run's record notes once it reached its goal.
pub fn fact_of_run(run: &Run) -> Option<Fact> {
    if run.status != RunStatus::Converted {
        return None;
    }
    Some(Fact {
        id: format!("converted:{}", run.id),
        kind: "converted".into(),
        at: run.converted_at.unwrap_or(run.updated_at),
        run: run.id.clone(),
        revenue: run.revenue.clone(),
        credit: Some(run.credit.unwrap_or(1000)),
        ..Default::default()
    })
}

/// Whether `contact`'s run of `workflow` is in its holdout group of `share` percent
/// (deterministic per contact and workflow).
pub fn in_holdout(workflow: &str, contact: &str, share: u32) -> bool {
    crate::engine::stable_point(contact, &format!("{workflow}\u{1f}holdout")) % 100
        < u64::from(share)
}

/// The facts `write`'s record notes (most records note none).
pub fn facts_for(write: &Write) -> Vec<Fact> {
    match write {
        Write::Step { run, step } | Write::NewEffect { run, step, .. } => facts_of_step(run, step),
        Write::Event { event, .. } => fact_of_event(event).into_iter().collect(),
        Write::NewRun(run) => fact_of_new_run(run).into_iter().collect(),
        Write::Run(run) => facts_of_run(run),
        _ => Vec::new(),
    }
}

/// A fact with what it is about, as the log keeps it and the export streams it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldedFact {
    /// Position in the log.
    pub seq: u64,
    /// The fact.
    #[serde(flatten)]
    pub fact: Fact,
    /// The run's contact (empty once erased).
    pub contact: String,
    /// The run's workflow (or broadcast).
    pub workflow: String,
    /// The run's script version.
    pub version: String,
    /// The broadcast, when the run is a broadcast's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<String>,
    /// A tested broadcast's phase: `test` (a tester) or `winner` (the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The run is in its workflow's or broadcast's holdout group.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holdout: bool,
    /// The step's stable key (kind, channel, template and occurrence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_key: Option<String>,
    /// For a step's arrival (a funnel step reached, a send's result): the stable key of the
    /// step the run came from, `start` for its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_key: Option<String>,
    /// The template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The recipient's domain (email).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The variants the run took before the step (experiment → arm).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, String>,
    /// Of a variant step's arrival: its experiment (the run is assigned an arm of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// Of a conversion that ended its workflow run on its way: the stable key of the step
    /// where the run was (counted there as `goal_reached`, for the funnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_step: Option<String>,
}

/// What a fact is about, read from its run.
enum Enriched {
    /// Counted with these dimensions.
    Counts(Box<FoldedFact>),
    /// Counted nowhere: a broadcast's seed send.
    Nowhere,
    /// Its record is not stored (a crash between a single-record write's fact and record,
    /// or a run erased since): it never will be, as the fold reads sealed generations only.
    Orphan,
}

/// What one page of the fold did.
struct Folded {
    /// Facts folded.
    folded: usize,
    /// The sealed generation has more pages, or another sealed one waits.
    more: bool,
    /// This page sealed the open generation first.
    sealed: bool,
    /// Nothing was noted since the last seal: nothing to fold.
    idle: bool,
}

/// Runs and journals read while folding one page: a run's facts often come together.
#[derive(Default)]
struct RunCache {
    runs: std::collections::HashMap<String, Option<std::rc::Rc<RunSummary>>>,
    journals: std::collections::HashMap<String, std::rc::Rc<Vec<StepSummary>>>,
}

impl RunCache {
    fn run(
        &mut self,
        store: &dyn Store,
        id: &str,
    ) -> Result<Option<std::rc::Rc<RunSummary>>, StoreError> {
        if let Some(r) = self.runs.get(id) {
            return Ok(r.clone());
        }
        let r = store.run_summary(id)?.map(std::rc::Rc::new);
        // A missing run is not remembered: it may be written in a moment.
        if r.is_some() {
            self.runs.insert(id.to_string(), r.clone());
        }
        Ok(r)
    }

    fn journal(
        &mut self,
        store: &dyn Store,
        id: &str,
    ) -> Result<std::rc::Rc<Vec<StepSummary>>, StoreError> {
        if let Some(j) = self.journals.get(id) {
            return Ok(j.clone());
        }
        let j = std::rc::Rc::new(store.journal_summary(id)?);
        self.journals.insert(id.to_string(), j.clone());
        Ok(j)
    }
}

fn enrich(store: &dyn Store, fact: &Fact, cache: &mut RunCache) -> Result<Enriched, StoreError> {
    // A fact is written with the record it comes from, and the fold reads a generation once
    // its writes are done: a run missing here never came (or was erased since).
    let Some(run) = cache.run(store, &fact.run)? else {
        return Ok(Enriched::Orphan);
    };
    let broadcast = run.is_broadcast().then(|| run.workflow.clone());
    if broadcast.is_some() && run.is_seed() {
        return Ok(Enriched::Nowhere);
    }
    // A run's start needs nothing of its journal.
    let journal = if fact.kind == "started" {
        std::rc::Rc::new(Vec::new())
    } else {
        cache.journal(store, &run.id)?
    };
    // Likewise a step's record (a send's result, a wait's end), and a run's end. (A failed
    // send being sent again is queued: its failure is left out, and its new result counts
    // as if it had replaced it.)
    let recorded = match fact.kind.as_str() {
        "sent" | "skipped" | "failed" | "timed_out" => fact
            .step
            .and_then(|s| journal.get(s as usize))
            .is_some_and(|s| matches!(s.status, StepStatus::Done | StepStatus::Failed)),
        "reached" => fact.step.is_some_and(|s| (s as usize) < journal.len()),
        "completed" | "exited" | "run_failed" | "goal_reached" => run.ended.is_some(),
        _ => true,
    };
    if !recorded {
        return Ok(Enriched::Orphan);
    }
    // The variants taken before the fact: before its step (a variant step's arrival: with
    // its own choice, the run's assignment), none at a run's start (later ones may be
    // journaled by the time the fold reads it), all at its end.
    let upto = match (fact.step, fact.kind.as_str()) {
        (Some(s), "reached") => s as usize + 1,
        (Some(s), _) => s as usize,
        (None, "started") => 0,
        (None, _) => journal.len(),
    };
    let variants = journal
        .iter()
        .take(upto)
        .filter(|s| s.kind == "variant" && s.status == StepStatus::Done)
        .filter_map(|s| Some((s.name.clone(), s.result.as_str()?.to_string())))
        .collect();
    let step = fact.step.and_then(|s| journal.get(s as usize));
    let channel_of = |s: &StepSummary| s.input.channel().unwrap_or("").to_string();
    // Stable across script versions: kind, channel and template (or name), and which
    // occurrence of those in the run.
    // A label the script gave the step replaces the rest (labels have no `/`, keys do).
    let base = |s: &StepSummary| match (&s.label, s.input.template()) {
        (Some(label), _) => label.clone(),
        (None, Some(t)) => format!("{}/{}/{t}", s.kind, channel_of(s)),
        (None, None) => format!("{}/{}", s.kind, s.name),
    };
    let key_of = |s: &StepSummary| {
        let key = base(s);
        let occurrence = journal
            .iter()
            .take(s.seq as usize + 1)
            .filter(|o| base(o) == key)
            .count();
        format!("{key}#{occurrence}")
    };
    let in_funnel = |s: &&StepSummary| FUNNEL_KINDS.contains(&s.kind.as_str());
    // A run's end counts at the last step it reached.
    let step_key = match fact.kind.as_str() {
        "completed" | "exited" | "run_failed" | "goal_reached" => {
            journal.iter().rev().find(in_funnel).map(key_of)
        }
        _ => step.map(key_of),
    };
    // A conversion that ended the run on its way ends it at the last step it reached.
    let goal_step = (fact.kind == "converted"
        && broadcast.is_none()
        && matches!(run.ended, Some((RunStatus::Converted, _))))
    .then(|| journal.iter().rev().find(in_funnel).map(key_of))
    .flatten();
    // A step's arrival comes from the step before it (`start` for the first).
    let from_key = match (fact.kind.as_str(), step) {
        ("reached" | "sent" | "skipped" | "failed", Some(s)) => Some(
            journal
                .iter()
                .take(s.seq as usize)
                .rev()
                .find(in_funnel)
                .map_or_else(|| "start".to_string(), key_of),
        ),
        _ => None,
    };
    // A send step's input is the message as it was rendered.
    let template = step
        .filter(|s| s.kind == "send")
        .and_then(|s| s.input.template())
        .map(str::to_string);
    let domain = step
        .and_then(|s| s.input.to())
        .and_then(|to| to.rsplit_once('@'))
        .map(|(_, d)| d.trim().trim_end_matches('>').to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    Ok(Enriched::Counts(Box::new(FoldedFact {
        seq: 0,
        fact: fact.clone(),
        contact: run.contact.clone(),
        workflow: run.workflow.clone(),
        version: run.script_hash.clone(),
        broadcast,
        phase: run.phase(),
        holdout: run.in_holdout(),
        step_key,
        from_key,
        template,
        domain,
        variants,
        experiment: step
            .filter(|s| s.kind == "variant" && fact.kind == "reached")
            .map(|s| s.name.clone()),
        goal_step,
    })))
}

/// The scopes a fact counts in.
impl FoldedFact {
    /// Its workflow and script version as scopes name them: `NAME@` and the version's first
    /// twelve characters.
    fn versioned(&self) -> String {
        let short: String = self.version.chars().take(12).collect();
        format!("{}@{short}", self.workflow)
    }
}

fn scopes(f: &FoldedFact) -> Vec<String> {
    let mut out = Vec::new();
    // A holdout run counts only in its workflow's or broadcast's holdout scope.
    if f.holdout {
        out.push(match &f.broadcast {
            Some(b) => format!("holdout:broadcast:{b}"),
            None => format!("holdout:workflow:{}", f.workflow),
        });
        return out;
    }
    match &f.broadcast {
        Some(b) => {
            out.push(format!("broadcast:{b}"));
            // An experiment's arms are its testers; the winner's sends to the rest apart.
            if f.phase.as_deref() == Some("winner") {
                out.push(format!("rest:{b}"));
            } else if let Some(arm) = f.variants.get(b) {
                out.push(format!("arm:{b}:{arm}"));
            }
        }
        None => {
            out.push(format!("workflow:{}", f.workflow));
            let versioned = f.versioned();
            out.push(format!("version:{versioned}"));
            if let Some(k) = &f.step_key {
                out.push(format!("step:{versioned}:{k}"));
            }
            for (exp, arm) in &f.variants {
                out.push(format!("variant:{}:{exp}:{arm}", f.workflow));
            }
        }
    }
    if let Some(c) = f.fact.channel.as_deref().filter(|c| !c.is_empty()) {
        out.push(format!("channel:{c}"));
    }
    if let Some(t) = &f.template {
        out.push(format!("template:{t}"));
    }
    if let Some(d) = &f.domain {
        out.push(format!("domain:{d}"));
    }
    out
}

/// The metrics a fact adds one to; `first` says whether it is the message's first of its
/// kind (unique opens and clicks).
fn metrics(f: &FoldedFact, first: bool) -> Vec<&'static str> {
    match f.fact.kind.as_str() {
        "started" => vec!["started"],
        "sent" => vec!["sent"],
        "skipped" if f.fact.rule.as_deref() == Some("holdout") => vec!["held_out"],
        "skipped" => vec!["skipped"],
        "failed" => vec!["failed"],
        "delivered" => vec!["delivered"],
        "opened" if first => vec!["opened"],
        "clicked" if first => vec!["clicked", "clicks"],
        "clicked" => vec!["clicks"],
        "machine_opened" => vec!["machine_opened"],
        "machine_clicked" => vec!["machine_clicked"],
        "bounced" => match f.fact.bounce.as_deref() {
            Some("hard") => vec!["bounced", "bounced_hard"],
            Some("soft") => vec!["bounced", "bounced_soft"],
            _ => vec!["bounced"],
        },
        "complained" => vec!["complained"],
        "unsubscribed" => vec!["unsubscribed"],
        "replied" => vec!["replied"],
        "converted" => vec!["converted"],
        "reached" => vec!["reached"],
        "timed_out" => vec!["timed_out"],
        "completed" => vec!["completed"],
        "exited" => vec!["exited"],
        "run_failed" => vec!["run_failed"],
        "goal_reached" => vec!["goal_reached"],
        _ => Vec::new(),
    }
}

/// Kinds that are counted but not logged: a run's start, its funnel arrivals and its end
/// are no message or engagement facts, which the log keeps for the export.
const UNLOGGED: [&str; 7] = [
    "started",
    "reached",
    "timed_out",
    "completed",
    "exited",
    "run_failed",
    "goal_reached",
];

/// A run's start is noted once (its record is created once, under an id no other run has),
/// so it needs no marker to be counted once.
fn noted_once(kind: &str) -> bool {
    kind == "started"
}

/// Metrics only a workflow's steps have (a step's arrival is no message: it does not count
/// for a channel or the workflow as a whole).
const STEP_ONLY: [&str; 3] = ["reached", "timed_out", "goal_reached"];

/// The key of a message's unique marker for a metric (`opened`, `clicked`).
fn unique_key(f: &FoldedFact) -> Option<String> {
    matches!(f.fact.kind.as_str(), "opened" | "clicked").then(|| {
        format!(
            "{}:{}\0{}",
            f.fact.run,
            f.fact.step.unwrap_or(0),
            f.fact.kind
        )
    })
}

fn total_key(scope: &str, metric: &str) -> Vec<u8> {
    [TOTALS, scope.as_bytes(), b"\0", metric.as_bytes()].concat()
}

/// The key of an hourly counter (hours since the epoch, ten digits so they sort in order).
fn hour_key(scope: &str, metric: &str, hour: i64) -> Vec<u8> {
    let mut k = [COUNTER, scope.as_bytes(), b"\0", metric.as_bytes(), b"\0"].concat();
    k.extend_from_slice(format!("{hour:010}").as_bytes());
    k
}

/// The failure a send's fact replaces: `fact` is a send's result noted again after its
/// failure was folded (at log sequence `seq`) — a success, or a later failure, once an
/// operator sent the dead letter again. `None`: the same fact noted twice, counted once.
fn failure_replaced_by(
    store: &dyn Store,
    fact: &Fact,
    seq: u64,
) -> Result<Option<FoldedFact>, StoreError> {
    if seq == 0 || !matches!(fact.kind.as_str(), "sent" | "skipped" | "failed") {
        return Ok(None);
    }
    let Some(bytes) = store.analytics_get(&[LOG, &seq.to_be_bytes()].concat())? else {
        return Ok(None);
    };
    let Ok(old) = serde_json::from_slice::<FoldedFact>(&bytes) else {
        return Ok(None);
    };
    let replaced = old.fact.id == fact.id
        && old.fact.kind == "failed"
        && (fact.kind != "failed" || fact.at > old.fact.at);
    Ok(replaced.then_some(old))
}

/// Counter deltas, by counter key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts(pub BTreeMap<Vec<u8>, u64>);

impl Counts {
    /// Count `f` (`first`: the message's first open or click) in every scope it belongs to,
    /// in total and in its hour.
    pub fn add(&mut self, f: &FoldedFact, first: bool) {
        let hour = f.fact.at.div_euclid(HOUR_MS);
        let scopes = scopes(f);
        let mut bump = |s: &str, m: &str| {
            *self.0.entry(total_key(s, m)).or_default() += 1;
            *self.0.entry(hour_key(s, m, hour)).or_default() += 1;
        };
        for m in metrics(f, first) {
            for s in &scopes {
                if !STEP_ONLY.contains(&m) || s.starts_with("step:") {
                    bump(s, m);
                }
            }
        }
        // A variant's arm taken: the run counts as `assigned` to it (an experiment's trials
        // for a per-run metric such as `converted`).
        if f.fact.kind == "reached" {
            let exp = f.experiment.as_deref();
            if let Some(arm) = exp.and_then(|e| f.variants.get(e).map(|a| (e, a))) {
                bump(
                    &format!("variant:{}:{}:{}", f.workflow, arm.0, arm.1),
                    "assigned",
                );
            }
        }
        // A conversion that ended its run on its way: where it ended, for the funnel.
        if let (Some(k), false) = (&f.goal_step, f.holdout) {
            bump(&format!("step:{}:{k}", f.versioned()), "goal_reached");
        }
        // The funnel: a step's arrival (a send's result is its send step's) counts as
        // `reached` for the step and as a move from the step before it.
        if let (Some(from), Some(to)) = (&f.from_key, &f.step_key) {
            if let Some(step_scope) = scopes.iter().find(|s| s.starts_with("step:")) {
                if f.fact.kind != "reached" {
                    bump(step_scope, "reached");
                }
                bump(&format!("flow:{}:{from}", f.versioned()), to);
            }
        }
        // A conversion's share of its goal event (thousandths), and its revenue by that share
        // in minor units per currency (refunds, negative, are not counted): summed over
        // workflows and broadcasts, one goal event counts once.
        if let Some(credit) = f.fact.credit {
            let mut sums = vec![("attributed".to_string(), u64::from(credit))];
            if let Some((cents, currency)) = f.fact.revenue.as_ref().filter(|(c, _)| *c > 0) {
                let share = (*cents as u128 * u128::from(credit) + 500) / 1000;
                sums.push((format!("revenue:{currency}"), share as u64));
            }
            for (m, v) in sums.iter().filter(|(_, v)| *v > 0) {
                for s in &scopes {
                    *self.0.entry(total_key(s, m)).or_default() += v;
                    *self.0.entry(hour_key(s, m, hour)).or_default() += v;
                }
            }
        }
    }

    /// Count a segment fact's entries and exits under `segment:NAME`, in total and in its
    /// hour.
    pub fn add_segment(&mut self, f: &Fact) {
        let Some(segment) = &f.segment else { return };
        let scope = format!("segment:{segment}");
        let hour = f.at.div_euclid(HOUR_MS);
        for (m, n) in [("entered", f.entered), ("exited", f.exited)] {
            if n > 0 {
                *self.0.entry(total_key(&scope, m)).or_default() += n;
                *self.0.entry(hour_key(&scope, m, hour)).or_default() += n;
            }
        }
    }

    /// Add these counts to the stored counters, in one batch (the benchmark feeds the fold
    /// this way; the fold thread writes its counts with its facts' log).
    pub fn apply(self, store: &dyn Store) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        for (key, delta) in self.0 {
            let now = store.analytics_get(&key)?.map_or(0, |v| u64_of(&v));
            batch.push(Write::Analytics {
                key,
                value: Some((now + delta).to_be_bytes().to_vec()),
            });
        }
        store.apply(&batch)
    }
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(b)
}

/// How reports count days: the project's timezone and how long hours are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Days {
    /// Where days begin and end.
    pub tz: chrono_tz::Tz,
    /// Hourly counters older than this many days are rolled up into days.
    pub hourly_days: u32,
}

impl Default for Days {
    fn default() -> Self {
        Days {
            tz: chrono_tz::UTC,
            hourly_days: 90,
        }
    }
}

impl Days {
    /// From `[analytics]` (an unknown timezone, which `herald check` refuses, is UTC).
    pub fn from_config(c: &herald_config::AnalyticsConfig) -> Days {
        Days {
            tz: c.timezone.parse().unwrap_or(chrono_tz::UTC),
            hourly_days: c.hourly_days.max(2),
        }
    }
}

/// The fold thread's shared state.
#[derive(Default)]
pub struct Folder {
    lock: Mutex<()>,
    wakeup: crate::sync::Wakeup,
    stop: AtomicBool,
    days: Mutex<Days>,
    /// When the fold thread last rolled hours up (clock ms).
    rolled_at: Mutex<Option<i64>>,
}

/// How long the fold thread rests once it has folded every sealed generation: short, so
/// counters lag the facts by little and no backlog builds up for a reader's `fold_all` to
/// fold alone; long enough that a generation gathers facts worth sealing.
const IDLE: Duration = Duration::from_millis(50);

impl Folder {
    /// Stop the fold thread (after its current page).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.poke();
    }

    /// Ask for a fold now.
    pub fn poke(&self) {
        self.wakeup.poke();
    }

    fn sleep(&self, timeout: Duration) {
        self.wakeup.sleep(timeout);
    }

    /// Set the project's timezone and hourly retention (at start and on reload).
    pub fn configure(&self, days: Days) {
        *self.days.locked() = days;
    }

    /// The project's timezone and hourly retention.
    pub fn days(&self) -> Days {
        *self.days.locked()
    }

    /// Roll the hourly counters older than the retention into days now.
    pub fn roll_up(&self, store: &dyn Store, now: i64) -> Result<rollup::RollUp, StoreError> {
        let days = self.days();
        let before = rollup::boundary(now, days.hourly_days, days.tz);
        let done = rollup::roll_up(store, before, days.tz, &self.lock)?;
        *self.rolled_at.locked() = Some(now);
        if done.hours > 0 {
            tracing::info!(
                hours = done.hours,
                before,
                "hourly counters rolled up into days"
            );
        }
        Ok(done)
    }

    /// Start the fold thread over `store`; it stops with [`Folder::stop`] or when the
    /// store is dropped. Once an hour (by `clock`) it rolls old hours up into days.
    pub fn start(
        self: &Arc<Self>,
        store: Weak<dyn Store>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("herald-analytics".into())
            .spawn(move || loop {
                if me.stop.load(Ordering::Acquire) {
                    return;
                }
                let Some(store) = store.upgrade() else { return };
                let more = match me.fold_next(store.as_ref()) {
                    Ok(page) => page.more,
                    Err(e) => {
                        tracing::error!(error = %e, "folding analytics facts failed; tried again");
                        false
                    }
                };
                let now = clock.now_ms();
                let due = me.rolled_at.locked().is_none_or(|at| now - at >= HOUR_MS || now < at);
                if !more && due {
                    if let Err(e) = me.roll_up(store.as_ref(), now) {
                        tracing::error!(error = %e, "rolling up hourly counters failed; tried again");
                    }
                }
                drop(store);
                if !more {
                    me.sleep(IDLE);
                }
            })
            .expect("spawn the analytics fold")
    }

    /// Fold one page of noted facts (sealing the open generation first when no sealed one
    /// is left); returns how many were folded.
    pub fn fold_page(&self, store: &dyn Store) -> Result<usize, StoreError> {
        Ok(self.fold_next(store)?.folded)
    }

    /// Fold the next page of the oldest sealed generation of facts, sealing the open one
    /// first when none is left. A page that is not full ends its generation (no writer
    /// adds to a sealed one), which is then dropped whole.
    fn fold_next(&self, store: &dyn Store) -> Result<Folded, StoreError> {
        let _g = self.lock.locked();
        let mut sealed = false;
        let generation = match store.sealed_facts()? {
            Some(g) => g,
            None => {
                if !store.seal_facts()? {
                    return Ok(Folded {
                        folded: 0,
                        more: false,
                        sealed: false,
                        idle: true,
                    });
                }
                sealed = true;
                match store.sealed_facts()? {
                    Some(g) => g,
                    None => {
                        return Err(StoreError::Backend(
                            "a sealed generation of facts is missing".into(),
                        ))
                    }
                }
            }
        };
        // Where the fold stopped in this generation, if it was folding it.
        let cursor = store.analytics_get(CURSOR)?.and_then(|c| {
            let (g, id) = c.split_first_chunk::<8>()?;
            Some((u64::from_be_bytes(*g), id.to_vec()))
        });
        if cursor.as_ref().is_some_and(|(g, _)| *g > generation) {
            // Folded whole before a later one (generations are folded oldest first), yet
            // still here (its drop failed): dropped now, not folded again.
            store.drop_facts(generation)?;
            return Ok(Folded {
                folded: 0,
                more: true,
                sealed,
                idle: false,
            });
        }
        let after = cursor.filter(|(g, _)| *g == generation).map(|(_, id)| id);
        let page = store.facts_of(generation, after.as_deref(), PAGE)?;
        let taken = page.len();
        let folded = self.fold_facts(store, generation, page)?;
        let more = if taken < PAGE {
            store.drop_facts(generation)?;
            store.sealed_facts()?.is_some()
        } else {
            true
        };
        Ok(Folded {
            folded,
            more,
            sealed,
            idle: false,
        })
    }

    /// Fold one page of a sealed generation's facts (id, fact) in one batch, the cursor
    /// moved past its last; returns how many were counted somewhere.
    fn fold_facts(
        &self,
        store: &dyn Store,
        generation: u64,
        page: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<usize, StoreError> {
        let Some(last) = page.last().map(|(id, _)| id.clone()) else {
            return Ok(0);
        };
        let taken = page.len();
        let mut dropped = 0;
        // In the order they happened (as a rebuild folds them), so a message's first open
        // or click lands in the hour it happened.
        let mut page: Vec<(Vec<u8>, Result<Fact, serde_json::Error>)> = page
            .into_iter()
            .map(|(k, v)| {
                let fact = serde_json::from_slice::<Fact>(&v);
                (k, fact)
            })
            .collect();
        page.sort_by_cached_key(|(_, f)| f.as_ref().map(|f| (f.at, f.id.clone())).ok());
        let mut seq = store.analytics_get(LAST_SEQ)?.map_or(0, |v| u64_of(&v));
        let mut counts = Counts::default();
        // Counts of failures a send's later result replaces.
        let mut taken_back = Counts::default();
        let mut batch = WriteBatch::with_capacity(2 * taken + 64);
        let mut cache = RunCache::default();
        let mut unique_now: HashSet<String> = HashSet::new();
        let mut logged: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (id, fact) in page {
            let marker = [FOLDED, &id].concat();
            let fact: Fact = match fact {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable analytics fact dropped");
                    dropped += 1;
                    continue;
                }
            };
            // Folded before: counted once, unless it is a send's new result after its
            // failure (an operator sent the dead letter again), which replaces the failure.
            let mut replaces = None;
            let marked = !noted_once(&fact.kind);
            let folded_before = if marked {
                store.analytics_get(&marker)?
            } else {
                None
            };
            if let Some(m) = folded_before {
                match failure_replaced_by(store, &fact, u64_of(&m))? {
                    Some(old) => replaces = Some(old),
                    None => continue,
                }
            }
            if fact.kind == "segment" {
                // Counted, not logged: the export is of messages and engagement.
                counts.add_segment(&fact);
                batch.push(Write::Analytics {
                    key: marker,
                    value: Some(0u64.to_be_bytes().to_vec()),
                });
                continue;
            }
            let mut folded = match enrich(store, &fact, &mut cache)? {
                Enriched::Counts(f) => *f,
                Enriched::Nowhere => {
                    batch.push(Write::Analytics {
                        key: marker,
                        value: Some(0u64.to_be_bytes().to_vec()),
                    });
                    continue;
                }
                Enriched::Orphan => {
                    // No marker: should the fact be noted again with its record (a write
                    // done again after a crash), it counts then.
                    tracing::warn!(
                        fact = fact.id,
                        run = fact.run,
                        "an analytics fact whose record never came is dropped"
                    );
                    dropped += 1;
                    continue;
                }
            };
            let first = match unique_key(&folded) {
                Some(u) => {
                    let k = [UNIQUE, u.as_bytes()].concat();
                    let first = !unique_now.contains(&u) && store.analytics_get(&k)?.is_none();
                    if first {
                        unique_now.insert(u);
                        batch.push(Write::Analytics {
                            key: k,
                            value: Some(vec![1]),
                        });
                    }
                    first
                }
                None => true,
            };
            let logs = !UNLOGGED.contains(&folded.fact.kind.as_str());
            if logs {
                seq += 1;
                folded.seq = seq;
            }
            if let Some(old) = &replaces {
                taken_back.add(old, true);
            }
            counts.add(&folded, first);
            if marked {
                // Its log sequence (0: not logged).
                let at = if logs { seq } else { 0 };
                batch.push(Write::Analytics {
                    key: marker,
                    value: Some(at.to_be_bytes().to_vec()),
                });
            }
            if logs {
                logged.push((
                    [LOG, &seq.to_be_bytes()].concat(),
                    serde_json::to_vec(&folded).expect("a fact serializes"),
                ));
            }
        }
        let keys: std::collections::BTreeSet<&Vec<u8>> =
            counts.0.keys().chain(taken_back.0.keys()).collect();
        // What an hour no longer holds (rolled up into its day since) is taken from the day.
        let mut from_days: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let tz = self.days().tz;
        for key in keys {
            let add = counts.0.get(key).copied().unwrap_or(0);
            let sub = taken_back.0.get(key).copied().unwrap_or(0);
            let now = store.analytics_get(key)?.map_or(0, |v| u64_of(&v)) + add;
            if sub > now {
                if let Some((scope, metric, at)) =
                    rollup::parse_counter(key).filter(|_| key.starts_with(COUNTER))
                {
                    *from_days
                        .entry(rollup::daily_key(
                            &scope,
                            &metric,
                            rollup::day_start(at, tz),
                        ))
                        .or_default() += sub - now;
                }
            }
            batch.push(Write::Analytics {
                key: key.clone(),
                value: Some(now.saturating_sub(sub).to_be_bytes().to_vec()),
            });
        }
        for (key, sub) in from_days {
            let now = store.analytics_get(&key)?.map_or(0, |v| u64_of(&v));
            batch.push(Write::Analytics {
                key,
                value: Some(now.saturating_sub(sub).to_be_bytes().to_vec()),
            });
        }
        batch.push(Write::Analytics {
            key: LAST_SEQ.to_vec(),
            value: Some(seq.to_be_bytes().to_vec()),
        });
        batch.push(Write::Analytics {
            key: CURSOR.to_vec(),
            value: Some([&generation.to_be_bytes()[..], &last].concat()),
        });
        // The log's new entries first, on their own: past the last sequence, nobody reads
        // them until the batch moves it (after a crash in between, the next fold writes the
        // same sequence numbers again). The batch's commit record stays small.
        store.put_analytics(logged)?;
        store.apply(&batch)?;
        Ok(taken - dropped)
    }

    /// Fold every generation a stop or a crash left behind, whole, before the engine replays
    /// anything: a fact whose record a crash cut off is dropped as an orphan before the
    /// record can be written again (with its fact, in the new generation).
    pub fn fold_left_behind(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let mut folded = 0;
        while store.sealed_facts()?.is_some() {
            folded += self.fold_next(store)?.folded;
        }
        Ok(folded)
    }

    /// Fold the facts noted so far now (reports and rebuilds call it first): every sealed
    /// generation, then the open one sealed and folded, at most [`FOLD_ALL_PAGES`] pages, so
    /// a reader under a steady stream of facts is not held.
    pub fn fold_all(&self, store: &dyn Store) -> Result<(), StoreError> {
        let mut sealed = false;
        for _ in 0..FOLD_ALL_PAGES {
            let page = self.fold_next(store)?;
            sealed |= page.sealed;
            if page.idle || (sealed && !page.more) {
                break;
            }
        }
        Ok(())
    }

    /// Hold the fold (an erasure rewrites the facts' log meanwhile).
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.locked()
    }

    /// Derive every fact again from the journals, timelines and runs, fold them into fresh
    /// counters, and compare with the live ones. With `write`, the live counters become the
    /// rebuilt ones.
    pub fn rebuild(&self, store: &dyn Store, write: bool) -> Result<Rebuild, StoreError> {
        self.fold_all(store)?;
        let _g = self.lock.locked();
        let mut facts: Vec<Fact> = Vec::new();
        let mut runs = Vec::new();
        store.scan_runs(&mut |r| {
            runs.push(r);
            true
        })?;
        let mut contacts = HashSet::new();
        for run in &runs {
            contacts.insert(run.contact.clone());
            facts.extend(fact_of_new_run(run));
            for step in store.journal(&run.id)? {
                facts.extend(facts_of_step(&run.id, &step));
            }
            facts.extend(facts_of_run(run));
        }
        for contact in contacts {
            for e in store.events_of(&contact)? {
                facts.extend(fact_of_event(&e));
            }
        }
        store.scan_segment_log(&mut |segment, seq, changes| {
            facts.extend(facts_of_segment(segment, seq, changes));
            true
        })?;
        // In the order they happened, so the first open or click of a message is the one
        // the fold saw first.
        facts.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
        let mut ids = HashSet::new();
        let mut unique = HashSet::new();
        let mut cache = RunCache::default();
        let mut counts = Counts::default();
        let mut folded_facts = 0;
        let mut segment_facts = 0;
        for fact in facts {
            if !ids.insert(fact.id.clone()) {
                continue;
            }
            if fact.kind == "segment" {
                counts.add_segment(&fact);
                segment_facts += 1;
                continue;
            }
            if cache.runs.len() > 10_000 {
                cache = RunCache::default();
            }
            let Enriched::Counts(f) = enrich(store, &fact, &mut cache)? else {
                continue;
            };
            let first = unique_key(&f).is_none_or(|u| unique.insert(u));
            counts.add(&f, first);
            folded_facts += 1;
        }
        // The hours the live counters have rolled into days, likewise.
        rollup::roll_counts(&mut counts.0, rollup::rolled(store)?, self.days().tz);
        let live: BTreeMap<Vec<u8>, u64> = store
            .analytics_scan(COUNTER, None, usize::MAX)?
            .into_iter()
            .chain(store.analytics_scan(TOTALS, None, usize::MAX)?)
            .chain(store.analytics_scan(rollup::DAILY, None, usize::MAX)?)
            .map(|(k, v)| (k, u64_of(&v)))
            .collect();
        let mut differences = Vec::new();
        for key in live
            .keys()
            .chain(counts.0.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let (l, r) = (
                live.get(key).copied().unwrap_or(0),
                counts.0.get(key).copied().unwrap_or(0),
            );
            if l != r {
                differences.push(json!({
                    "counter": String::from_utf8_lossy(&key[2..]).replace('\0', " "),
                    "live": l,
                    "rebuilt": r,
                }));
            }
        }
        if write {
            let mut batch = WriteBatch::new();
            for key in live.keys() {
                batch.push(Write::Analytics {
                    key: key.clone(),
                    value: None,
                });
            }
            for (key, n) in &counts.0 {
                batch.push(Write::Analytics {
                    key: key.clone(),
                    value: Some(n.to_be_bytes().to_vec()),
                });
            }
            store.apply(&batch)?;
        }
        Ok(Rebuild {
            facts: folded_facts,
            segment_facts,
            counters: counts.0.len(),
            differences,
            written: write,
        })
    }
}

/// What a rebuild found.
#[derive(Debug, Clone, Serialize)]
pub struct Rebuild {
    /// Message, engagement and run facts derived from the stored records (seed sends and
    /// gone runs left out).
    pub facts: usize,
    /// Segment facts (entries and exits per change-log record and hour).
    pub segment_facts: usize,
    /// Counters they make.
    pub counters: usize,
    /// Counters whose live value differs from the rebuilt one.
    pub differences: Vec<Value>,
    /// Whether the live counters were replaced.
    pub written: bool,
}

/// One scope's numbers over a period: each metric's count and the rates derived from them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Numbers {
    /// Count per metric (every metric, zeros included).
    pub counts: BTreeMap<String, u64>,
    /// Rates per message sent: `open_rate`, `click_rate`, `click_to_open_rate`,
    /// `bounce_rate`, `complaint_rate`, `unsubscribe_rate`, `conversion_rate`, and
    /// `delivery_rate` where providers report deliveries.
    pub rates: BTreeMap<String, f64>,
    /// Revenue of the conversions, per currency (in major units: 12.5 is 12.50), by their
    /// share of each goal event (`[analytics] attribution`).
    pub revenue: BTreeMap<String, f64>,
    /// Conversions by their share of each goal event: one goal event adds up to 1 over all
    /// workflows and broadcasts, however many of their runs it converted.
    pub attributed: f64,
}

impl Numbers {
    fn derive(&mut self) {
        let c = |m: &str| self.counts.get(m).copied().unwrap_or(0) as f64;
        let sent = c("sent");
        let ratio = |n: f64, d: f64| if d > 0.0 { n / d } else { 0.0 };
        let mut rates = BTreeMap::new();
        rates.insert("open_rate".into(), ratio(c("opened"), sent));
        rates.insert("click_rate".into(), ratio(c("clicked"), sent));
        rates.insert(
            "click_to_open_rate".into(),
            ratio(c("clicked"), c("opened")),
        );
        rates.insert("bounce_rate".into(), ratio(c("bounced"), sent));
        rates.insert("complaint_rate".into(), ratio(c("complained"), sent));
        rates.insert("unsubscribe_rate".into(), ratio(c("unsubscribed"), sent));
        rates.insert("conversion_rate".into(), ratio(c("converted"), sent));
        if c("delivered") > 0.0 {
            rates.insert("delivery_rate".into(), ratio(c("delivered"), sent));
        }
        self.rates = rates;
        let mut revenue = BTreeMap::new();
        let mut attributed = None;
        self.counts.retain(|k, v| {
            if k == "attributed" {
                attributed = Some(*v as f64 / 1000.0);
                return false;
            }
            match k.strip_prefix("revenue:") {
                Some(currency) => {
                    revenue.insert(currency.to_string(), *v as f64 / 100.0);
                    false
                }
                None => true,
            }
        });
        if let Some(a) = attributed {
            self.attributed = a;
        }
        self.revenue.extend(revenue);
    }
}

/// A period of a report: hours `[from, to)`, or everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    /// Start (ms), inclusive.
    pub from: Option<i64>,
    /// End (ms), exclusive.
    pub to: Option<i64>,
}

/// Every scope starting with `prefix` (e.g. `arm:spring:`) and its numbers over `period`:
/// the totals when the period is everything, else the sum of its hours.
pub fn numbers_by_scope(
    store: &dyn Store,
    prefix: &str,
    period: Period,
) -> Result<BTreeMap<String, Numbers>, StoreError> {
    let mut out: BTreeMap<String, Numbers> = BTreeMap::new();
    let whole = period.from.is_none() && period.to.is_none();
    let mut add = |scope: &str, metric: &str, n: u64| {
        let e = out.entry(scope.to_string()).or_default();
        if e.counts.is_empty() {
            for m in METRICS {
                e.counts.insert(m.to_string(), 0);
            }
        }
        *e.counts.entry(metric.to_string()).or_default() += n;
    };
    if whole {
        let key_prefix = [TOTALS, prefix.as_bytes()].concat();
        for (key, value) in store.analytics_scan(&key_prefix, None, usize::MAX)? {
            let rest = String::from_utf8_lossy(&key[TOTALS.len()..]).into_owned();
            if let Some((scope, metric)) = rest.rsplit_once('\0') {
                add(scope, metric, u64_of(&value));
            }
        }
    } else {
        let (from, to) = hour_range(period);
        let key_prefix = [COUNTER, prefix.as_bytes()].concat();
        for (key, value) in store.analytics_scan(&key_prefix, None, usize::MAX)? {
            let rest = String::from_utf8_lossy(&key[COUNTER.len()..]).into_owned();
            let mut parts = rest.rsplitn(3, '\0');
            let (Some(hour), Some(metric), Some(scope)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            match hour.parse::<i64>() {
                Ok(h) if h >= from && h < to => add(scope, metric, u64_of(&value)),
                // Scopes with nothing in the period still show, with zeros.
                _ => add(scope, metric, 0),
            }
        }
        // Days rolled up from hours: those that start in the period.
        for (scope, metric, _, n) in rollup::days_in(store, prefix.as_bytes(), period)? {
            add(&scope, &metric, n);
        }
    }
    for n in out.values_mut() {
        n.derive();
    }
    Ok(out)
}

/// The hours `[from, to)` of a period.
fn hour_range(period: Period) -> (i64, i64) {
    (
        period.from.map_or(i64::MIN, |f| f.div_euclid(HOUR_MS)),
        period
            .to
            .map_or(i64::MAX, |t| (t + HOUR_MS - 1).div_euclid(HOUR_MS)),
    )
}

/// One scope's numbers over `period` (zeros when nothing was counted).
pub fn numbers(store: &dyn Store, scope: &str, period: Period) -> Result<Numbers, StoreError> {
    let mut all = numbers_by_scope(store, &format!("{scope}\0"), period)?;
    // Found: already complete and derived; not found: zeros.
    Ok(all.remove(scope).unwrap_or_else(|| {
        let mut n = Numbers::default();
        for m in METRICS {
            n.counts.insert(m.to_string(), 0);
        }
        n.derive();
        n
    }))
}

/// One step of a workflow version's funnel.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunnelStep {
    /// The step's stable key (`send/email/welcome#1`, `wait_for/order_completed#1`, …).
    pub key: String,
    /// Runs that reached it (a wait's as soon as it began).
    pub reached: u64,
    /// Of a send step: sent, skipped by the delivery policy, failed, held out.
    pub sent: u64,
    /// See `sent`.
    pub skipped: u64,
    /// See `sent`.
    pub failed: u64,
    /// Of a `wait_for`: runs whose wait ended without the event.
    pub timed_out: u64,
    /// Runs that went on from here, by the step they went to.
    pub next: BTreeMap<String, u64>,
    /// Runs that ended here: `completed` (the script returned), `exited`, `run_failed`, or
    /// `goal_reached` (converted on their way).
    pub ended: BTreeMap<String, u64>,
    /// Runs still here (waiting, or their next step not recorded yet): reached, less those
    /// that went on or ended. Over a period, runs that arrived in it and have not moved on
    /// within it.
    pub here: u64,
}

/// A workflow's funnel per script version (short hash): its steps in the order runs take
/// them (the most travelled way first), each with its arrivals, moves and ends over `period`.
pub fn funnel(
    store: &dyn Store,
    workflow: &str,
    period: Period,
) -> Result<BTreeMap<String, Vec<FunnelStep>>, StoreError> {
    let steps = numbers_by_scope(store, &format!("step:{workflow}@"), period)?;
    let moves = numbers_by_scope(store, &format!("flow:{workflow}@"), period)?;
    let mut versions: BTreeMap<String, BTreeMap<String, FunnelStep>> = BTreeMap::new();
    for (scope, n) in &steps {
        let rest = &scope[format!("step:{workflow}@").len()..];
        let Some((version, key)) = rest.split_once(':') else {
            continue;
        };
        let c = |m: &str| n.counts.get(m).copied().unwrap_or(0);
        let ended = ["completed", "exited", "run_failed", "goal_reached"]
            .into_iter()
            .filter(|m| c(m) > 0)
            .map(|m| (m.to_string(), c(m)))
            .collect();
        versions.entry(version.to_string()).or_default().insert(
            key.to_string(),
            FunnelStep {
                key: key.to_string(),
                reached: c("reached"),
                sent: c("sent"),
                skipped: c("skipped") + c("held_out"),
                failed: c("failed"),
                timed_out: c("timed_out"),
                ended,
                ..Default::default()
            },
        );
    }
    let mut starts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (scope, n) in &moves {
        let rest = &scope[format!("flow:{workflow}@").len()..];
        let Some((version, from)) = rest.split_once(':') else {
            continue;
        };
        // A move's metric is the step it went to (keys have a `#`, metrics do not).
        let to: BTreeMap<String, u64> = n
            .counts
            .iter()
            .filter(|(k, v)| k.contains('#') && **v > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if from == "start" {
            starts.insert(version.to_string(), to);
        } else if let Some(step) = versions
            .get_mut(version)
            .and_then(|steps| steps.get_mut(from))
        {
            step.next = to;
        }
    }
    let mut out = BTreeMap::new();
    for (version, mut steps) in versions {
        for s in steps.values_mut() {
            let gone = s.next.values().sum::<u64>() + s.ended.values().sum::<u64>();
            s.here = s.reached.saturating_sub(gone);
        }
        // In the order runs take them: from the start along the most travelled moves
        // first; steps no move leads to (none in a whole count) after them.
        let mut order: Vec<String> = Vec::new();
        let mut queue: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let by_count = |m: &BTreeMap<String, u64>| {
            let mut v: Vec<(String, u64)> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        };
        queue.extend(by_count(starts.get(&version).unwrap_or(&BTreeMap::new())));
        while let Some(k) = queue.pop_front() {
            if order.contains(&k) || !steps.contains_key(&k) {
                continue;
            }
            queue.extend(by_count(&steps[&k].next));
            order.push(k);
        }
        let mut ordered: Vec<FunnelStep> = order.iter().filter_map(|k| steps.remove(k)).collect();
        ordered.extend(steps.into_values());
        out.insert(version, ordered);
    }
    Ok(out)
}

/// A scope's hourly series of `metric` over `period`: (hour start in ms, count), hours
/// without any left out. Reads only the period's keys.
pub fn series(
    store: &dyn Store,
    scope: &str,
    metric: &str,
    period: Period,
) -> Result<Vec<(i64, u64)>, StoreError> {
    let (from, to) = hour_range(period);
    let prefix = [COUNTER, scope.as_bytes(), b"\0", metric.as_bytes(), b"\0"].concat();
    let start = hour_key(scope, metric, from.max(0));
    let mut out = Vec::new();
    for (key, value) in store.analytics_scan(&prefix, Some(&start), usize::MAX)? {
        let Some(h) = std::str::from_utf8(&key[prefix.len()..])
            .ok()
            .and_then(|h| h.parse::<i64>().ok())
        else {
            continue;
        };
        if h >= to {
            break;
        }
        out.push((h * HOUR_MS, u64_of(&value)));
    }
    Ok(out)
}

/// The arms of an experiment from the counters: for each (arm, scope), its trials and how
/// many reached `metric`, over everything counted. The trials are the messages sent, or for
/// `converted` the runs assigned to the arm where a workflow's variant counts them.
pub fn arm_data(
    store: &dyn Store,
    arms: &[(String, String)],
    metric: &str,
) -> Result<Vec<experiments::ArmData>, StoreError> {
    Ok(arm_trials(store, arms, metric)?.0)
}

/// [`arm_data`], and whether its trials are runs (true) or messages.
pub fn arm_trials(
    store: &dyn Store,
    arms: &[(String, String)],
    metric: &str,
) -> Result<(Vec<experiments::ArmData>, bool), StoreError> {
    let totals = arm_totals(store, arms, metric)?;
    let per_run = totals.iter().any(|(_, trials)| *trials == "assigned");
    Ok((totals.into_iter().map(|(a, _)| a).collect(), per_run))
}

/// Each arm's totals, with the metric its trials are: for `converted`, the runs assigned to
/// it where a workflow's variant counts them; else the messages sent.
fn arm_totals(
    store: &dyn Store,
    arms: &[(String, String)],
    metric: &str,
) -> Result<Vec<(experiments::ArmData, &'static str)>, StoreError> {
    arms.iter()
        .map(|(arm, scope)| {
            let n = numbers(store, scope, Period::default())?;
            let count = |m: &str| n.counts.get(m).copied().unwrap_or(0);
            let trials = match count("assigned") {
                runs if metric == "converted" && runs > 0 => "assigned",
                _ => "sent",
            };
            let data = experiments::ArmData {
                arm: arm.clone(),
                sent: count(trials),
                reached: count(metric),
            };
            Ok((data, trials))
        })
        .collect()
}

/// The looks at an experiment its counters allow: the arms' cumulative data (as
/// [`arm_trials`] counts them) after each hour in which any of them counted something (each
/// day, where hours are rolled up into days), the last look the totals; and whether the
/// trials are runs. The sequential test's p-value is the least over these looks, and its
/// decision the first look's that makes one (see [`experiments::analyse_looks`]).
pub fn arm_looks(
    store: &dyn Store,
    arms: &[(String, String)],
    metric: &str,
) -> Result<(Vec<Vec<experiments::ArmData>>, bool), StoreError> {
    let totals = arm_totals(store, arms, metric)?;
    let per_run = totals.iter().any(|(_, trials)| *trials == "assigned");
    // Per bucket start, per arm: [trials, reached] counted in it.
    let mut buckets: BTreeMap<i64, Vec<[u64; 2]>> = BTreeMap::new();
    for (i, ((_, scope), (_, trials))) in arms.iter().zip(&totals).enumerate() {
        for (which, m) in [*trials, metric].into_iter().enumerate() {
            let prefix = [scope.as_bytes(), b"\0", m.as_bytes(), b"\0"].concat();
            let days = rollup::days_in(store, &prefix, Period::default())?
                .into_iter()
                .map(|(_, _, at, n)| (at, n));
            for (at, n) in series(store, scope, m, Period::default())?
                .into_iter()
                .chain(days)
            {
                buckets
                    .entry(at)
                    .or_insert_with(|| vec![[0, 0]; arms.len()])[i][which] += n;
            }
        }
    }
    let mut looks = Vec::with_capacity(buckets.len() + 1);
    let mut sums = vec![[0u64, 0u64]; arms.len()];
    for counted in buckets.values() {
        for (sum, [t, r]) in sums.iter_mut().zip(counted) {
            sum[0] += t;
            sum[1] += r;
        }
        looks.push(
            totals
                .iter()
                .zip(&sums)
                .map(|((a, _), [t, r])| experiments::ArmData {
                    arm: a.arm.clone(),
                    sent: *t,
                    reached: *r,
                })
                .collect(),
        );
    }
    looks.push(totals.into_iter().map(|(a, _)| a).collect());
    Ok((looks, per_run))
}

/// Folded facts after sequence `after`, at most `limit`, in log order (the export stream).
pub fn facts_after(
    store: &dyn Store,
    after: u64,
    limit: usize,
) -> Result<Vec<FoldedFact>, StoreError> {
    // Entries past the last sequence are a fold's not yet committed.
    let last = store.analytics_get(LAST_SEQ)?.map_or(0, |v| u64_of(&v));
    let start = [LOG, &after.saturating_add(1).to_be_bytes()].concat();
    let mut out = Vec::new();
    for (key, value) in store.analytics_scan(LOG, Some(&start), limit)? {
        if key.get(LOG.len()..).map_or(0, u64_of) > last {
            break;
        }
        if let Ok(f) = serde_json::from_slice(&value) {
            out.push(f);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn a_fact_whose_run_never_came_is_dropped_with_its_generation_and_leaves_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        let orphan = Fact {
            id: "send:gone-run:0".into(),
            kind: "sent".into(),
            at: 1,
            run: "gone-run".into(),
            step: Some(0),
            ..Default::default()
        };
        let mut batch = WriteBatch::new();
        batch.push(Write::Fact(orphan.clone()));
        store.apply(&batch).unwrap();
        let folder = Folder::default();
        assert_eq!(folder.fold_page(&store).unwrap(), 0, "counted nowhere");
        assert_eq!(
            store.sealed_facts().unwrap(),
            None,
            "its generation is gone"
        );
        // Noted again with its record (a write done again after a crash), it would count.
        let marker = [FOLDED, orphan.id.as_bytes()].concat();
        assert_eq!(store.analytics_get(&marker).unwrap(), None);
        assert!(
            folder.fold_next(&store).unwrap().idle,
            "nothing left to fold"
        );
    }

    #[test]
    fn an_experiments_looks_are_its_cumulative_numbers_hour_by_hour_then_its_totals() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        let at = 1_796_724_000_000;
        let fact = |kind: &str, arm: &str, hour: i64| FoldedFact {
            seq: 0,
            fact: Fact {
                id: String::new(),
                kind: kind.into(),
                at: at + hour * HOUR_MS,
                run: String::new(),
                channel: Some("email".into()),
                ..Default::default()
            },
            contact: String::new(),
            workflow: "spring".into(),
            version: "h".repeat(64),
            broadcast: Some("spring".into()),
            phase: Some("test".into()),
            holdout: false,
            step_key: None,
            from_key: None,
            template: None,
            domain: None,
            variants: [("spring".to_string(), arm.to_string())].into(),
            experiment: None,
            goal_step: None,
        };
        let mut counts = Counts::default();
        // Hour 0: a sends 3 (1 clicked), b sends 2; hour 5: b sends 1 more and 2 click.
        for (kind, arm, hour) in [
            ("sent", "a", 0),
            ("sent", "a", 0),
            ("sent", "a", 0),
            ("clicked", "a", 0),
            ("sent", "b", 0),
            ("sent", "b", 0),
            ("sent", "b", 5),
            ("clicked", "b", 5),
            ("clicked", "b", 5),
        ] {
            counts.add(&fact(kind, arm, hour), true);
        }
        counts.apply(&store).unwrap();
        let arms = [
            ("a".to_string(), "arm:spring:a".to_string()),
            ("b".to_string(), "arm:spring:b".to_string()),
        ];
        let numbers = |looks: &[Vec<experiments::ArmData>]| {
            looks
                .iter()
                .map(|l| l.iter().map(|a| (a.sent, a.reached)).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        let (looks, per_run) = arm_looks(&store, &arms, "clicked").unwrap();
        assert!(!per_run);
        assert_eq!(
            numbers(&looks),
            [
                vec![(3, 1), (2, 0)],
                vec![(3, 1), (3, 2)],
                vec![(3, 1), (3, 2)]
            ]
        );
        // Rolled up into days, the hours' looks become one per day.
        let folder = Folder::default();
        assert!(
            folder
                .roll_up(&store, at + 100 * 24 * HOUR_MS)
                .unwrap()
                .hours
                > 0
        );
        let (looks, _) = arm_looks(&store, &arms, "clicked").unwrap();
        assert_eq!(numbers(&looks).last(), Some(&vec![(3, 1), (3, 2)]));
        assert!(looks.len() <= 3, "{:?}", numbers(&looks));
        assert_eq!(numbers(&looks)[looks.len() - 2], vec![(3, 1), (3, 2)]);
    }

    /// Segment facts of `segment:vip`, `n` of them with ids `PREFIX00000`…, noted in one batch.
    fn note_segment_facts(store: &SledStore, prefix: &str, n: usize) {
        let mut batch = WriteBatch::new();
        for i in 0..n {
            batch.push(Write::Fact(Fact {
                id: format!("{prefix}{i:05}"),
                kind: "segment".into(),
                at: HOUR_MS,
                segment: Some("vip".into()),
                entered: 1,
                ..Default::default()
            }));
        }
        store.apply(&batch).unwrap();
    }

    fn vip_entered(store: &SledStore) -> u64 {
        numbers(store, "segment:vip", Period::default())
            .unwrap()
            .counts
            .get("entered")
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn fold_all_folds_every_fact_noted_before_it_in_a_generation_begun_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        note_segment_facts(&store, "m", PAGE + PAGE / 2);
        let folder = Folder::default();
        // The open generation is sealed, and its first page folded.
        assert_eq!(folder.fold_page(&store).unwrap(), PAGE);
        let begun = store.sealed_facts().unwrap();
        assert!(begun.is_some());
        // Meanwhile facts go into the new open generation.
        note_segment_facts(&store, "a", 300);
        folder.fold_all(&store).unwrap();
        assert_eq!(vip_entered(&store), (PAGE + PAGE / 2 + 300) as u64);
        assert_eq!(store.sealed_facts().unwrap(), None);
        assert!(store.facts_of(begun.unwrap(), None, 1).unwrap().is_empty());
        // Nothing noted since: the next fold has nothing to do.
        assert!(folder.fold_next(&store).unwrap().idle);
    }

    #[test]
    fn after_a_crash_in_the_middle_of_a_generation_the_fold_goes_on_after_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let runs = PAGE + 200;
        {
            let store = SledStore::open(dir.path(), 8 << 20).unwrap();
            store.set_notes_facts(true);
            for i in 0..runs {
                let run = run_of_wf_for(&format!("r{i:05}"), &format!("c{i}"));
                store.create_run(&run).unwrap();
            }
            // One page folded (a run's start has no marker: only the cursor keeps it from
            // being counted again), then the process dies before the generation is done.
            assert_eq!(Folder::default().fold_page(&store).unwrap(), PAGE);
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        Folder::default().fold_all(&store).unwrap();
        let started = numbers(&store, "workflow:wf", Period::default())
            .unwrap()
            .counts
            .get("started")
            .copied()
            .unwrap_or(0);
        assert_eq!(started, runs as u64);
        assert_eq!(store.sealed_facts().unwrap(), None);
    }

    #[test]
    fn facts_noted_while_the_fold_seals_generations_are_each_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path(), 8 << 20).unwrap());
        store.set_notes_facts(true);
        let folder = std::sync::Arc::new(Folder::default());
        let (writers, per_writer) = (4, 1500);
        let writing = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(writers));
        // The fold seals and folds as fast as it can while the writers note runs' starts
        // (no marker: a start folded twice, or one lost in a sealed generation, shows).
        let fold = {
            let (store, folder, writing) = (store.clone(), folder.clone(), writing.clone());
            std::thread::spawn(move || {
                let mut seals = 0;
                while writing.load(Ordering::SeqCst) > 0 {
                    if folder.fold_next(store.as_ref()).unwrap().sealed {
                        seals += 1;
                    }
                }
                seals
            })
        };
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (store, writing) = (store.clone(), writing.clone());
                std::thread::spawn(move || {
                    for i in 0..per_writer {
                        let run = run_of_wf_for(&format!("r{w}-{i:05}"), &format!("c{w}-{i}"));
                        store.create_run(&run).unwrap();
                    }
                    writing.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let seals = fold.join().unwrap();
        folder.fold_all(store.as_ref()).unwrap();
        let started = numbers(store.as_ref(), "workflow:wf", Period::default())
            .unwrap()
            .counts
            .get("started")
            .copied()
            .unwrap_or(0);
        assert_eq!(
            started,
            (writers * per_writer) as u64,
            "after {seals} seals"
        );
        assert_eq!(store.sealed_facts().unwrap(), None);
    }

    fn started(store: &SledStore) -> u64 {
        numbers(store, "workflow:wf", Period::default())
            .unwrap()
            .counts
            .get("started")
            .copied()
            .unwrap_or(0)
    }

    /// A run of workflow `wf`, started at the first hour, for `contact`.
    fn run_of_wf_for(id: &str, contact: &str) -> Run {
        Run::new(
            id.into(),
            "wf".into(),
            "h".repeat(64),
            contact.into(),
            serde_json::json!({"type": "event"}),
            serde_json::json!({}),
            HOUR_MS,
        )
    }

    fn run_of_wf(id: &str) -> Run {
        run_of_wf_for(id, "c1")
    }

    #[test]
    fn a_start_a_crash_cut_off_from_its_run_is_dropped_before_the_run_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8 << 20).unwrap();
            // The fact written, then the crash: its run never was.
            let mut batch = WriteBatch::new();
            batch.push(Write::Fact(fact_of_new_run(&run_of_wf("r1")).unwrap()));
            store.apply(&batch).unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        store.set_notes_facts(true);
        let folder = Folder::default();
        // At start, before the engine replays the event that starts it again.
        assert_eq!(folder.fold_left_behind(&store).unwrap(), 0);
        store.create_run(&run_of_wf("r1")).unwrap();
        folder.fold_all(&store).unwrap();
        assert_eq!(started(&store), 1);
    }

    #[test]
    fn a_generation_folded_before_the_cursor_moved_on_is_dropped_not_folded_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8 << 20).unwrap();
            store.set_notes_facts(true);
            store.create_run(&run_of_wf("r1")).unwrap();
            let folder = Folder::default();
            folder.fold_all(&store).unwrap();
            store.create_run(&run_of_wf("r2")).unwrap();
            folder.fold_all(&store).unwrap();
            assert_eq!(started(&store), 2);
            // The first generation back (a drop that did not happen), its fact with it.
            let old = store.db().open_tree("facts-0000000000000001").unwrap();
            old.insert(
                "started:r1",
                serde_json::to_vec(&fact_of_new_run(&run_of_wf("r1")).unwrap()).unwrap(),
            )
            .unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        Folder::default().fold_all(&store).unwrap();
        assert_eq!(started(&store), 2);
        assert_eq!(store.sealed_facts().unwrap(), None);
    }

    #[test]
    fn facts_a_former_herald_left_pending_are_folded_after_an_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8 << 20).unwrap();
            // The former layout: pending facts in the analytics keyspace.
            let mut batch = WriteBatch::new();
            for i in 0..5 {
                let fact = Fact {
                    id: format!("old{i}"),
                    kind: "segment".into(),
                    at: HOUR_MS,
                    segment: Some("vip".into()),
                    entered: 1,
                    ..Default::default()
                };
                batch.push(Write::Analytics {
                    key: [b"p\0".as_slice(), fact.id.as_bytes()].concat(),
                    value: Some(serde_json::to_vec(&fact).unwrap()),
                });
            }
            store.apply(&batch).unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        assert!(store.analytics_scan(b"p\0", None, 1).unwrap().is_empty());
        Folder::default().fold_all(&store).unwrap();
        assert_eq!(vip_entered(&store), 5);
    }

    #[test]
    fn a_send_that_succeeds_after_its_failure_takes_the_failure_back_from_its_rolled_up_day() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        store.set_notes_facts(true);
        let at = 1_796_724_000_000;
        let run = Run::new(
            "r1".into(),
            "wf".into(),
            "h".repeat(64),
            "c1".into(),
            serde_json::json!({"type": "event"}),
            serde_json::json!({}),
            at,
        );
        store.create_run(&run).unwrap();
        let mut step = Step {
            seq: 0,
            kind: "send".into(),
            name: "email:t".into(),
            input: serde_json::json!({"channel": "email", "template": "t"}),
            status: StepStatus::Failed,
            result: Value::Null,
            error: Some("HTTP 400".into()),
            attempts: 3,
            due_at: None,
            contact: None,
            idempotency_key: Some("r1:0".into()),
            line: None,
            started_at: at,
            finished_at: Some(at),
            label: None,
        };
        store.put_step("r1", &step).unwrap();
        let folder = Folder::default();
        folder.fold_all(&store).unwrap();
        let total = |m: &str| {
            numbers(&store, "workflow:wf", Period::default())
                .unwrap()
                .counts
                .get(m)
                .copied()
                .unwrap_or(0)
        };
        assert_eq!((total("failed"), total("sent")), (1, 0));
        // A hundred days on, the failure's hour is rolled into its day.
        let later = at + 100 * 24 * HOUR_MS;
        assert!(folder.roll_up(&store, later).unwrap().hours > 0);
        let day = rollup::daily_key(
            "workflow:wf",
            "failed",
            rollup::day_start(at, chrono_tz::UTC),
        );
        assert_eq!(
            store.analytics_get(&day).unwrap().map(|v| u64_of(&v)),
            Some(1)
        );
        // Sent again by an operator, it goes: the failure is taken back from its day.
        step.status = StepStatus::Done;
        step.error = None;
        step.attempts = 1;
        step.result = serde_json::json!({"status": "sent"});
        step.finished_at = Some(later);
        store.put_step("r1", &step).unwrap();
        folder.fold_all(&store).unwrap();
        assert_eq!((total("failed"), total("sent")), (0, 1));
        assert_eq!(
            store.analytics_get(&day).unwrap().map(|v| u64_of(&v)),
            Some(0)
        );
        // The same result noted again is counted once.
        store.put_step("r1", &step).unwrap();
        folder.fold_all(&store).unwrap();
        assert_eq!((total("failed"), total("sent")), (0, 1));
    }
}
