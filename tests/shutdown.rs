//! Graceful shutdown: stop accepting, let in-flight requests finish within `shutdown_grace`, return Ok.
//! WebSocket sessions too: no new call is read, the calls running are answered, then close 1001.

mod support;

use serde_json::json;
use std::time::Duration;
use support::gateway::{Gateway, GatewayConfig};
use support::http::Http;
use support::mock::MockUpstream;
use support::raw_http::RawHttp;
use support::ws_client::{Frame, WsClient};
use support::WAIT;

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0x00000000000000000000000000000000000000aa"},"latest"]}"#;

/// Waits (at most `WAIT`) until connecting to `addr` is refused.
async fn wait_refused(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts connections after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn in_flight_request_completes_after_shutdown_is_triggered() {
    let a = MockUpstream::start().await;
    a.set_result("eth_call", json!("0xfeed"));
    let gw = Gateway::start(&GatewayConfig::new().upstream("a", &a, 0)).await;
    gw.wait_all_healthy().await;

    a.hold("eth_call");
    let url = gw.url();
    let client = tokio::spawn(async move { Http::per_request().post(&url, CALL).await });
    a.wait_for_calls("eth_call", 1).await;

    gw.trigger_shutdown();
    wait_refused(gw.addr()).await;
    assert!(!client.is_finished(), "the in-flight request was cut short");
    a.release("eth_call");

    let (status, body) = client.await.expect("client task").expect("answered");
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 1, "result": "0xfeed"})
    );
    gw.stop().await.expect("run returns Ok");
}

#[tokio::test]
async fn idle_server_shuts_down_cleanly() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start(&GatewayConfig::new().upstream("a", &a, 0)).await;
    gw.wait_all_healthy().await;
    gw.call("eth_blockNumber", json!([])).await;
    let addr = gw.addr();
    gw.stop().await.expect("run returns Ok");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// A gateway whose shutdown grace (300 ms) ends long before an upstream attempt would time
/// out, in front of a healthy mock.
async fn short_grace_gateway() -> (MockUpstream, Gateway) {
    let a = MockUpstream::start().await;
    let cfg = GatewayConfig::new()
        .server("shutdown_grace", "\"300ms\"")
        .server("request_timeout", "\"60s\"")
        .upstream("a", &a, 0);
    let gw = Gateway::start(&cfg).await;
    gw.wait_all_healthy().await;
    (a, gw)
}

#[tokio::test]
async fn shutdown_does_not_wait_past_grace() {
    let (a, gw) = short_grace_gateway().await;
    a.hold("eth_call");
    let url = gw.url();
    let client = tokio::spawn(async move { Http::per_request().post(&url, CALL).await });
    a.wait_for_calls("eth_call", 1).await;
    // The held call never ends; `stop` panics unless run returns within WAIT.
    gw.stop()
        .await
        .expect("run returns Ok after the grace period");
    client.abort();
}

#[tokio::test]
async fn keep_alive_connections_close_at_shutdown_and_the_last_answer_says_so() {
    let a = MockUpstream::start().await;
    a.set_result("eth_call", json!("0xfeed"));
    // A grace longer than WAIT: `stop` returns in time only if no connection lingers open.
    let cfg = GatewayConfig::new()
        .server("shutdown_grace", "\"60s\"")
        .upstream("a", &a, 0);
    let gw = Gateway::start(&cfg).await;
    gw.wait_all_healthy().await;
    let mut idle = RawHttp::connect(gw.addr()).await.expect("connect");
    assert_eq!(idle.post(CALL).await.expect("answer").status, 200);
    let mut busy = RawHttp::connect(gw.addr()).await.expect("connect");
    a.hold("eth_call");
    let in_flight = tokio::spawn(async move { (busy.post(CALL).await, busy) });
    a.wait_for_calls("eth_call", 2).await;

    gw.trigger_shutdown();
    assert!(
        idle.closed_by_server().await,
        "an idle keep-alive connection stays open"
    );
    a.release("eth_call");
    let (answer, mut busy) = in_flight.await.expect("client task");
    let answer = answer.expect("the in-flight call is answered");
    assert_eq!(answer.status, 200);
    assert!(answer.asks_to_close(), "{}", answer.head);
    assert!(busy.closed_by_server().await);
    gw.stop().await.expect("run returns Ok");
}

/// The params of `CALL`'s eth_call.
fn call_params() -> serde_json::Value {
    json!([{"to": "0x00000000000000000000000000000000000000aa"}, "latest"])
}

#[tokio::test]
async fn a_websocket_call_in_flight_at_shutdown_is_answered_before_the_1001_close() {
    let a = MockUpstream::start().await;
    a.set_result("eth_call", json!("0xfeed"));
    a.set_head(5);
    // A grace longer than WAIT: `stop` returns in time only if the session closes as soon as
    // its call is answered, not when the grace runs out.
    let cfg = GatewayConfig::new()
        .server("shutdown_grace", "\"60s\"")
        .upstream("a", &a, 0);
    let gw = Gateway::start(&cfg).await;
    gw.wait_all_healthy().await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let mut ws = WsClient::connect(&gw.ws_url()).await;
    let heads = ws.subscribe(json!(["newHeads"])).await;
    a.hold("eth_call");
    ws.call(json!(1), "eth_call", call_params()).await;
    a.wait_for_calls("eth_call", 1).await;

    gw.trigger_shutdown();
    // Shutdown has begun (the port is closed), and the session is still open: notifications
    // go on, and a call sent now is not read.
    wait_refused(gw.addr()).await;
    a.emit_new_head(6);
    assert_eq!(ws.head_numbers(&heads, 1).await, [6]);
    ws.call(json!(2), "eth_blockNumber", json!([])).await;
    ws.expect_silence(Duration::from_millis(300)).await;

    // The running call's answer goes out, then the close (nothing for the call sent late).
    a.release("eth_call");
    let answer = ws.next_json().await;
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 1, "result": "0xfeed"})
    );
    match ws.next_within(WAIT).await {
        Some(Frame::Closed(code)) => assert_eq!(code, Some(1001)),
        other => panic!("expected the 1001 close, got {other:?}"),
    }
    gw.stop()
        .await
        .expect("run returns Ok once the session closed");
}

#[tokio::test]
async fn a_websocket_call_still_running_when_the_grace_ends_is_cut_and_the_client_gets_1001() {
    let (a, gw) = short_grace_gateway().await;
    let mut ws = WsClient::connect(&gw.ws_url()).await;
    a.hold("eth_call");
    ws.call(json!(1), "eth_call", call_params()).await;
    a.wait_for_calls("eth_call", 1).await;
    // The held call never ends; `stop` panics unless run returns within WAIT.
    gw.stop()
        .await
        .expect("run returns Ok after the grace period");
    // No answer: the call was cut; the client is told why.
    match ws.next_within(WAIT).await {
        Some(Frame::Closed(code)) => assert_eq!(code, Some(1001)),
        other => panic!("expected the 1001 close, got {other:?}"),
    }
}
