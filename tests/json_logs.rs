//! `ethgate run --log-format json`: every line the real binary writes is one JSON object with
//! timestamp, level, target and message, and the operational events (state transition,
//! failover, denied connection, low balance, reload) carry their facts as fields. No line is
//! logged per request at info level, and SIGTERM ends the process with status 0.

mod support;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::gateway::{Gateway, Ports};
use support::http::Http;
use support::mock::MockUpstream;
use support::process::Output;
use support::WAIT;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;

const WATCHED: &str = "0x00000000000000000000000000000000000000aa";
const STANDARD_FIELDS: [&str; 4] = ["timestamp", "level", "target", "message"];

fn config(ports: Ports, a: &MockUpstream, b: &MockUpstream, max_lag_blocks: u32) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
request_timeout = "2s"
shutdown_grace = "5s"

[health]
interval = "300ms"
timeout = "250ms"
failure_threshold = 2
recovery_threshold = 1
max_lag_blocks = {max_lag_blocks}

[access]
allow = ["127.0.0.1/32"]

[[upstream]]
name = "a"
http = "{a_http}"
ws = "{a_ws}"
priority = 0

[[upstream]]
name = "b"
http = "{b_http}"
ws = "{b_ws}"
priority = 1

[[watch]]
address = "{WATCHED}"
min_balance = "2"
interval = "500ms"

[admin]
listen = "{admin}"
"#,
        listen = ports.listen,
        admin = ports.admin,
        a_http = a.http_url(),
        a_ws = a.ws_url(),
        b_http = b.http_url(),
        b_ws = b.ws_url(),
    )
}

/// Waits (at most `WAIT`, off the async threads) for a JSON line satisfying `pred`.
async fn wait_json(
    output: &Output,
    what: &str,
    pred: impl Fn(&Value) -> bool + Send + 'static,
) -> Value {
    let out = output.clone();
    let found = tokio::task::spawn_blocking(move || {
        out.wait_for_line(
            |line| serde_json::from_str::<Value>(line).is_ok_and(|v| pred(&v)),
            WAIT,
        )
    })
    .await
    .expect("waiting thread");
    match found {
        Some(line) => serde_json::from_str(&line).expect("matched line is JSON"),
        None => panic!(
            "no log line for {what} within {WAIT:?}; log:\n{}",
            output.text()
        ),
    }
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

/// Every captured line (both streams), failing if some were dropped from the capture.
fn all_lines(output: &Output) -> Vec<String> {
    let text = output.text();
    assert!(
        !text.contains("lines dropped"),
        "too much output to check every line"
    );
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Opens a connection from 127.0.0.2, which the allowlist refuses; returns once it is closed.
async fn denied_connection(target: SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut stream = socket.connect(target).await.expect("connect");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "denied connection was not closed");
    assert!(buf.is_empty(), "denied peer got bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_operational_facts() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let ports = Ports::free();
    let mut eg = Gateway::spawn(
        ports,
        &config(ports, &a, &b, 5),
        &["--log-format", "json"],
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let output = eg.child().output().clone();

    // A watched wallet below min_balance: one warning with the figures.
    let low = wait_json(&output, "low balance", |v| {
        v["address"] == WATCHED && v["level"] == "WARN"
    })
    .await;
    assert_eq!(low["balance_ether"], 1.0, "{low}");
    assert_eq!(low["min_balance_ether"], 2.0, "{low}");

    // 50 requests: no line per request at info.
    let before = all_lines(&output).len();
    let http = Http::default();
    for _ in 0..50 {
        http.rpc(&eg.url(), "eth_blockNumber", json!([]), WAIT)
            .await
            .unwrap_or_else(|e| panic!("eth_blockNumber: {e}\nlog:\n{}", eg.log()));
    }

    // A denied connection: one line naming the peer.
    denied_connection(ports.listen).await;
    let denied = wait_json(&output, "denied connection", |v| v["peer"].is_string()).await;
    assert!(
        denied["peer"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.2"),
        "{denied}"
    );

    // SIGHUP with a changed file, then with a broken one: one line each.
    std::fs::write(eg.config_path(), config(ports, &a, &b, 6)).expect("rewrite config");
    eg.child().signal(1).expect("kill -HUP");
    let reloaded = wait_json(&output, "config reloaded", |v| {
        v["level"] == "INFO" && message(v).contains("reloaded")
    })
    .await;
    assert!(reloaded.get("changes").is_some(), "{reloaded}");
    std::fs::write(eg.config_path(), "[server\nthis is not TOML").expect("break config");
    eg.child().signal(1).expect("kill -HUP");
    let refused = wait_json(&output, "reload refused", |v| {
        v["level"] == "ERROR" && message(v).contains("refused")
    })
    .await;
    let facts = refused.as_object().map_or(0, |o| {
        o.keys()
            .filter(|k| !STANDARD_FIELDS.contains(&k.as_str()))
            .count()
    });
    assert!(facts > 0, "the refusal says why: {refused}");

    // The selected upstream dies: a state transition line and a failover line.
    a.refuse().await;
    let transition = wait_json(&output, "a out of rotation", |v| {
        v["upstream"] == "a" && v["to"] == "unreachable"
    })
    .await;
    assert_eq!(transition["from"], "healthy", "{transition}");
    let failover = wait_json(&output, "failover a -> b", |v| {
        message(v) == "failover" && v["from"] == "a"
    })
    .await;
    assert_eq!(failover["to"], "b", "{failover}");
    assert!(
        failover["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unreachable")),
        "reason names the state: {failover}"
    );

    // SIGTERM: exit status 0, then every stream closes.
    eg.child().signal(15).expect("kill -TERM");
    let status = tokio::task::block_in_place(|| eg.child_mut().wait_timeout(WAIT));
    let status = status.unwrap_or_else(|| panic!("no exit within {WAIT:?}:\n{}", eg.log()));
    assert_eq!(status.code(), Some(0), "exit status; log:\n{}", eg.log());
    let out = output.clone();
    tokio::task::spawn_blocking(move || out.wait_for_line(|_| false, WAIT))
        .await
        .expect("drain");

    let lines = all_lines(&output);
    assert!(
        lines.len() - before < 50,
        "{} lines after 50 requests: a line per request?\n{}",
        lines.len() - before,
        lines[before..].join("\n")
    );
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nlog:\n{}", eg.log()));
        assert!(v.is_object(), "not a JSON object: {line}");
        for field in STANDARD_FIELDS {
            assert!(
                v[field].as_str().is_some_and(|s| !s.is_empty()),
                "no {field}: {line}"
            );
        }
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(
            ["TRACE", "DEBUG"].iter().all(|l| v["level"] != *l),
            "debug line at the default level: {line}"
        );
        assert!(
            v["target"].as_str().unwrap().starts_with("ethgate"),
            "{line}"
        );
        assert!(
            !line.contains("eth_blockNumber"),
            "a request is logged at info: {line}"
        );
    }
    let timestamp = lines
        .first()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["timestamp"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    assert!(
        timestamp.len() >= 20 && timestamp.as_bytes()[4] == b'-' && timestamp.contains('T'),
        "RFC 3339 timestamp: {timestamp}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("SIGTERM received") || l.contains("ethgate stopped")),
        "shutdown is logged"
    );
}
