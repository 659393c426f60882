//! PROXY protocol v1: one text line, `PROXY TCP4|TCP6|UNKNOWN SRC DST SPORT DPORT\r\n`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Parsed, ProxyError, ProxyHeader, V1_MAX_LEN};

/// What every v1 header starts with.
pub(super) const PREFIX: &[u8] = b"PROXY ";

/// Parses a v1 header at the start of `buf`.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(end) = find_crlf(window)? else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = window.get(PREFIX.len()..end).unwrap_or_default();
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
    let family = match family {
        b"TCP4" => Family::Tcp4,
        b"TCP6" => Family::Tcp6,
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
        source: Some(SocketAddr::new(v1_ip(src, family)?, v1_port(sport)?)),
        destination: Some(SocketAddr::new(v1_ip(dst, family)?, v1_port(dport)?)),
    })
}

/// The v1 protocol field of a header that carries addresses.
#[derive(Clone, Copy)]
enum Family {
    Tcp4,
    Tcp6,
}

fn v1_ip(field: &[u8], family: Family) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::V1BadAddress)?;
    if let Family::Tcp6 = family {
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
