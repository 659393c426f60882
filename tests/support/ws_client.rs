//! A raw WebSocket JSON-RPC client for tests: frames in, parsed JSON out, close codes seen.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::http::WAIT;

/// One client connection.
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the next frame was.
#[derive(Debug)]
pub enum Frame {
    /// A JSON text message.
    Json(Value),
    /// The server closed with this code.
    Closed(Option<u16>),
}

impl WsClient {
    /// Connects to `url` (panics after `WAIT`).
    pub async fn connect(url: &str) -> WsClient {
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect timed out")
            .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"));
        WsClient { socket }
    }

    /// Sends a raw text frame.
    pub async fn send(&mut self, text: &str) {
        self.socket
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    /// Sends `text` as one text message cut into `pieces` frames (a start and continuations).
    pub async fn send_fragmented(&mut self, text: &str, pieces: usize) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
        let bytes = text.as_bytes();
        let size = bytes.len().div_ceil(pieces);
        let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
            let frame = WireFrame::message(chunk.to_vec(), opcode, i + 1 == chunks.len());
            self.socket.feed(Message::Frame(frame)).await.expect("send");
        }
        self.socket.flush().await.expect("flush");
    }

    /// Sends a call with `id`.
    pub async fn call(&mut self, id: Value, method: &str, params: Value) {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&body.to_string()).await;
    }

    /// The next frame within `limit`, or `None` when nothing came.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Frame> {
        loop {
            let frame = tokio::time::timeout(limit, self.socket.next()).await.ok()?;
            return Some(match frame {
                Some(Ok(Message::Text(text))) => {
                    Frame::Json(serde_json::from_str(text.as_str()).expect("JSON frame"))
                }
                Some(Ok(Message::Close(frame))) => Frame::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Frame::Closed(None),
            });
        }
    }

    /// The next JSON message (panics on close or after `WAIT`).
    pub async fn next_json(&mut self) -> Value {
        match self.next_within(WAIT).await {
            Some(Frame::Json(value)) => value,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// Waits for the server's close frame and returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_within(WAIT).await {
                Some(Frame::Closed(code)) => return code,
                Some(Frame::Json(_)) => continue,
                None => panic!("server did not close within {WAIT:?}"),
            }
        }
    }

    /// Subscribes and returns the subscription id.
    pub async fn subscribe(&mut self, params: Value) -> String {
        self.call(json!("sub"), "eth_subscribe", params).await;
        let answer = self.next_json().await;
        assert_eq!(answer["id"], "sub", "subscribe answer first: {answer}");
        answer["result"]
            .as_str()
            .unwrap_or_else(|| panic!("subscribe failed: {answer}"))
            .to_string()
    }

    /// The next `n` notifications' results for subscription `id`.
    pub async fn notifications(&mut self, id: &str, n: usize) -> Vec<Value> {
        let mut results = Vec::with_capacity(n);
        while results.len() < n {
            let message = self.next_json().await;
            assert_eq!(
                message["method"], "eth_subscription",
                "unexpected message {message}"
            );
            assert_eq!(message["params"]["subscription"], id, "{message}");
            results.push(message["params"]["result"].clone());
        }
        results
    }

    /// Block numbers of the next `n` newHeads notifications.
    pub async fn head_numbers(&mut self, id: &str, n: usize) -> Vec<u64> {
        self.notifications(id, n)
            .await
            .iter()
            .map(|h| {
                u64::from_str_radix(h["number"].as_str().unwrap().trim_start_matches("0x"), 16)
                    .unwrap()
            })
            .collect()
    }

    /// Asserts that nothing arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(frame) = self.next_within(quiet).await {
            panic!("expected nothing, got {frame:?}");
        }
    }

    /// Sends a close frame.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
