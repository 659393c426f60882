use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::config::CallTransport;

fn mux_to(ws: &str, max_response_bytes: usize) -> WsMux {
    let config = UpstreamConfig {
        name: "w".into(),
        http: None,
        ws: Some(ws.parse().expect("uri")),
        priority: 0,
        tls: Default::default(),
        headers: Default::default(),
        calls: CallTransport::Ws,
    };
    WsMux::new(config, Duration::from_secs(1), max_response_bytes)
}

/// A node that reads `batch` requests, then answers them in reverse order with `answer`
/// (request → answer text); counts the connections it accepted.
async fn node(
    batch: usize,
    answer: fn(&Value) -> String,
) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok(message)) = ws.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    held.push(serde_json::from_str::<Value>(&text).expect("json request"));
                    if held.len() == batch {
                        for request in held.drain(..).rev() {
                            let _ = ws.send(Message::text(answer(&request))).await;
                        }
                    }
                }
            });
        }
    });
    (format!("ws://{addr}"), accepted, task)
}

fn echo_param(request: &Value) -> String {
    json!({"jsonrpc": "2.0", "id": request["id"], "result": request["params"][0]}).to_string()
}

fn encode_one(base: u64, param: usize) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":{base},"method":"m","params":[{param}]}}"#).into_bytes()
}

#[tokio::test]
async fn concurrent_calls_share_the_connection_and_each_gets_its_own_answer() {
    let (url, accepted, node) = node(20, echo_param).await;
    let mux = mux_to(&url, 1 << 20);
    let calls = (0..20).map(|i| {
        let mux = &mux;
        async move {
            let (answer, base) = mux.call(1, |base| encode_one(base, i)).await.expect("ok");
            let answer: Value = serde_json::from_slice(&answer).expect("json");
            // Numbered calls come back as the node sent them: under the base, unrestored.
            assert_eq!(answer["id"], json!(base));
            assert_eq!(answer["result"], json!(i), "answered in reverse order");
            base
        }
    });
    let mut bases = futures_util::future::join_all(calls).await;
    bases.sort_unstable();
    bases.dedup();
    assert_eq!(bases.len(), 20, "every call had ids of its own");
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "one connection for all"
    );
    node.abort();
}

#[tokio::test]
async fn posted_bodies_get_their_own_ids_back() {
    let (url, _, node) = node(1, |request| {
        let answers: Vec<Value> = request
            .as_array()
            .expect("batch")
            .iter()
            .rev()
            .map(|r| json!({"jsonrpc": "2.0", "id": r["id"], "result": r["method"]}))
            .collect();
        Value::Array(answers).to_string()
    })
    .await;
    let mux = mux_to(&url, 1 << 20);
    let body = br#"[{"jsonrpc":"2.0","id":"a","method":"m","params":[1.50]},{"jsonrpc":"2.0","id":7,"method":"n"}]"#;
    let answer = mux.post(Bytes::from_static(body)).await.expect("ok");
    let answers: Vec<Value> = serde_json::from_slice(&answer).expect("json");
    assert_eq!(
        answers[0],
        json!({"jsonrpc": "2.0", "id": 7, "result": "n"})
    );
    assert_eq!(
        answers[1],
        json!({"jsonrpc": "2.0", "id": "a", "result": "m"})
    );
    node.abort();
}

fn huge(request: &Value) -> String {
    let big = "ab".repeat(4096);
    json!({"jsonrpc": "2.0", "id": request["id"], "result": big}).to_string()
}

#[tokio::test]
async fn an_answer_over_the_limit_fails_its_call_as_too_large_and_the_connection_goes_on() {
    let (url, accepted, node) = node(1, |request| match request["params"][0].as_u64() {
        Some(0) => huge(request),
        _ => echo_param(request),
    })
    .await;
    let mux = mux_to(&url, 1024);
    let first = mux.call(1, |base| encode_one(base, 0)).await;
    assert!(matches!(first, Err(SendError::TooLarge(1024))), "{first:?}");
    let (second, _) = mux.call(1, |base| encode_one(base, 1)).await.expect("ok");
    assert!(String::from_utf8_lossy(&second).contains(r#""result":1"#));
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "skipped, not dropped: the socket goes on"
    );
    node.abort();
}

#[tokio::test]
async fn an_answer_over_the_limit_among_several_calls_fails_only_the_call_its_opening_names() {
    // Both calls are held, then the second's answer (sent first) is too large.
    let (url, accepted, node) = node(2, |request| match request["params"][0].as_u64() {
        Some(1) => huge(request),
        _ => echo_param(request),
    })
    .await;
    let mux = mux_to(&url, 1024);
    let (a, b) = tokio::join!(
        mux.call(1, |base| encode_one(base, 0)),
        mux.call(1, |base| encode_one(base, 1)),
    );
    let (a, _) = a.expect("answered despite the other's");
    assert!(String::from_utf8_lossy(&a).contains(r#""result":0"#));
    assert!(matches!(b, Err(SendError::TooLarge(1024))), "{b:?}");
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
    node.abort();
}

#[tokio::test]
async fn an_answer_over_the_limit_naming_no_call_among_several_fails_them_all_as_collateral() {
    // The id comes last: the opening names nobody, and two calls wait.
    let (url, _, node) = node(2, |request| {
        let big = "ab".repeat(4096);
        format!(
            r#"{{"jsonrpc":"2.0","result":"{big}","id":{}}}"#,
            request["id"]
        )
    })
    .await;
    let mux = mux_to(&url, 1024);
    let (a, b) = tokio::join!(
        mux.call(1, |base| encode_one(base, 0)),
        mux.call(1, |base| encode_one(base, 1)),
    );
    for outcome in [a, b] {
        assert!(
            matches!(&outcome, Err(SendError::Collateral(m)) if m.contains("over 1024 bytes")),
            "nobody can tell whose answer it was: {outcome:?}"
        );
    }
    node.abort();
}

/// A node speaking raw frames after a hand-made handshake: `at_handshake` is written in the
/// same write as the handshake's answer, `at_request` once the first bytes after it come;
/// everything the mux sends is passed on.
async fn raw_node(
    at_handshake: Vec<u8>,
    at_request: Vec<u8>,
) -> (String, mpsc::UnboundedReceiver<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (seen, frames) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            tcp.read_exact(&mut byte).await.expect("request");
            request.push(byte[0]);
        }
        let request = String::from_utf8(request).expect("utf8");
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("key");
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        answer.extend(at_handshake);
        tcp.write_all(&answer).await.expect("answer");
        let mut at_request = Some(at_request);
        let mut buf = vec![0; 4096];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            let _ = seen.send(buf[..n].to_vec());
            if let Some(reply) = at_request.take() {
                let _ = tcp.write_all(&reply).await;
            }
        }
    });
    (format!("ws://{addr}"), frames)
}

/// The frames a client sent (masked), each as its first byte and unmasked payload.
fn client_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 6 {
        assert_eq!(bytes[1] & 0x80, 0x80, "masked");
        let len = usize::from(bytes[1] & 0x7F);
        assert!(len < 126, "short frames only here");
        let mask = &bytes[2..6];
        let payload = bytes[6..6 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        frames.push((bytes[0], payload));
        bytes = &bytes[6 + len..];
    }
    frames
}

/// Posts one request to the raw node at `url`; its outcome and every frame the mux sent.
async fn post_to_raw(
    url: &str,
    frames: &mut mpsc::UnboundedReceiver<Vec<u8>>,
) -> (Result<Bytes, SendError>, Vec<(u8, Vec<u8>)>) {
    let mux = mux_to(url, 1024);
    let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#);
    let outcome = tokio::time::timeout(Duration::from_secs(10), mux.post(body))
        .await
        .expect("ended well before 10 s");
    drop(mux);
    let mut sent = Vec::new();
    // The node's task passes on what it reads until the mux's side is shut.
    while let Ok(Some(bytes)) = tokio::time::timeout(Duration::from_secs(10), frames.recv()).await {
        sent.extend(bytes);
    }
    (outcome, client_frames(&sent))
}

#[tokio::test]
async fn a_ping_that_came_with_the_handshake_is_answered_with_its_payload() {
    let answer = br#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#;
    let mut reply = vec![0x81, answer.len() as u8];
    reply.extend_from_slice(answer);
    let (url, mut frames) = raw_node(vec![0x89, 2, b'h', b'i'], reply).await;
    let (outcome, sent) = post_to_raw(&url, &mut frames).await;
    let outcome: Value = serde_json::from_slice(&outcome.expect("answered")).expect("json");
    assert_eq!(outcome, json!({"jsonrpc": "2.0", "id": 1, "result": "0x1"}));
    assert_eq!(
        sent[0],
        (0x8A, b"hi".to_vec()),
        "a pong with the ping's payload"
    );
    assert_eq!(sent[1].0, 0x81, "then the request");
}

#[tokio::test]
async fn a_close_is_echoed_and_the_call_waiting_hears_of_it() {
    let mut close = vec![0x88, 4];
    close.extend(1001u16.to_be_bytes());
    close.extend(b"by");
    let (url, mut frames) = raw_node(Vec::new(), close).await;
    let (outcome, sent) = post_to_raw(&url, &mut frames).await;
    assert!(
        matches!(&outcome, Err(SendError::NoAnswer(m)) if m.contains("closed by the upstream")),
        "{outcome:?}"
    );
    assert_eq!(sent.len(), 2, "the request and one close: {sent:?}");
    assert_eq!(
        sent[1],
        (0x88, 1001u16.to_be_bytes().to_vec()),
        "the code echoed"
    );
}

#[tokio::test]
async fn a_masked_frame_from_the_node_ends_the_connection() {
    let (url, mut frames) = raw_node(Vec::new(), vec![0x81, 0x81, 1, 2, 3, 4, b'x' ^ 1]).await;
    let (outcome, sent) = post_to_raw(&url, &mut frames).await;
    assert!(
        matches!(&outcome, Err(SendError::NoAnswer(m)) if m.contains("masked")),
        "{outcome:?}"
    );
    assert_eq!(sent.last().map(|f| f.0), Some(0x88), "closed: {sent:?}");
}

#[tokio::test]
async fn a_silent_connection_is_dropped_and_its_call_gets_no_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // A node that completes the handshake, then never reads or answers (not even pongs).
    let node = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("handshake");
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(ws);
    });
    let mut mux = mux_to(&format!("ws://{addr}"), 1 << 20);
    mux.liveness = (Duration::from_millis(100), Duration::from_millis(300));
    let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#);
    let outcome = tokio::time::timeout(Duration::from_secs(10), mux.post(body))
        .await
        .expect("given up well before 10 s");
    assert!(
        matches!(&outcome, Err(SendError::NoAnswer(m)) if m.contains("silent")),
        "{outcome:?}"
    );
    node.abort();
}

#[tokio::test]
async fn a_failed_dial_backs_off_instead_of_dialling_per_call() {
    let mux = mux_to("ws://127.0.0.1:1", 1 << 20);
    let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#);
    let first = mux
        .post(body.clone())
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(first, SendError::NotSent(_)), "{first:?}");
    let second = mux.post(body).await.expect_err("backoff");
    assert!(
        matches!(&second, SendError::NotSent(m) if m.starts_with("reconnect backoff")),
        "{second:?}"
    );
}

#[test]
fn ids_are_rewritten_uniquely_and_restored_on_a_reordered_batch() {
    let next = AtomicU64::new(1);
    let body = br#"[{"jsonrpc":"2.0","id":"a","method":"m","params":[1.50]},{"jsonrpc":"2.0","id":7,"method":"n"}]"#;
    let (first, original) = ids::rewrite(body, &next).expect("rewrite");
    let (second, _) = ids::rewrite(body, &next).expect("rewrite");
    assert_eq!((first.base, first.len), (1, 2));
    assert_eq!(second.base, 3, "ids never repeat on a connection");
    assert!(
        first.text.contains(r#""params":[1.50]"#),
        "params pass through raw: {}",
        first.text
    );
    let answer =
        br#"[{"jsonrpc":"2.0","id":2,"result":"0x2"},{"jsonrpc":"2.0","id":1,"result":"0x1"}]"#;
    let restored = ids::restore(answer, first.base, &original).expect("restore");
    let answers: Vec<Value> = serde_json::from_slice(&restored).expect("json");
    assert_eq!(answers[0]["id"], json!(7));
    assert_eq!(answers[0]["result"], "0x2");
    assert_eq!(answers[1]["id"], "a");
}

#[test]
fn an_empty_batch_or_garbage_is_not_sent() {
    let next = AtomicU64::new(1);
    assert!(matches!(
        ids::rewrite(b"[]", &next),
        Err(SendError::NotSent(_))
    ));
    assert!(matches!(
        ids::rewrite(b"{nope", &next),
        Err(SendError::NotSent(_))
    ));
}

#[test]
fn an_answer_is_routed_by_its_first_numeric_id() {
    let first = ids::first_numeric_id;
    assert_eq!(
        first(br#"{"result":"0x1","jsonrpc":"2.0","id":12}"#),
        Some(12)
    );
    assert_eq!(
        first(br#" [{"id":null,"error":{}},{"id":5,"result":1}]"#),
        Some(5)
    );
    // Notifications, string ids (never ours) and garbage route nowhere.
    assert_eq!(
        first(br#"{"jsonrpc":"2.0","method":"eth_subscription","params":{}}"#),
        None
    );
    assert_eq!(first(br#"{"id":"12","result":1}"#), None);
    assert_eq!(first(b"{nope"), None);
    // The usual layout is read by its opening; anything else there goes to the parser.
    assert_eq!(
        first(br#"{"jsonrpc":"2.0","id":7,"result":"0x1"}"#),
        Some(7)
    );
    assert_eq!(first(br#"{"jsonrpc":"2.0","id":07,"result":1}"#), None);
    assert_eq!(first(br#"{"jsonrpc":"2.0","id":7.5,"result":1}"#), None);
    assert_eq!(
        first(br#"{"jsonrpc":"2.0","id":99999999999999999999,"result":1}"#),
        None
    );
    assert_eq!(first(br#"{"jsonrpc":"2.0","id":7}"#), Some(7));
    assert_eq!(
        first(br#"{"jsonrpc":"2.0","id":9999999999999999999,"result":1}"#),
        Some(9_999_999_999_999_999_999),
        "the longest id read in place"
    );
}

#[test]
fn an_answer_too_large_to_read_is_named_by_its_opening() {
    let opening = ids::opening_id;
    assert_eq!(
        opening(br#"{"jsonrpc":"2.0","id":42,"result":"0xaaaa"#),
        Some(42)
    );
    assert_eq!(opening(br#"{"id":42,"jsonrpc":"2.0","res"#), Some(42));
    assert_eq!(opening(br#" [ {"jsonrpc":"2.0","id":5,"result":"#), Some(5));
    assert_eq!(opening(br#"[{"id":6,"result":"#), Some(6));
    // The id not yet in, not first, or not one of ours: nobody.
    assert_eq!(opening(br#"{"jsonrpc":"2.0","id":42"#), None);
    assert_eq!(opening(br#"{"jsonrpc":"2.0","result":"0x1","id":4"#), None);
    assert_eq!(opening(br#"{"jsonrpc":"2.0","id":"42","result":1"#), None);
    assert_eq!(opening(br#"{"jsonrpc":"2.0","id":null,"error":{"#), None);
    assert_eq!(opening(b""), None);
}
