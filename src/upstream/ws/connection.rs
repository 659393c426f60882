//! The task that owns one multiplexed upstream WebSocket: it writes queued requests, several
//! per write when calls arrive together, reads the node's frames itself ([`Reader`]), and
//! routes each answer to the call whose ids it carries. When it ends (socket lost, protocol
//! error, or every handle dropped), every waiting call is told.

mod pending;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::open::Stream;
use super::reader::{Event, Reader};
use super::writer::Writer;
use crate::upstream::Body;
use pending::{Pending, Reason};
pub(super) use pending::{WaitGuard, Waiting};

/// Requests queued for writing per connection; a full queue waits (the call's timeout bounds it).
const QUEUE: usize = 256;

/// Bytes of requests written together at most: every call that arrived meanwhile shares one
/// write, but reading answers is not held up behind a long one (a node that answers a
/// connection's calls in turn would otherwise wait on us while we wait on it).
const MAX_COALESCED_BYTES: usize = 64 * 1024;

/// A handle on a live connection: the queue its task writes from and the calls it answers.
#[derive(Clone)]
pub(super) struct Live {
    outgoing: mpsc::Sender<Vec<u8>>,
    pending: Pending,
}

impl Live {
    /// Whether the connection's task has ended.
    pub(super) fn is_closed(&self) -> bool {
        self.outgoing.is_closed()
    }

    /// Registers a call under `base`; it is forgotten when the returned guard drops.
    pub(super) fn wait(&self, base: u64, waiting: Waiting) -> WaitGuard<'_> {
        self.pending.wait(base, waiting)
    }

    /// Queues a text message (valid UTF-8) for writing; an error means the task ended
    /// without taking it.
    pub(super) async fn send(&self, text: Vec<u8>) -> Result<(), ()> {
        self.outgoing.send(text).await.map_err(|_| ())
    }
}

/// What the connection's task works with besides its socket.
struct Task {
    queue: mpsc::Receiver<Vec<u8>>,
    pending: Pending,
    upstream: Arc<str>,
    max_response_bytes: usize,
    /// Silence after which the connection is pinged, and after which it counts as dead.
    liveness: (Duration, Duration),
    reader: Reader,
    writer: Writer,
    /// Whether a close frame went out (the node's, echoed): no second one at the end.
    closed: bool,
}

/// Starts the task that owns `socket` (to upstream `name`; `start` is what the node sent
/// after its handshake answer) and returns the handle calls use.
pub(super) fn spawn(
    (socket, start): (Stream, BytesMut),
    upstream: Arc<str>,
    liveness: (Duration, Duration),
    max_response_bytes: usize,
) -> Live {
    let (outgoing, queue) = mpsc::channel(QUEUE);
    let pending = Pending::default();
    let task = Task {
        queue,
        pending: pending.clone(),
        upstream,
        max_response_bytes,
        liveness,
        reader: Reader::new(max_response_bytes, start),
        writer: Writer::new(),
        closed: false,
    };
    tokio::spawn(run(socket, task));
    Live { outgoing, pending }
}

async fn run(mut socket: Stream, mut task: Task) {
    let (ping_after, dead_after) = task.liveness;
    let mut last_seen = Instant::now();
    let mut ticker = tokio::time::interval(ping_after);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Frames that came with the handshake's answer.
    let mut ended = task.on_read(&mut socket).await.err();
    while ended.is_none() {
        // Neither TCP nor tokio-rustls zeroes the room a read may fill: it can be large.
        let (buf, limit) = task.reader.space();
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(reason) = task.keep_alive(&mut socket, last_seen).await {
                    ended = Some(Reason::Other(reason));
                }
            }
            outgoing = task.queue.recv() => match outgoing {
                None => ended = Some(Reason::Other("transport dropped".into())),
                Some(first) => {
                    // Woken by the first call, this task would run right after it and write
                    // each call alone; yielding lets every call ready in this scheduler pass
                    // queue its request, so one write (and one read on the node) carries them.
                    tokio::task::yield_now().await;
                    if let Err(reason) = task.write(&mut socket, first).await {
                        ended = Some(Reason::Other(reason));
                    }
                }
            },
            read = read_some(&mut socket, buf, limit as u64) => {
                last_seen = Instant::now();
                ended = match read {
                    Ok(0) => Some(Reason::Other("closed by the upstream".into())),
                    Err(error) => Some(Reason::Other(format!("read failed: {error}"))),
                    Ok(_) => task.on_read(&mut socket).await.err(),
                };
            }
        }
    }
    task.queue.close();
    task.pending
        .fail_all(&ended.unwrap_or(Reason::Other("ended".into())));
    if !task.closed {
        // Whatever is left is the rest of a write that failed: not to be finished.
        task.writer.written();
        task.writer.close(&[]);
    }
    let _ = tokio::time::timeout(dead_after, async {
        let _ = task.flush(&mut socket).await;
        socket.shutdown().await
    })
    .await;
}

/// Reads what has come, up to `limit` bytes, into `buf`'s spare room (never zeroed by us).
async fn read_some(socket: &mut Stream, buf: &mut BytesMut, limit: u64) -> std::io::Result<usize> {
    socket.take(limit).read_buf(buf).await
}

impl Task {
    /// Handles every complete frame read so far: answers go to their calls, pings get their
    /// pong (written with any other). The error is why the connection ends.
    async fn on_read(&mut self, socket: &mut Stream) -> Result<(), Reason> {
        loop {
            let event = self
                .reader
                .next()
                .map_err(|error| Reason::Other(format!("read failed: {error}")))?;
            match event {
                None => break,
                Some(Event::Text(answer)) => {
                    self.pending.deliver(Body::Text(answer), &self.upstream)
                }
                Some(Event::Binary(answer)) => self.pending.deliver(answer.into(), &self.upstream),
                Some(Event::Ping(payload)) => self.writer.pong(&payload),
                Some(Event::Pong) => {}
                Some(Event::Close(payload)) => {
                    // Echo the status code, as RFC 6455 asks; the reason is the node's own.
                    self.writer.close(&payload[..payload.len().min(2)]);
                    self.closed = true;
                    return Err(Reason::Other("closed by the upstream".into()));
                }
                Some(Event::TooLarge(id)) => {
                    let limit = self.max_response_bytes;
                    if !self.pending.reject(id, limit, &self.upstream) {
                        return Err(Reason::TooLarge(limit));
                    }
                }
            }
        }
        if self.writer.pending().is_empty() {
            return Ok(());
        }
        let dead_after = self.liveness.1;
        match tokio::time::timeout(dead_after, self.flush(socket)).await {
            Ok(written) => written.map_err(Reason::Other),
            Err(_) => Err(Reason::Other(format!("pong stuck for {dead_after:?}"))),
        }
    }

    /// On each liveness tick: gives up a connection silent for `dead_after`, pings one silent
    /// for `ping_after`. The error is why the connection ended.
    async fn keep_alive(&mut self, socket: &mut Stream, last_seen: Instant) -> Result<(), String> {
        let (ping_after, dead_after) = self.liveness;
        let silent = last_seen.elapsed();
        if silent >= dead_after {
            return Err(format!("silent for {silent:?}"));
        }
        if silent >= ping_after {
            self.writer.ping();
            // Bounded: a node that stops reading must not stall the task past `dead_after`.
            return match tokio::time::timeout(dead_after - silent, self.flush(socket)).await {
                Ok(written) => written,
                Err(_) => Err(format!("ping stuck for {:?}", dead_after - silent)),
            };
        }
        Ok(())
    }

    /// Writes `first` and whatever else is queued by now, up to [`MAX_COALESCED_BYTES`], in one
    /// write, bounded: a peer that stops reading must not wedge the connection. The error is
    /// why the connection ended.
    async fn write(&mut self, socket: &mut Stream, first: Vec<u8>) -> Result<(), String> {
        let mut bytes = first.len();
        self.writer.text(&first);
        while bytes < MAX_COALESCED_BYTES {
            let Ok(text) = self.queue.try_recv() else {
                break;
            };
            bytes += text.len();
            self.writer.text(&text);
        }
        let dead_after = self.liveness.1;
        match tokio::time::timeout(dead_after, self.flush(socket)).await {
            Ok(written) => written,
            Err(_) => Err(format!("write stuck for {dead_after:?}")),
        }
    }

    /// Writes every frame waiting in the writer.
    async fn flush(&mut self, socket: &mut Stream) -> Result<(), String> {
        let written = async {
            socket.write_all(self.writer.pending()).await?;
            socket.flush().await
        };
        written
            .await
            .map_err(|error| format!("write failed: {error}"))?;
        self.writer.written();
        Ok(())
    }
}
