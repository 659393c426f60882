//! Upstream health: lagging, syncing, stalled, unreachable and wrong-chain upstreams leave rotation (state in
//! /status, no traffic) and come back when fixed.

mod support;

use std::time::Duration;
use support::gateway::{
    error_of, result_of, tagged_balance, tagged_pair, upstream_entry, Gateway, GatewayConfig,
    TAGGED_ADDRESS,
};
use support::mock::MockUpstream;

/// `a` is out of rotation: /status says so and calls go to `b` only.
async fn assert_out_of_rotation(gw: &Gateway, a: &MockUpstream, state: &str) {
    let status = gw.wait_state("a", state).await;
    let entry = upstream_entry(&status, "a").expect("a in /status");
    assert_eq!(entry["selected"], false, "{status}");
    let before = a.calls("eth_getBalance");
    for _ in 0..3 {
        assert_eq!(result_of(&tagged_balance(gw).await), "0xb");
    }
    assert_eq!(
        a.calls("eth_getBalance"),
        before,
        "no traffic to a {state} upstream"
    );
}

/// `a` is back: healthy, and it serves once `b` goes away.
async fn assert_back_in_rotation(gw: &Gateway, a: &MockUpstream, b: &MockUpstream) {
    gw.wait_state("a", "healthy").await;
    b.refuse().await;
    gw.wait_state("b", "unreachable").await;
    assert_eq!(result_of(&tagged_balance(gw).await), "0xa");
    assert!(a.calls("eth_getBalance") >= 1);
}

#[tokio::test]
async fn lagging_upstream_leaves_rotation_and_returns() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.set_head(90);
    assert_out_of_rotation(&gw, &a, "lagging").await;
    let status = gw.status().await;
    let entry = upstream_entry(&status, "a").expect("a in /status");
    assert_eq!(entry["head"], 90, "{status}");
    assert_eq!(entry["lag"], 10, "{status}");
    a.set_head(100);
    assert_back_in_rotation(&gw, &a, &b).await;
}

#[tokio::test]
async fn lag_within_max_lag_blocks_stays_in_rotation() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.set_head(95);
    gw.wait_status("a seen at head 95", |s| {
        upstream_entry(s, "a").is_some_and(|u| u["head"] == 95)
    })
    .await;
    // Let a few probes pass: a lag of 5 is not more than max_lag_blocks = 5.
    let probes = a.calls("eth_blockNumber");
    a.wait_for_calls("eth_blockNumber", probes + 3).await;
    assert_eq!(gw.upstream_status("a").await["state"], "healthy");
    // a stays selected and serves reads at a block it has. (A read at `latest` may go to b
    // once b's higher head has been served: reads never go back; see tests/consistency.rs.)
    let at_number = gw
        .call(
            "eth_getBalance",
            serde_json::json!([TAGGED_ADDRESS, "0x5a"]),
        )
        .await;
    assert_eq!(result_of(&at_number), "0xa");
}

#[tokio::test]
async fn syncing_upstream_leaves_rotation_and_returns() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.set_syncing(true);
    assert_out_of_rotation(&gw, &a, "syncing").await;
    a.set_syncing(false);
    assert_back_in_rotation(&gw, &a, &b).await;
}

#[tokio::test]
async fn stalled_upstream_leaves_rotation_and_returns() {
    let (a, b) = tagged_pair().await;
    let cfg = GatewayConfig::new()
        .health("no_new_heads", "\"1s\"")
        .health("max_lag_blocks", "1000000");
    let gw = Gateway::start_pair(cfg, &a, &b).await;
    b.advance_every(Some(Duration::from_millis(20)));
    assert_out_of_rotation(&gw, &a, "stalled").await;
    a.set_head(b.head());
    a.advance_every(Some(Duration::from_millis(20)));
    assert_back_in_rotation(&gw, &a, &b).await;
}

#[tokio::test]
async fn unreachable_upstream_leaves_rotation_and_returns() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.refuse().await;
    assert_out_of_rotation(&gw, &a, "unreachable").await;
    a.restore().await;
    assert_back_in_rotation(&gw, &a, &b).await;
}

#[tokio::test]
async fn upstream_answering_503_becomes_unreachable() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.set_http_status(Some(503));
    assert_out_of_rotation(&gw, &a, "unreachable").await;
    a.set_http_status(None);
    assert_back_in_rotation(&gw, &a, &b).await;
}

#[tokio::test]
async fn upstream_on_other_chain_than_configured_is_never_routed() {
    let (a, b) = tagged_pair().await;
    a.set_chain_id(5);
    let cfg = GatewayConfig::new()
        .chain_id(1)
        .upstream("a", &a, 0)
        .upstream("b", &b, 1);
    let gw = Gateway::start(&cfg).await;
    gw.wait_state("b", "healthy").await;
    assert_out_of_rotation(&gw, &a, "wrong_chain").await;

    // With b gone, a wrong-chain upstream is still not used.
    b.refuse().await;
    gw.wait_state("b", "unreachable").await;
    let (code, message) = error_of(&tagged_balance(&gw).await);
    assert_eq!(code, -32002);
    assert!(message.starts_with("no healthy upstream"), "{message}");
    assert_eq!(a.calls("eth_getBalance"), 0);

    a.set_chain_id(1);
    gw.wait_state("a", "healthy").await;
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xa");
}

#[tokio::test]
async fn upstream_disagreeing_with_verified_chain_leaves_rotation() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    assert_eq!(gw.status().await["chain_id"], 1);
    a.set_chain_id(5);
    assert_out_of_rotation(&gw, &a, "wrong_chain").await;
    assert_eq!(
        gw.status().await["chain_id"],
        1,
        "the verified chain id does not move"
    );
    a.set_chain_id(1);
    assert_back_in_rotation(&gw, &a, &b).await;
}

#[tokio::test]
async fn wrong_chain_upstream_stays_out_while_otherwise_fine() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.set_chain_id(5);
    gw.wait_state("a", "wrong_chain").await;
    // Several more successful probes (head, syncing) do not bring it back: only its chain id can.
    let probes = a.calls("eth_chainId");
    a.wait_for_calls("eth_chainId", probes + 3).await;
    assert_out_of_rotation(&gw, &a, "wrong_chain").await;
}

#[tokio::test]
async fn readyz_follows_rotation() {
    let (a, b) = tagged_pair().await;
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    gw.wait_readyz(200).await;
    a.refuse().await;
    b.refuse().await;
    gw.wait_readyz(503).await;
    let status = gw.status().await;
    assert!(
        status["upstreams"]
            .as_array()
            .is_some_and(|us| us.iter().all(|u| u["state"] == "unreachable")),
        "{status}"
    );
    b.restore().await;
    gw.wait_readyz(200).await;
    assert_eq!(result_of(&tagged_balance(&gw).await), "0xb");
}
