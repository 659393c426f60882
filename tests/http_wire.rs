//! The client port's HTTP/1.1 wire, byte by byte: pipelining, chunked bodies, `Expect:
//! 100-continue`, HTTP/1.0 keep-alive, HEAD, heads and bodies ethgate refuses, idle
//! keep-alive connections, and a WebSocket frame sent in the same packet as the upgrade.

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::gateway::{Gateway, GatewayConfig};
use support::mock::MockUpstream;
use support::raw_http::{Answer, RawHttp};
use support::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

async fn gateway(cfg: GatewayConfig) -> (Gateway, MockUpstream) {
    let a = MockUpstream::start().await;
    a.set_result("eth_blockNumber", json!("0x2a"));
    let gw = Gateway::start(&cfg.upstream("a", &a, 0)).await;
    gw.wait_all_healthy().await;
    (gw, a)
}

async fn connect(gw: &Gateway) -> RawHttp {
    RawHttp::connect(gw.addr()).await.expect("connect")
}

fn call(id: u32) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_blockNumber","params":[]}}"#)
}

/// A POST head for `body` with `extra` header lines, then the body.
fn post(extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nhost: ethgate\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn json_of(answer: &Answer) -> Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.body))
}

/// Asserts a 200 JSON-RPC answer to `call(id)`.
fn assert_answers(answer: Option<Answer>, id: u32) {
    let answer = answer.expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(
        json_of(&answer),
        json!({"jsonrpc":"2.0","id":id,"result":"0x2a"})
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    let mut both = post("", &call(1));
    both.extend(post("", &call(2)));
    http.send(&both).await;
    assert_answers(http.answer().await, 1);
    assert_answers(http.answer().await, 2);
    // And the connection carries on.
    assert_answers(http.post(&call(3)).await, 3);
}

#[tokio::test]
async fn answers_carry_date_type_and_length() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    let answer = http.post(&call(1)).await.expect("answer");
    assert!(
        answer.head.starts_with("http/1.1 200 ok\r\n"),
        "{}",
        answer.head
    );
    assert!(answer.head.contains("content-type: application/json\r\n"));
    let date = answer
        .head
        .lines()
        .find_map(|l| l.strip_prefix("date: "))
        .expect("a date header");
    assert!(date.ends_with(" gmt") && date.len() == 29, "{date}");
    assert!(!answer.asks_to_close());
}

#[tokio::test]
async fn a_chunked_body_is_read_with_its_extensions_and_trailers() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    let body = call(7);
    let (first, rest) = body.split_at(10);
    let request = format!(
        "POST / HTTP/1.1\r\nhost: ethgate\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x};ext=1\r\n{first}\r\n{:X}\r\n{rest}\r\n0\r\nx-trailer: yes\r\n\r\n",
        first.len(),
        rest.len()
    );
    http.send(request.as_bytes()).await;
    assert_answers(http.answer().await, 7);
    assert_answers(http.post(&call(8)).await, 8);
}

#[tokio::test]
async fn a_broken_chunk_gets_400_and_the_connection_closes() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    http.send(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        .await;
    let answer = http.answer().await.expect("an answer");
    assert_eq!(answer.status, 400);
    assert!(answer.asks_to_close());
    assert!(http.closed_by_server().await);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413() {
    let cfg = GatewayConfig::new().server("max_request_bytes", "1024");
    let (gw, _a) = gateway(cfg).await;
    let mut http = connect(&gw).await;
    let chunk = "a".repeat(600);
    let request = format!(
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    http.send(request.as_bytes()).await;
    let answer = http.answer().await.expect("an answer");
    assert_eq!(answer.status, 413);
    assert!(http.closed_by_server().await);
}

#[tokio::test]
async fn expect_continue_gets_100_before_the_body_is_sent() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    let body = call(5);
    let head = format!(
        "POST / HTTP/1.1\r\nhost: ethgate\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    http.send(head.as_bytes()).await;
    let interim = http.answer().await.expect("an interim answer");
    assert_eq!(interim.status, 100, "{}", interim.head);
    http.send(body.as_bytes()).await;
    assert_answers(http.answer().await, 5);
}

/// The body already sent with its head needs no `100`, nor does an HTTP/1.0 client get one:
/// the first answer is the final one.
#[tokio::test]
async fn expect_continue_with_the_body_sent_or_from_http_1_0_gets_no_100() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let body = call(6);
    for version in ["1.1", "1.0"] {
        let mut http = connect(&gw).await;
        let with_body = format!(
            "POST / HTTP/{version}\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        http.send(with_body.as_bytes()).await;
        assert_answers(http.answer().await, 6);
    }
    let mut http = connect(&gw).await;
    let head_only = format!(
        "POST / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    http.send(head_only.as_bytes()).await;
    http.send(body.as_bytes()).await;
    assert_answers(http.answer().await, 6);
}

#[tokio::test]
async fn expect_continue_with_a_body_too_large_gets_413_without_100() {
    let cfg = GatewayConfig::new().server("max_request_bytes", "1024");
    let (gw, _a) = gateway(cfg).await;
    let mut http = connect(&gw).await;
    http.send(b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 5000\r\n\r\n")
        .await;
    assert_eq!(http.answer().await.expect("an answer").status, 413);
    assert!(http.closed_by_server().await);
}

#[tokio::test]
async fn http_1_0_keeps_the_connection_only_when_asked() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let body = call(1);
    let plain = format!(
        "POST / HTTP/1.0\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut http = connect(&gw).await;
    http.send(plain.as_bytes()).await;
    let answer = http.answer().await.expect("an answer");
    assert_eq!(json_of(&answer)["result"], "0x2a");
    assert!(http.closed_by_server().await, "HTTP/1.0 closes by default");

    let kept = format!(
        "POST / HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut http = connect(&gw).await;
    http.send(kept.as_bytes()).await;
    let answer = http.answer().await.expect("an answer");
    assert!(
        answer.head.contains("connection: keep-alive\r\n"),
        "{}",
        answer.head
    );
    http.send(kept.as_bytes()).await;
    assert_eq!(
        json_of(&http.answer().await.expect("second")),
        json_of(&answer)
    );
}

#[tokio::test]
async fn connection_close_from_the_client_is_honoured() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    http.send(&post("connection: close\r\n", &call(1))).await;
    let answer = http.answer().await.expect("an answer");
    assert!(answer.asks_to_close());
    assert!(http.closed_by_server().await);
}

#[tokio::test]
async fn head_is_405_without_a_body_and_the_connection_carries_on() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    http.send(b"HEAD / HTTP/1.1\r\nhost: ethgate\r\n\r\n").await;
    let answer = http.answer_to_head().await.expect("an answer");
    assert_eq!(answer.status, 405);
    assert!(answer.head.contains("allow: get, post, options\r\n"));
    // The length of the body a GET-like answer would have, but no body bytes: were there
    // any, the next answer would not parse.
    assert!(
        answer.head.contains("content-length: 19\r\n"),
        "{}",
        answer.head
    );
    assert_answers(http.post(&call(2)).await, 2);
}

#[tokio::test]
async fn a_get_with_a_body_is_answered_and_the_connection_closed() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    // Were the body not skipped by closing, "POST / ..." inside it would be taken as a request.
    let smuggled = post("", &call(9));
    let head = format!(
        "GET / HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
        smuggled.len()
    );
    http.send(head.as_bytes()).await;
    http.send(&smuggled).await;
    let answer = http.answer().await.expect("an answer");
    assert_eq!(answer.status, 200);
    assert!(answer.asks_to_close());
    assert!(http.closed_by_server().await);
}

#[tokio::test]
async fn ambiguous_broken_or_unsupported_heads_are_refused_and_close() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let heads: [(&[u8], u16); 5] = [
        (
            b"POST / HTTP/1.1\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\ncontent-length: +2\r\n\r\n", 400),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            501,
        ),
    ];
    for (head, status) in heads {
        let mut http = connect(&gw).await;
        // A complete request right behind must not be answered.
        http.send(&[head, &post("", &call(1))[..]].concat()).await;
        let answer = http.answer().await.expect("an answer");
        let shown = String::from_utf8_lossy(head);
        assert_eq!(answer.status, status, "{shown}");
        assert!(answer.asks_to_close(), "{shown}");
        assert!(http.closed_by_server().await, "{shown}");
    }
}

#[tokio::test]
async fn a_head_over_the_limits_gets_431() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let long = format!("POST / HTTP/1.1\r\nx-long: {}\r\n", "a".repeat(70 * 1024));
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("POST / HTTP/1.1\r\n{many}\r\n");
    for head in [long, many] {
        let mut http = connect(&gw).await;
        http.send(head.as_bytes()).await;
        assert_eq!(http.answer().await.expect("an answer").status, 431);
        assert!(http.closed_by_server().await);
    }
}

#[tokio::test]
async fn half_a_head_gets_408_after_header_timeout() {
    let cfg = GatewayConfig::new().server("header_timeout", "\"300ms\"");
    let (gw, _a) = gateway(cfg).await;
    let mut http = connect(&gw).await;
    http.send(b"POST / HTTP/1.1\r\nhost: x\r\n").await;
    let answer = http.answer().await.expect("an answer");
    assert_eq!(answer.status, 408);
    assert!(answer.asks_to_close());
    assert!(http.closed_by_server().await);
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_read_whole() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    let request = post("x-padding: 1\r\n", &call(6));
    let head_len = request.len() - call(6).len();
    for byte in &request[..head_len] {
        http.send(std::slice::from_ref(byte)).await;
        tokio::task::yield_now().await;
    }
    http.send(&request[head_len..]).await;
    assert_answers(http.answer().await, 6);
}

#[tokio::test]
async fn options_is_204_with_allow_and_no_length() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut http = connect(&gw).await;
    http.send(b"OPTIONS / HTTP/1.1\r\nhost: ethgate\r\n\r\n")
        .await;
    let answer = http.answer().await.expect("an answer");
    assert_eq!(answer.status, 204);
    assert!(
        answer.head.contains("allow: get, post, options\r\n"),
        "{}",
        answer.head
    );
    assert!(!answer.head.contains("content-length"), "{}", answer.head);
    assert_answers(http.post(&call(2)).await, 2);
}

/// An upgrade request's head, with `extra` header lines.
fn upgrade_head(extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nhost: ethgate\r\nconnection: upgrade\r\nupgrade: websocket\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn upgrades_that_are_refused_or_carry_a_body_close_without_reading_it() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let valid = "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    // The body is a whole request: answering it would let one client's bytes become a
    // request on a connection a load balancer shares.
    let smuggled = post("", &call(9));
    let length = format!("content-length: {}\r\n", smuggled.len());
    for extra in [length.clone(), format!("{valid}{length}")] {
        let mut http = connect(&gw).await;
        http.send(upgrade_head(&extra).as_bytes()).await;
        http.send(&smuggled).await;
        let answer = http.answer().await.expect("an answer");
        assert_eq!(answer.status, 400, "{extra}");
        assert!(answer.asks_to_close(), "{extra}");
        assert!(
            http.closed_by_server().await,
            "{extra}: the body was answered"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_silently_after_header_timeout() {
    let cfg = GatewayConfig::new().server("header_timeout", "\"300ms\"");
    let (gw, _a) = gateway(cfg).await;
    let mut http = connect(&gw).await;
    assert_answers(http.post(&call(1)).await, 1);
    assert!(http.closed_by_server().await, "idle past header_timeout");
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_reaches_the_session() {
    let (gw, _a) = gateway(GatewayConfig::new()).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    let mut packet =
        b"GET / HTTP/1.1\r\nhost: ethgate\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
        sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    packet.extend(masked_text_frame(call(4).as_bytes()));
    tcp.write_all(&packet).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.expect("head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a reply");
    let Some(Ok(Message::Text(text))) = reply else {
        panic!("not a text frame: {reply:?}")
    };
    let value: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(value, json!({"jsonrpc":"2.0","id":4,"result":"0x2a"}));
}

/// A client text frame (masked, as clients must) of a short payload.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn a_refused_body_still_on_its_way_does_not_hide_the_413() {
    let cfg = GatewayConfig::new().server("max_request_bytes", "1024");
    let (gw, _a) = gateway(cfg).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    // A simple client: it writes the whole request, then reads. Were the connection closed
    // with its body unread, the reset would fail the write and discard the 413.
    let body = vec![b' '; 4 << 20];
    let head = format!("POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len());
    tcp.write_all(head.as_bytes()).await.expect("head");
    let written = tcp.write_all(&body).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(written.is_ok(), "{written:?}");
    assert!(text.starts_with("HTTP/1.1 413 "), "{read:?}: {text}");
}
