//! Signed links: the tokens in unsubscribe and preference URLs.
//!
//! A token names the contact, the topic and the message it was made for, and carries an
//! HMAC-SHA256 tag (truncated to 128 bits) under one of the daemon's link keys. Keys live in
//! the data directory (`meta` key `link_keys`), made at first start; a rotation adds a key and
//! signs with it while older keys still verify, so links in messages already sent keep
//! working. A token cannot be forged or enumerated without a key, and any change to it
//! (another contact, another topic) fails verification.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::store::{Store, StoreError};

/// The `meta` key the link keys are stored under.
const KEYS_META: &str = "link_keys";
/// Bytes of the tag kept in a token.
const TAG_BYTES: usize = 16;
/// The token format's version byte.
const FORMAT: u8 = 1;
/// Tokens longer than this are refused before any work.
pub const MAX_TOKEN_LEN: usize = 1024;

/// What a link token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaims {
    /// The contact.
    pub contact: String,
    /// The topic of the message the link was in.
    pub topic: String,
    /// The message (its idempotency key, `run:step`).
    pub message: String,
    /// The channel it went out on.
    pub channel: String,
}

/// Why a token was refused (the same answer for every kind of forgery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the link is not valid (it was changed, or made by another Herald)")]
pub struct BadToken;

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    id: u8,
    key: String,
    created_at: i64,
}

/// The daemon's link keys: the newest signs, every one verifies.
pub struct LinkKeys {
    keys: Vec<(u8, Vec<u8>)>,
}

impl LinkKeys {
    /// Read the keys from the store, making the first one when there is none.
    pub fn load_or_create(store: &dyn Store, now: i64) -> Result<LinkKeys, StoreError> {
        let mut stored = stored_keys(store)?;
        if stored.is_empty() {
            stored.push(new_key(1, now));
            store.put_meta(KEYS_META, &serde_json::to_string(&stored)?)?;
            store.flush()?;
        }
        Ok(Self::from_stored(&stored))
    }

    /// Add a key that signs from now on (the old ones still verify); returns its id.
    pub fn rotate(store: &dyn Store, now: i64) -> Result<(u8, LinkKeys), StoreError> {
        let mut stored = stored_keys(store)?;
        let id = stored
            .iter()
            .map(|k| k.id)
            .max()
            .unwrap_or(0)
            .wrapping_add(1);
        stored.retain(|k| k.id != id);
        stored.push(new_key(id, now));
        store.put_meta(KEYS_META, &serde_json::to_string(&stored)?)?;
        store.flush()?;
        Ok((id, Self::from_stored(&stored)))
    }

    fn from_stored(stored: &[StoredKey]) -> LinkKeys {
        LinkKeys {
            keys: stored
                .iter()
                .filter_map(|k| Some((k.id, hex::decode(&k.key).ok()?)))
                .collect(),
        }
    }

    /// A keyset for tests and benchmarks.
    pub fn fixed(key: &[u8]) -> LinkKeys {
        LinkKeys {
            keys: vec![(1, key.to_vec())],
        }
    }

    /// A URL-safe token for `claims`, signed with the newest key.
    pub fn sign(&self, claims: &LinkClaims) -> String {
        self.sign_parts(
            FORMAT,
            &[
                &claims.contact,
                &claims.topic,
                &claims.message,
                &claims.channel,
            ],
        )
    }

    /// A URL-safe token of `kind` (its first byte, so one kind of token is never taken for
    /// another) carrying `parts`, signed with the newest key.
    pub fn sign_parts(&self, kind: u8, parts: &[&str]) -> String {
        let (id, key) = self.keys.last().expect("at least one link key");
        let mut body = vec![kind, *id];
        for part in parts {
            let mut end = part.len().min(usize::from(u16::MAX));
            while !part.is_char_boundary(end) {
                end -= 1;
            }
            body.extend_from_slice(&(end as u16).to_be_bytes());
            body.extend_from_slice(&part.as_bytes()[..end]);
        }
        let tag = tag(key, &body);
        body.extend_from_slice(&tag[..TAG_BYTES]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
    }

    /// The `n` parts of a token of `kind` made by one of these keys (at most `max_len`
    /// characters long), or [`BadToken`].
    pub fn verify_parts(
        &self,
        kind: u8,
        token: &str,
        n: usize,
        max_len: usize,
    ) -> Result<Vec<String>, BadToken> {
        if token.len() > max_len {
            return Err(BadToken);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| BadToken)?;
        if raw.len() < 2 + TAG_BYTES || raw[0] != kind {
            return Err(BadToken);
        }
        let (body, given) = raw.split_at(raw.len() - TAG_BYTES);
        let key = self
            .keys
            .iter()
            .find(|(id, _)| *id == body[1])
            .map(|(_, k)| k)
            .ok_or(BadToken)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(body);
        mac.verify_truncated_left(given).map_err(|_| BadToken)?;
        let mut rest = &body[2..];
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            if rest.len() < 2 {
                return Err(BadToken);
            }
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let text = rest.get(2..2 + len).ok_or(BadToken)?;
            parts.push(String::from_utf8(text.to_vec()).map_err(|_| BadToken)?);
            rest = &rest[2 + len..];
        }
        if !rest.is_empty() {
            return Err(BadToken);
        }
        Ok(parts)
    }

    /// The claims of a token made by one of these keys, or [`BadToken`].
    pub fn verify(&self, token: &str) -> Result<LinkClaims, BadToken> {
        let mut parts = self
            .verify_parts(FORMAT, token, 4, MAX_TOKEN_LEN)?
            .into_iter();
        let mut next = || parts.next().ok_or(BadToken);
        Ok(LinkClaims {
            contact: next()?,
            topic: next()?,
            message: next()?,
            channel: next()?,
        })
    }
}

/// The keys as stored (none yet: empty).
fn stored_keys(store: &dyn Store) -> Result<Vec<StoredKey>, StoreError> {
    match store.meta(KEYS_META)? {
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| StoreError::Codec(format!("link keys: {e}")))
        }
        None => Ok(Vec::new()),
    }
}

fn new_key(id: u8, now: i64) -> StoredKey {
    StoredKey {
        id,
        key: hex::encode(rand::random::<[u8; 32]>()),
        created_at: now,
    }
}

fn tag(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> LinkClaims {
        LinkClaims {
            contact: "ada".into(),
            topic: "newsletter".into(),
            message: "welcome-1:0".into(),
            channel: "email".into(),
        }
    }

    #[test]
    fn a_token_verifies_to_its_claims() {
        let keys = LinkKeys::fixed(b"k");
        let token = keys.sign(&claims());
        assert!(token.len() < 120, "{token}");
        assert_eq!(keys.verify(&token), Ok(claims()));
    }

    #[test]
    fn a_changed_or_foreign_token_is_refused() {
        let keys = LinkKeys::fixed(b"k");
        let token = keys.sign(&claims());
        // Every single-character change is refused.
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != token {
                assert_eq!(keys.verify(&changed), Err(BadToken), "position {i}");
            }
        }
        assert_eq!(LinkKeys::fixed(b"other").verify(&token), Err(BadToken));
        for junk in ["", "x", "!!!", &"A".repeat(2000)] {
            assert_eq!(keys.verify(junk), Err(BadToken));
        }
    }

    #[test]
    fn old_keys_still_verify_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path(), 1 << 20).unwrap();
        let first = LinkKeys::load_or_create(&store, 1).unwrap();
        let old = first.sign(&claims());
        let again = LinkKeys::load_or_create(&store, 2).unwrap();
        assert_eq!(again.verify(&old), Ok(claims()), "the key is kept");
        let (id, rotated) = LinkKeys::rotate(&store, 3).unwrap();
        assert_eq!(id, 2);
        let new = rotated.sign(&claims());
        assert_ne!(new, old);
        assert_eq!(rotated.verify(&old), Ok(claims()));
        assert_eq!(rotated.verify(&new), Ok(claims()));
        assert_eq!(first.verify(&new), Err(BadToken));
    }
}
