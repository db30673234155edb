//! The embedded backend: [`SledStore`], the [`Store`] contract on sled trees, exact running
//! counts, the shutdown checkpoint and the data directory's layout check.

#[allow(unused_imports)]
use super::*;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        }
    }
}

/// The embedded store.
pub struct SledStore {
    pub(super) db: sled::Db,
    pub(super) contacts: sled::Tree,
    pub(super) identities: sled::Tree,
    pub(super) events: sled::Tree,
    /// Legacy: one marker per `messageId` (read once, then cleared).
    pub(super) message_ids: sled::Tree,
    /// `messageId`s per request, keyed by time and sequence.
    pub(super) dedupe: sled::Tree,
    pub(super) inbox: sled::Tree,
    pub(super) runs: sled::Tree,
    pub(super) runs_by_contact: sled::Tree,
    pub(super) journal: sled::Tree,
    pub(super) timers: sled::Tree,
    pub(super) waits: sled::Tree,
    pub(super) scripts: sled::Tree,
    pub(super) outbox: sled::Tree,
    pub(super) segment_log: sled::Tree,
    pub(super) audience: sled::Tree,
    pub(super) meta: sled::Tree,
    /// Consent per contact and topic (`contact \0 topic`).
    pub(super) consent: sled::Tree,
    /// Broadcast audience snapshots (`broadcast \0 seq`).
    pub(super) recipients: sled::Tree,
    /// Analytics: the fold's cursor and markers, the folded facts' log, counters
    /// (`crate::analytics`; noted facts wait in their generation's tree).
    pub(super) analytics: sled::Tree,
    /// Whether records note their analytics facts (`[analytics] enabled`).
    pub(super) facts: std::sync::atomic::AtomicBool,
    /// The generations of noted analytics facts, one tree each (`facts-` and the generation
    /// in hex): the open one (`fact_generation`) and sealed ones waiting for the fold.
    pub(super) fact_trees: std::sync::RwLock<BTreeMap<u64, sled::Tree>>,
    /// The open generation: writes note their facts into it.
    pub(super) fact_generation: AtomicU64,
    /// Writes noting facts under way, per generation's parity (sealing one waits for its
    /// writers; at most two generations have writers at a time).
    pub(super) fact_writers: [AtomicUsize; 2],
    /// Suppressed addresses per channel (`channel \0 address`).
    pub(super) suppression: sled::Tree,
    /// Commit records of write batches being applied (see [`SledStore::apply`]).
    pub(super) batches: sled::Tree,
    /// Stored contacts, kept exact from insert results so status and metrics are O(1).
    pub(super) contact_total: AtomicUsize,
    /// Pending timers, likewise.
    pub(super) timer_total: AtomicUsize,
    /// A clean-shutdown checkpoint is stored and must be withdrawn before a counted change.
    pub(super) checkpointed: AtomicBool,
    pub(super) checkpoint_lock: Mutex<()>,
    /// Runs by status from the checkpoint this store was opened with.
    pub(super) checkpointed_runs: Mutex<Option<BTreeMap<String, i64>>>,
    /// Segment sizes from that checkpoint.
    pub(super) checkpointed_segments: Mutex<Option<BTreeMap<String, i64>>>,
}

/// Counts saved at a clean shutdown (meta key `checkpoint`).
#[derive(Serialize, serde::Deserialize)]
pub(super) struct Checkpoint {
    pub(super) contacts: usize,
    pub(super) timers: usize,
    pub(super) runs: BTreeMap<String, i64>,
    pub(super) segments: BTreeMap<String, i64>,
}

/// One step of the record layout: what turns a data directory of layout `from` into one of
/// layout `to`. Every change to stored records adds a step here, and a fixture data directory
/// of the layout before it that a test opens (`cli/tests/data_layouts.rs`).
struct Migration {
    from: &'static str,
    to: &'static str,
    run: fn(&sled::Db) -> StoreResult<()>,
}

/// The steps from the oldest layout this build reads to [`LAYOUT`], in order. Layout "5" is
/// the first that is migrated rather than refused; nothing has changed since.
const MIGRATIONS: &[Migration] = &[];

/// Bring a data directory of `layout` up to [`LAYOUT`], step by step, logging each; refuse a
/// layout no chain of steps leads from (older than "5", or written by a newer Herald).
fn migrate(db: &sled::Db, meta: &sled::Tree, layout: &str, dir: &Path) -> StoreResult<()> {
    let mut at = layout.to_string();
    while at != LAYOUT {
        let Some(step) = MIGRATIONS.iter().find(|m| m.from == at) else {
            let newer = at.parse::<u32>().ok() > LAYOUT.parse::<u32>().ok();
            return Err(StoreError::Layout(if newer {
                format!(
                    "the data directory {} uses record layout {at}, written by a newer Herald; \
                     this one reads layout {LAYOUT} (run the newer Herald; downgrades are not \
                     supported)",
                    dir.display()
                )
            } else {
                format!(
                    "the data directory {} uses record layout {at}, from before layouts were \
                     migrated (this Herald migrates layout 5 and later); start with a new data \
                     directory (and re-import contacts) or run the Herald version that wrote it",
                    dir.display()
                )
            }));
        };
        tracing::info!(from = step.from, to = step.to, data = %dir.display(), "migrating the data directory");
        (step.run)(db)?;
        meta.insert("layout", step.to.as_bytes())?;
        db.flush()?;
        tracing::info!(layout = step.to, "data directory migrated");
        at = step.to.to_string();
    }
    Ok(())
}

impl SledStore {
    /// Open (or create) the store in `dir`. `cache_bytes` bounds sled's page cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput);
        // The directory's lock outlives a closed database by a moment (sled's background
        // thread lets go of it last), so reopening in the same process waits briefly for it;
        // a directory another process holds is still refused, after that second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock") =>
                {
                    if std::time::Instant::now() >= deadline {
                        return Err(sled::Error::Io(e).into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        let t = |name: &str| db.open_tree(name);
        let meta = t("meta")?;
        let layout = match meta.get("layout")? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None if t("contacts")?.is_empty() && t("runs")?.is_empty() => {
                meta.insert("layout", LAYOUT.as_bytes())?;
                LAYOUT.to_string()
            }
            // Data directories from before layouts were recorded.
            None => "1".to_string(),
        };
        migrate(&db, &meta, &layout, dir)?;
        let contacts = t("contacts")?;
        let timers = t("timers")?;
        // After a clean shutdown the counts come from its checkpoint, withdrawn durably before
        // anything else is written. Otherwise they are counted once here (two trees in
        // parallel). Afterwards every insert and remove says whether the key was new or
        // present, so the counts stay exact without scans.
        let checkpoint = match meta.remove("checkpoint")? {
            Some(v) => {
                db.flush()?;
                serde_json::from_slice::<Checkpoint>(&v).ok()
            }
            None => None,
        };
        let (contact_total, timer_total, runs, segments) = match checkpoint {
            Some(c) => (c.contacts, c.timers, Some(c.runs), Some(c.segments)),
            None => {
                let (c, t) = std::thread::scope(|s| {
                    let c = s.spawn(|| count_keys(&contacts));
                    let t = count_keys(&timers);
                    (c.join().expect("contact count"), t)
                });
                (c?, t?, None, None)
            }
        };
        SledStore {
            contact_total: AtomicUsize::new(contact_total),
            timer_total: AtomicUsize::new(timer_total),
            checkpointed: AtomicBool::new(false),
            checkpoint_lock: Mutex::new(()),
            checkpointed_runs: Mutex::new(runs),
            checkpointed_segments: Mutex::new(segments),
            contacts,
            identities: t("identities")?,
            events: t("events")?,
            message_ids: t("message_ids")?,
            dedupe: t("dedupe")?,
            inbox: t("inbox")?,
            runs: t("runs")?,
            runs_by_contact: t("runs_by_contact")?,
            journal: t("journal")?,
            timers,
            waits: t("waits")?,
            scripts: t("scripts")?,
            outbox: t("outbox")?,
            segment_log: t("segment_log")?,
            audience: t("audience")?,
            meta,
            consent: t("consent")?,
            recipients: t("recipients")?,
            analytics: t("analytics")?,
            facts: std::sync::atomic::AtomicBool::new(true),
            fact_trees: std::sync::RwLock::new(fact_trees(&db)?),
            fact_generation: AtomicU64::new(0),
            fact_writers: [AtomicUsize::new(0), AtomicUsize::new(0)],
            suppression: t("suppression")?,
            batches: t("batches")?,
            db,
        }
        .with_cut_off_batches_completed()?
        .with_legacy_message_ids_moved()?
        .with_legacy_pending_facts_moved()?
        .with_fact_generation_opened()
    }

    /// Facts the analytics fold had not taken when a Herald that kept them in the analytics
    /// tree (`p` `\0` id) stopped go into a sealed generation of their own, atomically.
    fn with_legacy_pending_facts_moved(self) -> StoreResult<Self> {
        let mut ops = Vec::new();
        let generation = self.next_fact_generation();
        for item in self.analytics.scan_prefix(b"p\0") {
            let (k, v) = item?;
            ops.push(put(
                TreeId::Facts,
                [&generation.to_be_bytes()[..], &k[2..]].concat(),
                v.to_vec(),
            ));
            ops.push(remove(TreeId::Analytics, k.to_vec()));
        }
        if !ops.is_empty() {
            self.write_ops(&ops, true)?;
            tracing::info!(
                facts = ops.len() / 2,
                "pending analytics facts moved into a generation of their own"
            );
        }
        Ok(self)
    }

    /// A fresh generation for this process's writes: every generation a crash or a stop left
    /// behind is sealed (no writer of it is left), and the fold takes them oldest first.
    fn with_fact_generation_opened(self) -> StoreResult<Self> {
        let generation = self.next_fact_generation();
        self.fact_tree(generation, true)?;
        self.fact_generation.store(generation, Ordering::SeqCst);
        Ok(self)
    }

    /// The generation after the newest one stored.
    fn next_fact_generation(&self) -> u64 {
        self.fact_trees
            .read()
            .expect("fact trees")
            .keys()
            .next_back()
            .map_or(1, |g| g + 1)
    }

    /// The tree of a generation of facts; `create`: opened if there is none (a write
    /// replayed at open, the open generation), otherwise `None` (dropped since).
    fn fact_tree(&self, generation: u64, create: bool) -> StoreResult<Option<sled::Tree>> {
        if let Some(t) = self.fact_trees.read().expect("fact trees").get(&generation) {
            return Ok(Some(t.clone()));
        }
        if !create {
            return Ok(None);
        }
        let mut trees = self.fact_trees.write().expect("fact trees");
        let tree = match trees.get(&generation) {
            Some(t) => t.clone(),
            None => {
                let t = self.db.open_tree(fact_tree_name(generation))?;
                trees.insert(generation, t.clone());
                t
            }
        };
        Ok(Some(tree))
    }

    /// Register a write that notes facts: the generation it notes them in, which cannot be
    /// sealed until the returned guard is dropped (however the write ends, a panic too).
    fn fact_writer(&self) -> FactWriter<'_> {
        loop {
            let generation = self.fact_generation.load(Ordering::SeqCst);
            let writers = &self.fact_writers[(generation % 2) as usize];
            writers.fetch_add(1, Ordering::SeqCst);
            if self.fact_generation.load(Ordering::SeqCst) == generation {
                return FactWriter {
                    generation,
                    writers,
                };
            }
            // Sealed meanwhile: note into the new one.
            writers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Write `ops` with the facts their records note, the facts first: a single-record write
    /// (not atomic) cut off by a crash leaves a fact without its record, which the fold drops
    /// as an orphan, never a record without its fact. (Generations left by a crash are folded
    /// before the engine replays anything, so an orphan is dropped before its record can be
    /// written again.)
    fn write_noting(
        &self,
        ops: Vec<RawOp>,
        facts: Vec<crate::analytics::Fact>,
        atomic: bool,
    ) -> StoreResult<()> {
        if facts.is_empty() {
            return self.write_ops(&ops, atomic);
        }
        let writer = self.fact_writer();
        let mut all: Vec<RawOp> = Vec::with_capacity(facts.len() + ops.len());
        all.extend(facts.iter().map(|f| fact_op(writer.generation, f)));
        all.extend(ops);
        self.write_ops(&all, atomic)
    }

    /// A batch whose commit record survived a crash is applied again, whole (its writes are
    /// plain puts and removes, so applying some of them twice is harmless); one whose undo
    /// record survived (new records only) is taken back, whole. A crash never
    /// leaves a checkpoint beside a commit record: the checkpoint is withdrawn at open, before
    /// anything is written.
    fn with_cut_off_batches_completed(self) -> StoreResult<Self> {
        let (mut finished, mut undone) = (0usize, 0usize);
        for r in self.batches.iter() {
            let (k, v) = r?;
            if v.first() == Some(&UNDO_RECORD) {
                self.apply_ops(&decode_undo(&v)?)?;
                undone += 1;
            } else {
                self.apply_ops(&decode_ops(&v)?)?;
                finished += 1;
            }
            self.batches.remove(k)?;
        }
        if finished + undone > 0 {
            self.db.flush()?;
            tracing::warn!(
                finished,
                undone,
                "write batches that a crash cut off: finished whole, or (new records only) taken back whole"
            );
        }
        Ok(self)
    }

    /// Markers of a data directory from before the dedupe log (one key per messageId) become
    /// one dedupe record, remembered from now on, and are cleared.
    fn with_legacy_message_ids_moved(self) -> StoreResult<Self> {
        if self.message_ids.is_empty() {
            return Ok(self);
        }
        let legacy: Vec<String> = self
            .message_ids
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect::<StoreResult<_>>()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for chunk in legacy.chunks(1000) {
            self.log_message_ids(now, chunk)?;
        }
        self.db.flush()?;
        self.message_ids.clear()?;
        tracing::info!(
            ids = legacy.len(),
            "messageId markers moved into the dedupe window"
        );
        Ok(self)
    }

    fn tree(&self, id: TreeId) -> &sled::Tree {
        match id {
            TreeId::Contacts => &self.contacts,
            TreeId::Identities => &self.identities,
            TreeId::Events => &self.events,
            TreeId::Dedupe => &self.dedupe,
            TreeId::Inbox => &self.inbox,
            TreeId::Runs => &self.runs,
            TreeId::RunsByContact => &self.runs_by_contact,
            TreeId::Journal => &self.journal,
            TreeId::Timers => &self.timers,
            TreeId::Meta => &self.meta,
            TreeId::SegmentLog => &self.segment_log,
            TreeId::Audience => &self.audience,
            TreeId::Outbox => &self.outbox,
            TreeId::Waits => &self.waits,
            TreeId::Consent => &self.consent,
            TreeId::Suppression => &self.suppression,
            TreeId::Recipients => &self.recipients,
            TreeId::Analytics => &self.analytics,
            // One tree per generation: see `apply_fact_op`.
            TreeId::Facts => unreachable!("noted facts are written to their generation's tree"),
        }
    }

    /// The tree operations a batch comes to, each record encoded as its single-write method
    /// stores it (the same `codec` builders).
    /// The facts are those the batch's records note (see `crate::analytics`), to be written
    /// with them ([`SledStore::write_noting`]).
    pub(super) fn ops(
        &self,
        batch: &WriteBatch,
    ) -> StoreResult<(Vec<RawOp>, Vec<crate::analytics::Fact>)> {
        let mut ops = Vec::with_capacity(batch.len());
        let mut facts = Vec::new();
        for w in batch.writes() {
            if self.notes_facts() {
                facts.extend(crate::analytics::facts_for(w));
            }
            match w {
                Write::Contact(c) => ops.push(contact_op(c)?),
                Write::Identity { kind, id, contact } => ops.push(identity_op(*kind, id, contact)),
                // New keys: recording them is enough to take them back after a crash.
                Write::NewContact(c) => ops.push(RawOp {
                    fresh: true,
                    ..contact_op(c)?
                }),
                Write::NewIdentity { kind, id, contact } => ops.push(RawOp {
                    fresh: true,
                    ..identity_op(*kind, id, contact)
                }),
                Write::Event { contact, event } => ops.push(event_op(contact, event)?),
                Write::MoveEvents { from, to } => {
                    for item in self.events.scan_prefix(prefix(from)) {
                        let (k, v) = item?;
                        let seq = &k[k.len() - 8..];
                        ops.push(put(TreeId::Events, key2(to, seq), v.to_vec()));
                        ops.push(remove(TreeId::Events, k.to_vec()));
                    }
                }
                Write::Unlink { kind, id } => {
                    ops.push(remove(TreeId::Identities, id_key(*kind, id)))
                }
                Write::EraseContact { contact } => self.erase_ops(contact, &mut ops)?,
                Write::MoveWaits { from, to } => {
                    for item in self.waits.scan_prefix(prefix(from)) {
                        let (k, v) = item?;
                        let mut nk = to.as_bytes().to_vec();
                        nk.extend_from_slice(&k[from.len()..]);
                        ops.push(put(TreeId::Waits, nk, v.to_vec()));
                        ops.push(remove(TreeId::Waits, k.to_vec()));
                    }
                }
                Write::MoveConsent { from, to } => {
                    for item in self.consent.scan_prefix(prefix(from)) {
                        let (k, v) = item?;
                        let moving: ConsentRecord = dec(&v)?;
                        let target = key2(to, moving.topic.as_bytes());
                        let keep = match self.consent.get(&target)? {
                            Some(existing) => dec::<ConsentRecord>(&existing)?.at >= moving.at,
                            None => false,
                        };
                        if !keep {
                            ops.push(put(TreeId::Consent, target, v.to_vec()));
                        }
                        ops.push(remove(TreeId::Consent, k.to_vec()));
                    }
                }
                Write::MessageIds { at, ids } => {
                    ops.extend(self.message_ids_op(*at, ids)?);
                }
                Write::Inbox { key, items } => ops.extend(inbox_op(*key, items)?),
                Write::InboxDone { key } => ops.push(inbox_done_op(*key)),
                Write::NewRun(run) => ops.extend([run_index_op(run), run_op(run)?]),
                Write::Run(run) => ops.push(run_op(run)?),
                Write::Step { run, step } => ops.push(step_op(run, step)?),
                Write::Timer(t) => ops.push(timer_op(t)),
                Write::ClearTimer { due, target } => ops.push(clear_timer_op(*due, target)),
                Write::Meta { key, value } => ops.push(meta_op(key, value)),
                Write::ProviderMessage {
                    channel,
                    provider_id,
                    owner,
                } => ops.push(provider_message_op(channel, provider_id, owner)?),
                Write::SegmentChanges { segment, changes } => {
                    if !changes.is_empty() {
                        let seq = self.db.generate_id()?;
                        facts.extend(
                            self.noted(|| {
                                crate::analytics::facts_of_segment(segment, seq, changes)
                            }),
                        );
                        ops.push(segment_changes_op(segment, seq, changes));
                    }
                }
                Write::Audience { contact, encoded } => {
                    ops.push(audience_op(contact, encoded.clone()))
                }
                Write::Intent { key, intent } => ops.push(intent_op(key, intent)?),
                Write::NewEffect {
                    run,
                    step,
                    key,
                    intent,
                } => ops.extend([
                    RawOp {
                        fresh: true,
                        ..step_op(run, step)?
                    },
                    RawOp {
                        fresh: true,
                        ..intent_op(key, intent)?
                    },
                ]),
                Write::IntentDone { key } => ops.push(intent_done_op(key)),
                Write::Consent { contact, record } => ops.push(consent_op(contact, record)?),
                Write::Suppress(sup) => ops.push(suppress_op(sup)?),
                Write::Unsuppress { channel, address } => ops.push(unsuppress_op(channel, address)),
                Write::Recipients {
                    broadcast,
                    first,
                    contacts,
                } => ops.extend(recipients_ops(broadcast, *first, contacts)),
                Write::Analytics { key, value } => {
                    ops.push(analytics_op(key.clone(), value.clone()))
                }
                Write::Fact(fact) => {
                    if self.notes_facts() {
                        facts.push(fact.clone());
                    }
                }
            }
        }
        Ok((ops, facts))
    }

    /// The removes (and rewrites of shared records) that erase a contact from every tree.
    fn erase_ops(&self, contact: &str, ops: &mut Vec<RawOp>) -> StoreResult<()> {
        let gone = |tree: TreeId, k: &[u8]| remove(tree, k.to_vec());
        ops.push(gone(TreeId::Contacts, contact.as_bytes()));
        ops.push(gone(TreeId::Audience, contact.as_bytes()));
        for (tree, t) in [
            (TreeId::Events, &self.events),
            (TreeId::Waits, &self.waits),
            (TreeId::Consent, &self.consent),
        ] {
            for item in t.scan_prefix(prefix(contact)) {
                ops.push(gone(tree, &item?.0));
            }
        }
        let mut runs = std::collections::HashSet::new();
        for item in self.runs_by_contact.scan_prefix(prefix(contact)) {
            let (k, _) = item?;
            let (_, _, run) = parse_run_index_key(&k[contact.len() + 1..]);
            ops.push(gone(TreeId::RunsByContact, &k));
            ops.push(gone(TreeId::Runs, run.as_bytes()));
            for step in self.journal.scan_prefix(prefix(&run)) {
                ops.push(gone(TreeId::Journal, &step?.0));
            }
            runs.insert(run);
        }
        // Analytics facts of the erased runs not folded yet go with them, from every
        // generation (they name the runs; the fold would drop them as orphans anyway).
        let generations: Vec<(u64, sled::Tree)> = self
            .fact_trees
            .read()
            .expect("fact trees")
            .iter()
            .map(|(g, t)| (*g, t.clone()))
            .collect();
        for (generation, tree) in generations {
            for item in tree.iter() {
                let (k, v) = item?;
                if let Ok(f) = serde_json::from_slice::<crate::analytics::Fact>(&v) {
                    if runs.contains(&f.run) {
                        ops.push(gone(
                            TreeId::Facts,
                            &[&generation.to_be_bytes()[..], &k].concat(),
                        ));
                    }
                }
            }
        }
        for item in self.outbox.iter() {
            let (k, v) = item?;
            let intent: Intent = dec(&v)?;
            if runs.contains(&intent.run) {
                ops.push(gone(TreeId::Outbox, &k));
            }
        }
        for item in self.timers.iter() {
            let (k, v) = item?;
            if v.as_ref() == contact.as_bytes() {
                ops.push(gone(TreeId::Timers, &k));
            }
        }
        // Broadcast snapshots: the contact's place is left empty (a broadcast reads past it).
        for item in self.recipients.iter() {
            let (k, v) = item?;
            if v.as_ref() == contact.as_bytes() {
                ops.push(gone(TreeId::Recipients, &k));
            }
        }
        // The analytics log keeps the contact's facts (the counts stay) without anything that
        // names it (a broadcast's run id holds the contact id; a click its URL); its facts'
        // markers go (their runs are gone, so the facts cannot be noted again).
        for item in self.analytics.scan_prefix(b"f\0") {
            let (k, v) = item?;
            if let Ok(mut f) = serde_json::from_slice::<crate::analytics::FoldedFact>(&v) {
                if f.contact == contact || runs.contains(&f.fact.run) {
                    f.contact = String::new();
                    f.fact.run = String::new();
                    f.fact.id = String::new();
                    f.fact.link = None;
                    ops.push(put(TreeId::Analytics, k.to_vec(), serde_json::to_vec(&f)?));
                }
            }
        }
        for prefix in [&b"d\0"[..], &b"u\0"[..]] {
            for item in self.analytics.scan_prefix(prefix) {
                let (k, _) = item?;
                let key = String::from_utf8_lossy(&k[2..]);
                if runs.iter().any(|r| key.contains(r.as_str())) {
                    ops.push(gone(TreeId::Analytics, &k));
                }
            }
        }
        // Records shared with other contacts are written again without this one.
        for item in self.segment_log.iter() {
            let (k, v) = item?;
            let skip = k
                .iter()
                .position(|b| *b == 0)
                .map_or(k.len(), |i| i + 1 + 8);
            if k.len() > skip {
                // A one-change record, its contact in the key.
                if &k[skip..] == contact.as_bytes() {
                    ops.push(gone(TreeId::SegmentLog, &k));
                }
                continue;
            }
            let changes = decode_changes(&v)?;
            if changes.iter().any(|c| c.contact == contact) {
                let rest: Vec<SegmentChange> = changes
                    .into_iter()
                    .filter(|c| c.contact != contact)
                    .collect();
                ops.push(if rest.is_empty() {
                    gone(TreeId::SegmentLog, &k)
                } else {
                    put(TreeId::SegmentLog, k.to_vec(), encode_changes(&rest))
                });
            }
        }
        for item in self.inbox.iter() {
            let (k, v) = item?;
            let items: Vec<InboxItem> = dec(&v)?;
            if items.iter().any(|i| i.contact == contact) {
                let rest: Vec<InboxItem> =
                    items.into_iter().filter(|i| i.contact != contact).collect();
                ops.push(if rest.is_empty() {
                    gone(TreeId::Inbox, &k)
                } else {
                    put(TreeId::Inbox, k.to_vec(), enc(&rest)?)
                });
            }
        }
        for item in self.meta.scan_prefix(b"pmsg:") {
            let (k, v) = item?;
            let owner: Option<ProviderMessage> = serde_json::from_slice(&v).ok();
            if owner.is_some_and(|o| o.contact == contact) {
                ops.push(gone(TreeId::Meta, &k));
            }
        }
        Ok(())
    }

    /// The dedupe record of one request's messageIds (none for none).
    fn message_ids_op(&self, at: i64, ids: &[String]) -> StoreResult<Option<RawOp>> {
        if ids.is_empty() {
            return Ok(None);
        }
        Ok(Some(message_ids_op(at, self.db.generate_id()?, ids)))
    }

    /// Write `ops` in order. A counted write (contacts, timers, runs) withdraws a saved
    /// checkpoint before (and again after): the first call orders the withdrawal before the
    /// write in the log, the second covers a checkpoint saved while the write was under way.
    /// `atomic`: all of them or none across a crash, through a commit record (see `apply`).
    fn write_ops(&self, ops: &[RawOp], atomic: bool) -> StoreResult<()> {
        let counted = ops.iter().any(|o| {
            matches!(
                o.tree,
                TreeId::Contacts | TreeId::Timers | TreeId::Runs | TreeId::SegmentLog
            )
        });
        if counted {
            self.invalidate_checkpoint()?;
        }
        if atomic && ops.len() > 1 {
            let record = self.db.generate_id()?.to_be_bytes();
            // Fresh puts only (an ingest request): recording their keys is enough to take
            // them back; anything else records the whole batch, to finish it.
            let log = if ops.iter().all(|o| o.fresh) {
                encode_undo(ops)
            } else {
                encode_ops(ops)
            };
            self.batches.insert(record, log)?;
            #[cfg(any(test, feature = "test-hooks"))]
            if crash_mid_request(ops) {
                // Half of the request's writes on disk, then a crash: the commit record must
                // bring it back whole (or take it back) at the next open.
                self.apply_ops(&ops[..ops.len() / 2])?;
                self.db.flush()?;
                tracing::warn!(failpoint = "ingest_mid_batch", "killing the process");
                // SAFETY: kill(2) on our own pid with SIGKILL has no memory-safety preconditions.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
            self.apply_ops(ops)?;
            self.batches.remove(record)?;
        } else {
            self.apply_ops(ops)?;
        }
        if counted {
            self.invalidate_checkpoint()?;
        }
        Ok(())
    }

    /// Apply tree operations, keeping the running counts exact.
    pub(super) fn apply_ops(&self, ops: &[RawOp]) -> StoreResult<()> {
        for op in ops {
            if op.tree == TreeId::Facts {
                self.apply_fact_op(op)?;
                continue;
            }
            let tree = self.tree(op.tree);
            let before = match &op.value {
                Some(v) => tree.insert(&op.key, v.as_slice())?,
                None => tree.remove(&op.key)?,
            };
            let counter = match op.tree {
                TreeId::Contacts => Some(&self.contact_total),
                TreeId::Timers => Some(&self.timer_total),
                _ => None,
            };
            if let Some(counter) = counter {
                match (before.is_some(), op.value.is_some()) {
                    (false, true) => counter.fetch_add(1, Ordering::Relaxed),
                    (true, false) => counter.fetch_sub(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
        }
        Ok(())
    }

    /// A noted fact's put or remove in its generation's tree (a remove in a generation
    /// dropped since has nothing left to remove).
    fn apply_fact_op(&self, op: &RawOp) -> StoreResult<()> {
        let Some((generation, id)) = op.key.split_first_chunk::<8>() else {
            return Err(StoreError::Corrupt(
                "a noted fact's key has no generation".into(),
            ));
        };
        let Some(tree) = self.fact_tree(u64::from_be_bytes(*generation), op.value.is_some())?
        else {
            return Ok(());
        };
        match &op.value {
            Some(v) => tree.insert(id, v.as_slice())?,
            None => tree.remove(id)?,
        };
        Ok(())
    }

    /// Withdraw a saved checkpoint before (and again after) a write that changes a count: the
    /// first call orders the withdrawal before the write in the log, the second covers a
    /// checkpoint saved while the write was under way.
    fn invalidate_checkpoint(&self) -> StoreResult<()> {
        if self.checkpointed.load(Ordering::Acquire) {
            let _g = self.checkpoint_lock.locked();
            if self.checkpointed.swap(false, Ordering::AcqRel) {
                self.meta.remove("checkpoint")?;
            }
        }
        Ok(())
    }

    /// Walk a segment's change log newest first and call `member` for every contact whose
    /// latest change is an entry, until it returns false.
    fn replay_members(
        &self,
        segment: &str,
        member: &mut dyn FnMut(&str) -> bool,
    ) -> StoreResult<()> {
        let mut seen = std::collections::HashSet::new();
        self.changes_newest_first(segment, &mut |c| {
            if !seen.insert(c.contact.clone()) {
                return true;
            }
            !c.entered || member(&c.contact)
        })
    }

    /// Walk a segment's change log newest first, calling `f` until it returns false.
    /// A record holds the changes one write logged (oldest first); records written before
    /// changes were logged together hold one change, its contact in the key.
    fn changes_newest_first(
        &self,
        segment: &str,
        f: &mut dyn FnMut(SegmentChange) -> bool,
    ) -> StoreResult<()> {
        let skip = segment.len() + 1 + 8;
        for r in self.segment_log.scan_prefix(prefix(segment)).rev() {
            let (k, v) = r?;
            let changes = if k.len() > skip {
                vec![SegmentChange {
                    at: v.get(1..9).map(time_from_key).unwrap_or(0),
                    contact: String::from_utf8_lossy(&k[skip..]).into_owned(),
                    entered: v.first() == Some(&1),
                }]
            } else {
                decode_changes(&v)?
            };
            for c in changes.into_iter().rev() {
                if !f(c) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The underlying database (benchmarks compare against raw writes).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// Test builds: `HERALD_FAILPOINT=ingest_mid_batch` kills the process half-way through the
/// first ingest request that links identities (a batch with identity links and events).
#[cfg(any(test, feature = "test-hooks"))]
fn crash_mid_request(ops: &[RawOp]) -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| std::env::var("HERALD_FAILPOINT").is_ok_and(|f| f == "ingest_mid_batch"))
        && ops.iter().any(|o| o.tree == TreeId::Identities)
        && ops.iter().any(|o| o.tree == TreeId::Events)
}

impl Store for SledStore {
    /// A batch of more than one write is made atomic with a commit record: the whole batch is
    /// written as one record (a single write, atomic in sled) before its writes, and removed
    /// after them. A batch of new records only (events, inbox and dedupe records, segment
    /// changes: keys from fresh sequence numbers) records just their keys instead, and a crash
    /// takes it back rather than finishing it: an ingest request then costs its bytes once. sled recovers a prefix of its log (contract rule 3), so after a crash
    /// either the record is gone and so is every write of the batch, or it is there and
    /// [`SledStore::open`] applies the batch again, whole. sled's own transactions are not
    /// used: once used, they make every other write in the process pay for concurrency
    /// control.
    fn apply(&self, batch: &WriteBatch) -> StoreResult<()> {
        let (ops, facts) = self.ops(batch)?;
        self.write_noting(ops, facts, true)
    }

    fn next_id(&self) -> StoreResult<u64> {
        Ok(self.db.generate_id()?)
    }

    fn flush(&self) -> StoreResult<()> {
        self.db.flush()?;
        Ok(())
    }

    fn contact(&self, id: &str) -> StoreResult<Option<Contact>> {
        self.contacts.get(id)?.map(|b| dec(&b)).transpose()
    }

    fn put_contact(&self, contact: &Contact) -> StoreResult<()> {
        self.write_ops(&[contact_op(contact)?], false)
    }

    fn contact_count(&self) -> StoreResult<usize> {
        Ok(self.contact_total.load(Ordering::Relaxed))
    }

    fn identity(&self, kind: IdKind, id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .identities
            .get(id_key(kind, id))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn link_identity(&self, kind: IdKind, id: &str, contact: &str) -> StoreResult<()> {
        self.write_ops(&[identity_op(kind, id, contact)], false)
    }

    fn put_event(&self, contact: &str, event: &Event) -> StoreResult<()> {
        let mut batch = WriteBatch::new();
        batch.push(Write::Event {
            contact: contact.to_string(),
            event: event.clone(),
        });
        let (ops, facts) = self.ops(&batch)?;
        self.write_noting(ops, facts, false)
    }

    fn event(&self, contact: &str, seq: u64) -> StoreResult<Option<Event>> {
        let key = key2(contact, &seq.to_be_bytes());
        self.events
            .get(&key)?
            .map(|b| dec_event(&key, &b))
            .transpose()
    }

    fn recent_events(&self, contact: &str, limit: usize) -> StoreResult<Vec<Event>> {
        self.events
            .scan_prefix(prefix(contact))
            .rev()
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                dec_event(&k, &v)
            })
            .collect()
    }

    fn move_events(&self, from: &str, to: &str) -> StoreResult<()> {
        for item in self.events.scan_prefix(prefix(from)) {
            let (k, v) = item?;
            let seq = &k[k.len() - 8..];
            self.events.insert(key2(to, seq), v)?;
            self.events.remove(k)?;
        }
        Ok(())
    }

    fn log_message_ids(&self, at: i64, ids: &[String]) -> StoreResult<()> {
        match self.message_ids_op(at, ids)? {
            Some(op) => self.write_ops(&[op], false),
            None => Ok(()),
        }
    }

    fn message_ids_since(&self, since: i64, f: &mut dyn FnMut(i64, &str)) -> StoreResult<()> {
        for r in self.dedupe.range(time_key(since)..) {
            let (k, v) = r?;
            let at = time_from_key(&k[..8]);
            let mut v = &v[..];
            while !v.is_empty() {
                f(at, &take_str16(&mut v, "messageId")?);
            }
        }
        Ok(())
    }

    fn expire_message_ids(&self, before: i64, limit: usize) -> StoreResult<usize> {
        let old: Vec<sled::IVec> = self
            .dedupe
            .range(..time_key(before))
            .keys()
            .take(limit)
            .collect::<Result<_, _>>()?;
        for k in &old {
            self.dedupe.remove(k)?;
        }
        Ok(old.len())
    }

    fn push_inbox(&self, key: u64, items: &[InboxItem]) -> StoreResult<()> {
        match inbox_op(key, items)? {
            Some(op) => self.write_ops(&[op], false),
            None => Ok(()),
        }
    }

    fn inbox(&self) -> StoreResult<Vec<(u64, Vec<InboxItem>)>> {
        self.inbox
            .iter()
            .map(|r| {
                let (k, v) = r?;
                let mut a = [0u8; 8];
                a.copy_from_slice(&k);
                Ok((u64::from_be_bytes(a), dec(&v)?))
            })
            .collect()
    }

    fn remove_inbox(&self, seq: u64) -> StoreResult<()> {
        self.write_ops(&[inbox_done_op(seq)], false)
    }

    fn run(&self, id: &str) -> StoreResult<Option<Run>> {
        self.runs.get(id)?.map(|b| dec(&b)).transpose()
    }

    fn create_run(&self, run: &Run) -> StoreResult<()> {
        // The contact index (which also answers which run last entered the workflow, the
        // re-entry policy's question) is written once, before the run's first record: a crash
        // in between leaves an index key without a run, which readers skip, never a run
        // without its key.
        let facts = self.noted(|| crate::analytics::fact_of_new_run(run).into_iter().collect());
        self.write_noting(vec![run_index_op(run), run_op(run)?], facts, false)
    }

    fn put_run(&self, run: &Run) -> StoreResult<()> {
        let facts = self.noted(|| crate::analytics::facts_of_run(run));
        self.write_noting(vec![run_op(run)?], facts, false)
    }

    fn runs_of_contact(&self, contact: &str) -> StoreResult<Vec<Run>> {
        let mut out = Vec::new();
        for item in self.runs_by_contact.scan_prefix(prefix(contact)) {
            let (k, _) = item?;
            let (_, _, id) = parse_run_index_key(&k[contact.len() + 1..]);
            if let Some(run) = self.run(&id)? {
                out.push(run);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    fn scan_runs(&self, f: &mut dyn FnMut(Run) -> bool) -> StoreResult<()> {
        for item in self.runs.iter() {
            if !f(dec(&item?.1)?) {
                break;
            }
        }
        Ok(())
    }

    fn entry(&self, workflow: &str, contact: &str) -> StoreResult<Option<Entry>> {
        let p = key2(contact, &prefix(workflow));
        for item in self.runs_by_contact.scan_prefix(&p).rev() {
            let (k, _) = item?;
            let (_, started_at, run) = parse_run_index_key(&k[contact.len() + 1..]);
            // An index key whose run was never written (a crash in between) is no entry.
            if self.runs.contains_key(run.as_bytes())? {
                return Ok(Some(Entry { run, started_at }));
            }
        }
        Ok(None)
    }

    fn journal(&self, run: &str) -> StoreResult<Vec<Step>> {
        self.journal
            .scan_prefix(prefix(run))
            .map(|r| dec(&r?.1))
            .collect()
    }

    fn run_summary(&self, id: &str) -> StoreResult<Option<RunSummary>> {
        let Some(b) = self.runs.get(id)? else {
            return Ok(None);
        };
        // Decoded in part; a record the summary cannot read (a trigger of another shape)
        // whole.
        match serde_json::from_slice::<RunSummary>(&b) {
            Ok(s) => Ok(Some(s)),
            Err(_) => Ok(Some(RunSummary::of(&dec::<Run>(&b)?))),
        }
    }

    fn journal_summary(&self, run: &str) -> StoreResult<Vec<StepSummary>> {
        self.journal
            .scan_prefix(prefix(run))
            .map(|r| {
                let b = r?.1;
                match serde_json::from_slice::<StepSummary>(&b) {
                    Ok(s) => Ok(s),
                    Err(_) => Ok(StepSummary::of(&dec::<Step>(&b)?)),
                }
            })
            .collect()
    }

    fn put_step(&self, run: &str, step: &Step) -> StoreResult<()> {
        let facts = self.noted(|| crate::analytics::facts_of_step(run, step));
        self.write_noting(vec![step_op(run, step)?], facts, false)
    }

    fn set_timer(&self, timer: &Timer) -> StoreResult<()> {
        self.write_ops(&[timer_op(timer)], false)
    }

    fn clear_timer(&self, due: i64, target: &TimerTarget) -> StoreResult<()> {
        self.write_ops(&[clear_timer_op(due, target)], false)
    }

    fn due_timers(&self, now: i64, limit: usize) -> StoreResult<Vec<Timer>> {
        let end = time_key(now.saturating_add(1));
        self.timers
            .range(..end)
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                Ok(Timer {
                    due: time_from_key(&k),
                    target: TimerTarget::decode(&String::from_utf8_lossy(&k[8..])),
                    contact: String::from_utf8_lossy(&v).into_owned(),
                })
            })
            .collect()
    }

    fn next_timer(&self) -> StoreResult<Option<i64>> {
        Ok(self.timers.first()?.map(|(k, _)| time_from_key(&k)))
    }

    fn timer_count(&self) -> StoreResult<usize> {
        Ok(self.timer_total.load(Ordering::Relaxed))
    }

    fn checkpoint(&self) -> Option<&dyn CountCheckpoint> {
        Some(self)
    }

    fn put_wait(&self, contact: &str, event: &str, wait: &WaitReg) -> StoreResult<()> {
        let k = key2(&format!("{contact}\0{event}"), wait.run.as_bytes());
        self.waits.insert(k, enc(wait)?)?;
        Ok(())
    }

    fn waits(&self, contact: &str, event: &str) -> StoreResult<Vec<WaitReg>> {
        self.waits
            .scan_prefix(prefix(&format!("{contact}\0{event}")))
            .map(|r| dec(&r?.1))
            .collect()
    }

    fn remove_wait(&self, contact: &str, event: &str, run: &str) -> StoreResult<()> {
        self.waits
            .remove(key2(&format!("{contact}\0{event}"), run.as_bytes()))?;
        Ok(())
    }

    fn move_waits(&self, from: &str, to: &str) -> StoreResult<()> {
        for item in self.waits.scan_prefix(prefix(from)) {
            let (k, v) = item?;
            let rest = &k[from.len()..];
            let mut nk = to.as_bytes().to_vec();
            nk.extend_from_slice(rest);
            self.waits.insert(nk, v)?;
            self.waits.remove(k)?;
        }
        Ok(())
    }

    fn put_script(&self, version: &ScriptVersion) -> StoreResult<()> {
        if !self.scripts.contains_key(&version.hash)? {
            self.scripts
                .insert(version.hash.as_bytes(), enc(version)?)?;
        }
        Ok(())
    }

    fn script(&self, hash: &str) -> StoreResult<Option<ScriptVersion>> {
        self.scripts.get(hash)?.map(|b| dec(&b)).transpose()
    }

    fn scripts(&self) -> StoreResult<Vec<ScriptVersion>> {
        self.scripts.iter().map(|r| dec(&r?.1)).collect()
    }

    fn put_intent(&self, key: &str, intent: &Intent) -> StoreResult<()> {
        self.write_ops(&[intent_op(key, intent)?], false)
    }

    fn remove_intent(&self, key: &str) -> StoreResult<()> {
        self.write_ops(&[intent_done_op(key)], false)
    }

    fn intent(&self, key: &str) -> StoreResult<Option<Intent>> {
        self.outbox.get(key)?.map(|b| dec(&b)).transpose()
    }

    fn intents(&self) -> StoreResult<Vec<(String, Intent)>> {
        self.outbox
            .iter()
            .map(|r| {
                let (k, v) = r?;
                Ok((String::from_utf8_lossy(&k).into_owned(), dec(&v)?))
            })
            .collect()
    }

    fn events_of(&self, contact: &str) -> StoreResult<Vec<Event>> {
        self.events
            .scan_prefix(prefix(contact))
            .map(|r| {
                let (k, v) = r?;
                dec_event(&k, &v)
            })
            .collect()
    }

    fn event_facts(&self, contact: &str) -> StoreResult<Vec<EventFact>> {
        self.events
            .scan_prefix(prefix(contact))
            .map(|r| {
                let (k, v) = r?;
                dec_event_fact(&k, &v)
            })
            .collect()
    }

    fn contact_ids(&self, after: Option<&str>, limit: usize) -> StoreResult<Vec<String>> {
        let iter = match after {
            Some(a) => self.contacts.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.contacts.iter(),
        };
        iter.take(limit)
            .map(|r| Ok(String::from_utf8_lossy(&r?.0).into_owned()))
            .collect()
    }

    fn members(&self, segment: &str, limit: usize) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        if limit > 0 {
            self.replay_members(segment, &mut |contact| {
                out.push(contact.to_string());
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    fn member_count(&self, segment: &str) -> StoreResult<usize> {
        let mut n = 0;
        self.replay_members(segment, &mut |_| {
            n += 1;
            true
        })?;
        Ok(n)
    }

    fn log_segment_changes(&self, segment: &str, changes: &[SegmentChange]) -> StoreResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        // Ordered by a sequence number, not the time: the newest change is the last written
        // even if the clock stepped back in between.
        let seq = self.db.generate_id()?;
        let facts = self.noted(|| crate::analytics::facts_of_segment(segment, seq, changes));
        // With its facts, atomic: a segment fact is counted without a record to check, so a
        // crash must take both back or keep both (both are new keys: an undo record).
        let atomic = !facts.is_empty();
        self.write_noting(
            vec![segment_changes_op(segment, seq, changes)],
            facts,
            atomic,
        )
    }

    fn scan_segment_log(
        &self,
        f: &mut dyn FnMut(&str, u64, &[SegmentChange]) -> bool,
    ) -> StoreResult<()> {
        for r in self.segment_log.iter() {
            let (k, v) = r?;
            let Some(end) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let segment = String::from_utf8_lossy(&k[..end]);
            let Some(seq) = k.get(end + 1..end + 9) else {
                continue;
            };
            let seq = u64::from_be_bytes(seq.try_into().expect("eight bytes"));
            let changes = if k.len() > end + 9 {
                vec![SegmentChange {
                    at: v.get(1..9).map(time_from_key).unwrap_or(0),
                    contact: String::from_utf8_lossy(&k[end + 9..]).into_owned(),
                    entered: v.first() == Some(&1),
                }]
            } else {
                decode_changes(&v)?
            };
            if !f(&segment, seq, &changes) {
                break;
            }
        }
        Ok(())
    }

    fn segment_changes(&self, segment: &str, limit: usize) -> StoreResult<Vec<SegmentChange>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.changes_newest_first(segment, &mut |c| {
            out.push(c);
            out.len() < limit
        })?;
        Ok(out)
    }

    fn audience(&self, contact: &str) -> StoreResult<Option<AudienceState>> {
        self.audience
            .get(contact)?
            .map(|b| dec_audience(&b))
            .transpose()
    }

    fn put_audience_encoded(&self, contact: &str, encoded: Vec<u8>) -> StoreResult<()> {
        self.write_ops(&[audience_op(contact, encoded)], false)
    }

    fn provider_message(
        &self,
        channel: &str,
        provider_id: &str,
    ) -> StoreResult<Option<ProviderMessage>> {
        let Some(text) = self.meta(&format!("pmsg:{channel}:{provider_id}"))? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Codec(format!("provider message record: {e}")))
    }

    fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self
            .meta
            .get(key)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn meta_with_prefix(&self, prefix: &str) -> StoreResult<Vec<(String, String)>> {
        self.meta
            .scan_prefix(prefix)
            .map(|r| {
                let (k, v) = r?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    fn put_meta(&self, key: &str, value: &str) -> StoreResult<()> {
        self.write_ops(&[meta_op(key, value)], false)
    }

    fn recipients(
        &self,
        broadcast: &str,
        from: u64,
        limit: usize,
    ) -> StoreResult<Vec<(u64, String)>> {
        let start = key2(broadcast, &from.to_be_bytes());
        let end = key2(broadcast, &u64::MAX.to_be_bytes());
        let mut out = Vec::new();
        for item in self.recipients.range(start..=end).take(limit) {
            let (k, v) = item?;
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&k[broadcast.len() + 1..]);
            out.push((
                u64::from_be_bytes(seq),
                String::from_utf8(v.to_vec()).map_err(|e| StoreError::Codec(e.to_string()))?,
            ));
        }
        Ok(out)
    }

    fn notes_facts(&self) -> bool {
        SledStore::notes_facts(self)
    }

    fn put_analytics(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> StoreResult<()> {
        let ops: Vec<RawOp> = entries
            .into_iter()
            .map(|(k, v)| analytics_op(k, Some(v)))
            .collect();
        self.write_ops(&ops, false)
    }

    fn seal_facts(&self) -> StoreResult<bool> {
        let open = self.fact_generation.load(Ordering::SeqCst);
        if self.fact_tree(open, true)?.is_none_or(|t| t.is_empty()) {
            return Ok(false);
        }
        self.fact_tree(open + 1, true)?;
        self.fact_generation.store(open + 1, Ordering::SeqCst);
        // The writes noting into the sealed generation finish (a write registers, then
        // checks the generation is still open, so none starts after this point).
        let writers = &self.fact_writers[(open % 2) as usize];
        let mut spins = 0u32;
        while writers.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
        Ok(true)
    }

    fn sealed_facts(&self) -> StoreResult<Option<u64>> {
        let open = self.fact_generation.load(Ordering::SeqCst);
        Ok(self
            .fact_trees
            .read()
            .expect("fact trees")
            .keys()
            .next()
            .copied()
            .filter(|g| *g < open))
    }

    fn facts_of(
        &self,
        generation: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(tree) = self.fact_tree(generation, false)? else {
            return Ok(Vec::new());
        };
        let range = match after {
            Some(a) => {
                tree.range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => tree.iter(),
        };
        range
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn drop_facts(&self, generation: u64) -> StoreResult<()> {
        if generation >= self.fact_generation.load(Ordering::SeqCst) {
            return Err(StoreError::Backend(format!(
                "generation {generation} of noted facts is still open"
            )));
        }
        // Dropped first, then forgotten: should the drop fail, the fold drops it again.
        self.db.drop_tree(fact_tree_name(generation))?;
        self.fact_trees
            .write()
            .expect("fact trees")
            .remove(&generation);
        Ok(())
    }

    fn analytics_get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.analytics.get(key)?.map(|v| v.to_vec()))
    }

    fn analytics_scan(
        &self,
        prefix: &[u8],
        from: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = from.unwrap_or(prefix).to_vec();
        let mut out = Vec::new();
        for item in self.analytics.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn clear_recipients(&self, broadcast: &str) -> StoreResult<()> {
        let keys: Vec<sled::IVec> = self
            .recipients
            .scan_prefix(prefix(broadcast))
            .keys()
            .collect::<Result<_, _>>()?;
        for chunk in keys.chunks(10_000) {
            let mut b = sled::Batch::default();
            for k in chunk {
                b.remove(k.clone());
            }
            self.recipients.apply_batch(b)?;
        }
        Ok(())
    }

    fn consent(&self, contact: &str) -> StoreResult<Vec<ConsentRecord>> {
        self.consent
            .scan_prefix(prefix(contact))
            .map(|item| dec(&item?.1))
            .collect()
    }

    fn suppression(&self, channel: &str, address: &str) -> StoreResult<Option<Suppression>> {
        self.suppression
            .get(key2(channel, address.as_bytes()))?
            .map(|v| dec(&v))
            .transpose()
    }

    fn suppressions(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Suppression>> {
        let start = match after {
            Some(a) => {
                let mut k = key2(channel, a.as_bytes());
                k.push(0);
                k
            }
            None => prefix(channel),
        };
        let end = {
            let mut k = channel.as_bytes().to_vec();
            k.push(1);
            k
        };
        self.suppression
            .range(start..end)
            .take(limit)
            .map(|item| dec(&item?.1))
            .collect()
    }
}

impl CountCheckpoint for SledStore {
    fn save(
        &self,
        runs: &BTreeMap<String, i64>,
        segments: &BTreeMap<String, i64>,
    ) -> StoreResult<()> {
        {
            let _g = self.checkpoint_lock.locked();
            let c = Checkpoint {
                contacts: self.contact_total.load(Ordering::Acquire),
                timers: self.timer_total.load(Ordering::Acquire),
                runs: runs.clone(),
                segments: segments.clone(),
            };
            self.meta.insert("checkpoint", serde_json::to_vec(&c)?)?;
            self.checkpointed.store(true, Ordering::Release);
        }
        self.db.flush()?;
        Ok(())
    }

    fn take_runs(&self) -> Option<BTreeMap<String, i64>> {
        self.checkpointed_runs.locked().take()
    }

    fn take_segments(&self) -> Option<BTreeMap<String, i64>> {
        self.checkpointed_segments.locked().take()
    }
}

/// An analytics keyspace put or remove.
fn analytics_op(key: Vec<u8>, value: Option<Vec<u8>>) -> RawOp {
    match value {
        Some(v) => put(TreeId::Analytics, key, v),
        None => remove(TreeId::Analytics, key),
    }
}

impl SledStore {
    /// Note analytics facts with the records they come from (on by default).
    pub fn set_notes_facts(&self, on: bool) {
        self.facts.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn notes_facts(&self) -> bool {
        self.facts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The facts a single-record write notes (most: none).
    fn noted(
        &self,
        facts: impl FnOnce() -> Vec<crate::analytics::Fact>,
    ) -> Vec<crate::analytics::Fact> {
        if !self.notes_facts() {
            return Vec::new();
        }
        facts()
    }
}

/// A write registered as noting facts into `generation` (see [`SledStore::fact_writer`]).
struct FactWriter<'a> {
    generation: u64,
    writers: &'a AtomicUsize,
}

impl Drop for FactWriter<'_> {
    fn drop(&mut self) {
        self.writers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The tree of a generation of noted facts.
fn fact_tree_name(generation: u64) -> String {
    format!("facts-{generation:016x}")
}

/// The generations of noted facts stored in `db`, by generation.
fn fact_trees(db: &sled::Db) -> StoreResult<BTreeMap<u64, sled::Tree>> {
    let mut trees = BTreeMap::new();
    for name in db.tree_names() {
        let Some(hex) = name.strip_prefix(b"facts-") else {
            continue;
        };
        if let Some(g) = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
        {
            trees.insert(g, db.open_tree(&name)?);
        }
    }
    Ok(trees)
}

/// A noted fact's put in `generation` (a fresh key there: a crash that takes its batch back
/// takes the fact back too).
fn fact_op(generation: u64, fact: &crate::analytics::Fact) -> RawOp {
    RawOp {
        fresh: true,
        ..put(
            TreeId::Facts,
            [&generation.to_be_bytes()[..], fact.id.as_bytes()].concat(),
            serde_json::to_vec(fact).expect("a fact serializes"),
        )
    }
}
