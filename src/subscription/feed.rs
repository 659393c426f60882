//! The feed: follows one upstream's newHeads at a time, turns every head into canonical
//! changes, fetches the logs of each new block once for every live filter, and fans the result
//! out. On any loss it moves to another upstream, and the chain view fills the gap.
//!
//! Progress is the rule: a filter's trouble never holds back heads (its subscribers alone are
//! closed), a source that keeps failing is retried with a bounded backoff and logged at a
//! bounded rate, and `subscription_grace` runs from the first moment nobody served.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::chain::{ChainView, Change, FetchHeader, Header, Plan};
use super::filter::{merged_query, LogFilter};
use super::logs::{self, DeliveredLogs, FilterLogs};
use super::pacing::{Backoff, RateLimit};
use super::pool::{Connection, SourcePool};
use super::select;
use super::source::SourceError;
use super::{Hub, Kind};
use crate::metrics::{FailoverKind, Metrics};
use crate::policy;

/// Pending transaction hashes remembered for dedupe.
const PENDING_TX_MEMORY: usize = 10_000;
/// First delay before all upstreams are tried again after each of them failed.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// During a gap fill, a client whose queue is fuller than this gets a moment to read.
const ROOM_FILL: f64 = 0.5;
/// How long a gap fill waits for clients to read before it closes the ones that did not.
const ROOM_WAIT: Duration = Duration::from_secs(1);
/// At most one "source lost" or "logs unavailable" warning per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Timing of the feed.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// How long subscribers may go unserved before they are closed with 1011.
    pub grace: Duration,
    /// Budget of one request to the source (subscribe, ancestor fetch).
    pub request_timeout: Duration,
    /// Budget of one block's logs fetch; beyond it the logs are asked elsewhere.
    pub logs_timeout: Duration,
    /// How often rotation and pending-subscription needs are re-checked.
    pub check_every: Duration,
    /// Longest wait between rounds when every upstream failed.
    pub max_backoff: Duration,
}

/// What the feed shows operators: its source and the age of the last delivered head.
#[derive(Debug, Default)]
pub struct FeedStatus(Mutex<StatusInner>);

#[derive(Debug, Default, Clone)]
struct StatusInner {
    source: Option<Arc<str>>,
    head: Option<u64>,
    head_at: Option<std::time::Instant>,
}

/// A copy of [`FeedStatus`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedSnapshot {
    /// The upstream feeding now, if any.
    pub source: Option<Arc<str>>,
    /// The last delivered head.
    pub head: Option<u64>,
    /// Time since that head was delivered.
    pub head_age: Option<Duration>,
}

impl FeedStatus {
    /// The status now.
    pub fn snapshot(&self) -> FeedSnapshot {
        let inner = self.lock().clone();
        FeedSnapshot {
            source: inner.source,
            head: inner.head,
            head_age: inner.head_at.map(|at| at.elapsed()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        // Fields are overwritten whole: still valid after a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How one head from the source was taken.
enum HeadOutcome {
    /// Something new reached clients.
    Delivered,
    /// Already delivered, or behind the delivered head: the source is alive all the same.
    Dropped,
    /// Not a header at all.
    Unusable,
}

/// The feed's state across sources.
pub struct Feed<P: SourcePool> {
    hub: Arc<Hub>,
    pool: P,
    metrics: Arc<Metrics>,
    settings: FeedSettings,
    status: Arc<FeedStatus>,
    view: ChainView,
    delivered_logs: DeliveredLogs,
    live_filters: HashSet<Arc<str>>,
    seen_pending: (HashSet<String>, VecDeque<String>),
    /// Name of the upstream feeding now, or that fed last.
    current: Option<Arc<str>>,
    /// Upstreams that failed since the last progress: skipped by `pick`.
    failed: Vec<Arc<str>>,
    unserved_since: Option<Instant>,
    last_syncing: Option<bool>,
    backoff: Backoff,
    /// "Source lost" warnings.
    warnings: RateLimit,
    /// "Logs unavailable" warnings (its own budget: a burst of lost sources must not hide it).
    logs_warnings: RateLimit,
}

impl<P: SourcePool> Feed<P> {
    /// A feed over `pool` delivering into `hub`, reporting to `status`.
    pub fn new(
        hub: Arc<Hub>,
        pool: P,
        metrics: Arc<Metrics>,
        settings: FeedSettings,
        status: Arc<FeedStatus>,
    ) -> Self {
        let backoff = Backoff::new(FIRST_BACKOFF, settings.max_backoff);
        Feed {
            hub,
            pool,
            metrics,
            settings,
            status,
            view: ChainView::default(),
            delivered_logs: DeliveredLogs::default(),
            live_filters: HashSet::new(),
            seen_pending: (HashSet::new(), VecDeque::new()),
            current: None,
            failed: Vec::new(),
            unserved_since: None,
            last_syncing: None,
            backoff,
            warnings: RateLimit::new(WARN_EVERY),
            logs_warnings: RateLimit::new(WARN_EVERY),
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let candidates = self.pool.candidates();
            let current = self.current.as_deref();
            let next = select::pick(&candidates, current, &self.failed, self.delivered());
            let Some(name) = next.map(|c| c.name.clone()) else {
                let wait = if select::all_failed(&candidates, &self.failed) {
                    self.failed.clear();
                    self.backoff.step()
                } else {
                    self.settings.check_every
                };
                self.idle(wait, &shutdown).await;
                continue;
            };
            match self.serve_from(&name, &shutdown).await {
                Ok(()) => return,
                Err(error) => self.source_failed(name, &error),
            }
        }
    }

    fn delivered(&self) -> u64 {
        self.view.last().map_or(0, |h| h.number)
    }

    fn source_failed(&mut self, name: Arc<str>, error: &SourceError) {
        match self.warnings.allow() {
            Some(suppressed) => tracing::warn!(
                upstream = &*name,
                %error,
                suppressed,
                "subscription source lost"
            ),
            None => tracing::debug!(upstream = &*name, %error, "subscription source lost"),
        }
        self.unserved_since.get_or_insert_with(Instant::now);
        self.failed.push(name);
        self.status.lock().source = None;
    }

    /// Waits `wait` while nothing serves, closing subscribers once the grace is over.
    async fn idle(&mut self, wait: Duration, shutdown: &CancellationToken) {
        if self.hub.is_empty() {
            self.unserved_since = None;
        } else {
            let since = *self.unserved_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.settings.grace {
                tracing::warn!(grace = ?self.settings.grace, "no upstream can serve subscriptions: closing subscribed clients");
                self.hub
                    .close_subscribed_sessions(1011, "no upstream can serve subscriptions");
                self.unserved_since = Some(Instant::now());
            }
        }
        self.update_syncing();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    async fn serve_from(
        &mut self,
        name: &Arc<str>,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        let mut source = self.pool.connect(name).await?;
        let timeout = self.settings.request_timeout;
        let heads = subscribe(&mut source, r#"["newHeads"]"#, timeout).await?;
        let previous = self.current.replace(name.clone());
        let failover = previous.as_ref().is_some_and(|p| p != name);
        self.status.lock().source = Some(name.clone());
        let mut established = false;
        let mut pending_txs: Option<String> = None;
        // Right after a failover, a source behind the delivered head must pass it first.
        let mut behind_ok = !failover;
        let every = self.settings.check_every;
        let mut check = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    source.close().await;
                    return Ok(());
                }
                notification = source.next_notification() => {
                    let notification = notification?;
                    if notification.subscription == heads {
                        let outcome = self.on_head(&mut source, &notification.result, behind_ok).await?;
                        if !matches!(outcome, HeadOutcome::Unusable) {
                            behind_ok |= matches!(outcome, HeadOutcome::Delivered);
                            self.failed.clear();
                            self.backoff.reset();
                            self.establish(&mut established, name, previous.as_deref(), failover);
                        }
                    } else if pending_txs.as_deref() == Some(notification.subscription.as_str()) {
                        self.on_pending_tx(&notification.result);
                    }
                }
                _ = check.tick() => {
                    let candidates = self.pool.candidates();
                    if let Some(reason) = select::leave_reason(&candidates, name, self.delivered()) {
                        source.close().await;
                        return Err(SourceError::Lost(reason));
                    }
                    self.establish(&mut established, name, previous.as_deref(), failover);
                    self.track_pending_subscription(&mut source, &mut pending_txs).await?;
                    self.update_syncing();
                }
            }
        }
    }

    /// The source counts as serving once it passed a rotation check or gave a head: only
    /// then does the unserved time end (a source that connects and fails at once does not
    /// reset `subscription_grace`).
    fn establish(&mut self, done: &mut bool, name: &str, previous: Option<&str>, failover: bool) {
        if std::mem::replace(done, true) {
            return;
        }
        let unserved = self.unserved_since.take().map(|since| since.elapsed());
        let subscribed = !self.hub.is_empty();
        if failover && subscribed {
            self.metrics.failover(FailoverKind::Subscription);
            self.metrics
                .subscription_failover(unserved.unwrap_or_default());
        }
        let duration_ms = unserved.unwrap_or_default().as_millis() as u64;
        if failover {
            let from = previous.unwrap_or("");
            tracing::warn!(
                from,
                to = name,
                duration_ms,
                subscriptions = subscribed,
                "subscription failover"
            );
        } else if unserved.is_some() {
            tracing::info!(upstream = name, duration_ms, "subscription source back");
        }
    }

    /// Holds an upstream newPendingTransactions subscription exactly while clients want one.
    async fn track_pending_subscription(
        &self,
        source: &mut P::Connection,
        upstream_id: &mut Option<String>,
    ) -> Result<(), SourceError> {
        let wanted = self.hub.count(Kind::NewPendingTransactions) > 0;
        let timeout = self.settings.request_timeout;
        match (wanted, upstream_id.take()) {
            (true, None) => {
                // A source that cannot give pending transactions (a polled one) still
                // serves heads and logs: that is no reason to leave it.
                match subscribe(source, r#"["newPendingTransactions"]"#, timeout).await {
                    Ok(id) => *upstream_id = Some(id),
                    Err(SourceError::Rpc { error, .. }) => {
                        tracing::debug!(%error, "pending transactions unavailable from this source")
                    }
                    Err(lost) => return Err(lost),
                }
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

    /// Integrates one head.
    async fn on_head(
        &mut self,
        source: &mut P::Connection,
        raw: &RawValue,
        behind_ok: bool,
    ) -> Result<HeadOutcome, SourceError> {
        let head = match Header::parse(raw) {
            Ok(head) => head,
            Err(error) => {
                tracing::debug!(%error, "unusable newHeads notification ignored");
                return Ok(HeadOutcome::Unusable);
            }
        };
        let timeout = self.settings.request_timeout;
        tracing::debug!(number = head.number, hash = %head.hash, behind_ok, "head from source");
        let mut fetch = HeaderFetch { source, timeout };
        let plan = self.view.plan(head, behind_ok, &mut fetch).await?;
        if plan.dropped {
            self.metrics.duplicate_dropped();
            return Ok(HeadOutcome::Dropped);
        }
        self.deliver(source, plan).await?;
        Ok(HeadOutcome::Delivered)
    }

    async fn deliver(&mut self, source: &mut P::Connection, plan: Plan) -> Result<(), SourceError> {
        let added = plan
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Added(_)))
            .count();
        let reorg = added < plan.changes.len();
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
        let filters = self.live_filters();
        for change in &plan.changes {
            match change {
                Change::Removed(header) => {
                    let removed = self.delivered_logs.retract(&header.hash);
                    self.hub.deliver_block(None, &removed);
                }
                Change::Added(header) => {
                    let logs = self.block_logs(source, header, &filters).await?;
                    self.hub.deliver_block(Some(&header.json), &logs);
                    self.delivered_logs.record(&header.hash, &logs);
                    self.pool.delivered(header.number);
                    let mut status = self.status.lock();
                    status.head = Some(header.number);
                    status.head_at = Some(std::time::Instant::now());
                }
            }
            self.view.apply(change, plan.restarted);
            if plan.changes.len() > 1 {
                self.make_room().await;
            }
        }
        Ok(())
    }

    /// The live filters; what was delivered under filters nobody holds any more is forgotten.
    fn live_filters(&mut self) -> Vec<(Arc<str>, Arc<LogFilter>)> {
        let filters = self.hub.active_filters();
        let keys: HashSet<Arc<str>> = filters.iter().map(|(k, _)| k.clone()).collect();
        if keys != self.live_filters {
            self.delivered_logs.retain_filters(&keys);
            self.live_filters = keys;
        }
        filters
    }

    /// The logs of one block for every filter, from one `eth_getLogs`: the source first, any
    /// other upstream if the source cannot answer it. When nobody can, the block is delivered
    /// without logs and only the logs subscribers are closed (1011), so they backfill.
    async fn block_logs(
        &mut self,
        source: &mut P::Connection,
        header: &Header,
        filters: &[(Arc<str>, Arc<LogFilter>)],
    ) -> Result<Vec<FilterLogs>, SourceError> {
        if filters.is_empty() {
            return Ok(Vec::new());
        }
        let params = merged_query(filters.iter().map(|(_, f)| f), &header.hash);
        let limit = self.settings.logs_timeout;
        let from_source = match source.request("eth_getLogs", &params, limit).await {
            Err(lost @ (SourceError::Lost(_) | SourceError::Silent(_))) => return Err(lost),
            Err(error) => Err(error.to_string()),
            Ok(result) => logs::match_block(&result, filters),
        };
        let first_error = match from_source {
            Ok(matched) => return Ok(matched),
            Err(error) => error,
        };
        // The source no longer knowing a block it just announced means the block was reorged
        // out under us: if nobody else has it either, the head is stale, not the filters.
        let source_lacks_block = policy::is_missing_data(&first_error);
        let skip = self.current.as_deref().unwrap_or("");
        let elsewhere = match self.pool.logs_elsewhere(skip, &params, limit).await {
            Ok(result) => logs::match_block(&result, filters),
            Err(error) => Err(error),
        };
        match elsewhere {
            Ok(matched) => Ok(matched),
            Err(_) if source_lacks_block => Err(SourceError::Rpc {
                method: "eth_getLogs".into(),
                error: format!(
                    "block {} is known to no upstream any more: reorged out",
                    header.hash
                ),
            }),
            Err(error) => {
                let keys: Vec<Arc<str>> = filters.iter().map(|(k, _)| k.clone()).collect();
                if let Some(suppressed) = self.logs_warnings.allow() {
                    let named: Vec<&str> = keys.iter().take(3).map(|k| &**k).collect();
                    tracing::warn!(block = header.number, filters = ?named, count = keys.len(), source = %first_error, elsewhere = %error, suppressed, "logs of a block unavailable: closing its logs subscribers");
                }
                self.hub
                    .close_filter_subscribers(&keys, 1011, "logs unavailable");
                Ok(Vec::new())
            }
        }
    }

    /// During a gap fill, gives clients whose queue filled up a moment to read, then closes
    /// those that did not (they are not reading; the others must not wait for them).
    async fn make_room(&self) {
        if self.hub.fullest_queue() <= ROOM_FILL {
            return;
        }
        let deadline = Instant::now() + ROOM_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if self.hub.fullest_queue() <= ROOM_FILL {
                return;
            }
        }
        let closed = self.hub.close_slow_sessions(ROOM_FILL);
        tracing::warn!(closed, "closed clients that did not read during a gap fill");
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
        self.hub.deliver(Kind::NewPendingTransactions, raw.get());
    }

    /// Syncing is derived: true only while no upstream is in rotation and one reports syncing.
    fn update_syncing(&mut self) {
        let best = self.pool.syncing();
        let syncing = best.is_some();
        if self.last_syncing == Some(syncing) {
            return;
        }
        let announce = self.last_syncing.is_some();
        self.last_syncing = Some(syncing);
        if announce {
            let result = match best {
                Some(best) => format!(
                    r#"{{"syncing":true,"status":{{"currentBlock":"0x{best:x}","highestBlock":"0x{best:x}"}}}}"#
                ),
                None => "false".to_string(),
            };
            self.hub.deliver(Kind::Syncing, &result);
        }
    }
}

/// Subscribes upstream; returns the upstream's subscription id.
async fn subscribe<C: Connection>(
    source: &mut C,
    params: &str,
    limit: Duration,
) -> Result<String, SourceError> {
    let id = source.request("eth_subscribe", params, limit).await?;
    serde_json::from_str(id.get()).map_err(|_| SourceError::Rpc {
        method: "eth_subscribe".into(),
        error: format!("unexpected subscription id {}", id.get()),
    })
}

/// Fetches ancestors from the current source.
struct HeaderFetch<'a, C> {
    source: &'a mut C,
    timeout: Duration,
}

impl<C: Connection> FetchHeader for HeaderFetch<'_, C> {
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

#[cfg(test)]
mod tests;
