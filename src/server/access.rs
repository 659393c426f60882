//! Who may connect: the client-network allowlist, judged right after accept (or right after
//! the PROXY header of a trusted load balancer), and which client address to believe.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

/// Minimum spacing of "connection denied" log lines, so a scan cannot flood the log.
const DENIED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The allowlist, the trusted proxies and the bookkeeping of the rate-limited log.
#[derive(Debug)]
pub struct Access {
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    proxy_protocol: bool,
    last_logged_secs: AtomicU64,
    unlogged: AtomicU64,
}

impl Access {
    /// Access rules from `[access]`.
    pub fn new(config: &crate::config::AccessConfig) -> Self {
        Access {
            allow: config.allow.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            proxy_protocol: config.proxy_protocol,
            last_logged_secs: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Whether `peer` is a trusted load balancer.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// Whether a PROXY header must precede anything else from `peer`: only when the
    /// protocol is on and the peer is trusted; never auto-detected.
    pub fn expects_proxy_header(&self, peer: IpAddr) -> bool {
        self.proxy_protocol && self.is_trusted_proxy(peer)
    }

    /// The client address to log for a request: `X-Forwarded-For` is believed only when the
    /// immediate peer is a trusted proxy, taking the rightmost address not itself trusted.
    /// `forwarded` holds the values of the request's `X-Forwarded-For` headers, in order.
    pub fn client_address<'a>(
        &self,
        peer: SocketAddr,
        client: SocketAddr,
        forwarded: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let immediate = canonical(client.ip());
        if !self.is_trusted_proxy(peer.ip()) && !self.is_trusted_proxy(immediate) {
            return immediate;
        }
        let forwarded = forwarded
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        forwarded
            .iter()
            .rev()
            .map_while(|hop| hop.parse::<IpAddr>().ok().map(canonical))
            .find(|ip| !self.is_trusted_proxy(*ip))
            .unwrap_or(immediate)
    }

    /// Whether a peer may connect; IPv4-mapped IPv6 peers are judged as IPv4.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.allow.iter().any(|net| net.contains(&peer))
    }

    /// Logs a denied peer at most once per [`DENIED_LOG_INTERVAL`], with the count of those
    /// denied in between.
    pub fn log_denied(&self, peer: IpAddr) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let last = self.last_logged_secs.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= DENIED_LOG_INTERVAL.as_secs();
        if due
            && self
                .last_logged_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(peer = %canonical(peer), suppressed, "connection denied: peer not in access.allow");
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; every other address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(nets: &[&str]) -> Access {
        with_proxies(nets, &[])
    }

    fn with_proxies(nets: &[&str], proxies: &[&str]) -> Access {
        Access::new(&crate::config::AccessConfig {
            allow: nets.iter().map(|n| n.parse().unwrap()).collect(),
            proxy_protocol: true,
            trusted_proxies: proxies.iter().map(|n| n.parse().unwrap()).collect(),
            deny_methods: vec![],
        })
    }

    fn sock(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap(), 1234)
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let a = with_proxies(&["127.0.0.0/8"], &["127.0.0.9/32"]);
        let peer = sock("127.0.0.1");
        assert_eq!(a.client_address(peer, peer, ["10.9.9.9"]), peer.ip());
    }

    #[test]
    fn forwarded_for_from_trusted_peer_takes_rightmost_untrusted_hop() {
        let a = with_proxies(&["127.0.0.0/8"], &["127.0.0.9/32", "10.0.0.0/8"]);
        let lb = sock("127.0.0.9");
        // Two headers form one list.
        let headers = ["203.0.113.7", "198.51.100.1, 10.1.1.1"];
        assert_eq!(
            a.client_address(lb, lb, headers),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(a.client_address(lb, lb, []), lb.ip());
    }

    #[test]
    fn proxy_header_is_expected_only_from_trusted_proxies() {
        let a = with_proxies(&["127.0.0.0/8"], &["127.0.0.9/32"]);
        assert!(a.expects_proxy_header("127.0.0.9".parse().unwrap()));
        assert!(a.expects_proxy_header("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!a.expects_proxy_header("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn loopback_default_admits_loopback_only() {
        let a = access(&["127.0.0.0/8", "::1/128"]);
        assert!(a.allows("127.0.0.1".parse().unwrap()));
        assert!(a.allows("127.0.0.2".parse().unwrap()));
        assert!(a.allows("::1".parse().unwrap()));
        assert!(!a.allows("10.0.0.1".parse().unwrap()));
        assert!(!a.allows("::2".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv6_is_judged_as_ipv4() {
        let a = access(&["10.0.0.0/24"]);
        assert!(a.allows("::ffff:10.0.0.5".parse().unwrap()));
        assert!(!a.allows("::ffff:10.0.1.5".parse().unwrap()));
    }

    #[test]
    fn empty_allowlist_admits_nobody() {
        assert!(!access(&[]).allows("127.0.0.1".parse().unwrap()));
    }
}
