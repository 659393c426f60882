//! `server.listen`: one address or a list of them, and the rules a list must follow.

use std::net::SocketAddr;

use serde::Deserialize;

use super::Problems;

/// `server.listen`: one address, or a list (a node's 8545 and 8546).
pub(super) enum RawListen {
    One(String),
    Many(Vec<String>),
}

// By hand rather than `#[serde(untagged)]`, whose error ("did not match any variant") would not
// say what the key takes.
impl<'de> Deserialize<'de> for RawListen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawListen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"an address "IP:PORT" or a list of them"#)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawListen, E> {
                Ok(RawListen::One(text.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawListen, A::Error> {
                let mut texts = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    texts.push(text);
                }
                Ok(RawListen::Many(texts))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses `server.listen` and refuses lists that could never all be bound: empty, the same
/// address twice, or a wildcard overlapping another address on its port.
pub(super) fn validate_listen(raw: Option<RawListen>, p: &mut Problems) -> Vec<SocketAddr> {
    let texts = match raw {
        None => return vec![SocketAddr::from(([0, 0, 0, 0], 8545))],
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
