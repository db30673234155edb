//! `[server.rate_limits]`: token buckets for the ingest API, per write key and per client
//! address, and the proxies whose `X-Forwarded-For` names the client.
//!
//! Every setting is checked as the file is read, so the daemon, a reload and `herald check`
//! refuse the same mistakes (a zero rate, an address that is not one) with the same message.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

/// `[server.rate_limits]`: how many ingest requests (`/v1/track`, `/v1/batch`, …) one write key
/// and one client address may send. A request over a limit is answered `429 Too Many
/// Requests` with `Retry-After`, before its body is read, and nothing of it is stored. The
/// management API, provider callbacks and `/healthz` are not limited by these. Unlike the
/// rest of `[server]`, a reload applies changes to this table (a limit whose settings did not
/// change keeps its state).
///
/// Each limit is a token bucket written `{ requests = 100, per_seconds = 1, burst = 1000 }`
/// (`requests` every `per_seconds` on average, `per_seconds` 1 when left out, and up to
/// `burst` at once, `requests` when left out), or `false` to turn it off.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Requests with one client key, from every address together (default 1,000 a second,
    /// bursts of 10,000): the budget of every browser and app of a site that uses the key.
    #[serde(default = "default_client_key", deserialize_with = "limit")]
    pub client_key: Option<Bucket>,
    /// Requests with one server key, from every address together (default 5,000 a second,
    /// bursts of 50,000).
    #[serde(default = "default_server_key", deserialize_with = "limit")]
    pub server_key: Option<Bucket>,
    /// Requests with a client key from one client address (default 100 a second, bursts of
    /// 1,000), so that one browser or script cannot spend its site's `client_key` budget.
    /// IPv6 addresses count by their /64 network, which one subscriber usually holds whole.
    #[serde(default = "default_client_address", deserialize_with = "limit")]
    pub client_address: Option<Bucket>,
    /// Requests with a server key from one client address (default off: server keys are
    /// secret, and their `server_key` limit applies).
    #[serde(default, deserialize_with = "limit")]
    pub server_address: Option<Bucket>,
    /// Proxies and load balancers in front of Herald, as IP addresses (`"10.0.0.7"`) or CIDR
    /// ranges (`"10.0.0.0/8"`, `"fd00::/8"`); default none. The client address is the TCP
    /// peer's, unless the peer is one of these: then it is the rightmost address in
    /// `X-Forwarded-For` that is not one of these (the one the first trusted proxy saw). A
    /// header from any other peer is ignored, so a client cannot choose its own address.
    #[serde(default, deserialize_with = "proxies")]
    pub trusted_proxies: Vec<ProxyRange>,
    /// Addresses each per-address limit keeps track of at most (default 100,000, about 8 MB).
    /// Addresses whose bucket is full again are forgotten every ten seconds; beyond this many
    /// at once (addresses sprayed faster than they are forgotten) the limit forgets every
    /// address and starts over, which is logged, and the per-key limits still hold.
    #[serde(default = "default_max_addresses", deserialize_with = "max_addresses")]
    pub max_addresses: usize,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            client_key: default_client_key(),
            server_key: default_server_key(),
            client_address: default_client_address(),
            server_address: None,
            trusted_proxies: Vec::new(),
            max_addresses: default_max_addresses(),
        }
    }
}

fn default_client_key() -> Option<Bucket> {
    Some(Bucket::per_second(1_000, 10_000))
}

fn default_server_key() -> Option<Bucket> {
    Some(Bucket::per_second(5_000, 50_000))
}

fn default_client_address() -> Option<Bucket> {
    Some(Bucket::per_second(100, 1_000))
}

fn default_max_addresses() -> usize {
    100_000
}

impl RateLimitsConfig {
    /// Is `peer` one of `trusted_proxies`?
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted_proxies.iter().any(|p| p.contains(peer))
    }

    /// Advice about the settings that does not stop them working.
    pub fn warnings(&self) -> Vec<String> {
        self.trusted_proxies
            .iter()
            .filter(|p| p.prefix_len() == 0)
            .map(|p| {
                format!("[server.rate_limits] trusted_proxies contains {p}, which trusts every peer: any client can name its own address in X-Forwarded-For and escape the per-address limits; list only your proxies")
            })
            .collect()
    }
}

/// One token bucket: `requests` every `per_seconds` seconds on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Requests the bucket gains every `per_seconds` (at least 1).
    pub requests: u32,
    /// The period `requests` are spread over, in seconds (at least 1).
    pub per_seconds: u32,
    /// Requests the bucket holds when full: how many may come at once (at least 1).
    pub burst: u32,
}

impl Bucket {
    /// `requests` a second, bursts of `burst`.
    pub const fn per_second(requests: u32, burst: u32) -> Bucket {
        Bucket {
            requests,
            per_seconds: 1,
            burst,
        }
    }

    /// The time one request's token takes to come back (never zero for a valid bucket).
    pub fn refill_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.per_seconds)) / self.requests.max(1)
    }

    fn problem(&self) -> Option<String> {
        let off = "; to turn a limit off, set it to false";
        if self.requests == 0 {
            return Some(format!("`requests` must be at least 1{off}"));
        }
        if self.per_seconds == 0 {
            return Some(format!("`per_seconds` must be at least 1{off}"));
        }
        if self.burst == 0 {
            return Some(format!("`burst` must be at least 1{off}"));
        }
        if self.refill_interval().is_zero() {
            return Some(format!(
                "{} requests every {} s is more than one a nanosecond; to turn a limit off, set it to false",
                self.requests, self.per_seconds
            ));
        }
        None
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} every {} s, bursts of {}",
            self.requests, self.per_seconds, self.burst
        )
    }
}

/// A limit as written: `false` (off) or a bucket's table.
fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bucket>, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Written {
        requests: u32,
        #[serde(default = "one")]
        per_seconds: u32,
        burst: Option<u32>,
    }
    fn one() -> u32 {
        1
    }
    match toml::Value::deserialize(d)? {
        toml::Value::Boolean(false) => Ok(None),
        toml::Value::Boolean(true) => Err(D::Error::custom(
            "a limit is a table such as { requests = 100, burst = 1000 }, or false to turn it off",
        )),
        other => {
            let w: Written = other.try_into().map_err(D::Error::custom)?;
            let bucket = Bucket {
                requests: w.requests,
                per_seconds: w.per_seconds,
                burst: w.burst.unwrap_or(w.requests),
            };
            match bucket.problem() {
                Some(p) => Err(D::Error::custom(p)),
                None => Ok(Some(bucket)),
            }
        }
    }
}

fn max_addresses<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom(
            "`max_addresses` must be at least 1 (it bounds memory; to stop limiting by address, set client_address and server_address to false)",
        ));
    }
    Ok(n)
}

/// One entry of `trusted_proxies`: an address or a CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyRange(ipnet::IpNet);

impl ProxyRange {
    /// Is `addr` inside the range?
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&canonical(addr))
    }

    /// The length of the range's prefix (32 or 128 for one address).
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
}

impl std::fmt::Display for ProxyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ProxyRange {
    type Err = String;

    /// `"10.0.0.7"`, `"::1"`, `"10.0.0.0/8"` or `"fd00::/8"`; host bits after the prefix
    /// are ignored (`10.1.2.3/8` is `10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let net = match s.parse::<IpAddr>() {
            Ok(addr) => ipnet::IpNet::from(canonical(addr)),
            Err(_) => s
                .parse::<ipnet::IpNet>()
                .map_err(|_| {
                    format!("`{s}` in trusted_proxies is not an IP address or a CIDR range (such as 10.0.0.7, 10.0.0.0/8 or fd00::/8)")
                })?
                .trunc(),
        };
        Ok(ProxyRange(net))
    }
}

fn proxies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ProxyRange>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.7`, as a dual-stack socket reports IPv4
/// peers) is the IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(table: &str) -> Result<RateLimitsConfig, String> {
        crate::Config::parse(&format!("[server.rate_limits]\n{table}\n"))
            .map(|c| c.server.rate_limits)
    }

    #[test]
    fn defaults_limit_keys_and_client_addresses_but_not_server_addresses() {
        let c = parse("").unwrap();
        assert_eq!(c, RateLimitsConfig::default());
        assert_eq!(c.client_key, Some(Bucket::per_second(1_000, 10_000)));
        assert_eq!(c.server_key, Some(Bucket::per_second(5_000, 50_000)));
        assert_eq!(c.client_address, Some(Bucket::per_second(100, 1_000)));
        assert_eq!(c.server_address, None);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(crate::Config::default().server.rate_limits, c);
    }

    #[test]
    fn a_limit_is_a_table_with_defaults_or_false() {
        let c = parse(
            "client_key = false\nclient_address = { requests = 1, per_seconds = 3600, burst = 3 }\nserver_address = { requests = 20 }",
        )
        .unwrap();
        assert_eq!(c.client_key, None);
        assert_eq!(
            c.client_address,
            Some(Bucket {
                requests: 1,
                per_seconds: 3600,
                burst: 3
            })
        );
        assert_eq!(c.server_address, Some(Bucket::per_second(20, 20)));
        assert_eq!(
            c.client_address.unwrap().refill_interval(),
            std::time::Duration::from_secs(3600)
        );
    }

    #[test]
    fn zero_rates_are_refused_with_the_way_to_turn_a_limit_off() {
        for (table, says) in [
            (
                "client_key = { requests = 0 }",
                "`requests` must be at least 1",
            ),
            (
                "client_key = { requests = 5, per_seconds = 0 }",
                "`per_seconds` must be at least 1",
            ),
            (
                "server_key = { requests = 5, burst = 0 }",
                "`burst` must be at least 1",
            ),
            ("client_address = true", "or false to turn it off"),
            (
                "client_address = { requests = 4000000000 }",
                "more than one a nanosecond",
            ),
            ("max_addresses = 0", "`max_addresses` must be at least 1"),
        ] {
            let e = parse(table).unwrap_err();
            assert!(e.contains(says), "{table}: {e}");
        }
        let e = parse("client_key = { requests = 0 }").unwrap_err();
        assert!(e.contains("set it to false"), "{e}");
        assert!(e.contains("line 2"), "the error points at the setting: {e}");
    }

    #[test]
    fn unknown_keys_in_a_limit_are_refused() {
        let e = parse("client_key = { requests = 5, per_minute = 1 }").unwrap_err();
        assert!(e.contains("per_minute"), "{e}");
        let e = parse("per_key = 5").unwrap_err();
        assert!(e.contains("per_key"), "{e}");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_cidr_ranges() {
        let c =
            parse(r#"trusted_proxies = ["127.0.0.1", "10.1.2.3/8", "fd00::/8", "::1"]"#).unwrap();
        assert!(c.trusts("127.0.0.1".parse().unwrap()));
        assert!(!c.trusts("127.0.0.2".parse().unwrap()));
        assert!(c.trusts("10.200.0.9".parse().unwrap()), "host bits ignored");
        assert!(
            c.trusts("::ffff:10.0.0.1".parse().unwrap()),
            "IPv4 written as IPv6"
        );
        assert!(c.trusts("fd12::1".parse().unwrap()));
        assert!(c.trusts("::1".parse().unwrap()));
        assert!(!c.trusts("192.168.1.1".parse().unwrap()));
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn a_bad_proxy_range_is_refused_by_name() {
        for bad in ["10.0.0.0/33", "10.0.0", "proxy.internal", "fd00::/129", ""] {
            let e = parse(&format!("trusted_proxies = [\"{bad}\"]")).unwrap_err();
            assert!(
                e.contains(&format!(
                    "`{bad}` in trusted_proxies is not an IP address or a CIDR range"
                )),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn trusting_every_peer_is_warned_about() {
        let c = parse(r#"trusted_proxies = ["0.0.0.0/0"]"#).unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("trusts every peer"), "{w:?}");
    }
}
