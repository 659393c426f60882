//! One client connection spoken as HTTP/1.1, driven by the connection's own task: read a head
//! (within `header_timeout`), its body (within `body_timeout`, at most `max_request_bytes`),
//! answer, and go round again while the connection stays open; a WebSocket upgrade hands the
//! socket, and whatever the client sent after its request, to a session.
//!
//! Only what the client port needs, as pingora does for its own server: a general-purpose
//! server's per-request machinery (header maps, body channels, a boxed timer per head, the
//! service future moved into place) was most of ethgate's own CPU per request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::Settings;
use crate::frontend::http::{self as front, Route};
use crate::frontend::ws;
use crate::http1::chunked::{self, ChunkedError};
use crate::http1::response::{self, CONTINUE};
use crate::http1::{request, BodyLength, HeadError, Method, RequestHead, Response};

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 4096;
/// Bodies up to this size leave in the same write as their head.
const COALESCE_BODY: usize = 16 * 1024;
/// An output buffer grown past this by a large answer is not kept for the next one.
const KEEP_OUT_BUFFER: usize = 64 * 1024;
/// After a last answer, how long what the client still sends is read and dropped at most,
/// and how long it may pause meanwhile (nginx's lingering close).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_PAUSE: Duration = Duration::from_millis(500);

/// One client connection.
pub(super) struct Connection<'s, IO> {
    settings: &'s Settings,
    io: IO,
    /// Bytes read and not yet consumed: the rest of a head, a body, a pipelined request.
    buf: BytesMut,
    out: Vec<u8>,
    /// The head or body deadline; one timer per connection, re-armed per request.
    timer: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// TCP peer and client (they differ behind a trusted PROXY header), for the access log.
    peer: (SocketAddr, SocketAddr),
}

/// A request body that has arrived.
enum Body {
    /// The first `len` bytes of the read buffer.
    Buffered(usize),
    /// Decoded from chunks.
    Decoded(Bytes),
}

/// What ends the handling of one request early.
enum Refusal {
    /// Answer this, then close.
    Answer(Response),
    /// Close without an answer: the client is gone or went silent.
    Close,
}

impl<'s, IO> Connection<'s, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(super) fn new(settings: &'s Settings, io: IO, peer: (SocketAddr, SocketAddr)) -> Self {
        Connection {
            settings,
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            shutdown: Box::pin(settings.drain.shutdown.clone().cancelled_owned()),
            peer,
        }
    }

    /// Serves requests until the connection closes or becomes a WebSocket session.
    pub(super) async fn serve(mut self) {
        loop {
            let head = match self.read_head().await {
                Ok(head) => head,
                Err(Refusal::Answer(response)) => return self.finish(&response, false).await,
                Err(Refusal::Close) => return,
            };
            let response = match front::route(&head) {
                Route::Upgrade => match ws::accept(&head) {
                    Ok(accept) => return self.upgrade(accept).await,
                    Err(refusal) => refusal,
                },
                Route::Rpc => match self.read_body(&head).await {
                    Ok(body) => self.answer_rpc(body).await,
                    Err(Refusal::Answer(refusal)) => refusal,
                    Err(Refusal::Close) => return,
                },
                // A body nobody reads would be taken for the next request: close instead.
                Route::Answer(answer) if head.body != BodyLength::Empty => answer().closing(),
                Route::Answer(answer) => answer(),
            };
            if !self.respond(&head, response).await {
                return;
            }
        }
    }

    /// Writes `response`; whether the connection carries on.
    async fn respond(&mut self, head: &RequestHead, mut response: Response) -> bool {
        let drain = &self.settings.drain;
        // While draining, keep-alive clients are told to reconnect (through the load
        // balancer, to another replica) rather than being cut off when the port closes.
        if !head.keep_alive || drain.draining.is_cancelled() || drain.shutdown.is_cancelled() {
            response.close = true;
        }
        response.keep_alive = !response.close && !head.http11;
        let close = response.close;
        match self.write(&response, head.method == Method::Head).await {
            Ok(()) if !close => true,
            Ok(()) => {
                self.close().await;
                false
            }
            Err(error) => {
                tracing::debug!(client = %self.peer.1, %error, "writing an answer failed");
                false
            }
        }
    }

    /// Writes a last answer and closes.
    async fn finish(&mut self, response: &Response, head_only: bool) {
        if self.write(response, head_only).await.is_ok() {
            self.close().await;
        }
    }

    /// Sends our FIN, then reads and drops what the client still sends (the rest of a body
    /// refused with 413, say) until it closes too, pauses or `LINGER_TIME` passes. Closing
    /// with unread bytes would send a reset instead, which fails the client's write and can
    /// discard the answer before it is read.
    async fn close(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        while Instant::now() < deadline {
            self.buf.clear();
            self.buf.reserve(READ_CHUNK);
            let pause = deadline.min(Instant::now() + LINGER_PAUSE);
            match tokio::time::timeout_at(pause, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    async fn answer_rpc(&mut self, body: Body) -> Response {
        let frontend = &self.settings.frontend;
        match body {
            Body::Buffered(len) => {
                let response = front::rpc(frontend, &self.buf[..len]).await;
                self.buf.advance(len);
                response
            }
            Body::Decoded(body) => front::rpc(frontend, &body).await,
        }
    }

    /// The next request head; at shutdown, an idle connection closes.
    async fn read_head(&mut self) -> Result<RequestHead, Refusal> {
        self.arm(self.settings.handshake_timeout);
        loop {
            if !self.buf.is_empty() {
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
            let idle = self.buf.is_empty();
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
        }
    }

    /// Reads the body `head` announces, within `body_timeout` and `max_request_bytes`.
    async fn read_body(&mut self, head: &RequestHead) -> Result<Body, Refusal> {
        let limit = self.settings.frontend.max_request_bytes;
        let wanted = match head.body {
            BodyLength::Empty => return Ok(Body::Buffered(0)),
            BodyLength::Length(len) if len > limit as u64 => {
                return Err(Refusal::Answer(front::too_large()))
            }
            BodyLength::Length(len) => Some(len as usize),
            BodyLength::Chunked => None,
        };
        // The client waits for this before sending the body (curl does, above 1 KiB).
        let complete = wanted.is_some_and(|len| self.buf.len() >= len);
        if head.expect_continue && !complete && self.write_all(CONTINUE).await.is_err() {
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

    /// Sends the `101` and runs the WebSocket session on this connection.
    async fn upgrade(mut self, accept: &str) {
        self.out.clear();
        response::switching_protocols(accept, &mut self.out);
        let out = std::mem::take(&mut self.out);
        if self.write_all(&out).await.is_err() {
            return;
        }
        ws::serve_upgraded(self.settings.frontend.clone(), self.io, self.buf).await;
    }

    async fn write(&mut self, response: &Response, head_only: bool) -> std::io::Result<()> {
        if self.out.capacity() > KEEP_OUT_BUFFER {
            self.out = Vec::new();
        }
        self.out.clear();
        let separate_body = !head_only && response.body.len() > COALESCE_BODY;
        response.encode(head_only || separate_body, &mut self.out);
        self.io.write_all(&self.out).await?;
        if separate_body {
            self.io.write_all(&response.body).await?;
        }
        self.io.flush().await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Re-arms the connection's timer; extending a pending timer costs no re-registration.
    fn arm(&mut self, after: std::time::Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
    }

    /// The access log is debug only: the client address is worked out only then.
    fn log(&self, len: usize) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let request = request::describe(&self.buf[..len]);
        let (addr, client) = self.peer;
        let client = self.settings.access.load().client_address(
            addr,
            client,
            request.forwarded.iter().map(String::as_str),
        );
        let (method, path) = (request.method, request.path);
        tracing::debug!(%client, method, path, "request");
    }
}

/// Reads until the buffer holds `len` body bytes.
async fn read_exact<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    len: usize,
) -> Result<Body, ChunkedError> {
    if buf.len() < len {
        buf.reserve(len - buf.len());
    }
    while buf.len() < len {
        match io.read_buf(buf).await {
            Ok(0) => return Err(ChunkedError::Closed),
            Ok(_) => {}
            Err(error) => return Err(ChunkedError::Io(error)),
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
        HeadError::Invalid(why) => {
            tracing::debug!(why, "invalid request head");
            Response::plain(StatusCode::BAD_REQUEST, "invalid request head\n")
        }
    }
    .closing()
}

fn refused_body(error: ChunkedError) -> Refusal {
    match error {
        ChunkedError::TooLarge => Refusal::Answer(front::too_large()),
        ChunkedError::Invalid(_) => Refusal::Answer(front::bad_body()),
        ChunkedError::Closed | ChunkedError::Io(_) => Refusal::Close,
    }
}
