//! Timers: the loop that wakes due timers and hands each to its contact's worker, a run's
//! timer, retry backoff, and the next local time of day in a contact's timezone.

#[allow(unused_imports)]
use super::*;

/// The next instant at which the contact's local clock shows `hour:minute`.
pub fn next_local_time(now_ms: i64, timezone: Option<&str>, hour: u32, minute: u32) -> i64 {
    use chrono::{Duration, TimeZone, Utc};
    let tz: chrono_tz::Tz = timezone
        .and_then(|t| t.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default()
        .with_timezone(&tz);
    let mut date = now.date_naive();
    for _ in 0..3 {
        let Some(naive) = date.and_hms_opt(hour, minute, 0) else {
            break;
        };
        // In a DST gap the time does not exist that day: take the hour after.
        let candidate = tz.from_local_datetime(&naive).earliest().or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        });
        if let Some(c) = candidate {
            if c.timestamp_millis() > now_ms {
                return c.timestamp_millis();
            }
        }
        date = date.succ_opt().unwrap_or(date);
    }
    now_ms + 86_400_000
}

impl Engine {
    /// Wake the timer loop (after the clock moved).
    pub fn poke_timers(&self) {
        self.timer_wake.notify_one();
    }

    /// Dispatch due timers until `stop` resolves.
    pub async fn timer_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.dispatch_due() {
                tracing::error!(error = %e, "timer scan failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                _ = self.timer_wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Dispatch every due timer once; returns how many were dispatched.
    pub fn dispatch_due(&self) -> Result<usize, EngineError> {
        let now = self.clock.now_ms();
        let mut n = 0;
        loop {
            let due = self.store.due_timers(now, 1024)?;
            let mut fresh = 0;
            for t in &due {
                if self.inflight.locked().insert(t.target.clone()) {
                    fresh += 1;
                    if self
                        .send_job(&t.contact, Job::Activate(t.target.clone(), Some(t.due)))
                        .is_err()
                    {
                        self.inflight.locked().remove(&t.target);
                        return Ok(n);
                    }
                }
            }
            n += fresh;
            if due.len() < 1024 || fresh == 0 {
                return Ok(n);
            }
        }
    }

    /// Wake `run` at `due` (the caller stores the run).
    pub(super) fn set_run_timer(&self, run: &mut Run, due: i64) -> Result<(), EngineError> {
        self.store.set_timer(&Timer {
            due,
            target: TimerTarget::Run(run.id.clone()),
            contact: run.contact.clone(),
        })?;
        run.wake_at = Some(due);
        Ok(())
    }

    pub(super) fn backoff(&self, attempts: u32) -> i64 {
        let base = self.config.backoff_ms.max(1) as f64
            * 2f64.powi(attempts.saturating_sub(1).min(20) as i32);
        let jitter = 0.5 + rand::random::<f64>();
        (base * jitter).min(3_600_000.0) as i64
    }
}
