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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::Settings;
use crate::frontend::http::{self as front, Route};
use crate::frontend::ws;
use crate::http1::response;
use crate::http1::{request, BodyLength, Method, RequestHead, Response};

mod read;

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

/// A connection upgraded to WebSocket: its socket, and what the client sent after its
/// upgrade request.
pub(super) struct Upgraded<IO> {
    pub io: IO,
    pub read_ahead: Vec<u8>,
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

    /// Serves requests until the connection closes, or until a WebSocket upgrade, whose
    /// socket and read-ahead bytes it returns.
    pub(super) async fn serve(mut self) -> Option<Upgraded<IO>> {
        loop {
            self.trim_read_buffer();
            let head = match self.read_head().await {
                Ok(head) => head,
                Err(Refusal::Answer(response)) => return self.finish(&response).await,
                Err(Refusal::Close) => return None,
            };
            let (response, body_read) = match front::route(&head) {
                Route::Upgrade => match ws::accept(&head) {
                    Ok(accept) => return self.upgrade(accept).await,
                    Err(refusal) => (refusal, false),
                },
                Route::Rpc => match self.read_body(&head).await {
                    Ok(body) => (self.answer_rpc(body).await, true),
                    Err(Refusal::Answer(refusal)) => (refusal, false),
                    Err(Refusal::Close) => return None,
                },
                Route::Answer(answer) => (answer(), false),
            };
            // A body left unread would be taken for the next request: close instead.
            let unread_body = head.body != BodyLength::Empty && !body_read;
            if !self.respond(&head, response, unread_body).await {
                return None;
            }
        }
    }

    /// Writes `response`; whether the connection carries on.
    async fn respond(&mut self, head: &RequestHead, mut response: Response, unread: bool) -> bool {
        let drain = &self.settings.drain;
        // While draining, keep-alive clients are told to reconnect (through the load
        // balancer, to another replica) rather than being cut off when the port closes.
        let draining = drain.draining.is_cancelled() || drain.shutdown.is_cancelled();
        if unread || !head.keep_alive || draining {
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
    async fn finish(&mut self, response: &Response) -> Option<Upgraded<IO>> {
        if self.write(response, false).await.is_ok() {
            self.close().await;
        }
        None
    }

    /// Sends our FIN, then reads and drops what the client still sends (the rest of a body
    /// refused with 413, say) until it closes too, pauses, `LINGER_TIME` passes or the
    /// server shuts down. Closing with unread bytes would send a reset instead, which fails
    /// the client's write and can discard the answer before it is read.
    async fn close(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        while Instant::now() < deadline {
            self.buf.clear();
            self.buf.reserve(READ_CHUNK);
            let pause = deadline.min(Instant::now() + LINGER_PAUSE);
            let read = tokio::select! {
                biased;
                _ = &mut self.shutdown => return,
                read = tokio::time::timeout_at(pause, self.io.read_buf(&mut self.buf)) => read,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// A client that disconnects meanwhile does not cancel the call: it holds its place in
    /// `max_connections` until the call ends (within `request_timeout`), and a
    /// transaction's broadcast is never cut halfway.
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

    /// Sends the `101` and hands the socket over.
    async fn upgrade(mut self, accept: &str) -> Option<Upgraded<IO>> {
        self.out.clear();
        response::switching_protocols(accept, &mut self.out);
        let out = std::mem::take(&mut self.out);
        self.write_all(&out).await.ok()?;
        Some(Upgraded {
            io: self.io,
            // Usually empty: a client rarely sends frames before it reads the 101.
            read_ahead: self.buf.to_vec(),
        })
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
