//! The client-facing HTTP protocol: ids kept byte-for-byte, batches, and every error ethgate makes itself.

mod support;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use support::gateway::{error_of, result_of, Gateway, GatewayConfig};
use support::http::Http;
use support::mock::{MockUpstream, Transport};
use support::WAIT;

const ADDR: &str = "0x00000000000000000000000000000000000000aa";

/// Ids of every JSON type, written in forms a re-serialiser would change.
const IDS: [&str; 9] = [
    r#""plain""#,
    r#""esc \"q\" \\ \/ \n \u00e9 \ud83d\ude00 é 😀""#,
    "0",
    "-42",
    "123456789012345678901234567890",
    "1.5e3",
    "1.50",
    "-0",
    "null",
];

async fn single_upstream(cfg: GatewayConfig) -> (Gateway, MockUpstream) {
    let a = MockUpstream::start().await;
    let gw = Gateway::start(&cfg.upstream("a", &a, 0)).await;
    gw.wait_all_healthy().await;
    (gw, a)
}

/// Each member of a response object, as raw JSON text.
fn members(object: &[u8]) -> HashMap<String, String> {
    let raw: HashMap<String, Box<RawValue>> = serde_json::from_slice(object).unwrap_or_else(|e| {
        panic!(
            "not a JSON object ({e}): {}",
            String::from_utf8_lossy(object)
        )
    });
    raw.into_iter()
        .map(|(k, v)| (k, v.get().to_string()))
        .collect()
}

/// Raw id texts of a batch response, in order.
fn batch_ids(body: &[u8]) -> Vec<String> {
    let items: Vec<Box<RawValue>> = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not a JSON array ({e}): {}", String::from_utf8_lossy(body)));
    items
        .iter()
        .map(|i| members(i.get().as_bytes())["id"].clone())
        .collect()
}

fn request(id: &str, method: &str, params: Value) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#)
}

fn parse(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[tokio::test]
async fn ids_of_every_type_round_trip_byte_for_byte() {
    let (gw, _a) = single_upstream(GatewayConfig::new()).await;
    for id in IDS {
        let (status, body) = gw
            .post(&request(id, "eth_getBalance", json!([ADDR, "latest"])))
            .await;
        assert_eq!(status, 200);
        let m = members(&body);
        assert_eq!(m["id"], id, "single call");
        assert_eq!(m["result"], r#""0xde0b6b3a7640000""#);
    }
    let batch: Vec<String> = IDS
        .iter()
        .map(|id| request(id, "eth_getBalance", json!([ADDR, "latest"])))
        .collect();
    let (status, body) = gw.post(&format!("[{}]", batch.join(","))).await;
    assert_eq!(status, 200);
    assert_eq!(batch_ids(&body), IDS, "batch");
}

#[tokio::test]
async fn ids_round_trip_on_errors_too() {
    let (gw, a) = single_upstream(GatewayConfig::new()).await;
    a.fail_method("eth_call", 3, "execution reverted");
    for id in IDS {
        let (_, body) = gw
            .post(&request(id, "eth_call", json!([{"to": ADDR}])))
            .await;
        assert_eq!(members(&body)["id"], id, "upstream error");
        let (_, body) = gw.post(&request(id, "admin_peers", json!([]))).await;
        assert_eq!(members(&body)["id"], id, "denied method");
    }
}

#[tokio::test]
async fn batch_goes_to_one_upstream_as_one_batch_and_order_is_restored() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_reverse_batches(true);
    a.set_result("eth_getTransactionCount", json!("0x7"));
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    let body = format!(
        "[{},{},{}]",
        request("1", "eth_getBalance", json!([ADDR, "latest"])),
        request(r#""two""#, "eth_call", json!([{"to": ADDR}, "latest"])),
        request("3", "eth_getTransactionCount", json!([ADDR, "latest"])),
    );
    let answer = gw.rpc(&body).await;
    assert_eq!(
        answer,
        json!([
            {"jsonrpc": "2.0", "id": 1, "result": "0xde0b6b3a7640000"},
            {"jsonrpc": "2.0", "id": "two", "result": "0x"},
            {"jsonrpc": "2.0", "id": 3, "result": "0x7"},
        ])
    );
    let forwarded = a.requests_with("eth_getBalance");
    assert_eq!(forwarded.len(), 1, "one upstream request");
    assert!(forwarded[0].batch, "forwarded as a batch");
    let methods: Vec<&str> = forwarded[0]
        .calls
        .iter()
        .map(|c| c.method.as_str())
        .collect();
    assert_eq!(
        methods,
        ["eth_getBalance", "eth_call", "eth_getTransactionCount"]
    );
    for method in ["eth_getBalance", "eth_call", "eth_getTransactionCount"] {
        assert_eq!(b.calls(method), 0, "{method} reached b");
    }
}

#[tokio::test]
async fn denied_element_of_batch_gets_its_own_error() {
    let (gw, a) = single_upstream(GatewayConfig::new()).await;
    let body = format!(
        "[{},{},{}]",
        request("1", "eth_getBalance", json!([ADDR, "latest"])),
        request("2", "admin_peers", json!([])),
        request("3", "eth_call", json!([{"to": ADDR}, "latest"])),
    );
    let answer = gw.rpc(&body).await;
    let items = answer.as_array().expect("batch answer");
    assert_eq!(items.len(), 3, "{answer}");
    assert_eq!(items[0]["id"], 1);
    assert_eq!(result_of(&items[0]), "0xde0b6b3a7640000");
    assert_eq!(items[1]["id"], 2);
    assert_eq!(
        error_of(&items[1]),
        (-32601, "method not allowed: admin_peers".into())
    );
    assert_eq!(items[2]["id"], 3);
    assert_eq!(result_of(&items[2]), "0x");
    assert_eq!(a.calls("admin_peers"), 0);
}

#[tokio::test]
async fn invalid_element_of_batch_gets_its_own_error() {
    let (gw, _a) = single_upstream(GatewayConfig::new()).await;
    let body = format!(
        "[{},1]",
        request("1", "eth_getBalance", json!([ADDR, "latest"]))
    );
    let answer = gw.rpc(&body).await;
    let items = answer.as_array().expect("batch answer");
    assert_eq!(items.len(), 2, "{answer}");
    assert_eq!(result_of(&items[0]), "0xde0b6b3a7640000");
    assert_eq!(error_of(&items[1]), (-32600, "invalid request".into()));
}

#[tokio::test]
async fn body_that_is_not_json_is_a_parse_error_with_null_id() {
    let (gw, a) = single_upstream(GatewayConfig::new()).await;
    for body in [r#"{"jsonrpc":"2.0","id":1,"#, "hello", ""] {
        let (status, bytes) = gw.post(body).await;
        assert_eq!(status, 200, "{body:?}");
        let answer = parse(&bytes);
        assert_eq!(
            error_of(&answer),
            (-32700, "parse error".into()),
            "{body:?}"
        );
        assert_eq!(answer["id"], Value::Null, "{answer}");
        assert_eq!(members(&bytes)["id"], "null", "id present and null");
    }
    assert_eq!(a.calls("eth_getBalance"), 0);
}

#[tokio::test]
async fn object_that_is_not_a_request_is_invalid() {
    let (gw, _a) = single_upstream(GatewayConfig::new()).await;
    for body in [
        r#"{"jsonrpc":"2.0","id":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
        r#""eth_blockNumber""#,
    ] {
        let answer = gw.rpc(body).await;
        assert_eq!(
            error_of(&answer),
            (-32600, "invalid request".into()),
            "{body}"
        );
    }
}

#[tokio::test]
async fn empty_batch_is_an_invalid_request() {
    let (gw, _a) = single_upstream(GatewayConfig::new()).await;
    let answer = gw.rpc("[]").await;
    assert!(
        answer.is_object(),
        "one error object, not an array: {answer}"
    );
    assert_eq!(error_of(&answer), (-32600, "empty batch".into()));
    assert_eq!(answer["id"], Value::Null);
}

#[tokio::test]
async fn batch_longer_than_limit_is_refused_whole() {
    let (gw, a) = single_upstream(GatewayConfig::new().server("max_batch_len", "3")).await;
    let calls: Vec<String> = (0..4)
        .map(|i| request(&i.to_string(), "eth_getBalance", json!([ADDR, "latest"])))
        .collect();
    let answer = gw.rpc(&format!("[{}]", calls.join(","))).await;
    // One error: a bare object, or (tolerated) a one-element array.
    let error = match &answer {
        Value::Array(items) => {
            assert_eq!(items.len(), 1, "one error for the whole batch: {answer}");
            items[0].clone()
        }
        other => other.clone(),
    };
    assert_eq!(error_of(&error), (-32600, "batch too large".into()));
    assert_eq!(a.calls("eth_getBalance"), 0);
    let at_limit = gw.rpc(&format!("[{}]", calls[..3].join(","))).await;
    assert_eq!(at_limit.as_array().map(Vec::len), Some(3), "{at_limit}");
}

#[tokio::test]
async fn default_deny_list_refuses_admin_and_friends() {
    let (gw, a) = single_upstream(GatewayConfig::new()).await;
    let answer = gw.call("admin_peers", json!([])).await;
    assert_eq!(
        error_of(&answer),
        (-32601, "method not allowed: admin_peers".into())
    );
    assert_eq!(answer["id"], 1);
    for method in [
        "personal_sign",
        "debug_traceTransaction",
        "miner_start",
        "txpool_content",
        "engine_newPayloadV3",
    ] {
        let answer = gw.call(method, json!([])).await;
        assert_eq!(
            error_of(&answer),
            (-32601, format!("method not allowed: {method}"))
        );
        assert_eq!(a.calls(method), 0);
    }
    assert_eq!(a.calls("admin_peers"), 0);
}

#[tokio::test]
async fn no_healthy_upstream_when_all_are_down() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.refuse().await;
    b.refuse().await;
    gw.wait_readyz(503).await;
    let answer = gw.call("eth_getBalance", json!([ADDR, "latest"])).await;
    let (code, message) = error_of(&answer);
    assert_eq!(code, -32002);
    assert!(message.starts_with("no healthy upstream"), "{message}");
    assert_eq!(answer["id"], 1);
}

#[tokio::test]
async fn upstream_timeout_when_every_attempt_times_out() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let cfg = GatewayConfig::new().server("request_timeout", "\"1s\"");
    let gw = Gateway::start_pair(cfg, &a, &b).await;
    a.set_delay_for("eth_getBalance", Some(Duration::from_secs(300)));
    b.set_delay_for("eth_getBalance", Some(Duration::from_secs(300)));
    let answer = gw.call("eth_getBalance", json!([ADDR, "latest"])).await;
    let (code, message) = error_of(&answer);
    assert_eq!(code, -32002);
    assert!(message.starts_with("upstream timeout"), "{message}");
}

#[tokio::test]
async fn body_over_max_request_bytes_is_413() {
    let (gw, a) = single_upstream(GatewayConfig::new().server("max_request_bytes", "1024")).await;
    let big = request(
        "1",
        "eth_call",
        json!([{"to": ADDR, "data": format!("0x{}", "ab".repeat(1024))}]),
    );
    let (status, _) = gw.post(&big).await;
    assert_eq!(status, 413);
    assert_eq!(a.calls("eth_call"), 0);
    let small = request("1", "eth_call", json!([{"to": ADDR, "data": "0x"}]));
    assert_eq!(result_of(&gw.rpc(&small).await), "0x");
}

#[tokio::test]
async fn methods_other_than_post_get_options_are_405() {
    let (gw, _a) = single_upstream(GatewayConfig::new()).await;
    let client = Http::per_request();
    for method in ["PUT", "DELETE", "PATCH"] {
        let body = Bytes::from(request("1", "eth_blockNumber", json!([])));
        let (status, _) = client
            .request(method, &gw.url(), Some(body), WAIT)
            .await
            .expect("answered");
        assert_eq!(status, 405, "{method}");
    }
    let (status, _) = client
        .request("OPTIONS", &gw.url(), Some(Bytes::new()), WAIT)
        .await
        .expect("answered");
    assert_ne!(status, 405, "OPTIONS is allowed");
}

#[tokio::test]
async fn upstream_result_is_relayed_byte_for_byte() {
    let (gw, a) = single_upstream(GatewayConfig::new()).await;
    let raw =
        r#"{"big":123456789012345678901234567890,"f":1.50,"e":1e400,"s":"\u00e9 é","n":[ 1 ,2 ]}"#;
    a.set_raw_result("eth_call", raw);
    let (_, body) = gw
        .post(&request("1", "eth_call", json!([{"to": ADDR}])))
        .await;
    assert_eq!(members(&body)["result"], raw);
}

#[tokio::test]
async fn slow_request_head_is_cut_off_after_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, _a) =
        single_upstream(GatewayConfig::new().server("header_timeout", "\"300ms\"")).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    tcp.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    // Never finish the head: ethgate must close the connection (with or without a 408) on its own.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(support::WAIT, tcp.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open {:?} after an unfinished head",
        support::WAIT
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn eth_subscribe_over_http_is_not_supported() {
    let (gw, a) = single_upstream(GatewayConfig::new()).await;
    let answer = gw.call("eth_subscribe", json!(["newHeads"])).await;
    assert_eq!(
        error_of(&answer),
        (-32601, "notifications not supported".into())
    );
    // ethgate's own subscription feed may use the upstream's WebSocket; nothing may come over HTTP.
    assert_eq!(a.calls_over(Transport::Http, "eth_subscribe"), 0);
}

#[tokio::test]
async fn eth_chain_id_is_answered_locally_when_upstreams_are_slow() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    // Slow probes, so the upstreams stay healthy while their eth_chainId hangs; a forwarded call would hang
    // for the whole request_timeout, far past the client's patience.
    let cfg = GatewayConfig::new()
        .chain_id(1)
        .server("request_timeout", "\"60s\"")
        .health("interval", "\"5s\"")
        .health("timeout", "\"2s\"")
        .health("failure_threshold", "3")
        .health("no_new_heads", "\"60s\"");
    let gw = Gateway::start_pair(cfg, &a, &b).await;
    a.hold("eth_chainId");
    b.hold("eth_chainId");
    let answer = gw.call("eth_chainId", json!([])).await;
    assert_eq!(result_of(&answer), "0x1");
    assert_eq!(answer["id"], 1);
}
