//! The feed's rules against a scripted pool, on tokio's paused clock: no sockets, no sleeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::metrics::FailoverKind;
use crate::subscription::pool::{Connection, SourcePool};
use crate::subscription::select::Candidate;
use crate::subscription::session::Receiver;
use crate::subscription::source::Notification;
use crate::subscription::timings::{FeedTimings, TimingsControl};
use crate::subscription::{Limits, QueueLimits, SessionHandle};

const GRACE: Duration = Duration::from_secs(30);
const CHECK: Duration = Duration::from_secs(2);

fn hash(n: u64) -> String {
    format!("0x{n:064x}")
}

fn header(n: u64) -> String {
    format!(
        r#"{{"number":"0x{n:x}","hash":"{}","parentHash":"{}"}}"#,
        hash(n),
        hash(n.saturating_sub(1))
    )
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).unwrap()
}

/// How one upstream behaves.
#[derive(Clone, Default)]
struct Script {
    /// Connects are refused.
    refuse: bool,
    /// `eth_subscribe` fails (the source "connects and fails at once").
    subscribe_fails: bool,
    /// The connection is lost right after the subscription is made.
    drop_at_once: bool,
    /// `eth_getLogs` answers with this error.
    logs_error: Option<String>,
}

#[derive(Default)]
struct World {
    candidates: Vec<Candidate>,
    scripts: HashMap<String, Script>,
    /// Where the test pushes notifications of each upstream's live connection.
    feeds: HashMap<String, mpsc::UnboundedSender<Result<Notification, SourceError>>>,
    connects: Vec<(String, Instant)>,
    /// The timings each connect was given, in order.
    connect_timings: Vec<FeedTimings>,
    /// Timings each live connection was retimed to: (upstream, timings).
    retimed: Vec<(String, FeedTimings)>,
    logs: String,
    elsewhere: Option<Result<String, String>>,
    /// Heads reported as delivered to clients.
    delivered: Vec<u64>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<World>>);

impl Scripted {
    fn with(names: &[&str]) -> Scripted {
        let pool = Scripted::default();
        {
            let mut world = pool.world();
            world.logs = "[]".into();
            for name in names {
                world.candidates.push(Candidate {
                    name: (*name).into(),
                    state: "healthy",
                    in_rotation: true,
                    can_feed: true,
                    polled: false,
                    head: 0,
                });
                world.scripts.insert(name.to_string(), Script::default());
            }
        }
        pool
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    fn script(&self, name: &str, edit: impl FnOnce(&mut Script)) {
        edit(self.world().scripts.get_mut(name).unwrap());
    }

    fn set_head(&self, name: &str, head: u64) {
        let mut world = self.world();
        world
            .candidates
            .iter_mut()
            .find(|c| &*c.name == name)
            .unwrap()
            .head = head;
    }

    fn connected(&self, name: &str) -> bool {
        self.world().feeds.get(name).is_some_and(|f| !f.is_closed())
    }

    /// Sends head `n` from `name`; false when it has no live connection.
    fn emit(&self, name: &str, n: u64) -> bool {
        self.set_head(name, n);
        let notification = Notification {
            subscription: "0xheads".into(),
            result: raw(&header(n)),
        };
        let world = self.world();
        world
            .feeds
            .get(name)
            .is_some_and(|f| f.send(Ok(notification)).is_ok())
    }

    fn drop_connection(&self, name: &str, error: SourceError) {
        if let Some(feed) = self.world().feeds.remove(name) {
            let _ = feed.send(Err(error));
        }
    }

    fn connects(&self) -> Vec<(String, Instant)> {
        self.world().connects.clone()
    }
}

struct ScriptedConnection {
    name: String,
    world: Arc<Mutex<World>>,
    notifications: mpsc::UnboundedReceiver<Result<Notification, SourceError>>,
}

impl Connection for ScriptedConnection {
    async fn request(
        &mut self,
        method: &str,
        params: &str,
        _limit: Duration,
    ) -> Result<Box<RawValue>, SourceError> {
        let world = self.world.lock().unwrap();
        let script = world.scripts[&self.name].clone();
        let rpc_error = |error: &str| SourceError::Rpc {
            method: method.into(),
            error: error.into(),
        };
        match method {
            "eth_subscribe" if script.subscribe_fails => Err(rpc_error("no")),
            "eth_subscribe" if params.contains("newHeads") => Ok(raw(r#""0xheads""#)),
            "eth_subscribe" => Ok(raw(r#""0xpending""#)),
            "eth_getLogs" => match script.logs_error {
                Some(error) => Err(rpc_error(&error)),
                None => Ok(raw(&world.logs)),
            },
            "eth_getBlockByHash" => {
                let wanted = params.split('"').nth(1).unwrap_or_default();
                let n = u64::from_str_radix(wanted.trim_start_matches("0x"), 16).unwrap();
                Ok(raw(&header(n)))
            }
            _ => Ok(raw("true")),
        }
    }

    async fn next_notification(&mut self) -> Result<Notification, SourceError> {
        match self.notifications.recv().await {
            Some(next) => next,
            None => Err(SourceError::Lost("closed".into())),
        }
    }

    async fn close(self) {}

    fn retime(&mut self, timings: &FeedTimings) {
        let mut world = self.world.lock().unwrap();
        world.retimed.push((self.name.clone(), *timings));
    }
}

impl SourcePool for Scripted {
    type Connection = ScriptedConnection;

    fn candidates(&self) -> Vec<Candidate> {
        self.world().candidates.clone()
    }

    fn syncing(&self) -> Option<u64> {
        None
    }

    fn delivered(&self, number: u64) {
        self.world().delivered.push(number);
    }

    async fn connect(
        &self,
        name: &str,
        timings: &FeedTimings,
    ) -> Result<ScriptedConnection, SourceError> {
        let mut world = self.world();
        world.connects.push((name.to_string(), Instant::now()));
        world.connect_timings.push(*timings);
        if world.scripts[name].refuse {
            return Err(SourceError::Connect("refused".into()));
        }
        let (feed, notifications) = mpsc::unbounded_channel();
        if world.scripts[name].drop_at_once {
            let _ = feed.send(Err(SourceError::Lost("reset".into())));
        }
        world.feeds.insert(name.to_string(), feed);
        Ok(ScriptedConnection {
            name: name.to_string(),
            world: self.0.clone(),
            notifications,
        })
    }

    async fn logs_elsewhere(
        &self,
        _skip: &str,
        _params: &str,
        _limit: Duration,
    ) -> Result<Box<RawValue>, String> {
        match self.world().elsewhere.clone() {
            Some(Ok(logs)) => Ok(raw(&logs)),
            Some(Err(error)) => Err(error),
            None => Err("nobody else".into()),
        }
    }
}

struct Harness {
    pool: Scripted,
    hub: Arc<Hub>,
    status: Arc<FeedStatus>,
    metrics: Arc<Metrics>,
    /// Where a test sends reloaded `[health]` settings, as a reload does.
    timings: TimingsControl,
    stop: CancellationToken,
}

/// `[health]` with this interval and timeout.
fn health(interval: Duration, timeout: Duration) -> crate::config::HealthConfig {
    crate::config::HealthConfig {
        interval,
        timeout,
        max_lag_blocks: 5,
        no_new_heads: Duration::ZERO,
        failure_threshold: 3,
        recovery_threshold: 1,
    }
}

impl Harness {
    /// A feed checking every `CHECK` (2 s): given up after 5 s of silence, logs within 5 s,
    /// backoff bound 8 s.
    fn start(names: &[&str]) -> Harness {
        Harness::start_with(names, CHECK)
    }

    /// A feed over `names` with `health.interval` = `interval` (timeout: half of it).
    fn start_with(names: &[&str], interval: Duration) -> Harness {
        let pool = Scripted::with(names);
        let hub = Arc::new(Hub::new(Limits::default()));
        let status = Arc::new(FeedStatus::default());
        let metrics = Arc::new(Metrics::new());
        let settings = FeedSettings {
            grace: GRACE,
            request_timeout: Duration::from_secs(30),
        };
        let timings =
            TimingsControl::new(&health(interval, interval / 2), settings.request_timeout);
        let feed = Feed::new(
            hub.clone(),
            pool.clone(),
            metrics.clone(),
            settings,
            timings.subscribe(),
            status.clone(),
        );
        let stop = CancellationToken::new();
        tokio::spawn(feed.run(stop.clone()));
        Harness {
            pool,
            hub,
            status,
            metrics,
            timings,
            stop,
        }
    }

    /// Applies a reloaded `health.interval` (timeout: half of it); the new timings.
    fn reload(&self, interval: Duration) -> FeedTimings {
        self.timings
            .apply(&health(interval, interval / 2))
            .expect("the timings changed")
    }

    fn client(&self, kind: &str) -> Client {
        let (session, queue) = SessionHandle::new(QueueLimits {
            messages: 64,
            bytes: 1 << 20,
        });
        let params = raw(kind);
        let pending = self.hub.prepare(Some(&params), &session).unwrap();
        self.hub.activate(pending);
        Client { session, queue }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Client {
    session: Arc<SessionHandle>,
    queue: Receiver,
}

impl Client {
    /// Every notification result queued so far.
    fn results(&mut self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Some(message) = self.queue.try_recv() {
            let frame: serde_json::Value = serde_json::from_str(&message.into_text()).unwrap();
            out.push(frame["params"]["result"].clone());
        }
        out
    }

    fn head_numbers(&mut self) -> Vec<u64> {
        self.results()
            .iter()
            .map(|h| {
                u64::from_str_radix(h["number"].as_str().unwrap().trim_start_matches("0x"), 16)
                    .unwrap()
            })
            .collect()
    }

    fn closed_with(&self) -> Option<u16> {
        self.session.close_reason().map(|(code, _)| code)
    }
}

/// Lets the feed task run until it waits on time or input.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

const LOGS_FILTER: &str = r#"["logs",{"address":"0x00000000000000000000000000000000000000aa"}]"#;

#[tokio::test(start_paused = true)]
async fn logs_nobody_can_fetch_close_only_logs_subscribers_and_heads_flow() {
    let h = Harness::start(&["a", "b"]);
    let mut heads = h.client(r#"["newHeads"]"#);
    let logs = h.client(LOGS_FILTER);
    settle().await;
    h.pool.script("a", |s| {
        s.logs_error = Some("query returned more than 10000 results".into())
    });
    for n in 1..=3 {
        assert!(h.pool.emit("a", n));
        settle().await;
    }
    assert_eq!(
        heads.head_numbers(),
        [1, 2, 3],
        "heads never wait for a filter's problem"
    );
    assert_eq!(
        logs.closed_with(),
        Some(1011),
        "the affected client alone is closed"
    );
    assert_eq!(heads.closed_with(), None);
    assert_eq!(
        h.pool.connects().len(),
        1,
        "a filter's failure is not a source failure"
    );
}

#[tokio::test(start_paused = true)]
async fn logs_the_source_cannot_give_are_fetched_elsewhere() {
    let h = Harness::start(&["a", "b"]);
    let mut logs = h.client(LOGS_FILTER);
    settle().await;
    h.pool.script("a", |s| s.logs_error = Some("boom".into()));
    let log =
        r#"{"address":"0x00000000000000000000000000000000000000aa","topics":[],"logIndex":"0x0"}"#;
    h.pool.world().elsewhere = Some(Ok(format!("[{log}]")));
    assert!(h.pool.emit("a", 1));
    settle().await;
    let results = logs.results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["logIndex"], "0x0");
    assert_eq!(logs.closed_with(), None);
}

#[tokio::test(start_paused = true)]
async fn grace_runs_from_the_first_unserved_moment_despite_sources_failing_at_once() {
    let h = Harness::start(&["a", "b"]);
    let client = h.client(r#"["newHeads"]"#);
    settle().await;
    let lost_at = Instant::now();
    h.pool.script("a", |s| s.subscribe_fails = true);
    h.pool.script("b", |s| s.drop_at_once = true);
    h.pool
        .drop_connection("a", SourceError::Lost("reset".into()));
    while client.closed_with().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(lost_at.elapsed() < GRACE * 2, "never closed");
    }
    let waited = lost_at.elapsed();
    assert!(
        waited >= GRACE && waited < GRACE + CHECK * 5,
        "closed after {waited:?}"
    );
    assert_eq!(client.closed_with(), Some(1011));
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_back_off_exponentially_up_to_the_bound() {
    let h = Harness::start(&["a"]);
    h.pool.script("a", |s| s.refuse = true);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let connects = h.pool.connects();
    let gaps: Vec<u64> = connects
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_millis() as u64)
        .collect();
    assert!(
        connects.len() < 20,
        "a refusing upstream is not hammered: {gaps:?}"
    );
    assert_eq!(&gaps[..4], [250, 500, 1000, 2000], "doubling");
    assert!(gaps.iter().all(|&g| g <= 8000), "bounded: {gaps:?}");
    assert!(gaps.ends_with(&[8000, 8000]), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_source_behind_another_by_two_blocks_is_left_at_the_next_check() {
    let h = Harness::start(&["a", "b"]);
    let mut heads = h.client(r#"["newHeads"]"#);
    settle().await;
    assert!(h.pool.emit("a", 5));
    settle().await;
    h.pool.set_head("b", 7);
    tokio::time::sleep(CHECK + Duration::from_millis(10)).await;
    assert!(h.pool.connected("b"), "moved to the upstream ahead");
    assert!(h.pool.emit("b", 7));
    settle().await;
    assert_eq!(
        heads.head_numbers(),
        [5, 6, 7],
        "the gap is filled in order"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_source_is_left_and_the_feed_recovers_without_loss() {
    let h = Harness::start(&["a", "b"]);
    let mut heads = h.client(r#"["newHeads"]"#);
    settle().await;
    assert!(h.pool.emit("a", 1));
    settle().await;
    h.pool
        .drop_connection("a", SourceError::Silent(Duration::from_secs(5)));
    settle().await;
    assert!(h.pool.connected("b"));
    tokio::time::sleep(CHECK * 2).await;
    assert!(h.pool.emit("b", 3));
    settle().await;
    assert_eq!(heads.head_numbers(), [1, 2, 3]);
    assert_eq!(heads.closed_with(), None);
    assert_eq!(h.status.snapshot().source.as_deref(), Some("b"));
    assert_eq!(h.status.snapshot().head, Some(3));
}

#[tokio::test(start_paused = true)]
async fn after_every_upstream_failed_the_first_to_recover_serves_again() {
    let h = Harness::start(&["a", "b"]);
    let mut heads = h.client(r#"["newHeads"]"#);
    settle().await;
    assert!(h.pool.emit("a", 1));
    settle().await;
    for name in ["a", "b"] {
        h.pool.script(name, |s| s.refuse = true);
    }
    h.pool
        .drop_connection("a", SourceError::Lost("reset".into()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.pool.script("b", |s| s.refuse = false);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(h.pool.connected("b"), "retried within the backoff bound");
    assert!(h.pool.emit("b", 2));
    settle().await;
    assert_eq!(heads.head_numbers(), [1, 2]);
    assert_eq!(heads.closed_with(), None, "back within the grace");
    assert_eq!(h.metrics.failover_count(FailoverKind::Subscription), 1);
}

#[tokio::test(start_paused = true)]
async fn a_block_nobody_knows_any_more_is_a_stale_head_not_a_filter_problem() {
    let h = Harness::start(&["a", "b"]);
    let mut heads = h.client(r#"["newHeads"]"#);
    let logs = h.client(LOGS_FILTER);
    settle().await;
    assert!(h.pool.emit("a", 1));
    settle().await;
    h.pool
        .script("a", |s| s.logs_error = Some("unknown block".into()));
    h.pool.world().elsewhere = Some(Err("b: unknown block".into()));
    assert!(h.pool.emit("a", 2));
    settle().await;
    assert_eq!(
        logs.closed_with(),
        None,
        "logs subscribers are not closed for a reorg"
    );
    assert_eq!(heads.head_numbers(), [1], "the stale head is not delivered");
    assert!(
        h.pool.connected("b"),
        "the feed re-plans from another source"
    );
    h.pool.world().elsewhere = None;
    assert!(h.pool.emit("b", 2));
    settle().await;
    assert_eq!(heads.head_numbers(), [2]);
}

#[tokio::test(start_paused = true)]
async fn a_reload_retimes_the_followed_source_in_place_without_resubscribing() {
    let h = Harness::start_with(&["a", "b"], Duration::from_secs(60));
    let mut heads = h.client(r#"["newHeads"]"#);
    settle().await;
    assert!(h.pool.emit("a", 1));
    settle().await;
    let new = h.reload(Duration::from_secs(1));
    settle().await;
    assert_eq!(new.dead_after, Duration::from_millis(2500));
    assert_eq!(
        h.pool.world().retimed,
        [("a".to_string(), new)],
        "the followed source takes the new liveness window and poll period at once"
    );
    assert!(h.pool.emit("a", 2));
    settle().await;
    assert_eq!(heads.head_numbers(), [1, 2]);
    assert_eq!(
        h.pool.connects().len(),
        1,
        "no reconnect, no resubscribe: nothing for clients to notice"
    );
    assert_eq!(heads.closed_with(), None);
}

#[tokio::test(start_paused = true)]
async fn a_reload_shortens_the_rotation_check_of_the_followed_source() {
    let h = Harness::start_with(&["a", "b"], Duration::from_secs(600));
    let mut heads = h.client(r#"["newHeads"]"#);
    settle().await;
    assert!(h.pool.emit("a", 5));
    settle().await;
    h.pool.set_head("b", 7);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!h.pool.connected("b"), "not before a 600 s check");
    h.reload(CHECK);
    tokio::time::sleep(CHECK + Duration::from_millis(10)).await;
    assert!(
        h.pool.connected("b"),
        "a lagging source is left at the reloaded interval's check"
    );
    assert!(h.pool.emit("b", 7));
    settle().await;
    assert_eq!(heads.head_numbers(), [5, 6, 7]);
}

#[tokio::test(start_paused = true)]
async fn a_reload_lowers_the_backoff_bound_and_times_the_next_connect() {
    // interval 60 s: backoff bound 240 s, so a refusing upstream is retried ever more rarely.
    let h = Harness::start_with(&["a"], Duration::from_secs(60));
    h.pool.script("a", |s| s.refuse = true);
    tokio::time::sleep(Duration::from_secs(130)).await;
    let before = h.pool.connects().len();
    let last_gap = {
        let connects = h.pool.connects();
        connects[before - 1].1 - connects[before - 2].1
    };
    assert_eq!(
        last_gap,
        Duration::from_secs(64),
        "backed off to 64 s so far"
    );
    let new = h.reload(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let connects = h.pool.connects();
    let gaps: Vec<u64> = connects[before - 1..]
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_millis() as u64)
        .collect();
    assert!(
        connects.len() - before >= 5,
        "retried at the new bound (4 s), not after 128 s: {gaps:?}"
    );
    assert!(
        gaps[1..].iter().all(|&g| g <= 4000),
        "bounded by 4 × the new interval: {gaps:?}"
    );
    let world = h.pool.world();
    assert_eq!(
        world.connect_timings[before - 1].connect_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(
        world.connect_timings.last(),
        Some(&new),
        "a new source is opened with the reloaded timings"
    );
}
