//! No client can break another's subscriptions: filters are refused as geth refuses them, a
//! filter no upstream can serve closes only its own subscribers, caps answer -32005 and keep
//! the connection, and a client that reads promptly is never closed — not by a gap fill, not
//! by its own pending calls.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::gateway::{Gateway, GatewayConfig};
use support::mock::MockUpstream;
use support::ws_client::{Frame, WsClient};

const ADDRESS: &str = "0x00000000000000000000000000000000000000aa";

async fn single(mock: &MockUpstream, config: GatewayConfig) -> Gateway {
    let gw = Gateway::start(&config.upstream("a", mock, 0)).await;
    gw.wait_all_healthy().await;
    mock.wait_for_calls("eth_subscribe", 1).await;
    gw
}

async fn heads_client(gw: &Gateway) -> (WsClient, String) {
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    (client, id)
}

/// Subscribes and returns the whole answer (result or error).
async fn try_subscribe(client: &mut WsClient, params: Value) -> Value {
    client.call(json!("s"), "eth_subscribe", params).await;
    client.next_json().await
}

fn address(n: usize) -> String {
    format!("0x{n:040x}")
}

#[tokio::test]
async fn a_filter_geth_refuses_gets_geths_error_and_heads_keep_flowing() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a, GatewayConfig::new()).await;
    let (mut heads, id) = heads_client(&gw).await;
    let mut poison = WsClient::connect(&gw.ws_url()).await;
    let zero = format!("0x{:064x}", 0);
    let refused = [
        (
            json!(["logs", {"topics": [null, null, null, null, zero]}]),
            -32602,
            "invalid argument 1: exceed max topics",
        ),
        (
            json!(["logs", {"address": "0x12"}]),
            -32602,
            "invalid argument 1: ",
        ),
        (
            json!(["logs", {"topics": [["0x01"]]}]),
            -32602,
            "invalid argument 1: ",
        ),
        (
            json!(["logs", {"address": (0..1001).map(address).collect::<Vec<_>>()}]),
            -32000,
            "exceed max addresses",
        ),
        (
            json!(["logs", {"topics": [(0..1001).map(|n| format!("0x{n:064x}")).collect::<Vec<_>>()]}]),
            -32602,
            "invalid argument 1: exceed max topics",
        ),
    ];
    for (params, code, message) in refused {
        let answer = try_subscribe(&mut poison, params.clone()).await;
        assert_eq!(answer["id"], "s");
        assert_eq!(answer["error"]["code"], code, "{params}: {answer}");
        let text = answer["error"]["message"].as_str().unwrap();
        assert!(text.starts_with(message), "{params}: {text}");
    }
    for n in 11..=13 {
        a.emit_new_head(n);
    }
    assert_eq!(heads.head_numbers(&id, 3).await, [11, 12, 13]);
    assert_eq!(
        a.calls("eth_getLogs"),
        0,
        "a refused filter never reaches an upstream"
    );
    let answer = try_subscribe(&mut poison, json!(["newHeads"])).await;
    assert!(
        answer["result"].is_string(),
        "the refused client's connection still works: {answer}"
    );
}

#[tokio::test]
async fn logs_no_upstream_can_serve_close_only_their_subscribers() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    for m in [&a, &b] {
        m.set_head(10);
        m.fail_method(
            "eth_getLogs",
            -32005,
            "query returned more than 10000 results",
        );
    }
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let (mut heads, id) = heads_client(&gw).await;
    let mut logs = WsClient::connect(&gw.ws_url()).await;
    logs.subscribe(json!(["logs", {"address": ADDRESS}])).await;
    a.emit_new_head(11);
    assert_eq!(logs.expect_close().await, Some(1011));
    a.emit_new_head(12);
    assert_eq!(
        heads.head_numbers(&id, 2).await,
        [11, 12],
        "heads are never held back"
    );
    assert!(b.calls("eth_getLogs") >= 1, "the other upstream was asked");
    assert_eq!(
        b.subscriptions("newHeads"),
        0,
        "the source was not given up for a filter"
    );
}

#[tokio::test]
async fn one_get_logs_per_block_whatever_the_number_of_filters() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a, GatewayConfig::new()).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    for n in 0..50 {
        client
            .subscribe(json!(["logs", {"address": address(n)}]))
            .await;
    }
    let (mut heads, id) = heads_client(&gw).await;
    a.clear_calls();
    for n in 11..=13 {
        a.emit_new_head(n);
    }
    heads.head_numbers(&id, 3).await;
    assert_eq!(a.calls("eth_getLogs"), 3);
    let query = &a.requests_with("eth_getLogs")[0];
    let text = format!("{:?}", query.calls);
    assert!(
        text.contains(&address(0)) && text.contains(&address(49)),
        "{text}"
    );
}

#[tokio::test]
async fn the_per_connection_cap_answers_limit_exceeded_and_the_connection_stays() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let config = GatewayConfig::new().server("max_subscriptions_per_connection", "3");
    let gw = single(&a, config).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let first = client.subscribe(json!(["newHeads"])).await;
    client.subscribe(json!(["syncing"])).await;
    client
        .subscribe(json!(["logs", {"address": ADDRESS}]))
        .await;
    let answer = try_subscribe(&mut client, json!(["newHeads"])).await;
    assert_eq!(answer["error"]["code"], -32005, "{answer}");
    assert_eq!(answer["error"]["message"], "limit exceeded");
    a.emit_new_head(11);
    assert_eq!(
        client.head_numbers(&first, 1).await,
        [11],
        "earlier subscriptions untouched"
    );
    client
        .call(json!(1), "eth_unsubscribe", json!([first]))
        .await;
    assert_eq!(client.next_json().await["result"], true);
    let answer = try_subscribe(&mut client, json!(["newHeads"])).await;
    assert!(
        answer["result"].is_string(),
        "a freed place can be used: {answer}"
    );
    let status = gw.status().await;
    assert_eq!(status["subscriptions"]["newHeads"], 1);
}

#[tokio::test]
async fn the_process_wide_cap_holds_across_connections() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a, GatewayConfig::new().server("max_subscriptions", "2")).await;
    let (_one, _) = heads_client(&gw).await;
    let (_two, _) = heads_client(&gw).await;
    let mut third = WsClient::connect(&gw.ws_url()).await;
    let answer = try_subscribe(&mut third, json!(["newHeads"])).await;
    assert_eq!(answer["error"]["code"], -32005, "{answer}");
}

#[tokio::test]
async fn a_gap_fill_longer_than_the_queue_does_not_close_a_reading_client() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a, GatewayConfig::new().server("ws_queue_len", "16")).await;
    let (mut client, id) = heads_client(&gw).await;
    a.emit_new_head(11);
    assert_eq!(client.head_numbers(&id, 1).await, [11]);
    a.emit_new_head(211);
    let numbers = client.head_numbers(&id, 200).await;
    assert_eq!(numbers, (12..=211).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_client_with_many_pending_calls_still_receives_its_notifications() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a, GatewayConfig::new().server("ws_queue_len", "8")).await;
    let (mut client, id) = heads_client(&gw).await;
    a.hold("eth_call");
    for n in 0..40 {
        client
            .call(json!(n), "eth_call", json!([{"to": ADDRESS}, "latest"]))
            .await;
    }
    a.wait_for_calls("eth_call", 32).await;
    // More heads than the queue holds arrive while 32 calls are pending and 8 more wait to
    // be read: the writer keeps draining, so a client that reads is never closed.
    for n in 11..=30 {
        a.emit_new_head(n);
        assert_eq!(client.head_numbers(&id, 1).await, [n]);
    }
    a.release("eth_call");
    let mut answered = 0;
    while answered < 40 {
        match client.next_within(Duration::from_secs(10)).await {
            Some(Frame::Json(v)) if v.get("id").is_some() => answered += 1,
            Some(Frame::Json(_)) => {}
            other => panic!("expected the 40 answers, got {other:?} after {answered}"),
        }
    }
}

#[tokio::test]
async fn in_flight_calls_of_a_client_that_left_leave_the_gauge() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a, GatewayConfig::new()).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    a.hold("eth_call");
    for n in 0..5 {
        client
            .call(json!(n), "eth_call", json!([{"to": ADDRESS}, "latest"]))
            .await;
    }
    a.wait_for_calls("eth_call", 5).await;
    client.close().await;
    gw.wait_status("session gone", |s| s["connections"] == 0)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&gw.admin_get("/metrics").await.1).to_string();
        let inflight = text
            .lines()
            .find(|l| l.starts_with("ethgate_inflight_requests "))
            .unwrap_or_else(|| panic!("no in-flight gauge in {text}"));
        if inflight.ends_with(" 0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauge stuck: {inflight}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.release("eth_call");
}

#[tokio::test]
async fn status_and_metrics_show_the_feeds_source_and_head_age() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = single(&a, GatewayConfig::new()).await;
    let (mut client, id) = heads_client(&gw).await;
    a.emit_new_head(11);
    client.head_numbers(&id, 1).await;
    let status = gw.status().await;
    assert_eq!(status["feed"]["source"], "a", "{status}");
    assert_eq!(status["feed"]["head"], 11);
    assert!(status["feed"]["head_age_seconds"].as_f64().unwrap() < 60.0);
    let text = String::from_utf8_lossy(&gw.admin_get("/metrics").await.1).to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("ethgate_subscription_head_age_seconds ")),
        "{text}"
    );
}
