//! Health model of one upstream: consecutive-result thresholds, the facts its probes
//! reported, and the pure rule that turns those facts into a [`State`].

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::HealthConfig;

/// Where an upstream stands; only `Healthy` upstreams are routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Reachable, right chain, in sync, fresh.
    Healthy = 0,
    /// Head behind the best head by more than `max_lag_blocks`.
    Lagging = 1,
    /// Reports that it is syncing.
    Syncing = 2,
    /// Head frozen for `no_new_heads` while another upstream advances.
    Stalled = 3,
    /// Failing probes or real traffic `failure_threshold` times in a row.
    Unreachable = 4,
    /// Reports a chain id other than the expected one.
    WrongChain = 5,
}

impl State {
    /// Every state, in the order `ethgate_upstream_state` renders them.
    pub const ALL: [State; 6] = [
        State::Healthy,
        State::Lagging,
        State::Syncing,
        State::Stalled,
        State::Unreachable,
        State::WrongChain,
    ];

    /// The name used in /status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Lagging => "lagging",
            State::Syncing => "syncing",
            State::Stalled => "stalled",
            State::Unreachable => "unreachable",
            State::WrongChain => "wrong_chain",
        }
    }

    /// Inverse of `self as u8`, for states kept in an atomic.
    pub fn from_u8(value: u8) -> State {
        match value {
            0 => State::Healthy,
            1 => State::Lagging,
            2 => State::Syncing,
            3 => State::Stalled,
            5 => State::WrongChain,
            _ => State::Unreachable,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts consecutive results and flips between up and down at the configured thresholds.
#[derive(Debug, Default, Clone)]
pub struct Threshold {
    up: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Threshold {
    /// Records one result; returns the new value when it changed. The very first result
    /// decides at once, so a fresh start routes as soon as one probe succeeds.
    pub fn record(&mut self, ok: bool, config: &HealthConfig) -> Option<bool> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = match self.up {
            None => ok,
            Some(true) => self.failures < config.failure_threshold,
            Some(false) => self.successes >= config.recovery_threshold,
        };
        let changed = self.up != Some(next);
        self.up = Some(next);
        changed.then_some(next)
    }

    /// Whether the counter currently says "up".
    pub fn is_up(&self) -> bool {
        self.up == Some(true)
    }
}

/// What the probes of one upstream have established.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Reachability, from probes and passive failures.
    pub reachable: Threshold,
    /// Last chain id reported, and whether it matched the expected one.
    pub chain: Option<(u64, bool)>,
    /// Last `eth_syncing` answer.
    pub syncing: bool,
    /// Last head reported.
    pub head: Option<u64>,
    /// When `head` last increased (or was first seen).
    pub head_changed_at: Instant,
    /// Round trip of the last successful probe.
    pub latency: Option<Duration>,
    /// Why the last probe failed.
    pub last_error: Option<String>,
}

impl Facts {
    /// Facts before any probe.
    pub fn new(now: Instant) -> Self {
        Facts {
            reachable: Threshold::default(),
            chain: None,
            syncing: false,
            head: None,
            head_changed_at: now,
            latency: None,
            last_error: None,
        }
    }

    /// Stores a head, noting when it moved forward.
    pub fn observe_head(&mut self, head: u64, now: Instant) {
        if self.head.is_none_or(|old| head > old) {
            self.head_changed_at = now;
        }
        self.head = Some(head);
    }

    /// Reachable and on the expected chain: its head counts towards the best head.
    pub fn is_comparable(&self) -> bool {
        self.reachable.is_up() && matches!(self.chain, Some((_, true)))
    }
}

/// The best head among comparable upstreams, and whether any of them advanced recently.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainSummary {
    /// Highest head reported by a reachable upstream on the right chain.
    pub best_head: u64,
}

impl ChainSummary {
    /// Summarises the facts of every upstream.
    pub fn of<'a>(all: impl IntoIterator<Item = &'a Facts>) -> Self {
        let best_head = all
            .into_iter()
            .filter(|f| f.is_comparable() && !f.syncing)
            .filter_map(|f| f.head)
            .max()
            .unwrap_or(0);
        ChainSummary { best_head }
    }
}

/// Decides the state of `me` given every upstream's facts (`me` among them).
pub fn evaluate(
    me: &Facts,
    all: &[&Facts],
    summary: ChainSummary,
    config: &HealthConfig,
    now: Instant,
) -> State {
    if !me.reachable.is_up() {
        return State::Unreachable;
    }
    match me.chain {
        Some((_, false)) => return State::WrongChain,
        None => return State::Unreachable,
        Some((_, true)) => {}
    }
    if me.syncing {
        return State::Syncing;
    }
    let head = me.head.unwrap_or(0);
    if summary.best_head.saturating_sub(head) > config.max_lag_blocks {
        return State::Lagging;
    }
    if is_stalled(me, all, config, now) {
        return State::Stalled;
    }
    State::Healthy
}

/// Frozen for `no_new_heads` while some other comparable upstream is ahead and advancing.
fn is_stalled(me: &Facts, all: &[&Facts], config: &HealthConfig, now: Instant) -> bool {
    let window = config.no_new_heads;
    if window.is_zero() || now.duration_since(me.head_changed_at) <= window {
        return false;
    }
    let head = me.head.unwrap_or(0);
    all.iter().any(|other| {
        other.is_comparable()
            && other.head.unwrap_or(0) > head
            && now.duration_since(other.head_changed_at) <= window
    })
}

#[cfg(test)]
mod tests;
