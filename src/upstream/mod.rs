//! Upstream Ethereum nodes: one [`Upstream`] per configured node and the [`Upstreams`] set
//! that holds their health model and publishes, through atomics, which ones are in rotation.

mod body;
pub mod dial;
pub mod health;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod probe;
mod record;
mod reload;
mod rotation;
mod set;
pub mod ws;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::config::{CallTransport, UpstreamConfig};
pub use body::{AnswerText, Body};
use health::State;
pub use http::{HttpPool, SendError};
pub use metrics::AttemptResult;
pub use observe::{Failover, HealthObserve, Transition};
pub use probe::ProbeError;
pub use set::Upstreams;

/// One upstream node as the request path sees it: immutable settings plus atomics.
#[derive(Debug)]
pub struct Upstream {
    /// Position in the configured list: the slot of its facts in its own set only, never
    /// handed out (a reload renumbers).
    index: usize,
    /// Configured settings.
    pub config: UpstreamConfig,
    state: AtomicU8,
    head: AtomicU64,
    /// Last `safe` and `finalized` block numbers probed (0 = unknown).
    safe: AtomicU64,
    finalized: AtomicU64,
    /// Highest `finalized` ever probed, and whether the last probe reported less.
    finalized_high: AtomicU64,
    finalized_went_back: AtomicBool,
    latency_micros: AtomicU64,
    attempts: [AtomicU64; AttemptResult::ALL.len()],
    latency: crate::metrics::Histogram,
    /// Whether it is out of rotation and why: calls in flight here wait on it to move away.
    rotation: rotation::Rotation,
    /// This upstream's own HTTP pool: its TLS settings and headers are its own.
    pool: HttpPool,
    /// Calls, batches and probes over the WebSocket, when `calls = "ws"` (the default of an
    /// upstream without `http`).
    ws_calls: Option<ws::WsMux>,
    /// Probes over a WebSocket of their own: behind a client's large answer on the calls'
    /// connection they would time out and take a healthy node out of rotation.
    ws_probes: Option<ws::WsMux>,
}

impl Upstream {
    fn new(
        index: usize,
        config: UpstreamConfig,
        pool: HttpPool,
        connect_timeout: Duration,
    ) -> Self {
        let over_ws = config.calls == CallTransport::Ws && config.ws.is_some();
        let mux = || ws::WsMux::new(config.clone(), connect_timeout, pool.max_response_bytes());
        let (ws_calls, ws_probes) = match over_ws {
            true => (Some(mux()), Some(mux())),
            false => (None, None),
        };
        Upstream {
            ws_calls,
            ws_probes,
            index,
            config,
            pool,
            state: AtomicU8::new(State::Unreachable as u8),
            head: AtomicU64::new(0),
            safe: AtomicU64::new(0),
            finalized: AtomicU64::new(0),
            finalized_high: AtomicU64::new(0),
            finalized_went_back: AtomicBool::new(false),
            latency_micros: AtomicU64::new(0),
            attempts: Default::default(),
            latency: Default::default(),
            rotation: rotation::Rotation::out_for("not probed yet"),
        }
    }

    /// The HTTP pool of this upstream (its TLS settings and headers).
    pub fn pool(&self) -> &HttpPool {
        &self.pool
    }

    /// Sends one JSON-RPC request or batch over this upstream's call transport and returns
    /// the answer under the body's own ids.
    pub async fn post(&self, body: Bytes) -> Result<Bytes, SendError> {
        match (&self.ws_calls, &self.config.http) {
            (Some(mux), _) => mux.post(body).await,
            (None, Some(uri)) => self.pool.post(uri, &body).await,
            (None, None) => Err(SendError::NotSent("no endpoint".into())),
        }
    }

    /// Sends a health probe over the call transport (its own WebSocket when calls go over one).
    pub async fn probe(&self, body: Bytes) -> Result<Bytes, SendError> {
        match (&self.ws_probes, &self.config.http) {
            (Some(mux), _) => mux.post(body).await,
            (None, Some(uri)) => self.pool.post(uri, &body).await,
            (None, None) => Err(SendError::NotSent("no endpoint".into())),
        }
    }

    /// Sends `n` calls that `encode(base)` numbers `base..base + n`, and returns the answer
    /// (under those ids) with the base: the transport picks it, so a multiplexed WebSocket
    /// needs no id rewriting either way. Over HTTP the base is 0.
    pub async fn call(
        &self,
        n: u64,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<(Body, u64), SendError> {
        match (&self.ws_calls, &self.config.http) {
            (Some(mux), _) => mux.call(n, encode).await,
            (None, Some(uri)) => Ok((self.pool.post(uri, &encode(0)).await?.into(), 0)),
            (None, None) => Err(SendError::NotSent("no endpoint".into())),
        }
    }

    /// Counts one attempt with its outcome.
    pub fn count_attempt(&self, result: AttemptResult) {
        self.attempts[result.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long one attempt took.
    pub fn observe_attempt(&self, elapsed: Duration) {
        self.latency.observe(elapsed);
    }

    /// Durations of attempts on this upstream.
    pub fn latency_histogram(&self) -> &crate::metrics::Histogram {
        &self.latency
    }

    /// Attempts so far, in the order of [`AttemptResult::ALL`].
    pub fn attempts(&self) -> [u64; AttemptResult::ALL.len()] {
        std::array::from_fn(|i| self.attempts[i].load(Ordering::Relaxed))
    }

    /// Current state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether requests may be routed here.
    pub fn in_rotation(&self) -> bool {
        self.state() == State::Healthy
    }

    /// Last head reported (0 before any).
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Last `safe` block number probed, when the node reports one.
    pub fn safe(&self) -> Option<u64> {
        Some(self.safe.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// Last `finalized` block number probed, when the node reports one.
    pub fn finalized(&self) -> Option<u64> {
        Some(self.finalized.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// Whether the last probe saw `finalized` below a value this node reported before: a
    /// finalized block never changes, so such a node is not trusted with tag reads until it
    /// is back at its old height.
    pub fn finalized_went_back(&self) -> bool {
        self.finalized_went_back.load(Ordering::Relaxed)
    }

    /// Stores probed `safe` / `finalized` numbers (`None`: the node did not say).
    fn observe_tags(&self, safe: Option<u64>, finalized: Option<u64>) {
        if let Some(safe) = safe {
            self.safe.store(safe, Ordering::Relaxed);
        }
        let Some(finalized) = finalized else {
            return;
        };
        self.finalized.store(finalized, Ordering::Relaxed);
        let high = self.finalized_high.fetch_max(finalized, Ordering::Relaxed);
        let went_back = finalized < high;
        if went_back == self.finalized_went_back.swap(went_back, Ordering::Relaxed) {
            return;
        }
        if went_back {
            tracing::warn!(
                upstream = self.name(),
                finalized,
                before = high,
                "finalized block went backwards: not used for tag reads"
            );
        } else {
            tracing::info!(
                upstream = self.name(),
                finalized,
                "finalized block back at its height: used for tag reads again"
            );
        }
    }

    /// Round trip of the last successful probe.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_micros.load(Ordering::Relaxed))
    }

    /// Name from the config.
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

#[cfg(test)]
mod tests;
