//! The task that owns one multiplexed upstream WebSocket: it writes queued requests, several
//! per write when calls arrive together, and routes each answer to the call whose ids it
//! carries. When it ends (socket lost, or every handle dropped), every waiting call is told.

mod pending;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::super::dial::UpstreamSocket;
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
    outgoing: mpsc::Sender<Message>,
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

    /// Queues `message` for writing; an error means the task ended without taking it.
    pub(super) async fn send(&self, message: Message) -> Result<(), ()> {
        self.outgoing.send(message).await.map_err(|_| ())
    }
}

/// What the connection's task works with besides its socket.
struct Task {
    queue: mpsc::Receiver<Message>,
    pending: Pending,
    upstream: Arc<str>,
    max_response_bytes: usize,
    /// Silence after which the connection is pinged, and after which it counts as dead.
    liveness: (Duration, Duration),
}

/// Starts the task that owns `socket` (to upstream `name`) and returns the handle calls use.
pub(super) fn spawn(
    socket: UpstreamSocket,
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
    };
    tokio::spawn(run(socket, task));
    Live { outgoing, pending }
}

async fn run(mut socket: UpstreamSocket, mut task: Task) {
    let (ping_after, dead_after) = task.liveness;
    let mut last_seen = Instant::now();
    let mut ticker = tokio::time::interval(ping_after);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(reason) = keep_alive(&mut socket, last_seen, task.liveness).await {
                    break Reason::Other(reason);
                }
            }
            outgoing = task.queue.recv() => match outgoing {
                None => break Reason::Other("transport dropped".into()),
                Some(first) => {
                    // Woken by the first call, this task would run right after it and write
                    // each call alone; yielding lets every call ready in this scheduler pass
                    // queue its request, so one write (and one read on the node) carries them.
                    tokio::task::yield_now().await;
                    if let Err(reason) = write(&mut socket, first, &mut task.queue, dead_after).await {
                        break Reason::Other(reason);
                    }
                }
            },
            incoming = socket.next() => {
                last_seen = Instant::now();
                match incoming {
                    None => break Reason::Other("closed by the upstream".into()),
                    Some(Err(WsError::Capacity(_))) => break Reason::TooLarge(task.max_response_bytes),
                    Some(Err(error)) => break Reason::Other(format!("read failed: {error}")),
                    Some(Ok(Message::Text(text))) => task.pending.deliver(text.into(), &task.upstream),
                    Some(Ok(Message::Binary(data))) => task.pending.deliver(data, &task.upstream),
                    Some(Ok(Message::Close(_))) => break Reason::Other("closed by the upstream".into()),
                    Some(Ok(_)) => {}
                }
            }
        }
    };
    task.queue.close();
    task.pending.fail_all(&reason);
    let _ = tokio::time::timeout(dead_after, socket.close(None)).await;
}

/// On each liveness tick: gives up a connection silent for `dead_after`, pings one silent
/// for `ping_after`. The error is why the connection ended.
async fn keep_alive(
    socket: &mut UpstreamSocket,
    last_seen: Instant,
    (ping_after, dead_after): (Duration, Duration),
) -> Result<(), String> {
    let silent = last_seen.elapsed();
    if silent >= dead_after {
        return Err(format!("silent for {silent:?}"));
    }
    if silent >= ping_after {
        // Bounded: a node that stops reading must not stall the task past `dead_after`.
        let ping = socket.send(Message::Ping(Bytes::new()));
        match tokio::time::timeout(dead_after - silent, ping).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(format!("write failed: {error}")),
            Err(_) => return Err(format!("ping stuck for {:?}", dead_after - silent)),
        }
    }
    Ok(())
}

/// Writes `first` and whatever else is queued by now, up to [`MAX_COALESCED_BYTES`], in one
/// flush, bounded: a peer that stops reading must not wedge the connection. The error is why
/// the connection ended.
async fn write(
    socket: &mut UpstreamSocket,
    first: Message,
    queue: &mut mpsc::Receiver<Message>,
    dead_after: Duration,
) -> Result<(), String> {
    let written = async {
        let mut bytes = first.len();
        socket.feed(first).await?;
        while bytes < MAX_COALESCED_BYTES {
            let Ok(message) = queue.try_recv() else {
                break;
            };
            bytes += message.len();
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(dead_after, written).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("write failed: {error}")),
        Err(_) => Err(format!("write stuck for {dead_after:?}")),
    }
}
