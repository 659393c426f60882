//! Graceful drain for load balancers: on shutdown `/readyz` answers 503 at once, the port keeps
//! accepting and serving for `server.drain_delay` (keep-alive answers carry `Connection: close`),
//! then the usual shutdown runs (listener closed, WebSocket clients closed with 1001).
//! Also: `server.listen` as a list, every address serving HTTP and WebSocket with the same rules.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::gateway::{Gateway, GatewayConfig};
use support::mock::MockUpstream;
use support::raw_http::{connect_from, Answer, RawHttp};
use support::ws_client::WsClient;
use support::WAIT;
use tokio::net::TcpStream;

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"eth_blockNumber","params":[]}"#;

/// Long enough that the steps of a test fit inside it on a loaded machine (they take
/// milliseconds), short enough to keep the test quick.
const DRAIN_DELAY: Duration = Duration::from_secs(4);

/// A served JSON-RPC answer to `CALL`.
fn assert_served(answer: Option<Answer>, context: &str) -> Answer {
    let answer = answer.unwrap_or_else(|| panic!("{context}: connection closed, no answer"));
    assert_eq!(answer.status, 200, "{context}: {}", answer.body);
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON answer");
    assert_eq!(value["id"], 7, "{context}: {value}");
    assert_eq!(value["result"], "0x10", "{context}: {value}");
    answer
}

/// Waits (at most `WAIT` past `from`) until connecting to `addr` is refused.
async fn wait_refused(addr: SocketAddr, from: Instant) -> Duration {
    loop {
        if TcpStream::connect(addr).await.is_err() {
            return from.elapsed();
        }
        assert!(
            from.elapsed() < DRAIN_DELAY + WAIT,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upstream() -> MockUpstream {
    let a = MockUpstream::start().await;
    a.set_result("eth_blockNumber", json!("0x10"));
    a
}

#[tokio::test]
async fn readyz_turns_503_at_once_and_the_port_serves_through_the_drain_delay() {
    let a = upstream().await;
    let delay = format!("\"{}ms\"", DRAIN_DELAY.as_millis());
    let gw = Gateway::start(
        &GatewayConfig::new()
            .server("drain_delay", &delay)
            .upstream("a", &a, 0),
    )
    .await;
    gw.wait_all_healthy().await;
    gw.wait_readyz(200).await;

    // A keep-alive client, a WebSocket client, both connected before the drain.
    let mut kept = RawHttp::connect(gw.addr()).await.expect("connect");
    let before = assert_served(kept.post(CALL).await, "before the drain");
    assert!(!before.asks_to_close(), "keep-alive before the drain");
    let mut ws = WsClient::connect(&gw.ws_url()).await;

    let triggered = Instant::now();
    gw.trigger_shutdown();
    gw.wait_readyz(503).await;
    let (_, body) = gw.admin_get("/readyz").await;
    assert_eq!(&body[..], b"draining\n");
    // Still well inside the delay: /readyz flipped at once, not when the port closed.
    assert!(triggered.elapsed() < DRAIN_DELAY, "readyz flipped late");

    // New connections are still accepted and served; the keep-alive client is told to leave.
    let mut fresh = RawHttp::connect(gw.addr())
        .await
        .expect("accepted while draining");
    assert_served(fresh.post(CALL).await, "new connection while draining");
    let answer = assert_served(kept.post(CALL).await, "keep-alive while draining");
    assert!(
        answer.asks_to_close(),
        "no Connection: close:\n{}",
        answer.head
    );
    assert!(kept.closed_by_server().await, "closed after that answer");
    // WebSocket: the old session still answers, and a new upgrade still works (a 101 must not
    // get `Connection: close`).
    ws.call(json!(1), "eth_blockNumber", json!([])).await;
    assert_eq!(ws.next_json().await["result"], "0x10");
    let mut late_ws = WsClient::connect(&gw.ws_url()).await;
    late_ws.call(json!(2), "eth_blockNumber", json!([])).await;
    assert_eq!(late_ws.next_json().await["result"], "0x10");

    // Then the port closes, and not before the delay; WebSocket clients get 1001.
    let refused_after = wait_refused(gw.addr(), triggered).await;
    assert!(
        refused_after >= DRAIN_DELAY,
        "port closed after {refused_after:?}, before the drain delay"
    );
    assert_eq!(ws.expect_close().await, Some(1001));
    assert_eq!(late_ws.expect_close().await, Some(1001));
    gw.stop().await.expect("run returns Ok");
}

#[tokio::test]
async fn zero_drain_delay_closes_the_port_at_once() {
    let a = upstream().await;
    let gw = Gateway::start(
        &GatewayConfig::new()
            .server("drain_delay", "\"0s\"")
            // A held client would otherwise keep the process alive: none here.
            .upstream("a", &a, 0),
    )
    .await;
    gw.wait_all_healthy().await;
    let triggered = Instant::now();
    gw.trigger_shutdown();
    let refused_after = wait_refused(gw.addr(), triggered).await;
    // Far below any drain delay: nothing waited before closing the listener.
    assert!(refused_after < Duration::from_secs(4), "{refused_after:?}");
    gw.stop().await.expect("run returns Ok");
}

#[tokio::test]
async fn every_listen_address_serves_http_and_websocket_with_the_same_rules() {
    let a = upstream().await;
    let gw = Gateway::start(
        &GatewayConfig::new()
            .server("listen", r#"["127.0.0.1:0", "127.0.0.1:0"]"#)
            .server("drain_delay", "\"0s\"")
            // Only 127.0.0.2 is a client; 127.0.0.1 is refused on every port.
            .access("allow", r#"["127.0.0.2/32"]"#)
            .upstream("a", &a, 0),
    )
    .await;
    gw.wait_all_healthy().await;
    let addrs = gw.addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1]);
    for &addr in &addrs {
        let mut allowed = RawHttp::connect_from([127, 0, 0, 2], addr)
            .await
            .expect("connect");
        assert_served(allowed.post(CALL).await, &format!("HTTP on {addr}"));
        let mut refused = RawHttp::connect_from([127, 0, 0, 1], addr)
            .await
            .expect("TCP accept happens before the check");
        assert!(
            refused.post(CALL).await.is_none(),
            "{addr}: 127.0.0.1 is not in access.allow"
        );
        ws_call_from([127, 0, 0, 2], addr).await;
    }
    gw.trigger_shutdown();
    for &addr in &addrs {
        wait_refused(addr, Instant::now()).await;
    }
    gw.stop().await.expect("run returns Ok");
}

/// A WebSocket call on `addr` from `source`: connect, handshake, one call answered.
async fn ws_call_from(source: [u8; 4], addr: SocketAddr) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let stream = connect_from(source, addr).await.expect("connect");
    let url = format!("ws://{addr}/");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake within WAIT")
        .expect("WebSocket handshake");
    ws.send(Message::text(CALL)).await.expect("send");
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("reply within WAIT")
        .expect("a frame")
        .expect("no error");
    let value: serde_json::Value =
        serde_json::from_str(reply.to_text().expect("text")).expect("JSON");
    assert_eq!(value["result"], "0x10", "WS on {addr}: {value}");
}

#[test]
fn check_names_every_listen_address_and_refuses_overlapping_ones() {
    let dir = support::process::TempDir::new("check-listen").expect("temp dir");
    let path = dir.path().join("ethgate.toml");
    let upstream = "[[upstream]]\nname = \"a\"\nhttp = \"http://127.0.0.1:1\"\n";
    let check = |listen: &str| {
        std::fs::write(&path, format!("[server]\nlisten = {listen}\n{upstream}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ethgate"))
            .args(["check", "--config"])
            .arg(&path)
            .env_remove("ETHGATE_CONFIG")
            .output()
            .expect("run ethgate check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check(r#"["0.0.0.0:8545", "0.0.0.0:8546"]"#);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("clients on 0.0.0.0:8545, 0.0.0.0:8546"),
        "{out}"
    );
    let (code, out) = check(r#"["0.0.0.0:8545", "127.0.0.1:8545"]"#);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("server.listen[1]: 127.0.0.1:8545 overlaps 0.0.0.0:8545"),
        "{out}"
    );
}
