//! Upstream endpoint URLs: scheme and host checked, userinfo turned into a Basic
//! `Authorization` header, and only scheme and host ever shown in a message (hosted providers
//! put the API key in the path).

/// An endpoint URL without its userinfo, and the credentials that userinfo carried.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// The URL as dialled: scheme, host, port, path and query.
    pub(super) uri: http::Uri,
    /// `Basic base64(user:password)` when the URL carried `user:password@`.
    pub(super) basic: Option<String>,
}

/// Parses an endpoint allowed one of `schemes`; userinfo is taken out of the URL and returned
/// as a Basic `Authorization` value.
pub(super) fn parse_url(text: &str, schemes: &[&str]) -> Result<Endpoint, String> {
    let shown = shown_url(text);
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("invalid URL {shown:?}: {e}"))?;
    match uri.scheme_str() {
        Some(scheme) if schemes.contains(&scheme) && uri.host().is_some() => {}
        _ => {
            return Err(format!(
                "invalid URL {shown:?}: expected {}://HOST[:PORT][/PATH]",
                schemes.join("|")
            ))
        }
    }
    if !uri.authority().is_some_and(|a| port_fits(a.as_str())) {
        return Err(format!("invalid URL {shown:?}: the port is not 0–65535"));
    }
    let invalid = || format!("invalid URL {shown:?}");
    let mut parts = uri.into_parts();
    // Present: `host()` was checked above.
    let authority = parts.authority.take().ok_or_else(invalid)?;
    let Some((userinfo, host)) = authority.as_str().rsplit_once('@') else {
        parts.authority = Some(authority);
        let uri = http::Uri::from_parts(parts).map_err(|_| invalid())?;
        return Ok(Endpoint { uri, basic: None });
    };
    let basic = basic_auth(userinfo);
    parts.authority = host.parse().ok();
    let uri = http::Uri::from_parts(parts).map_err(|_| invalid())?;
    Ok(Endpoint {
        uri,
        basic: Some(basic),
    })
}

/// Whether an authority's port, if it has one, is a TCP port. http::Uri accepts any digits
/// there (and reports no port when they overflow), so `:99999` would fail every dial instead.
fn port_fits(authority: &str) -> bool {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.ends_with(']') {
        return true; // an IPv6 literal without a port
    }
    match host_port.rsplit_once(':') {
        Some((_, port)) => port.is_empty() || port.parse::<u16>().is_ok(),
        None => true,
    }
}

/// What a problem message may show of a URL: scheme and host, without userinfo or path
/// (hosted providers put the API key in the path).
fn shown_url(text: &str) -> String {
    let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let cut = if rest.len() > authority.len() {
        "/…"
    } else {
        ""
    };
    if scheme.is_empty() {
        format!("{host}{cut}")
    } else {
        format!("{scheme}://{host}{cut}")
    }
}

/// `Basic base64(user:password)`, with the URL's percent-escapes decoded first.
fn basic_auth(userinfo: &str) -> String {
    format!("Basic {}", base64(&percent_decode(userinfo)))
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), for the one Basic header built at load time.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn userinfo_is_percent_decoded_before_encoding() {
        assert_eq!(
            basic_auth("user:p%40ss"),
            format!("Basic {}", base64(b"user:p@ss"))
        );
    }

    #[test]
    fn a_port_beyond_65535_is_refused() {
        let error = parse_url("http://127.0.0.1:99999/", &["http"]).unwrap_err();
        assert_eq!(
            error,
            "invalid URL \"http://127.0.0.1:99999/…\": the port is not 0–65535"
        );
        assert!(parse_url("http://127.0.0.1:65535/", &["http"]).is_ok());
        assert!(parse_url("ws://user:pw@127.0.0.1:70000", &["ws"]).is_err());
        assert!(parse_url("http://[::1]:8545/", &["http"]).is_ok());
        assert!(parse_url("http://[::1]/", &["http"]).is_ok());
        assert!(parse_url("http://[::1]:65536/", &["http"]).is_err());
    }

    #[test]
    fn userinfo_leaves_the_url_and_becomes_basic_auth() {
        let endpoint = parse_url("https://user:pw@node.example:8443/rpc", &["https"]).unwrap();
        assert_eq!(endpoint.uri.to_string(), "https://node.example:8443/rpc");
        assert_eq!(
            endpoint.basic,
            Some(format!("Basic {}", base64(b"user:pw")))
        );
        let plain = parse_url("http://node.example/", &["http"]).unwrap();
        assert_eq!(plain.basic, None);
    }

    #[test]
    fn shown_url_keeps_scheme_and_host_only() {
        assert_eq!(
            shown_url("https://u:secret@mainnet.example.io/v3/abcdef0123456789"),
            "https://mainnet.example.io/…"
        );
        assert_eq!(shown_url("ftp://x"), "ftp://x");
    }
}
