//! What the upstream set tells the modules above it: failovers of the sticky choice and
//! state transitions, through an observer they hand in (pingora's `HealthObserve`), so the
//! set holds no handle to their registries.

use super::health::State;
use super::Upstream;
use crate::metrics::{FailoverKind, Metrics};

/// The sticky choice moved from one upstream to another.
#[derive(Debug)]
pub struct Failover<'a> {
    /// The upstream that served until now.
    pub from: &'a Upstream,
    /// The upstream that serves from now on.
    pub to: &'a Upstream,
    /// Why `from` was left (`"a is lagging"`).
    pub reason: &'a str,
}

/// One upstream's state changed (reported once per change, never per probe).
#[derive(Debug)]
pub struct Transition<'a> {
    /// The upstream whose state changed.
    pub upstream: &'a Upstream,
    /// Its state before.
    pub from: State,
    /// Its state now.
    pub to: State,
}

/// Told of failovers and transitions as the health model decides them. Called with the
/// health facts locked: implementations must be quick and must not call back into the set.
pub trait HealthObserve: Send + Sync {
    /// The sticky choice moved (the first choice at start-up is no failover).
    fn failover(&self, failover: &Failover<'_>);
    /// An upstream's state changed.
    fn transition(&self, transition: &Transition<'_>);
}

/// The metrics count failovers as `ethgate_failovers_total{kind="request"}`; states need no
/// counting here, as `ethgate_upstream_state` reads them from the upstreams at each scrape.
impl HealthObserve for Metrics {
    fn failover(&self, _failover: &Failover<'_>) {
        Metrics::failover(self, FailoverKind::Request);
    }

    fn transition(&self, _transition: &Transition<'_>) {}
}
