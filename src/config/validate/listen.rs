//! `server.listen`: the rules a list of addresses must follow.

use std::net::SocketAddr;

use super::super::defaults as default;
use super::super::raw::RawListen;
use super::Problems;

/// Parses `server.listen` and refuses lists that could never all be bound: empty, the same
/// address twice, or a wildcard overlapping another address on its port.
pub(super) fn validate_listen(raw: Option<RawListen>, p: &mut Problems) -> Vec<SocketAddr> {
    let texts = match raw {
        None => return vec![default::LISTEN],
        Some(RawListen::One(text)) => return vec![p.socket_addr("server.listen", Some(&text), "")],
        Some(RawListen::Many(texts)) => texts,
    };
    if texts.is_empty() {
        p.add("server.listen", "needs at least one address");
    }
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let key = format!("server.listen[{i}]");
        let addr = p.socket_addr(&key, Some(text), "");
        if let Some(other) = addrs.iter().find(|other| listen_overlap(**other, addr)) {
            p.add(
                &key,
                format!("{addr} overlaps {other}: both cannot be bound"),
            );
        }
        addrs.push(addr);
    }
    addrs
}

/// Whether binding both addresses must fail: same port (not 0) and the same address, or a
/// wildcard of the same family (on Linux `[::]` also takes IPv4 unless v6only is set).
fn listen_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |wide: SocketAddr, other: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}
