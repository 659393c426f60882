//! The allowlist is applied right after accept: allowed peers are served, others are closed
//! without a byte written back; IPv4-mapped IPv6 peers are judged as IPv4.

mod support;

use std::net::{IpAddr, SocketAddr};

use support::gateway::{Gateway, GatewayConfig};
use support::http::Http;
use support::mock::MockUpstream;
use support::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const REQUEST: &[u8] = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 51\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\"}";

/// Connects from `source`, sends one request and returns every byte the server wrote.
async fn exchange_from(source: IpAddr, target: SocketAddr) -> Vec<u8> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(target).await.unwrap();
    // The server may already have closed the socket: a failed write is part of the answer.
    let _ = stream.write_all(REQUEST).await;
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(WAIT, stream.read(&mut answer))
        .await
        .expect("server neither answered nor closed");
    answer.truncate(read.unwrap_or(0));
    answer
}

async fn gateway(mock: &MockUpstream, listen: &str, allow: &str) -> Gateway {
    let config = GatewayConfig::new()
        .server("listen", &format!("\"{listen}\""))
        .access("allow", allow)
        .upstream("a", mock, 0);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    gw
}

async fn denied_count(gw: &Gateway) -> String {
    let (_, body) = Http::per_request()
        .get(&format!("http://{}/metrics", gw.admin_addr()))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body).to_string();
    text.lines()
        .find(|l| l.starts_with("ethgate_denied_connections_total{reason=\"not_allowed\"}"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn allowed_source_is_served_and_others_are_closed_without_a_byte() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "127.0.0.1:0", "[\"127.0.0.1/32\"]").await;
    let served = exchange_from("127.0.0.1".parse().unwrap(), gw.addr()).await;
    assert!(
        served.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&served)
    );
    let refused = exchange_from("127.0.0.2".parse().unwrap(), gw.addr()).await;
    assert!(
        refused.is_empty(),
        "denied peer got bytes: {}",
        String::from_utf8_lossy(&refused)
    );
    assert_eq!(
        denied_count(&gw).await,
        "ethgate_denied_connections_total{reason=\"not_allowed\"} 1"
    );
}

#[tokio::test]
async fn mapped_ipv4_peers_on_a_dual_stack_port_are_judged_as_ipv4() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "[::]:0", "[\"127.0.0.1/32\"]").await;
    let port = gw.addr().port();
    let v4_target = SocketAddr::from(([127, 0, 0, 1], port));
    let served = exchange_from("127.0.0.1".parse().unwrap(), v4_target).await;
    assert!(
        served.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&served)
    );
    let refused = exchange_from("127.0.0.2".parse().unwrap(), v4_target).await;
    assert!(refused.is_empty());
    let v6_target = SocketAddr::new("::1".parse().unwrap(), port);
    let refused_v6 = exchange_from("::1".parse().unwrap(), v6_target).await;
    assert!(refused_v6.is_empty(), "::1 is not in the allowlist");
}

#[tokio::test]
async fn ipv6_loopback_is_allowed_by_the_default_list() {
    let mock = MockUpstream::start().await;
    let config = GatewayConfig::new()
        .server("listen", "\"[::1]:0\"")
        .upstream("a", &mock, 0);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    let served = exchange_from("::1".parse().unwrap(), gw.addr()).await;
    assert!(
        served.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&served)
    );
}
