//! A WebSocket client's calls run concurrently inside its session: a slow call does not hold
//! up the calls behind it, reading pauses while 32 calls are in flight (the writer still
//! delivering notifications) and resumes as they finish, and every call gets its one answer.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::gateway::{Gateway, GatewayConfig};
use support::mock::MockUpstream;
use support::ws_client::{Frame, WsClient};

const ADDRESS: &str = "0x00000000000000000000000000000000000000aa";

/// Calls a session answers at once; the session reads no more while they run.
const CALLS_IN_FLIGHT: usize = 32;

async fn single(mock: &MockUpstream) -> Gateway {
    let gw = Gateway::start(&GatewayConfig::new().upstream("a", mock, 0)).await;
    gw.wait_all_healthy().await;
    mock.wait_for_calls("eth_subscribe", 1).await;
    gw
}

async fn eth_call(client: &mut WsClient, id: u64) {
    let params = json!([{"to": ADDRESS}, "latest"]);
    client.call(json!(id), "eth_call", params).await;
}

/// The ids of the next `n` answers (notifications skipped).
async fn answer_ids(client: &mut WsClient, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.len() < n {
        match client.next_within(Duration::from_secs(10)).await {
            Some(Frame::Json(v)) if v.get("id").is_some() => {
                assert!(v.get("result").is_some(), "an answer, not an error: {v}");
                ids.push(v["id"].as_u64().expect("numeric id"));
            }
            Some(Frame::Json(_)) => {}
            other => panic!("expected {n} answers, got {other:?} after {ids:?}"),
        }
    }
    ids
}

#[tokio::test]
async fn a_slow_call_does_not_hold_up_the_calls_behind_it() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    a.hold("eth_call");
    eth_call(&mut client, 1).await;
    a.wait_for_calls("eth_call", 1).await;
    client
        .call(json!(2), "eth_getBalance", json!([ADDRESS, "latest"]))
        .await;
    let answer: Value = client.next_json().await;
    assert_eq!(answer["id"], 2, "the later call answered first: {answer}");
    a.release("eth_call");
    let answer = client.next_json().await;
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(answer["result"], "0x", "{answer}");
}

#[tokio::test]
async fn reading_pauses_at_32_calls_in_flight_and_resumes_as_they_finish() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    a.hold("eth_call");
    let sent = CALLS_IN_FLIGHT as u64 + 8;
    for n in 0..sent {
        eth_call(&mut client, n).await;
    }
    a.wait_for_calls("eth_call", CALLS_IN_FLIGHT).await;
    // The writer does not wait for the calls: heads still reach the client.
    for n in 11..=13 {
        a.emit_new_head(n);
        assert_eq!(client.head_numbers(&id, 1).await, [n]);
    }
    assert_eq!(
        a.calls("eth_call"),
        CALLS_IN_FLIGHT,
        "the calls behind the first 32 are not even read yet"
    );
    a.release("eth_call");
    let ids: BTreeSet<u64> = answer_ids(&mut client, sent as usize)
        .await
        .into_iter()
        .collect();
    assert_eq!(ids, (0..sent).collect(), "each call answered once");
    assert_eq!(a.calls("eth_call"), sent as usize);
}

#[tokio::test]
async fn messages_far_larger_than_the_read_buffer_whole_or_in_fragments_arrive_intact() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    // The session's read buffer starts at 1 KiB: these are 200 times that and more.
    let data = |byte: &str| format!("0x{}", byte.repeat(100_000));
    let call = |id: u64, data: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "eth_call",
               "params": [{"to": ADDRESS, "data": data}, "latest"]})
        .to_string()
    };
    client.send(&call(1, &data("ab"))).await;
    client.send_fragmented(&call(2, &data("cd")), 37).await;
    let mut ids = answer_ids(&mut client, 2).await;
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    let sent: Vec<Value> = a
        .requests_with("eth_call")
        .iter()
        .flat_map(|r| &r.calls)
        .map(|c| c.params[0]["data"].clone())
        .collect();
    assert_eq!(
        sent,
        [json!(data("ab")), json!(data("cd"))],
        "params altered"
    );
    // The session goes on reading small calls after the large ones.
    eth_call(&mut client, 3).await;
    assert_eq!(answer_ids(&mut client, 1).await, [3]);
}
