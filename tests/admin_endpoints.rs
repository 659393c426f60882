//! The admin listener: /healthz, /readyz, /status.

mod support;

use serde_json::json;
use support::gateway::{upstream_entry, Gateway, GatewayConfig};
use support::mock::MockUpstream;

#[tokio::test]
async fn healthz_answers_ok_while_running() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start(&GatewayConfig::new().upstream("a", &a, 0)).await;
    let (code, body) = gw.admin_get("/healthz").await;
    assert_eq!(code, 200);
    assert_eq!(String::from_utf8_lossy(&body).trim(), "ok");
    // Even with no upstream in rotation the process is alive.
    a.refuse().await;
    gw.wait_readyz(503).await;
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
}

#[tokio::test]
async fn readyz_is_503_until_an_upstream_is_in_rotation() {
    let a = MockUpstream::start().await;
    a.refuse().await;
    let gw = Gateway::start(&GatewayConfig::new().upstream("a", &a, 0)).await;
    gw.wait_readyz(503).await;
    a.restore().await;
    gw.wait_readyz(200).await;
}

#[tokio::test]
async fn status_reports_every_upstream() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    gw.call(
        "eth_getBalance",
        json!(["0x00000000000000000000000000000000000000aa", "latest"]),
    )
    .await;
    let status = gw.wait_selected("a").await;
    assert_eq!(status["chain_id"], 1, "{status}");
    assert!(status["connections"].is_u64(), "connections: {status}");
    assert!(
        status["subscriptions"]["newHeads"].is_u64(),
        "subscriptions: {status}"
    );
    assert!(
        status["subscriptions"]["logs"].is_u64(),
        "subscriptions: {status}"
    );
    let upstreams = status["upstreams"].as_array().expect("upstreams array");
    assert_eq!(upstreams.len(), 2, "{status}");
    for (name, priority, selected) in [("a", 0, true), ("b", 1, false)] {
        let u = upstream_entry(&status, name).expect("upstream listed");
        assert_eq!(u["state"], "healthy", "{u}");
        assert_eq!(u["head"], 100, "{u}");
        assert_eq!(u["lag"], 0, "{u}");
        assert!(u["latency_ms"].is_number(), "latency_ms: {u}");
        assert_eq!(u["priority"], priority, "{u}");
        assert_eq!(u["selected"], selected, "{u}");
    }
}

#[tokio::test]
async fn status_follows_head_changes() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let gw = Gateway::start_pair(GatewayConfig::new(), &a, &b).await;
    a.set_head(103);
    b.set_head(101);
    let status = gw
        .wait_status("heads 103 and 101", |s| {
            upstream_entry(s, "a").is_some_and(|u| u["head"] == 103)
                && upstream_entry(s, "b").is_some_and(|u| u["head"] == 101)
        })
        .await;
    assert_eq!(
        upstream_entry(&status, "b").expect("b")["lag"],
        2,
        "{status}"
    );
    assert_eq!(
        upstream_entry(&status, "a").expect("a")["lag"],
        0,
        "{status}"
    );
}
