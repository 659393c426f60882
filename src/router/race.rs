//! The read path: one candidate after another, with attempts that do not outlive their
//! upstream's place in rotation.
//!
//! Each attempt races its upstream's "left rotation" signal: a node that freezes (socket open,
//! nothing answered) is taken out by the health model within its detection time, and every read
//! still waiting on it moves to the next candidate at that moment instead of waiting for
//! `request_timeout`. With `server.hedge_after` set, a read with no answer after that delay is
//! also sent to the next candidate (once per read, as eRPC's hedge with `maxCount: 1`). Either
//! way the first complete answer wins and the other attempt is dropped, which cancels its
//! hyper request and frees its pooled connection. A batch is one attempt, so it moves whole.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::consistency::{Ordered, Plan};
use super::{final_error, AttemptError, Attempted, Calls, Framing, Rendered, Router};
use crate::jsonrpc::{Call, RpcError};
use crate::metrics::{FailoverKind, HedgeResult};
use crate::upstream::{AttemptResult, Upstream, Upstreams};

/// How one attempt ended.
enum Ending {
    /// The upstream answered or failed.
    Done(Result<Attempted, AttemptError>),
    /// The upstream left rotation first, for this reason.
    Left(Arc<str>),
}

/// One finished attempt.
struct Finished<'r> {
    upstream: &'r Arc<Upstream>,
    /// Whether it was launched as a hedge.
    hedge: bool,
    elapsed: Duration,
    ending: Ending,
}

/// What one read has learnt so far.
struct Race<'r> {
    router: &'r Router,
    upstreams: &'r Upstreams,
    order: <Ordered<'r> as IntoIterator>::IntoIter,
    /// Upstreams with an attempt in flight (two at most: the current one and a hedge).
    in_flight: smallvec::SmallVec<[&'r Arc<Upstream>; 2]>,
    failures: Vec<(&'r Upstream, AttemptError)>,
    /// The last answer that wanted a retry, and the head of its upstream: upstreams below
    /// that head cannot do better.
    fallback: Option<(u64, Attempted)>,
    /// A failure that no other upstream would do better on (an oversized answer) ends it.
    stopped: bool,
}

/// Forwards reads (see the module doc).
pub(super) async fn read(
    router: &Router,
    upstreams: &Upstreams,
    calls: &[&Call<'_>],
    framing: Framing,
) -> Result<Rendered, RpcError> {
    let bound = upstreams.health_config().max_lag_blocks;
    let plan = Plan::new(calls, &router.marks, upstreams, bound);
    let mut race = Race {
        router,
        upstreams,
        order: plan
            .order(upstreams.candidates(Upstream::in_rotation), upstreams)
            .into_iter(),
        in_flight: smallvec::SmallVec::new(),
        failures: Vec::new(),
        fallback: None,
        stopped: false,
    };
    let start =
        |upstream, hedge: bool| attempt_until_left(router, &plan, calls, framing, upstream, hedge);
    // At most two attempts run at once (the current one and a hedge). The current one lives
    // on this future's own state: no allocation per read. A hedge, rare, is boxed, so every
    // read's future (which a WebSocket session moves into its call set, and which every call
    // in flight holds) is not twice an attempt's size.
    let mut first = pin!(None);
    let mut second = None;
    // Re-armed at every launch: the delay counts from the latest attempt's start. Without
    // hedging there is no timer at all (one per read would cost a clock read and its state).
    let mut hedge_timer = pin!(router.hedge_after.map(tokio::time::sleep));
    let mut may_hedge = router.hedge_after.is_some();
    if let Some(upstream) = race.next_candidate() {
        first.set(Some(start(upstream, false)));
    }
    loop {
        let running = usize::from(first.is_some()) + usize::from(second.is_some());
        tokio::select! {
            // A finished attempt first; no need for select's random order, and its cost.
            biased;
            Some(finished) = next_finished(first.as_mut(), &mut second) => {
                let moved = matches!(finished.ending, Ending::Left(_));
                if let Some(rendered) = race.settle_one(finished, &plan) {
                    race.abandon_the_rest();
                    return Ok(rendered);
                }
                if first.is_none() && second.is_none() {
                    if let Some(upstream) = race.next_candidate() {
                        first.set(Some(start(upstream, false)));
                        if let (Some(timer), Some(after)) =
                            (hedge_timer.as_mut().as_pin_mut(), router.hedge_after)
                        {
                            timer.reset(Instant::now() + after);
                        }
                    }
                }
                // A call whose upstream left rotation and that is still in flight elsewhere
                // (just re-sent, or already hedged there) has moved.
                if moved && (first.is_some() || second.is_some()) {
                    router.metrics.failover(FailoverKind::InFlight);
                }
            }
            () = poll_fn(|cx| match hedge_timer.as_mut().as_pin_mut() {
                Some(timer) => timer.poll(cx),
                None => Poll::Pending,
            }), if may_hedge && running == 1 => {
                may_hedge = false;
                if let Some(upstream) = race.next_candidate() {
                    if first.is_none() {
                        first.set(Some(start(upstream, true)));
                    } else {
                        second = Some(Box::pin(start(upstream, true)));
                    }
                    router.metrics.hedge(HedgeResult::Sent);
                }
            }
            else => break,
        }
    }
    race.finish(&plan, calls)
}

/// The next attempt to finish, its slot emptied; `None` when both slots are empty.
async fn next_finished<F: Future>(
    mut first: Pin<&mut Option<F>>,
    second: &mut Option<Pin<Box<F>>>,
) -> Option<F::Output> {
    if first.is_none() && second.is_none() {
        return None;
    }
    poll_fn(|cx| {
        if let Some(attempt) = first.as_mut().as_pin_mut() {
            if let Poll::Ready(finished) = attempt.poll(cx) {
                first.set(None);
                return Poll::Ready(Some(finished));
            }
        }
        if let Some(attempt) = second {
            if let Poll::Ready(finished) = attempt.as_mut().poll(cx) {
                *second = None;
                return Poll::Ready(Some(finished));
            }
        }
        Poll::Pending
    })
    .await
}

/// One attempt on `upstream`, abandoned as soon as that upstream leaves rotation.
async fn attempt_until_left<'r>(
    router: &Router,
    plan: &Plan,
    calls: &[&Call<'_>],
    framing: Framing,
    upstream: &'r Arc<Upstream>,
    hedge: bool,
) -> Finished<'r> {
    let started = Instant::now();
    let ending = tokio::select! {
        // An answer that is ready wins over a rotation change seen at the same moment.
        biased;
        outcome = router.attempt(upstream, calls, framing, plan) => Ending::Done(outcome),
        reason = upstream.left_rotation() => Ending::Left(reason),
    };
    Finished {
        upstream,
        hedge,
        elapsed: started.elapsed(),
        ending,
    }
}

impl<'r> Race<'r> {
    /// The next candidate worth an attempt: still in rotation, and not below the head of an
    /// upstream that already lacked the data.
    fn next_candidate(&mut self) -> Option<&'r Arc<Upstream>> {
        if self.stopped {
            return None;
        }
        let floor = self.fallback.as_ref().map_or(0, |(floor, _)| *floor);
        let upstream = self
            .order
            .by_ref()
            .find(|u| u.in_rotation() && u.head() >= floor)?;
        self.in_flight.push(upstream);
        Some(upstream)
    }

    /// Takes in one finished attempt; returns the answer when it needs no retry.
    fn settle_one(&mut self, finished: Finished<'r>, plan: &Plan) -> Option<Rendered> {
        let Finished {
            upstream,
            hedge,
            elapsed,
            ending,
        } = finished;
        self.in_flight.retain(|u| !Arc::ptr_eq(u, upstream));
        let outcome = match ending {
            Ending::Done(outcome) => {
                upstream.observe_attempt(elapsed);
                outcome
            }
            Ending::Left(reason) => {
                tracing::debug!(upstream = upstream.name(), %reason, "call moved: upstream left rotation");
                Err(AttemptError::LeftRotation(reason))
            }
        };
        match outcome {
            Ok(attempted) if !attempted.wants_retry() => {
                upstream.count_attempt(AttemptResult::Ok);
                if hedge {
                    self.router.metrics.hedge(HedgeResult::Won);
                }
                plan.record(&attempted.verdicts, &self.router.marks);
                return Some(attempted.rendered);
            }
            Ok(attempted) => {
                upstream.count_attempt(attempted.retry_label());
                let head = upstream.head();
                if self
                    .fallback
                    .as_ref()
                    .is_none_or(|(floor, _)| head >= *floor)
                {
                    self.fallback = Some((head, attempted));
                }
            }
            Err(error) => {
                upstream.count_attempt(error.label());
                if error.counts_against_health() {
                    self.upstreams
                        .record_passive_failure(upstream, &error.to_string());
                }
                self.stopped |= !error.retryable(Calls::ReadOnly);
                self.failures.push((upstream, error));
            }
        }
        None
    }

    /// Counts the attempts still in flight once another answered: they are dropped unanswered.
    fn abandon_the_rest(&self) {
        for upstream in &self.in_flight {
            upstream.count_attempt(AttemptResult::Abandoned);
        }
    }

    /// The answer when no candidate served every call.
    fn finish(self, plan: &Plan, calls: &[&Call<'_>]) -> Result<Rendered, RpcError> {
        match self.fallback {
            Some((_, attempted)) => Ok(self.router.settle(plan, calls, attempted)),
            None => Err(final_error(&self.failures, Calls::ReadOnly)),
        }
    }
}
