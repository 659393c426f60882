use super::*;

const MINIMAL: &str = r#"
[[upstream]]
name = "a"
http = "http://127.0.0.1:8545"
"#;

fn errors(toml: &str) -> Vec<String> {
    Config::from_toml_str(toml)
        .expect_err("config should be invalid")
        .messages()
}

fn with_upstream(extra: &str) -> String {
    format!("{extra}\n{MINIMAL}")
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.server.listen, ["0.0.0.0:8545".parse().unwrap()]);
    assert_eq!(c.server.drain_delay, Duration::from_secs(5));
    assert_eq!(c.server.max_request_bytes, 5 * 1024 * 1024);
    assert_eq!(c.server.max_batch_len, 1000);
    assert_eq!(c.server.request_timeout, Duration::from_secs(30));
    assert_eq!(c.server.body_timeout, Duration::from_secs(30));
    assert_eq!(c.server.write_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_response_bytes, 128 * 1024 * 1024);
    assert_eq!(c.server.hedge_after, None, "hedging is off by default");
    assert_eq!(c.health.interval, Duration::from_secs(2));
    assert_eq!(c.health.failure_threshold, 3);
    assert_eq!(c.admin.listen, "127.0.0.1:9545".parse().unwrap());
    assert_eq!(c.access.allow.len(), 2);
    assert_eq!(c.access.deny_methods.len(), DEFAULT_DENY_METHODS.len());
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.upstreams[0].priority, 0);
}

#[test]
fn documented_example_config_is_valid() {
    let text = include_str!("../../config/ethgate.toml");
    Config::from_toml_str(text).unwrap_or_else(|e| panic!("config/ethgate.toml: {e}"));
}

#[test]
fn demo_config_is_valid_and_listens_on_a_nodes_two_ports() {
    let text = include_str!("../../config/demo.toml");
    let c = Config::from_toml_str(text).unwrap_or_else(|e| panic!("config/demo.toml: {e}"));
    let ports: Vec<u16> = c.server.listen.iter().map(|a| a.port()).collect();
    assert_eq!(ports, [8545, 8546]);
}

#[test]
fn unknown_keys_are_rejected() {
    let problems = errors(&with_upstream("[health]\nfailure_treshold = 3"));
    assert!(problems[0].contains("failure_treshold"), "{problems:?}");
}

#[test]
fn at_least_one_upstream_is_required() {
    assert_eq!(
        errors(""),
        vec!["upstream: at least one [[upstream]] is required"]
    );
}

#[test]
fn upstream_names_must_be_unique() {
    let problems = errors(&format!("{MINIMAL}{MINIMAL}"));
    assert_eq!(
        problems,
        vec![r#"upstream[1].name: duplicate upstream name "a""#]
    );
}

#[test]
fn upstream_needs_http_or_ws() {
    let problems = errors("[[upstream]]\nname = \"a\"");
    assert_eq!(
        problems,
        vec!["upstream[0]: needs at least one of `http` or `ws`"]
    );
}

#[test]
fn websocket_only_upstream_is_accepted() {
    let c = Config::from_toml_str("[[upstream]]\nname = \"a\"\nws = \"wss://node.example/ws\"")
        .expect("a ws-only upstream is valid");
    assert_eq!(c.upstreams[0].http, None);
}

#[test]
fn invalid_upstream_url_names_the_key() {
    let problems = errors("[[upstream]]\nname = \"a\"\nhttp = \"ftp://x\"\n[[upstream]]\nname = \"b\"\nhttp = \"http://x\"\nws = \"http://y\"");
    assert!(
        problems[0].starts_with("upstream[0].http: invalid URL \"ftp://x\""),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("upstream[1].ws: invalid URL \"http://y\""),
        "{problems:?}"
    );
}

#[test]
fn tls_cert_and_key_go_together() {
    let problems = errors(&with_upstream("[server.tls]\ncert = \"c.pem\""));
    assert_eq!(
        problems,
        vec!["server.tls.key: required when [server.tls] is present"]
    );
}

#[test]
fn probe_timeout_must_be_shorter_than_interval() {
    let problems = errors(&with_upstream(
        "[health]\ninterval = \"1s\"\ntimeout = \"1s\"",
    ));
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("health.timeout: must be shorter than health.interval"));
}

#[test]
fn no_new_heads_must_exceed_interval() {
    let problems = errors(&with_upstream(
        "[health]\ninterval = \"2s\"\nno_new_heads = \"1s\"",
    ));
    assert!(
        problems[0].starts_with("health.no_new_heads:"),
        "{problems:?}"
    );
}

#[test]
fn thresholds_must_be_positive() {
    let problems = errors(&with_upstream(
        "[health]\nfailure_threshold = 0\nrecovery_threshold = 0",
    ));
    assert_eq!(
        problems,
        vec![
            "health.failure_threshold: must be at least 1",
            "health.recovery_threshold: must be at least 1"
        ]
    );
}

#[test]
fn durations_name_their_key() {
    let problems = errors(&with_upstream("[server]\nrequest_timeout = \"5 seconds\""));
    assert!(
        problems[0].starts_with("server.request_timeout: duration"),
        "{problems:?}"
    );
}

#[test]
fn limits_must_be_positive() {
    let problems = errors(&with_upstream("[server]\nmax_batch_len = 0"));
    assert_eq!(problems, vec!["server.max_batch_len: must be at least 1"]);
}

#[test]
fn subscription_limits_and_queue_bytes_must_be_positive() {
    let problems = errors(&with_upstream(
        "[server]\nmax_subscriptions_per_connection = 0\nmax_subscriptions = 0\nws_queue_bytes = 0",
    ));
    assert_eq!(
        problems,
        vec![
            "server.ws_queue_bytes: must be at least 1",
            "server.max_subscriptions_per_connection: must be at least 1",
            "server.max_subscriptions: must be at least 1",
        ]
    );
}

#[test]
fn subscription_limits_default_as_documented() {
    let config = Config::from_toml_str(&with_upstream("")).unwrap();
    assert_eq!(config.server.max_subscriptions_per_connection, 1000);
    assert_eq!(config.server.max_subscriptions, 100_000);
    assert_eq!(config.server.ws_queue_bytes, 16 * 1024 * 1024);
}

#[test]
fn listen_addresses_must_parse() {
    let problems = errors(&with_upstream("[admin]\nlisten = \"localhost\""));
    assert!(
        problems[0].starts_with("admin.listen: invalid address"),
        "{problems:?}"
    );
}

#[test]
fn cidrs_are_strict() {
    let problems = errors(&with_upstream(
        "[access]\nallow = [\"10.0.0.1/8\", \"010.0.0.0/8\", \"10.0.0.0/33\", \"10.0.0.5\", \"::1/128\"]",
    ));
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("access.allow[0]: CIDR \"10.0.0.1/8\" has host bits set"));
    assert!(problems[1].starts_with("access.allow[1]:"));
    assert!(problems[2].starts_with("access.allow[2]:"));
}

#[test]
fn deny_patterns_allow_only_a_trailing_star() {
    let problems = errors(&with_upstream(
        "[access]\ndeny_methods = [\"*\", \"a*b\", \"debug_*\"]",
    ));
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn log_format_and_level_are_checked() {
    let problems = errors(&with_upstream("[log]\nformat = \"xml\"\nlevel = \"lots[\""));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("log.format:"));
    assert!(problems[1].starts_with("log.level:"));
}

#[test]
fn watch_address_and_balance_are_checked() {
    let problems = errors(&with_upstream(
        "[[watch]]\naddress = \"0x12\"\nmin_balance = \"abc\"",
    ));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("watch[0].address:"));
    assert!(problems[1].starts_with("watch[0].min_balance:"));
}

#[test]
fn ether_amounts_convert_to_wei() {
    assert_eq!(values::parse_ether("0.5"), Ok(500_000_000_000_000_000));
    assert_eq!(values::parse_ether("2"), Ok(2_000_000_000_000_000_000));
    assert_eq!(values::parse_ether(".000000000000000001"), Ok(1));
    assert!(values::parse_ether("1.0000000000000000001").is_err());
    assert!(values::parse_ether("-1").is_err());
    assert!(values::parse_ether(".").is_err());
}

#[test]
fn chain_id_zero_is_rejected() {
    assert_eq!(
        errors(&with_upstream("chain_id = 0")),
        vec!["chain_id: must be a positive integer"]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let problems =
        errors("[server]\nlisten = \"x\"\n[health]\nmax_lag_blocks = 1\ntimeout = \"9s\"");
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn listen_takes_one_address_or_a_list() {
    let one =
        Config::from_toml_str(&with_upstream("[server]\nlisten = \"127.0.0.1:8545\"")).unwrap();
    assert_eq!(one.server.listen, ["127.0.0.1:8545".parse().unwrap()]);
    let two = Config::from_toml_str(&with_upstream(
        "[server]\nlisten = [\"0.0.0.0:8545\", \"[::]:8546\"]",
    ))
    .unwrap();
    let want: Vec<std::net::SocketAddr> = vec![
        "0.0.0.0:8545".parse().unwrap(),
        "[::]:8546".parse().unwrap(),
    ];
    assert_eq!(two.server.listen, want);
}

#[test]
fn listen_list_must_not_be_empty() {
    assert_eq!(
        errors(&with_upstream("[server]\nlisten = []")),
        vec!["server.listen: needs at least one address"]
    );
}

#[test]
fn listen_list_entries_are_named_by_index() {
    let problems = errors(&with_upstream(
        "[server]\nlisten = [\"127.0.0.1:8545\", \"localhost:8546\"]",
    ));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("server.listen[1]: invalid address \"localhost:8546\""),
        "{problems:?}"
    );
}

#[test]
fn listen_list_refuses_the_same_address_twice() {
    let problems = errors(&with_upstream(
        "[server]\nlisten = [\"127.0.0.1:8545\", \"127.0.0.1:8545\"]",
    ));
    assert_eq!(
        problems,
        vec!["server.listen[1]: 127.0.0.1:8545 overlaps 127.0.0.1:8545: both cannot be bound"]
    );
}

#[test]
fn body_timeout_must_be_positive() {
    let problems = errors(&with_upstream("[server]\nbody_timeout = \"0s\""));
    assert_eq!(problems, ["server.body_timeout: must be greater than zero"]);
}

#[test]
fn write_timeout_must_be_positive() {
    let problems = errors(&with_upstream("[server]\nwrite_timeout = \"0ms\""));
    assert_eq!(
        problems,
        ["server.write_timeout: must be greater than zero"]
    );
}

#[test]
fn listen_list_refuses_a_wildcard_overlapping_another_address() {
    for list in [
        r#"["0.0.0.0:8545", "127.0.0.1:8545"]"#,
        r#"["127.0.0.1:8545", "0.0.0.0:8545"]"#,
        r#"["[::]:8545", "127.0.0.1:8545"]"#,
    ] {
        let problems = errors(&with_upstream(&format!("[server]\nlisten = {list}")));
        assert!(
            problems.len() == 1 && problems[0].contains("overlaps"),
            "{list}: {problems:?}"
        );
    }
    // Different ports, different specific addresses, an IPv4 wildcard beside an IPv6
    // address, and port 0 (each bind picks its own port) are all fine.
    for list in [
        r#"["0.0.0.0:8545", "0.0.0.0:8546"]"#,
        r#"["127.0.0.1:8545", "127.0.0.2:8545"]"#,
        r#"["0.0.0.0:8545", "[::1]:8545"]"#,
        r#"["127.0.0.1:0", "127.0.0.1:0"]"#,
    ] {
        Config::from_toml_str(&with_upstream(&format!("[server]\nlisten = {list}")))
            .unwrap_or_else(|e| panic!("{list}: {e}"));
    }
}

#[test]
fn listen_of_another_type_says_what_it_takes() {
    let problems = errors(&with_upstream("[server]\nlisten = 8545"));
    assert!(
        problems[0].contains(r#"an address "IP:PORT" or a list of them"#),
        "{problems:?}"
    );
}

#[test]
fn drain_delay_may_be_zero_but_must_parse() {
    let zero = Config::from_toml_str(&with_upstream("[server]\ndrain_delay = \"0s\"")).unwrap();
    assert_eq!(zero.server.drain_delay, Duration::ZERO);
    let problems = errors(&with_upstream("[server]\ndrain_delay = \"5\""));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("server.drain_delay: "),
        "{problems:?}"
    );
}

#[test]
fn max_response_bytes_must_be_positive() {
    let problems = errors(&with_upstream("[server]\nmax_response_bytes = 0"));
    assert_eq!(problems, ["server.max_response_bytes: must be at least 1"]);
}

#[test]
fn hedge_after_is_read_when_set() {
    let c = Config::from_toml_str(&with_upstream("[server]\nhedge_after = \"250ms\"")).unwrap();
    assert_eq!(c.server.hedge_after, Some(Duration::from_millis(250)));
}

#[test]
fn zero_hedge_after_is_refused() {
    let problems = errors(&with_upstream("[server]\nhedge_after = \"0s\""));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("server.hedge_after: must be greater than zero"),
        "{problems:?}"
    );
}

#[test]
fn hedge_after_must_be_shorter_than_request_timeout() {
    let toml = "[server]\nrequest_timeout = \"2s\"\nhedge_after = \"2s\"";
    let problems = errors(&with_upstream(toml));
    assert_eq!(
        problems,
        ["server.hedge_after: must be shorter than server.request_timeout"]
    );
}

#[test]
fn malformed_hedge_after_names_the_key() {
    let problems = errors(&with_upstream("[server]\nhedge_after = \"soon\""));
    assert!(
        problems[0].starts_with("server.hedge_after: "),
        "{problems:?}"
    );
}

#[test]
fn problems_carry_their_key_as_a_field() {
    let errors = Config::from_toml_str(&with_upstream(
        "[server]\nmax_batch_len = 0\nlisten = [\"127.0.0.1:1\", \"x\"]",
    ))
    .expect_err("invalid");
    let keys: Vec<Option<&str>> = errors.0.iter().map(ConfigError::key).collect();
    assert_eq!(
        keys,
        [Some("server.listen[1]"), Some("server.max_batch_len")],
        "{errors}"
    );
    let syntax = Config::from_toml_str("[server\n").expect_err("not TOML");
    assert!(
        matches!(
            syntax.0.as_slice(),
            [ConfigError::Syntax { at: Some(_), .. }]
        ),
        "{syntax:?}"
    );
    assert_eq!(syntax.0[0].key(), None);
    let missing =
        Config::load(std::path::Path::new("/nonexistent/ethgate.toml")).expect_err("no such file");
    assert!(
        matches!(missing.0.as_slice(), [ConfigError::Read { path, .. }]
            if path == std::path::Path::new("/nonexistent/ethgate.toml")),
        "{missing:?}"
    );
    assert!(
        missing
            .to_string()
            .starts_with("/nonexistent/ethgate.toml: "),
        "{missing}"
    );
}

#[test]
fn server_problems_are_reported_in_a_fixed_order() {
    let toml = with_upstream(
        r#"[server]
max_response_bytes = 0
write_timeout = "0s"
body_timeout = "0s"
subscription_grace = "x"
drain_delay = "x"
shutdown_grace = "x"
header_timeout = "x"
max_subscriptions = 0
max_subscriptions_per_connection = 0
ws_queue_bytes = 0
ws_queue_len = 0
max_batch_len = 0
max_request_bytes = 0
max_connections = 0
listen = []
hedge_after = "0s"
request_timeout = "0s"
[server.tls]
key = "k.pem"
"#,
    );
    let errors = Config::from_toml_str(&toml).expect_err("invalid");
    let keys: Vec<&str> = errors.0.iter().filter_map(ConfigError::key).collect();
    // Written in reverse in the file: the order is the validator's, the same on every run.
    assert_eq!(
        keys,
        [
            "server.tls.cert",
            "server.request_timeout",
            "server.hedge_after",
            "server.listen",
            "server.max_connections",
            "server.max_request_bytes",
            "server.max_batch_len",
            "server.ws_queue_len",
            "server.ws_queue_bytes",
            "server.max_subscriptions_per_connection",
            "server.max_subscriptions",
            "server.header_timeout",
            "server.shutdown_grace",
            "server.drain_delay",
            "server.subscription_grace",
            "server.body_timeout",
            "server.write_timeout",
            "server.max_response_bytes",
        ],
        "{errors}"
    );
}

#[test]
fn a_log_level_that_is_not_a_level_is_refused_rather_than_silencing_every_log() {
    for bad in ["warning", "ethgate=loud", "=debug", "info,verbose"] {
        let problems = errors(&with_upstream(&format!("[log]\nlevel = {bad:?}")));
        assert!(
            problems.len() == 1 && problems[0].starts_with("log.level: "),
            "{bad}: {problems:?}"
        );
    }
    for good in [
        "warn",
        "INFO",
        "ethgate=debug",
        "info,ethgate::router=trace",
        "off",
    ] {
        let config = Config::from_toml_str(&with_upstream(&format!("[log]\nlevel = {good:?}")));
        assert!(config.is_ok(), "{good}: {config:?}");
    }
}

#[test]
fn zero_durations_that_would_refuse_or_drop_everyone_are_refused() {
    let problems = errors(&with_upstream(
        "[server]\nheader_timeout = \"0s\"\nsubscription_grace = \"0s\"\n\
         [[watch]]\naddress = \"0x0000000000000000000000000000000000000000\"\ninterval = \"0s\"",
    ));
    assert_eq!(
        problems,
        [
            "server.header_timeout: must be greater than zero",
            "server.subscription_grace: must be greater than zero",
            "watch[0].interval: must be greater than zero",
        ]
    );
}

#[test]
fn server_tls_files_are_loaded_by_check_as_run_loads_them() {
    let dir = std::env::temp_dir().join(format!("ethgate-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = write("cert.pem", &made.cert.pem());
    let key = write("key.pem", &made.signing_key.serialize_pem());
    let other = rcgen::generate_simple_self_signed(vec!["other".to_string()]).unwrap();
    let other_key = write("other-key.pem", &other.signing_key.serialize_pem());
    let tls = |cert: &str, key: &str| {
        with_upstream(&format!("[server.tls]\ncert = {cert:?}\nkey = {key:?}"))
    };

    assert!(Config::from_toml_str(&tls(&cert, &key)).is_ok());
    let missing = errors(&tls("/nonexistent/cert.pem", &key));
    assert!(
        missing.len() == 1 && missing[0].starts_with("server.tls.cert: /nonexistent/cert.pem: "),
        "{missing:?}"
    );
    let not_a_key = errors(&tls(&cert, &cert));
    assert!(
        not_a_key[0].starts_with("server.tls.key: "),
        "{not_a_key:?}"
    );
    let mismatched = errors(&tls(&cert, &other_key));
    assert!(
        mismatched[0].starts_with("server.tls: certificate and key do not work together"),
        "{mismatched:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
