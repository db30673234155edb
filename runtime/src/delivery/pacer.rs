//! Pacing of send starts to a rate limit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::LockExt as _;

/// Spaces send starts to at most `rate` per second: each start takes the next free slot,
/// `1 / rate` after the one before, and waits for it. Shared by the channels of a rate group.
pub struct Pacer {
    inner: Mutex<Inner>,
}

struct Inner {
    rate: Option<f64>,
    next: Instant,
}

impl Pacer {
    /// A pacer for `rate` starts per second (`None`: no limit).
    pub fn new(rate: Option<f64>) -> Self {
        Pacer {
            inner: Mutex::new(Inner {
                rate: rate.filter(|r| r.is_finite() && *r > 0.0),
                next: Instant::now(),
            }),
        }
    }

    /// Change the rate (a reload).
    pub fn set_rate(&self, rate: Option<f64>) {
        self.inner.locked().rate = rate.filter(|r| r.is_finite() && *r > 0.0);
    }

    /// The rate, if limited.
    pub fn rate(&self) -> Option<f64> {
        self.inner.locked().rate
    }

    /// Take the next slot: the instant this start may happen (now, without a limit).
    pub fn reserve(&self) -> Instant {
        let mut inner = self.inner.locked();
        let now = Instant::now();
        let Some(rate) = inner.rate else {
            return now;
        };
        let slot = inner.next.max(now);
        inner.next = slot + Duration::from_secs_f64(1.0 / rate);
        slot
    }

    /// Wait for the next slot.
    pub fn wait(&self) {
        let slot = self.reserve();
        let now = Instant::now();
        if slot > now {
            std::thread::sleep(slot - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_rate() {
        let p = Pacer::new(Some(10.0));
        let a = p.reserve();
        let b = p.reserve();
        let c = p.reserve();
        assert_eq!(b - a, Duration::from_millis(100));
        assert_eq!(c - b, Duration::from_millis(100));
    }

    #[test]
    fn without_a_rate_every_slot_is_now() {
        let p = Pacer::new(None);
        let before = Instant::now();
        let a = p.reserve();
        assert!(a >= before && a <= Instant::now());
        assert_eq!(p.rate(), None);
    }
}
