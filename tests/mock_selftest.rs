//! The mock upstream on its own: every scripted behaviour the ethgate tests rely on.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use support::http::Http;
use support::mock::{block_hash, MockUpstream, TX_HASH};
use support::WAIT;
use tokio_tungstenite::tungstenite::Message;

async fn post(mock: &MockUpstream, body: &str) -> (u16, Value) {
    let (status, bytes) = Http::per_request()
        .post(&mock.http_url(), body.to_string())
        .await
        .expect("mock answers");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

async fn result(mock: &MockUpstream, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc":"2.0","id":7,"method":method,"params":params}).to_string();
    let (status, answer) = post(mock, &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["id"], 7, "{answer}");
    answer["result"].clone()
}

fn raw_ids(bytes: &[u8]) -> Vec<String> {
    let objects: Vec<HashMap<String, Box<RawValue>>> = if bytes.starts_with(b"[") {
        serde_json::from_slice(bytes).expect("batch answer")
    } else {
        vec![serde_json::from_slice(bytes).expect("object answer")]
    };
    objects.iter().map(|o| o["id"].get().to_string()).collect()
}

#[tokio::test]
async fn default_answers_describe_one_deterministic_chain() {
    let mock = MockUpstream::start().await;
    assert_eq!(result(&mock, "eth_chainId", json!([])).await, "0x1");
    assert_eq!(result(&mock, "net_version", json!([])).await, "1");
    assert_eq!(result(&mock, "eth_blockNumber", json!([])).await, "0x64");
    assert_eq!(result(&mock, "eth_syncing", json!([])).await, false);
    let block = result(&mock, "eth_getBlockByNumber", json!(["latest", false])).await;
    assert_eq!(block["number"], "0x64");
    assert_eq!(block["hash"], block_hash(100));
    assert_eq!(block["parentHash"], block_hash(99));
    let by_hash = result(&mock, "eth_getBlockByHash", json!([block_hash(42), false])).await;
    assert_eq!(by_hash["number"], "0x2a");
    assert_eq!(
        result(&mock, "eth_getBlockByNumber", json!(["0x65", false])).await,
        Value::Null
    );
    assert_eq!(
        result(&mock, "eth_sendRawTransaction", json!(["0x02"])).await,
        TX_HASH
    );

    mock.set_head(200);
    mock.set_chain_id(5);
    mock.set_syncing(true);
    assert_eq!(result(&mock, "eth_blockNumber", json!([])).await, "0xc8");
    assert_eq!(result(&mock, "eth_chainId", json!([])).await, "0x5");
    assert_eq!(
        result(&mock, "eth_syncing", json!([])).await["currentBlock"],
        "0xc8"
    );
    assert_eq!(mock.calls("eth_blockNumber"), 2);
    assert_eq!(mock.total_calls(), 11);
}

#[tokio::test]
async fn unknown_method_gets_geth_error_and_custom_answers_apply() {
    let mock = MockUpstream::start().await;
    let (_, answer) = post(
        &mock,
        r#"{"jsonrpc":"2.0","id":1,"method":"foo_bar","params":[]}"#,
    )
    .await;
    assert_eq!(answer["error"]["code"], -32601);
    mock.set_result("foo_bar", json!({"x": 1}));
    assert_eq!(result(&mock, "foo_bar", json!([])).await, json!({"x": 1}));
    mock.set_handler("echo", |p| Ok(p.clone()));
    assert_eq!(
        result(&mock, "echo", json!([1, "a"])).await,
        json!([1, "a"])
    );
    mock.fail_method("eth_call", 3, "execution reverted");
    let (_, answer) = post(
        &mock,
        r#"{"jsonrpc":"2.0","id":2,"method":"eth_call","params":[]}"#,
    )
    .await;
    assert_eq!(
        answer["error"],
        json!({"code": 3, "message": "execution reverted"})
    );
    mock.clear_failures();
    assert_eq!(result(&mock, "eth_call", json!([])).await, "0x");
}

#[tokio::test]
async fn ids_are_echoed_byte_for_byte() {
    let mock = MockUpstream::start().await;
    let ids = [
        r#""a\"b\\c\u00e9😀""#,
        "0",
        "-7",
        "123456789012345678901234567890",
        "1.5e3",
        "null",
    ];
    let body = ids
        .iter()
        .map(|id| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_blockNumber"}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let (status, bytes) = Http::per_request()
        .post(&mock.http_url(), format!("[{body}]"))
        .await
        .expect("mock answers");
    assert_eq!(status, 200);
    assert_eq!(raw_ids(&bytes), ids);
    assert_eq!(mock.received_ids(), ids);
}

#[tokio::test]
async fn batches_can_be_answered_in_reverse() {
    let mock = MockUpstream::start().await;
    mock.set_reverse_batches(true);
    let body = r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"},{"jsonrpc":"2.0","method":"eth_blockNumber"}]"#;
    let (_, bytes) = Http::per_request()
        .post(&mock.http_url(), body)
        .await
        .expect("answer");
    assert_eq!(raw_ids(&bytes), ["2", "1"]);
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].batch);
    assert_eq!(requests[0].calls.len(), 3);
    let (_, answer) = post(&mock, "[]").await;
    assert_eq!(answer["error"]["code"], -32600);
    let (_, answer) = post(&mock, "{nope").await;
    assert_eq!(answer["error"]["code"], -32700);
}

#[tokio::test]
async fn refuse_closes_the_port_and_restore_reopens_it() {
    let mock = MockUpstream::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(mock.ws_url())
        .await
        .expect("ws connects");
    mock.refuse().await;
    let err = tokio::net::TcpStream::connect(mock.addr())
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let next = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("ws closed promptly");
    assert!(!matches!(next, Some(Ok(Message::Text(_)))), "{next:?}");
    mock.restore().await;
    assert_eq!(result(&mock, "eth_chainId", json!([])).await, "0x1");
}

#[tokio::test]
async fn reset_reads_the_request_then_resets() {
    let mock = MockUpstream::start().await;
    mock.reset_next_for("eth_call", 1);
    assert_eq!(result(&mock, "eth_blockNumber", json!([])).await, "0x64");
    let err = Http::per_request()
        .post(
            &mock.http_url(),
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_call"}"#,
        )
        .await
        .expect_err("reset");
    let text = format!("{err:?}").to_lowercase();
    assert!(text.contains("reset") || text.contains("closed"), "{text}");
    assert_eq!(mock.calls("eth_call"), 1);
    assert_eq!(result(&mock, "eth_call", json!([])).await, "0x");

    mock.reset_next(1);
    Http::per_request()
        .post(
            &mock.http_url(),
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#,
        )
        .await
        .expect_err("reset");
    assert_eq!(result(&mock, "eth_chainId", json!([])).await, "0x1");
}

#[tokio::test]
async fn reset_mid_response_sends_the_head_and_half_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start().await;
    mock.set_raw_result("eth_call", &format!("\"0x{}\"", "ab".repeat(64)));
    mock.reset_mid_response_for("eth_call", 1);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_call"}"#;
    let mut tcp = tokio::net::TcpStream::connect(mock.addr())
        .await
        .expect("connect");
    let head = format!(
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("read in time")
        {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (_, partial) = text.split_once("\r\n\r\n").expect("head complete");
    assert!(
        !partial.is_empty() && partial.len() < 100,
        "half a body: {partial:?}"
    );
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset), "{text}");
    assert_eq!(
        result(&mock, "eth_call", json!([])).await,
        format!("0x{}", "ab".repeat(64))
    );
}

#[tokio::test]
async fn silent_mock_keeps_the_socket_open_without_answering() {
    let mock = MockUpstream::start().await;
    mock.go_silent(true);
    let client = Http::per_request_with_timeout(Duration::from_millis(300));
    let err = client
        .post(
            &mock.http_url(),
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#,
        )
        .await
        .expect_err("no answer");
    assert!(err.to_string().contains("no answer"), "{err}");
    assert_eq!(mock.calls("eth_chainId"), 1);
    mock.go_silent(false);
    assert_eq!(result(&mock, "eth_chainId", json!([])).await, "0x1");
}

#[tokio::test]
async fn scripted_http_status_answers_every_request() {
    let mock = MockUpstream::start().await;
    mock.set_http_status(Some(503));
    let (status, _) = post(&mock, r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#).await;
    assert_eq!(status, 503);
    mock.set_http_status(None);
    mock.set_http_status_for("eth_call", Some(429));
    let (status, _) = post(&mock, r#"{"jsonrpc":"2.0","id":1,"method":"eth_call"}"#).await;
    assert_eq!(status, 429);
    assert_eq!(result(&mock, "eth_chainId", json!([])).await, "0x1");
}

#[tokio::test]
async fn held_calls_wait_for_release() {
    let mock = std::sync::Arc::new(MockUpstream::start().await);
    mock.hold("eth_call");
    let m = mock.clone();
    let pending = tokio::spawn(async move { result(&m, "eth_call", json!([])).await });
    mock.wait_for_calls("eth_call", 1).await;
    assert_eq!(result(&mock, "eth_chainId", json!([])).await, "0x1");
    assert!(!pending.is_finished());
    mock.release("eth_call");
    assert_eq!(pending.await.expect("joined"), "0x");
}

#[tokio::test]
async fn delayed_method_is_answered_late() {
    let mock = MockUpstream::start().await;
    mock.set_delay_for("eth_call", Some(Duration::from_secs(30)));
    let client = Http::per_request_with_timeout(Duration::from_millis(200));
    let slow = client
        .post(
            &mock.http_url(),
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_call"}"#,
        )
        .await;
    assert!(slow.is_err());
    assert_eq!(result(&mock, "eth_chainId", json!([])).await, "0x1");
    mock.set_delay_for("eth_call", None);
    assert_eq!(result(&mock, "eth_call", json!([])).await, "0x");
}

async fn ws_recv(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("ws message in time")
            .expect("ws open")
            .expect("ws ok");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("json frame");
        }
    }
}

#[tokio::test]
async fn websocket_answers_calls_and_pushes_new_heads() {
    let mock = MockUpstream::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(mock.ws_url())
        .await
        .expect("ws connects");
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":"x","method":"eth_chainId"}"#,
    ))
    .await
    .expect("send");
    assert_eq!(
        ws_recv(&mut ws).await,
        json!({"jsonrpc":"2.0","id":"x","result":"0x1"})
    );

    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":2,"method":"eth_subscribe","params":["newHeads"]}"#,
    ))
    .await
    .expect("send");
    let sub = ws_recv(&mut ws).await;
    let sub_id = sub["result"].as_str().expect("subscription id").to_string();
    mock.wait_for_subscriptions("newHeads", 1).await;
    mock.emit_new_head(101);
    let note = ws_recv(&mut ws).await;
    assert_eq!(note["method"], "eth_subscription");
    assert_eq!(note["params"]["subscription"], sub_id.as_str());
    assert_eq!(note["params"]["result"]["number"], "0x65");
    assert_eq!(note["params"]["result"]["hash"], block_hash(101));
    assert_eq!(mock.head(), 101);

    let unsub = json!({"jsonrpc":"2.0","id":3,"method":"eth_unsubscribe","params":[sub_id]});
    ws.send(Message::text(unsub.to_string()))
        .await
        .expect("send");
    assert_eq!(ws_recv(&mut ws).await["result"], true);
    assert_eq!(mock.subscriptions("newHeads"), 0);
    mock.emit_new_head(102);
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":4,"method":"eth_blockNumber"}"#,
    ))
    .await
    .expect("send");
    assert_eq!(
        ws_recv(&mut ws).await,
        json!({"jsonrpc":"2.0","id":4,"result":"0x66"})
    );
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.transport == support::mock::Transport::Ws)
            .count(),
        4
    );
}

#[tokio::test]
async fn advancing_mock_emits_consecutive_heads() {
    let mock = MockUpstream::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(mock.ws_url())
        .await
        .expect("ws connects");
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#,
    ))
    .await
    .expect("send");
    ws_recv(&mut ws).await;
    assert_eq!(mock.subscriptions("newHeads"), 1);
    drop(ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(mock.ws_url())
        .await
        .expect("ws connects");
    ws.send(Message::text(
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#,
    ))
    .await
    .expect("send");
    ws_recv(&mut ws).await;
    // The first connection's subscription went away with it.
    mock.wait_until("one newHeads subscription", |m| {
        m.subscriptions("newHeads") == 1
    })
    .await;
    mock.advance_every(Some(Duration::from_millis(10)));
    let a = ws_recv(&mut ws).await["params"]["result"]["number"].clone();
    let b = ws_recv(&mut ws).await["params"]["result"]["number"].clone();
    mock.advance_every(None);
    assert_eq!((a, b), (json!("0x65"), json!("0x66")));
}
