//! PROXY protocol v1 and v2 headers (HAProxy's `proxy-protocol.txt`): a strict parser and a
//! reader that takes exactly the header off a socket, leaving TLS or HTTP bytes after it unread.
//!
//! A header without addresses — v1 `UNKNOWN`, v2 `LOCAL` (load balancer health checks), v2
//! `AF_UNSPEC`, `AF_UNIX` or UDP families — yields `None` addresses: the connection is then
//! judged by its real peer address, as the specification requires. Anything that does not match
//! the specification exactly is an error, and the caller closes the connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

/// Longest v1 line the specification allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// Largest v2 address-and-TLV block accepted. The addresses take at most 216 bytes; the rest
/// leaves room for the TLVs cloud load balancers and HAProxy's SSL TLVs add.
pub const V2_MAX_PAYLOAD: usize = 2048;
/// Longest header of either version.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + V2_MAX_PAYLOAD;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, length.
const V2_FIXED_LEN: usize = 16;
const V2_LOCAL: u8 = 0x0;
const V2_PROXY: u8 = 0x1;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const PP2_TYPE_CRC32C: u8 = 0x03;

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
    if buf.starts_with(V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else if V2_SIGNATURE.starts_with(buf) || V1_PREFIX.starts_with(buf) {
        Ok(Parsed::Incomplete)
    } else if buf.starts_with(b"PROXY") {
        Err(ProxyError::V1ExtraSpace)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Reads the PROXY header that must open `stream`, consuming exactly its bytes, within `timeout`.
///
/// A peer that closes early, sends garbage or stays silent gets an error; the caller closes it.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyError> {
    tokio::time::timeout(timeout, read_header_unbounded(stream))
        .await
        .map_err(|_| ProxyError::TimedOut)?
}

async fn read_header_unbounded(stream: &mut TcpStream) -> Result<ProxyHeader, ProxyError> {
    // Waiting for more bytes without spinning: after a peek that shows nothing new, tokio's
    // readiness flag must be cleared so `ready()` waits for the next edge. `try_io` clears it only
    // for the readiness tick observed *before* the closure ran, so bytes that arrive after our
    // peek set a new tick and wake us: no lost wakeup, no sleep-polling. The closure needs a
    // synchronous peek, which tokio does not expose; a duplicate of the socket's descriptor
    // provides it (it shares the non-blocking open file, and is closed when we return).
    let peeker = sync_handle(stream)?;
    let mut buf = vec![0u8; MAX_HEADER_LEN];
    let mut seen = 0;
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let peeked = stream.try_io(Interest::READABLE, || match peeker.peek(&mut buf) {
            Ok(n) if n == seen && n > 0 => Err(io::ErrorKind::WouldBlock.into()),
            other => other,
        });
        match peeked {
            Ok(0) => return Err(ProxyError::Truncated),
            Ok(n) => {
                seen = n;
                let view = buf.get(..n).unwrap_or_default();
                if let Parsed::Complete { header, consumed } = parse(view)? {
                    let exact = buf
                        .get_mut(..consumed)
                        .ok_or(ProxyError::Oversized(consumed))?;
                    stream.read_exact(exact).await?;
                    return Ok(header);
                }
                if n >= MAX_HEADER_LEN {
                    // Unreachable with a correct parser; guards against waiting forever.
                    return Err(ProxyError::Oversized(n));
                }
            }
            // Nothing new. The closed flag survives the clear, so check it or spin until timeout.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    return Err(ProxyError::Truncated);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(unix)]
fn sync_handle(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    use std::os::fd::AsFd;
    Ok(stream.as_fd().try_clone_to_owned()?.into())
}

#[cfg(windows)]
fn sync_handle(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    use std::os::windows::io::AsSocket;
    Ok(stream.as_socket().try_clone_to_owned()?.into())
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(end) = find_crlf(window)? else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = window.get(V1_PREFIX.len()..end).unwrap_or_default();
    let header = parse_v1_fields(line)?;
    Ok(Parsed::Complete {
        header,
        consumed: end + 2,
    })
}

/// Position of the CR of the first CRLF; `None` if not (yet) present. Checks every byte on the
/// way, so garbage is refused before the line ends.
fn find_crlf(window: &[u8]) -> Result<Option<usize>, ProxyError> {
    for (i, &byte) in window.iter().enumerate() {
        match byte {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => return Ok(Some(i)),
                Some(_) => return Err(ProxyError::V1MissingCrlf),
                None => return Ok(None),
            },
            b'\n' => return Err(ProxyError::V1MissingCrlf),
            b' '..=b'~' => {}
            _ => return Err(ProxyError::V1BadChar),
        }
    }
    Ok(None)
}

/// `line` is what follows `"PROXY "`, without the CRLF.
fn parse_v1_fields(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let mut fields = line.split(|&b| b == b' ');
    let family = fields.next().unwrap_or_default();
    if family == b"UNKNOWN" {
        // The specification: the receiver must ignore anything before the CRLF.
        return Ok(ProxyHeader::UNKNOWN);
    }
    // An empty field is a leading, trailing or doubled space.
    if line.split(|&b| b == b' ').any(<[u8]>::is_empty) {
        return Err(ProxyError::V1ExtraSpace);
    }
    let v6 = match family {
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return Err(ProxyError::V1BadFamily),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1FieldCount);
    };
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(v1_ip(src, v6)?, v1_port(sport)?)),
        destination: Some(SocketAddr::new(v1_ip(dst, v6)?, v1_port(dport)?)),
    })
}

fn v1_ip(field: &[u8], v6: bool) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::V1BadAddress)?;
    if v6 {
        return text
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::V1BadAddress);
    }
    if text
        .split('.')
        .any(|octet| octet.len() > 1 && octet.starts_with('0'))
    {
        return Err(ProxyError::V1LeadingZero);
    }
    text.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .map_err(|_| ProxyError::V1BadAddress)
}

fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let digits_only = field.iter().all(u8::is_ascii_digit);
    let leading_zero = field.len() > 1 && field.starts_with(b"0");
    if !digits_only || leading_zero || field.is_empty() || field.len() > 5 {
        return Err(ProxyError::V1BadPort);
    }
    std::str::from_utf8(field)
        .ok()
        .and_then(|text| text.parse::<u16>().ok())
        .ok_or(ProxyError::V1BadPort)
}

/// `buf` starts with the full 12-byte signature.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2BadVersion(ver_cmd >> 4));
    }
    let command = ver_cmd & 0x0f;
    if command != V2_LOCAL && command != V2_PROXY {
        return Err(ProxyError::V2BadCommand(command));
    }
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL: "discard the protocol block including the family which is ignored".
    let needed = match command {
        V2_PROXY => v2_address_len(family)?,
        _ => 0,
    };
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::Oversized(V2_FIXED_LEN + len));
    }
    if len < needed {
        return Err(ProxyError::V2TooShort {
            family,
            len,
            needed,
        });
    }
    let consumed = V2_FIXED_LEN + len;
    let Some(header_bytes) = buf.get(..consumed) else {
        return Ok(Parsed::Incomplete);
    };
    let payload = header_bytes.get(V2_FIXED_LEN..).unwrap_or_default();
    let header = match command {
        V2_PROXY => v2_addresses(family, payload, header_bytes)?,
        _ => ProxyHeader::UNKNOWN,
    };
    Ok(Parsed::Complete { header, consumed })
}

/// Address block length of a PROXY command's family/transport byte; the specification's list
/// is exhaustive and "other values must be rejected".
fn v2_address_len(family: u8) -> Result<usize, ProxyError> {
    match family {
        0x00 => Ok(0),
        0x11 | 0x12 => Ok(12),
        0x21 | 0x22 => Ok(36),
        0x31 | 0x32 => Ok(216),
        _ => Err(ProxyError::V2BadFamily(family)),
    }
}

/// Addresses of a PROXY command. UDP and UNIX families fall back to no address, as the
/// specification asks of receivers that do not implement them. TLVs after the address block
/// are checked for framing (and CRC32C), then ignored.
fn v2_addresses(family: u8, payload: &[u8], whole: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if family == 0x00 {
        // AF_UNSPEC: "the receiver should ignore address information", TLVs included.
        return Ok(ProxyHeader::UNKNOWN);
    }
    let needed = v2_address_len(family)?;
    let (addresses, tlvs) = payload
        .split_at_checked(needed)
        .ok_or(ProxyError::V2BadTlv)?;
    check_tlvs(tlvs, whole)?;
    let header = match family {
        V2_TCP4 => {
            let (src, rest) = take::<4>(addresses)?;
            let (dst, rest) = take::<4>(rest)?;
            let (ports, _) = take::<4>(rest)?;
            v2_header(
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                ports,
            )
        }
        V2_TCP6 => {
            let (src, rest) = take::<16>(addresses)?;
            let (dst, rest) = take::<16>(rest)?;
            let (ports, _) = take::<4>(rest)?;
            v2_header(
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                ports,
            )
        }
        _ => ProxyHeader::UNKNOWN,
    };
    Ok(header)
}

fn take<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), ProxyError> {
    bytes
        .split_first_chunk::<N>()
        .map(|(head, rest)| (*head, rest))
        .ok_or(ProxyError::V2BadTlv)
}

fn v2_header(src: IpAddr, dst: IpAddr, [sp0, sp1, dp0, dp1]: [u8; 4]) -> ProxyHeader {
    ProxyHeader {
        source: Some(SocketAddr::new(src, u16::from_be_bytes([sp0, sp1]))),
        destination: Some(SocketAddr::new(dst, u16::from_be_bytes([dp0, dp1]))),
    }
}

/// Walks the TLVs, which must exactly fill `tlvs`, verifying a CRC32C TLV against `whole`.
fn check_tlvs(mut tlvs: &[u8], whole: &[u8]) -> Result<(), ProxyError> {
    while let Some((&[kind, hi, lo], rest)) = tlvs.split_first_chunk::<3>() {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let (value, rest) = rest.split_at_checked(len).ok_or(ProxyError::V2BadTlv)?;
        if kind == PP2_TYPE_CRC32C {
            let expected = <[u8; 4]>::try_from(value).map_err(|_| ProxyError::V2BadTlv)?;
            // The checksum covers the whole header with the checksum field zeroed.
            let offset = whole.len().saturating_sub(rest.len() + value.len());
            if crc32c_zeroed(whole, offset) != u32::from_be_bytes(expected) {
                return Err(ProxyError::V2BadChecksum);
            }
        }
        tlvs = rest;
    }
    if tlvs.is_empty() {
        Ok(())
    } else {
        Err(ProxyError::V2BadTlv)
    }
}

/// CRC32C (Castagnoli, RFC 4960 appendix B) of `bytes` with the 4 bytes at `zeroed` read as 0.
/// Bitwise: the header is at most a few KiB and checked once per connection.
fn crc32c_zeroed(bytes: &[u8], zeroed: usize) -> u32 {
    let mut crc = !0u32;
    for (i, &byte) in bytes.iter().enumerate() {
        let byte = if (zeroed..zeroed + 4).contains(&i) {
            0
        } else {
            byte
        };
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests;
