//! The WebSocket front end: plain calls and batches, limits, close codes (1008 slow client,
//! 1009 too big, 1011 unserved, 1001 shutdown) and subscription failover edge cases.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::gateway::{Gateway, GatewayConfig};
use support::http::RpcError;
use support::mock::{header, MockUpstream};
use support::ws_client::WsClient;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

async fn single(mock: &MockUpstream, config: GatewayConfig) -> Gateway {
    let gw = Gateway::start(&config.upstream("a", mock, 0)).await;
    gw.wait_all_healthy().await;
    gw
}

#[tokio::test]
async fn plain_calls_keep_ids_of_every_type() {
    let a = MockUpstream::start().await;
    a.set_head(0x42);
    let gw = single(&a, GatewayConfig::new()).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
    for id in [
        "1",
        "0",
        "-7",
        "123456789012345678901234567890",
        "1.5e3",
        "\"a\\\"b\\u00e9\"",
        "null",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_blockNumber"}}"#);
        socket.send(Message::text(body)).await.unwrap();
        let text = match tokio::time::timeout(support::WAIT, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text.as_str().to_string(),
            other => panic!("{other:?}"),
        };
        // Byte for byte: the id's text, not merely an equal JSON value.
        assert_eq!(
            text,
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x42"}}"#)
        );
    }
}

#[tokio::test]
async fn batch_with_a_subscribe_and_a_denied_call_answers_first() {
    let a = MockUpstream::start().await;
    a.set_head(3);
    let gw = single(&a, GatewayConfig::new()).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    client
        .send(r#"[{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":3,"method":"debug_traceBlock"}]"#)
        .await;
    let batch = client.next_json().await;
    let id = batch[0]["result"]
        .as_str()
        .expect("subscription id")
        .to_string();
    assert_eq!(batch[1]["result"], "0x3");
    assert_eq!(batch[2]["error"]["code"], -32601);
    assert_eq!(
        batch[2]["error"]["message"],
        "method not allowed: debug_traceBlock"
    );
    a.emit_new_head(4);
    assert_eq!(client.head_numbers(&id, 1).await, [4]);
}

#[tokio::test]
async fn unknown_subscription_kinds_and_ids_get_geth_errors() {
    let a = MockUpstream::start().await;
    let gw = single(&a, GatewayConfig::new()).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    client
        .call(json!(1), "eth_subscribe", json!(["blocks"]))
        .await;
    let answer = client.next_json().await;
    assert_eq!(answer["error"]["code"], -32601);
    client
        .call(json!(2), "eth_unsubscribe", json!(["0x1234"]))
        .await;
    let answer = client.next_json().await;
    assert_eq!(
        answer["error"],
        json!({"code": -32000, "message": "subscription not found"})
    );
}

#[tokio::test]
async fn message_over_the_limit_closes_with_1009() {
    let a = MockUpstream::start().await;
    let gw = single(&a, GatewayConfig::new().server("max_request_bytes", "1000")).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let params = "0".repeat(2000);
    client
        .send(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":["{params}"]}}"#
        ))
        .await;
    assert_eq!(client.expect_close().await, Some(1009));
}

#[tokio::test]
async fn client_that_does_not_read_is_closed_with_1008() {
    let a = MockUpstream::start().await;
    a.set_head(1);
    let gw = single(&a, GatewayConfig::new().server("ws_queue_len", "8")).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    client.subscribe(json!(["newHeads"])).await;
    // Large headers fill the socket buffers quickly; then the bounded queue overflows.
    for n in 2..400u64 {
        let mut h = header(n);
        h["extraData"] = json!(format!("0x{}", "ab".repeat(32 * 1024)));
        a.set_head(n);
        a.notify("newHeads", h);
        tokio::task::yield_now().await;
    }
    assert_eq!(client.expect_close().await, Some(1008));
}

#[tokio::test]
async fn subscribers_are_closed_with_1011_when_no_upstream_serves_them_for_the_grace() {
    let a = MockUpstream::start().await;
    let gw = single(
        &a,
        GatewayConfig::new().server("subscription_grace", "\"400ms\""),
    )
    .await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    client.subscribe(json!(["newHeads"])).await;
    let mut bystander = WsClient::connect(&gw.ws_url()).await;
    a.refuse().await;
    assert_eq!(client.expect_close().await, Some(1011));
    bystander.call(json!(1), "eth_chainId", json!([])).await;
    assert_eq!(
        bystander.next_json().await["result"],
        "0x1",
        "sessions without subscriptions stay open"
    );
}

#[tokio::test]
async fn subscribing_while_no_upstream_is_healthy_delivers_once_one_returns() {
    let a = MockUpstream::start().await;
    a.set_head(5);
    let gw = single(
        &a,
        GatewayConfig::new().server("subscription_grace", "\"10s\""),
    )
    .await;
    a.wait_for_calls("eth_subscribe", 1).await;
    a.refuse().await;
    gw.wait_state("a", "unreachable").await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    a.restore().await;
    a.wait_for_calls("eth_subscribe", 2).await;
    a.emit_new_head(6);
    assert_eq!(client.head_numbers(&id, 1).await, [6]);
}

#[tokio::test]
async fn half_open_upstream_is_detected_by_ping_timeout() {
    let frozen = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frozen_url = format!("ws://{}/", frozen.local_addr().unwrap());
    // Completes the handshake, answers the subscribe, then never reads or writes again.
    tokio::spawn(async move {
        let (tcp, _) = frozen.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        if let Some(Ok(Message::Text(text))) = ws.next().await {
            let request: Value = serde_json::from_str(text.as_str()).unwrap();
            let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": "0xdead"});
            ws.send(Message::text(answer.to_string())).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(ws);
    });
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_head(9);
    b.set_head(9);
    let toml = GatewayConfig::new().upstream("b", &b, 1).to_toml()
        + &format!(
            "\n[[upstream]]\nname = \"a\"\nhttp = \"{}\"\nws = \"{frozen_url}\"\npriority = 0\n",
            a.http_url()
        );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_all_healthy().await;
    b.wait_for_calls("eth_subscribe", 1).await;
    let (mut client, id) = {
        let mut c = WsClient::connect(&gw.ws_url()).await;
        let id = c.subscribe(json!(["newHeads"])).await;
        (c, id)
    };
    b.emit_new_head(10);
    assert_eq!(client.head_numbers(&id, 1).await, [10]);
}

#[tokio::test]
async fn resubscribe_rejected_by_the_first_fallback_uses_the_next() {
    let (a, b, c) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    for m in [&a, &b, &c] {
        m.set_head(10);
    }
    b.set_handler("eth_subscribe", |_| {
        Err(RpcError::new(-32000, "too many subscriptions"))
    });
    let config = GatewayConfig::new()
        .upstream("a", &a, 0)
        .upstream("b", &b, 1)
        .upstream("c", &c, 2);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let (mut client, id) = {
        let mut cl = WsClient::connect(&gw.ws_url()).await;
        let id = cl.subscribe(json!(["newHeads"])).await;
        (cl, id)
    };
    a.refuse().await;
    c.wait_for_calls("eth_subscribe", 1).await;
    assert!(b.calls("eth_subscribe") >= 1, "b was tried first");
    c.emit_new_head(11);
    assert_eq!(client.head_numbers(&id, 1).await, [11]);
}

#[tokio::test]
async fn unsubscribe_during_failover_stops_delivery() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_head(10);
    b.set_head(10);
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    a.refuse().await;
    client.call(json!(9), "eth_unsubscribe", json!([id])).await;
    assert_eq!(client.next_json().await["result"], true);
    b.wait_for_calls("eth_subscribe", 1).await;
    b.emit_new_head(11);
    client.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn shutdown_closes_websocket_clients_with_1001() {
    let a = MockUpstream::start().await;
    let gw = single(&a, GatewayConfig::new()).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    client.call(json!(1), "eth_chainId", json!([])).await;
    client.next_json().await;
    drop(gw);
    assert_eq!(client.expect_close().await, Some(1001));
}

#[tokio::test]
async fn pending_transactions_are_relayed_once() {
    let a = MockUpstream::start().await;
    let gw = single(&a, GatewayConfig::new()).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newPendingTransactions"])).await;
    a.wait_for_calls("eth_subscribe", 2).await;
    let tx = json!(format!("0x{:064x}", 7));
    a.notify("newPendingTransactions", tx.clone());
    a.notify("newPendingTransactions", tx.clone());
    a.notify("newPendingTransactions", json!(format!("0x{:064x}", 8)));
    let got = client.notifications(&id, 2).await;
    assert_eq!(got[0], tx);
    assert_eq!(got[1], json!(format!("0x{:064x}", 8)));
}

#[tokio::test]
async fn client_pings_are_answered_and_the_server_never_pings_first() {
    let a = MockUpstream::start().await;
    let gw = single(&a, GatewayConfig::new()).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
    // Old Chainlink versions mishandle server pings: a quiet session sees nothing at all.
    let quiet = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
    assert!(
        quiet.is_err(),
        "server sent something unprompted: {quiet:?}"
    );
    socket
        .send(Message::Ping(b"hello".to_vec().into()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(support::WAIT, socket.next())
        .await
        .unwrap();
    match answer {
        Some(Ok(Message::Pong(data))) => assert_eq!(&data[..], b"hello"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[tokio::test]
async fn upstream_pending_subscription_follows_client_demand() {
    let a = MockUpstream::start().await;
    let gw = single(&a, GatewayConfig::new()).await;
    a.wait_for_calls("eth_subscribe", 1).await;
    for round in 1..=3usize {
        let mut clients = Vec::new();
        for _ in 0..5 {
            let mut client = WsClient::connect(&gw.ws_url()).await;
            client.subscribe(json!(["newPendingTransactions"])).await;
            clients.push(client);
        }
        a.wait_for_calls("eth_subscribe", 1 + round).await;
        for client in clients {
            client.close().await;
        }
        a.wait_for_calls("eth_unsubscribe", round).await;
    }
    assert_eq!(
        a.calls("eth_subscribe"),
        4,
        "one upstream subscription per round, not per client"
    );
}

#[tokio::test]
async fn websocket_sessions_hold_their_place_in_max_connections() {
    let a = MockUpstream::start().await;
    let gw = single(&a, GatewayConfig::new().server("max_connections", "2")).await;
    let first = WsClient::connect(&gw.ws_url()).await;
    let mut second = WsClient::connect(&gw.ws_url()).await;
    second.call(json!(1), "eth_chainId", json!([])).await;
    second.next_json().await;
    gw.wait_status("two open connections", |s| s["connections"] == 2)
        .await;
    // A third client is not served while both upgraded sessions are open...
    let url = gw.ws_url();
    let third = tokio::spawn(async move { WsClient::connect(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond max_connections"
    );
    // ...and is once one of them ends.
    first.close().await;
    let mut third = tokio::time::timeout(support::WAIT, third)
        .await
        .unwrap()
        .unwrap();
    third.call(json!(2), "eth_chainId", json!([])).await;
    assert_eq!(third.next_json().await["result"], "0x1");
}
