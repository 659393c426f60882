//! Chainlink-grade consistency against mock upstreams: latest/safe/finalized never go back
//! across failovers, reads a lagging node cannot serve move on, net_version is local, and
//! transactions are broadcast to every in-rotation upstream (HTTP and WS, single and batch).

mod support;

use serde_json::{json, Value};
use support::gateway::{result_of, Gateway, GatewayConfig};
use support::mock::{block_hash, MockUpstream, TX_HASH};
use support::ws_client::WsClient;

const RAW_TX: &str = "0x02f86b0180843b9aca00";

async fn three() -> (MockUpstream, MockUpstream, MockUpstream) {
    (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    )
}

async fn gateway(config: GatewayConfig, mocks: [&MockUpstream; 3]) -> Gateway {
    let config = config
        .upstream("a", mocks[0], 0)
        .upstream("b", mocks[1], 1)
        .upstream("c", mocks[2], 2);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    gw.wait_selected("a").await;
    gw
}

fn number_of(block: &Value) -> u64 {
    let hex = block["number"]
        .as_str()
        .unwrap_or_else(|| panic!("no number: {block}"));
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
}

fn quantity(value: &Value) -> u64 {
    let hex = value
        .as_str()
        .unwrap_or_else(|| panic!("not a quantity: {value}"));
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
}

/// The scenario: two nodes 3 blocks behind (within max_lag_blocks = 5), the selected
/// node dies. No value goes back and no read fails.
#[tokio::test]
async fn lagging_but_healthy_nodes_after_the_selected_dies_never_go_back() {
    let (a, b, c) = three().await;
    a.set_close_connections(true);
    a.set_tags(Some(90), Some(80));
    b.set_head(97);
    c.set_head(97);
    b.set_tags(Some(87), Some(77));
    c.set_tags(Some(87), Some(77));
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    let poll = || async {
        let body = json!([
            {"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},
            {"jsonrpc":"2.0","id":2,"method":"eth_getBlockByNumber","params":["latest",false]},
            {"jsonrpc":"2.0","id":3,"method":"eth_getBlockByNumber","params":["safe",false]},
            {"jsonrpc":"2.0","id":4,"method":"eth_getBlockByNumber","params":["finalized",false]},
        ]);
        let answer = gw.rpc(&body.to_string()).await;
        let items = answer
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .clone();
        [
            quantity(&result_of(&items[0])),
            number_of(&result_of(&items[1])),
            number_of(&result_of(&items[2])),
            number_of(&result_of(&items[3])),
        ]
    };
    assert_eq!(poll().await, [100, 100, 90, 80]);
    a.refuse().await;
    gw.wait_state("a", "unreachable").await;
    for _ in 0..5 {
        assert_eq!(poll().await, [100, 100, 90, 80], "nothing goes back");
    }
    // b and c catch up: values move forward again.
    for mock in [&b, &c] {
        mock.set_head(101);
        mock.set_tags(Some(91), Some(81));
    }
    gw.wait_status("b at 101", |s| s["upstreams"][1]["head"] == 101)
        .await;
    let [latest, block, ..] = poll().await;
    assert_eq!((latest, block), (101, 101));
    let status = gw.status().await;
    assert_eq!(status["served"]["latest"], 101, "{status}");
}

/// Tag reads prefer an upstream at or above the served head over strict priority.
#[tokio::test]
async fn after_failover_an_upstream_at_the_served_head_is_preferred() {
    let (a, b, c) = three().await;
    a.set_close_connections(true);
    b.set_head(97);
    c.set_head(100);
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    assert_eq!(
        quantity(&result_of(&gw.call("eth_blockNumber", json!([])).await)),
        100
    );
    a.refuse().await;
    gw.wait_state("a", "unreachable").await;
    gw.wait_selected("b").await;
    let balance = gw.call("eth_getBalance", json!(["0x01", "latest"])).await;
    result_of(&balance);
    assert_eq!(b.calls("eth_getBalance"), 0, "b is behind the served head");
    assert_eq!(c.calls("eth_getBalance"), 1);
}

/// `safe`/`finalized` on an upstream that has not reached the served one are asked by number,
/// so the answer is the very block served before.
#[tokio::test]
async fn finalized_is_pinned_to_the_served_number_on_a_lower_upstream() {
    let (a, b, c) = three().await;
    a.set_close_connections(true);
    a.set_tags(Some(95), Some(90));
    b.set_tags(Some(93), Some(88));
    c.set_tags(Some(93), Some(88));
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    let finalized = || gw.call("eth_getBlockByNumber", json!(["finalized", false]));
    assert_eq!(number_of(&result_of(&finalized().await)), 90);
    a.refuse().await;
    gw.wait_state("a", "unreachable").await;
    let block = result_of(&finalized().await);
    assert_eq!(number_of(&block), 90);
    assert_eq!(block["hash"], block_hash(90));
    let asked: Vec<Value> = b
        .requests_with("eth_getBlockByNumber")
        .iter()
        .flat_map(|r| r.calls.clone())
        .filter(|c| c.params[0] == "0x5a")
        .map(|c| c.params)
        .collect();
    assert_eq!(asked.len(), 1, "b was asked for block 0x5a by number");
}

/// An upstream whose finalized block lags the served one beyond max_lag_blocks is not used
/// for tag reads, even when it is the selected one.
#[tokio::test]
async fn an_upstream_whose_finalized_goes_back_beyond_the_bound_serves_no_tag_reads() {
    let (a, b, c) = three().await;
    a.set_tags(None, Some(90));
    b.set_tags(None, Some(90));
    c.set_tags(None, Some(90));
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    result_of(
        &gw.call("eth_getBlockByNumber", json!(["finalized", false]))
            .await,
    );
    a.set_tags(None, Some(80));
    gw.wait_status("a's finalized at 80", |s| {
        s["upstreams"][0]["finalized"] == 80
    })
    .await;
    a.clear_calls();
    let block = result_of(
        &gw.call("eth_getBlockByNumber", json!(["finalized", false]))
            .await,
    );
    assert_eq!(number_of(&block), 90);
    assert_eq!(
        a.calls("eth_getBlockByNumber"),
        0,
        "a went back: no tag reads"
    );
    // Reads without a tag still go to the selected upstream.
    result_of(&gw.call("eth_gasPrice", json!([])).await);
    assert_eq!(a.calls("eth_gasPrice"), 1);
}

/// A block by hash that the selected (lagging) node does not know is fetched from one that has it.
#[tokio::test]
async fn unknown_hash_on_a_lagging_node_is_retried_where_the_block_is() {
    let (a, b, c) = three().await;
    a.set_head(97);
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    let block = result_of(
        &gw.call("eth_getBlockByHash", json!([block_hash(100), false]))
            .await,
    );
    assert_eq!(number_of(&block), 100);
    assert_eq!(
        a.calls("eth_getBlockByHash"),
        1,
        "asked the selected node first"
    );
    // A null by number at or below the known head moves on too.
    let block = result_of(
        &gw.call("eth_getBlockByNumber", json!(["0x63", false]))
            .await,
    );
    assert_eq!(number_of(&block), 99);
}

#[tokio::test]
async fn net_version_is_answered_from_the_verified_chain_id() {
    let (a, b, c) = three().await;
    for mock in [&a, &b, &c] {
        mock.set_chain_id(137);
    }
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    assert_eq!(result_of(&gw.call("net_version", json!([])).await), "137");
    assert_eq!(a.calls("net_version") + b.calls("net_version"), 0);
    assert_eq!(
        result_of(&gw.call("web3_clientVersion", json!([])).await),
        "ethgate-mock/v1.0.0"
    );
    assert_eq!(
        a.calls("web3_clientVersion"),
        1,
        "forwarded to the selected node"
    );
}

#[tokio::test]
async fn a_transaction_reaches_every_in_rotation_upstream_once() {
    let (a, b, c) = three().await;
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    let answer = gw.call("eth_sendRawTransaction", json!([RAW_TX])).await;
    assert_eq!(result_of(&answer), TX_HASH);
    for mock in [&a, &b, &c] {
        mock.wait_for_calls("eth_sendRawTransaction", 1).await;
    }
    // Over WebSocket, in a batch.
    let mut ws = WsClient::connect(&gw.ws_url()).await;
    ws.send(
        &json!([
            {"jsonrpc":"2.0","id":"x","method":"eth_sendRawTransaction","params":[RAW_TX]},
            {"jsonrpc":"2.0","id":"y","method":"eth_chainId"},
        ])
        .to_string(),
    )
    .await;
    let reply = ws.next_json().await;
    assert_eq!(reply[0]["result"], TX_HASH, "{reply}");
    for mock in [&a, &b, &c] {
        mock.wait_for_calls("eth_sendRawTransaction", 2).await;
    }
    for mock in [&a, &b, &c] {
        assert_eq!(
            mock.calls("eth_sendRawTransaction"),
            2,
            "exactly once per send"
        );
    }
}

#[tokio::test]
async fn selected_refusal_gives_way_to_another_nodes_acceptance() {
    let (a, b, c) = three().await;
    a.fail_method("eth_sendRawTransaction", -32000, "nonce too low");
    b.fail_method("eth_sendRawTransaction", -32000, "already known");
    let other = "0x00000000000000000000000000000000000000000000000000000000000000cc";
    c.set_result("eth_sendRawTransaction", json!(other));
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    let answer = gw.call("eth_sendRawTransaction", json!([RAW_TX])).await;
    assert_eq!(result_of(&answer), other);
    // Only "already known" elsewhere: the transaction is in a pool, so the client gets success
    // with its hash, keccak-256 of the raw bytes, as a first send would have answered.
    c.fail_method(
        "eth_sendRawTransaction",
        -32000,
        "replacement transaction underpriced",
    );
    let answer = gw.call("eth_sendRawTransaction", json!([RAW_TX])).await;
    assert_eq!(result_of(&answer), json!(tx_hash(RAW_TX)), "{answer}");
}

fn tx_hash(raw: &str) -> String {
    use sha3::{Digest, Keccak256};
    let hex = raw.trim_start_matches("0x");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let digest = Keccak256::digest(&bytes);
    format!(
        "0x{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

#[tokio::test]
async fn when_no_node_accepts_the_selected_error_passes_verbatim() {
    let (a, b, c) = three().await;
    a.fail_method_with_data(
        "eth_sendRawTransaction",
        -32000,
        "insufficient funds for gas * price + value",
        json!("0x01"),
    );
    b.fail_method("eth_sendRawTransaction", -32000, "nonce too low");
    c.fail_method("eth_sendRawTransaction", -32000, "nonce too low");
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    let answer = gw.call("eth_sendRawTransaction", json!([RAW_TX])).await;
    assert_eq!(
        answer["error"],
        json!({"code": -32000, "message": "insufficient funds for gas * price + value", "data": "0x01"})
    );
}

#[tokio::test]
async fn status_and_metrics_show_each_upstreams_safe_and_finalized() {
    let (a, b, c) = three().await;
    a.set_tags(Some(70), Some(60));
    let gw = gateway(GatewayConfig::new(), [&a, &b, &c]).await;
    let entry = gw.upstream_status("a").await;
    assert_eq!(
        (entry["safe"].clone(), entry["finalized"].clone()),
        (json!(70), json!(60))
    );
    let (_, body) = gw.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("ethgate_upstream_safe_block{upstream=\"a\"} 70"),
        "{text}"
    );
    assert!(
        text.contains("ethgate_upstream_finalized_block{upstream=\"a\"} 60"),
        "{text}"
    );
    assert!(text.contains("ethgate_upstream_finalized_block{upstream=\"b\"} 100"));
}

#[tokio::test]
async fn a_head_delivered_over_websocket_is_never_contradicted_over_http() {
    let selected = MockUpstream::start().await;
    let feeder = MockUpstream::start().await;
    selected.set_head(10);
    feeder.set_head(10);
    // The selected node has no WebSocket, so the feed follows the other one.
    let config = GatewayConfig::new()
        .upstream_http("selected", &selected.http_url(), 0)
        .upstream("feeder", &feeder, 1);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    feeder.wait_for_subscriptions("newHeads", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    feeder.set_head(12);
    feeder.emit_new_head(12);
    assert_eq!(client.head_numbers(&id, 1).await, [12]);
    let answer = gw.call("eth_blockNumber", json!([])).await;
    assert_eq!(quantity(&answer["result"]), 12, "{answer}");
}
