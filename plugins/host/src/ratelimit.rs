//! Per-plugin token bucket with adaptive slow-down.
//!
//! When a provider answers "rate limited", the plugin is paused until the
//! retry-after has passed and its rate is halved; every success afterwards
//! raises the rate by 5% until the configured rate is reached again (AIMD).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::SendError;

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
    rate: Option<f64>,
    paused_until: Option<Instant>,
}

/// Token bucket + pause, safe to share between threads.
#[derive(Debug)]
pub struct RateLimiter {
    configured: Option<f64>,
    burst: f64,
    state: Mutex<State>,
}

impl RateLimiter {
    /// `rate` sends per second (None = unlimited) with bursts of `burst`.
    pub fn new(rate: Option<f64>, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            configured: rate.filter(|r| *r > 0.0),
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
                rate: rate.filter(|r| *r > 0.0),
                paused_until: None,
            }),
        }
    }

    /// Take a token or say how long to wait.
    pub fn acquire(&self) -> Result<(), SendError> {
        let now = Instant::now();
        let mut s = self.state.lock().expect("rate lock");
        if let Some(until) = s.paused_until {
            if now < until {
                return Err(SendError::RateLimited {
                    retry_after_ms: (until - now).as_millis() as u64 + 1,
                    message: "channel paused after the provider rate-limited it".into(),
                });
            }
            s.paused_until = None;
        }
        let Some(rate) = s.rate else {
            return Ok(());
        };
        let elapsed = now.duration_since(s.last).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(self.burst);
        s.last = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - s.tokens) / rate;
            Err(SendError::RateLimited {
                retry_after_ms: (wait * 1000.0).ceil() as u64,
                message: format!("channel rate limit of {rate:.2}/s reached"),
            })
        }
    }

    /// The provider said slow down: pause and halve the rate.
    pub fn on_rate_limited(&self, retry_after: Duration) {
        let mut s = self.state.lock().expect("rate lock");
        let until = Instant::now() + retry_after;
        s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
        if let Some(r) = s.rate {
            s.rate = Some((r / 2.0).max(0.01));
        }
    }

    /// A send succeeded: recover 5% of the rate towards the configured one.
    pub fn on_success(&self) {
        let mut s = self.state.lock().expect("rate lock");
        if let (Some(r), Some(max)) = (s.rate, self.configured) {
            s.rate = Some((r * 1.05).min(max));
        }
    }

    /// The current effective rate (None = unlimited).
    pub fn current_rate(&self) -> Option<f64> {
        self.state.lock().expect("rate lock").rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_and_pause() {
        // Slow refill so a stalled test machine cannot make the third call pass.
        let r = RateLimiter::new(Some(1.0), 2);
        assert!(r.acquire().is_ok());
        assert!(r.acquire().is_ok());
        match r.acquire() {
            Err(SendError::RateLimited { retry_after_ms, .. }) => assert!(retry_after_ms <= 1001),
            other => panic!("expected rate limited, got {other:?}"),
        }
        // Fast refill: tokens come back after a short wait.
        let fast = RateLimiter::new(Some(50.0), 1);
        assert!(fast.acquire().is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(fast.acquire().is_ok());
        r.on_rate_limited(Duration::from_secs(5));
        assert_eq!(r.current_rate(), Some(0.5));
        match r.acquire() {
            Err(SendError::RateLimited { message, .. }) => {
                assert!(message.contains("paused"), "{message}")
            }
            other => panic!("expected paused, got {other:?}"),
        }
        r.on_success();
        assert!((r.current_rate().unwrap() - 0.525).abs() < 1e-9);
        // A pause on an unlimited channel ends after the retry-after.
        let p = RateLimiter::new(None, 1);
        p.on_rate_limited(Duration::from_secs(5));
        assert!(p.acquire().is_err());
        let q = RateLimiter::new(None, 1);
        q.on_rate_limited(Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert!(q.acquire().is_ok());
        let unlimited = RateLimiter::new(None, 1);
        for _ in 0..100 {
            assert!(unlimited.acquire().is_ok());
        }
    }
}
