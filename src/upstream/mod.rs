//! Upstream Ethereum nodes: one [`Upstream`] per configured node and the [`Upstreams`] set
//! that holds their health model and publishes, through atomics, which ones are in rotation.

pub mod dial;
pub mod health;
pub mod http;
pub mod metrics;
pub mod probe;
mod reload;
mod rotation;
pub mod ws;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, HealthConfig, UpstreamConfig};
use crate::metrics::Metrics;
use health::{evaluate, ChainSummary, Facts, State};
pub use http::{HttpPool, SendError};

/// Outcomes of one attempt on an upstream, as counted in `ethgate_upstream_requests_total`.
pub const ATTEMPT_RESULTS: [&str; 10] = [
    "ok",
    "missing_data",
    "behind",
    "not_sent",
    "no_answer",
    "http_error",
    "timeout",
    "bad_answer",
    "too_large",
    "abandoned",
];

/// One upstream node as the request path sees it: immutable settings plus atomics.
#[derive(Debug)]
pub struct Upstream {
    /// Position in the configured list.
    pub index: usize,
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
    attempts: [AtomicU64; ATTEMPT_RESULTS.len()],
    latency: crate::metrics::Histogram,
    /// `None` while in rotation, else why not: calls in flight here wait on it to move away.
    rotation: watch::Sender<Option<Arc<str>>>,
    /// This upstream's own HTTP pool: its TLS settings and headers are its own.
    pool: HttpPool,
    /// Calls, batches and probes of a WebSocket-only upstream (no `http`).
    ws_calls: Option<ws::WsMux>,
}

impl Upstream {
    fn new(
        index: usize,
        config: UpstreamConfig,
        pool: HttpPool,
        connect_timeout: Duration,
    ) -> Self {
        let ws_calls = (config.http.is_none() && config.ws.is_some())
            .then(|| ws::WsMux::new(config.clone(), connect_timeout, pool.max_response_bytes()));
        Upstream {
            ws_calls,
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
            rotation: watch::Sender::new(Some("not probed yet".into())),
        }
    }

    /// The HTTP pool of this upstream (its TLS settings and headers).
    pub fn pool(&self) -> &HttpPool {
        &self.pool
    }

    /// Sends one JSON-RPC request or batch (ids already the router's) over this upstream's
    /// call transport: its HTTP endpoint, or its multiplexed WebSocket when it has only `ws`.
    pub async fn post(&self, body: Bytes) -> Result<Bytes, SendError> {
        match (&self.config.http, &self.ws_calls) {
            (Some(uri), _) => self.pool.post(uri, body).await,
            (None, Some(mux)) => mux.post(body).await,
            (None, None) => Err(SendError::NotSent("no endpoint".into())),
        }
    }

    /// Counts one attempt with an outcome from [`ATTEMPT_RESULTS`].
    pub fn count_attempt(&self, result: &str) {
        if let Some(i) = ATTEMPT_RESULTS.iter().position(|r| *r == result) {
            self.attempts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records how long one attempt took.
    pub fn observe_attempt(&self, elapsed: Duration) {
        self.latency.observe(elapsed);
    }

    /// Durations of attempts on this upstream.
    pub fn latency_histogram(&self) -> &crate::metrics::Histogram {
        &self.latency
    }

    /// Attempts so far, in the order of [`ATTEMPT_RESULTS`].
    pub fn attempts(&self) -> [u64; ATTEMPT_RESULTS.len()] {
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
        if let Some(finalized) = finalized {
            self.finalized.store(finalized, Ordering::Relaxed);
            let high = self.finalized_high.fetch_max(finalized, Ordering::Relaxed);
            let went_back = finalized < high;
            if went_back != self.finalized_went_back.swap(went_back, Ordering::Relaxed) {
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

/// Sentinel for "no upstream selected yet".
const NONE_SELECTED: usize = usize::MAX;

/// The set of upstreams, their shared health model and the sticky selection.
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
    /// Indexes sorted by (priority, configured position).
    by_priority: Vec<usize>,
    facts: Mutex<Vec<Facts>>,
    health: HealthConfig,
    expected_chain_id: OnceLock<u64>,
    selected: AtomicUsize,
    /// False until the start-up probe round is over, so the first upstream to answer is not
    /// selected over a preferred one that answers a moment later.
    started: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl Upstreams {
    /// Builds the set from a validated config; nothing is in rotation until probed.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let connect_timeout = (config.server.request_timeout / 2).min(Duration::from_secs(5));
        let max_response_bytes = config.server.max_response_bytes;
        let list: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(index, u)| {
                let pool = HttpPool::for_upstream(connect_timeout, max_response_bytes, u);
                Arc::new(Upstream::new(index, u.clone(), pool, connect_timeout))
            })
            .collect();
        let mut by_priority: Vec<usize> = (0..list.len()).collect();
        by_priority.sort_by_key(|&i| (list[i].config.priority, i));
        let expected_chain_id = OnceLock::new();
        if let Some(id) = config.chain_id {
            let _ = expected_chain_id.set(id);
        }
        let now = Instant::now();
        Upstreams {
            facts: Mutex::new(list.iter().map(|_| Facts::new(now)).collect()),
            list,
            by_priority,
            health: config.health.clone(),
            expected_chain_id,
            selected: AtomicUsize::new(NONE_SELECTED),
            started: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    /// Every upstream, in configured order.
    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.list
    }

    /// Upstream indexes in priority order.
    pub fn priority_order(&self) -> &[usize] {
        &self.by_priority
    }

    /// The chain id every upstream must report, once known.
    pub fn chain_id(&self) -> Option<u64> {
        self.expected_chain_id.get().copied()
    }

    /// The upstream that serves the next request: the sticky choice while it is in rotation.
    pub fn selected(&self) -> Option<usize> {
        let index = self.selected.load(Ordering::Acquire);
        (index != NONE_SELECTED && self.list[index].in_rotation()).then_some(index)
    }

    /// Makes `index` the sticky choice, logging and counting a failover when it replaces
    /// another upstream; `reason` says why the previous one was left.
    pub fn select(&self, index: usize, reason: impl FnOnce(usize) -> String) {
        let previous = self.selected.swap(index, Ordering::AcqRel);
        if previous == index {
            return;
        }
        let to = self.list[index].name();
        if previous == NONE_SELECTED {
            tracing::info!(upstream = to, "selected upstream");
            return;
        }
        self.metrics.failover("request");
        let from = self.list[previous].name();
        tracing::warn!(from, to, reason = reason(previous), "failover");
    }

    /// Moves the sticky choice when it left rotation (or none was made yet), so the switch
    /// happens, and is logged, when health changes rather than on the next request.
    fn reselect(&self) {
        if self.selected().is_some() || !self.started.load(Ordering::Acquire) {
            return;
        }
        let next = self
            .by_priority
            .iter()
            .copied()
            .find(|&i| self.list[i].in_rotation());
        if let Some(next) = next {
            self.select(next, |previous| {
                format!(
                    "{} is {}",
                    self.list[previous].name(),
                    self.list[previous].state()
                )
            });
        }
    }

    /// Whether at least one upstream is in rotation.
    pub fn any_in_rotation(&self) -> bool {
        self.list.iter().any(|u| u.in_rotation())
    }

    /// Records a probe's outcome and re-evaluates every upstream.
    pub fn record_probe(
        &self,
        index: usize,
        outcome: Result<probe::Report, String>,
        rtt: Duration,
    ) {
        let now = Instant::now();
        let mut facts = self.lock_facts();
        let me = &mut facts[index];
        let ok = outcome.is_ok();
        match outcome {
            Ok(report) => {
                self.list[index].observe_tags(report.safe, report.finalized);
                let expected = *self.expected_chain_id.get_or_init(|| report.chain_id);
                me.chain = Some((report.chain_id, report.chain_id == expected));
                me.syncing = report.syncing;
                me.observe_head(report.head, now);
                me.latency = Some(rtt);
                me.last_error = None;
            }
            Err(error) => {
                // An upstream starts unreachable, so failing from the start is no transition:
                // its first failure gets the one line instead (a wrong CA, a typo in the URL).
                if me.last_error.is_none() && me.chain.is_none() {
                    tracing::warn!(
                        upstream = self.list[index].name(),
                        reason = %error,
                        "upstream unreachable since start"
                    );
                }
                me.last_error = Some(error);
            }
        }
        me.reachable.record(ok, &self.health);
        self.publish(&facts, now);
    }

    /// Counts a failure seen on real traffic that is evidence about the node (connect refused,
    /// reset) as a failed probe; the router decides what is such evidence.
    pub fn record_passive_failure(&self, index: usize, error: &str) {
        let now = Instant::now();
        let mut facts = self.lock_facts();
        facts[index].last_error = Some(error.to_string());
        if facts[index].reachable.record(false, &self.health).is_some() {
            self.publish(&facts, now);
        }
    }

    /// The last probe error of upstream `index` while it is unreachable (for /status).
    pub fn unreachable_reason(&self, index: usize) -> Option<String> {
        if self.list.get(index)?.state() != State::Unreachable {
            return None;
        }
        self.lock_facts().get(index)?.last_error.clone()
    }

    fn lock_facts(&self) -> std::sync::MutexGuard<'_, Vec<Facts>> {
        // A panic while holding the lock cannot leave the facts half-written in a way that
        // matters: every field is overwritten by the next probe.
        self.facts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Evaluates every upstream, stores the results in the atomics, logs transitions.
    fn publish(&self, facts: &[Facts], now: Instant) {
        let summary = ChainSummary::of(facts.iter());
        let all: Vec<&Facts> = facts.iter().collect();
        for (upstream, fact) in self.list.iter().zip(facts) {
            let state = evaluate(fact, &all, summary, &self.health, now);
            let head = fact.head.unwrap_or(0);
            upstream.head.store(head, Ordering::Relaxed);
            if let Some(latency) = fact.latency {
                upstream
                    .latency_micros
                    .store(latency.as_micros() as u64, Ordering::Relaxed);
            }
            let previous = upstream.set_state(state, || match &fact.last_error {
                Some(error) if state == State::Unreachable => format!("{state}: {error}"),
                _ => state.to_string(),
            });
            if previous != state {
                log_transition(upstream, previous, state, fact, summary.best_head);
            }
        }
        self.reselect();
    }

    /// Starts one prober task per upstream on `tracker`, stopped by `shutdown`.
    pub fn spawn_probers(self: &Arc<Self>, tracker: &TaskTracker, shutdown: &CancellationToken) {
        for upstream in &self.list {
            tracker.spawn(probe::run(self.clone(), upstream.index, shutdown.clone()));
        }
    }

    /// Probes every upstream once, concurrently, so start-up routes without waiting a period.
    pub async fn probe_all_once(self: &Arc<Self>) {
        let rounds = self
            .list
            .iter()
            .map(|u| probe::probe_and_record(self, u.index, true));
        futures_util::future::join_all(rounds).await;
        self.started.store(true, Ordering::Release);
        self.reselect();
    }

    /// Lag behind the best head, for /status.
    pub fn lag(&self, upstream: &Upstream) -> u64 {
        let best = self
            .list
            .iter()
            .filter(|u| u.state() != State::WrongChain && u.state() != State::Unreachable)
            .map(|u| u.head())
            .max()
            .unwrap_or(0);
        best.saturating_sub(upstream.head())
    }

    /// Where request outcomes are counted.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Health settings in force.
    pub fn health_config(&self) -> &HealthConfig {
        &self.health
    }
}

fn log_transition(upstream: &Upstream, from: State, to: State, fact: &Facts, best_head: u64) {
    let head = fact.head.unwrap_or(0);
    let reason = fact.last_error.as_deref().unwrap_or("");
    if to == State::Healthy {
        tracing::info!(upstream = upstream.name(), %from, %to, head, "upstream in rotation");
    } else {
        // 0 until the upstream has answered eth_chainId.
        let chain_id = fact.chain.map_or(0, |(id, _)| id);
        tracing::warn!(
            upstream = upstream.name(), %from, %to, head, best_head, chain_id, reason,
            "upstream out of rotation"
        );
    }
}

#[cfg(test)]
mod tests;
