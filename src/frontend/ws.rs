//! WebSocket sessions: the upgrade on any path, then per client one reader that dispatches
//! calls concurrently and one ordered, bounded outgoing queue shared with the hub.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::task::{waker_ref, ArcWake, AtomicWaker};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::{Frontend, Transport};
use crate::http1::{RequestHead, Response};
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
    match &head.websocket {
        Some(Some(accept)) => Ok(accept),
        _ => Err(Response::plain(
            StatusCode::BAD_REQUEST,
            "invalid WebSocket upgrade request\n",
        )),
    }
}

/// Runs a session on a connection whose `101` has been sent; `read_ahead` holds what the
/// client sent after its upgrade request, already read from the socket.
pub async fn serve_upgraded<IO>(frontend: Arc<Frontend>, io: IO, read_ahead: BytesMut)
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
        WebSocketStream::from_partially_read(io, read_ahead.to_vec(), Role::Server, Some(config))
            .await;
    run_session(frontend, socket).await;
}

/// Runs one client session over any WebSocket `socket` until either side closes.
pub async fn run_session<S>(frontend: Arc<Frontend>, socket: S)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send,
{
    let (handle, mut outgoing) = SessionHandle::new(frontend.ws_queue);
    let handle = Arc::new(handle);
    frontend.metrics.ws_connection_opened();
    let (mut sink, mut stream) = socket.split();
    let mut calls = JoinSet::new();
    let limit = Arc::new(Semaphore::new(CALLS_IN_FLIGHT));
    let drain = &frontend.drain;
    let reader = ReadGate::default();
    // Created once: re-created on every pass they would re-register with the shared shutdown
    // token and the session's own each time a message goes out.
    let shutdown = drain.shutdown.cancelled();
    let closed = handle.closed();
    tokio::pin!(shutdown, closed);
    let close = loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break Some(SHUTTING_DOWN),
            _ = &mut closed => break handle.close_reason(),
            message = outgoing.recv() => match message {
                // A client that reads nothing blocks this send until the socket's write
                // timeout fails it; shutdown does not wait for that.
                Some(message) => {
                    let receipt = message.receipt();
                    let sent = tokio::select! {
                        sent = sink.send(Message::text(message.into_text())) => sent.map_err(|_| None),
                        _ = &mut closed => Err(None),
                        _ = &mut shutdown => Err(Some(SHUTTING_DOWN)),
                    };
                    handle.sent(receipt);
                    match sent {
                        Ok(()) => {}
                        Err(Some(close)) => break Some(close),
                        Err(None) => break handle.close_reason(),
                    }
                }
                None => break None,
            },
            // Reading pauses while CALLS_IN_FLIGHT calls run; the queue keeps draining.
            frame = poll_fn(|cx| reader.poll_next(&mut stream, cx)), if limit.available_permits() > 0 => match frame {
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
    // Either our close frame, or flushing the reply tungstenite queued to the client's.
    let finish = async {
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    };
    // Past shutdown_grace nothing waits for a client that does not read its close frame.
    tokio::select! {
        _ = tokio::time::timeout(CLOSE_TIMEOUT, finish) => {}
        _ = drain.force_close.cancelled() => {}
    }
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

/// Polls the client's stream only when the stream itself asked to be polled again (its
/// waker fired) or last returned a frame. The session task also wakes for every outgoing
/// message; re-polling the stream then would make tungstenite zero its whole read buffer and
/// try a read each time, which profiling showed to be most of a fan-out's cost.
struct ReadGate {
    woken: Arc<Woken>,
}

/// The stream's own waker: notes that it fired, then wakes the session task.
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

impl Default for ReadGate {
    fn default() -> Self {
        // Fired at first: the stream has never been polled.
        let woken = Woken {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        };
        ReadGate {
            woken: Arc::new(woken),
        }
    }
}

impl ReadGate {
    fn poll_next<S: Stream + Unpin>(
        &self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        self.woken.task.register(cx.waker());
        if !self.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = waker_ref(&self.woken);
        let polled = stream.poll_next_unpin(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            // More frames may already be buffered: the next call polls again.
            self.woken.fired.store(true, Ordering::Release);
        }
        polled
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
        // Woken for other reasons (an outgoing message): the stream is left alone.
        for _ in 0..5 {
            assert!(gate.poll_next(&mut stream, &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 2, "no poll without a wake");
        // The stream's own waker fires: the next call polls it and gets the frame.
        stream.ready = 1;
        stream.waker.take().expect("registered").wake();
        assert_eq!(gate.poll_next(&mut stream, &mut cx), Poll::Ready(Some(7)));
        assert_eq!(polls.load(Ordering::Relaxed), 3);
    }
}
