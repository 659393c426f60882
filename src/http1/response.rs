//! The client port's answers and their encoding: one buffer holding the head (and a small
//! body), so most answers leave in one write.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;

/// Methods the client port answers, listed in `Allow`.
const ALLOW: &str = "GET, POST, OPTIONS";

/// One answer of the client port.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// `Content-Type`, when there is a body.
    pub content_type: Option<&'static str>,
    /// Whether to list the allowed methods (`Allow`), as 204 to OPTIONS and 405 do.
    pub allow: bool,
    /// Whether the connection closes after this answer.
    pub close: bool,
    /// Whether to say `Connection: keep-alive`, which an HTTP/1.0 client needs to hear.
    pub keep_alive: bool,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A JSON-RPC answer.
    pub fn json(body: Vec<u8>) -> Self {
        Response {
            content_type: Some("application/json"),
            body: Bytes::from(body),
            ..Response::empty(StatusCode::OK)
        }
    }

    /// An answer without a body.
    pub fn empty(status: StatusCode) -> Self {
        Response {
            status,
            content_type: None,
            allow: false,
            close: false,
            keep_alive: false,
            body: Bytes::new(),
        }
    }

    /// A plain-text answer.
    pub fn plain(status: StatusCode, text: &'static str) -> Self {
        Response {
            content_type: Some("text/plain; charset=utf-8"),
            body: Bytes::from_static(text.as_bytes()),
            ..Response::empty(status)
        }
    }

    /// This answer with an `Allow` header.
    pub fn allowing(mut self) -> Self {
        self.allow = true;
        self
    }

    /// This answer, after which the connection closes.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Writes the head into `out`, then the body unless `head_only` (an answer to HEAD).
    pub fn encode(&self, head_only: bool, out: &mut Vec<u8>) {
        status_line(self.status, out);
        out.extend_from_slice(b"date: ");
        with_date(|date| out.extend_from_slice(date));
        if let Some(content_type) = self.content_type {
            out.extend_from_slice(b"\r\ncontent-type: ");
            out.extend_from_slice(content_type.as_bytes());
        }
        if self.allow {
            out.extend_from_slice(b"\r\nallow: ");
            out.extend_from_slice(ALLOW.as_bytes());
        }
        if self.close {
            out.extend_from_slice(b"\r\nconnection: close");
        } else if self.keep_alive {
            out.extend_from_slice(b"\r\nconnection: keep-alive");
        }
        // RFC 9110 §8.6: never on a 204.
        if self.status != StatusCode::NO_CONTENT {
            out.extend_from_slice(b"\r\ncontent-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The head of a `101 Switching Protocols` to a WebSocket upgrade.
pub fn switching_protocols(accept: &str, out: &mut Vec<u8>) {
    status_line(StatusCode::SWITCHING_PROTOCOLS, out);
    out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    with_date(|date| out.extend_from_slice(date));
    out.extend_from_slice(b"\r\n\r\n");
}

/// The interim answer a client sending `Expect: 100-continue` waits for.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn status_line(status: StatusCode, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Calls `f` with the current IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != now {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(now));
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = now;
            }
        }
        f(&cached.1);
    });
}
