//! Calls in flight on an upstream that leaves rotation move at once (reads) or are answered at once
//! (writes), over HTTP and WebSocket; and optional hedging of slow reads.
//!
//! The mock holds the call unanswered (a frozen node: socket open, nothing answered), then goes silent so
//! its probes fail and the health model takes it out. With `request_timeout` 30 s, health every 500 ms
//! and `failure_threshold` 2, detection takes about 1.5 s; every bound below (8 s) is far under
//! `request_timeout`, so only a call that waited for its timeout can break it.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::gateway::{
    error_of, result_of, tagged_balance, tagged_pair, Gateway, GatewayConfig, TAGGED_ADDRESS,
};
use support::mock::MockUpstream;
use support::ws_client::WsClient;

/// Longest a call may take when its upstream freezes: detection time plus a generous margin.
const MOVED_WITHIN: Duration = Duration::from_secs(8);
const SEND: &str = "eth_sendRawTransaction";

/// request_timeout 30 s; health every 500 ms, out after 2 failures.
fn frozen_node_config() -> GatewayConfig {
    GatewayConfig::new()
        .server("request_timeout", "\"30s\"")
        .health("interval", "\"500ms\"")
        .health("timeout", "\"400ms\"")
        .health("failure_threshold", "2")
}

/// One series' value in `/metrics` (0 when absent).
async fn metric(gw: &Gateway, series: &str) -> f64 {
    let (code, body) = gw.admin_get("/metrics").await;
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body).to_string();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Freezes `a` for everything: its held calls stay unanswered and its probes go unanswered.
fn freeze(a: &MockUpstream) {
    a.go_silent(true);
}

#[tokio::test]
async fn http_read_in_flight_moves_when_its_upstream_freezes() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(frozen_node_config(), &a, &b).await;
    a.hold("eth_getBalance");
    let started = Instant::now();
    let call = tokio::spawn(async move {
        let answer = tagged_balance(&gw).await;
        (answer, gw)
    });
    a.wait_for_calls("eth_getBalance", 1).await;
    freeze(&a);
    let (answer, gw) = call.await.expect("call task");
    let took = started.elapsed();
    assert_eq!(result_of(&answer), "0xb", "moved to b");
    assert!(took < MOVED_WITHIN, "the read waited {took:?}");
    assert_eq!(a.calls("eth_getBalance"), 1);
    assert_eq!(b.calls("eth_getBalance"), 1);
    assert_eq!(gw.upstream_status("a").await["state"], "unreachable");
    assert_eq!(
        metric(&gw, "ethgate_failovers_total{kind=\"in_flight\"}").await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "ethgate_upstream_requests_total{upstream=\"a\",result=\"abandoned\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn ws_read_in_flight_moves_when_its_upstream_freezes() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(frozen_node_config(), &a, &b).await;
    a.hold("eth_getBalance");
    let mut ws = WsClient::connect(&gw.ws_url()).await;
    let started = Instant::now();
    ws.call(
        json!(7),
        "eth_getBalance",
        json!([TAGGED_ADDRESS, "latest"]),
    )
    .await;
    a.wait_for_calls("eth_getBalance", 1).await;
    freeze(&a);
    let answer = ws.next_json().await;
    let took = started.elapsed();
    assert_eq!(answer, json!({"jsonrpc": "2.0", "id": 7, "result": "0xb"}));
    assert!(took < MOVED_WITHIN, "the read waited {took:?}");
    assert_eq!(a.calls("eth_getBalance"), 1);
    assert_eq!(b.calls("eth_getBalance"), 1);
    assert_eq!(
        metric(&gw, "ethgate_failovers_total{kind=\"in_flight\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_batch_in_flight_moves_as_a_whole() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(frozen_node_config(), &a, &b).await;
    a.hold("eth_getBalance");
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [TAGGED_ADDRESS, "latest"]},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_getCode", "params": [TAGGED_ADDRESS, "latest"]},
    ]);
    let call = tokio::spawn(async move { (gw.rpc(&batch.to_string()).await, gw) });
    a.wait_for_calls("eth_getBalance", 1).await;
    freeze(&a);
    let (answer, _gw) = call.await.expect("call task");
    assert_eq!(answer[0]["result"], "0xb", "{answer}");
    assert_eq!(answer[1]["id"], 2, "{answer}");
    let moved = b.requests_with("eth_getBalance");
    assert_eq!(moved.len(), 1, "one request to b");
    assert!(moved[0].batch, "still a batch");
    let methods: Vec<&str> = moved[0].calls.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(methods, ["eth_getBalance", "eth_getCode"]);
}

/// Not only unreachable: any way out of rotation moves the call (here the node falls behind).
#[tokio::test]
async fn a_read_in_flight_moves_when_its_upstream_starts_lagging() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(frozen_node_config(), &a, &b).await;
    a.hold("eth_getBalance");
    let call = tokio::spawn(async move { (tagged_balance(&gw).await, gw) });
    a.wait_for_calls("eth_getBalance", 1).await;
    b.set_head(a.head() + 50);
    let (answer, gw) = call.await.expect("call task");
    assert_eq!(result_of(&answer), "0xb");
    assert_eq!(gw.upstream_status("a").await["state"], "lagging");
}

/// The selected node freezes with a send in flight; the other node refuses the transaction. The client
/// gets that answer once the frozen node is out, not after request_timeout, and no node gets it twice.
#[tokio::test]
async fn a_send_does_not_wait_for_a_frozen_node_and_is_never_resent() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(frozen_node_config(), &a, &b).await;
    a.hold(SEND);
    b.fail_method(SEND, -32000, "nonce too low");
    let started = Instant::now();
    let call = tokio::spawn(async move { (gw.call(SEND, json!(["0x02f86b"])).await, gw) });
    a.wait_for_calls(SEND, 1).await;
    freeze(&a);
    let (answer, gw) = call.await.expect("call task");
    let took = started.elapsed();
    assert_eq!(error_of(&answer), (-32000, "nonce too low".to_string()));
    assert!(took < MOVED_WITHIN, "the send waited {took:?}");
    // a comes back; nothing is sent to it again.
    a.go_silent(false);
    a.release(SEND);
    gw.wait_state("a", "healthy").await;
    assert_eq!(a.calls(SEND), 1, "never repeated to the frozen node");
    assert_eq!(b.calls(SEND), 1);
}

/// Another node's acceptance answers at once, whatever the frozen node does.
#[tokio::test]
async fn a_send_accepted_by_another_node_is_answered_at_once() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(frozen_node_config(), &a, &b).await;
    a.hold(SEND);
    let answer = gw.call(SEND, json!(["0x02f86b"])).await;
    assert_eq!(result_of(&answer), support::mock::TX_HASH);
    assert_eq!(a.calls(SEND), 1);
    assert_eq!(b.calls(SEND), 1);
    assert_eq!(gw.upstream_status("a").await["state"], "healthy");
}

/// The only node that got the write freezes: -32002 with the reason in `data`, at once.
#[tokio::test]
async fn a_write_whose_node_leaves_rotation_gets_32002_with_the_reason() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start(&frozen_node_config().upstream("a", &a, 0)).await;
    gw.wait_all_healthy().await;
    a.hold(SEND);
    let started = Instant::now();
    let call = tokio::spawn(async move { (gw.call(SEND, json!(["0x02f86b"])).await, gw) });
    a.wait_for_calls(SEND, 1).await;
    freeze(&a);
    let (answer, _gw) = call.await.expect("call task");
    let took = started.elapsed();
    assert!(took < MOVED_WITHIN, "the write waited {took:?}");
    assert_eq!(answer["error"]["code"], -32002, "{answer}");
    let data = answer["error"]["data"].as_str().unwrap_or_default();
    assert!(
        data.contains("a: left rotation") && data.contains("unreachable"),
        "{answer}"
    );
    assert!(data.contains("not retried"), "{answer}");
    assert_eq!(a.calls(SEND), 1);
}

// ---- hedging ----------------------------------------------------------------------------------------------

fn hedged(after: &str) -> GatewayConfig {
    GatewayConfig::new()
        .server("request_timeout", "\"30s\"")
        .server("hedge_after", &format!("\"{after}\""))
}

#[tokio::test]
async fn a_slow_read_is_hedged_to_the_next_upstream_and_the_hedge_wins() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(hedged("200ms"), &a, &b).await;
    a.hold("eth_getBalance");
    let started = Instant::now();
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert!(started.elapsed() < MOVED_WITHIN);
    assert_eq!(a.calls("eth_getBalance"), 1);
    assert_eq!(b.calls("eth_getBalance"), 1);
    assert_eq!(gw.upstream_status("a").await["state"], "healthy");
    assert_eq!(
        metric(&gw, "ethgate_hedges_total{result=\"sent\"}").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "ethgate_hedges_total{result=\"won\"}").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "ethgate_failovers_total{kind=\"in_flight\"}").await,
        0.0,
        "a hedge is not a failover"
    );
}

#[tokio::test]
async fn a_read_answered_before_hedge_after_is_sent_once() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(hedged("5s"), &a, &b).await;
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xa");
    assert_eq!(b.calls("eth_getBalance"), 0);
    assert_eq!(
        metric(&gw, "ethgate_hedges_total{result=\"sent\"}").await,
        0.0
    );
}

/// When the first upstream answers before the hedge, the hedge is sent but does not win.
#[tokio::test]
async fn a_hedge_that_loses_is_counted_sent_not_won() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(hedged("100ms"), &a, &b).await;
    a.set_delay_for("eth_getBalance", Some(Duration::from_millis(400)));
    b.hold("eth_getBalance");
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xa");
    assert_eq!(b.calls("eth_getBalance"), 1, "the hedge went out");
    assert_eq!(
        metric(&gw, "ethgate_hedges_total{result=\"sent\"}").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "ethgate_hedges_total{result=\"won\"}").await,
        0.0
    );
    assert_eq!(
        metric(
            &gw,
            "ethgate_upstream_requests_total{upstream=\"b\",result=\"abandoned\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn hedging_is_off_by_default() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.set_delay_for("eth_getBalance", Some(Duration::from_millis(600)));
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xa");
    assert_eq!(b.calls("eth_getBalance"), 0);
    assert_eq!(
        metric(&gw, "ethgate_hedges_total{result=\"sent\"}").await,
        0.0
    );
}

/// Writes are broadcast once per node and never hedged.
#[tokio::test]
async fn writes_are_never_hedged() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(hedged("50ms"), &a, &b).await;
    a.set_delay_for(SEND, Some(Duration::from_millis(300)));
    b.set_delay_for(SEND, Some(Duration::from_millis(300)));
    let answer: Value = gw.call(SEND, json!(["0x02f86b"])).await;
    assert_eq!(result_of(&answer), support::mock::TX_HASH);
    assert_eq!((a.calls(SEND), b.calls(SEND)), (1, 1));
    assert_eq!(
        metric(&gw, "ethgate_hedges_total{result=\"sent\"}").await,
        0.0
    );
}
