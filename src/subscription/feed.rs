//! The feed: follows one upstream's newHeads over WebSocket, turns every head into canonical
//! changes, fetches the logs of each new block for every active filter, and fans the result
//! out. On any loss it fails over to the next upstream, and the chain view fills the gap.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::chain::{ChainView, Change, FetchHeader, Header, Plan};
use super::logs::{DeliveredLogs, FilterLogs};
use super::source::{Source, SourceError};
use super::{Hub, Kind};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::upstream::Upstream;

/// Blocks another upstream must be ahead of the delivered head before the source is left.
const FALLEN_BEHIND_BLOCKS: u64 = 2;

/// Pending transaction hashes remembered for dedupe.
const PENDING_TX_MEMORY: usize = 10_000;

/// Timing of the feed.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// How long subscribers may go unserved before they are closed with 1011.
    pub grace: Duration,
    /// Budget of one request to the source (header or logs fetch).
    pub request_timeout: Duration,
    /// Budget of a WebSocket connect.
    pub connect_timeout: Duration,
    /// Silence after which the source is pinged.
    pub ping_after: Duration,
    /// Silence after which the source is given up.
    pub dead_after: Duration,
    /// How often rotation and pending-subscription needs are re-checked.
    pub check_every: Duration,
}

/// The feed's state across sources.
pub struct Feed {
    hub: Arc<Hub>,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    settings: FeedSettings,
    view: ChainView,
    delivered_logs: DeliveredLogs,
    seen_pending: (HashSet<String>, VecDeque<String>),
    /// Name of the upstream feeding now (names survive reloads; indexes do not).
    current: Option<String>,
    /// Upstreams that failed since the last source was established: skipped by `pick`.
    failed: Vec<String>,
    unserved_since: Option<Instant>,
    last_syncing: Option<bool>,
}

impl Feed {
    /// A feed over the router's upstreams delivering into `hub`.
    pub fn new(
        hub: Arc<Hub>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        settings: FeedSettings,
    ) -> Self {
        Feed {
            hub,
            router,
            metrics,
            settings,
            view: ChainView::default(),
            delivered_logs: DeliveredLogs::default(),
            seen_pending: (HashSet::new(), VecDeque::new()),
            current: None,
            failed: Vec::new(),
            unserved_since: None,
            last_syncing: None,
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let Some(upstream) = self.pick() else {
                self.failed.clear();
                self.wait_unserved(&shutdown).await;
                continue;
            };
            match self.serve_from(&upstream, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(upstream = upstream.name(), %error, "subscription source lost");
                    self.unserved_since.get_or_insert_with(Instant::now);
                    self.failed.push(upstream.name().to_string());
                }
            }
        }
    }

    /// The next source: in rotation, has a WebSocket endpoint, not just failed; the current
    /// one first, then those at or above the last delivered head, then by priority.
    fn pick(&self) -> Option<Arc<Upstream>> {
        let failed = &self.failed;
        let upstreams = self.router.upstreams();
        let all = upstreams.all();
        let last = self.view.last().map_or(0, |h| h.number);
        let usable = |u: &&Arc<Upstream>| {
            u.in_rotation() && u.config.ws.is_some() && !failed.iter().any(|f| f == u.name())
        };
        let by_priority = || upstreams.priority_order().iter().map(|&i| &all[i]);
        let current = self.current.as_deref();
        by_priority()
            .filter(usable)
            .find(|u| Some(u.name()) == current)
            .or_else(|| by_priority().filter(usable).find(|u| u.head() >= last))
            .or_else(|| by_priority().find(usable))
            .cloned()
    }

    /// Whether the upstream named `name` is still configured and in rotation (after a reload
    /// the set holds new objects, so it is looked up by name).
    fn still_serving(&self, name: &str) -> Result<(), SourceError> {
        let upstreams = self.router.upstreams();
        let delivered = self.view.last().map_or(0, |h| h.number);
        let ahead = upstreams
            .all()
            .iter()
            .filter(|u| u.name() != name && u.in_rotation() && u.config.ws.is_some())
            .find(|u| u.head() >= delivered + FALLEN_BEHIND_BLOCKS);
        match upstreams.all().iter().find(|u| u.name() == name) {
            // A source that stopped sending heads while still "healthy" would hold clients
            // back until its lag crossed max_lag_blocks; another upstream being clearly ahead
            // is reason enough to move.
            Some(_) if delivered > 0 && ahead.is_some() => Err(SourceError::Lost(format!(
                "{name} fell behind: {} is at {} while {delivered} was delivered",
                ahead.map_or("", |u| u.name()),
                ahead.map_or(0, |u| u.head())
            ))),
            Some(u) if u.in_rotation() => Ok(()),
            Some(u) => Err(SourceError::Lost(format!("{name} is {}", u.state()))),
            None => Err(SourceError::Lost(format!(
                "{name} was removed from the config"
            ))),
        }
    }

    /// Waits a little while nothing can serve, closing subscribers once the grace is over.
    async fn wait_unserved(&mut self, shutdown: &CancellationToken) {
        let since = *self.unserved_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.settings.grace && !self.hub.is_empty() {
            tracing::warn!(grace = ?self.settings.grace, "no upstream can serve subscriptions: closing subscribed clients");
            self.hub
                .close_subscribed_sessions(1011, "no upstream can serve subscriptions");
            self.unserved_since = Some(Instant::now());
        }
        if self.hub.is_empty() {
            self.unserved_since = None;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(self.settings.check_every) => {}
        }
    }

    async fn serve_from(
        &mut self,
        upstream: &Upstream,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let url = upstream
            .config
            .ws
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let s = &self.settings;
        let mut source =
            Source::connect(&url, s.connect_timeout, s.ping_after, s.dead_after).await?;
        let heads = source
            .subscribe(r#"["newHeads"]"#, s.request_timeout)
            .await?;
        let mut pending_txs: Option<String> = None;
        // A source is established: earlier failures no longer rule other upstreams out.
        self.failed.clear();
        let previous = self.current.replace(upstream.name().to_string());
        let failover = previous.as_deref().is_some_and(|p| p != upstream.name());
        let unserved = self.unserved_since.take().map(|since| since.elapsed());
        if failover && !self.hub.is_empty() {
            self.metrics.failover("subscription");
            self.metrics
                .subscription_failover(unserved.unwrap_or_default());
        }
        if failover {
            tracing::warn!(
                from = previous.as_deref().unwrap_or(""),
                to = upstream.name(),
                duration_ms = unserved.unwrap_or_default().as_millis() as u64,
                subscriptions = !self.hub.is_empty(),
                "subscription failover"
            );
        } else if let Some(unserved) = unserved {
            tracing::info!(
                upstream = upstream.name(),
                duration_ms = unserved.as_millis() as u64,
                "subscription source back"
            );
        }
        // Right after a failover, a source behind the delivered head must pass it first.
        let mut behind_ok = !failover;
        let mut check = tokio::time::interval(self.settings.check_every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    source.close().await;
                    return Ok(());
                }
                notification = source.next_notification() => {
                    let notification = notification?;
                    if notification.subscription == heads {
                        if self.on_head(&mut source, &notification.result, behind_ok).await? {
                            behind_ok = true;
                        }
                    } else if pending_txs.as_deref() == Some(notification.subscription.as_str()) {
                        self.on_pending_tx(&notification.result);
                    }
                }
                _ = check.tick() => {
                    if let Err(lost) = self.still_serving(upstream.name()) {
                        source.close().await;
                        return Err(lost);
                    }
                    self.track_pending_subscription(&mut source, &mut pending_txs).await?;
                    self.update_syncing();
                }
            }
        }
    }

    /// Holds an upstream newPendingTransactions subscription exactly while clients want one.
    async fn track_pending_subscription(
        &self,
        source: &mut Source,
        upstream_id: &mut Option<String>,
    ) -> Result<(), SourceError> {
        let wanted = self.hub.count(Kind::NewPendingTransactions) > 0;
        let timeout = self.settings.request_timeout;
        match (wanted, upstream_id.take()) {
            (true, None) => {
                *upstream_id = Some(
                    source
                        .subscribe(r#"["newPendingTransactions"]"#, timeout)
                        .await?,
                )
            }
            (false, Some(id)) => {
                source
                    .request("eth_unsubscribe", &format!(r#"["{id}"]"#), timeout)
                    .await?;
            }
            (_, kept) => *upstream_id = kept,
        }
        Ok(())
    }

    /// Integrates one head; true when something new was delivered.
    async fn on_head(
        &mut self,
        source: &mut Source,
        raw: &RawValue,
        behind_ok: bool,
    ) -> Result<bool, SourceError> {
        let head = match Header::parse(raw) {
            Ok(head) => head,
            Err(error) => {
                tracing::debug!(%error, "unusable newHeads notification ignored");
                return Ok(false);
            }
        };
        let timeout = self.settings.request_timeout;
        tracing::debug!(number = head.number, hash = %head.hash, behind_ok, "head from source");
        let plan = self
            .view
            .plan(head, behind_ok, &mut HeaderFetch { source, timeout })
            .await?;
        if plan.dropped {
            self.metrics.duplicate_dropped();
            return Ok(false);
        }
        self.deliver(source, plan).await?;
        Ok(true)
    }

    async fn deliver(&mut self, source: &mut Source, plan: Plan) -> Result<(), SourceError> {
        let reorg = plan.changes.iter().any(|c| matches!(c, Change::Removed(_)));
        let added = plan
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Added(_)))
            .count();
        if !reorg && !plan.restarted && added > 1 {
            self.metrics.gap_filled(added as u64 - 1);
        }
        if plan.restarted {
            tracing::warn!("new head does not link to the delivered chain: restarting from it");
        }
        tracing::debug!(
            changes = plan.changes.len(),
            restarted = plan.restarted,
            "delivering"
        );
        for change in &plan.changes {
            match change {
                Change::Removed(header) => {
                    for (key, logs) in self.delivered_logs.retract(&header.hash) {
                        for log in logs {
                            self.hub.deliver(Kind::Logs, Some(&key), &log);
                        }
                    }
                }
                Change::Added(header) => {
                    let logs = self.fetch_logs(source, &header.hash).await?;
                    self.hub.deliver(Kind::NewHeads, None, &header.json);
                    for (key, block_logs) in logs {
                        for log in &block_logs {
                            self.hub.deliver(Kind::Logs, Some(&key), log);
                        }
                        self.delivered_logs.record(&header.hash, key, block_logs);
                    }
                }
            }
            self.view.apply(change, plan.restarted);
        }
        Ok(())
    }

    /// The logs of one block for every active filter, fetched before anything of the block
    /// is delivered so a failed fetch leaves the block for the next source.
    async fn fetch_logs(
        &self,
        source: &mut Source,
        block_hash: &str,
    ) -> Result<Vec<FilterLogs>, SourceError> {
        let mut all = Vec::new();
        for (key, filter) in self.hub.active_filters() {
            let result = source
                .request(
                    "eth_getLogs",
                    &filter.params_for_block(block_hash),
                    self.settings.request_timeout,
                )
                .await?;
            let logs: Vec<&RawValue> =
                serde_json::from_str(result.get()).map_err(|e| SourceError::Rpc {
                    method: "eth_getLogs".into(),
                    error: format!("not a list of logs: {e}"),
                })?;
            all.push((key, logs.into_iter().map(|l| Arc::from(l.get())).collect()));
        }
        Ok(all)
    }

    fn on_pending_tx(&mut self, raw: &RawValue) {
        let hash = raw.get().to_ascii_lowercase();
        let (seen, order) = &mut self.seen_pending;
        if !seen.insert(hash.clone()) {
            self.metrics.duplicate_dropped();
            return;
        }
        order.push_back(hash);
        if order.len() > PENDING_TX_MEMORY {
            if let Some(old) = order.pop_front() {
                seen.remove(&old);
            }
        }
        self.hub
            .deliver(Kind::NewPendingTransactions, None, raw.get());
    }

    /// Syncing is derived: true only while no upstream is in rotation and one reports syncing.
    fn update_syncing(&mut self) {
        let upstreams = self.router.upstreams();
        let all = upstreams.all();
        let syncing = !upstreams.any_in_rotation()
            && all
                .iter()
                .any(|u| u.state() == crate::upstream::health::State::Syncing);
        if self.last_syncing == Some(syncing) {
            return;
        }
        let announce = self.last_syncing.is_some();
        self.last_syncing = Some(syncing);
        if announce {
            let best = all.iter().map(|u| u.head()).max().unwrap_or(0);
            let result = if syncing {
                format!(
                    r#"{{"syncing":true,"status":{{"currentBlock":"0x{best:x}","highestBlock":"0x{best:x}"}}}}"#
                )
            } else {
                "false".to_string()
            };
            self.hub.deliver(Kind::Syncing, None, &result);
        }
    }
}

/// Fetches ancestors from the current source.
struct HeaderFetch<'a> {
    source: &'a mut Source,
    timeout: Duration,
}

impl FetchHeader for HeaderFetch<'_> {
    type Error = SourceError;

    async fn by_hash(&mut self, hash: &str) -> Result<Header, SourceError> {
        let params = format!(r#"["{hash}",false]"#);
        let block = self
            .source
            .request("eth_getBlockByHash", &params, self.timeout)
            .await?;
        if block.get() == "null" {
            return Err(SourceError::Rpc {
                method: "eth_getBlockByHash".into(),
                error: format!("{hash} unknown"),
            });
        }
        Header::parse(&block).map_err(|error| SourceError::Rpc {
            method: "eth_getBlockByHash".into(),
            error,
        })
    }
}
