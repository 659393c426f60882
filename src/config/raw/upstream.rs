//! `[[upstream]]`: endpoints, TLS files and credentials. Secrets (URL userinfo, header values,
//! whatever came from `${VAR}`) never appear in a problem message: only keys, schemes and hosts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::super::{Credentials, UpstreamConfig, UpstreamTls};
use super::Problems;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: String,
    http: Option<String>,
    ws: Option<String>,
    #[serde(default)]
    priority: u32,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

pub(super) fn validate_upstreams(raw: Vec<RawUpstream>, p: &mut Problems) -> Vec<UpstreamConfig> {
    if raw.is_empty() {
        p.add("upstream", "at least one [[upstream]] is required");
    }
    let mut upstreams: Vec<UpstreamConfig> = Vec::with_capacity(raw.len());
    for (i, u) in raw.into_iter().enumerate() {
        let key = format!("upstream[{i}]");
        if u.name.trim().is_empty() {
            p.add(&format!("{key}.name"), "must not be empty");
        } else if upstreams.iter().any(|seen| seen.name == u.name) {
            p.add(
                &format!("{key}.name"),
                format!("duplicate upstream name {:?}", u.name),
            );
        }
        upstreams.push(u.validate(&key, p));
    }
    upstreams
}

impl RawUpstream {
    fn validate(self, key: &str, p: &mut Problems) -> UpstreamConfig {
        if self.http.is_none() && self.ws.is_none() {
            p.add(key, "needs at least one of `http` or `ws`");
        }
        let mut auth = Vec::new();
        let mut endpoint = |field: &str, text: Option<String>, schemes: &[&str]| {
            let field = format!("{key}.{field}");
            let text = expand_env(p, &field, &text?)?;
            let (uri, basic) = parse_url(p, &field, &text, schemes)?;
            auth.extend(basic.map(|b| (field, b)));
            Some(uri)
        };
        let http = endpoint("http", self.http, &["http", "https"]);
        let ws = endpoint("ws", self.ws, &["ws", "wss"]);
        let mut headers = validate_headers(p, key, self.headers);
        if let Some((field, basic)) = auth.first() {
            if auth.iter().any(|(_, other)| other != basic) {
                p.add(field, "the http and ws URLs carry different user:password");
            } else if headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            {
                p.add(field, "user:password and headers.Authorization both set");
            } else {
                headers.push(("authorization".to_string(), basic.clone()));
            }
        }
        let tls = UpstreamTls {
            ca: self.tls_ca,
            cert: self.tls_cert,
            key: self.tls_key,
        };
        let config = UpstreamConfig {
            name: self.name,
            http,
            ws,
            priority: self.priority,
            tls,
            headers: Credentials(headers),
        };
        validate_tls(p, key, &config);
        config
    }
}

/// TLS files only make sense with a TLS endpoint, and must load now rather than fail every
/// request later.
fn validate_tls(p: &mut Problems, key: &str, config: &UpstreamConfig) {
    let tls = &config.tls;
    let any_file = tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some();
    if tls.cert.is_some() != tls.key.is_some() {
        p.add(
            &format!("{key}.tls_cert"),
            "tls_cert and tls_key go together",
        );
    } else if any_file && !config.uses_tls() {
        p.add(
            &format!("{key}.tls_ca"),
            "TLS files need an https:// or wss:// endpoint",
        );
    } else if config.uses_tls() {
        if let Err(reason) = crate::config::upstream_tls::client_config(tls) {
            p.add(key, reason);
        }
    }
}

fn validate_headers(
    p: &mut Problems,
    key: &str,
    raw: BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut headers = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let field = format!("{key}.headers.{name}");
        if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            p.add(&field, "not a valid header name");
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host" | "content-type" | "content-length" | "connection" | "upgrade"
        ) || lower.starts_with("sec-websocket-")
        {
            p.add(&field, "is set by ethgate itself");
            continue;
        }
        let Some(value) = expand_env(p, &field, &value) else {
            continue;
        };
        if http::HeaderValue::from_str(&value).is_err() {
            // The value is a secret: say what is wrong without echoing it.
            p.add(&field, "value holds characters not allowed in a header");
            continue;
        }
        headers.push((name, value));
    }
    headers
}

/// Replaces every `${NAME}` with the environment variable's value. A missing variable is a
/// problem naming the key and the variable (never the value).
pub(super) fn expand_env(p: &mut Problems, key: &str, text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            p.add(key, "unterminated ${ (expected ${NAME})");
            return None;
        };
        let name = &after[..end];
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            p.add(key, format!("invalid variable name {name:?} in ${{…}}"));
            return None;
        }
        match std::env::var(name) {
            Ok(value) => out.push_str(&value),
            Err(_) => {
                p.add(key, format!("environment variable {name} is not set"));
                return None;
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Parses an endpoint; userinfo is taken out of the URL and returned as a Basic
/// `Authorization` value.
fn parse_url(
    p: &mut Problems,
    key: &str,
    text: &str,
    schemes: &[&str],
) -> Option<(http::Uri, Option<String>)> {
    let shown = shown_url(text);
    let uri: http::Uri = match text.parse() {
        Ok(uri) => uri,
        Err(e) => {
            p.add(key, format!("invalid URL {shown:?}: {e}"));
            return None;
        }
    };
    match uri.scheme_str() {
        Some(scheme) if schemes.contains(&scheme) && uri.host().is_some() => {}
        _ => {
            p.add(
                key,
                format!(
                    "invalid URL {shown:?}: expected {}://HOST[:PORT][/PATH]",
                    schemes.join("|")
                ),
            );
            return None;
        }
    }
    let mut parts = uri.into_parts();
    let authority = parts.authority.take()?;
    let Some((userinfo, host)) = authority.as_str().rsplit_once('@') else {
        parts.authority = Some(authority);
        return http::Uri::from_parts(parts).ok().map(|u| (u, None));
    };
    let basic = basic_auth(userinfo);
    parts.authority = host.parse().ok();
    match http::Uri::from_parts(parts) {
        Ok(uri) => Some((uri, Some(basic))),
        Err(_) => {
            p.add(key, format!("invalid URL {shown:?}"));
            None
        }
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
    use crate::config::Config;

    fn problems(toml: &str) -> Vec<String> {
        Config::from_toml_str(toml)
            .expect_err("config should be invalid")
            .0
    }

    #[test]
    fn https_and_wss_are_accepted_and_userinfo_becomes_basic_auth() {
        let config = Config::from_toml_str(
            "[[upstream]]\nname = \"a\"\nhttp = \"https://user:pw@node.example:8443/rpc\"\nws = \"wss://user:pw@node.example/ws\"",
        )
        .expect("valid");
        let u = &config.upstreams[0];
        assert_eq!(
            u.http.as_ref().map(|u| u.to_string()).as_deref(),
            Some("https://node.example:8443/rpc"),
            "userinfo is stripped from the URL"
        );
        assert_eq!(
            u.ws.as_ref().map(|u| u.to_string()).as_deref(),
            Some("wss://node.example/ws")
        );
        assert_eq!(
            u.headers.0,
            vec![(
                "authorization".to_string(),
                format!("Basic {}", base64(b"user:pw"))
            )]
        );
    }

    #[test]
    fn header_values_and_urls_take_environment_variables() {
        std::env::set_var("ETHGATE_TEST_HDR_KEY", "s3cret-value");
        let config = Config::from_toml_str(
            "[[upstream]]\nname = \"a\"\nhttp = \"https://node.example/v3/${ETHGATE_TEST_HDR_KEY}\"\nheaders = { Authorization = \"Bearer ${ETHGATE_TEST_HDR_KEY}\" }",
        )
        .expect("valid");
        let u = &config.upstreams[0];
        assert_eq!(u.headers.0[0].1, "Bearer s3cret-value");
        assert_eq!(u.http.as_ref().map(|u| u.path()), Some("/v3/s3cret-value"));
        let shown = format!("{:?}", u.headers);
        assert!(
            !shown.contains("s3cret"),
            "Debug shows no header value: {shown}"
        );
    }

    #[test]
    fn a_missing_environment_variable_names_the_key_and_variable() {
        let found = problems(
            "[[upstream]]\nname = \"a\"\nhttp = \"https://node.example\"\nheaders = { X-Api-Key = \"${ETHGATE_TEST_SURELY_UNSET}\" }",
        );
        assert_eq!(
            found,
            vec!["upstream[0].headers.X-Api-Key: environment variable ETHGATE_TEST_SURELY_UNSET is not set"]
        );
        let found = problems("[[upstream]]\nname = \"a\"\nhttp = \"https://x/${BROKEN\"");
        assert_eq!(
            found,
            vec!["upstream[0].http: unterminated ${ (expected ${NAME})"]
        );
    }

    #[test]
    fn url_problems_show_no_userinfo_or_path() {
        let found = problems(
            "[[upstream]]\nname = \"a\"\nhttp = \"ftp://user:hunter2@node.example/v3/0123456789abcdef\"",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("ftp://node.example/…"), "{found:?}");
        assert!(!found[0].contains("hunter2") && !found[0].contains("0123456789abcdef"));
    }

    #[test]
    fn header_rules_are_enforced_without_echoing_values() {
        let found = problems(
            "[[upstream]]\nname = \"a\"\nhttp = \"https://x\"\nheaders = { Host = \"y\", \"bad name\" = \"v\", X-Key = \"line\\nbreak-secret\" }",
        );
        assert_eq!(
            found,
            vec![
                "upstream[0].headers.Host: is set by ethgate itself",
                "upstream[0].headers.X-Key: value holds characters not allowed in a header",
                "upstream[0].headers.bad name: not a valid header name",
            ]
        );
        let found = problems(
            "[[upstream]]\nname = \"a\"\nhttp = \"https://u:p@x\"\nheaders = { Authorization = \"Bearer t\" }",
        );
        assert_eq!(
            found,
            vec!["upstream[0].http: user:password and headers.Authorization both set"]
        );
    }

    #[test]
    fn tls_files_need_each_other_a_tls_endpoint_and_to_load() {
        let found =
            problems("[[upstream]]\nname = \"a\"\nhttp = \"https://x\"\ntls_cert = \"/c.pem\"");
        assert_eq!(
            found,
            vec!["upstream[0].tls_cert: tls_cert and tls_key go together"]
        );
        let found =
            problems("[[upstream]]\nname = \"a\"\nhttp = \"http://x\"\ntls_ca = \"/ca.pem\"");
        assert_eq!(
            found,
            vec!["upstream[0].tls_ca: TLS files need an https:// or wss:// endpoint"]
        );
        let found = problems(
            "[[upstream]]\nname = \"a\"\nhttp = \"https://x\"\ntls_ca = \"/nonexistent/ethgate-ca.pem\"",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("upstream[0]: tls_ca /nonexistent/ethgate-ca.pem:"),
            "{found:?}"
        );
    }

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
    fn shown_url_keeps_scheme_and_host_only() {
        assert_eq!(
            shown_url("https://u:secret@mainnet.example.io/v3/abcdef0123456789"),
            "https://mainnet.example.io/…"
        );
        assert_eq!(shown_url("ftp://x"), "ftp://x");
    }
}
