//! Days: hourly counters older than `[analytics] hourly_days` are rolled up into daily ones
//! (days in the project's timezone), and reports read either as a series per day.
//!
//! A daily counter's key is `y` `\0` scope `\0` metric `\0` and the day's start (ms since the
//! epoch, thirteen digits). An hour belongs to the day its start falls in. The rollup moves
//! every hour before the start of the day `hourly_days` ago into its day, a page at a time,
//! each page one atomic batch (the daily sums and the hours' removal), and records how far it
//! went (`r`), so a rebuild rolls its recounted hours up the same way.

use std::collections::BTreeMap;

use chrono::{NaiveTime, TimeZone as _};
use chrono_tz::Tz;
use serde::Serialize;

use super::{u64_of, Period, COUNTER, HOUR_MS};
use crate::store::{Store, StoreError, Write, WriteBatch};
use crate::sync::LockExt as _;

/// Key prefix of a daily counter.
pub(super) const DAILY: &[u8] = b"y\0";
/// Where the rollup has rolled every hour before (ms, u64 BE).
pub(super) const ROLLED: &[u8] = b"r";
/// One day, in ms (a report's day may be 23 or 25 hours long across a DST change).
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// Counters moved per batch.
const PAGE: usize = 5000;

/// The start (ms) of the day, in `tz`, that the instant `ms` falls in.
pub fn day_start(ms: i64, tz: Tz) -> i64 {
    let Some(local) = tz.timestamp_millis_opt(ms).single() else {
        return ms - ms.rem_euclid(DAY_MS);
    };
    let date = local.date_naive();
    // Midnight may not exist (a DST change at midnight): the day starts at its first hour.
    for hour in 0..3 {
        let t = date.and_time(NaiveTime::from_hms_opt(hour, 0, 0).expect("a valid hour"));
        if let Some(start) = tz.from_local_datetime(&t).earliest() {
            return start.timestamp_millis();
        }
    }
    ms - ms.rem_euclid(DAY_MS)
}

/// The local date (`YYYY-MM-DD`) of a day's start.
pub fn date_of(ms: i64, tz: Tz) -> String {
    tz.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.date_naive().to_string())
        .unwrap_or_default()
}

pub(super) fn daily_key(scope: &str, metric: &str, start: i64) -> Vec<u8> {
    let mut k = [DAILY, scope.as_bytes(), b"\0", metric.as_bytes(), b"\0"].concat();
    k.extend_from_slice(format!("{start:013}").as_bytes());
    k
}

/// An hourly or daily counter's key, taken apart: (scope, metric, start ms).
pub(super) fn parse_counter(key: &[u8]) -> Option<(String, String, i64)> {
    let (daily, rest) = if let Some(r) = key.strip_prefix(DAILY) {
        (true, r)
    } else {
        (false, key.strip_prefix(COUNTER)?)
    };
    let rest = std::str::from_utf8(rest).ok()?;
    let mut parts = rest.rsplitn(3, '\0');
    let (Some(at), Some(metric), Some(scope)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let n: i64 = at.parse().ok()?;
    Some((
        scope.to_string(),
        metric.to_string(),
        if daily { n } else { n * HOUR_MS },
    ))
}

/// What a rollup did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RollUp {
    /// Every hour before this (ms) is now in its day.
    pub before: i64,
    /// Hourly counters moved.
    pub hours: usize,
}

/// Where a rollup at `now` rolls to: the start of the day `hourly_days` ago.
pub fn boundary(now: i64, hourly_days: u32, tz: Tz) -> i64 {
    day_start(now - i64::from(hourly_days) * DAY_MS, tz)
}

/// Roll every hourly counter before `before` into its day (`tz`), a page per batch, each
/// under `lock` (the fold's: it may write counters of those hours meanwhile, not during a
/// page).
pub(super) fn roll_up(
    store: &dyn Store,
    before: i64,
    tz: Tz,
    lock: &std::sync::Mutex<()>,
) -> Result<RollUp, StoreError> {
    let mut out = RollUp { before, hours: 0 };
    let mut from: Option<Vec<u8>> = None;
    loop {
        let _page = lock.locked();
        let page = store.analytics_scan(COUNTER, from.as_deref(), PAGE)?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            from = Some([last.as_slice(), b"\0"].concat());
        }
        let mut days: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut batch = WriteBatch::new();
        for (key, value) in &page {
            let Some((scope, metric, at)) = parse_counter(key) else {
                continue;
            };
            if at >= before {
                continue;
            }
            *days
                .entry(daily_key(&scope, &metric, day_start(at, tz)))
                .or_default() += u64_of(value);
            batch.push(Write::Analytics {
                key: key.clone(),
                value: None,
            });
            out.hours += 1;
        }
        for (key, n) in days {
            let now = store.analytics_get(&key)?.map_or(0, |v| u64_of(&v));
            batch.push(Write::Analytics {
                key,
                value: Some((now + n).to_be_bytes().to_vec()),
            });
        }
        if !full {
            batch.push(Write::Analytics {
                key: ROLLED.to_vec(),
                value: Some((before.max(0) as u64).to_be_bytes().to_vec()),
            });
        }
        if !batch.is_empty() {
            store.apply(&batch)?;
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Where the last rollup rolled to (0: never).
pub(crate) fn rolled(store: &dyn Store) -> Result<i64, StoreError> {
    Ok(store
        .analytics_get(ROLLED)?
        .map_or(0, |v| u64_of(&v) as i64))
}

/// Roll recounted counters (hourly keys) the way the live ones were: hours before `before`
/// into their days.
pub(super) fn roll_counts(counts: &mut BTreeMap<Vec<u8>, u64>, before: i64, tz: Tz) {
    if before <= 0 {
        return;
    }
    let hourly: Vec<Vec<u8>> = counts
        .keys()
        .filter(|k| k.starts_with(COUNTER))
        .cloned()
        .collect();
    for key in hourly {
        let Some((scope, metric, at)) = parse_counter(&key) else {
            continue;
        };
        if at < before {
            let n = counts.remove(&key).unwrap_or(0);
            *counts
                .entry(daily_key(&scope, &metric, day_start(at, tz)))
                .or_default() += n;
        }
    }
}

/// The daily counters of scopes under `prefix` whose day starts in `period`: (scope, metric,
/// day start, count).
pub(super) fn days_in(
    store: &dyn Store,
    prefix: &[u8],
    period: Period,
) -> Result<Vec<(String, String, i64, u64)>, StoreError> {
    let (from, to) = (
        period.from.unwrap_or(i64::MIN),
        period.to.unwrap_or(i64::MAX),
    );
    let mut out = Vec::new();
    for (key, value) in store.analytics_scan(&[DAILY, prefix].concat(), None, usize::MAX)? {
        if let Some((scope, metric, at)) = parse_counter(&key) {
            out.push((
                scope,
                metric,
                at,
                if at >= from && at < to {
                    u64_of(&value)
                } else {
                    0
                },
            ));
        }
    }
    Ok(out)
}

/// A scope's series of `metric` per day (`tz`) over `period`: (day start, count), days
/// without any left out. Rolled-up days and the days of the hours still kept alike.
pub fn daily_series(
    store: &dyn Store,
    scope: &str,
    metric: &str,
    period: Period,
    tz: Tz,
) -> Result<Vec<(i64, u64)>, StoreError> {
    let mut days: BTreeMap<i64, u64> = BTreeMap::new();
    for (at, n) in super::series(store, scope, metric, period)? {
        *days.entry(day_start(at, tz)).or_default() += n;
    }
    let prefix = [scope.as_bytes(), b"\0", metric.as_bytes(), b"\0"].concat();
    for (_, _, at, n) in days_in(store, &prefix, period)? {
        if n > 0 {
            *days.entry(at).or_default() += n;
        }
    }
    Ok(days.into_iter().collect())
}

/// A segment's size at the end of one day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizePoint {
    /// The local date.
    pub day: String,
    /// The day's start (ms).
    pub start: i64,
    /// Contacts that entered during the day.
    pub entered: u64,
    /// Contacts that left during the day.
    pub exited: u64,
    /// Members at its end.
    pub size: i64,
}

/// Most days a segment's size series has.
pub const MAX_SIZE_DAYS: usize = 400;

/// A segment's size at the end of each day (`tz`) in `period` (at most its last
/// [`MAX_SIZE_DAYS`], up to `now`), from its counted entries and exits. `members` is its size
/// now: the series ends there, so changes made before they were counted (an older data
/// directory) shift the whole series rather than skew it.
pub fn segment_sizes(
    store: &dyn Store,
    segment: &str,
    members: i64,
    period: Period,
    now: i64,
    tz: Tz,
) -> Result<Vec<SizePoint>, StoreError> {
    let scope = format!("segment:{segment}");
    let everything = Period::default();
    let mut days: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for (at, n) in daily_series(store, &scope, "entered", everything, tz)? {
        days.entry(at).or_default().0 += n;
    }
    for (at, n) in daily_series(store, &scope, "exited", everything, tz)? {
        days.entry(at).or_default().1 += n;
    }
    let net: i64 = days.values().map(|(e, x)| *e as i64 - *x as i64).sum();
    let mut size = members - net;
    let today = day_start(now, tz);
    let first = match (period.from, days.keys().next()) {
        (Some(f), _) => day_start(f, tz),
        (None, Some(d)) => *d,
        (None, None) => today,
    };
    let last = period.to.map_or(today, |t| day_start(t - 1, tz).min(today));
    let mut out = Vec::new();
    // Every day from the first change on, so the size before `first` is known.
    let mut day = days.keys().next().copied().unwrap_or(first).min(first);
    while day <= last {
        let (entered, exited) = days.get(&day).copied().unwrap_or_default();
        size += entered as i64 - exited as i64;
        if day >= first {
            out.push(SizePoint {
                day: date_of(day, tz),
                start: day,
                entered,
                exited,
                size,
            });
        }
        // The next local day (23 to 25 hours on).
        day = day_start(day + DAY_MS + 2 * HOUR_MS, tz);
    }
    if out.len() > MAX_SIZE_DAYS {
        out.drain(..out.len() - MAX_SIZE_DAYS);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_starts_at_local_midnight_and_an_hour_belongs_to_the_day_it_starts_in() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-12-07 23:30 UTC is 2026-12-08 00:30 in Berlin (UTC+1).
        let t = 1_796_685_000_000;
        assert_eq!(date_of(t, chrono_tz::UTC), "2026-12-07");
        assert_eq!(date_of(day_start(t, berlin), berlin), "2026-12-08");
        assert_eq!(day_start(t, berlin), 1_796_684_400_000, "23:00 UTC");
        assert_eq!(day_start(t, chrono_tz::UTC), 1_796_601_600_000);
        // The spring DST change: 2026-03-29 in Berlin has 23 hours.
        let d = day_start(1_774_800_000_000, berlin); // 2026-03-29 16:00 UTC
        assert_eq!(date_of(d, berlin), "2026-03-29");
        assert_eq!(day_start(d + 23 * HOUR_MS, berlin), d + 23 * HOUR_MS);
    }

    #[test]
    fn recounted_hours_roll_up_like_the_live_ones() {
        let mut counts = BTreeMap::new();
        let h = |hour: i64| super::super::hour_key("workflow:w", "sent", hour);
        counts.insert(h(10), 2);
        counts.insert(h(11), 3);
        counts.insert(h(30), 1);
        roll_counts(&mut counts, 24 * HOUR_MS, chrono_tz::UTC);
        assert_eq!(counts.get(&daily_key("workflow:w", "sent", 0)), Some(&5));
        assert_eq!(counts.get(&h(30)), Some(&1));
        assert_eq!(counts.len(), 2);
    }
}
