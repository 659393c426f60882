//! The WebSocket writer frames notifications itself while tungstenite answers the client's
//! pings: every frame a client gets must stay whole, whatever the interleaving.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::gateway::{Gateway, GatewayConfig};
use support::mock::{header, MockUpstream};
use tokio_tungstenite::tungstenite::Message;

/// Heads sent while the client pings and does not read yet.
const HEADS: u64 = 24;

#[tokio::test]
async fn pongs_never_land_inside_notification_frames_of_a_slow_reader() {
    let a = MockUpstream::start().await;
    a.set_head(1);
    let config = GatewayConfig::new().upstream("a", &a, 0);
    let gw = Gateway::start(&config).await;
    gw.wait_all_healthy().await;
    a.wait_for_calls("eth_subscribe", 1).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
    let subscribe = r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#;
    socket.send(Message::text(subscribe)).await.unwrap();
    let answer = tokio::time::timeout(support::WAIT, socket.next()).await;
    assert!(
        matches!(answer, Ok(Some(Ok(Message::Text(_))))),
        "{answer:?}"
    );
    // Heads of ~128 KiB each fill the socket buffers, so the server's writes go out in parts,
    // while the client's pings reach the server between them and get answered.
    for n in 2..2 + HEADS {
        let mut h = header(n);
        h["extraData"] = json!(format!("0x{}", "cd".repeat(64 * 1024)));
        a.set_head(n);
        a.notify("newHeads", h);
        let ping = n.to_be_bytes().to_vec();
        socket.send(Message::Ping(ping.into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The client reads only now. tungstenite parses every frame: a pong cut into a data frame
    // (or one of ours cut into a pong) is a protocol error or garbage JSON here.
    let (mut heads, mut pongs) = (Vec::new(), Vec::new());
    let last_ping = 1 + HEADS;
    while heads.len() < HEADS as usize || pongs.last() != Some(&last_ping) {
        let frame = tokio::time::timeout(support::WAIT, socket.next())
            .await
            .expect("every head and pong arrives");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).expect("whole JSON");
                let number = &value["params"]["result"]["number"];
                heads.push(u64::from_str_radix(&number.as_str().unwrap()[2..], 16).unwrap());
            }
            Some(Ok(Message::Pong(data))) => {
                pongs.push(u64::from_be_bytes(data[..].try_into().unwrap()));
            }
            other => panic!("unexpected frame: {other:?}"),
        }
    }
    assert_eq!(heads, (2..2 + HEADS).collect::<Vec<_>>());
    // A pong may stand for several pings (RFC 6455 §5.5.3), never out of order.
    assert!(pongs.windows(2).all(|w| w[0] < w[1]), "{pongs:?}");
}
