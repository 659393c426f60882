//! Reading one request: its head within `header_timeout`, its body within `body_timeout` and
//! `max_request_bytes`, and the refusals either may end in.

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::{Body, Connection, Refusal, READ_CHUNK};
use crate::frontend::http as front;
use crate::http1::chunked::{self, BodyError};
use crate::http1::response::CONTINUE;
use crate::http1::{request, BodyLength, HeadError, RequestHead, Response};

/// A read buffer grown past this (by a large body) is not kept for the next request.
const KEEP_READ_BUFFER: usize = 64 * 1024;

impl<IO> Connection<'_, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The next request head; at shutdown, an idle connection closes.
    pub(super) async fn read_head(&mut self) -> Result<RequestHead, Refusal> {
        self.arm(self.settings.header_timeout);
        // Bytes already buffered (a pipelined request) are parsed at once.
        let mut may_be_complete = !self.buf.is_empty();
        loop {
            if may_be_complete {
                match request::parse(&self.buf) {
                    Ok(Some((len, head))) => {
                        self.log(len);
                        self.buf.advance(len);
                        return Ok(head);
                    }
                    Ok(None) => {}
                    Err(error) => return Err(Refusal::Answer(refused_head(error))),
                }
            }
            if self.buf.len() > request::MAX_HEAD_BYTES {
                return Err(Refusal::Answer(refused_head(HeadError::TooLarge)));
            }
            let idle = self.buf.is_empty();
            let scanned = self.buf.len();
            self.buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                biased;
                read = self.io.read_buf(&mut self.buf) => read,
                _ = &mut self.shutdown, if idle => return Err(Refusal::Close),
                // A keep-alive connection that stays silent just closes; half a head gets 408.
                _ = &mut self.timer => return Err(if idle {
                    Refusal::Close
                } else {
                    Refusal::Answer(Response::empty(StatusCode::REQUEST_TIMEOUT).closing())
                }),
            };
            match read {
                Ok(0) | Err(_) => return Err(Refusal::Close),
                Ok(_) => {}
            }
            // A head's first read is parsed at once (it usually holds the whole head); after
            // that, only once the blank line may have arrived, so a head sent a byte at a
            // time costs one scan of each byte rather than one parse per segment.
            may_be_complete = idle || ends_head(&self.buf[scanned.saturating_sub(3)..]);
        }
    }

    /// Reads the body `head` announces, within `body_timeout` and `max_request_bytes`.
    pub(super) async fn read_body(&mut self, head: &RequestHead) -> Result<Body, Refusal> {
        let limit = self.settings.frontend.max_request_bytes;
        let wanted = match head.body {
            BodyLength::Empty => return Ok(Body::Buffered(0)),
            BodyLength::Length(len) if len > limit as u64 => {
                return Err(Refusal::Answer(front::too_large()))
            }
            BodyLength::Length(len) => Some(len as usize),
            BodyLength::Chunked => None,
        };
        if let Some(len) = wanted.filter(|&len| self.buf.len() >= len) {
            // The body came with its head, as it usually does: no timer to arm.
            return Ok(Body::Buffered(len));
        }
        // The client waits for this before sending the body (curl does, above 1 KiB); an
        // HTTP/1.0 client must not get it.
        let interim = head.expect_continue && head.http11;
        if interim && self.write_all(CONTINUE).await.is_err() {
            return Err(Refusal::Close);
        }
        self.arm(self.settings.frontend.body_timeout);
        let read = async {
            match wanted {
                Some(len) => read_exact(&mut self.io, &mut self.buf, len).await,
                None => chunked::read(&mut self.io, &mut self.buf, limit)
                    .await
                    .map(Body::Decoded),
            }
        };
        tokio::select! {
            biased;
            body = read => body.map_err(refused_body),
            _ = &mut self.timer => Err(Refusal::Answer(front::body_timed_out())),
        }
    }

    /// Gives back the memory a large body left in the read buffer, keeping unread bytes.
    pub(super) fn trim_read_buffer(&mut self) {
        trim(&mut self.buf);
    }
}

fn trim(buf: &mut BytesMut) {
    if buf.capacity() > KEEP_READ_BUFFER {
        *buf = BytesMut::from(&buf[..]);
    }
}

/// Whether `bytes` hold the blank line that ends a head (`\n\r\n`, or `\n\n`, which httparse
/// accepts too).
fn ends_head(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(at, pair)| pair == b"\n\n" || (pair == b"\r\n" && at > 0 && bytes[at - 1] == b'\n'))
}

/// Reads until the buffer holds `len` body bytes.
async fn read_exact<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    len: usize,
) -> Result<Body, BodyError> {
    // The whole announced length at once (at most `max_request_bytes`, and only address
    // space until bytes arrive): growing the buffer as the body came in made normal clients
    // next to 5 MiB batch bombs twice as slow (`cargo bench --bench hostile`).
    if buf.len() < len {
        buf.reserve(len - buf.len());
    }
    while buf.len() < len {
        match io.read_buf(buf).await {
            Ok(0) => return Err(BodyError::Closed),
            Ok(_) => {}
            Err(error) => return Err(BodyError::Io(error)),
        }
    }
    Ok(Body::Buffered(len))
}

fn refused_head(error: HeadError) -> Response {
    match error {
        HeadError::TooLarge => Response::plain(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large\n",
        ),
        HeadError::Unsupported => Response::plain(
            StatusCode::NOT_IMPLEMENTED,
            "only the chunked transfer coding is supported\n",
        ),
        HeadError::Invalid(why) => {
            tracing::debug!(why, "invalid request head");
            Response::plain(StatusCode::BAD_REQUEST, "invalid request head\n")
        }
    }
    .closing()
}

fn refused_body(error: BodyError) -> Refusal {
    match error {
        BodyError::TooLarge => Refusal::Answer(front::too_large()),
        BodyError::Invalid(_) => Refusal::Answer(front::bad_body()),
        BodyError::Closed | BodyError::Io(_) => Refusal::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_head_is_found_across_read_boundaries() {
        assert!(ends_head(b"\r\n\r\n"));
        assert!(ends_head(b"\n\r\n"));
        assert!(ends_head(b"x\n\n"));
        assert!(!ends_head(b"\r\n\r"));
        assert!(!ends_head(b"a\r\nb\r\n"));
        assert!(!ends_head(b"\r\n"));
    }

    #[test]
    fn a_read_buffer_grown_by_a_large_body_is_given_back_with_its_unread_bytes() {
        let mut buf = BytesMut::with_capacity(5 << 20);
        buf.extend_from_slice(b"POST / HTTP/1.1\r\n");
        trim(&mut buf);
        assert!(buf.capacity() <= KEEP_READ_BUFFER, "{}", buf.capacity());
        assert_eq!(&buf[..], b"POST / HTTP/1.1\r\n");
        let mut small = BytesMut::with_capacity(4096);
        let kept = small.as_ptr();
        trim(&mut small);
        assert_eq!(small.as_ptr(), kept, "a small buffer is kept");
    }
}
