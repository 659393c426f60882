//! Calls over an upstream's WebSocket: one multiplexed connection per upstream, for nodes with
//! only `ws` and for upstreams configured with `calls = "ws"`.
//!
//! Every request on the connection carries ids unique on it. Requests ethgate encodes itself
//! ([`WsMux::call`]) are numbered from a base the mux hands out, so neither direction is
//! re-parsed; other bodies ([`WsMux::post`]) have their ids rewritten and restored. The
//! connection is opened on demand and re-opened after a loss, with backoff between failed
//! dials so a dead node costs one dial per backoff step, not one per call. Errors are
//! classified like HTTP ones: "not sent" only when nothing was written.

mod connection;
mod ids;
mod open;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use self::connection::{Live, Waiting};
use super::{Body, SendError};
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

/// Failed dials and when the next may be tried.
#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

/// The multiplexed call transport of one upstream's WebSocket.
pub struct WsMux {
    config: UpstreamConfig,
    connect_timeout: Duration,
    max_response_bytes: usize,
    /// The connection calls go to; taken without waiting when it is up.
    live: Mutex<Option<Live>>,
    /// Held while dialling, so concurrent calls wait for one dial instead of each making one.
    dialing: tokio::sync::Mutex<Backoff>,
    next_id: AtomicU64,
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
            live: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(Backoff::default()),
            next_id: AtomicU64::new(1),
            liveness: (PING_AFTER, DEAD_AFTER),
        }
    }

    /// Sends `n` calls that `encode(base)` numbers `base..base + n` and returns the answer as
    /// the node sent it (ids unchanged) with that base.
    ///
    /// `encode` must write UTF-8: the text goes out as a text frame. The router's encoder
    /// copies only text the client decoder checked, plus ASCII of its own, so it is not
    /// checked again per call (a debug build asserts it).
    pub async fn call(
        &self,
        n: u64,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(Body, u64), SendError> {
        let base = self.next_id.fetch_add(n.max(1), Ordering::Relaxed);
        let text = encode(base);
        debug_assert!(std::str::from_utf8(&text).is_ok(), "a text frame is UTF-8");
        let answer = self.exchange(text, base, n).await?;
        Ok((answer, base))
    }

    /// Sends one JSON-RPC request or batch and returns the answer with the caller's ids.
    pub async fn post(&self, body: Bytes) -> Result<Bytes, SendError> {
        let (request, original) = ids::rewrite(&body, &self.next_id)?;
        let answer = self
            .exchange(request.text.into_bytes(), request.base, request.len)
            .await?;
        ids::restore(&answer, request.base, &original)
    }

    /// Writes `text` (ids `base..base + len`) and waits for the answer that carries them.
    async fn exchange(&self, text: Vec<u8>, base: u64, len: u64) -> Result<Body, SendError> {
        let live = self.connection().await?;
        let (answer, answered) = oneshot::channel();
        // Removed however this call ends (answer, timeout, cancellation).
        let _waiting = live.wait(base, Waiting { len, answer });
        if live.send(text).await.is_err() {
            // The connection's task ended before taking the message: it was never written.
            return Err(SendError::NotSent("upstream WebSocket closed".into()));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(SendError::NoAnswer("upstream WebSocket closed".into())))
    }

    /// The live connection, dialling one if there is none and the backoff allows.
    async fn connection(&self) -> Result<Live, SendError> {
        if let Some(live) = self.live_now() {
            return Ok(live);
        }
        let mut backoff = self.dialing.lock().await;
        // Another call may have dialled while this one waited for the lock.
        if let Some(live) = self.live_now() {
            return Ok(live);
        }
        if backoff.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(SendError::NotSent(format!(
                "reconnect backoff after: {}",
                backoff.last_error
            )));
        }
        // Boxed: the dial (TCP, TLS, handshake) is a future of several KiB that would otherwise
        // be part of every call's state, even calls over HTTP (`Upstream::post`), which are
        // then moved and copied at each await.
        let dial = Box::pin(open::open(&self.config, self.connect_timeout));
        match dial.await {
            Ok(opened) => {
                let name = self.config.name.as_str().into();
                let live = connection::spawn(opened, name, self.liveness, self.max_response_bytes);
                *backoff = Backoff::default();
                *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
                Ok(live)
            }
            Err(error) => {
                backoff.failures = backoff.failures.saturating_add(1);
                let wait = MIN_BACKOFF
                    .saturating_mul(1 << backoff.failures.min(6).saturating_sub(1))
                    .min(MAX_BACKOFF);
                backoff.retry_at = Some(Instant::now() + wait);
                backoff.last_error = error.clone();
                Err(SendError::NotSent(error))
            }
        }
    }

    /// The current connection if it is still up.
    fn live_now(&self) -> Option<Live> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match &*live {
            Some(up) if !up.is_closed() => Some(up.clone()),
            Some(_) => {
                *live = None;
                None
            }
            None => None,
        }
    }
}
