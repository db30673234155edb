//! Erasure (GDPR's right to be forgotten): a contact and everything Herald holds about it go,
//! in one atomic batch, and a hashed suppression entry stays so the person is not imported or
//! tracked into marketing again.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::*;
use crate::store::{IdKind, Write, WriteBatch};

/// What an erasure removed (counts only: nothing about the person is kept to report).
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Erasure {
    /// Herald's id of the contact erased.
    pub contact: String,
    /// Contact records removed: the contact and those merged into it earlier.
    pub contacts: usize,
    /// Events removed from its timeline.
    pub events: usize,
    /// Runs removed, with their journals.
    pub runs: usize,
    /// Identity links removed (userIds and anonymousIds).
    pub identities: usize,
    /// Suppression entries kept (hashed userIds and email addresses).
    pub suppressed: usize,
}

/// Key prefix of suppression entries in the store's settings.
pub const SUPPRESSION_PREFIX: &str = "erased:";

/// The suppression key of an identifier: a SHA-256 of its kind and normalised value, so the
/// entry recognises the person again without holding the identifier.
pub fn suppression_key(kind: &str, value: &str) -> String {
    let value = value.trim();
    let value = if kind == "email" {
        value.to_lowercase()
    } else {
        value.to_string()
    };
    let digest = Sha256::digest(format!("herald-erasure\0{kind}\0{value}").as_bytes());
    format!("{SUPPRESSION_PREFIX}{}", hex::encode(digest))
}

impl Engine {
    /// Is this message about a person who was erased (its userId, or the email of an
    /// `identify`)? Such messages are dropped, as Segment's suppress-with-delete does.
    pub(crate) fn is_erased(&self, user_id: Option<&str>, email: Option<&str>) -> bool {
        let suppressed = self.suppressed.read_locked();
        if suppressed.is_empty() {
            return false;
        }
        user_id.is_some_and(|u| suppressed.contains(&suppression_key("user", u)))
            || email.is_some_and(|e| suppressed.contains(&suppression_key("email", e)))
    }

    /// Erase the contact `id` leads to (a Herald id, userId or anonymousId resolved by the
    /// caller to a Herald id). Runs on the contact's worker, so none of its runs is being
    /// activated meanwhile; ingest for it waits on its locks.
    pub fn erase_contact(&self, id: &str) -> Result<Option<Erasure>, EngineError> {
        let (tx, rx) = mpsc::channel();
        self.send_job(
            id,
            Job::Erase {
                contact: id.to_string(),
                reply: tx,
            },
        )?;
        rx.recv().map_err(|_| EngineError::Stopped)?
    }

    pub(super) fn erase_now(&self, id: &str) -> Result<Option<Erasure>, EngineError> {
        loop {
            let Some(found) = self.live_contact(id)? else {
                return Ok(None);
            };
            let ids: Vec<&String> = found.user_ids.iter().chain(&found.anonymous_ids).collect();
            let _ids = self
                .contact_locks
                .identities(ids.iter().map(|s| s.as_str()));
            let mut all: BTreeSet<&str> = found.merged_from.iter().map(String::as_str).collect();
            all.insert(&found.id);
            let _contacts = self.contact_locks.contacts(all.iter().copied());
            // Changed while the locks were taken (a merge, a new id): look again.
            match self.store.contact(&found.id)? {
                Some(now) if now == found => {}
                _ => continue,
            }
            let audience = self.store.audience(&found.id)?;
            let mut batch = WriteBatch::new();
            let mut events = 0;
            let mut runs = 0;
            for c in &all {
                events += self.store.events_of(c)?.len();
                runs += self.store.runs_of_contact(c)?.len();
                batch.push(Write::EraseContact {
                    contact: c.to_string(),
                });
            }
            for u in &found.user_ids {
                batch.push(Write::Unlink {
                    kind: IdKind::User,
                    id: u.clone(),
                });
            }
            for a in &found.anonymous_ids {
                batch.push(Write::Unlink {
                    kind: IdKind::Anonymous,
                    id: a.clone(),
                });
            }
            let now = self.clock.now_ms().to_string();
            let mut suppressed: BTreeSet<String> = found
                .user_ids
                .iter()
                .map(|u| suppression_key("user", u))
                .collect();
            if let Some(email) = found.attributes.get("email").and_then(Value::as_str) {
                suppressed.insert(suppression_key("email", email));
            }
            for key in &suppressed {
                batch.push(Write::Meta {
                    key: key.clone(),
                    value: now.clone(),
                });
            }
            // The fold writes nothing that names the contact while its facts are rewritten.
            self.analytics.fold_all(self.store.as_ref())?;
            let held = self.analytics.hold();
            self.store.apply(&batch)?;
            drop(held);
            self.relinks
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.suppressed
                .write_locked()
                .extend(suppressed.iter().cloned());
            self.flusher
                .commit_blocking()
                .map_err(|e| EngineError::Invalid(format!("durability: {e}")))?;
            // Segment sizes lose the member; its runs are gone from the gauges at the next count.
            if let Some(state) = audience {
                let mut sizes = self.segment_sizes.locked();
                for (segment, m) in &state.segments {
                    if m.member {
                        if let Some(n) = sizes.get_mut(segment) {
                            *n = (*n - 1).max(0);
                        }
                    }
                }
            }
            let erasure = Erasure {
                contact: found.id.clone(),
                contacts: all.len(),
                events,
                runs,
                identities: found.user_ids.len() + found.anonymous_ids.len(),
                suppressed: suppressed.len(),
            };
            tracing::info!(
                contact = %erasure.contact,
                contacts = erasure.contacts,
                events = erasure.events,
                runs = erasure.runs,
                identities = erasure.identities,
                "contact erased"
            );
            return Ok(Some(erasure));
        }
    }
}
