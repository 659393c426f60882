//! [`Upstreams`]: the set of upstreams, their shared health model, and the sticky selection
//! that [`Upstreams::candidates`] hands out in order (pingora's `select_with`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::health::{Facts, State};
use super::observe::{Failover, HealthObserve};
use super::{probe, HttpPool, Upstream};
use crate::config::{Config, HealthConfig};

/// Sentinel for "no upstream selected yet".
const NONE_SELECTED: usize = usize::MAX;

/// The set of upstreams, their shared health model and the sticky selection.
pub struct Upstreams {
    pub(super) list: Vec<Arc<Upstream>>,
    /// Indexes sorted by (priority, configured position).
    by_priority: Vec<usize>,
    pub(super) facts: Mutex<Vec<Facts>>,
    pub(super) health: HealthConfig,
    pub(super) expected_chain_id: OnceLock<u64>,
    pub(super) selected: AtomicUsize,
    /// False until the start-up probe round is over, so the first upstream to answer is not
    /// selected over a preferred one that answers a moment later.
    pub(super) started: AtomicBool,
    /// Told of failovers and state transitions (the metrics count them).
    pub(super) observer: Arc<dyn HealthObserve>,
}

impl Upstreams {
    /// Builds the set from a validated config; nothing is in rotation until probed. Failovers
    /// and transitions are reported to `observer`.
    pub fn new(config: &Config, observer: Arc<dyn HealthObserve>) -> Self {
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
            started: AtomicBool::new(false),
            observer,
        }
    }

    /// Every upstream, in configured order.
    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.list
    }

    /// Every upstream by (priority, configured position).
    pub fn by_priority(&self) -> impl Iterator<Item = &Arc<Upstream>> + Clone + '_ {
        self.by_priority.iter().map(|&i| &self.list[i])
    }

    /// The upstreams `accept` takes, in the order requests try them: the sticky choice first
    /// (while it is in rotation), then the others by priority. Failover is taking the next.
    pub fn candidates<'a, F>(&'a self, accept: F) -> impl Iterator<Item = &'a Arc<Upstream>> + 'a
    where
        F: Fn(&Upstream) -> bool + 'a,
    {
        let selected = self.selected();
        let others = self
            .by_priority()
            .filter(move |u| selected.is_none_or(|s| !Arc::ptr_eq(s, u)));
        selected
            .into_iter()
            .chain(others)
            .filter(move |u| accept(u))
    }

    /// The chain id every upstream must report, once known.
    pub fn chain_id(&self) -> Option<u64> {
        self.expected_chain_id.get().copied()
    }

    /// The upstream that serves the next request: the sticky choice while it is in rotation.
    pub fn selected(&self) -> Option<&Arc<Upstream>> {
        let index = self.selected.load(Ordering::Acquire);
        self.list.get(index).filter(|u| u.in_rotation())
    }

    /// This set's slot of `upstream`, when it is one of this set's (an upstream of a set a
    /// reload replaced is not).
    pub(super) fn slot(&self, upstream: &Upstream) -> Option<usize> {
        let slot = self.list.get(upstream.index)?;
        std::ptr::eq(&**slot, upstream).then_some(upstream.index)
    }

    /// Makes `to` the sticky choice, logging and reporting a failover when it replaces
    /// another upstream; the previous one left because it is no longer healthy.
    fn select(&self, to: &Upstream) {
        let previous = self.selected.swap(to.index, Ordering::AcqRel);
        if previous == to.index {
            return;
        }
        let Some(from) = self.list.get(previous) else {
            tracing::info!(upstream = to.name(), "selected upstream");
            return;
        };
        let reason = format!("{} is {}", from.name(), from.state());
        self.observer.failover(&Failover {
            from,
            to,
            reason: &reason,
        });
        tracing::warn!(from = from.name(), to = to.name(), reason, "failover");
    }

    /// Moves the sticky choice when it left rotation (or none was made yet), so the switch
    /// happens, and is logged, when health changes rather than on the next request.
    pub(super) fn reselect(&self) {
        if self.selected().is_some() || !self.started.load(Ordering::Acquire) {
            return;
        }
        if let Some(next) = self.candidates(Upstream::in_rotation).next() {
            self.select(next);
        }
    }

    /// Whether at least one upstream is in rotation.
    pub fn any_in_rotation(&self) -> bool {
        self.list.iter().any(|u| u.in_rotation())
    }

    /// Starts one prober task per upstream on `tracker`, stopped by `shutdown`.
    pub fn spawn_probers(self: &Arc<Self>, tracker: &TaskTracker, shutdown: &CancellationToken) {
        for upstream in &self.list {
            tracker.spawn(probe::run(self.clone(), upstream.clone(), shutdown.clone()));
        }
    }

    /// Probes every upstream once, concurrently, so start-up routes without waiting a period.
    pub async fn probe_all_once(self: &Arc<Self>) {
        let rounds = self
            .list
            .iter()
            .map(|u| probe::probe_and_record(self, u, probe::Batch::WithTags));
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

    /// Health settings in force.
    pub fn health_config(&self) -> &HealthConfig {
        &self.health
    }
}
