//! A client's request head, parsed by `httparse` into the few facts the client port acts on:
//! the method, how the body is framed, whether the connection stays open, `Expect:
//! 100-continue` and a WebSocket upgrade. Framing is judged strictly (RFC 9112 §6), since a
//! head two parties read differently is how requests get smuggled past a proxy.

use std::mem::MaybeUninit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::headers::{connection_tokens, content_length, trim};

/// Largest request head accepted (request line and headers): 431 beyond.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one request head: 431 beyond.
pub const MAX_HEADERS: usize = 100;

/// The request methods the client port tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// JSON-RPC.
    Post,
    /// Health check or WebSocket upgrade.
    Get,
    /// CORS preflight and discovery.
    Options,
    /// As GET, answered without a body.
    Head,
    /// Anything else: 405.
    Other,
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What a request head says, owned so the read buffer can move on.
#[derive(Debug)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// HTTP/1.1 rather than 1.0 (which must be told when a connection stays open).
    pub http11: bool,
    /// Whether the client lets the connection carry another request afterwards.
    pub keep_alive: bool,
    /// How the body is delimited.
    pub body: BodyLength,
    /// `Expect: 100-continue`: the client waits for an interim answer before the body.
    pub expect_continue: bool,
    /// `Upgrade: websocket`.
    pub websocket: Option<WebSocketUpgrade>,
}

/// A WebSocket upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub struct WebSocketUpgrade {
    /// The `Sec-WebSocket-Accept` value, when the request is valid: HTTP/1.1, version 13 and
    /// a key of 16 base64-encoded bytes.
    pub accept: Option<String>,
}

/// Why a head is refused; each maps to a status and the connection is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not a valid HTTP/1.x head, or ambiguous framing: 400.
    #[error("{0}")]
    Invalid(&'static str),
    /// A transfer coding other than `chunked` alone: 501.
    #[error("unsupported transfer coding")]
    Unsupported,
    /// Over `MAX_HEAD_BYTES` or `MAX_HEADERS`: 431.
    #[error("request head too large")]
    TooLarge,
}

/// The parsed head and its length in `buf`; `None` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(usize, RequestHead)>, HeadError> {
    // Left uninitialised: filling 100 empty headers for every request cost more than parsing
    // a typical head's few.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid("invalid request head")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let method = match request.method.unwrap_or("") {
        "POST" => Method::Post,
        "GET" => Method::Get,
        "OPTIONS" => Method::Options,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let http11 = request.version == Some(1);
    let mut facts = Facts::default();
    for header in request.headers.iter() {
        facts.note(header)?;
    }
    Ok(Some((len, facts.into_head(method, http11)?)))
}

/// What the access log shows of a complete head.
pub struct Description {
    /// The method as sent.
    pub method: String,
    /// The request target.
    pub path: String,
    /// The values of the `X-Forwarded-For` headers, in order.
    pub forwarded: Vec<String>,
}

/// The method, path and `X-Forwarded-For` values of a complete head, for the access log.
pub fn describe(buf: &[u8]) -> Description {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let _ = request.parse(buf);
    let forwarded = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_string)
        .collect();
    Description {
        method: request.method.unwrap_or("").to_string(),
        path: request.path.unwrap_or("").to_string(),
        forwarded,
    }
}

/// The headers that matter, gathered in one pass.
#[derive(Default)]
struct Facts {
    length: Option<u64>,
    /// `Transfer-Encoding` codings: how many are `chunked`, and whether another one is there.
    chunked_codings: usize,
    other_coding: bool,
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`, which HTTP/1.0 needs to keep the connection.
    keep_alive_token: bool,
    expect_continue: bool,
    upgrade_websocket: bool,
    websocket_key: Option<String>,
    websocket_version_13: bool,
}

impl Facts {
    fn note(&mut self, header: &httparse::Header<'_>) -> Result<(), HeadError> {
        let name = header.name;
        let value = trim(header.value);
        if name.eq_ignore_ascii_case("content-length") {
            let parsed =
                content_length(value).ok_or(HeadError::Invalid("invalid Content-Length"))?;
            if self.length.is_some_and(|l| l != parsed) {
                return Err(HeadError::Invalid("conflicting Content-Length"));
            }
            self.length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Several headers form one list. Only `chunked` alone is read: other codings
            // would hand compressed bytes to the JSON decoder.
            for coding in value.split(|&b| b == b',').map(trim) {
                if coding.eq_ignore_ascii_case(b"chunked") {
                    self.chunked_codings += 1;
                } else {
                    self.other_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let (close, keep_alive) = connection_tokens(value);
            self.close |= close;
            self.keep_alive_token |= keep_alive;
        } else if name.eq_ignore_ascii_case("expect") {
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("upgrade") {
            self.upgrade_websocket = value.eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            self.websocket_key = is_websocket_key(value).then(|| derive_accept_key(value));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            self.websocket_version_13 = value == b"13";
        }
        Ok(())
    }

    fn into_head(self, method: Method, http11: bool) -> Result<RequestHead, HeadError> {
        let encoded = self.chunked_codings > 0 || self.other_coding;
        let body = match (encoded, self.length) {
            // Both at once is the classic smuggling vector: refused rather than guessed at.
            (true, Some(_)) => {
                return Err(HeadError::Invalid(
                    "both Transfer-Encoding and Content-Length",
                ))
            }
            (true, None) if !http11 => {
                return Err(HeadError::Invalid("Transfer-Encoding in HTTP/1.0"))
            }
            (true, None) if self.chunked_codings == 1 && !self.other_coding => BodyLength::Chunked,
            (true, None) => return Err(HeadError::Unsupported),
            (false, Some(0) | None) => BodyLength::Empty,
            (false, Some(len)) => BodyLength::Length(len),
        };
        let keep_alive = if http11 {
            !self.close
        } else {
            self.keep_alive_token && !self.close
        };
        let websocket = self.upgrade_websocket.then(|| WebSocketUpgrade {
            accept: self
                .websocket_key
                .filter(|_| self.websocket_version_13 && http11),
        });
        Ok(RequestHead {
            method,
            http11,
            keep_alive,
            body,
            expect_continue: self.expect_continue,
            websocket,
        })
    }
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64, so 22 characters and `==` (RFC 6455 §4.1).
fn is_websocket_key(value: &[u8]) -> bool {
    value.len() == 24
        && value.ends_with(b"==")
        && value[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}
