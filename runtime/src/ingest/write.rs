//! Accepting a request: identity resolution, merges, traits and events, worked out in memory
//! and written as one atomic batch.
//!
//! A request is all or nothing, across a crash too: everything it changes (contacts, identity
//! links, merged timelines and waits, events, the engine's inbox record, the messageId
//! record) goes to the store in one [`WriteBatch`]. Until then the request's changes live in a
//! working set ([`Working`]) that reads through to the store.
//!
//! Concurrency: the external ids a request names are locked (striped), then the contacts they
//! lead to; requests about unrelated contacts run side by side. A merge run by another request
//! while this one waited can move an id to another contact: the lookup is checked again once
//! the locks are held, and taken again if it changed.
//!
//! Limits (`[limits]`): every message is checked against the contact it would change before
//! anything of it is applied; one that would take a contact past a limit is dropped with a
//! reason and the rest of the request goes on.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::{id_field, Ingestor, Message, Rejected};
use crate::config::LimitsConfig;
use crate::engine::{Queued, Ticket};
use crate::model::{Contact, Event, InboxItem};
use crate::store::{IdKind, Store, StoreError, Write, WriteBatch};

/// A contact the request read or changed.
struct Loaded {
    contact: Contact,
    /// Bytes of its traits, as JSON (for `max_trait_bytes`), measured when a message could
    /// grow them.
    trait_bytes: Option<usize>,
    /// Changed by this request: written with the batch.
    dirty: bool,
    /// Created by this request.
    new: bool,
}

/// Bytes one trait counts for: its key and its value as JSON, with quotes and separators.
fn trait_size(key: &str, value: &Value) -> usize {
    key.len() + 4 + json_len(value)
}

fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

fn traits_bytes(attrs: &Map<String, Value>) -> usize {
    attrs.iter().map(|(k, v)| trait_size(k, v)).sum()
}

/// How a message finds its contact.
enum Plan {
    /// A contact Herald named itself (provider callbacks).
    Known(String),
    /// An existing contact, perhaps gaining one id.
    Existing {
        contact: String,
        link: Option<(IdKind, String)>,
    },
    /// Two contacts turn out to be one person: `from` is merged into `into`.
    Merge { from: String, into: String },
    /// Nobody yet: a new contact with these ids.
    New { links: Vec<(IdKind, String)> },
}

/// A request's changes before they are written.
pub(super) struct Working<'s> {
    store: &'s dyn Store,
    limits: &'s LimitsConfig,
    contacts: HashMap<String, Loaded>,
    /// Identity links this request made (or moved, in merges), and whether the id is new.
    links: HashMap<(IdKind, String), (String, bool)>,
    /// What the request's ids were found to lead to under its locks (saves reading them again).
    found: HashMap<(IdKind, String), Option<String>>,
    /// Merges: the stored events and waits of `from` join `to`.
    moves: Vec<(String, String)>,
    events: Vec<(String, Event)>,
    /// Events for the engine, with the event itself.
    inbox: Vec<(InboxItem, Box<Event>)>,
    message_ids: Vec<String>,
    pub(super) accepted: usize,
    pub(super) rejected: Vec<Rejected>,
}

/// What a limit check found wrong.
type Refusal = (&'static str, String);

impl<'s> Working<'s> {
    pub(super) fn new(store: &'s dyn Store, limits: &'s LimitsConfig, lookup: Lookup) -> Self {
        Working {
            store,
            limits,
            contacts: HashMap::new(),
            links: HashMap::new(),
            found: lookup.found,
            moves: Vec::new(),
            events: Vec::new(),
            inbox: Vec::new(),
            message_ids: Vec::new(),
            accepted: 0,
            rejected: Vec::new(),
        }
    }

    fn identity(&self, kind: IdKind, id: &str) -> Result<Option<String>, StoreError> {
        match self.links.get(&(kind, id.to_string())) {
            Some((c, _)) => Ok(Some(c.clone())),
            None => match self.found.get(&(kind, id.to_string())) {
                Some(c) => Ok(c.clone()),
                None => self.store.identity(kind, id),
            },
        }
    }

    /// Load a contact into the working set (once), and say whether it exists.
    pub(super) fn load(&mut self, id: &str) -> Result<bool, StoreError> {
        if self.contacts.contains_key(id) {
            return Ok(true);
        }
        match self.store.contact(id)? {
            Some(contact) => {
                self.contacts.insert(
                    id.to_string(),
                    Loaded {
                        contact,
                        trait_bytes: None,
                        dirty: false,
                        new: false,
                    },
                );
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Measure a loaded contact's traits (once).
    fn measure(&mut self, id: &str) {
        if let Some(l) = self.contacts.get_mut(id) {
            if l.trait_bytes.is_none() {
                l.trait_bytes = Some(traits_bytes(&l.contact.attributes));
            }
        }
    }

    fn get(&self, id: &str) -> Option<&Contact> {
        self.contacts.get(id).map(|l| &l.contact)
    }

    /// A contact in the working set (loaded before), marked changed.
    fn change(&mut self, id: &str) -> &mut Loaded {
        let l = self
            .contacts
            .get_mut(id)
            .expect("a contact is loaded before it is changed");
        l.dirty = true;
        l
    }

    /// Work out how `m` finds its contact, reading only.
    fn plan(&mut self, m: &Message) -> Result<Plan, StoreError> {
        if let Some(c) = &m.contact {
            return Ok(Plan::Known(c.clone()));
        }
        let (user, other, other_kind) = if m.kind == "alias" {
            // previousId may be an old userId or an anonymousId.
            let prev = id_field(&m.raw, "previousId").unwrap_or_default();
            let kind = if self.identity(IdKind::User, &prev)?.is_some() {
                IdKind::User
            } else {
                IdKind::Anonymous
            };
            (m.user_id.clone(), Some(prev), kind)
        } else {
            (m.user_id.clone(), m.anonymous_id.clone(), IdKind::Anonymous)
        };
        let cu = match &user {
            Some(u) => self.identity(IdKind::User, u)?,
            None => None,
        };
        let co = match &other {
            Some(a) => self.identity(other_kind, a)?,
            None => None,
        };
        Ok(match (cu, co) {
            (Some(u), Some(a)) if u != a => {
                self.load(&u)?;
                self.load(&a)?;
                Plan::Merge { from: a, into: u }
            }
            (Some(u), co) => {
                // The other id is new to this contact only when it resolved to nobody.
                let link = match (other, co) {
                    (Some(a), None) => {
                        self.load(&u)?;
                        let c = self.get(&u);
                        let known = c.is_some_and(|c| {
                            c.anonymous_ids.contains(&a) || c.user_ids.contains(&a)
                        });
                        (!known && c.is_some()).then_some((other_kind, a))
                    }
                    _ => None,
                };
                Plan::Existing { contact: u, link }
            }
            (None, Some(a)) => {
                if user.is_some() {
                    self.load(&a)?;
                }
                Plan::Existing {
                    link: user
                        .filter(|_| self.get(&a).is_some())
                        .map(|u| (IdKind::User, u)),
                    contact: a,
                }
            }
            (None, None) => {
                let mut links = Vec::new();
                if let Some(u) = user {
                    links.push((IdKind::User, u));
                }
                if let Some(a) = other {
                    links.push((other_kind, a));
                }
                Plan::New { links }
            }
        })
    }

    /// Would `m`, found through `plan`, take a contact past a limit?
    fn check(&self, m: &Message, plan: &Plan) -> Option<Refusal> {
        let l = self.limits;
        let empty = Contact::new(String::new(), 0);
        let (target, merged, link): (&Contact, Option<&Contact>, Option<&(IdKind, String)>) =
            match plan {
                Plan::Known(c) => (self.get(c)?, None, None),
                Plan::Existing { contact, link } => (self.get(contact)?, None, link.as_ref()),
                Plan::Merge { from, into } => (self.get(into)?, self.get(from), None),
                Plan::New { .. } => (&empty, None, None),
            };
        let count = |f: fn(&Contact) -> usize| f(target) + merged.map_or(0, f);
        let linked = |kind| usize::from(link.is_some_and(|(k, _)| *k == kind));
        let user_ids = count(|c| c.user_ids.len()) + linked(IdKind::User);
        if user_ids > l.max_user_ids {
            return Some((
                "contact_limit",
                format!(
                    "the contact would have {user_ids} userIds; [limits] max_user_ids is {}",
                    l.max_user_ids
                ),
            ));
        }
        let anonymous = count(|c| c.anonymous_ids.len()) + linked(IdKind::Anonymous);
        if anonymous > l.max_anonymous_ids {
            return Some((
                "contact_limit",
                format!(
                    "the contact would have {anonymous} anonymousIds; [limits] max_anonymous_ids is {}",
                    l.max_anonymous_ids
                ),
            ));
        }
        if let Some(f) = merged {
            let merges = (target.merges + f.merges + 1) as usize;
            if merges > l.max_merges {
                return Some((
                    "contact_limit",
                    format!(
                        "the contact would have {merges} contacts merged into it; [limits] max_merges is {}",
                        l.max_merges
                    ),
                ));
            }
        }
        // Groups: the union, and the one this call joins.
        let mut groups: HashSet<&str> = target.groups.iter().map(String::as_str).collect();
        if let Some(f) = merged {
            groups.extend(f.groups.iter().map(String::as_str));
        }
        let joined = (m.kind == "group")
            .then(|| id_field(&m.raw, "groupId"))
            .flatten();
        let group_count =
            groups.len() + usize::from(joined.as_deref().is_some_and(|g| !groups.contains(g)));
        if group_count > l.max_groups {
            return Some((
                "contact_limit",
                format!(
                    "the contact would be in {group_count} groups; [limits] max_groups is {}",
                    l.max_groups
                ),
            ));
        }
        // Traits: the contact's own, those a merge brings (the survivor's win), and the
        // message's (null removes one).
        let base_bytes = match plan {
            Plan::New { .. } => 0,
            Plan::Known(c) | Plan::Existing { contact: c, .. } | Plan::Merge { into: c, .. } => {
                self.contacts
                    .get(c)
                    .and_then(|l| l.trait_bytes)
                    .unwrap_or(0)
            }
        };
        let mut traits = target.attributes.len();
        let mut bytes = base_bytes;
        if let Some(f) = merged {
            for (k, v) in &f.attributes {
                if !target.attributes.contains_key(k) {
                    traits += 1;
                    bytes += trait_size(k, v);
                }
            }
        }
        if m.kind == "identify" {
            if let Some(Value::Object(new)) = m.raw.get("traits") {
                let current = |k: &str| {
                    target
                        .attributes
                        .get(k)
                        .or_else(|| merged.and_then(|f| f.attributes.get(k)))
                };
                for (k, v) in new {
                    let old = current(k);
                    match (old, v.is_null()) {
                        (Some(o), true) => {
                            traits -= 1;
                            bytes = bytes.saturating_sub(trait_size(k, o));
                        }
                        (Some(o), false) => {
                            bytes = (bytes + trait_size(k, v)).saturating_sub(trait_size(k, o));
                        }
                        (None, false) => {
                            traits += 1;
                            bytes += trait_size(k, v);
                        }
                        (None, true) => {}
                    }
                }
            }
        }
        if traits > l.max_traits {
            return Some((
                "contact_limit",
                format!(
                    "the contact would have {traits} traits; [limits] max_traits is {}",
                    l.max_traits
                ),
            ));
        }
        if bytes > l.max_trait_bytes {
            return Some((
                "contact_limit",
                format!(
                    "the contact's traits would take {bytes} bytes; [limits] max_trait_bytes is {}",
                    l.max_trait_bytes
                ),
            ));
        }
        None
    }

    /// Carry out a plan; the contact the message belongs to.
    fn resolve(&mut self, plan: Plan, now: i64) -> Result<String, StoreError> {
        Ok(match plan {
            Plan::Known(c) => c,
            Plan::Existing { contact, link } => {
                if let Some((kind, id)) = link {
                    self.link(&contact, kind, id, true);
                }
                contact
            }
            Plan::Merge { from, into } => {
                self.merge(&from, &into, now)?;
                into
            }
            Plan::New { links } => {
                let id = format!("c_{:012x}", self.store.next_id()?);
                self.contacts.insert(
                    id.clone(),
                    Loaded {
                        contact: Contact::new(id.clone(), now),
                        trait_bytes: Some(0),
                        dirty: true,
                        new: true,
                    },
                );
                for (kind, ext) in links {
                    self.link(&id, kind, ext, true);
                }
                id
            }
        })
    }

    /// Link `id` to `contact`; `new`: no contact had it before this request.
    fn link(&mut self, contact: &str, kind: IdKind, id: String, new: bool) {
        let c = &mut self.change(contact).contact;
        let list = match kind {
            IdKind::User => &mut c.user_ids,
            IdKind::Anonymous => &mut c.anonymous_ids,
        };
        if !list.contains(&id) {
            list.push(id.clone());
        }
        let new = new
            || self
                .links
                .get(&(kind, id.clone()))
                .is_some_and(|(_, was_new)| *was_new);
        self.links.insert((kind, id), (contact.to_string(), new));
    }

    /// Merge contact `from` into `into`: identities, attributes (`into` wins), events, waits;
    /// every contact merged into `from` before now points at `into` directly.
    fn merge(&mut self, from: &str, into: &str, now: i64) -> Result<(), StoreError> {
        let mut f = std::mem::replace(
            &mut self.change(from).contact,
            Contact::new(String::new(), 0),
        );
        let earlier = std::mem::take(&mut f.merged_from);
        for old in &earlier {
            if self.load(old)? {
                let o = &mut self.change(old).contact;
                o.merged_into = Some(into.to_string());
                o.updated_at = now;
            }
        }
        let t = self.change(into);
        let mut added = 0;
        for (k, v) in &f.attributes {
            if !t.contact.attributes.contains_key(k) {
                added += trait_size(k, v);
                t.contact.attributes.insert(k.clone(), v.clone());
            }
        }
        if let Some(b) = &mut t.trait_bytes {
            *b += added;
        }
        let c = &mut t.contact;
        for g in &f.groups {
            if !c.groups.contains(g) {
                c.groups.push(g.clone());
            }
        }
        c.created_at = c.created_at.min(f.created_at);
        c.merges += f.merges + 1;
        c.updated_at = now;
        let mut known: HashSet<String> = c.merged_from.iter().cloned().collect();
        for old in earlier.into_iter().chain([f.id.clone()]) {
            if known.insert(old.clone()) {
                c.merged_from.push(old);
            }
        }
        for u in std::mem::take(&mut f.user_ids) {
            self.link(into, IdKind::User, u, false);
        }
        for a in std::mem::take(&mut f.anonymous_ids) {
            self.link(into, IdKind::Anonymous, a, false);
        }
        f.merged_into = Some(into.to_string());
        f.updated_at = now;
        self.change(from).contact = f;
        // What this request already holds for `from` belongs to `into` now, and so does what
        // earlier merges of this request moved to `from`.
        for (c, _) in &mut self.events {
            if c == from {
                *c = into.to_string();
            }
        }
        for (item, _) in &mut self.inbox {
            if item.contact == from {
                item.contact = into.to_string();
            }
        }
        for (_, to) in &mut self.moves {
            if to == from {
                *to = into.to_string();
            }
        }
        self.moves.push((from.to_string(), into.to_string()));
        tracing::info!(from, into, "contacts merged");
        Ok(())
    }

    /// Take one message: its contact (resolved, merged or created), its traits and groups,
    /// its event. A message that would break a limit is dropped and recorded in `rejected`.
    pub(super) fn take(
        &mut self,
        ingestor: &Ingestor,
        m: &Message,
        batch: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let email = (m.kind == "identify")
            .then(|| m.raw.get("traits")?.get("email")?.as_str())
            .flatten();
        let refusal = if ingestor.engine.is_erased(m.user_id.as_deref(), email) {
            Some((
                "erased",
                "this person was erased; messages about them are not accepted again".to_string(),
            ))
        } else {
            None
        };
        let plan = self.plan(m)?;
        // Only these can grow a contact: traits and groups, a new id, a merge.
        let grows = matches!(m.kind.as_str(), "identify" | "group")
            || matches!(
                plan,
                Plan::Merge { .. } | Plan::Existing { link: Some(_), .. }
            );
        if grows {
            if let Plan::Known(c)
            | Plan::Existing { contact: c, .. }
            | Plan::Merge { into: c, .. } = &plan
            {
                self.load(c)?;
                if m.kind == "identify" || matches!(plan, Plan::Merge { .. }) {
                    self.measure(c);
                }
            }
        }
        let refusal = refusal.or_else(|| if grows { self.check(m, &plan) } else { None });
        if let Some((code, message)) = refusal {
            self.rejected.push(Rejected::of(m, batch, code, message));
            return Ok(());
        }
        let contact = self.resolve(plan, now)?;
        if matches!(m.kind.as_str(), "identify" | "group") && self.contacts.contains_key(&contact) {
            let l = self.change(&contact);
            if m.kind == "identify" {
                if let Some(Value::Object(traits)) = m.raw.get("traits") {
                    if l.contact.merge_attributes(traits) {
                        // Measured again when a later message needs it.
                        l.trait_bytes = None;
                    }
                }
            }
            if let Some(g) = id_field(&m.raw, "groupId") {
                if !l.contact.groups.contains(&g) {
                    l.contact.groups.push(g);
                }
            }
            l.contact.updated_at = now;
        }
        let seq = self.store.next_id()?;
        let event = to_event(m, seq, now);
        let item = InboxItem {
            contact: contact.clone(),
            event_seq: seq,
        };
        // Events no trigger, goal or wait can use are stored but skip the engine.
        if ingestor.engine.is_interesting(&event.event) {
            self.inbox.push((item, Box::new(event.clone())));
        }
        self.events.push((contact, event));
        if let Some(mid) = m.message_id.clone() {
            self.message_ids.push(mid);
        }
        ingestor.metrics.event(&m.kind);
        self.accepted += 1;
        Ok(())
    }

    /// Write everything in one atomic batch; the engine's work for the accepted events, the
    /// messageIds written, and whether contacts were merged.
    pub(super) fn apply(
        mut self,
        now: i64,
    ) -> Result<(Vec<Queued>, Vec<String>, bool), StoreError> {
        let mut batch = WriteBatch::new();
        let mut dirty: Vec<&Loaded> = self.contacts.values().filter(|l| l.dirty).collect();
        dirty.sort_by(|a, b| a.contact.id.cmp(&b.contact.id));
        for l in dirty {
            batch.push(if l.new {
                Write::NewContact(l.contact.clone())
            } else {
                Write::Contact(l.contact.clone())
            });
        }
        let mut links: Vec<_> = std::mem::take(&mut self.links).into_iter().collect();
        links.sort();
        for ((kind, id), (contact, new)) in links {
            batch.push(if new {
                Write::NewIdentity { kind, id, contact }
            } else {
                Write::Identity { kind, id, contact }
            });
        }
        let merged = !self.moves.is_empty();
        for (from, to) in std::mem::take(&mut self.moves) {
            batch.push(Write::MoveEvents {
                from: from.clone(),
                to: to.clone(),
            });
            batch.push(Write::MoveConsent {
                from: from.clone(),
                to: to.clone(),
            });
            batch.push(Write::MoveWaits { from, to });
        }
        for (contact, event) in std::mem::take(&mut self.events) {
            batch.push(Write::Event { contact, event });
        }
        let inbox = std::mem::take(&mut self.inbox);
        let mut ticket = None;
        if let Some((first, _)) = inbox.first() {
            // One inbox record for the events of this request; the engine removes it when
            // the last of them is processed.
            let key = first.event_seq;
            let items: Vec<InboxItem> = inbox.iter().map(|(i, _)| i.clone()).collect();
            batch.push(Write::Inbox { key, items });
            ticket = Some(Ticket::new(key, inbox.len()));
        }
        let ids = std::mem::take(&mut self.message_ids);
        if !ids.is_empty() {
            batch.push(Write::MessageIds {
                at: now,
                ids: ids.clone(),
            });
        }
        self.store.apply(&batch)?;
        let queued = match ticket {
            Some(ticket) => inbox
                .into_iter()
                .map(|(item, event)| Queued {
                    item,
                    event: Some(event),
                    ticket: ticket.clone(),
                })
                .collect(),
            None => Vec::new(),
        };
        Ok((queued, ids, merged))
    }
}

/// The external ids a request names (`userId`, `anonymousId`, `previousId`): the stripes it
/// locks first.
pub(super) fn named_ids(messages: &[Message]) -> BTreeSet<(Option<IdKind>, String)> {
    let mut ids = BTreeSet::new();
    for m in messages {
        ids.extend(m.user_id.iter().map(|u| (Some(IdKind::User), u.clone())));
        ids.extend(
            m.anonymous_id
                .iter()
                .map(|a| (Some(IdKind::Anonymous), a.clone())),
        );
        if m.kind == "alias" {
            // Either kind.
            ids.extend(id_field(&m.raw, "previousId").map(|p| (None, p)));
        }
    }
    ids
}

/// What the named ids (in both kinds) and the contacts Herald named lead to: taken before
/// and again after the contact locks, and compared.
#[derive(PartialEq, Eq)]
pub(super) struct Lookup {
    found: HashMap<(IdKind, String), Option<String>>,
    /// Contacts Herald named, and the live contact each is now.
    pub(super) known: BTreeMap<String, Option<String>>,
}

impl Lookup {
    pub(super) fn take(
        engine: &crate::engine::Engine,
        ids: &BTreeSet<(Option<IdKind>, String)>,
        known: &BTreeSet<String>,
    ) -> Result<Lookup, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        for (kind, id) in ids {
            let kinds: &[IdKind] = match kind {
                Some(IdKind::User) => &[IdKind::User],
                Some(IdKind::Anonymous) => &[IdKind::Anonymous],
                None => &[IdKind::User, IdKind::Anonymous],
            };
            for k in kinds {
                found.insert((*k, id.clone()), engine.store.identity(*k, id)?);
            }
        }
        let mut live = BTreeMap::new();
        for c in known {
            live.insert(c.clone(), engine.live_contact(c)?.map(|c| c.id));
        }
        Ok(Lookup { found, known: live })
    }

    /// Every contact found: the ones to lock.
    pub(super) fn contacts(&self) -> impl Iterator<Item = &String> {
        self.found.values().chain(self.known.values()).flatten()
    }
}

pub(super) fn to_event(m: &Message, seq: u64, now: i64) -> Event {
    let obj = |k: &str| {
        m.raw
            .get(k)
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}))
    };
    let (event, properties) = match m.kind.as_str() {
        "track" => (
            m.raw
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            obj("properties"),
        ),
        "identify" => ("identify".to_string(), obj("traits")),
        "group" => {
            let mut p = obj("traits");
            p["group_id"] = json!(id_field(&m.raw, "groupId"));
            ("group".to_string(), p)
        }
        "alias" => (
            "alias".to_string(),
            json!({"previous_id": id_field(&m.raw, "previousId")}),
        ),
        kind => {
            let mut p = obj("properties");
            if let Some(n) = m.raw.get("name") {
                p["name"] = n.clone();
            }
            (kind.to_string(), p)
        }
    };
    Event {
        seq,
        kind: m.kind.clone(),
        event,
        properties,
        message_id: m.message_id.clone(),
        timestamp: m.timestamp.unwrap_or(now),
        received_at: now,
        context: m.raw.get("context").cloned().unwrap_or(Value::Null),
    }
}
