//! `[[upstream]]`: endpoints, TLS files and credentials. Secrets (URL userinfo, header values,
//! whatever came from `${VAR}`) never appear in a problem message: only keys, schemes and hosts.

use std::collections::BTreeMap;

use super::super::env::expand_env;
use super::super::raw::RawUpstream;
use super::super::url::parse_url;
use super::super::{CallTransport, Credentials, UpstreamConfig, UpstreamTls};
use super::Problems;

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
        upstreams.push(validate_upstream(u, &key, p));
    }
    upstreams
}

fn validate_upstream(raw: RawUpstream, key: &str, p: &mut Problems) -> UpstreamConfig {
    if raw.http.is_none() && raw.ws.is_none() {
        p.add(key, "needs at least one of `http` or `ws`");
    }
    let calls = validate_calls(p, key, raw.calls.as_deref(), (&raw.http, &raw.ws));
    let mut auth = Vec::new();
    let mut endpoint = |field: &str, text: Option<String>, schemes: &[&str]| {
        let field = format!("{key}.{field}");
        let parsed = expand_env(&text?).and_then(|text| parse_url(&text, schemes));
        let endpoint = parsed.map_err(|e| p.add(&field, e)).ok()?;
        auth.extend(endpoint.basic.map(|b| (field, b)));
        Some(endpoint.uri)
    };
    let http = endpoint("http", raw.http, &["http", "https"]);
    let ws = endpoint("ws", raw.ws, &["ws", "wss"]);
    let mut headers = validate_headers(p, key, raw.headers);
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
        ca: raw.tls_ca,
        cert: raw.tls_cert,
        key: raw.tls_key,
    };
    let config = UpstreamConfig {
        name: raw.name,
        http,
        ws,
        priority: raw.priority,
        tls,
        headers: Credentials(headers),
        calls,
    };
    validate_tls(p, key, &config);
    config
}

/// `calls`: the endpoint calls go to, which must be configured. Unset, it is `http` when there
/// is one (one connection per call in flight suits every node), else `ws`.
fn validate_calls(
    p: &mut Problems,
    key: &str,
    calls: Option<&str>,
    (http, ws): (&Option<String>, &Option<String>),
) -> CallTransport {
    let field = format!("{key}.calls");
    match calls {
        None if http.is_none() && ws.is_some() => CallTransport::Ws,
        None => CallTransport::Http,
        Some("http") if http.is_none() => {
            p.add(&field, "\"http\" needs an `http` endpoint");
            CallTransport::Http
        }
        Some("http") => CallTransport::Http,
        Some("ws") if ws.is_none() => {
            p.add(&field, "\"ws\" needs a `ws` endpoint");
            CallTransport::Ws
        }
        Some("ws") => CallTransport::Ws,
        Some(other) => {
            p.add(&field, format!("must be \"http\" or \"ws\", not {other:?}"));
            CallTransport::Http
        }
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
        if let Err(reason) = super::super::upstream_tls::client_config(tls) {
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
        let value = match expand_env(&value) {
            Ok(value) => value,
            Err(e) => {
                p.add(&field, e);
                continue;
            }
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

#[cfg(test)]
mod tests {
    use crate::config::{CallTransport, Config};

    fn problems(toml: &str) -> Vec<String> {
        Config::from_toml_str(toml)
            .expect_err("config should be invalid")
            .messages()
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
                "Basic dXNlcjpwdw==".to_string()
            )]
        );
    }

    #[test]
    fn calls_default_to_http_when_there_is_one_and_may_be_moved_to_ws() {
        let parse = |toml: &str| Config::from_toml_str(toml).expect("valid").upstreams[0].calls;
        let both = "[[upstream]]\nname = \"a\"\nhttp = \"http://n:8545\"\nws = \"ws://n:8546\"";
        assert_eq!(parse(both), CallTransport::Http);
        assert_eq!(parse(&format!("{both}\ncalls = \"ws\"")), CallTransport::Ws);
        assert_eq!(
            parse(&format!("{both}\ncalls = \"http\"")),
            CallTransport::Http
        );
        let ws_only = "[[upstream]]\nname = \"a\"\nws = \"ws://n:8546\"";
        assert_eq!(parse(ws_only), CallTransport::Ws);
    }

    #[test]
    fn calls_must_name_a_configured_endpoint() {
        assert_eq!(
            problems("[[upstream]]\nname = \"a\"\nws = \"ws://n\"\ncalls = \"http\""),
            vec!["upstream[0].calls: \"http\" needs an `http` endpoint"]
        );
        assert_eq!(
            problems("[[upstream]]\nname = \"a\"\nhttp = \"http://n\"\ncalls = \"ws\""),
            vec!["upstream[0].calls: \"ws\" needs a `ws` endpoint"]
        );
        assert_eq!(
            problems("[[upstream]]\nname = \"a\"\nhttp = \"http://n\"\ncalls = \"grpc\""),
            vec!["upstream[0].calls: must be \"http\" or \"ws\", not \"grpc\""]
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
}
