//! The front door under hostile, slow and broken peers: body and write timeouts, oversized
//! upstream answers, client-induced timeouts that must not touch upstream health, ids of
//! invalid requests, shutdown next to a client that never reads, TCP keepalive and the admin
//! port's own limits.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use support::gateway::{error_of, result_of, Gateway, GatewayConfig};
use support::http::Http;
use support::mock::MockUpstream;
use support::ws_client::WsClient;
use support::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

async fn single_upstream(cfg: GatewayConfig) -> (Gateway, MockUpstream) {
    let a = MockUpstream::start().await;
    let gw = Gateway::start(&cfg.upstream("a", &a, 0)).await;
    gw.wait_all_healthy().await;
    (gw, a)
}

/// A JSON string result of `len` bytes.
fn big_result(len: usize) -> String {
    format!("\"{}\"", "a".repeat(len))
}

/// Reads until the peer closes (or `WAIT` passes, which fails the test).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("the server closed the connection")
        .expect("read");
    out
}

/// Sends a request head announcing a 100-byte body, then one byte of it.
async fn start_slow_body(gw: &Gateway) -> TcpStream {
    let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
    let head = "POST / HTTP/1.1\r\nHost: ethgate\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{";
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

async fn open_connections(gw: &Gateway) -> u64 {
    gw.status().await["connections"]
        .as_u64()
        .expect("connections")
}

#[tokio::test]
async fn body_that_trickles_in_gets_408_and_the_connection_is_closed() {
    let cfg = GatewayConfig::new().server("body_timeout", "\"500ms\"");
    let (gw, _a) = single_upstream(cfg).await;
    let mut stream = start_slow_body(&gw).await;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn slow_bodies_do_not_keep_other_clients_out() {
    let cfg = GatewayConfig::new()
        .server("body_timeout", "\"500ms\"")
        .server("max_connections", "2");
    let (gw, _a) = single_upstream(cfg).await;
    let _slow = [start_slow_body(&gw).await, start_slow_body(&gw).await];
    // Both slots are taken by trickling bodies; the body timeout frees them.
    let answer = gw.call("eth_blockNumber", json!([])).await;
    assert_eq!(result_of(&answer), "0x64");
}

#[tokio::test]
async fn oversized_upstream_answer_is_refused_without_touching_health() {
    let cfg = GatewayConfig::new().server("max_response_bytes", "1048576");
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = Gateway::start_pair(cfg, &a, &b).await;
    for chunked in [false, true] {
        a.set_chunked(chunked);
        a.set_raw_result("eth_getLogs", &big_result(2 << 20));
        let answer = gw.call("eth_getLogs", json!([{}])).await;
        assert_eq!(
            error_of(&answer),
            (-32003, "response too large".into()),
            "chunked: {chunked}"
        );
        // Another node would send the same answer: not retried there.
        assert_eq!(b.calls("eth_getLogs"), 0);
        // Just under the limit is relayed whole.
        a.set_raw_result("eth_getLogs", &big_result((1 << 20) - 64));
        let answer = gw.call("eth_getLogs", json!([{}])).await;
        assert_eq!(
            result_of(&answer).as_str().map(str::len),
            Some((1 << 20) - 64)
        );
    }
    assert_eq!(gw.upstream_status("a").await["state"], "healthy");
    assert_eq!(gw.upstream_status("a").await["selected"], true);
}

#[tokio::test]
async fn client_timeouts_do_not_take_the_only_upstream_out() {
    let cfg = GatewayConfig::new()
        .server("request_timeout", "\"300ms\"")
        .health("failure_threshold", "1");
    let (gw, a) = single_upstream(cfg).await;
    a.set_delay_for("eth_call", Some(Duration::from_secs(5)));
    for _ in 0..6 {
        let answer = gw.call("eth_call", json!([{"to": "0x00"}, "latest"])).await;
        assert_eq!(error_of(&answer), (-32002, "upstream timeout".into()));
    }
    assert_eq!(gw.upstream_status("a").await["state"], "healthy");
    assert_eq!(
        result_of(&gw.call("eth_blockNumber", json!([])).await),
        "0x64"
    );
}

#[tokio::test]
async fn invalid_requests_keep_their_id_over_http_and_websocket() {
    let (gw, _a) = single_upstream(GatewayConfig::new()).await;
    let body = r#"{"id":7,"method":"eth_chainId"}"#;
    let answer = gw.rpc(body).await;
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(error_of(&answer).0, -32600);
    let batch = gw
        .rpc(r#"[{"id":"x","method":"eth_chainId"},{"jsonrpc":"2.0","id":[1],"method":"m"}]"#)
        .await;
    assert_eq!(batch[0]["id"], "x", "{batch}");
    assert_eq!(batch[1]["id"], Value::Null, "{batch}");

    let mut ws = WsClient::connect(&gw.ws_url()).await;
    ws.send(body).await;
    let answer = ws.next_json().await;
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(error_of(&answer).0, -32600);
}

/// A raw TCP client with a tiny receive buffer, so the server's writes stall quickly.
async fn tight_client(gw: &Gateway) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(gw.addr()).await.expect("connect")
}

#[tokio::test]
async fn http_client_that_never_reads_is_disconnected_after_write_timeout() {
    let cfg = GatewayConfig::new().server("write_timeout", "\"500ms\"");
    let (gw, a) = single_upstream(cfg).await;
    a.set_raw_result("eth_getLogs", &big_result(16 << 20));
    let mut stream = tight_client(&gw).await;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{}]}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: ethgate\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    a.wait_for_calls("eth_getLogs", 1).await;
    gw.wait_status("the stalled connection to be dropped", |s| {
        s["connections"] == 0
    })
    .await;
}

/// A WebSocket client that asks for `n` answers of 1 MiB and never reads them.
async fn ws_non_reader(
    gw: &Gateway,
    a: &MockUpstream,
    n: usize,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    a.set_raw_result("eth_getLogs", &big_result(1 << 20));
    let stream = tight_client(gw).await;
    let (mut ws, _) = tokio_tungstenite::client_async(gw.ws_url(), stream)
        .await
        .expect("WebSocket handshake");
    for id in 0..n {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"eth_getLogs","params":[{}]});
        ws.send(Message::text(call.to_string()))
            .await
            .expect("send");
    }
    a.wait_for_calls("eth_getLogs", n).await;
    let client_port = ws.get_ref().local_addr().expect("local addr").port();
    wait_until_server_writes_stall(gw, client_port).await;
    ws
}

#[tokio::test]
async fn ws_client_that_never_reads_is_disconnected_after_write_timeout() {
    let cfg = GatewayConfig::new().server("write_timeout", "\"500ms\"");
    let (gw, a) = single_upstream(cfg).await;
    let _ws = ws_non_reader(&gw, &a, 24).await;
    gw.wait_status("the stalled session to be dropped", |s| {
        s["connections"] == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_does_not_wait_past_the_grace_for_a_client_that_never_reads() {
    // The write timeout is far away: only the shutdown grace can end this session.
    let cfg = GatewayConfig::new()
        .server("write_timeout", "\"10m\"")
        .server("shutdown_grace", "\"1s\"");
    let (gw, a) = single_upstream(cfg).await;
    let _ws = ws_non_reader(&gw, &a, 24).await;
    assert_eq!(open_connections(&gw).await, 1);
    // `stop` fails the test unless Server::run returns within WAIT (10 s).
    gw.stop().await.expect("clean shutdown");
}

/// Columns of the server side of a loopback connection in `/proc/net/tcp`.
fn server_side(server_port: u16, client_port: u16) -> Option<Vec<String>> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        (port(fields.get(1)?)? == server_port && port(fields.get(2)?)? == client_port)
            .then(|| fields.iter().map(|f| f.to_string()).collect())
    })
}

/// The kernel's timer column for the server side: `02` means the keepalive timer is armed.
fn server_side_timer(server_port: u16, client_port: u16) -> Option<String> {
    let fields = server_side(server_port, client_port)?;
    fields[5].split(':').next().map(str::to_string)
}

/// Waits until the server's writes to the client have stalled: bytes queued in the server's
/// socket and the queue no longer moving (the client reads nothing, the server still writes).
async fn wait_until_server_writes_stall(gw: &Gateway, client_port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut last, mut still) = (0, 0);
    while still < 5 {
        let queued = server_side(gw.addr().port(), client_port)
            .and_then(|f| u64::from_str_radix(f[4].split(':').next()?, 16).ok())
            .unwrap_or(0);
        still = if queued > 0 && queued == last {
            still + 1
        } else {
            0
        };
        last = queued;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never stalled on the client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn client_sockets_have_tcp_keepalive() {
    let (gw, _a) = single_upstream(GatewayConfig::new()).await;
    let mut stream = TcpStream::connect(gw.addr()).await.expect("connect");
    // One request, so the connection has certainly been accepted and set up.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: ethgate\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0; 256];
    let n = stream.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let client_port = stream.local_addr().expect("local addr").port();
    let timer = server_side_timer(gw.addr().port(), client_port);
    assert_eq!(
        timer.as_deref(),
        Some("02"),
        "keepalive timer of the server side"
    );
}

#[tokio::test]
async fn admin_port_caps_connections_and_closes_idle_ones() {
    let cfg = GatewayConfig::new().server("header_timeout", "\"3s\"");
    let (gw, _a) = single_upstream(cfg).await;
    let mut idle = Vec::new();
    for _ in 0..ethgate::admin::MAX_CONNECTIONS {
        idle.push(TcpStream::connect(gw.admin_addr()).await.expect("connect"));
    }
    let url = format!("http://{}/healthz", gw.admin_addr());
    let quick = Http::per_request_with_timeout(Duration::from_secs(1));
    assert!(
        quick.get(&url).await.is_err(),
        "a connection over the admin cap waits for a free slot"
    );
    // The header timeout closes the idle ones; then the port answers again.
    for stream in &mut idle {
        read_until_closed(stream).await;
    }
    let (status, body) = Http::per_request().get(&url).await.expect("served");
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
}
