//! The task that owns one multiplexed upstream WebSocket: it writes queued requests, several
//! per write when calls arrive together, and routes each answer to the call whose ids it
//! carries. When it ends (socket lost, or every handle dropped), every waiting call is told.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::super::dial::UpstreamSocket;
use super::super::SendError;
use super::ids::first_numeric_id;

/// Requests queued for writing per connection; a full queue waits (the call's timeout bounds it).
const QUEUE: usize = 256;

/// Requests written together at most: enough to share one write among every call that arrived
/// meanwhile, few enough that reading answers is not held up for long.
const MAX_COALESCED: usize = 64;

/// One request waiting for its answer: its ids on the connection are `base..base + len`.
pub(super) struct Waiting {
    pub(super) len: u64,
    pub(super) answer: oneshot::Sender<Result<Bytes, SendError>>,
}

type Pending = Arc<Mutex<BTreeMap<u64, Waiting>>>;

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
        lock(&self.pending).insert(base, waiting);
        WaitGuard(&self.pending, base)
    }

    /// Queues `message` for writing; an error means the task ended without taking it.
    pub(super) async fn send(&self, message: Message) -> Result<(), ()> {
        self.outgoing.send(message).await.map_err(|_| ())
    }
}

/// Removes a call from the connection's pending calls however the call ends.
pub(super) struct WaitGuard<'a>(&'a Pending, u64);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

fn lock(pending: &Pending) -> MutexGuard<'_, BTreeMap<u64, Waiting>> {
    // Entries are inserted and removed whole; a poisoned map is still consistent.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the task that owns `socket` and returns the handle calls use.
pub(super) fn spawn(
    socket: UpstreamSocket,
    liveness: (Duration, Duration),
    max_response_bytes: usize,
) -> Live {
    let (outgoing, queue) = mpsc::channel(QUEUE);
    let pending = Pending::default();
    let waiters = Waiters {
        pending: pending.clone(),
        max_response_bytes,
    };
    tokio::spawn(run(socket, queue, waiters, liveness));
    Live { outgoing, pending }
}

/// Why a connection ended, as its waiting calls will hear it.
enum Reason {
    /// An answer over `max_response_bytes`: the socket cannot be read past it.
    TooLarge,
    Other(String),
}

/// The calls waiting on a connection: answers are routed to them, and when the connection
/// ends, they are told why.
struct Waiters {
    pending: Pending,
    max_response_bytes: usize,
}

impl Waiters {
    /// Fails every call still waiting. An over-large answer is charged to the call it belongs
    /// to when only one was waiting; otherwise nobody can tell whose it was.
    fn fail_waiting(&self, reason: Reason) {
        let waiting = std::mem::take(&mut *lock(&self.pending));
        let alone = waiting.len() == 1;
        for (_, waiting) in waiting {
            let error = match &reason {
                Reason::TooLarge if alone => SendError::TooLarge(self.max_response_bytes),
                Reason::TooLarge => SendError::NoAnswer(format!(
                    "upstream WebSocket dropped: an answer over {} bytes",
                    self.max_response_bytes
                )),
                Reason::Other(reason) => {
                    SendError::NoAnswer(format!("upstream WebSocket {reason}"))
                }
            };
            let _ = waiting.answer.send(Err(error));
        }
    }

    /// Hands an answer (object or batch array) to the call whose ids it carries. Notifications
    /// and answers to calls that gave up already (timed out) are dropped.
    fn deliver(&self, answer: Bytes) {
        let Some(first) = first_numeric_id(&answer) else {
            return;
        };
        let waiting = {
            let mut map = lock(&self.pending);
            let base = match map.range(..=first).next_back() {
                Some((&base, entry)) if first < base + entry.len.max(1) => base,
                _ => return,
            };
            map.remove(&base)
        };
        if let Some(waiting) = waiting {
            let _ = waiting.answer.send(Ok(answer));
        }
    }
}

async fn run(
    mut socket: UpstreamSocket,
    mut queue: mpsc::Receiver<Message>,
    waiters: Waiters,
    (ping_after, dead_after): (Duration, Duration),
) {
    let mut last_seen = Instant::now();
    let mut ticker = tokio::time::interval(ping_after);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(reason) = keep_alive(&mut socket, last_seen, (ping_after, dead_after)).await {
                    break Reason::Other(reason);
                }
            }
            outgoing = queue.recv() => match outgoing {
                None => break Reason::Other("transport dropped".into()),
                Some(first) => {
                    // Woken by the first call, this task would run right after it and write
                    // each call alone; yielding lets every call ready in this scheduler pass
                    // queue its request, so one write (and one read on the node) carries them.
                    tokio::task::yield_now().await;
                    if let Err(reason) = write(&mut socket, first, &mut queue, dead_after).await {
                        break Reason::Other(reason);
                    }
                }
            },
            incoming = socket.next() => {
                last_seen = Instant::now();
                match incoming {
                    None => break Reason::Other("closed by the upstream".into()),
                    Some(Err(WsError::Capacity(_))) => break Reason::TooLarge,
                    Some(Err(error)) => break Reason::Other(format!("read failed: {error}")),
                    Some(Ok(Message::Text(text))) => waiters.deliver(text.into()),
                    Some(Ok(Message::Binary(data))) => waiters.deliver(data),
                    Some(Ok(Message::Close(_))) => break Reason::Other("closed by the upstream".into()),
                    Some(Ok(_)) => {}
                }
            }
        }
    };
    queue.close();
    waiters.fail_waiting(reason);
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
        if let Err(error) = socket.send(Message::Ping(Bytes::new())).await {
            return Err(format!("write failed: {error}"));
        }
    }
    Ok(())
}

/// Writes `first` and whatever else is queued by now in one flush, bounded: a peer that stops
/// reading must not wedge the connection. The error is why the connection ended.
async fn write(
    socket: &mut UpstreamSocket,
    first: Message,
    queue: &mut mpsc::Receiver<Message>,
    dead_after: Duration,
) -> Result<(), String> {
    let written = async {
        socket.feed(first).await?;
        for _ in 1..MAX_COALESCED {
            match queue.try_recv() {
                Ok(message) => socket.feed(message).await?,
                Err(_) => break,
            }
        }
        socket.flush().await
    };
    match tokio::time::timeout(dead_after, written).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("write failed: {error}")),
        Err(_) => Err(format!("write stuck for {dead_after:?}")),
    }
}
