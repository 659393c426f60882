//! The PROXY protocol behind a load balancer: the header is required from trusted proxies
//! only, the address it carries is what the allowlist judges, and a bad header closes.

mod support;

use std::net::SocketAddr;

use support::gateway::{Gateway, GatewayConfig};
use support::http::Http;
use support::mock::MockUpstream;
use support::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const REQUEST: &[u8] = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 51\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\"}";

/// Connects from `source`, sends `prefix` then one request, returns what the server wrote.
async fn exchange(source: &str, target: SocketAddr, prefix: &[u8]) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let mut stream = socket.connect(target).await.unwrap();
    let _ = stream.write_all(&[prefix, REQUEST].concat()).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("answer or close")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).to_string()
}

fn v2_tcp4(source: [u8; 4], destination: [u8; 4]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    header.extend_from_slice(&source);
    header.extend_from_slice(&destination);
    header.extend_from_slice(&[0x1f, 0x90, 0x21, 0x61]);
    header
}

async fn gateway(mock: &MockUpstream) -> Gateway {
    let config = GatewayConfig::new()
        .access("allow", r#"["10.1.0.0/16", "127.0.0.2/32"]"#)
        .access("proxy_protocol", "true")
        .access("trusted_proxies", r#"["127.0.0.1/32"]"#)
        .upstream("a", mock, 0);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    gw
}

#[tokio::test]
async fn v1_header_from_a_trusted_proxy_is_judged_by_the_client_it_carries() {
    let mock = MockUpstream::start().await;
    mock.set_head(5);
    let gw = gateway(&mock).await;
    let allowed = exchange(
        "127.0.0.1",
        gw.addr(),
        b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 8545\r\n",
    )
    .await;
    assert!(
        allowed.starts_with("HTTP/1.1 200") && allowed.contains("\"0x5\""),
        "{allowed}"
    );
    let denied = exchange(
        "127.0.0.1",
        gw.addr(),
        b"PROXY TCP4 192.0.2.9 10.0.0.1 5555 8545\r\n",
    )
    .await;
    assert!(
        denied.is_empty(),
        "client outside the allowlist got: {denied}"
    );
}

#[tokio::test]
async fn v2_header_from_a_trusted_proxy_is_accepted_and_local_health_checks_pass() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let allowed = exchange(
        "127.0.0.1",
        gw.addr(),
        &v2_tcp4([10, 1, 9, 9], [10, 0, 0, 1]),
    )
    .await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    let denied = exchange(
        "127.0.0.1",
        gw.addr(),
        &v2_tcp4([192, 0, 2, 1], [10, 0, 0, 1]),
    )
    .await;
    assert!(denied.is_empty(), "{denied}");
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let health_check = exchange("127.0.0.1", gw.addr(), &local).await;
    assert!(
        health_check.starts_with("HTTP/1.1 200"),
        "LOCAL from the balancer: {health_check}"
    );
}

#[tokio::test]
async fn header_from_an_untrusted_peer_is_not_believed() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    // 127.0.0.2 is allowed on its own address but is no proxy: its header is just bad HTTP.
    let answer = exchange(
        "127.0.0.2",
        gw.addr(),
        b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 8545\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test]
async fn truncated_or_garbage_headers_close_the_connection() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    for bad in [
        &b"PROXY TCP4 10.1.2.3 10.0.0.1 5555"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 010.1.2.3 10.0.0.1 1 2\r\n",
    ] {
        let answer = exchange("127.0.0.1", gw.addr(), bad).await;
        assert!(
            answer.is_empty(),
            "{:?} got {answer}",
            String::from_utf8_lossy(bad)
        );
    }
    let (_, metrics) = Http::per_request()
        .get(&format!("http://{}/metrics", gw.admin_addr()))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains("ethgate_denied_connections_total{reason=\"proxy_header\"} 3"),
        "{text}"
    );
}
