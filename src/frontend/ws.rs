//! WebSocket sessions: the upgrade on any path, then per client one reader that dispatches
//! calls concurrently and one ordered, bounded outgoing queue shared with the hub.

mod batch;
mod gate;
mod single;

use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink, SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use self::batch::Batch;
use self::gate::{Gate, ReadGate};
use super::{Frontend, Transport};
use crate::http1::{BodyLength, RequestHead, Response};
use crate::subscription::session::Receiver;
use crate::subscription::SessionHandle;

/// Calls of one session answered concurrently; more wait, which pauses reading.
const CALLS_IN_FLIGHT: usize = 32;

/// Initial read buffer of a client WebSocket: a few calls' worth. tungstenite zeroes it before
/// every read, and every idle client holds it (1 KiB instead of 4 took an idle subscribed
/// client from 7.7 to 4.8 KiB of RSS); a larger frame grows it to the frame's size.
const READ_BUFFER_BYTES: usize = 1024;

/// How long a close frame may wait behind data the client has not read yet (a slow client
/// closed with 1008 sees the code once it catches up).
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Close code and reason sent to every client when the server shuts down.
const SHUTTING_DOWN: (u16, &str) = (1001, "server shutting down");

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

/// Runs a session on a connection whose `101` has been sent; `read_ahead` holds what the
/// client sent after its upgrade request, already read from the socket.
pub async fn serve_upgraded<IO>(frontend: Arc<Frontend>, io: IO, read_ahead: Vec<u8>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    // tungstenite's default 128 KiB read buffer, zeroed on every read, would cost each idle
    // client ~130 KiB; requests are small, larger ones grow the buffer.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(frontend.max_request_bytes))
        .max_frame_size(Some(frontend.max_request_bytes));
    let socket =
        WebSocketStream::from_partially_read(io, read_ahead, Role::Server, Some(config)).await;
    run_session(frontend, socket).await;
}

/// Runs one client session over `socket` until either side closes.
///
/// tungstenite reads the client's frames and answers its pings and close; the session writes
/// its own frames straight to the socket underneath (see `ws/batch.rs`).
pub async fn run_session<T>(frontend: Arc<Frontend>, mut socket: WebSocketStream<T>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (handle, outgoing) = SessionHandle::new(frontend.ws_queue);
    frontend.metrics.ws_connection_opened();
    let drain = &frontend.drain;
    // Polled only when one of them woke the task: polling a pending cancellation takes its
    // lock, and the task wakes for every outgoing message.
    let stops = Gate::default();
    // Created once: re-created on every pass they would re-register with the shared shutdown
    // token and the session's own each time a message goes out.
    let shutdown = drain.shutdown.cancelled();
    let closed = handle.closed();
    tokio::pin!(shutdown, closed);
    let mut stop = |cx: &mut Context<'_>| {
        stops.poll(cx, |cx| {
            if shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(SHUTTING_DOWN));
            }
            ready!(closed.as_mut().poll(cx));
            Poll::Ready(handle.close_reason())
        })
    };
    let mut session = Session {
        frontend: &frontend,
        handle: &handle,
        outgoing,
        batch: Batch::default(),
        writing: None,
        reader: ReadGate::default(),
        calls: FuturesUnordered::new(),
    };
    let close = poll_fn(|cx| session.poll_run(&mut socket, cx, &mut stop)).await;
    let Session {
        mut batch, calls, ..
    } = session;
    // Calls still running end here: their subscriptions are never activated.
    drop(calls);
    frontend.hub.drop_session(&handle);
    if close.is_some_and(|(code, _)| code == crate::subscription::session::CLOSE_POLICY) {
        frontend.metrics.ws_queue_overflow();
    }
    frontend.metrics.ws_connection_closed();
    // Past shutdown_grace nothing waits for a client that does not read its close frame.
    tokio::select! {
        _ = tokio::time::timeout(CLOSE_TIMEOUT, finish(&mut socket, &mut batch, close)) => {}
        _ = drain.force_close.cancelled() => {}
    }
}

/// Why a session ends: the close code and reason to send, if any.
type Close = Option<(u16, &'static str)>;

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
    /// A batch taken and not written yet; `Some(true)` while tungstenite's own buffer must be
    /// flushed first (see [`poll_write_batch`]).
    writing: Option<bool>,
    reader: ReadGate,
    calls: FuturesUnordered<Call<'a>>,
}

impl<'a> Session<'a> {
    /// Runs until the session ends. A stop first, then each pass: the calls (whose answers
    /// join the queue), the writer, then, with the writer idle, the client's next frame.
    fn poll_run<T>(
        &mut self,
        socket: &mut WebSocketStream<T>,
        cx: &mut Context<'_>,
        stop: &mut impl FnMut(&mut Context<'_>) -> Poll<Close>,
    ) -> Poll<Close>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        // Once per poll: a stop arriving later in it wakes the task again. (Its gate lives in
        // an allocation of its own, one more cache miss per notification in each pass.)
        if let Poll::Ready(close) = stop(cx) {
            return Poll::Ready(close);
        }
        loop {
            // The queue is looked at below before this pass waits: answers the calls queue
            // meanwhile need not wake the task.
            self.outgoing.unpark();
            self.poll_calls(cx);
            if let Some(flush_first) = &mut self.writing {
                // A client that reads nothing holds the batch until the socket's write
                // timeout fails it; shutdown does not wait for that (a stop ends the pass).
                match ready!(poll_write_batch(socket, &mut self.batch, flush_first, cx)) {
                    Ok(()) => self.batch.release(self.handle),
                    Err(()) => return Poll::Ready(self.handle.close_reason()),
                }
                self.writing = None;
            }
            if let Poll::Ready(first) = self.outgoing.poll_recv(cx) {
                let vectored = socket.get_ref().is_write_vectored();
                self.batch
                    .take(first, &mut self.outgoing, self.handle, vectored);
                self.writing = Some(self.reader.take_polled());
                continue;
            }
            // Reading pauses while CALLS_IN_FLIGHT calls run; the queue keeps draining.
            if self.calls.len() >= CALLS_IN_FLIGHT {
                return Poll::Pending;
            }
            let frame = ready!(self.reader.poll_next(socket, cx));
            if let Some(close) = self.on_frame(frame) {
                return Poll::Ready(close);
            }
        }
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

    /// Takes one frame of the client's; `Some` ends the session.
    fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Option<Close> {
        match frame {
            Some(Ok(Message::Text(text))) => self.dispatch(text.into()),
            Some(Ok(Message::Binary(data))) => self.dispatch(data),
            Some(Ok(Message::Close(_))) | None => return Some(None),
            Some(Ok(_)) => {}
            Some(Err(WsError::Capacity(_))) => return Some(Some((1009, "message too big"))),
            Some(Err(error)) => {
                tracing::debug!(%error, "client WebSocket failed");
                return Some(None);
            }
        }
        None
    }

    /// Starts answering one message; the next pass polls it first.
    fn dispatch(&mut self, body: bytes::Bytes) {
        let call = answer(self.frontend, self.handle, body);
        self.calls
            .push(Box::pin(AssertUnwindSafe(call).catch_unwind()));
    }
}

/// Answers one message of the client's: the answer is queued, then the subscriptions it
/// started are activated, so none of their notifications can overtake it.
async fn answer(frontend: &Frontend, handle: &Arc<SessionHandle>, body: bytes::Bytes) {
    let served = frontend.serve(Transport::Ws(handle), &body).await;
    drop(body);
    if let Some(body) = served.body {
        let text = String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        // The client's own answers wait for room rather than close it: a client that
        // reads promptly is never closed because of its own calls.
        if !handle.push_answer(text).await {
            return;
        }
    }
    for subscription in served.pending {
        frontend.hub.activate(subscription);
    }
}

/// Writes one batch, after whatever tungstenite still holds when the reader ran since the last
/// batch (a pong or close reply it could not write at once must not land inside our frames).
fn poll_write_batch<T>(
    socket: &mut WebSocketStream<T>,
    batch: &mut Batch,
    flush_first: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ()>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if *flush_first {
        ready!(Pin::new(&mut *socket).poll_flush(cx)).map_err(|_| ())?;
        *flush_first = false;
    }
    batch.poll_write(socket.get_mut(), cx).map_err(|_| ())
}

/// [`poll_write_batch`] as a future.
async fn write_batch<T>(
    socket: &mut WebSocketStream<T>,
    batch: &mut Batch,
    mut flush_first: bool,
) -> Result<(), ()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    poll_fn(|cx| poll_write_batch(socket, batch, &mut flush_first, cx)).await
}

/// The end of a session: the rest of a batch cut short (a close frame inside it would corrupt
/// the stream), then our close frame if any, or flushing the reply tungstenite queued to the
/// client's.
///
/// Takes the socket by reference: a socket moved in would make every session's future (which
/// an idle client keeps) larger by another copy of it.
async fn finish<T>(socket: &mut WebSocketStream<T>, batch: &mut Batch, close: Close)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if batch.unwritten() && write_batch(socket, batch, true).await.is_err() {
        // The socket failed inside a frame: nothing more can be framed after it.
        return;
    }
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    let _ = SinkExt::close(socket).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn a_pong_tungstenite_left_half_written_is_finished_before_a_batch() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(64);
        let mut socket = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        // The client's direction fills up but for one byte.
        socket.get_mut().write_all(&[0; 63]).await.unwrap();
        // A masked ping "abc" from the client.
        let mask = [1, 2, 3, 4];
        let mut ping = vec![0x89, 0x83];
        ping.extend_from_slice(&mask);
        ping.extend(b"abc".iter().zip(mask).map(|(b, m)| b ^ m));
        client.write_all(&ping).await.unwrap();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let read = socket.poll_next_unpin(&mut cx);
        assert!(matches!(read, Poll::Ready(Some(Ok(Message::Ping(_))))));
        // Reading on, tungstenite writes the first byte of its pong and keeps the rest.
        assert!(socket.poll_next_unpin(&mut cx).is_pending());
        let mut batch = one_batch("7", false).await;
        let drain = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        write_batch(&mut socket, &mut batch, true).await.unwrap();
        drop(socket);
        let all = drain.await.unwrap();
        assert_eq!(
            &all[63..68],
            &[0x8a, 3, b'a', b'b', b'c'],
            "the whole pong first"
        );
        let text = r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0x1","result":7}}"#;
        assert_eq!(all[68], 0x81);
        assert_eq!(all[69] as usize, text.len());
        assert_eq!(&all[70..], text.as_bytes(), "then our frame, whole");
    }

    #[tokio::test]
    async fn a_batch_cut_short_is_finished_before_the_close_frame() {
        for vectored in [false, true] {
            a_batch_cut_short_is_finished_before_the_close_frame_when(vectored).await;
        }
    }

    async fn a_batch_cut_short_is_finished_before_the_close_frame_when(vectored: bool) {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = tokio::io::duplex(64);
        let mut socket = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let result = format!("\"{}\"", "x".repeat(300));
        let mut batch = one_batch(&result, vectored).await;
        // The client reads nothing yet: the batch stops after 64 bytes (a shutdown now).
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        {
            let mut write = std::pin::pin!(write_batch(&mut socket, &mut batch, false));
            assert!(write.as_mut().poll(&mut cx).is_pending());
        }
        assert!(batch.unwritten());
        let drain = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        finish(&mut socket, &mut batch, Some(SHUTTING_DOWN)).await;
        drop(socket);
        let all = drain.await.unwrap();
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
}
