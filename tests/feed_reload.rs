//! A reload that changes `[health]` reaches the subscription feed, not only the probers: the
//! followed source's liveness window and a polled source's period take the new values at
//! once. Each test starts with a 60 s interval, whose timings (pinged after 60 s, given up
//! after 121 s, polled every 30 s) would keep it waiting far past `WAIT` without the reload.

mod support;

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::mock::MockUpstream;
use support::ws_client::WsClient;
use support::{gateway::Gateway, WAIT};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// `[server]`, `[health]` with `interval` (timeout 1/2 of it, stall detection off) and
/// `[admin]`, followed by `upstreams`.
fn config(interval_ms: u64, upstreams: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"2s\"\nsubscription_grace = \"60s\"\n\
         [health]\ninterval = \"{interval_ms}ms\"\ntimeout = \"{}ms\"\nno_new_heads = \"0s\"\n\
         failure_threshold = 3\nrecovery_threshold = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{upstreams}",
        interval_ms / 2
    )
}

/// Applies `text` through the in-process reloader, as SIGHUP does with the file.
async fn reload(gw: &Gateway, text: &str) -> Vec<String> {
    let config = ethgate::config::Config::from_toml_str(text).unwrap();
    gw.reloader().reload(config).await.unwrap()
}

/// A WebSocket endpoint that answers the first request on each connection (the feed's
/// newHeads subscribe) and then reads nothing more, so pings get no pong: a half-open node
/// as the feed sees it. Each answered subscribe is reported on the returned channel.
async fn silent_ws() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (subscribed, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Held open, never read: the sockets stay up but silent until the test ends.
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                continue;
            };
            if let Some(Ok(Message::Text(text))) = ws.next().await {
                let request: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                let id = request["id"].clone();
                let answer = json!({"jsonrpc": "2.0", "id": id, "result": "0x51"});
                if ws.send(Message::text(answer.to_string())).await.is_ok() {
                    let _ = subscribed.send(());
                }
            }
            held.push(ws);
        }
    });
    (addr, events)
}

#[tokio::test]
async fn a_reload_gives_up_a_silent_source_after_the_new_liveness_window() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    for m in [&a, &b] {
        m.set_head(100);
    }
    let (silent, mut subscribed) = silent_ws().await;
    // `a` probes healthy over HTTP while its WebSocket, which feeds, is silent.
    let upstreams = format!(
        "[[upstream]]\nname = \"a\"\nhttp = \"{}\"\nws = \"ws://{silent}\"\npriority = 0\n\
         [[upstream]]\nname = \"b\"\nhttp = \"{}\"\nws = \"{}\"\npriority = 1\n",
        a.http_url(),
        b.http_url(),
        b.ws_url()
    );
    let gw = Gateway::start_toml(&config(60_000, &upstreams)).await;
    tokio::time::timeout(WAIT, subscribed.recv())
        .await
        .expect("the feed subscribes to a")
        .expect("silent endpoint running");
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;

    let notes = reload(&gw, &config(600, &upstreams)).await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("subscription feed retimed") && n.contains("given up after 1.5s")),
        "{notes:?}"
    );
    // Given up after the new 1.5 s (not the old 121 s, nor at the old 60 s check): b feeds.
    b.wait_for_subscriptions("newHeads", 1).await;
    gw.wait_status("b feeds", |s| s["feed"]["source"] == "b")
        .await;
    b.emit_new_head(101);
    assert_eq!(client.head_numbers(&id, 1).await, [101]);
}

#[tokio::test]
async fn a_reload_applies_a_polled_sources_new_period_at_once() {
    let a = MockUpstream::start().await;
    a.set_head(10);
    let upstreams = format!(
        "[[upstream]]\nname = \"a\"\nhttp = \"{}\"\npriority = 0\n",
        a.http_url()
    );
    let gw = Gateway::start_toml(&config(60_000, &upstreams)).await;
    // The first poll is at once; the next would be 30 s later.
    gw.wait_status("first poll", |s| s["feed"]["head"] == 10)
        .await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    a.set_head(11);
    let notes = reload(&gw, &config(600, &upstreams)).await;
    assert!(
        notes.iter().any(|n| n.contains("polled every 300ms")),
        "{notes:?}"
    );
    assert_eq!(
        client.head_numbers(&id, 1).await,
        [11],
        "polled at the new period, without a new subscription"
    );
    a.set_head(12);
    assert_eq!(client.head_numbers(&id, 1).await, [12], "and goes on");
}
