//! Who may connect: the client-network allowlist, judged right after accept.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

/// Minimum spacing of "connection denied" log lines, so a scan cannot flood the log.
const DENIED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The allowlist and the bookkeeping of its rate-limited log.
#[derive(Debug)]
pub struct Access {
    allow: Vec<IpNet>,
    last_logged_secs: AtomicU64,
    unlogged: AtomicU64,
}

impl Access {
    /// An allowlist of client networks.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Access {
            allow,
            last_logged_secs: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
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
        Access::new(nets.iter().map(|n| n.parse().unwrap()).collect())
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
