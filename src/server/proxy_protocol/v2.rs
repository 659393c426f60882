//! PROXY protocol v2: a binary header with addresses and TLVs (a CRC32C TLV is checked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Parsed, ProxyError, ProxyHeader, V2_MAX_PAYLOAD};

/// What every v2 header starts with.
pub(super) const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, length.
pub(super) const FIXED_LEN: usize = 16;
const LOCAL: u8 = 0x0;
const PROXY: u8 = 0x1;
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
pub(super) const PP2_TYPE_CRC32C: u8 = 0x03;

/// Parses a v2 header at the start of `buf`, which starts with the full 12-byte signature.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2BadVersion(ver_cmd >> 4));
    }
    let command = ver_cmd & 0x0f;
    if command != LOCAL && command != PROXY {
        return Err(ProxyError::V2BadCommand(command));
    }
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL: "discard the protocol block including the family which is ignored".
    let needed = match command {
        PROXY => v2_address_len(family)?,
        _ => 0,
    };
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::Oversized(FIXED_LEN + len));
    }
    if len < needed {
        return Err(ProxyError::V2TooShort {
            family,
            len,
            needed,
        });
    }
    let consumed = FIXED_LEN + len;
    let Some(header_bytes) = buf.get(..consumed) else {
        return Ok(Parsed::Incomplete);
    };
    let payload = header_bytes.get(FIXED_LEN..).unwrap_or_default();
    let header = match command {
        PROXY => v2_addresses(family, payload, header_bytes)?,
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
        TCP4 => {
            let (src, rest) = take::<4>(addresses)?;
            let (dst, rest) = take::<4>(rest)?;
            let (ports, _) = take::<4>(rest)?;
            v2_header(
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                ports,
            )
        }
        TCP6 => {
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
pub(super) fn crc32c_zeroed(bytes: &[u8], zeroed: usize) -> u32 {
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
