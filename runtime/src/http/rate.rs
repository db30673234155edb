//! Rate limits of the ingest API (`[server.rate_limits]`): keyed token buckets (governor) per
//! write key and per client address, checked once the key is known and before the body is
//! read.
//!
//! - The client address is the TCP peer's, or, when the peer is a trusted proxy, the
//!   rightmost untrusted hop of `X-Forwarded-For` ([`RateLimits::client_address`]).
//! - The address is checked before the key, so an address over its limit does not spend the
//!   key's budget that every other client shares.
//! - Memory is bounded: every [`SWEEP_INTERVAL`] a limit forgets the keys whose bucket is full
//!   again, and a limit holding more than `max_addresses` keys at once forgets them all.
//! - Refusals are logged at most once per [`LOG_INTERVAL`] for each limit and key or address,
//!   and at most [`LOG_LINES`] lines per interval in all (address spraying cannot flood the
//!   log either); the metrics count every one.
//! - A reload builds a new set ([`RateLimits::reconfigured`]); a limit whose settings did not
//!   change keeps its buckets.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use sha2::{Digest as _, Sha256};

use crate::config::rate_limits::{canonical, Bucket};
use crate::config::RateLimitsConfig;
use crate::daemon::KeyKind;
use crate::sync::RwLockExt as _;

/// How often a limit forgets the keys whose bucket is full again.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// A refusal is logged at most once per this interval for each limit and key or address.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Refusals logged per [`LOG_INTERVAL`] at most, over every key and address.
pub const LOG_LINES: u32 = 60;
/// Keys or addresses whose refusals the log remembers at most.
const LOGGED_KEYS: usize = 10_000;

/// One of the limits of `[server.rate_limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Requests with one client key.
    ClientKey,
    /// Requests with one server key.
    ServerKey,
    /// Client-key requests from one address.
    ClientAddress,
    /// Server-key requests from one address.
    ServerAddress,
}

impl Limit {
    /// The setting's name, as in `herald.toml` and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Limit::ClientKey => "client_key",
            Limit::ServerKey => "server_key",
            Limit::ClientAddress => "client_address",
            Limit::ServerAddress => "server_address",
        }
    }
}

/// A request over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The limit it was over.
    pub limit: Limit,
    /// When the limit lets a request through again.
    pub retry_after: Duration,
}

impl Refused {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// The rate limits in force: replaced whole by a reload.
pub struct RateLimits {
    config: RateLimitsConfig,
    client_key: Option<Arc<Tracked<String>>>,
    server_key: Option<Arc<Tracked<String>>>,
    client_address: Option<Arc<Tracked<IpAddr>>>,
    server_address: Option<Arc<Tracked<IpAddr>>>,
    log: Arc<RefusalLog>,
}

impl RateLimits {
    /// The limits of `config`, every bucket full.
    pub fn new(config: &RateLimitsConfig) -> RateLimits {
        RateLimits::build(config, None)
    }

    /// The limits of `config`, keeping the buckets of every limit of `self` whose settings
    /// are the same (a reload that changed something else resets nobody's budget).
    pub fn reconfigured(&self, config: &RateLimitsConfig) -> RateLimits {
        RateLimits::build(config, Some(self))
    }

    fn build(config: &RateLimitsConfig, old: Option<&RateLimits>) -> RateLimits {
        let max = config.max_addresses;
        fn keep<K: Hash + Eq + Clone>(
            bucket: Option<Bucket>,
            max: usize,
            old: Option<&Arc<Tracked<K>>>,
        ) -> Option<Arc<Tracked<K>>> {
            let bucket = bucket?;
            match old {
                Some(t) if t.bucket == bucket && t.max == max => Some(t.clone()),
                _ => Some(Arc::new(Tracked::new(bucket, max))),
            }
        }
        RateLimits {
            config: config.clone(),
            client_key: keep(
                config.client_key,
                max,
                old.and_then(|o| o.client_key.as_ref()),
            ),
            server_key: keep(
                config.server_key,
                max,
                old.and_then(|o| o.server_key.as_ref()),
            ),
            client_address: keep(
                config.client_address,
                max,
                old.and_then(|o| o.client_address.as_ref()),
            ),
            server_address: keep(
                config.server_address,
                max,
                old.and_then(|o| o.server_address.as_ref()),
            ),
            log: old.map_or_else(|| Arc::new(RefusalLog::new()), |o| o.log.clone()),
        }
    }

    /// May a request with the write key `key` (already authenticated as `kind`) from `peer`
    /// go on? Takes one token from each limit that applies; a request over one is refused
    /// (and logged, within the log's limits).
    pub fn check(
        &self,
        kind: KeyKind,
        key: &str,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<(), Refused> {
        let (address_limit, address, key_limit, per_key) = match kind {
            KeyKind::Client => (
                Limit::ClientAddress,
                &self.client_address,
                Limit::ClientKey,
                &self.client_key,
            ),
            KeyKind::Server => (
                Limit::ServerAddress,
                &self.server_address,
                Limit::ServerKey,
                &self.server_key,
            ),
        };
        if let Some(tracked) = address {
            let addr = bucket_address(self.client_address(peer, headers));
            tracked.check(&addr).map_err(|retry_after| {
                let refused = Refused {
                    limit: address_limit,
                    retry_after,
                };
                self.log.refused(refused, || display_address(addr));
                refused
            })?;
            if let Some(n) = tracked.take_forgotten() {
                self.log.forgot(address_limit, n, self.config.max_addresses);
            }
        }
        if let Some(tracked) = per_key {
            let key = key.to_string();
            tracked.check(&key).map_err(|retry_after| {
                let refused = Refused {
                    limit: key_limit,
                    retry_after,
                };
                self.log.refused(refused, || key_hint(&key));
                refused
            })?;
        }
        Ok(())
    }

    /// The client's address: the TCP peer's, unless the peer is one of `trusted_proxies`;
    /// then the rightmost address of `X-Forwarded-For` (all of its headers, in order) that is
    /// not a trusted proxy. When every hop is trusted, the leftmost; when a hop is not an
    /// address, the trusted hop that forwarded it.
    pub fn client_address(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer.ip());
        if !self.config.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(addr) = parse_hop(hop) else {
                break;
            };
            client = addr;
            if !self.config.trusts(addr) {
                break;
            }
        }
        client
    }

    /// Addresses the per-address limits keep track of now (an estimate under load).
    pub fn tracked_addresses(&self) -> usize {
        [&self.client_address, &self.server_address]
            .into_iter()
            .flatten()
            .map(|t| t.len())
            .sum()
    }
}

/// One `X-Forwarded-For` entry: `10.0.0.7`, `2001:db8::1`, `[2001:db8::1]`, with or
/// without a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let addr = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
        })?;
    Some(canonical(addr))
}

/// The key an address is counted under: itself for IPv4, its /64 network for IPv6.
fn bucket_address(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

fn display_address(addr: IpAddr) -> String {
    match addr {
        IpAddr::V6(v6) => format!("{v6}/64"),
        v4 => v4.to_string(),
    }
}

/// A write key as the log names it: the start of its SHA-256, never the key itself.
fn key_hint(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..4]))
}

/// The quota of a bucket.
fn quota(bucket: Bucket) -> Quota {
    use std::num::NonZeroU32;
    let burst = NonZeroU32::new(bucket.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(bucket.refill_interval().max(Duration::from_nanos(1)))
        .expect("a period of at least a nanosecond")
        .allow_burst(burst)
}

/// One limit: a keyed limiter with its settings, forgetting full buckets as it goes.
struct Tracked<K: Hash + Eq + Clone> {
    bucket: Bucket,
    max: usize,
    limiter: RwLock<Arc<DefaultKeyedRateLimiter<K>>>,
    next_sweep: Mutex<Instant>,
    /// Keys forgotten at once because there were more than `max`, not yet logged.
    forgotten: AtomicU64,
}

impl<K: Hash + Eq + Clone> Tracked<K> {
    fn new(bucket: Bucket, max: usize) -> Self {
        Tracked {
            bucket,
            max,
            limiter: RwLock::new(Arc::new(DefaultKeyedRateLimiter::keyed(quota(bucket)))),
            next_sweep: Mutex::new(Instant::now() + SWEEP_INTERVAL),
            forgotten: AtomicU64::new(0),
        }
    }

    /// Take a token for `key`; `Err` with the wait until one is there.
    fn check(&self, key: &K) -> Result<(), Duration> {
        let limiter = self.limiter.read_locked().clone();
        let result = limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()));
        self.upkeep(&limiter);
        result
    }

    /// Every [`SWEEP_INTERVAL`], or as soon as it holds more than `max` keys: forget the keys
    /// whose bucket is full again; if more than `max` are left, forget them all.
    fn upkeep(&self, limiter: &Arc<DefaultKeyedRateLimiter<K>>) {
        let over = limiter.len() > self.max;
        // One request does the work; the others go on.
        let Ok(mut next) = self.next_sweep.try_lock() else {
            return;
        };
        let now = Instant::now();
        if !over && now < *next {
            return;
        }
        *next = now + SWEEP_INTERVAL;
        let before = limiter.len();
        limiter.retain_recent();
        let left = limiter.len();
        if left > self.max {
            *self.limiter.write_locked() =
                Arc::new(DefaultKeyedRateLimiter::keyed(quota(self.bucket)));
            self.forgotten.fetch_add(left as u64, Ordering::Relaxed);
        } else if left < before / 2 {
            limiter.shrink_to_fit();
        }
    }

    /// Keys forgotten all at once since the last call, if any.
    fn take_forgotten(&self) -> Option<u64> {
        match self.forgotten.swap(0, Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    fn len(&self) -> usize {
        self.limiter.read_locked().len()
    }
}

/// Which refusals are logged: once per interval per limit and key or address, and a bounded
/// number of lines per interval in all.
struct RefusalLog {
    per_key: Tracked<(Limit, String)>,
    lines: DefaultDirectRateLimiter,
    /// Refusals not logged since the last line.
    unlogged: AtomicU64,
}

impl RefusalLog {
    fn new() -> Self {
        let once = Bucket {
            requests: 1,
            per_seconds: LOG_INTERVAL.as_secs() as u32,
            burst: 1,
        };
        let lines = Quota::with_period(LOG_INTERVAL / LOG_LINES)
            .expect("a period")
            .allow_burst(std::num::NonZeroU32::new(LOG_LINES).expect("not zero"));
        RefusalLog {
            per_key: Tracked::new(once, LOGGED_KEYS),
            lines: DefaultDirectRateLimiter::direct(lines),
            unlogged: AtomicU64::new(0),
        }
    }

    fn refused(&self, refused: Refused, who: impl FnOnce() -> String) {
        let who = who();
        let first = self.per_key.check(&(refused.limit, who.clone())).is_ok();
        if !(first && self.lines.check().is_ok()) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            limit = refused.limit.name(),
            over = %who,
            retry_after_s = refused.retry_after_secs(),
            unlogged_refusals = unlogged,
            "ingest requests over [server.rate_limits] {} are refused with 429 (logged once a minute per key and address; herald_ingest_rate_limited_total counts them all)",
            refused.limit.name()
        );
    }

    fn forgot(&self, limit: Limit, n: u64, max: usize) {
        if self
            .per_key
            .check(&(limit, "forgot every address".to_string()))
            .is_ok()
        {
            tracing::warn!(
                limit = limit.name(),
                forgotten = n,
                max_addresses = max,
                "more addresses than [server.rate_limits] max_addresses at once (address spraying?): the per-address limit forgot them all and starts over; the per-key limits still hold"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(toml: &str) -> RateLimits {
        let config = crate::config::Config::parse(&format!("[server.rate_limits]\n{toml}\n"))
            .expect("valid")
            .server
            .rate_limits;
        RateLimits::new(&config)
    }

    fn peer(addr: &str) -> SocketAddr {
        SocketAddr::new(addr.parse().unwrap(), 40000)
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_peer() {
        let l = limits(r#"trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]"#);
        let h = forwarded(&["203.0.113.9"]);
        assert_eq!(
            l.client_address(peer("198.51.100.1"), &h),
            "198.51.100.1".parse::<IpAddr>().unwrap(),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            l.client_address(peer("127.0.0.1"), &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            l.client_address(peer("127.0.0.1"), &HeaderMap::new()),
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "no header: the proxy itself"
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let l = limits(r#"trusted_proxies = ["10.0.0.0/8"]"#);
        // The client wrote the first entry itself; the first proxy appended what it saw.
        let h = forwarded(&["1.1.1.1, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(
            l.client_address(peer("10.2.2.2"), &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let h = forwarded(&["10.3.3.3, 10.1.1.1"]);
        assert_eq!(
            l.client_address(peer("10.2.2.2"), &h),
            "10.3.3.3".parse::<IpAddr>().unwrap(),
            "all trusted: the leftmost"
        );
        let h = forwarded(&["203.0.113.9, unknown, 10.1.1.1"]);
        assert_eq!(
            l.client_address(peer("10.2.2.2"), &h),
            "10.1.1.1".parse::<IpAddr>().unwrap(),
            "a hop that is no address: the proxy that forwarded it"
        );
        let h = forwarded(&["[2001:db8::7]:443, 198.51.100.4:8080"]);
        assert_eq!(
            l.client_address(peer("::ffff:10.2.2.2"), &h),
            "198.51.100.4".parse::<IpAddr>().unwrap(),
            "ports and an IPv4 peer written as IPv6"
        );
    }

    #[test]
    fn an_address_over_its_limit_is_refused_until_its_bucket_refills() {
        let l = limits("client_address = { requests = 1, per_seconds = 3600, burst = 2 }");
        let none = HeaderMap::new();
        let a = peer("198.51.100.1");
        assert!(l.check(KeyKind::Client, "k", a, &none).is_ok());
        assert!(l.check(KeyKind::Client, "k", a, &none).is_ok());
        let refused = l.check(KeyKind::Client, "k", a, &none).unwrap_err();
        assert_eq!(refused.limit, Limit::ClientAddress);
        assert!(refused.retry_after_secs() > 3000, "{refused:?}");
        assert!(l
            .check(KeyKind::Client, "k", peer("198.51.100.2"), &none)
            .is_ok());
        assert!(
            l.check(KeyKind::Server, "s", a, &none).is_ok(),
            "server keys are not limited per address by default"
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_network() {
        let l = limits("client_address = { requests = 1, per_seconds = 3600 }");
        let none = HeaderMap::new();
        assert!(l
            .check(KeyKind::Client, "k", peer("2001:db8::1"), &none)
            .is_ok());
        assert!(l
            .check(KeyKind::Client, "k", peer("2001:db8::2:1"), &none)
            .is_err());
        assert!(l
            .check(KeyKind::Client, "k", peer("2001:db8:0:1::1"), &none)
            .is_ok());
    }

    #[test]
    fn a_key_over_its_limit_is_refused_from_every_address() {
        let l = limits(
            "client_key = { requests = 1, per_seconds = 3600, burst = 2 }\nclient_address = false",
        );
        let none = HeaderMap::new();
        assert!(l
            .check(KeyKind::Client, "k", peer("198.51.100.1"), &none)
            .is_ok());
        assert!(l
            .check(KeyKind::Client, "k", peer("198.51.100.2"), &none)
            .is_ok());
        let refused = l
            .check(KeyKind::Client, "k", peer("198.51.100.3"), &none)
            .unwrap_err();
        assert_eq!(refused.limit, Limit::ClientKey);
        assert!(l
            .check(KeyKind::Client, "other", peer("198.51.100.3"), &none)
            .is_ok());
    }

    #[test]
    fn an_address_refused_does_not_spend_its_keys_budget() {
        let l = limits(
            "client_key = { requests = 1, per_seconds = 3600, burst = 3 }\nclient_address = { requests = 1, per_seconds = 3600 }",
        );
        let none = HeaderMap::new();
        let a = peer("198.51.100.1");
        assert!(l.check(KeyKind::Client, "k", a, &none).is_ok());
        for _ in 0..10 {
            assert_eq!(
                l.check(KeyKind::Client, "k", a, &none).unwrap_err().limit,
                Limit::ClientAddress
            );
        }
        assert!(l
            .check(KeyKind::Client, "k", peer("198.51.100.2"), &none)
            .is_ok());
        assert!(l
            .check(KeyKind::Client, "k", peer("198.51.100.3"), &none)
            .is_ok());
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_unchanged_limits() {
        let before = limits("client_address = { requests = 1, per_seconds = 3600 }");
        let none = HeaderMap::new();
        let a = peer("198.51.100.1");
        assert!(before.check(KeyKind::Client, "k", a, &none).is_ok());
        let same = before.reconfigured(&before.config.clone());
        assert!(same.check(KeyKind::Client, "k", a, &none).is_err());
        let mut changed = before.config.clone();
        changed.client_address = Some(Bucket {
            requests: 1,
            per_seconds: 3600,
            burst: 2,
        });
        let changed = same.reconfigured(&changed);
        assert!(changed.check(KeyKind::Client, "k", a, &none).is_ok());
    }

    #[test]
    fn sprayed_addresses_never_hold_more_than_max_addresses() {
        let l =
            limits("client_address = { requests = 1, per_seconds = 3600 }\nmax_addresses = 100");
        let none = HeaderMap::new();
        for i in 0..1000u32 {
            let addr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), 1);
            let _ = l.check(KeyKind::Client, "k", addr, &none);
            assert!(l.tracked_addresses() <= 101, "{}", l.tracked_addresses());
        }
    }
}
