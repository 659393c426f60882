//! End-to-end: a lockstep anvil devnet where one node is configured WebSocket-only and one
//! HTTP-only. Killing the other nodes leaves each of them serving calls and newHeads
//! subscriptions in turn, with no gap or repeat in the heads a client sees.
//!
//! Needs anvil (`scripts/install-test-deps.sh`); without it the test prints why and passes,
//! unless `CI` is set.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::devnet::Devnet;
use support::e2e::deps_present;
use support::gateway::{result_of, Gateway};
use support::ws_client::WsClient;

/// Block time of the devnet.
const BLOCK_TIME: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_only_and_http_only_nodes_serve_calls_and_subscriptions_through_kills() {
    if !deps_present("e2e_transports", false) {
        return;
    }
    let devnet = Arc::new(Devnet::start(3).await.expect("devnet"));
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"3s\"\ndrain_delay = \"0s\"\n\
         subscription_grace = \"10s\"\n\
         [health]\ninterval = \"300ms\"\ntimeout = \"250ms\"\nfailure_threshold = 1\nrecovery_threshold = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"both\"\nhttp = \"{}\"\nws = \"{}\"\npriority = 0\n\
         [[upstream]]\nname = \"ws-only\"\nws = \"{}\"\npriority = 1\n\
         [[upstream]]\nname = \"http-only\"\nhttp = \"{}\"\npriority = 2\n",
        devnet.http_url(0),
        devnet.ws_url(0),
        devnet.ws_url(1),
        devnet.http_url(2),
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_all_healthy().await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    let miner = devnet.spawn_miner(BLOCK_TIME);

    let mut heads = client.head_numbers(&id, 3).await;
    devnet.kill(0).await;
    gw.wait_state("both", "unreachable").await;
    heads.extend(client.head_numbers(&id, 4).await);
    let answer = gw.call("eth_blockNumber", json!([])).await;
    assert!(
        result_of(&answer).is_string(),
        "served by the ws-only node: {answer}"
    );
    let status = gw.status().await;
    assert_eq!(status["feed"]["source"], "ws-only", "{status}");

    devnet.kill(1).await;
    gw.wait_state("ws-only", "unreachable").await;
    heads.extend(client.head_numbers(&id, 4).await);
    let answer = gw
        .call("eth_getBlockByNumber", json!(["latest", false]))
        .await;
    assert!(
        result_of(&answer)["hash"].is_string(),
        "served by the http-only node: {answer}"
    );
    let status = gw.status().await;
    assert_eq!(status["feed"]["source"], "http-only", "{status}");
    miner.stop().await;

    for pair in heads.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "heads without gaps or repeats: {heads:?}"
        );
    }
}
