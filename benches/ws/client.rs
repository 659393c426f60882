//! The bench's own WebSocket client side: configuration, connect, next text frame.

use std::time::Duration;

use anyhow::{anyhow, bail};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Read buffer of the bench's own WebSockets (clients and upstream); ethgate's are its own.
pub const BENCH_WS_READ_BUFFER: usize = 8 * 1024;

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The configuration of every WebSocket the bench itself opens or accepts.
pub fn bench_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(BENCH_WS_READ_BUFFER)
}

/// Connects to `url` (Nagle off), within 15 s.
pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async_with_config(url, Some(bench_ws_config()), true),
    )
    .await
    .map_err(|_| anyhow!("WebSocket connect to {url}: timed out"))??;
    Ok(ws)
}

/// The next text frame (pings and pongs skipped); an error on close.
pub async fn next_text(ws: &mut Ws) -> anyhow::Result<Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => bail!("connection ended"),
        }
    }
}
