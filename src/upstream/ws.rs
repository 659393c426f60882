//! Calls to a WebSocket-only upstream: one multiplexed connection per upstream. Each request's
//! ids are rewritten to ids unique on the connection (as the HTTP path rewrites client ids)
//! and restored on the answer. The connection is opened on demand and re-opened after a loss,
//! with backoff between failed dials so a dead node costs one dial per backoff step, not one
//! per call. Errors are classified like HTTP ones: "not sent" only when nothing was written.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::dial::{dial_ws_with, UpstreamSocket};
use super::SendError;
use crate::config::UpstreamConfig;

/// First wait after a failed dial; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between dials to a node that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Silence after which the connection is pinged.
const PING_AFTER: Duration = Duration::from_secs(5);
/// Silence after which the connection counts as dead (a half-open socket never errors): it is
/// dropped, its calls get "no answer", and the next call dials again.
const DEAD_AFTER: Duration = Duration::from_secs(15);
/// Requests queued for writing per connection; a full queue waits (the call's timeout bounds it).
const QUEUE: usize = 256;

/// One request waiting for its answer: its ids on the connection are `base..base + len`.
struct Waiting {
    len: u64,
    /// The caller's ids, in request order.
    original: Vec<Option<Box<RawValue>>>,
    answer: oneshot::Sender<Result<Bytes, SendError>>,
}

/// A request with its ids rewritten to `base..base + len`.
struct Rewritten {
    text: String,
    base: u64,
    len: u64,
    /// The caller's ids, in request order.
    original: Vec<Option<Box<RawValue>>>,
}

type Pending = Arc<Mutex<BTreeMap<u64, Waiting>>>;

/// A live connection: a writer queue feeding the task that owns the socket.
struct Live {
    outgoing: mpsc::Sender<Message>,
    pending: Pending,
}

#[derive(Default)]
struct Dialing {
    live: Option<Live>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

/// The multiplexed call transport of one WebSocket-only upstream.
pub struct WsMux {
    config: UpstreamConfig,
    connect_timeout: Duration,
    max_response_bytes: usize,
    state: tokio::sync::Mutex<Dialing>,
    next_id: std::sync::atomic::AtomicU64,
    /// [`PING_AFTER`] and [`DEAD_AFTER`] (shorter in tests).
    liveness: (Duration, Duration),
}

impl std::fmt::Debug for WsMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds credentials: name only.
        f.debug_struct("WsMux")
            .field("upstream", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl WsMux {
    /// A transport for `config.ws`; nothing is dialled until the first call.
    pub fn new(
        config: UpstreamConfig,
        connect_timeout: Duration,
        max_response_bytes: usize,
    ) -> Self {
        WsMux {
            config,
            connect_timeout,
            max_response_bytes,
            state: tokio::sync::Mutex::new(Dialing::default()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            liveness: (PING_AFTER, DEAD_AFTER),
        }
    }

    /// Sends one JSON-RPC request or batch and returns the answer with the caller's ids.
    pub async fn post(&self, body: Bytes) -> Result<Bytes, SendError> {
        let Rewritten {
            text,
            base,
            len,
            original,
        } = self.rewrite(&body)?;
        let (live_tx, pending) = self.connection().await?;
        let (answer, answered) = oneshot::channel();
        lock(&pending).insert(
            base,
            Waiting {
                len,
                original,
                answer,
            },
        );
        // Removes the entry however this call ends (timeout, cancellation).
        let _cleanup = Cleanup(&pending, base);
        if live_tx.send(Message::text(text)).await.is_err() {
            // The writer task is gone before taking the message: it was never written.
            return Err(SendError::NotSent("upstream WebSocket closed".into()));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(SendError::NoAnswer("upstream WebSocket closed".into())))
    }

    /// Gives every call an id unique on the connection. Everything but `id` is passed
    /// through as raw text.
    fn rewrite(&self, body: &[u8]) -> Result<Rewritten, SendError> {
        let invalid = |e: serde_json::Error| SendError::NotSent(format!("invalid request: {e}"));
        let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        let mut calls: Vec<Call> = if batch {
            serde_json::from_slice(body).map_err(invalid)?
        } else {
            vec![serde_json::from_slice(body).map_err(invalid)?]
        };
        if calls.is_empty() {
            return Err(SendError::NotSent("invalid request: empty batch".into()));
        }
        let len = calls.len() as u64;
        let base = self
            .next_id
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        let mut original = Vec::with_capacity(calls.len());
        for (offset, call) in calls.iter_mut().enumerate() {
            let id = RawValue::from_string((base + offset as u64).to_string()).map_err(invalid)?;
            original.push(call.insert("id".to_string(), id));
        }
        let text = if batch {
            serde_json::to_string(&calls)
        } else {
            serde_json::to_string(&calls[0])
        };
        Ok(Rewritten {
            text: text.map_err(invalid)?,
            base,
            len,
            original,
        })
    }

    /// The live connection, dialling one if there is none and the backoff allows.
    async fn connection(&self) -> Result<(mpsc::Sender<Message>, Pending), SendError> {
        let mut state = self.state.lock().await;
        if let Some(live) = &state.live {
            if !live.outgoing.is_closed() {
                return Ok((live.outgoing.clone(), live.pending.clone()));
            }
            state.live = None;
        }
        if state.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(SendError::NotSent(format!(
                "reconnect backoff after: {}",
                state.last_error
            )));
        }
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(self.max_response_bytes))
            .max_frame_size(Some(self.max_response_bytes));
        // Boxed: the dial (TCP, TLS, handshake) is a future of several KiB that would otherwise
        // be part of every call's state, even calls over HTTP (`Upstream::post`), which are
        // then moved and copied at each await.
        let dial = Box::pin(dial_ws_with(
            &self.config,
            self.connect_timeout,
            Some(ws_config),
        ));
        match dial.await {
            Ok(socket) => {
                let (outgoing, queue) = mpsc::channel(QUEUE);
                let pending: Pending = Arc::default();
                tokio::spawn(run(socket, queue, pending.clone(), self.liveness));
                state.failures = 0;
                state.retry_at = None;
                state.live = Some(Live {
                    outgoing: outgoing.clone(),
                    pending: pending.clone(),
                });
                Ok((outgoing, pending))
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = MIN_BACKOFF
                    .saturating_mul(1 << state.failures.min(6).saturating_sub(1))
                    .min(MAX_BACKOFF);
                state.retry_at = Some(Instant::now() + backoff);
                state.last_error = error.clone();
                Err(SendError::NotSent(error))
            }
        }
    }
}

struct Cleanup<'a>(&'a Pending, u64);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

fn lock(pending: &Pending) -> MutexGuard<'_, BTreeMap<u64, Waiting>> {
    // Entries are inserted and removed whole; a poisoned map is still consistent.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Owns the socket: writes queued requests, routes answers to their callers. When it ends
/// (socket lost, or every handle dropped), every waiting call gets "no answer".
async fn run(
    mut socket: UpstreamSocket,
    mut queue: mpsc::Receiver<Message>,
    pending: Pending,
    (ping_after, dead_after): (Duration, Duration),
) {
    let mut last_seen = Instant::now();
    let mut ticker = tokio::time::interval(ping_after);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(reason) = keep_alive(&mut socket, last_seen, (ping_after, dead_after)).await {
                    break reason;
                }
            }
            outgoing = queue.recv() => match outgoing {
                None => break "transport dropped".to_string(),
                Some(message) => {
                    if let Err(reason) = write(&mut socket, message, dead_after).await {
                        break reason;
                    }
                }
            },
            incoming = socket.next() => {
                last_seen = Instant::now();
                match incoming {
                    None => break "closed by the upstream".to_string(),
                    Some(Err(error)) => break format!("read failed: {error}"),
                    Some(Ok(Message::Text(text))) => deliver(text.as_bytes(), &pending),
                    Some(Ok(Message::Binary(data))) => deliver(&data, &pending),
                    Some(Ok(Message::Close(_))) => break "closed by the upstream".to_string(),
                    Some(Ok(_)) => {}
                }
            }
        }
    };
    queue.close();
    let waiting = std::mem::take(&mut *lock(&pending));
    for (_, waiting) in waiting {
        let _ = waiting.answer.send(Err(SendError::NoAnswer(format!(
            "upstream WebSocket {reason}"
        ))));
    }
    let _ = socket.close(None).await;
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

/// Writes one queued request, bounded: a peer that stops reading must not wedge the
/// connection. The error is why the connection ended.
async fn write(
    socket: &mut UpstreamSocket,
    message: Message,
    dead_after: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(dead_after, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("write failed: {error}")),
        Err(_) => Err(format!("write stuck for {dead_after:?}")),
    }
}

/// Hands an answer (object or batch array) to the call whose ids it carries, with the
/// caller's ids put back. Notifications and unknown ids are dropped.
fn deliver(text: &[u8], pending: &Pending) {
    let batch = text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed = if batch {
        serde_json::from_slice::<Vec<Call>>(text)
    } else {
        serde_json::from_slice::<Call>(text).map(|a| vec![a])
    };
    let Ok(mut answers) = parsed else {
        return;
    };
    let id_of = |answer: &Call| -> Option<u64> { answer.get("id")?.get().parse().ok() };
    let Some(first) = answers.iter().find_map(id_of) else {
        return;
    };
    let (base, waiting) = {
        let mut map = lock(pending);
        let base = match map.range(..=first).next_back() {
            Some((&base, entry)) if first < base + entry.len => base,
            // An answer to a call that gave up (timed out) already: dropped.
            _ => return,
        };
        match map.remove(&base) {
            Some(waiting) => (base, waiting),
            None => return,
        }
    };
    for answer in &mut answers {
        let restored = id_of(answer)
            .and_then(|id| id.checked_sub(base))
            .and_then(|offset| waiting.original.get(offset as usize))
            .and_then(|id| id.clone());
        if let Some(id) = restored {
            answer.insert("id".to_string(), id);
        }
    }
    let body = if batch {
        serde_json::to_vec(&answers)
    } else {
        serde_json::to_vec(&answers[0])
    };
    let _ = waiting.answer.send(
        body.map(Bytes::from)
            .map_err(|e| SendError::NoAnswer(e.to_string())),
    );
}

/// One call or answer with its members as raw text: only `id` is touched, so params and
/// results pass through byte for byte.
type Call = std::collections::HashMap<String, Box<RawValue>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn mux() -> WsMux {
        let config = UpstreamConfig {
            name: "w".into(),
            http: None,
            ws: Some("ws://127.0.0.1:1".parse().expect("uri")),
            priority: 0,
            tls: Default::default(),
            headers: Default::default(),
        };
        WsMux::new(config, Duration::from_secs(1), 1 << 20)
    }

    #[test]
    fn ids_are_rewritten_per_connection_and_restored_on_a_reordered_batch() {
        let mux = mux();
        let body = br#"[{"jsonrpc":"2.0","id":"a","method":"m","params":[1.50]},{"jsonrpc":"2.0","id":7,"method":"n"}]"#;
        let first = mux.rewrite(body).expect("rewrite");
        let second = mux.rewrite(body).expect("rewrite");
        assert_eq!((first.base, first.len), (1, 2));
        assert_eq!(second.base, 3, "ids never repeat on a connection");
        assert!(
            first.text.contains(r#""params":[1.50]"#),
            "params pass through raw: {}",
            first.text
        );
        let pending: Pending = Arc::default();
        let (answer, mut answered) = oneshot::channel();
        lock(&pending).insert(
            first.base,
            Waiting {
                len: first.len,
                original: first.original,
                answer,
            },
        );
        // An answer to nobody (a call that timed out) is dropped.
        deliver(br#"{"jsonrpc":"2.0","id":99,"result":"0x0"}"#, &pending);
        assert!(answered.try_recv().is_err());
        deliver(
            br#"[{"jsonrpc":"2.0","id":2,"result":"0x2"},{"jsonrpc":"2.0","id":1,"result":"0x1"}]"#,
            &pending,
        );
        let body = answered.try_recv().expect("answered").expect("ok");
        let answers: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("json");
        assert_eq!(answers[0]["id"], serde_json::json!(7));
        assert_eq!(answers[0]["result"], "0x2");
        assert_eq!(answers[1]["id"], "a");
        assert!(lock(&pending).is_empty());
    }

    #[test]
    fn an_empty_batch_or_garbage_is_not_sent() {
        let mux = mux();
        assert!(matches!(mux.rewrite(b"[]"), Err(SendError::NotSent(_))));
        assert!(matches!(mux.rewrite(b"{nope"), Err(SendError::NotSent(_))));
    }

    #[tokio::test]
    async fn a_silent_connection_is_dropped_and_its_call_gets_no_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A node that completes the handshake, then never reads or answers (not even pongs).
        let node = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let ws = tokio_tungstenite::accept_async(tcp)
                .await
                .expect("handshake");
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(ws);
        });
        let mut mux = mux();
        mux.config.ws = Some(format!("ws://{addr}").parse().expect("uri"));
        mux.liveness = (Duration::from_millis(100), Duration::from_millis(300));
        let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#);
        let outcome = tokio::time::timeout(Duration::from_secs(10), mux.post(body))
            .await
            .expect("given up well before 10 s");
        assert!(
            matches!(&outcome, Err(SendError::NoAnswer(m)) if m.contains("silent")),
            "{outcome:?}"
        );
        node.abort();
    }

    #[tokio::test]
    async fn a_failed_dial_backs_off_instead_of_dialling_per_call() {
        let mux = mux();
        let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"m"}"#);
        let first = mux
            .post(body.clone())
            .await
            .expect_err("nothing listens on port 1");
        assert!(matches!(first, SendError::NotSent(_)), "{first:?}");
        let second = mux.post(body).await.expect_err("backoff");
        assert!(
            matches!(&second, SendError::NotSent(m) if m.starts_with("reconnect backoff")),
            "{second:?}"
        );
    }
}
