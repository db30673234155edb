//! The `messageId` dedupe window.
//!
//! Segment's SDKs retry a request they did not see answered, with the same `messageId`s, and
//! Segment drops such repeats within a look-back window (about a day). Herald does the same
//! with a window of `[server] dedupe_window_hours` (default 24): a `messageId` seen within the
//! window is answered 200 and counted as a duplicate, nothing is stored twice.
//!
//! The ids of each request are stored as one record (`Store::log_message_ids`, written with the
//! request's events and flushed before the 200), not one marker per event, and looked up in
//! memory: a 64-bit keyed fingerprint per id, in a hash set for the newest ids and in sorted,
//! radix-indexed generations for older ones, about 8.5 bytes per id in the window. At start
//! the window is rebuilt from the stored records; records and generations older than the
//! window are dropped as time goes by (a generation goes when its newest id leaves the window,
//! so an id may be remembered for up to a quarter of a window longer).
//!
//! A new id is mistaken for a duplicate only if its fingerprint equals one of the `n` in the
//! window: a chance of `n / 2^64` (about 5 in 10^14 per message with a million in the window).

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Ids in the newest generation before it is sorted and sealed.
const RECENT_CAP: usize = 1 << 16;

/// Hashes a fingerprint to itself: fingerprints are already uniform.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Sorted fingerprints with an index by their top bits.
struct Generation {
    oldest: i64,
    newest: i64,
    ids: Vec<u64>,
    /// `index[b]..index[b + 1]` is where fingerprints whose top bits are `b` lie.
    index: Vec<u32>,
    bits: u32,
}

impl Generation {
    fn new(mut ids: Vec<u64>, oldest: i64, newest: i64) -> Generation {
        ids.sort_unstable();
        Generation::sorted(ids, oldest, newest)
    }

    fn sorted(mut ids: Vec<u64>, oldest: i64, newest: i64) -> Generation {
        ids.dedup();
        // About four fingerprints per index slot: a lookup reads one slot pair and one line.
        let bits = (ids.len() / 4).max(1).ilog2().min(24);
        let slots = 1usize << bits;
        let mut index = Vec::with_capacity(slots + 1);
        let mut at = 0usize;
        for b in 0..slots as u64 {
            while at < ids.len() && top(ids[at], bits) < b {
                at += 1;
            }
            index.push(at as u32);
        }
        index.push(ids.len() as u32);
        Generation {
            oldest,
            newest,
            ids,
            index,
            bits,
        }
    }

    fn contains(&self, fp: u64) -> bool {
        let b = top(fp, self.bits) as usize;
        let (from, to) = (self.index[b] as usize, self.index[b + 1] as usize);
        self.ids[from..to].contains(&fp)
    }

    /// One generation holding both, by a linear merge of their sorted ids.
    fn merge(a: Generation, b: Generation) -> Generation {
        let mut ids = Vec::with_capacity(a.ids.len() + b.ids.len());
        let (mut x, mut y) = (a.ids.iter().peekable(), b.ids.iter().peekable());
        while let (Some(&&p), Some(&&q)) = (x.peek(), y.peek()) {
            if p <= q {
                ids.push(p);
                x.next();
            } else {
                ids.push(q);
                y.next();
            }
        }
        ids.extend(x);
        ids.extend(y);
        Generation::sorted(ids, a.oldest.min(b.oldest), a.newest.max(b.newest))
    }
}

fn top(fp: u64, bits: u32) -> u64 {
    if bits == 0 {
        0
    } else {
        fp >> (64 - bits)
    }
}

/// The `messageId`s accepted within the window, in memory.
pub struct Dedupe {
    window_ms: i64,
    keys: std::collections::hash_map::RandomState,
    recent: HashSet<u64, BuildHasherDefault<Identity>>,
    recent_span: Option<(i64, i64)>,
    /// Oldest first.
    sealed: Vec<Generation>,
}

impl Dedupe {
    /// An empty window of `window_ms` milliseconds.
    pub fn new(window_ms: i64) -> Dedupe {
        Dedupe {
            window_ms: window_ms.max(1),
            keys: Default::default(),
            recent: HashSet::default(),
            recent_span: None,
            sealed: Vec::new(),
        }
    }

    /// The window's length in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    fn fingerprint(&self, id: &str) -> u64 {
        self.keys.hash_one(id)
    }

    /// Was `id` accepted within the window?
    pub fn contains(&self, id: &str) -> bool {
        let fp = self.fingerprint(id);
        self.recent.contains(&fp) || self.sealed.iter().rev().any(|g| g.contains(fp))
    }

    /// Remember `id` as accepted at `at` (milliseconds).
    pub fn insert(&mut self, id: &str, at: i64) {
        let fp = self.fingerprint(id);
        self.recent.insert(fp);
        self.recent_span = Some(match self.recent_span {
            Some((o, n)) => (o.min(at), n.max(at)),
            None => (at, at),
        });
        if self.recent.len() >= RECENT_CAP {
            self.seal();
        }
    }

    fn seal(&mut self) {
        let Some((oldest, newest)) = self.recent_span.take() else {
            return;
        };
        let ids: Vec<u64> = self.recent.drain().collect();
        self.sealed.push(Generation::new(ids, oldest, newest));
        // Merge the newest two generations while they are of a size (as a binary counter
        // carries) and together span at most a quarter of the window: a logarithmic number of
        // generations to probe, and none that outlives the window by much because it was
        // merged with younger ones.
        while self.sealed.len() >= 2 {
            let n = self.sealed.len();
            let (a, b) = (&self.sealed[n - 2], &self.sealed[n - 1]);
            if a.ids.len() >= 2 * b.ids.len() || b.newest - a.oldest > self.window_ms / 4 {
                break;
            }
            let b = self.sealed.pop().expect("two generations");
            let a = self.sealed.pop().expect("two generations");
            self.sealed.push(Generation::merge(a, b));
        }
    }

    /// Forget what left the window by `now`.
    pub fn expire(&mut self, now: i64) {
        let cutoff = now - self.window_ms;
        self.sealed.retain(|g| g.newest >= cutoff);
        if self.recent_span.is_some_and(|(_, newest)| newest < cutoff) {
            self.recent.clear();
            self.recent_span = None;
        }
    }

    /// Ids remembered (a duplicate fingerprint across generations counts twice).
    pub fn len(&self) -> usize {
        self.recent.len() + self.sealed.iter().map(|g| g.ids.len()).sum::<usize>()
    }

    /// Nothing remembered?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held for the fingerprints (for the README's memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.recent.capacity() * 9
            + self
                .sealed
                .iter()
                .map(|g| g.ids.capacity() * 8 + g.index.capacity() * 4)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn an_id_is_a_duplicate_within_the_window_whichever_generation_holds_it() {
        let mut d = Dedupe::new(24 * HOUR);
        let n = 5 * RECENT_CAP + 123;
        for i in 0..n {
            d.insert(&format!("m-{i}"), 1_000 + i as i64);
        }
        let sizes: Vec<usize> = d.sealed.iter().map(|g| g.ids.len()).collect();
        assert_eq!(
            sizes,
            [4 * RECENT_CAP, RECENT_CAP],
            "equal-sized generations were merged"
        );
        assert_eq!(d.recent.len(), 123);
        for i in (0..n).step_by(97) {
            assert!(d.contains(&format!("m-{i}")), "m-{i} is remembered");
        }
        assert!(d.contains(&format!("m-{}", n - 1)));
        let fresh = (0..10_000)
            .filter(|i| d.contains(&format!("other-{i}")))
            .count();
        assert_eq!(fresh, 0, "ids never seen are not duplicates");
        assert_eq!(d.len(), n);
    }

    #[test]
    fn ids_leave_the_window_by_generation_and_newer_ones_stay() {
        let mut d = Dedupe::new(24 * HOUR);
        // Two generations ten hours apart: one old, one young.
        for i in 0..RECENT_CAP {
            d.insert(&format!("old-{i}"), 0);
        }
        for i in 0..RECENT_CAP {
            d.insert(&format!("young-{i}"), 10 * HOUR);
        }
        d.insert("newest", 20 * HOUR);
        assert_eq!(
            d.sealed.len(),
            2,
            "spanning more than a quarter window: not merged"
        );

        d.expire(24 * HOUR);
        assert!(
            d.contains("old-7"),
            "exactly at the window's edge it is still in"
        );
        d.expire(24 * HOUR + 1);
        assert!(!d.contains("old-7"), "the old generation left the window");
        assert!(d.contains("young-7"));
        assert!(d.contains("newest"));

        d.expire(44 * HOUR + 1);
        assert!(!d.contains("newest"));
        assert!(d.is_empty());
    }

    #[test]
    fn a_tiny_generation_indexes_and_finds_its_ids() {
        let g = Generation::new(vec![5, 1, 9, 5], 0, 0);
        assert_eq!(g.ids, [1, 5, 9]);
        assert!(g.contains(9) && g.contains(1) && !g.contains(4));
        let all = Generation::new(vec![u64::MAX, 0, 1 << 63], 0, 0);
        assert!(all.contains(u64::MAX) && all.contains(0) && all.contains(1 << 63));
    }
}
