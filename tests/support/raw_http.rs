//! A raw HTTP/1.1 keep-alive client, so tests see the exact headers ethgate sends and can
//! connect from a chosen loopback source address (to exercise the allowlist).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::http::WAIT;

/// One keep-alive connection.
pub struct RawHttp {
    stream: TcpStream,
    /// Bytes read past the last answer (pipelined answers arrive together).
    buf: Vec<u8>,
}

/// One answer: status, lower-cased head, body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// Whether the server said `Connection: close`.
    pub fn asks_to_close(&self) -> bool {
        self.head
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"))
    }
}

impl RawHttp {
    /// Connects to `addr` (a loopback address).
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawHttp> {
        assert!(addr.ip().is_loopback(), "test traffic stays on loopback");
        Ok(RawHttp {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    /// Connects to `addr` from `source` (127.0.0.0/8).
    pub async fn connect_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<RawHttp> {
        Ok(RawHttp {
            stream: connect_from(source, addr).await?,
            buf: Vec::new(),
        })
    }

    /// POSTs `body`; `None` when the server closed the connection instead of answering.
    pub async fn post(&mut self, body: &str) -> Option<Answer> {
        let request = format!(
            "POST / HTTP/1.1\r\nhost: ethgate\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await.ok()?;
        self.answer().await
    }

    /// Writes `bytes` as they are: a hand-made request, or several.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next answer; `None` when the server closed the connection instead.
    pub async fn answer(&mut self) -> Option<Answer> {
        tokio::time::timeout(WAIT, self.read_answer(true))
            .await
            .unwrap_or_else(|_| panic!("no answer and no close within {WAIT:?}"))
    }

    /// The next answer to a HEAD request: its head only, whatever its `content-length`.
    pub async fn answer_to_head(&mut self) -> Option<Answer> {
        tokio::time::timeout(WAIT, self.read_answer(false))
            .await
            .unwrap_or_else(|_| panic!("no answer and no close within {WAIT:?}"))
    }

    async fn read_answer(&mut self, with_body: bool) -> Option<Answer> {
        let mut buf = std::mem::take(&mut self.buf);
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.read_more(&mut buf).await?;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .filter(|_| with_body)
            .unwrap_or(0);
        while buf.len() < head_end + length {
            self.read_more(&mut buf).await?;
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        self.buf = buf.split_off(head_end + length);
        Some(Answer { status, head, body })
    }

    async fn read_more(&mut self, buf: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }

    /// Whether the server closes this connection (EOF or reset within `WAIT`) with nothing
    /// more said.
    pub async fn closed_by_server(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(WAIT, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A TCP connection to `addr` from `source` (both loopback).
pub async fn connect_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    assert!(addr.ip().is_loopback() && source[0] == 127, "loopback only");
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}
