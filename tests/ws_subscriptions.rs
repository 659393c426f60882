//! Subscriptions over WebSocket against scriptable mock upstreams: ids owned by ethgate,
//! heads in order without gaps or duplicates across failovers, reorgs, logs exactly once.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::gateway::{Gateway, GatewayConfig};
use support::http::RpcError;
use support::mock::{block_hash, header, MockUpstream};
use support::ws_client::WsClient;

const ADDRESS: &str = "0x00000000000000000000000000000000000000aa";
const TOPIC: &str = "0x00000000000000000000000000000000000000000000000000000000000000ee";

/// Hash of block `n` on fork `branch` (branch 0 is the mocks' main chain).
fn hash_on(n: u64, branch: u64) -> String {
    if branch == 0 {
        block_hash(n)
    } else {
        format!("0x{branch:016x}{n:048x}")
    }
}

/// Header `n` on `branch`, whose parent is on `parent_branch`.
fn fork_header(n: u64, branch: u64, parent_branch: u64) -> Value {
    let mut h = header(n);
    h["hash"] = json!(hash_on(n, branch));
    h["parentHash"] = json!(hash_on(n - 1, parent_branch));
    h
}

/// One log of block `hash` at number `n`.
fn log_of(n: u64, hash: &str) -> Value {
    json!({
        "address": ADDRESS, "topics": [TOPIC], "data": format!("0x{n:064x}"),
        "blockNumber": format!("0x{n:x}"), "blockHash": hash, "transactionHash": format!("0x{n:064x}"),
        "transactionIndex": "0x0", "logIndex": "0x0", "removed": false,
    })
}

/// Makes `mock` serve `eth_getBlockByHash` for extra fork blocks and `eth_getLogs` by block hash.
fn serve_forks_and_logs(mock: &MockUpstream, forks: Vec<Value>) {
    let known: Arc<Mutex<HashMap<String, Value>>> = Arc::new(Mutex::new(
        forks
            .into_iter()
            .map(|h| (h["hash"].as_str().unwrap().to_string(), h))
            .collect(),
    ));
    mock.set_handler("eth_getBlockByHash", move |params| {
        let hash = params[0].as_str().unwrap_or_default().to_string();
        if let Some(h) = known.lock().unwrap().get(&hash) {
            return Ok(h.clone());
        }
        let n = (0..10_000u64).find(|n| block_hash(*n) == hash);
        Ok(n.map(header).unwrap_or(Value::Null))
    });
    mock.set_handler("eth_getLogs", |params| {
        let filter = &params[0];
        let hash = filter["blockHash"]
            .as_str()
            .ok_or(RpcError::new(-32602, "blockHash expected"))?;
        assert_eq!(
            filter["address"],
            json!([ADDRESS]),
            "normalised filter reaches the upstream"
        );
        Ok(json!([log_of(number_of(hash), hash)]))
    });
}

/// Block number of a main-chain or fork hash made by this file.
fn number_of(hash: &str) -> u64 {
    if hash.starts_with("0x000000000000000") {
        return u64::from_str_radix(&hash[18..], 16).unwrap_or(0);
    }
    (0..10_000u64).find(|n| block_hash(*n) == hash).unwrap_or(0)
}

fn config() -> GatewayConfig {
    GatewayConfig::new().server("subscription_grace", "\"5s\"")
}

async fn heads_client(gw: &Gateway) -> (WsClient, String) {
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    (client, id)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn metrics(gw: &Gateway) -> String {
    String::from_utf8_lossy(&gw.admin_get("/metrics").await.1).to_string()
}

#[tokio::test]
async fn heads_arrive_in_order_and_skipped_numbers_are_filled() {
    let a = MockUpstream::start().await;
    a.set_head(5);
    let gw = Gateway::start(&config().upstream("a", &a, 0)).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let (mut client, id) = heads_client(&gw).await;
    assert_eq!(id.len(), 34, "0x + 32 hex digits: {id}");
    a.emit_new_head(6);
    assert_eq!(client.head_numbers(&id, 1).await, [6]);
    a.emit_new_head(9);
    assert_eq!(client.head_numbers(&id, 3).await, [7, 8, 9]);
    assert_eq!(
        metric(&metrics(&gw).await, "ethgate_gap_filled_blocks_total"),
        2
    );
}

#[tokio::test]
async fn failover_to_a_node_ahead_fills_the_gap_and_drops_duplicates() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_head(10);
    b.set_head(10);
    let gw = Gateway::start_pair(config(), &a, &b).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let (mut client, id) = heads_client(&gw).await;
    a.emit_new_head(11);
    assert_eq!(client.head_numbers(&id, 1).await, [11]);
    b.set_head(14);
    a.refuse().await;
    b.wait_for_calls("eth_subscribe", 1).await;
    b.notify("newHeads", header(11));
    b.emit_new_head(14);
    assert_eq!(client.head_numbers(&id, 3).await, [12, 13, 14]);
    b.emit_new_head(15);
    assert_eq!(
        client.head_numbers(&id, 1).await,
        [15],
        "same subscription id after failover"
    );
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, "ethgate_failovers_total{kind=\"subscription\"}"),
        1
    );
    assert!(metric(&text, "ethgate_duplicates_dropped_total") >= 1);
}

#[tokio::test]
async fn failover_to_a_node_behind_delivers_nothing_until_it_passes() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_head(10);
    b.set_head(8);
    let gw = Gateway::start_pair(config(), &a, &b).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let (mut client, id) = heads_client(&gw).await;
    a.emit_new_head(10);
    assert_eq!(client.head_numbers(&id, 1).await, [10]);
    a.refuse().await;
    b.wait_for_calls("eth_subscribe", 1).await;
    b.emit_new_head(9);
    b.emit_new_head(10);
    b.emit_new_head(11);
    assert_eq!(
        client.head_numbers(&id, 1).await,
        [11],
        "9 and 10 were not delivered again"
    );
}

#[tokio::test]
async fn reorg_of_depth_one_retracts_logs_then_delivers_the_new_branch() {
    let a = MockUpstream::start().await;
    a.set_head(5);
    serve_forks_and_logs(&a, vec![fork_header(6, 1, 0)]);
    let gw = Gateway::start(&config().upstream("a", &a, 0)).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let heads = client.subscribe(json!(["newHeads"])).await;
    let mut logs_client = WsClient::connect(&gw.ws_url()).await;
    let logs = logs_client
        .subscribe(json!(["logs", {"address": ADDRESS, "fromBlock": "0x0", "toBlock": "latest"}]))
        .await;
    a.emit_new_head(5);
    a.emit_new_head(6);
    assert_eq!(client.head_numbers(&heads, 2).await, [5, 6]);
    let delivered = logs_client.notifications(&logs, 2).await;
    assert_eq!(delivered[1]["blockHash"], block_hash(6));
    a.notify("newHeads", fork_header(6, 1, 0));
    let new_head = client.notifications(&heads, 1).await;
    assert_eq!(new_head[0]["hash"], hash_on(6, 1));
    let reorged = logs_client.notifications(&logs, 2).await;
    assert_eq!(reorged[0]["blockHash"], block_hash(6));
    assert_eq!(reorged[0]["removed"], true);
    assert_eq!(reorged[1]["blockHash"], hash_on(6, 1));
    assert_eq!(reorged[1]["removed"], false);
}

#[tokio::test]
async fn reorg_of_depth_three_retracts_newest_first() {
    let a = MockUpstream::start().await;
    a.set_head(7);
    let fork = vec![
        fork_header(8, 2, 0),
        fork_header(9, 2, 2),
        fork_header(10, 2, 2),
    ];
    serve_forks_and_logs(&a, fork.clone());
    let gw = Gateway::start(&config().upstream("a", &a, 0)).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let logs = client
        .subscribe(json!(["logs", {"address": [ADDRESS]}]))
        .await;
    for n in 7..=10 {
        a.emit_new_head(n);
    }
    let main: Vec<Value> = client.notifications(&logs, 4).await;
    assert_eq!(
        main.iter()
            .map(|l| l["blockHash"].clone())
            .collect::<Vec<_>>(),
        (7..=10).map(|n| json!(block_hash(n))).collect::<Vec<_>>()
    );
    a.notify("newHeads", fork[2].clone());
    let changes = client.notifications(&logs, 6).await;
    let summary: Vec<(String, bool)> = changes
        .iter()
        .map(|l| {
            (
                l["blockNumber"].as_str().unwrap().to_string(),
                l["removed"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("0xa", true),
        ("0x9", true),
        ("0x8", true),
        ("0x8", false),
        ("0x9", false),
        ("0xa", false),
    ];
    assert_eq!(summary, expected.map(|(n, r)| (n.to_string(), r)));
}

#[tokio::test]
async fn failover_in_the_middle_of_a_reorg_switches_branch_once() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_head(10);
    b.set_head(10);
    let fork: Vec<Value> = vec![
        fork_header(9, 3, 0),
        fork_header(10, 3, 3),
        fork_header(11, 3, 3),
    ];
    serve_forks_and_logs(&b, fork.clone());
    let gw = Gateway::start_pair(config(), &a, &b).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let (mut client, id) = heads_client(&gw).await;
    a.emit_new_head(9);
    a.emit_new_head(10);
    assert_eq!(client.head_numbers(&id, 2).await, [9, 10]);
    a.refuse().await;
    b.wait_for_calls("eth_subscribe", 1).await;
    b.notify("newHeads", fork[2].clone());
    let delivered = client.notifications(&id, 3).await;
    let hashes: Vec<Value> = delivered.iter().map(|h| h["hash"].clone()).collect();
    assert_eq!(
        hashes,
        fork.iter().map(|h| h["hash"].clone()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn logs_of_blocks_missed_in_a_failover_are_delivered_once_in_order() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_head(20);
    b.set_head(20);
    serve_forks_and_logs(&a, vec![]);
    serve_forks_and_logs(&b, vec![]);
    let gw = Gateway::start_pair(config(), &a, &b).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let logs = client
        .subscribe(json!(["logs", {"address": ADDRESS, "topics": [[TOPIC]]}]))
        .await;
    a.emit_new_head(21);
    assert_eq!(
        client.notifications(&logs, 1).await[0]["blockHash"],
        block_hash(21)
    );
    b.set_head(24);
    a.refuse().await;
    b.wait_for_calls("eth_subscribe", 1).await;
    b.notify("newHeads", header(21));
    b.emit_new_head(24);
    let after: Vec<Value> = client
        .notifications(&logs, 3)
        .await
        .iter()
        .map(|l| l["blockHash"].clone())
        .collect();
    assert_eq!(
        after,
        [
            json!(block_hash(22)),
            json!(block_hash(23)),
            json!(block_hash(24))
        ]
    );
    client.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn many_clients_share_one_upstream_subscription_and_leave_no_trace() {
    let a = MockUpstream::start().await;
    a.set_head(3);
    let gw = Gateway::start(&config().upstream("a", &a, 0)).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    for round in 0..20 {
        let mut client = WsClient::connect(&gw.ws_url()).await;
        let id = client.subscribe(json!(["newHeads"])).await;
        client
            .subscribe(json!(["logs", {"address": ADDRESS}]))
            .await;
        if round % 2 == 0 {
            client.call(json!(1), "eth_unsubscribe", json!([id])).await;
            assert_eq!(client.next_json().await["result"], true);
        }
        client.close().await;
    }
    gw.wait_status("no subscriptions left", |s| {
        s["subscriptions"]["newHeads"] == 0 && s["subscriptions"]["logs"] == 0
    })
    .await;
    assert_eq!(
        a.calls("eth_subscribe"),
        1,
        "one upstream subscription whatever the clients do"
    );
}

#[tokio::test]
async fn subscribe_answer_always_precedes_its_notifications() {
    let a = Arc::new(MockUpstream::start().await);
    a.set_head(1);
    let gw = Gateway::start(&config().upstream("a", &a, 0)).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let emitter = {
        let a = a.clone();
        tokio::spawn(async move {
            for n in 2..400 {
                a.emit_new_head(n);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let mut known = std::collections::HashSet::new();
    for i in 0..30 {
        client
            .call(json!(i), "eth_subscribe", json!(["newHeads"]))
            .await;
        loop {
            let message = client.next_json().await;
            if message["id"] == json!(i) {
                known.insert(message["result"].as_str().unwrap().to_string());
                break;
            }
            let sub = message["params"]["subscription"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                known.contains(&sub),
                "notification for {sub} before its subscribe answer"
            );
        }
    }
    emitter.abort();
}

#[tokio::test]
async fn a_source_that_stops_sending_heads_is_left_when_another_is_ahead() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_head(10);
    b.set_head(10);
    // Lag tolerance so large that health never takes the quiet source out of rotation.
    let gw = Gateway::start_pair(config().health("max_lag_blocks", "1000"), &a, &b).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let (mut client, id) = heads_client(&gw).await;
    a.emit_new_head(11);
    assert_eq!(client.head_numbers(&id, 1).await, [11]);
    // a goes quiet (no new heads, probes still fine); b moves on to 14.
    b.set_head(14);
    b.wait_for_calls("eth_subscribe", 1).await;
    b.emit_new_head(15);
    assert_eq!(client.head_numbers(&id, 4).await, [12, 13, 14, 15]);
    assert_eq!(
        gw.upstream_status("a").await["state"],
        "healthy",
        "a never left rotation"
    );
}
