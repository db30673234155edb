//! Network policy: host allow-lists and refusal of non-public addresses.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// One allowed-host entry: `host`, `host:port` or `*.domain[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    wildcard: bool,
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    /// Parse an entry. Schemes, paths and empty hosts are rejected.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim();
        if s.is_empty() || s.contains('/') || s.contains('@') || s.contains(' ') {
            return Err(format!("`{s}` is not a host or host:port"));
        }
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            // [v6]:port or [v6]
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().map_err(|_| format!("`{s}`: bad port"))?),
                None if after.is_empty() => None,
                None => return Err(format!("`{s}`: junk after ]")),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (
                    h.to_string(),
                    Some(p.parse().map_err(|_| format!("`{s}`: bad port"))?),
                ),
                _ => (rest.to_string(), None),
            }
        };
        if host.is_empty() || host.contains('*') {
            return Err(format!("`{s}` is not a host or host:port"));
        }
        Ok(HostPattern {
            wildcard,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether `host` (lower-case, no brackets) on `port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if let Some(p) = self.port {
            if p != port {
                return false;
            }
        }
        let host = host.trim_end_matches('.');
        if self.wildcard {
            host.len() > self.host.len()
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local,
/// CGNAT, unique-local, multicast, documentation, unspecified or broadcast).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF 192.0.0/24
                || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x0064 && seg[1] == 0xff9b)) // NAT64 may reach private v4
        }
    }
}

/// Resolve `host:port`, refusing non-public addresses unless `allow_private`.
pub fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| ResolveError::Lookup(format!("cannot resolve `{host}`: {e}")))?
        .collect();
    check_addresses(host, addrs, allow_private)
}

/// Why resolution failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// DNS failure.
    Lookup(String),
    /// Resolved to a refused address.
    Private(String),
}

/// An error with its causes, which say what actually failed (refused, reset, timed out) where
/// an HTTP client's top-level message does not.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// [`resolve_checked`] without holding a thread: the lookup runs on tokio's resolver.
pub async fn resolve_checked_async(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ResolveError::Lookup(format!("cannot resolve `{host}`: {e}")))?
        .collect();
    check_addresses(host, addrs, allow_private)
}

fn check_addresses(
    host: &str,
    addrs: Vec<SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    if addrs.is_empty() {
        return Err(ResolveError::Lookup(format!("`{host}` has no addresses")));
    }
    if !allow_private {
        if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(ResolveError::Private(format!(
                "`{host}` resolves to non-public address {} and private addresses are not granted",
                bad.ip()
            )));
        }
    }
    Ok(addrs)
}

/// HTTP client resolver that re-applies the address policy at connect time, so a
/// DNS answer that changes between the check and the connection (rebinding)
/// cannot reach a private address.
pub(crate) struct CheckedResolver {
    pub(crate) allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().trim_start_matches('[').trim_end_matches(']');
            // The client puts the URL's port on the addresses it gets back.
            match resolve_checked_async(host, 0, allow_private).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(ResolveError::Lookup(m) | ResolveError::Private(m)) => {
                    Err(Box::new(std::io::Error::other(m))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match() {
        let p = HostPattern::parse("api.twilio.com").unwrap();
        assert!(p.matches("api.twilio.com", 443));
        assert!(!p.matches("evil-api.twilio.com", 443));
        assert!(!p.matches("api.twilio.com.evil.com", 443));
        let w = HostPattern::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com", 443));
        assert!(w.matches("a.b.example.com", 80));
        assert!(!w.matches("example.com", 443));
        assert!(!w.matches("badexample.com", 443));
        let hp = HostPattern::parse("127.0.0.1:8080").unwrap();
        assert!(hp.matches("127.0.0.1", 8080));
        assert!(!hp.matches("127.0.0.1", 8081));
        let v6 = HostPattern::parse("[::1]:9000").unwrap();
        assert!(v6.matches("::1", 9000));
        assert!(HostPattern::parse("https://x").is_err());
        assert!(HostPattern::parse("").is_err());
        assert!(HostPattern::parse("a.com:notaport").is_err());
    }

    #[test]
    fn private_ranges_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must be refused");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
        assert!(matches!(
            resolve_checked("127.0.0.1", 80, false),
            Err(ResolveError::Private(_))
        ));
        assert!(resolve_checked("127.0.0.1", 80, true).is_ok());
    }
}
