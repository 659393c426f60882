//! Request failover over HTTP: which failures move a call to the next upstream, which are passed through,
//! and that writes are never sent twice.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::gateway::{
    error_of, result_of, tagged_balance, tagged_pair, Gateway, GatewayConfig, TAGGED_ADDRESS,
};

/// Long enough that only a proxy timeout can end the wait; cancelled when the mock drops.
const FOREVER: Duration = Duration::from_secs(300);

async fn send_tx(gw: &Gateway) -> Value {
    gw.call("eth_sendRawTransaction", json!(["0x02f86b0180843b9aca00"]))
        .await
}

#[tokio::test]
async fn refused_connection_fails_over_to_next_upstream() {
    let (a, b) = tagged_pair().await;
    // No pooled connection can survive `refuse`: every attempt on `a` is a fresh connect.
    a.set_close_connections(true);
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.refuse().await;
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(b.calls("eth_getBalance"), 1);
}

#[tokio::test]
async fn reset_connection_fails_over_for_reads() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.reset_next_for("eth_getBalance", 1);
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(a.calls("eth_getBalance"), 1, "the read was first sent to a");
    assert_eq!(b.calls("eth_getBalance"), 1);
}

#[tokio::test]
async fn timed_out_attempt_fails_over_for_reads() {
    let (a, b) = tagged_pair().await;
    let cfg = GatewayConfig::new().server("request_timeout", "\"1s\"");
    let gw = Gateway::start_pair(cfg, &a, &b).await;
    a.set_delay_for("eth_getBalance", Some(FOREVER));
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(a.calls("eth_getBalance"), 1, "the read was first sent to a");
    assert_eq!(b.calls("eth_getBalance"), 1);
}

#[tokio::test]
async fn silent_upstream_fails_over() {
    let (a, b) = tagged_pair().await;
    let cfg = GatewayConfig::new().server("request_timeout", "\"1s\"");
    let gw = Gateway::start_pair(cfg, &a, &b).await;
    a.go_silent(true);
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(b.calls("eth_getBalance"), 1);
}

async fn http_status_fails_over(status: u16) {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.set_http_status_for("eth_getBalance", Some(status));
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(a.calls("eth_getBalance"), 1, "the read was first sent to a");
    assert_eq!(b.calls("eth_getBalance"), 1);
}

#[tokio::test]
async fn http_503_fails_over() {
    http_status_fails_over(503).await;
}

#[tokio::test]
async fn http_500_fails_over() {
    http_status_fails_over(500).await;
}

#[tokio::test]
async fn http_429_fails_over() {
    http_status_fails_over(429).await;
}

#[tokio::test]
async fn execution_reverted_is_passed_through_unchanged() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    let data = "0x08c379a00000000000000000000000000000000000000000000000000000000000000020";
    a.fail_method_with_data("eth_call", 3, "execution reverted: nope", json!(data));
    let answer = gw
        .call(
            "eth_call",
            json!([{"to": TAGGED_ADDRESS, "data": "0x"}, "latest"]),
        )
        .await;
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 3, "message": "execution reverted: nope", "data": data}})
    );
    assert_eq!(a.calls("eth_call"), 1);
    assert_eq!(
        b.calls("eth_call"),
        0,
        "an answered error must not be retried"
    );
}

#[tokio::test]
async fn server_error_from_healthy_upstream_is_passed_through() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    let message = "insufficient funds for gas * price + value";
    a.fail_method("eth_estimateGas", -32000, message);
    let answer = gw
        .call("eth_estimateGas", json!([{"to": TAGGED_ADDRESS}]))
        .await;
    assert_eq!(error_of(&answer), (-32000, message.to_string()));
    assert_eq!(
        b.calls("eth_estimateGas"),
        0,
        "an answered error must not be retried"
    );
}

async fn lacking_data_is_retried(message: &str) {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.fail_method("eth_getBalance", -32000, message);
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(a.calls("eth_getBalance"), 1);
    assert_eq!(b.calls("eth_getBalance"), 1);
}

#[tokio::test]
async fn header_not_found_is_retried_on_another_upstream() {
    lacking_data_is_retried("header not found").await;
}

#[tokio::test]
async fn missing_trie_node_is_retried_on_another_upstream() {
    lacking_data_is_retried(
        "missing trie node 5e1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9 (path )",
    )
    .await;
}

#[tokio::test]
async fn lacking_data_is_not_retried_on_an_upstream_behind() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    b.set_head(97);
    gw.wait_status("b healthy at 97", |s| {
        support::gateway::upstream_entry(s, "b")
            .is_some_and(|u| u["head"] == 97 && u["state"] == "healthy")
    })
    .await;
    a.fail_method("eth_getBalance", -32000, "header not found");
    let answer = tagged_balance(&gw).await;
    assert_eq!(error_of(&answer), (-32000, "header not found".to_string()));
    assert_eq!(
        b.calls("eth_getBalance"),
        0,
        "b is behind the head a lacked"
    );
}

#[tokio::test]
async fn send_raw_transaction_reset_on_selected_is_not_resent_and_another_nodes_hash_answers() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.reset_next_for("eth_sendRawTransaction", 1);
    let answer = send_tx(&gw).await;
    assert_eq!(result_of(&answer), support::mock::TX_HASH);
    assert_eq!(
        a.calls("eth_sendRawTransaction"),
        1,
        "a write that may have been sent must not be sent again"
    );
    assert_eq!(b.calls("eth_sendRawTransaction"), 1, "broadcast to b once");
}

#[tokio::test]
async fn send_raw_transaction_timeout_on_selected_is_not_resent() {
    let (a, b) = tagged_pair().await;
    let cfg = GatewayConfig::new().server("request_timeout", "\"1s\"");
    let gw = Gateway::start_pair(cfg, &a, &b).await;
    a.set_delay_for("eth_sendRawTransaction", Some(FOREVER));
    let answer = send_tx(&gw).await;
    assert_eq!(result_of(&answer), support::mock::TX_HASH);
    assert_eq!(a.calls("eth_sendRawTransaction"), 1);
    assert_eq!(b.calls("eth_sendRawTransaction"), 1);
}

#[tokio::test]
async fn send_raw_transaction_is_retried_when_connection_refused() {
    let (a, b) = tagged_pair().await;
    a.set_close_connections(true);
    let b_hash = "0x00000000000000000000000000000000000000000000000000000000000000bb";
    b.set_result("eth_sendRawTransaction", json!(b_hash));
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.refuse().await;
    assert_eq!(result_of(&send_tx(&gw).await), b_hash);
    assert_eq!(b.calls("eth_sendRawTransaction"), 1);
}

#[tokio::test]
async fn selection_is_sticky_and_does_not_flap_back() {
    let (a, b) = tagged_pair().await;
    a.set_close_connections(true);
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    for _ in 0..5 {
        assert_eq!(result_of(&tagged_balance(&gw).await), "0xa");
    }
    assert_eq!(
        b.calls("eth_getBalance"),
        0,
        "priority 0 serves while healthy"
    );
    gw.wait_selected("a").await;

    a.refuse().await;
    gw.wait_state("a", "unreachable").await;
    for _ in 0..3 {
        assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    }
    a.restore().await;
    gw.wait_state("a", "healthy").await;
    let a_before = a.calls("eth_getBalance");
    for _ in 0..5 {
        assert_eq!(
            result_of(&tagged_balance(&gw).await),
            "0xb",
            "traffic stays on b"
        );
    }
    assert_eq!(a.calls("eth_getBalance"), a_before);
    let status = gw.wait_selected("b").await;
    let a_entry = support::gateway::upstream_entry(&status, "a").expect("a in /status");
    assert_eq!(a_entry["selected"], false);
}

#[tokio::test]
async fn reset_mid_response_fails_over_for_reads() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.reset_mid_response_for("eth_getBalance", 1);
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(a.calls("eth_getBalance"), 1, "the read was first sent to a");
    assert_eq!(b.calls("eth_getBalance"), 1);
}

#[tokio::test]
async fn send_raw_transaction_is_not_retried_after_reset_mid_response() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.reset_mid_response_for("eth_sendRawTransaction", 1);
    let answer = send_tx(&gw).await;
    assert_eq!(result_of(&answer), support::mock::TX_HASH);
    assert_eq!(a.calls("eth_sendRawTransaction"), 1, "never resent to a");
    assert_eq!(b.calls("eth_sendRawTransaction"), 1, "broadcast to b once");
}

fn batch(calls: &[(&str, Value)]) -> String {
    let items: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (method, params))| {
            json!({"jsonrpc": "2.0", "id": i + 1, "method": method, "params": params})
        })
        .collect();
    Value::Array(items).to_string()
}

#[tokio::test]
async fn batch_of_reads_fails_over_as_a_whole() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.reset_next_for("eth_getBalance", 1);
    let body = batch(&[
        ("eth_getBalance", json!([TAGGED_ADDRESS, "latest"])),
        ("eth_call", json!([{"to": TAGGED_ADDRESS}, "latest"])),
    ]);
    let answer = gw.rpc(&body).await;
    assert_eq!(
        answer,
        json!([
            {"jsonrpc": "2.0", "id": 1, "result": "0xb"},
            {"jsonrpc": "2.0", "id": 2, "result": "0x"},
        ])
    );
    let on_b = b.requests_with("eth_getBalance");
    assert_eq!(on_b.len(), 1, "retried as one batch");
    assert_eq!(on_b[0].calls.len(), 2);
}

#[tokio::test]
async fn batch_with_a_write_is_broadcast_once_per_node_and_answered_by_b_after_reset() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.reset_next_for("eth_sendRawTransaction", 1);
    let body = batch(&[
        ("eth_getBalance", json!([TAGGED_ADDRESS, "latest"])),
        ("eth_sendRawTransaction", json!(["0x02f86b0180843b9aca00"])),
    ]);
    let answer = gw.rpc(&body).await;
    assert_eq!(a.calls("eth_sendRawTransaction"), 1, "never resent to a");
    assert_eq!(
        b.calls("eth_sendRawTransaction"),
        1,
        "broadcast to b once: {answer}"
    );
    let items = answer.as_array().expect("batch answer");
    assert_eq!(items.len(), 2, "{answer}");
    assert_eq!(
        (items[0]["id"].clone(), items[1]["id"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(
        items[0]["result"], "0xb",
        "the read answered by b: {answer}"
    );
    assert_eq!(items[1]["result"], support::mock::TX_HASH, "{answer}");
}

/// Probes every 30s (after the first ones), so only real traffic can change a's health during the test.
/// (A refused connect cannot be told apart from a failed probe, so a reset is the passive signal pinned here.)
fn passive_config() -> GatewayConfig {
    GatewayConfig::new()
        .server("request_timeout", "\"1s\"")
        .health("interval", "\"30s\"")
        .health("timeout", "\"2s\"")
        .health("failure_threshold", "1")
}

#[tokio::test]
async fn reset_on_real_traffic_takes_upstream_out() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(passive_config(), &a, &b).await;
    a.reset_next_for("eth_getBalance", 1);
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    gw.wait_state("a", "unreachable").await;
}

/// A slow call is the caller's problem: it fails over, but the node stays in rotation.
#[tokio::test]
async fn timeout_on_real_traffic_fails_over_but_keeps_upstream_in_rotation() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(passive_config(), &a, &b).await;
    a.set_delay_for("eth_getBalance", Some(FOREVER));
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(a.calls("eth_getBalance"), 1);
    let a_status = gw.upstream_status("a").await;
    assert_eq!(a_status["state"], "healthy");
    assert_eq!(a_status["selected"], true);
}

/// architecture.md: "the lowest-priority-number healthy upstream serves until it leaves rotation".
#[tokio::test]
async fn one_failed_request_does_not_move_traffic_off_a_healthy_upstream() {
    let (a, b) = tagged_pair().await;
    let cfg = GatewayConfig::new().health("failure_threshold", "3");
    let gw = Gateway::start_pair(cfg, &a, &b).await;
    a.reset_next_for("eth_getBalance", 1);
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
    assert_eq!(gw.upstream_status("a").await["state"], "healthy");
    for _ in 0..3 {
        assert_eq!(
            result_of(&tagged_balance(&gw).await),
            "0xa",
            "a is still healthy and first in priority"
        );
    }
}
