//! The feed: follows one upstream's newHeads at a time, turns every head into canonical
//! changes, fetches the logs of each new block once for every live filter, and fans the result
//! out. On any loss it moves to another upstream, and the chain view fills the gap.
//!
//! Progress is the rule: a filter's trouble never holds back heads (its subscribers alone are
//! closed), a source that keeps failing is retried with a bounded backoff and logged at a
//! bounded rate, and `subscription_grace` runs from the first moment nobody served.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::chain::{Behind, ChainView};
use super::logs::DeliveredLogs;
use super::pacing::{Backoff, RateLimit};
use super::pool::{Connection, SourcePool};
use super::select;
use super::source::{Notification, SourceError};
use super::timings::{FeedTimings, Timings};
use super::{Hub, Kind};
use crate::metrics::Metrics;

mod deliver;
mod status;

use deliver::HeadOutcome;
pub use status::{FeedSnapshot, FeedStatus};

/// First delay before all upstreams are tried again after each of them failed.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// At most one "source lost" or "logs unavailable" warning per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The feed's `[server]` settings, fixed until a restart (its `[health]` timings follow
/// reloads: [`Timings`]).
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// How long subscribers may go unserved before they are closed with 1011.
    pub grace: Duration,
    /// Budget of one request to the source (subscribe, ancestor fetch).
    pub request_timeout: Duration,
}

/// What the feed holds about the source it follows now.
struct Following {
    /// The source's upstream name.
    name: Arc<str>,
    /// The source before this one, if any.
    previous: Option<Arc<str>>,
    /// Whether this source replaced another.
    failover: bool,
    /// The upstream id of the newHeads subscription.
    heads: String,
    /// The upstream id of the newPendingTransactions subscription, while clients want one.
    pending_txs: Option<String>,
    /// Whether it counted as serving yet (see `establish`).
    established: bool,
    /// Whether heads at or below the delivered one are taken.
    behind: Behind,
}

/// The feed's state across sources.
pub struct Feed<P: SourcePool> {
    hub: Arc<Hub>,
    pool: P,
    metrics: Arc<Metrics>,
    settings: FeedSettings,
    /// Timings from `[health]`, new ones sent on reload.
    timings: Timings,
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
    /// A feed over `pool` delivering into `hub`, reporting to `status`, timed by `timings`.
    pub fn new(
        hub: Arc<Hub>,
        pool: P,
        metrics: Arc<Metrics>,
        settings: FeedSettings,
        timings: Timings,
        status: Arc<FeedStatus>,
    ) -> Self {
        let backoff = Backoff::new(FIRST_BACKOFF, timings.now().max_backoff);
        Feed {
            hub,
            pool,
            metrics,
            settings,
            timings,
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
                let timings = self.timings.latest();
                let wait = if select::all_failed(&candidates, &self.failed) {
                    self.failed.clear();
                    self.backoff.set_max(timings.max_backoff);
                    self.backoff.step()
                } else {
                    timings.check_every
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

    /// Waits `wait` (or until a reload retimes the feed) while nothing serves, closing
    /// subscribers once the grace is over.
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
            // A reload's timings (a shorter interval, a lower backoff bound) apply now.
            _ = self.timings.changed() => {}
        }
    }

    /// Follows the source `name` until it is lost or left (an error says why) or `shutdown`.
    async fn serve_from(
        &mut self,
        name: &Arc<str>,
        shutdown: &CancellationToken,
    ) -> Result<(), SourceError> {
        // Seen from here on: a reload during the connect retimes the source below.
        let timings = self.timings.latest();
        let mut source = self.pool.connect(name, &timings).await?;
        let timeout = self.settings.request_timeout;
        let heads = subscribe(&mut source, r#"["newHeads"]"#, timeout).await?;
        let mut following = self.start_following(name, heads);
        let mut check = check_interval(timings.check_every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    source.close().await;
                    return Ok(());
                }
                notification = source.next_notification() => {
                    self.on_notification(&mut source, &mut following, notification?).await?;
                }
                _ = check.tick() => {
                    let candidates = self.pool.candidates();
                    let delivered = self.delivered();
                    if let Some(reason) = select::leave_reason(&candidates, &following.name, delivered) {
                        source.close().await;
                        return Err(SourceError::Lost(reason));
                    }
                    self.on_check(&mut source, &mut following).await?;
                }
                _ = self.timings.changed() => {
                    retime(&mut source, &mut check, &self.timings.latest());
                }
            }
        }
    }

    /// Makes `name` the current source, subscribed to heads as `heads`.
    fn start_following(&mut self, name: &Arc<str>, heads: String) -> Following {
        let previous = self.current.replace(name.clone());
        let failover = previous.as_ref().is_some_and(|p| p != name);
        self.status.lock().source = Some(name.clone());
        Following {
            name: name.clone(),
            previous,
            failover,
            heads,
            pending_txs: None,
            established: false,
            // Right after a failover, a source behind the delivered head must pass it first.
            behind: if failover {
                Behind::Ignored
            } else {
                Behind::Taken
            },
        }
    }

    /// Takes one notification of the source: a head, or a pending transaction.
    async fn on_notification(
        &mut self,
        source: &mut P::Connection,
        following: &mut Following,
        notification: Notification,
    ) -> Result<(), SourceError> {
        if notification.subscription == following.heads {
            let outcome = self
                .on_head(source, &notification.result, following.behind)
                .await?;
            if !matches!(outcome, HeadOutcome::Unusable) {
                if matches!(outcome, HeadOutcome::Delivered) {
                    following.behind = Behind::Taken;
                }
                self.failed.clear();
                self.backoff.reset();
                self.establish(following);
            }
        } else if following.pending_txs.as_deref() == Some(notification.subscription.as_str()) {
            self.on_pending_tx(&notification.result);
        }
        Ok(())
    }

    /// The periodic check on a source that stays: follows what clients want (pending
    /// transactions) and whether the chain is syncing.
    async fn on_check(
        &mut self,
        source: &mut P::Connection,
        following: &mut Following,
    ) -> Result<(), SourceError> {
        self.establish(following);
        self.track_pending_subscription(source, &mut following.pending_txs)
            .await?;
        self.update_syncing();
        Ok(())
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

/// A reload changed the timings: the source keeps serving (no resubscribe, so no glitch for
/// clients) under the new liveness window and poll period, and rotation checks follow the
/// new interval from now.
fn retime<C: Connection>(source: &mut C, check: &mut tokio::time::Interval, timings: &FeedTimings) {
    source.retime(timings);
    if check.period() != timings.check_every {
        *check = check_interval(timings.check_every);
    }
    tracing::info!(
        ping_after = ?timings.ping_after,
        dead_after = ?timings.dead_after,
        check_every = ?timings.check_every,
        "subscription source retimed"
    );
}

/// Rotation checks every `every`, the first one `every` from now.
fn check_interval(every: Duration) -> tokio::time::Interval {
    tokio::time::interval_at(Instant::now() + every, every)
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

#[cfg(test)]
mod tests;
