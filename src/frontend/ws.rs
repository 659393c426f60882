//! WebSocket sessions: the upgrade on any path, then per client one reader that dispatches
//! calls concurrently and one ordered, bounded outgoing queue shared with the hub.

mod batch;
mod control;
mod incoming;
mod single;

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use self::batch::Batch;
use self::control::Control;
use self::incoming::{End, Incoming};
use super::{Frontend, Transport};
use crate::gate::Gate;
use crate::http1::{BodyLength, RequestHead, Response};
use crate::subscription::session::{Receiver, CLOSE_POLICY};
use crate::subscription::SessionHandle;
use crate::websocket::{Event, FrameError};

/// Calls of one session answered concurrently; more wait, which pauses reading.
const CALLS_IN_FLIGHT: usize = 32;

/// How long a close frame may wait behind data the client has not read yet (a slow client
/// closed with 1008 sees the code once it catches up), and a client that sent its own close
/// may keep the socket open.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Close code and reason sent to every client when the server shuts down.
const SHUTTING_DOWN: (u16, &str) = (1001, "server shutting down");

/// Close code and reason for a message over `max_request_bytes`.
const TOO_BIG: (u16, &str) = (1009, "message too big");

/// Close code and reason for a frame RFC 6455 forbids, and for a close code no endpoint may
/// send (tungstenite's reply, kept).
const PROTOCOL_ERROR: (u16, &str) = (1002, "Protocol violation");

/// Close code and reason for a text message (or close reason) that is not UTF-8.
const NOT_UTF8: (u16, &str) = (1007, "invalid UTF-8");

/// The `Sec-WebSocket-Accept` value of a valid upgrade request, or the 400 refusing it.
pub fn accept(head: &RequestHead) -> Result<&str, Response> {
    // An upgrade request carries no body: one would be read as WebSocket frames.
    let accept = head
        .websocket
        .as_ref()
        .and_then(|upgrade| upgrade.accept.as_deref())
        .filter(|_| head.body == BodyLength::Empty);
    accept.ok_or_else(|| {
        Response::plain(
            StatusCode::BAD_REQUEST,
            "invalid WebSocket upgrade request\n",
        )
        .closing()
    })
}

/// Runs a session on a connection whose `101` has been sent, until either side closes;
/// `read_ahead` holds what the client sent after its upgrade request, already read from the
/// socket.
///
/// ethgate reads the client's frames itself (see `src/websocket.rs`), and writes every frame of
/// its own straight to the socket: data frames (see `ws/batch.rs`), pongs and the close frame
/// (see `ws/control.rs`).
pub async fn serve_upgraded<IO>(frontend: Arc<Frontend>, mut io: IO, read_ahead: Vec<u8>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (handle, outgoing) = SessionHandle::new(frontend.ws_queue);
    frontend.metrics.ws_connection_opened();
    let mut session = Session {
        frontend: &frontend,
        handle: &handle,
        outgoing,
        batch: Batch::default(),
        writing: false,
        control: Control::default(),
        incoming: Incoming::new(frontend.max_request_bytes, read_ahead),
        calls: FuturesUnordered::new(),
        draining: false,
    };
    let close = session.run(&mut io).await;
    let Session {
        mut batch,
        mut control,
        calls,
        ..
    } = session;
    // Calls still running end here (the client closed, or shutdown_grace ran out): their
    // subscriptions are never activated.
    drop(calls);
    frontend.hub.drop_session(&handle);
    if matches!(close, Close::Ours(CLOSE_POLICY, _)) {
        frontend.metrics.ws_queue_overflow();
    }
    frontend.metrics.ws_connection_closed();
    // Past shutdown_grace nothing waits for a client that does not read its close frame, but
    // the close is still tried once (first: `biased`): a client that reads gets its 1001 even
    // when the grace ran out with a call still running.
    tokio::select! {
        biased;
        _ = tokio::time::timeout(CLOSE_TIMEOUT, finish(&mut io, &mut batch, &mut control, close)) => {}
        _ = frontend.drain.force_close.cancelled() => {}
    }
}

/// How a session ends: the close frame to send, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// None: the socket failed or closed, or the session's writer is gone.
    Silent,
    /// Ours, with this code and reason.
    Ours(u16, &'static str),
    /// The reply to the client's close frame: its status code, if it gave one (RFC 6455
    /// §5.5.1).
    Echo(Option<u16>),
}

impl Close {
    /// The close someone asked the session for (see [`SessionHandle::close`]), if any.
    fn asked(handle: &SessionHandle) -> Close {
        match handle.close_reason() {
            Some((code, reason)) => Close::Ours(code, reason),
            None => Close::Silent,
        }
    }

    /// The close a frame the client sent ends the session with.
    fn after(error: FrameError) -> Close {
        let (code, reason) = match error {
            FrameError::Utf8 => NOT_UTF8,
            _ => PROTOCOL_ERROR,
        };
        Close::Ours(code, reason)
    }

    /// The reply to a client's close frame with `payload` (a status code, then a reason).
    fn reply(payload: &[u8]) -> Close {
        let [high, low, reason @ ..] = payload else {
            return Close::Echo(None);
        };
        let code = u16::from_be_bytes([*high, *low]);
        if std::str::from_utf8(reason).is_err() {
            return Close::Ours(NOT_UTF8.0, NOT_UTF8.1);
        }
        match sendable(code) {
            true => Close::Echo(Some(code)),
            false => Close::Ours(PROTOCOL_ERROR.0, PROTOCOL_ERROR.1),
        }
    }
}

/// Whether an endpoint may send close code `code` (RFC 6455 §7.4: 1004–1006 and 1015 are
/// reserved, 1016–2999 are for the protocol's own extensions, below 1000 and from 5000 on
/// are not codes). The codes tungstenite accepted, exactly.
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// What stops a session, or changes how it runs.
enum Stop {
    /// The server shuts down: read no more calls, finish the ones running, then close 1001.
    Drain,
    /// End the session now, with this close.
    End(Close),
}

/// A call of the client's, run inside the session's own task.
type Call<'a> = Pin<Box<dyn Future<Output = std::thread::Result<()>> + Send + 'a>>;

/// One client session between polls: the reader, the calls it started, and the writer.
///
/// Everything runs in the session's one task. Calls are futures polled here rather than tasks
/// of their own: spawning one, joining it and waking the session for its answer cost more
/// than most calls' own work, and an answer a call queues here goes out in the same pass.
struct Session<'a> {
    frontend: &'a Arc<Frontend>,
    handle: &'a Arc<SessionHandle>,
    outgoing: Receiver,
    batch: Batch,
    /// Whether a batch is taken and not written yet.
    writing: bool,
    /// A pong to write (between batches, never inside one).
    control: Control,
    incoming: Incoming,
    calls: FuturesUnordered<Call<'a>>,
    /// The server shuts down: nothing more is read; the session closes with 1001 once its
    /// calls are answered and every answer written (or when `shutdown_grace` runs out).
    draining: bool,
}

impl<'a> Session<'a> {
    /// Runs until the session ends: the client leaves, someone closes the session, or the
    /// server shuts down (then once the calls running are answered, or `shutdown_grace` ran
    /// out).
    async fn run<T>(&mut self, io: &mut T) -> Close
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let handle = self.handle;
        let drain = &self.frontend.drain;
        // Polled only when one of them woke the task: polling a pending cancellation takes
        // its lock, and the task wakes for every outgoing message.
        let stops = Gate::default();
        // Created once: re-created on every pass they would re-register with the shared
        // token and the session's own each time a message goes out. The shutdown, then (once
        // the session drains) the end of shutdown_grace, in the same place: no idle session
        // grows by a second waiter it would need only at shutdown.
        let drain_stage = drain.shutdown.cancelled();
        let closed = handle.closed();
        tokio::pin!(drain_stage, closed);
        let mut draining = false;
        let mut stop = |cx: &mut Context<'_>| {
            stops.poll(cx, |cx| {
                if drain_stage.as_mut().poll(cx).is_ready() {
                    if !draining {
                        draining = true;
                        drain_stage.set(drain.force_close.cancelled());
                        return Poll::Ready(Stop::Drain);
                    }
                    let close = Close::Ours(SHUTTING_DOWN.0, SHUTTING_DOWN.1);
                    return Poll::Ready(Stop::End(close));
                }
                ready!(closed.as_mut().poll(cx));
                Poll::Ready(Stop::End(Close::asked(handle)))
            })
        };
        poll_fn(|cx| {
            let polled = self.poll_run(io, cx, &mut stop);
            // Before the task waits: an idle client holds no read buffer.
            self.incoming.release();
            polled
        })
        .await
    }

    /// Runs until the session ends. A stop first, then each pass: the calls (whose answers
    /// join the queue), the writer (a batch, then a pong), then, with the writer idle, the
    /// client's next frame.
    fn poll_run<T>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        stop: &mut impl FnMut(&mut Context<'_>) -> Poll<Stop>,
    ) -> Poll<Close>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        // Once per poll: a stop arriving later in it wakes the task again. (Its gate lives in
        // an allocation of its own, one more cache miss per notification in each pass.) A
        // drain is asked for once; the stop is polled again at once so that it watches what
        // ends the drain.
        loop {
            match stop(cx) {
                Poll::Ready(Stop::Drain) => self.draining = true,
                Poll::Ready(Stop::End(close)) => return Poll::Ready(close),
                Poll::Pending => break,
            }
        }
        loop {
            // The queue is looked at below before this pass waits: answers the calls queue
            // meanwhile need not wake the task.
            self.outgoing.unpark();
            self.poll_calls(cx);
            if self.writing {
                // A client that reads nothing holds the batch until the socket's write
                // timeout fails it; shutdown does not wait for that (a stop ends the pass).
                if ready!(self.batch.poll_write(io, cx)).is_err() {
                    return Poll::Ready(self.failed());
                }
                self.batch.release(self.handle);
                self.writing = false;
            }
            if self.control.is_pending() && ready!(self.control.poll_write(io, cx)).is_err() {
                return Poll::Ready(self.failed());
            }
            if let Poll::Ready(first) = self.outgoing.poll_recv(cx) {
                let vectored = io.is_write_vectored();
                self.batch
                    .take(first, &mut self.outgoing, self.handle, vectored);
                self.writing = true;
                continue;
            }
            // Draining: the client's next calls are not read (it is told to leave by the
            // close). Here everything queued is written, so with no call left to answer the
            // session closes; notifications go on until then.
            if self.draining {
                return match self.calls.is_empty() {
                    true => Poll::Ready(Close::Ours(SHUTTING_DOWN.0, SHUTTING_DOWN.1)),
                    false => Poll::Pending,
                };
            }
            // Reading pauses while CALLS_IN_FLIGHT calls run; the queue keeps draining.
            if self.calls.len() >= CALLS_IN_FLIGHT {
                return Poll::Pending;
            }
            let event = ready!(self.incoming.poll_next(io, cx));
            if let Some(close) = self.on_event(event) {
                return Poll::Ready(close);
            }
        }
    }

    /// The close after the socket failed mid-write: none, unless the session was asked to
    /// close (nothing can be framed after a frame cut short; the code is still counted).
    fn failed(&self) -> Close {
        Close::asked(self.handle)
    }

    /// Polls the calls, if any (an empty set is not touched: that costs a cache miss per
    /// notification fanned out).
    fn poll_calls(&mut self, cx: &mut Context<'_>) {
        while !self.calls.is_empty() {
            match self.calls.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(()))) => {}
                Poll::Ready(Some(Err(_))) => {
                    tracing::error!("a WebSocket call panicked; the session goes on");
                }
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }

    /// Takes one event of the client's; `Some` ends the session.
    fn on_event(&mut self, event: Result<Event, End>) -> Option<Close> {
        match event {
            Ok(Event::Text(text)) => self.dispatch(Request::Text(text)),
            // Binary messages are answered like text ones (their UTF-8 checked when decoded).
            Ok(Event::Binary(body)) => self.dispatch(Request::Binary(body)),
            Ok(Event::Ping(payload)) => self.control.pong(&payload),
            Ok(Event::Pong) => {}
            Ok(Event::Close(payload)) => return Some(Close::reply(&payload)),
            Ok(Event::TooLarge(_)) => return Some(Close::Ours(TOO_BIG.0, TOO_BIG.1)),
            Err(End::Frame(error)) => {
                tracing::debug!(%error, "client broke the WebSocket protocol");
                return Some(Close::after(error));
            }
            Err(End::Gone) => return Some(Close::Silent),
        }
        None
    }

    /// Starts answering one message; the next pass polls it first.
    fn dispatch(&mut self, body: Request) {
        let call = answer(self.frontend, self.handle, body);
        self.calls
            .push(Box::pin(AssertUnwindSafe(call).catch_unwind()));
    }
}

/// A client's message: a text one is known to be UTF-8, a binary one is not.
enum Request {
    Text(Utf8Bytes),
    Binary(bytes::Bytes),
}

/// Answers one message of the client's: the answer is queued, then the subscriptions it
/// started are activated, so none of their notifications can overtake it.
async fn answer(frontend: &Frontend, handle: &Arc<SessionHandle>, body: Request) {
    let transport = Transport::Ws(handle);
    let served = match &body {
        Request::Text(text) => frontend.serve_text(transport, text).await,
        Request::Binary(bytes) => frontend.serve(transport, bytes).await,
    };
    drop(body);
    if let Some(body) = served.body {
        // The client's own answers wait for room rather than close it: a client that
        // reads promptly is never closed because of its own calls.
        if !handle.push_answer(body).await {
            return;
        }
    }
    for subscription in served.pending {
        frontend.hub.activate(subscription);
    }
}

/// The end of a session: the rest of a batch or pong cut short (a close frame inside it would
/// corrupt the stream), then the close frame if any, then the socket's shutdown.
///
/// Takes the socket by reference: a socket moved in would make every session's future (which
/// an idle client keeps) larger by another copy of it.
async fn finish<T>(io: &mut T, batch: &mut Batch, control: &mut Control, close: Close)
where
    T: AsyncWrite + Unpin,
{
    if batch.unwritten() && poll_fn(|cx| batch.poll_write(io, cx)).await.is_err() {
        // The socket failed inside a frame: nothing more can be framed after it.
        return;
    }
    if control.is_pending() && poll_fn(|cx| control.poll_write(io, cx)).await.is_err() {
        return;
    }
    match close {
        Close::Silent => {}
        Close::Ours(code, reason) => control.close(Some(code), reason),
        Close::Echo(code) => control.close(code, ""),
    }
    if control.is_pending() && poll_fn(|cx| control.poll_write(io, cx)).await.is_err() {
        return;
    }
    let _ = io.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A session whose queue holds one notification of `result`, taken as a batch.
    async fn one_batch(result: &str, vectored: bool) -> Batch {
        let limits = crate::subscription::session::QueueLimits {
            messages: 4,
            bytes: 1 << 20,
        };
        let (handle, mut queue) = SessionHandle::new(limits);
        assert!(handle.push(&"0x1".into(), &Arc::new(result.to_string())));
        let mut batch = Batch::default();
        batch.take(queue.recv().await, &mut queue, &handle, vectored);
        batch
    }

    /// Everything the client end of `client` receives until the server end closes.
    fn drain(mut client: tokio::io::DuplexStream) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        })
    }

    #[tokio::test]
    async fn a_pong_cut_short_is_finished_before_the_close_frame() {
        let (mut server, client) = tokio::io::duplex(64);
        // The client's direction fills up but for one byte.
        server.write_all(&[0; 63]).await.unwrap();
        let mut control = Control::default();
        control.pong(b"abc");
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(control.poll_write(&mut server, &mut cx).is_pending());
        let all = drain(client);
        let mut batch = Batch::default();
        finish(
            &mut server,
            &mut batch,
            &mut control,
            Close::Echo(Some(1000)),
        )
        .await;
        drop(server);
        let all = all.await.unwrap();
        assert_eq!(&all[63..68], &[0x8a, 3, b'a', b'b', b'c'], "the whole pong");
        assert_eq!(&all[68..], &[0x88, 2, 0x03, 0xe8], "then the close frame");
    }

    #[tokio::test]
    async fn a_batch_cut_short_is_finished_before_the_close_frame() {
        for vectored in [false, true] {
            a_batch_cut_short_is_finished_before_the_close_frame_when(vectored).await;
        }
    }

    async fn a_batch_cut_short_is_finished_before_the_close_frame_when(vectored: bool) {
        let (mut server, client) = tokio::io::duplex(64);
        let result = format!("\"{}\"", "x".repeat(300));
        let mut batch = one_batch(&result, vectored).await;
        // The client reads nothing yet: the batch stops after 64 bytes (a shutdown now).
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(batch.poll_write(&mut server, &mut cx).is_pending());
        assert!(batch.unwritten());
        let all = drain(client);
        let close = Close::Ours(SHUTTING_DOWN.0, SHUTTING_DOWN.1);
        finish(&mut server, &mut batch, &mut Control::default(), close).await;
        drop(server);
        let all = all.await.unwrap();
        let text = format!(
            r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"0x1","result":{result}}}}}"#
        );
        let frame_len = 4 + text.len();
        let [high, low] = (text.len() as u16).to_be_bytes();
        assert_eq!(&all[..4], [0x81, 126, high, low].as_slice());
        assert_eq!(&all[4..frame_len], text.as_bytes(), "the whole frame");
        let close = &all[frame_len..];
        assert_eq!(close[0], 0x88, "then the close frame");
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1001);
        assert_eq!(&close[4..], SHUTTING_DOWN.1.as_bytes());
    }

    #[test]
    fn a_clients_close_is_echoed_by_its_code_and_bad_codes_or_reasons_are_refused() {
        let close = |code: u16, reason: &[u8]| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            Close::reply(&payload)
        };
        assert_eq!(Close::reply(&[]), Close::Echo(None), "no code: none back");
        for code in [1000, 1001, 1003, 1007, 1011, 1013, 3000, 4999] {
            assert_eq!(close(code, b"bye"), Close::Echo(Some(code)), "{code}");
        }
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1014,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            assert_eq!(
                close(code, b""),
                Close::Ours(1002, PROTOCOL_ERROR.1),
                "{code}"
            );
        }
        assert_eq!(close(1000, &[0xff]), Close::Ours(1007, NOT_UTF8.1));
    }

    #[test]
    fn frames_against_the_protocol_close_with_1002_and_bad_utf8_with_1007() {
        assert_eq!(
            Close::after(FrameError::Utf8),
            Close::Ours(1007, NOT_UTF8.1)
        );
        for error in [
            FrameError::Unmasked,
            FrameError::Reserved,
            FrameError::Opcode(3),
            FrameError::Control,
            FrameError::StrayContinuation,
            FrameError::Interleaved,
            FrameError::Length,
            FrameError::Close,
        ] {
            assert_eq!(Close::after(error), Close::Ours(1002, PROTOCOL_ERROR.1));
        }
    }
}
