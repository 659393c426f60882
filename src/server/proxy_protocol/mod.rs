//! PROXY protocol v1 and v2 headers (HAProxy's `proxy-protocol.txt`): a strict parser and a
//! reader that takes exactly the header off a socket, leaving TLS or HTTP bytes after it unread.
//!
//! A header without addresses — v1 `UNKNOWN`, v2 `LOCAL` (load balancer health checks), v2
//! `AF_UNSPEC`, `AF_UNIX` or UDP families — yields `None` addresses: the connection is then
//! judged by its real peer address, as the specification requires. Anything that does not match
//! the specification exactly is an error, and the caller closes the connection.

//!
//! Layout: this file holds the types and the dispatch; [`v1`] and [`v2`] parse each version,
//! [`read`] takes a header off a socket.

mod read;
mod v1;
mod v2;

use std::io;
use std::net::SocketAddr;

pub use read::read_header;

/// Longest v1 line the specification allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// Largest v2 address-and-TLV block accepted. The addresses take at most 216 bytes; the rest
/// leaves room for the TLVs cloud load balancers and HAProxy's SSL TLVs add.
pub const V2_MAX_PAYLOAD: usize = 2048;
/// Longest header of either version.
pub const MAX_HEADER_LEN: usize = v2::FIXED_LEN + V2_MAX_PAYLOAD;

/// The connection endpoints a load balancer reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client; `None` when the header carries no address (use the real peer).
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` when the header carries no address.
    pub destination: Option<SocketAddr>,
}

impl ProxyHeader {
    /// A header that carries no addresses (v1 `UNKNOWN`, v2 `LOCAL` and address-less families).
    pub const UNKNOWN: ProxyHeader = ProxyHeader {
        source: None,
        destination: None,
    };

    /// The client address to judge and log: the reported source, else the real `peer`.
    pub fn client_or(&self, peer: SocketAddr) -> SocketAddr {
        self.source.unwrap_or(peer)
    }
}

/// Outcome of parsing the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Valid so far; more bytes are needed (never more than [`MAX_HEADER_LEN`] in all).
    Incomplete,
    /// A whole header, `consumed` bytes long; anything after it belongs to the next protocol.
    Complete {
        /// The addresses the header carries.
        header: ProxyHeader,
        /// Length of the header in bytes.
        consumed: usize,
    },
}

/// Why a PROXY header was refused; every variant closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The bytes start with neither the v1 nor the v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// v1 protocol other than `TCP4`, `TCP6` or `UNKNOWN`.
    #[error("PROXY v1: unknown protocol family")]
    V1BadFamily,
    /// v1 address that does not parse or does not match the family.
    #[error("PROXY v1: malformed address")]
    V1BadAddress,
    /// v1 IPv4 address with a leading zero (ambiguous with octal).
    #[error("PROXY v1: leading zero in IPv4 address")]
    V1LeadingZero,
    /// v1 port that is not a decimal in 0..=65535 without leading zeros.
    #[error("PROXY v1: malformed or out-of-range port")]
    V1BadPort,
    /// v1 line ending in a lone CR or LF.
    #[error("PROXY v1: line not terminated by CRLF")]
    V1MissingCrlf,
    /// v1 fields not separated by exactly one space.
    #[error("PROXY v1: fields must be separated by exactly one space")]
    V1ExtraSpace,
    /// v1 line with too few or too many fields.
    #[error("PROXY v1: wrong number of fields")]
    V1FieldCount,
    /// v1 line with a byte that is not printable US-ASCII.
    #[error("PROXY v1: invalid character")]
    V1BadChar,
    /// v1 line without CRLF in the first 107 bytes.
    #[error("PROXY v1: line longer than 107 bytes")]
    V1TooLong,
    /// v2 version nibble other than 2.
    #[error("PROXY v2: unsupported version {0}")]
    V2BadVersion(u8),
    /// v2 command other than LOCAL or PROXY.
    #[error("PROXY v2: unknown command {0:#x}")]
    V2BadCommand(u8),
    /// v2 family/transport byte outside the specification's list.
    #[error("PROXY v2: invalid address family/transport {0:#04x}")]
    V2BadFamily(u8),
    /// v2 length shorter than the address block of its family.
    #[error("PROXY v2: length {len} too small for family {family:#04x} (needs {needed})")]
    V2TooShort {
        /// The family/transport byte.
        family: u8,
        /// The announced length.
        len: usize,
        /// The length of that family's address block.
        needed: usize,
    },
    /// v2 TLVs that overrun the announced length.
    #[error("PROXY v2: malformed TLV")]
    V2BadTlv,
    /// v2 CRC32C TLV that does not match the header.
    #[error("PROXY v2: CRC32C checksum mismatch")]
    V2BadChecksum,
    /// Header longer than [`MAX_HEADER_LEN`].
    #[error("PROXY header of {0} bytes exceeds the limit")]
    Oversized(usize),
    /// The whole header did not arrive within the timeout.
    #[error("PROXY header timed out")]
    TimedOut,
    /// The peer closed the connection before the header was complete.
    #[error("connection closed inside the PROXY header")]
    Truncated,
    /// Reading the socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Parses the PROXY header at the start of `buf`, which may hold more bytes after it.
///
/// Errors are final: once a prefix is refused, no longer input is accepted. Every strict prefix
/// of a valid header is [`Parsed::Incomplete`].
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.starts_with(v2::SIGNATURE) {
        v2::parse(buf)
    } else if buf.starts_with(v1::PREFIX) {
        v1::parse(buf)
    } else if v2::SIGNATURE.starts_with(buf) || v1::PREFIX.starts_with(buf) {
        Ok(Parsed::Incomplete)
    } else if buf.starts_with(b"PROXY") {
        Err(ProxyError::V1ExtraSpace)
    } else {
        Err(ProxyError::NotProxy)
    }
}

#[cfg(test)]
mod tests;
