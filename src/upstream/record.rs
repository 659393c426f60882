//! Feeding the health model: probe outcomes and passive failures go into each upstream's
//! facts, every upstream is re-evaluated, and the results are published to the atomics the
//! request path reads; transitions are logged and reported to the observer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::health::{evaluate, ChainSummary, Facts, State};
use super::observe::Transition;
use super::probe::{ProbeError, Report};
use super::{Upstream, Upstreams};

impl Upstreams {
    /// Records a probe's outcome on `upstream` (one of this set's; others are ignored) and
    /// re-evaluates every upstream.
    pub fn record_probe(
        &self,
        upstream: &Upstream,
        outcome: Result<Report, ProbeError>,
        rtt: Duration,
    ) {
        let Some(slot) = self.slot(upstream) else {
            return;
        };
        let now = Instant::now();
        let mut facts = self.lock_facts();
        let me = &mut facts[slot];
        let ok = outcome.is_ok();
        match outcome {
            Ok(report) => {
                upstream.observe_tags(report.safe, report.finalized);
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
                        upstream = upstream.name(),
                        reason = %error,
                        "upstream unreachable since start"
                    );
                }
                me.last_error = Some(error.to_string());
            }
        }
        me.reachable.record(ok, &self.health);
        self.publish(&facts, now);
    }

    /// Counts a failure seen on real traffic that is evidence about the node (connect refused,
    /// reset) as a failed probe; the router decides what is such evidence.
    pub fn record_passive_failure(&self, upstream: &Upstream, error: &str) {
        let Some(slot) = self.slot(upstream) else {
            return;
        };
        let now = Instant::now();
        let mut facts = self.lock_facts();
        facts[slot].last_error = Some(error.to_string());
        if facts[slot].reachable.record(false, &self.health).is_some() {
            self.publish(&facts, now);
        }
    }

    /// The last probe error of `upstream` while it is unreachable (for /status).
    pub fn unreachable_reason(&self, upstream: &Upstream) -> Option<String> {
        let slot = self.slot(upstream)?;
        if upstream.state() != State::Unreachable {
            return None;
        }
        self.lock_facts().get(slot)?.last_error.clone()
    }

    pub(super) fn lock_facts(&self) -> std::sync::MutexGuard<'_, Vec<Facts>> {
        // A panic while holding the lock cannot leave the facts half-written in a way that
        // matters: every field is overwritten by the next probe.
        self.facts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Evaluates every upstream, stores the results in the atomics, logs and reports
    /// transitions.
    pub(super) fn publish(&self, facts: &[Facts], now: Instant) {
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
                self.observer.transition(&Transition {
                    upstream,
                    from: previous,
                    to: state,
                });
            }
        }
        self.reselect();
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
