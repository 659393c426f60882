//! The feed's timings, all derived from `[health]`: computed in one place, at start and on
//! every reload, and carried to the running feed by a watch channel so a reload that changes
//! `health.interval` or `health.timeout` reaches the feed without a restart (and without a
//! resubscribe: the followed source is retimed in place).

use std::time::Duration;

use tokio::sync::watch;

use crate::config::HealthConfig;

/// Shortest poll period of an HTTP-only source.
const MIN_POLL_EVERY: Duration = Duration::from_millis(100);
/// Smallest bound of the backoff after every upstream failed.
const MIN_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The feed's timings of one moment; README's Behaviour section states each formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedTimings {
    /// Budget of a WebSocket connect to a new source.
    pub connect_timeout: Duration,
    /// Silence after which the source is pinged.
    pub ping_after: Duration,
    /// Silence after which the source is given up (for polling: a poll's budget).
    pub dead_after: Duration,
    /// How often an upstream without WebSocket is polled for its latest block.
    pub poll_every: Duration,
    /// Budget of one block's logs fetch; beyond it the logs are asked elsewhere.
    pub logs_timeout: Duration,
    /// How often rotation and pending-subscription needs are re-checked.
    pub check_every: Duration,
    /// Longest wait between rounds when every upstream failed.
    pub max_backoff: Duration,
}

impl FeedTimings {
    /// The timings for `health`, capped by the `server.request_timeout` the server runs with.
    pub fn new(health: &HealthConfig, request_timeout: Duration) -> FeedTimings {
        let dead_after = health.interval * 2 + health.timeout;
        FeedTimings {
            connect_timeout: request_timeout.min(health.interval * 2),
            ping_after: health.interval,
            dead_after,
            // Half a health interval: heads of an HTTP-only source arrive at most that late.
            poll_every: (health.interval / 2).max(MIN_POLL_EVERY),
            // A block's logs are one indexed lookup: a node slower than its own liveness
            // window is asked elsewhere rather than holding every client's heads.
            logs_timeout: request_timeout.min(dead_after),
            check_every: health.interval,
            max_backoff: (health.interval * 4).max(MIN_MAX_BACKOFF),
        }
    }
}

/// The sending side, held by the server: applies a (reloaded) `[health]` to the feed.
#[derive(Debug)]
pub struct TimingsControl {
    sender: watch::Sender<FeedTimings>,
    /// `server.request_timeout` as started: a `[server]` key, changed only by a restart.
    request_timeout: Duration,
}

impl TimingsControl {
    /// Timings for `health` and the server's `request_timeout`.
    pub fn new(health: &HealthConfig, request_timeout: Duration) -> TimingsControl {
        let (sender, _) = watch::channel(FeedTimings::new(health, request_timeout));
        TimingsControl {
            sender,
            request_timeout,
        }
    }

    /// A reader for the feed.
    pub fn subscribe(&self) -> Timings {
        Timings(self.sender.subscribe())
    }

    /// Derives the timings from `health` and hands them to the feed; the new timings when
    /// they differ from the current ones, `None` when nothing changed.
    pub fn apply(&self, health: &HealthConfig) -> Option<FeedTimings> {
        let new = FeedTimings::new(health, self.request_timeout);
        let changed = self.sender.send_if_modified(|current| {
            let changed = *current != new;
            *current = new;
            changed
        });
        changed.then_some(new)
    }
}

/// The feed's view of its current timings.
#[derive(Debug, Clone)]
pub struct Timings(watch::Receiver<FeedTimings>);

impl Timings {
    /// The current timings.
    pub fn now(&self) -> FeedTimings {
        *self.0.borrow()
    }

    /// The current timings, which [`Timings::changed`] then counts as seen.
    pub fn latest(&mut self) -> FeedTimings {
        *self.0.borrow_and_update()
    }

    /// Resolves once timings newer than the last seen ones are sent; never once nobody can
    /// send any more. Cancel-safe.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(interval_ms: u64, timeout_ms: u64) -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            max_lag_blocks: 5,
            no_new_heads: Duration::ZERO,
            failure_threshold: 3,
            recovery_threshold: 1,
        }
    }

    #[test]
    fn timings_follow_the_documented_formulas() {
        let t = FeedTimings::new(&health(2000, 1000), Duration::from_secs(3));
        assert_eq!(t.ping_after, Duration::from_millis(2000));
        assert_eq!(t.dead_after, Duration::from_millis(5000));
        assert_eq!(
            t.connect_timeout,
            Duration::from_secs(3),
            "request_timeout caps"
        );
        assert_eq!(
            t.logs_timeout,
            Duration::from_secs(3),
            "request_timeout caps"
        );
        assert_eq!(t.poll_every, Duration::from_millis(1000));
        assert_eq!(t.check_every, Duration::from_millis(2000));
        assert_eq!(t.max_backoff, Duration::from_secs(8));
        let fast = FeedTimings::new(&health(100, 50), Duration::from_secs(3));
        assert_eq!(fast.connect_timeout, Duration::from_millis(200));
        assert_eq!(fast.logs_timeout, Duration::from_millis(250));
        assert_eq!(fast.poll_every, MIN_POLL_EVERY, "floor");
        assert_eq!(fast.max_backoff, MIN_MAX_BACKOFF, "floor");
    }

    #[tokio::test]
    async fn apply_wakes_readers_only_when_the_timings_change() {
        let control = TimingsControl::new(&health(2000, 1000), Duration::from_secs(3));
        let mut timings = control.subscribe();
        assert_eq!(timings.latest().ping_after, Duration::from_millis(2000));
        assert_eq!(control.apply(&health(2000, 1000)), None, "same timings");
        let mut other = health(2000, 1000);
        other.max_lag_blocks += 1;
        assert_eq!(control.apply(&other), None, "no timing depends on it");
        let applied = control.apply(&health(500, 200)).expect("changed");
        tokio::time::timeout(Duration::from_secs(5), timings.changed())
            .await
            .expect("woken by the change");
        assert_eq!(timings.latest(), applied);
        assert_eq!(
            applied.connect_timeout,
            Duration::from_secs(1),
            "the request_timeout of the start still caps"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_control_is_no_change() {
        let control = TimingsControl::new(&health(100, 50), Duration::from_secs(1));
        let mut timings = control.subscribe();
        drop(control);
        let waited = tokio::time::timeout(Duration::from_secs(60), timings.changed()).await;
        assert!(waited.is_err(), "pending, not a busy loop of errors");
        assert_eq!(timings.now().ping_after, Duration::from_millis(100));
    }
}
