//! Upstreams without WebSocket feed subscriptions by HTTP polling: heads, gap fills and logs
//! as from any source, used only while no WebSocket upstream can feed.

mod support;

use serde_json::json;
use support::gateway::{Gateway, GatewayConfig};
use support::mock::MockUpstream;
use support::ws_client::WsClient;

fn config() -> GatewayConfig {
    GatewayConfig::new()
        .health("interval", "\"200ms\"")
        .health("timeout", "\"150ms\"")
        .server("subscription_grace", "\"10s\"")
}

#[tokio::test]
async fn an_http_only_upstream_feeds_heads_by_polling() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let gw = Gateway::start(&config().upstream_http("a", &a.http_url(), 0)).await;
    gw.wait_all_healthy().await;
    // The first poll reports the head of the moment, as a new source's first head.
    gw.wait_status("first poll", |s| s["feed"]["head"] == 10)
        .await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    a.set_head(11);
    assert_eq!(client.head_numbers(&id, 1).await, [11]);
    a.set_head(14);
    assert_eq!(
        client.head_numbers(&id, 3).await,
        [12, 13, 14],
        "gaps filled by hash"
    );
    let status = gw.status().await;
    assert_eq!(status["feed"]["source"], "a");
}

#[tokio::test]
async fn subscriptions_fail_over_to_an_http_only_upstream_and_back_to_websocket() {
    let ws = MockUpstream::start().await;
    let http_only = MockUpstream::start().await;
    for m in [&ws, &http_only] {
        m.set_head(10);
    }
    let gw = Gateway::start(
        &config()
            .upstream_http("polled", &http_only.http_url(), 0)
            .upstream("pushed", &ws, 1),
    )
    .await;
    gw.wait_all_healthy().await;
    ws.wait_for_subscriptions("newHeads", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    let mut logs = WsClient::connect(&gw.ws_url()).await;
    let logs_id = logs.subscribe(json!(["logs", {}])).await;
    ws.set_head(11);
    ws.emit_new_head(11);
    assert_eq!(
        client.head_numbers(&id, 1).await,
        [11],
        "WebSocket preferred over priority"
    );

    ws.refuse().await;
    http_only.set_head(13);
    assert_eq!(
        client.head_numbers(&id, 2).await,
        [12, 13],
        "the polled fallback fills the gap"
    );
    gw.wait_status("polled feeds", |s| s["feed"]["source"] == "polled")
        .await;

    ws.restore().await;
    ws.set_head(14);
    http_only.set_head(14);
    gw.wait_status("back on WebSocket", |s| s["feed"]["source"] == "pushed")
        .await;
    ws.set_head(15);
    ws.emit_new_head(15);
    let mut numbers = client.head_numbers(&id, 1).await;
    if numbers == [14] {
        numbers = client.head_numbers(&id, 1).await;
    }
    assert_eq!(numbers, [15], "each head once across both switches");
    assert!(logs_id.starts_with("0x"));
    assert!(
        http_only.calls("eth_getLogs") >= 1,
        "logs came from the polled source too"
    );
}
