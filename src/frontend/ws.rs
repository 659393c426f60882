//! WebSocket sessions: the upgrade on any path, then per client one reader that dispatches
//! calls concurrently and one ordered, bounded outgoing queue shared with the hub.

mod batch;

use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::task::{waker_ref, ArcWake, AtomicWaker};
use futures_util::{SinkExt, Stream, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use self::batch::Batch;
use super::{Frontend, Transport};
use crate::http1::{BodyLength, RequestHead, Response};
use crate::subscription::SessionHandle;

/// Calls of one session answered concurrently; more wait, which pauses reading.
const CALLS_IN_FLIGHT: usize = 32;

/// Initial read buffer of a client WebSocket.
const READ_BUFFER_BYTES: usize = 4096;

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
    let (handle, mut outgoing) = SessionHandle::new(frontend.ws_queue);
    let handle = Arc::new(handle);
    frontend.metrics.ws_connection_opened();
    let mut calls = JoinSet::new();
    let limit = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let drain = &frontend.drain;
    let reader = ReadGate::default();
    // Polled only when one of them woke the task: polling a pending cancellation takes its
    // lock, and the task wakes for every outgoing message.
    let stops = Gate::default();
    let mut batch = Batch::default();
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
    let close = loop {
        tokio::select! {
            biased;
            close = poll_fn(&mut stop) => break close,
            message = outgoing.recv() => match message {
                // A client that reads nothing blocks this write until the socket's write
                // timeout fails it; shutdown does not wait for that.
                Some(message) => {
                    batch.take(message, &mut outgoing, &handle);
                    let flush_first = reader.take_polled();
                    let ended = tokio::select! {
                        biased;
                        written = write_batch(&mut socket, &mut batch, flush_first) => {
                            written.err().map(|_| handle.close_reason())
                        }
                        close = poll_fn(&mut stop) => Some(close),
                    };
                    batch.release(&handle);
                    if let Some(close) = ended {
                        break close;
                    }
                }
                None => break None,
            },
            // Reading pauses while CALLS_IN_FLIGHT calls run; the queue keeps draining.
            frame = poll_fn(|cx| reader.poll_next(&mut socket, cx)), if limit.available_permits() > 0 => match frame {
                Some(Ok(Message::Text(text))) => dispatch(&frontend, &handle, &limit, &mut calls, text.into()),
                Some(Ok(Message::Binary(data))) => dispatch(&frontend, &handle, &limit, &mut calls, data),
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(_))) => break Some((1009, "message too big")),
                Some(Err(error)) => {
                    tracing::debug!(%error, "client WebSocket failed");
                    break None;
                }
            },
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
        }
    };
    calls.abort_all();
    while calls.join_next().await.is_some() {}
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

/// Writes one batch, after whatever tungstenite still holds when the reader ran since the last
/// batch (a pong or close reply it could not write at once must not land inside our frames).
async fn write_batch<T>(
    socket: &mut WebSocketStream<T>,
    batch: &mut Batch,
    flush_first: bool,
) -> Result<(), ()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if flush_first {
        socket.flush().await.map_err(|_| ())?;
    }
    poll_fn(|cx| batch.poll_write(socket.get_mut(), cx))
        .await
        .map_err(|_| ())
}

/// The end of a session: the rest of a batch cut short (a close frame inside it would corrupt
/// the stream), then our close frame if any, or flushing the reply tungstenite queued to the
/// client's.
///
/// Takes the socket by reference: a socket moved in would make every session's future (which
/// an idle client keeps) larger by another copy of it.
async fn finish<T>(
    socket: &mut WebSocketStream<T>,
    batch: &mut Batch,
    close: Option<(u16, &'static str)>,
) where
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

/// Answers one message on its own task, so a slow upstream call does not hold up others.
/// The session reads only while a permit is free, so one is always there.
fn dispatch(
    frontend: &Arc<Frontend>,
    handle: &Arc<SessionHandle>,
    limit: &Arc<Semaphore>,
    calls: &mut JoinSet<()>,
    body: bytes::Bytes,
) {
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        return;
    };
    let frontend = frontend.clone();
    let handle = handle.clone();
    calls.spawn(async move {
        let served = frontend.serve(Transport::Ws(&handle), &body).await;
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
        drop(permit);
    });
}

/// Polls what it wraps only when that asked to be polled again (its own waker fired) or
/// last returned something. The session task wakes for every outgoing message; re-polling
/// everything it waits on each time costs more than the message itself.
struct Gate {
    woken: Arc<Woken>,
}

/// The wrapped future's or stream's own waker: notes that it fired, then wakes the session.
struct Woken {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Woken {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.fired.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

impl Default for Gate {
    fn default() -> Self {
        // Fired at first: what it wraps has never been polled.
        let woken = Woken {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        };
        Gate {
            woken: Arc::new(woken),
        }
    }
}

impl Gate {
    /// `poll` with the gate's own waker when that fired or `poll` was last ready, else pending.
    fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.woken.task.register(cx.waker());
        if !self.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = waker_ref(&self.woken);
        let polled = poll(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            // More may be ready already (buffered frames): the next call polls again.
            self.woken.fired.store(true, Ordering::Release);
        }
        polled
    }
}

/// The client's stream behind a [`Gate`]: re-polling it for every outgoing message would make
/// tungstenite zero its whole read buffer and try a read each time, which profiling showed to
/// be most of a fan-out's cost. Also notes when the stream ran, because tungstenite may then
/// have written (or half written) a control frame of its own.
#[derive(Default)]
struct ReadGate {
    gate: Gate,
    polled: AtomicBool,
}

impl ReadGate {
    fn poll_next<S: Stream + Unpin>(
        &self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        self.gate.poll(cx, |cx| {
            self.polled.store(true, Ordering::Relaxed);
            stream.poll_next_unpin(cx)
        })
    }

    /// Whether the stream was polled since the last call.
    fn take_polled(&self) -> bool {
        self.polled.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A stream that counts its polls and is pending until `ready` frames are let through.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: usize,
        waker: Option<std::task::Waker>,
    }

    impl Stream for Counted {
        type Item = u32;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<u32>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready > 0 {
                self.ready -= 1;
                return Poll::Ready(Some(7));
            }
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn the_stream_is_polled_again_only_after_a_frame_or_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut stream = Counted {
            polls: polls.clone(),
            ready: 1,
            waker: None,
        };
        let gate = ReadGate::default();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert_eq!(gate.poll_next(&mut stream, &mut cx), Poll::Ready(Some(7)));
        // After a frame the next call polls again (more may be buffered): now pending.
        assert!(gate.poll_next(&mut stream, &mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        assert!(
            gate.take_polled(),
            "the stream ran: tungstenite may have written"
        );
        // Woken for other reasons (an outgoing message): the stream is left alone.
        for _ in 0..5 {
            assert!(gate.poll_next(&mut stream, &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 2, "no poll without a wake");
        assert!(!gate.take_polled(), "not polled since: no flush needed");
        // The stream's own waker fires: the next call polls it and gets the frame.
        stream.ready = 1;
        stream.waker.take().expect("registered").wake();
        assert_eq!(gate.poll_next(&mut stream, &mut cx), Poll::Ready(Some(7)));
        assert_eq!(polls.load(Ordering::Relaxed), 3);
    }

    /// A session whose queue holds one notification of `result`, taken as a batch.
    async fn one_batch(result: &str) -> Batch {
        let limits = crate::subscription::session::QueueLimits {
            messages: 4,
            bytes: 1 << 20,
        };
        let (handle, mut queue) = SessionHandle::new(limits);
        assert!(handle.push(&"0x1".into(), &Arc::new(result.to_string())));
        let mut batch = Batch::default();
        batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
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
        let mut batch = one_batch("7").await;
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
        use tokio::io::AsyncReadExt;
        let (server, mut client) = tokio::io::duplex(64);
        let mut socket = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let result = format!("\"{}\"", "x".repeat(300));
        let mut batch = one_batch(&result).await;
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
