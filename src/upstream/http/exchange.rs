//! One HTTP/1.1 POST and its answer on a kept-alive connection, driven by the calling task.
//!
//! Only what an upstream JSON-RPC answer needs, as pingora does for its own HTTP/1 client:
//! the head parsed by `httparse`, bodies framed by `Content-Length`, `chunked` or the end of
//! the connection, interim (1xx) answers skipped, and every read bounded by
//! `max_response_bytes`. Driving the exchange inline saves the task hop, channel and pool
//! machinery of a general-purpose client on every call.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::Stream;
use crate::http1::chunked::{self, BodyError};
use crate::http1::headers;

/// Largest response head accepted (status line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers parsed in one response head.
const MAX_HEADERS: usize = 64;

/// How an exchange failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// Nothing of the request reached the kernel: it was certainly not sent.
    NotWritten(io::Error),
    /// The request may have arrived, but no complete, well-formed answer came back.
    NoAnswer(String),
    /// The answer is larger than the limit.
    TooLarge,
}

/// A complete answer.
pub(super) struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// Whether the connection may carry another request.
    pub reusable: bool,
}

/// A request's head up to its `content-length` value, the same for every request of a pool:
/// worked out once, so a request costs no allocation and no copy of its body.
pub(super) fn head_start(path: &str, host: &str, headers: &[(HeaderName, HeaderValue)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + path.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out
}

/// Writes a request (`head_start` from [`head_start`], then `body`) and reads the answer,
/// reading at most `limit` body bytes.
pub(super) async fn exchange(
    stream: &mut Stream,
    buf: &mut BytesMut,
    (head_start, body): (&[u8], &[u8]),
    limit: usize,
) -> Result<Answer, Failure> {
    write(stream, head_start, body).await?;
    let head = loop {
        let head = read_head(stream, buf).await?;
        // Interim answers (100 Continue, 103 Early Hints) precede the real one.
        if !(100..200).contains(&head.status) {
            break head;
        }
    };
    // An answer that only says "try elsewhere" is not read: its body would only cost memory,
    // and the connection is closed rather than drained.
    if is_retry_status(head.status) {
        return Ok(Answer {
            status: head.status,
            body: Bytes::new(),
            reusable: false,
        });
    }
    let (body, reusable) = match head.framing {
        Framing::Empty => (Bytes::new(), head.keep_alive),
        Framing::Length(len) if len > limit as u64 => return Err(Failure::TooLarge),
        Framing::Length(len) => (
            read_exact(stream, buf, len as usize).await?,
            head.keep_alive,
        ),
        Framing::Chunked => (read_chunked(stream, buf, limit).await?, head.keep_alive),
        Framing::UntilClose => (read_to_close(stream, buf, limit).await?, false),
    };
    Ok(Answer {
        status: head.status,
        body,
        reusable: reusable && buf.is_empty(),
    })
}

/// Statuses that mean "try elsewhere": server errors and 429 Too Many Requests.
pub(super) fn is_retry_status(status: u16) -> bool {
    status >= 500 || status == 429
}

/// Writes the head's start, the length and blank line, and the body in one vectored write
/// when the socket takes it all (it almost always does).
async fn write(stream: &mut Stream, head_start: &[u8], body: &[u8]) -> Result<(), Failure> {
    let mut length = itoa::Buffer::new();
    let mut head_end = [0u8; 24];
    let digits = length.format(body.len()).as_bytes();
    head_end[..digits.len()].copy_from_slice(digits);
    head_end[digits.len()..digits.len() + 4].copy_from_slice(b"\r\n\r\n");
    let head_end = &head_end[..digits.len() + 4];
    let mut parts = [
        IoSlice::new(head_start),
        IoSlice::new(head_end),
        IoSlice::new(body),
    ];
    let mut parts = &mut parts[..];
    let mut written = 0;
    while !parts.is_empty() {
        match stream.write_vectored(parts).await {
            Ok(0) => return Err(lost(written, "connection closed while writing")),
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut parts, n);
            }
            Err(e) if written == 0 => return Err(Failure::NotWritten(e)),
            Err(e) => return Err(Failure::NoAnswer(format!("writing the request: {e}"))),
        }
    }
    match stream.flush().await {
        Ok(()) => Ok(()),
        Err(e) => Err(Failure::NoAnswer(format!("writing the request: {e}"))),
    }
}

fn lost(written: usize, what: &str) -> Failure {
    if written == 0 {
        Failure::NotWritten(io::Error::new(io::ErrorKind::WriteZero, what.to_string()))
    } else {
        Failure::NoAnswer(what.into())
    }
}

/// How the body of an answer is delimited.
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

/// Reads more bytes into `buf`; the end of the stream before `what` is complete is a failure.
async fn fill(stream: &mut Stream, buf: &mut BytesMut, what: &str) -> Result<(), Failure> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    match stream.read_buf(buf).await {
        Ok(0) => Err(Failure::NoAnswer(format!(
            "connection closed before the {what} was complete"
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::NoAnswer(format!("reading the {what}: {e}"))),
    }
}

async fn read_head(stream: &mut Stream, buf: &mut BytesMut) -> Result<Head, Failure> {
    loop {
        if let Some((len, head)) = parse_head(buf)? {
            buf.advance(len);
            return Ok(head);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Failure::NoAnswer("answer head too large".into()));
        }
        fill(stream, buf, "answer head").await?;
    }
}

/// The parsed head and its length, `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, Failure> {
    // Left uninitialised: filling every slot per answer cost more than parsing its few.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut response, buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::NoAnswer(format!("invalid HTTP answer: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let http11 = response.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut close = !http11;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = headers::content_length(header.value)
                .ok_or_else(|| Failure::NoAnswer("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Failure::NoAnswer("conflicting Content-Length".into()));
            }
            length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            chunked = headers::ends_chunked(header.value);
        } else if header.name.eq_ignore_ascii_case("connection") {
            // HTTP/1.0 stays open only when asked; `close` always wins.
            match headers::connection_tokens(header.value) {
                (true, _) => close = true,
                (false, true) if !http11 => close = false,
                _ => {}
            }
        }
    }
    // RFC 9112 §6.3: no body for 1xx, 204 and 304; Transfer-Encoding overrides
    // Content-Length; a non-chunked coding runs until the connection closes.
    let framing = match (status, encoded, chunked, length) {
        (100..=199 | 204 | 304, ..) => Framing::Empty,
        (_, true, true, _) => Framing::Chunked,
        (_, true, false, _) => Framing::UntilClose,
        (_, false, _, Some(len)) => Framing::Length(len),
        (_, false, _, None) => Framing::UntilClose,
    };
    let keep_alive = !close && !matches!(framing, Framing::UntilClose);
    Ok(Some((
        len,
        Head {
            status,
            framing,
            keep_alive,
        },
    )))
}

async fn read_exact(stream: &mut Stream, buf: &mut BytesMut, len: usize) -> Result<Bytes, Failure> {
    if buf.capacity() < len {
        buf.reserve(len - buf.len());
    }
    while buf.len() < len {
        fill(stream, buf, "answer body").await?;
    }
    Ok(buf.split_to(len).freeze())
}

async fn read_to_close(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Bytes, Failure> {
    loop {
        if buf.len() > limit {
            return Err(Failure::TooLarge);
        }
        buf.reserve(8192);
        match stream.read_buf(buf).await {
            Ok(0) => return Ok(buf.split().freeze()),
            Ok(_) => {}
            Err(e) => return Err(Failure::NoAnswer(format!("reading the answer body: {e}"))),
        }
    }
}

async fn read_chunked(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limit: usize,
) -> Result<Bytes, Failure> {
    chunked::read(stream, buf, limit)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge => Failure::TooLarge,
            BodyError::Invalid(what) => Failure::NoAnswer(what.into()),
            BodyError::Closed => {
                Failure::NoAnswer("connection closed before the answer body was complete".into())
            }
            BodyError::Io(e) => Failure::NoAnswer(format!("reading the answer body: {e}")),
        })
}
