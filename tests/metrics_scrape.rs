//! `/metrics` after scripted traffic against mock upstreams: every counter and gauge moved by
//! exactly what the traffic implies, and the exposition is well-formed Prometheus text.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};
use support::gateway::{error_of, result_of, Gateway, GatewayConfig};
use support::mock::MockUpstream;
use support::prometheus::{scrape, scrape_until, Scrape};
use support::ws_client::WsClient;
use support::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

fn key(transport: &str, method: &str, result: &str) -> (String, String, String) {
    (transport.into(), method.into(), result.into())
}

/// Upstream attempt counts: every result at zero except `ok`.
fn only_ok(ok: f64) -> BTreeMap<String, f64> {
    let mut expected: BTreeMap<String, f64> = [
        "ok",
        "missing_data",
        "behind",
        "not_sent",
        "no_answer",
        "http_error",
        "timeout",
        "bad_answer",
        "too_large",
        "abandoned",
    ]
    .iter()
    .map(|r| (r.to_string(), 0.0))
    .collect();
    expected.insert("ok".into(), ok);
    expected
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_fresh_ethgate_exports_every_family_at_zero() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    let s = scrape(&gw).await;
    let families = [
        ("ethgate_requests_total", "counter"),
        ("ethgate_request_duration_seconds", "histogram"),
        ("ethgate_upstream_up", "gauge"),
        ("ethgate_upstream_head", "gauge"),
        ("ethgate_upstream_lag_blocks", "gauge"),
        ("ethgate_upstream_requests_total", "counter"),
        ("ethgate_failovers_total", "counter"),
        ("ethgate_ws_connections", "gauge"),
        ("ethgate_subscriptions", "gauge"),
        ("ethgate_gap_filled_blocks_total", "counter"),
        ("ethgate_duplicates_dropped_total", "counter"),
        ("ethgate_denied_connections_total", "counter"),
        ("ethgate_tls_handshake_failures_total", "counter"),
        ("ethgate_account_balance_ether", "gauge"),
        ("ethgate_account_min_balance_ether", "gauge"),
        ("ethgate_upstream_state", "gauge"),
        ("ethgate_upstream_request_duration_seconds", "histogram"),
        ("ethgate_inflight_requests", "gauge"),
        ("ethgate_ws_queue_overflows_total", "counter"),
        ("ethgate_hedges_total", "counter"),
        (
            "ethgate_subscription_failover_duration_seconds",
            "histogram",
        ),
    ];
    for (family, kind) in families {
        assert_eq!(
            s.types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE {family} {kind}; /metrics:\n{}",
            s.text
        );
    }
    assert!(s.requests().is_empty(), "no call counted yet");
    for kind in ["request", "subscription", "in_flight"] {
        s.assert("ethgate_failovers_total", &[("kind", kind)], 0.0);
    }
    for result in ["sent", "won"] {
        s.assert("ethgate_hedges_total", &[("result", result)], 0.0);
    }
    for reason in ["not_allowed", "proxy_header"] {
        s.assert(
            "ethgate_denied_connections_total",
            &[("reason", reason)],
            0.0,
        );
    }
    for kind in ["newHeads", "logs", "newPendingTransactions", "syncing"] {
        s.assert("ethgate_subscriptions", &[("kind", kind)], 0.0);
    }
    for transport in ["http", "ws"] {
        s.assert(
            "ethgate_request_duration_seconds_count",
            &[("transport", transport)],
            0.0,
        );
    }
    for name in [
        "ethgate_ws_connections",
        "ethgate_gap_filled_blocks_total",
        "ethgate_duplicates_dropped_total",
        "ethgate_tls_handshake_failures_total",
    ] {
        s.assert(name, &[], 0.0);
    }
    for upstream in ["a", "b"] {
        s.assert("ethgate_upstream_up", &[("upstream", upstream)], 1.0);
        assert_eq!(s.upstream_attempts(upstream), only_ok(0.0), "{upstream}");
        for state in [
            "healthy",
            "lagging",
            "syncing",
            "stalled",
            "unreachable",
            "wrong_chain",
        ] {
            let on = if state == "healthy" { 1.0 } else { 0.0 };
            s.assert(
                "ethgate_upstream_state",
                &[("upstream", upstream), ("state", state)],
                on,
            );
        }
        s.assert(
            "ethgate_upstream_request_duration_seconds_count",
            &[("upstream", upstream)],
            0.0,
        );
    }
    s.assert("ethgate_inflight_requests", &[], 0.0);
    s.assert("ethgate_ws_queue_overflows_total", &[], 0.0);
    s.assert(
        "ethgate_subscription_failover_duration_seconds_count",
        &[],
        0.0,
    );
}

#[tokio::test]
async fn calls_are_counted_by_transport_method_and_result() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let config =
        GatewayConfig::new().access("deny_methods", r#"["admin_*", "eth_sendTransaction"]"#);
    let gw = Gateway::start_pair(config, &a, &b).await;
    gw.wait_selected("a").await;
    a.fail_method("eth_call", 3, "execution reverted");
    let mut posts = 0;
    for _ in 0..7 {
        result_of(&gw.call("eth_blockNumber", json!([])).await);
        posts += 1;
    }
    for _ in 0..3 {
        let (code, _) = error_of(&gw.call("foo_unknownMethod", json!([])).await);
        assert_eq!(code, -32601, "the mock does not know it");
        posts += 1;
    }
    for _ in 0..2 {
        let (_, message) = error_of(&gw.call("admin_nodeInfo", json!([])).await);
        assert!(message.contains("not allowed"), "{message}");
        posts += 1;
    }
    error_of(&gw.call("eth_sendTransaction", json!([{}])).await);
    posts += 1;
    for _ in 0..2 {
        let (code, _) = error_of(&gw.call("eth_call", json!([{}, "latest"])).await);
        assert_eq!(code, 3);
        posts += 1;
    }
    let batch = gw
        .rpc(r#"[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":2,"method":"eth_getBalance","params":["0x00000000000000000000000000000000000000aa","latest"]}]"#)
        .await;
    assert_eq!(batch.as_array().map(Vec::len), Some(2), "{batch}");
    posts += 1;
    let (code, _) = gw.post("this is not json").await;
    assert_eq!(code, 200);
    posts += 1;
    error_of(&gw.call("eth_subscribe", json!(["newHeads"])).await);
    posts += 1;
    assert_eq!(result_of(&gw.call("eth_chainId", json!([])).await), "0x1");
    posts += 1;

    let s = scrape(&gw).await;
    let expected: BTreeMap<_, _> = [
        (key("http", "eth_blockNumber", "ok"), 8.0),
        (key("http", "eth_getBalance", "ok"), 1.0),
        (key("http", "other", "rpc_error"), 3.0),
        (key("http", "other", "denied"), 2.0),
        (key("http", "eth_sendTransaction", "denied"), 1.0),
        (key("http", "eth_call", "rpc_error"), 2.0),
        (key("http", "other", "invalid"), 1.0),
        (key("http", "eth_subscribe", "invalid"), 1.0),
        (key("http", "eth_chainId", "ok"), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        s.requests(),
        expected,
        "ethgate_requests_total; /metrics:\n{}",
        s.text
    );
    // Forwarded: 7 + 3 unknown + 2 eth_call + 1 batch (one attempt); denied, invalid and
    // eth_chainId never reach an upstream.
    assert_eq!(s.upstream_attempts("a"), only_ok(13.0), "{}", s.text);
    assert_eq!(s.upstream_attempts("b"), only_ok(0.0), "{}", s.text);
    s.assert(
        "ethgate_request_duration_seconds_count",
        &[("transport", "http")],
        f64::from(posts),
    );
    s.assert(
        "ethgate_request_duration_seconds_bucket",
        &[("transport", "http"), ("le", "+Inf")],
        f64::from(posts),
    );
    s.assert("ethgate_failovers_total", &[("kind", "request")], 0.0);
}

#[tokio::test]
async fn selected_upstream_dying_counts_one_failover_and_moves_the_gauges() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    b.set_head(103);
    // HTTP only: with `ws` URLs the subscription source would fail over too (and count as
    // kind="subscription") whether or not a client subscribed.
    let config = GatewayConfig::new()
        .upstream_http("a", &a.http_url(), 0)
        .upstream_http("b", &b.http_url(), 1);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    gw.wait_selected("a").await;
    let s = scrape_until(&gw, "heads 100 and 103", |s| {
        s.get("ethgate_upstream_head", &[("upstream", "b")]) == Some(103.0)
            && s.get("ethgate_upstream_head", &[("upstream", "a")]) == Some(100.0)
    })
    .await;
    s.assert("ethgate_upstream_up", &[("upstream", "a")], 1.0);
    s.assert("ethgate_upstream_up", &[("upstream", "b")], 1.0);
    s.assert("ethgate_upstream_lag_blocks", &[("upstream", "a")], 3.0);
    s.assert("ethgate_upstream_lag_blocks", &[("upstream", "b")], 0.0);

    for _ in 0..5 {
        result_of(&gw.call("eth_blockNumber", json!([])).await);
    }
    a.refuse().await;
    gw.wait_state("a", "unreachable").await;
    gw.wait_selected("b").await;
    // The selection is published a moment before the failover is counted.
    let s = scrape_until(&gw, "a request failover", |s| {
        s.get("ethgate_failovers_total", &[("kind", "request")]) != Some(0.0)
    })
    .await;
    s.assert("ethgate_upstream_up", &[("upstream", "a")], 0.0);
    s.assert("ethgate_upstream_up", &[("upstream", "b")], 1.0);
    s.assert("ethgate_failovers_total", &[("kind", "request")], 1.0);
    s.assert("ethgate_failovers_total", &[("kind", "subscription")], 0.0);
    assert_eq!(s.upstream_attempts("a"), only_ok(5.0), "{}", s.text);

    for _ in 0..4 {
        result_of(&gw.call("eth_blockNumber", json!([])).await);
    }
    let s = scrape(&gw).await;
    assert_eq!(s.upstream_attempts("a"), only_ok(5.0), "{}", s.text);
    assert_eq!(s.upstream_attempts("b"), only_ok(4.0), "{}", s.text);
    let expected: BTreeMap<_, _> = [(key("http", "eth_blockNumber", "ok"), 9.0)].into();
    assert_eq!(s.requests(), expected, "{}", s.text);

    // Nobody left: calls are unavailable, no failover is counted, no attempt made.
    b.refuse().await;
    gw.wait_readyz(503).await;
    let (code, message) = error_of(&gw.call("eth_blockNumber", json!([])).await);
    assert_eq!(code, -32002, "{message}");
    let s = scrape(&gw).await;
    let expected: BTreeMap<_, _> = [
        (key("http", "eth_blockNumber", "ok"), 9.0),
        (key("http", "eth_blockNumber", "unavailable"), 1.0),
    ]
    .into();
    assert_eq!(s.requests(), expected, "{}", s.text);
    s.assert("ethgate_upstream_up", &[("upstream", "b")], 0.0);
    s.assert("ethgate_failovers_total", &[("kind", "request")], 1.0);
    assert_eq!(s.upstream_attempts("a"), only_ok(5.0), "{}", s.text);
    assert_eq!(s.upstream_attempts("b"), only_ok(4.0), "{}", s.text);
}

#[tokio::test]
async fn a_lagging_upstream_shows_its_lag_and_leaves_rotation() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    gw.wait_selected("a").await;
    b.set_head(108);
    gw.wait_state("a", "lagging").await;
    gw.wait_selected("b").await;
    let s = scrape_until(&gw, "a request failover", |s| {
        s.get("ethgate_failovers_total", &[("kind", "request")]) != Some(0.0)
    })
    .await;
    s.assert("ethgate_upstream_head", &[("upstream", "a")], 100.0);
    s.assert("ethgate_upstream_head", &[("upstream", "b")], 108.0);
    s.assert("ethgate_upstream_lag_blocks", &[("upstream", "a")], 8.0);
    s.assert("ethgate_upstream_lag_blocks", &[("upstream", "b")], 0.0);
    s.assert("ethgate_upstream_up", &[("upstream", "a")], 0.0);
    s.assert("ethgate_upstream_up", &[("upstream", "b")], 1.0);
    s.assert("ethgate_failovers_total", &[("kind", "request")], 1.0);
}

/// Connects from `source`, sends one request, returns every byte the server wrote back.
async fn exchange_from(source: IpAddr, target: SocketAddr) -> Vec<u8> {
    const REQUEST: &[u8] = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 51\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\"}";
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    let mut stream = socket.connect(target).await.expect("connect");
    // A denied peer may see its write fail: the empty answer is what counts.
    let _ = stream.write_all(REQUEST).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "server neither answered nor closed");
    answer
}

#[tokio::test]
async fn denied_connections_are_counted_by_reason() {
    let a = MockUpstream::start().await;
    let config = GatewayConfig::new()
        .access("allow", r#"["127.0.0.1/32"]"#)
        .upstream("a", &a, 0);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    let denied: IpAddr = "127.0.0.2".parse().expect("ip");
    for _ in 0..3 {
        let answer = exchange_from(denied, gw.addr()).await;
        assert!(answer.is_empty(), "denied peer got {answer:?}");
    }
    let served = exchange_from("127.0.0.1".parse().expect("ip"), gw.addr()).await;
    assert!(served.starts_with(b"HTTP/1.1 200"), "{served:?}");
    let s = scrape(&gw).await;
    s.assert(
        "ethgate_denied_connections_total",
        &[("reason", "not_allowed")],
        3.0,
    );
    s.assert(
        "ethgate_denied_connections_total",
        &[("reason", "proxy_header")],
        0.0,
    );
    let expected: BTreeMap<_, _> = [(key("http", "eth_blockNumber", "ok"), 1.0)].into();
    assert_eq!(s.requests(), expected, "{}", s.text);
}

fn ws_gauges(s: &Scrape) -> (Option<f64>, Option<f64>) {
    (
        s.get("ethgate_ws_connections", &[]),
        s.get("ethgate_subscriptions", &[("kind", "newHeads")]),
    )
}

#[tokio::test]
async fn websocket_sessions_subscriptions_gap_fills_and_duplicates() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start(&GatewayConfig::new().upstream("a", &a, 0)).await;
    gw.wait_all_healthy().await;
    a.wait_for_subscriptions("newHeads", 1).await;

    let mut heads = WsClient::connect(&gw.ws_url()).await;
    let id = heads.subscribe(json!(["newHeads"])).await;
    let mut plain = WsClient::connect(&gw.ws_url()).await;
    plain.call(json!(7), "eth_blockNumber", json!([])).await;
    let answer: Value = plain.next_json().await;
    assert_eq!(answer["id"], 7, "{answer}");
    assert!(answer["result"].is_string(), "{answer}");

    let s = scrape_until(&gw, "2 sessions, 1 newHeads subscription", |s| {
        ws_gauges(s) == (Some(2.0), Some(1.0))
    })
    .await;
    for kind in ["logs", "newPendingTransactions", "syncing"] {
        s.assert("ethgate_subscriptions", &[("kind", kind)], 0.0);
    }
    let expected: BTreeMap<_, _> = [
        (key("ws", "eth_subscribe", "ok"), 1.0),
        (key("ws", "eth_blockNumber", "ok"), 1.0),
    ]
    .into();
    assert_eq!(s.requests(), expected, "{}", s.text);
    assert_eq!(s.upstream_attempts("a"), only_ok(1.0), "{}", s.text);
    s.assert(
        "ethgate_request_duration_seconds_count",
        &[("transport", "ws")],
        2.0,
    );
    s.assert(
        "ethgate_upstream_request_duration_seconds_count",
        &[("upstream", "a")],
        1.0,
    );

    a.emit_new_head(101);
    assert_eq!(heads.head_numbers(&id, 1).await, [101]);
    a.emit_new_head(101);
    a.emit_new_head(104);
    assert_eq!(heads.head_numbers(&id, 3).await, [102, 103, 104]);
    let s = scrape(&gw).await;
    s.assert("ethgate_duplicates_dropped_total", &[], 1.0);
    s.assert("ethgate_gap_filled_blocks_total", &[], 2.0);
    s.assert("ethgate_failovers_total", &[("kind", "subscription")], 0.0);

    heads.close().await;
    scrape_until(&gw, "1 session, no subscription", |s| {
        ws_gauges(s) == (Some(1.0), Some(0.0))
    })
    .await;
    plain.close().await;
    scrape_until(&gw, "no session", |s| {
        ws_gauges(s) == (Some(0.0), Some(0.0))
    })
    .await;
}

#[test]
fn the_parser_rejects_malformed_expositions() {
    let good =
        "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 0\n";
    assert_eq!(Scrape::parse(good).samples.len(), 2);
    let bad = [
        "x_total 1\n",                                              // no TYPE
        "# TYPE x counter\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n",           // duplicate series
        "# TYPE x counter\nx 1",                                    // no final newline
        "# TYPE x counter\nx  1\n",                                 // two spaces
        "# TYPE x gauge\nx{a=1} 1\n",                               // unquoted value
        "# TYPE x gauge\nx one\n",                                  // not a number
        "# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a=\"b\"} 1\n", // not grouped
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
    ];
    for text in bad {
        let result = std::panic::catch_unwind(|| Scrape::parse(text));
        assert!(result.is_err(), "accepted {text:?}");
    }
}
