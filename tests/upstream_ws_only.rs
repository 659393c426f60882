//! WebSocket-only upstreams (`ws` without `http`), and upstreams with `calls = "ws"`: probes,
//! calls and batches go over one multiplexed WebSocket with ids unique on it; subscriptions
//! are fed from it too; a lost connection is re-opened; `wss://` with credentials works the
//! same.

mod support;

use serde_json::json;
use support::gateway::{result_of, Gateway};
use support::mock::{MockUpstream, Transport};
use support::process::TempDir;
use support::tls_relay::{write_file, Ca, TlsRelay};
use support::ws_client::WsClient;

const HEAD: &str = "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"2s\"\ndrain_delay = \"0s\"\n\
    [health]\ninterval = \"300ms\"\ntimeout = \"250ms\"\nfailure_threshold = 1\nrecovery_threshold = 1\n\
    [admin]\nlisten = \"127.0.0.1:0\"\n";

#[tokio::test]
async fn a_ws_only_upstream_serves_probes_calls_batches_and_subscriptions() {
    let mock = MockUpstream::start().await;
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"ws-only\"\nws = \"{}\"\n",
        mock.ws_url()
    );
    // eth_chainId may be answered from ethgate's own knowledge: this one must go upstream.
    mock.set_result("eth_gasPrice", json!("0x2a"));
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_state("ws-only", "healthy").await;

    let answer = gw.call("eth_blockNumber", json!([])).await;
    assert_eq!(result_of(&answer), json!("0x64"));
    // A batch keeps the client's ids and order.
    let batch = gw
        .rpc(r#"[{"jsonrpc":"2.0","id":"x","method":"eth_chainId","params":[]},{"jsonrpc":"2.0","id":7,"method":"eth_gasPrice","params":[]}]"#)
        .await;
    assert_eq!(batch[0]["id"], json!("x"), "{batch}");
    assert_eq!(batch[0]["result"], json!("0x1"), "{batch}");
    assert_eq!(batch[1]["id"], json!(7), "{batch}");
    assert_eq!(batch[1]["result"], json!("0x2a"), "{batch}");
    // Many calls at once share the one connection; each gets its own answer.
    let calls = (0..32).map(|i| {
        let gw = &gw;
        async move {
            let body =
                format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"eth_gasPrice","params":[]}}"#);
            gw.rpc(&body).await
        }
    });
    for (i, answer) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(answer["id"], json!(i), "{answer}");
        assert_eq!(answer["result"], json!("0x2a"), "{answer}");
    }
    assert!(
        mock.requests()
            .iter()
            .all(|r| matches!(r.transport, Transport::Ws)),
        "nothing over HTTP"
    );
    assert_eq!(mock.calls_over(Transport::Ws, "eth_gasPrice"), 33);

    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    mock.wait_for_subscriptions("newHeads", 1).await;
    mock.set_head(101);
    mock.emit_new_head(101);
    assert_eq!(client.head_numbers(&id, 1).await, vec![101]);
}

#[tokio::test]
async fn calls_ws_moves_probes_calls_batches_and_writes_off_http() {
    let mock = MockUpstream::start().await;
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"both\"\nhttp = \"{}\"\nws = \"{}\"\ncalls = \"ws\"\n",
        mock.http_url(),
        mock.ws_url()
    );
    mock.set_result("eth_gasPrice", json!("0x2a"));
    mock.set_result("eth_sendRawTransaction", json!("0xfeed"));
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_state("both", "healthy").await;

    let answer = gw.call("eth_gasPrice", json!([])).await;
    assert_eq!(result_of(&answer), json!("0x2a"));
    let batch = gw
        .rpc(r#"[{"jsonrpc":"2.0","id":"x","method":"eth_gasPrice","params":[]},{"jsonrpc":"2.0","id":7,"method":"eth_blockNumber","params":[]}]"#)
        .await;
    assert_eq!(batch[0]["id"], json!("x"), "{batch}");
    assert_eq!(batch[0]["result"], json!("0x2a"), "{batch}");
    assert_eq!(batch[1]["id"], json!(7), "{batch}");
    assert_eq!(batch[1]["result"], json!("0x64"), "{batch}");
    // A write is broadcast over the same connection (renumbered there), answered under the
    // client's id.
    let sent = gw.call("eth_sendRawTransaction", json!(["0x02"])).await;
    assert_eq!(result_of(&sent), json!("0xfeed"), "{sent}");
    // WebSocket clients' calls too.
    let mut client = WsClient::connect(&gw.ws_url()).await;
    client.call(json!(5), "eth_gasPrice", json!([])).await;
    let answer = client.next_json().await;
    assert_eq!(answer["id"], json!(5), "{answer}");
    assert_eq!(answer["result"], json!("0x2a"), "{answer}");

    assert_eq!(mock.calls_over(Transport::Ws, "eth_gasPrice"), 3);
    assert_eq!(mock.calls_over(Transport::Ws, "eth_sendRawTransaction"), 1);
    assert!(
        mock.requests()
            .iter()
            .all(|r| matches!(r.transport, Transport::Ws)),
        "nothing over HTTP, probes included"
    );
}

fn config_with_max_response(mock: &MockUpstream, max_response_bytes: usize) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"5s\"\ndrain_delay = \"0s\"\n\
         max_response_bytes = {max_response_bytes}\n\
         [health]\ninterval = \"300ms\"\ntimeout = \"250ms\"\nfailure_threshold = 1\nrecovery_threshold = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"both\"\nhttp = \"{}\"\nws = \"{}\"\ncalls = \"ws\"\n",
        mock.http_url(),
        mock.ws_url()
    )
}

/// One client's answer over `max_response_bytes` is skipped as it streams in and charged to
/// its own call (named by the answer's opening): the calls sharing the connection get their
/// answers, and the node is not held responsible: it stays in rotation.
#[tokio::test]
async fn an_over_large_answer_among_calls_in_flight_does_not_take_the_node_out() {
    let mock = MockUpstream::start().await;
    mock.set_result("eth_getLogs", json!("ab".repeat(5000)));
    mock.set_result("eth_gasPrice", json!("0x2a"));
    let gw = Gateway::start_toml(&config_with_max_response(&mock, 4096)).await;
    gw.wait_state("both", "healthy").await;
    mock.hold("eth_gasPrice");
    let held = (0..3).map(|_| gw.call("eth_gasPrice", json!([])));
    let held = futures_util::future::join_all(held);
    let large = async {
        mock.wait_for_calls("eth_gasPrice", 3).await;
        let large = gw.call("eth_getLogs", json!([{}])).await;
        // Only once the large answer was dealt with do the held ones come.
        mock.release("eth_gasPrice");
        large
    };
    let (held, large) = tokio::join!(held, large);
    assert_eq!(large["error"]["code"], json!(-32003), "{large}");
    for answer in &held {
        assert_eq!(
            result_of(answer),
            json!("0x2a"),
            "not caught in it: {answer}"
        );
    }
    let status = gw.status().await;
    assert_eq!(status["upstreams"][0]["state"], "healthy", "{status}");
    let answer = gw.call("eth_blockNumber", json!([])).await;
    assert_eq!(result_of(&answer), json!("0x64"), "served again: {answer}");
}

/// An answer far over the limit (hundreds of read chunks) streams past: its call fails alone,
/// and a call on the same connection that was waiting meanwhile is answered.
#[tokio::test]
async fn a_huge_answer_fails_only_its_call_while_the_other_calls_go_on() {
    let mock = MockUpstream::start().await;
    mock.set_result("eth_getLogs", json!("a".repeat(16 << 20)));
    mock.set_result("eth_gasPrice", json!("0x2a"));
    let gw = Gateway::start_toml(&config_with_max_response(&mock, 64 * 1024)).await;
    gw.wait_state("both", "healthy").await;
    mock.hold("eth_gasPrice");
    let held = gw.call("eth_gasPrice", json!([]));
    let large = async {
        mock.wait_for_calls("eth_gasPrice", 1).await;
        let large = gw.call("eth_getLogs", json!([{}])).await;
        mock.release("eth_gasPrice");
        large
    };
    let (held, large) = tokio::join!(held, large);
    assert_eq!(large["error"]["code"], json!(-32003), "{large}");
    assert_eq!(result_of(&held), json!("0x2a"), "{held}");
    assert_eq!(
        mock.calls_over(Transport::Ws, "eth_gasPrice"),
        1,
        "answered, not retried"
    );
}

#[tokio::test]
async fn a_lost_ws_only_upstream_is_reconnected() {
    let mock = MockUpstream::start().await;
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"ws-only\"\nws = \"{}\"\n",
        mock.ws_url()
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_state("ws-only", "healthy").await;
    mock.refuse().await;
    gw.wait_state("ws-only", "unreachable").await;
    mock.restore().await;
    gw.wait_state("ws-only", "healthy").await;
    let answer = gw.call("eth_chainId", json!([])).await;
    assert_eq!(result_of(&answer), json!("0x1"));
}

#[tokio::test]
async fn a_wss_only_upstream_with_a_header_serves_calls() {
    let dir = TempDir::new("ethgate-wss-only").expect("temp dir");
    let ca = Ca::new("node-ca");
    let mock = MockUpstream::start().await;
    let relay = TlsRelay::start(mock.addr().port(), &ca.issue("localhost"), None).await;
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"wss-only\"\nws = \"wss://localhost:{}/ws\"\ntls_ca = {:?}\n\
         headers = {{ Authorization = \"Bearer wss-token-1\" }}\n",
        relay.port(),
        ca_file.display().to_string()
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_state("wss-only", "healthy").await;
    let answer = gw.call("eth_chainId", json!([])).await;
    assert_eq!(result_of(&answer), json!("0x1"));
    // An answer of many TLS records and reads is assembled whole.
    let large = "ab".repeat(1 << 20);
    mock.set_result("eth_getLogs", json!(large));
    let answer = gw.call("eth_getLogs", json!([{}])).await;
    assert_eq!(result_of(&answer), json!(large), "2 MiB over wss");
    let seen = relay.seen().to_ascii_lowercase();
    assert!(seen.contains("authorization: bearer wss-token-1"), "{seen}");
    let status = gw.status().await.to_string();
    assert!(!status.contains("wss-token-1"), "{status}");
}

#[tokio::test]
async fn a_read_cut_off_on_a_ws_only_upstream_is_answered_by_the_next() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_result("eth_gasPrice", json!("0xa"));
    b.set_result("eth_gasPrice", json!("0xb"));
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"a\"\nws = \"{}\"\npriority = 0\n\
         [[upstream]]\nname = \"b\"\nhttp = \"{}\"\npriority = 1\n",
        a.ws_url(),
        b.http_url()
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_all_healthy().await;
    a.hold("eth_gasPrice");
    let call = gw.call("eth_gasPrice", json!([]));
    let cut = async {
        a.wait_for_calls("eth_gasPrice", 1).await;
        // The request was written; the connection dies before the answer: "no answer",
        // and a read is retried on the next upstream.
        a.refuse().await;
    };
    let (answer, ()) = tokio::join!(call, cut);
    assert_eq!(result_of(&answer), json!("0xb"));
    assert_eq!(b.calls("eth_gasPrice"), 1);
}
