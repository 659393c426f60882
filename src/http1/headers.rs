//! Header values as bytes, read the same way by the client port and the upstream client:
//! no UTF-8 check or allocation for the few headers that frame a message.

/// `Content-Length`: decimal digits only (no sign, no list), as RFC 9110 §8.6 says.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0')),
    )
}

/// Whether the last coding of a `Transfer-Encoding` value is `chunked`.
pub fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
}

/// The `close` and `keep-alive` tokens of a `Connection` value.
pub fn connection_tokens(value: &[u8]) -> (bool, bool) {
    // Nearly every value is one of the two alone.
    if value.eq_ignore_ascii_case(b"keep-alive") {
        return (false, true);
    }
    if value.eq_ignore_ascii_case(b"close") {
        return (true, false);
    }
    let (mut close, mut keep_alive) = (false, false);
    for token in value.split(|&b| b == b',').map(trim) {
        close |= token.eq_ignore_ascii_case(b"close");
        keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    (close, keep_alive)
}

/// `value` without surrounding spaces and tabs.
pub fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(start), Some(end)) => &value[start..=end],
        _ => &[],
    }
}
