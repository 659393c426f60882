//! The router: tries in-rotation upstreams in order (sticky choice first), classifies every
//! failure, and decides from that class and the methods involved whether the next candidate
//! may be tried. Reads are kept monotonic ([`consistency`]); writes are broadcast to every
//! in-rotation upstream ([`broadcast`]).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::timeout;

use crate::jsonrpc::{self, Call, RpcError};
use crate::metrics::Metrics;
use crate::policy;
use crate::upstream::{AttemptResult, SendError, Upstream, Upstreams};

mod answer;
mod broadcast;
mod consistency;
pub mod marks;
mod race;
pub mod tags;
mod txhash;

use answer::render;
pub use answer::{splice, Answer, Rendered, Reply};
use consistency::{Pins, Plan, Verdict};
use marks::Marks;

/// Why one attempt on one upstream did not produce a final answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// Transport failure, classified by whether the request could have arrived.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No answer within `server.request_timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// An answer that is not a JSON-RPC response to what was sent.
    #[error("invalid answer: {0}")]
    BadAnswer(String),
    /// The upstream left rotation while the call waited on it; the call was moved (a read)
    /// or answered at once (a write), not left to wait for `request_timeout`.
    #[error("left rotation while the call was in flight ({0})")]
    LeftRotation(Arc<str>),
}

impl AttemptError {
    /// Whether the request certainly never reached the upstream.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(self, AttemptError::Send(e) if e.certainly_not_sent())
    }

    /// Whether the next candidate may be tried: always for reads, only when the request
    /// never left ethgate for writes.
    pub fn retryable(&self, calls: Calls) -> bool {
        // Another node would send the same oversized answer: not worth its memory.
        let too_large = matches!(self, AttemptError::Send(SendError::TooLarge(_)));
        !too_large && (calls == Calls::ReadOnly || self.certainly_not_sent())
    }

    /// Whether this failure says something about the upstream's health (passive signal):
    /// only evidence about the node (connect refused, reset), never a timeout, which a slow
    /// or heavy call from a client can cause on a healthy node (its probes judge it instead).
    pub fn counts_against_health(&self) -> bool {
        matches!(self, AttemptError::Send(e) if e.is_node_evidence())
    }

    /// How the attempt is counted on its upstream.
    pub fn label(&self) -> AttemptResult {
        match self {
            AttemptError::Send(SendError::NotSent(_) | SendError::Local(_)) => {
                AttemptResult::NotSent
            }
            AttemptError::Send(SendError::TooLarge(_)) => AttemptResult::TooLarge,
            AttemptError::Send(SendError::NoAnswer(_) | SendError::Collateral(_)) => {
                AttemptResult::NoAnswer
            }
            AttemptError::Send(SendError::Status(_)) => AttemptResult::HttpError,
            AttemptError::Timeout(_) => AttemptResult::Timeout,
            AttemptError::BadAnswer(_) => AttemptResult::BadAnswer,
            AttemptError::LeftRotation(_) => AttemptResult::Abandoned,
        }
    }
}

/// What a forwarded request holds, as far as retrying it elsewhere goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// Reads only: any candidate may be tried next.
    ReadOnly,
    /// At least one write: tried elsewhere only if it certainly never left ethgate.
    WithWrite,
}

/// How calls travel to an upstream, as the client sent them: one request object, or a JSON
/// array (even of one call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A single request object.
    Single,
    /// A batch.
    Batch,
}

/// Routes calls to upstreams.
pub struct Router {
    /// The current upstream set; a reload swaps it while requests in flight keep theirs.
    upstreams: ArcSwap<Upstreams>,
    request_timeout: Duration,
    /// When set, a read with no answer after this long is also sent to the next candidate.
    hedge_after: Option<Duration>,
    /// The highest blocks served under each tag; outlives upstream sets (reloads).
    marks: Marks,
    /// Where in-flight failovers and hedges are counted.
    metrics: Arc<Metrics>,
}

/// One upstream's answer to an attempt, rendered, with a verdict per call.
pub(crate) struct Attempted {
    rendered: Rendered,
    verdicts: Verdicts,
}

/// One verdict per call, held inline for a single call: no allocation for the common case.
type Verdicts = smallvec::SmallVec<[Verdict; 1]>;

impl Attempted {
    fn wants_retry(&self) -> bool {
        self.verdicts.iter().any(Verdict::wants_retry)
    }

    /// Counted as `missing_data` when a call lacked data, else `behind`.
    fn retry_label(&self) -> AttemptResult {
        if self.verdicts.contains(&Verdict::Lacking) {
            AttemptResult::MissingData
        } else {
            AttemptResult::Behind
        }
    }
}

impl Router {
    /// A router over `upstreams` with a per-attempt budget of `request_timeout`, counting
    /// its failovers and hedges in `metrics`.
    pub fn new(
        upstreams: Arc<Upstreams>,
        request_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Router {
            upstreams: ArcSwap::new(upstreams),
            request_timeout,
            hedge_after: None,
            marks: Marks::default(),
            metrics,
        }
    }

    /// Hedges reads after `hedge_after` (`None`: never), see [`race`].
    pub fn with_hedge_after(mut self, hedge_after: Option<Duration>) -> Self {
        self.hedge_after = hedge_after;
        self
    }

    /// The current upstream set.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.load_full()
    }

    /// Replaces the upstream set (reload); requests in flight keep the one they loaded.
    pub fn replace_upstreams(&self, upstreams: Arc<Upstreams>) {
        self.upstreams.store(upstreams);
    }

    /// The highest `latest`, `safe` and `finalized` blocks served so far. A feed that delivers
    /// heads to clients reports them here ([`Marks::observe`]) so calls never answer below.
    pub fn marks(&self) -> &Marks {
        &self.marks
    }

    /// Forwards `calls` (framed as the client sent them) and renders one response per call under
    /// the client's ids. Writes go to every in-rotation upstream ([`broadcast`]); reads go to
    /// one candidate after another until an answer needs no retry, and move at once when their
    /// upstream leaves rotation ([`race`]).
    pub async fn forward(
        &self,
        calls: &[&Call<'_>],
        framing: Framing,
    ) -> Result<Rendered, RpcError> {
        // One set for the whole request, even if a reload swaps it meanwhile.
        let upstreams = self.upstreams.load_full();
        if calls.iter().any(|c| policy::is_write(&c.method)) {
            return broadcast::forward(self, &upstreams, calls, framing).await;
        }
        race::read(self, &upstreams, calls, framing).await
    }

    /// The best answer when no candidate served every call: calls that were behind get the
    /// served value; calls that lacked data keep the upstream's answer.
    fn settle(&self, plan: &Plan, calls: &[&Call<'_>], attempted: Attempted) -> Rendered {
        plan.record(&attempted.verdicts, &self.marks);
        let Attempted {
            mut rendered,
            verdicts,
        } = attempted;
        for (i, verdict) in verdicts.iter().enumerate() {
            if let (Verdict::Behind(tag), Some(_)) = (verdict, calls[i].id) {
                rendered[i] = Some(plan.served_instead(i, *tag, &self.marks));
            }
        }
        rendered
    }

    /// One attempt of `calls` on `upstream`, with tags pinned as the plan says.
    async fn attempt(
        &self,
        upstream: &Upstream,
        calls: &[&Call<'_>],
        framing: Framing,
        plan: &Plan,
    ) -> Result<Attempted, AttemptError> {
        let pins = plan.pins_for(calls, upstream);
        let n = calls.len() as u64;
        let call = upstream.call(n, |base| encode(calls, &pins, framing, base));
        let (answer, base) = timeout(self.request_timeout, call)
            .await
            .map_err(|_| AttemptError::Timeout(self.request_timeout))??;
        render(&answer, base, calls, framing, |i, response| {
            let pinned = pins.get(i).is_some();
            plan.judge(i, pinned, response, &self.marks)
        })
        .map_err(AttemptError::BadAnswer)
    }
}

/// In-rotation upstreams to try, sticky choice first, then by priority.
pub fn candidates(upstreams: &Upstreams) -> Vec<&Arc<Upstream>> {
    upstreams.candidates(Upstream::in_rotation).collect()
}

fn final_error(failures: &[(&Upstream, AttemptError)], calls: Calls) -> RpcError {
    if failures.is_empty() {
        return jsonrpc::NO_HEALTHY_UPSTREAM;
    }
    if failures
        .iter()
        .any(|(_, e)| matches!(e, AttemptError::Send(SendError::TooLarge(_))))
    {
        return jsonrpc::RESPONSE_TOO_LARGE;
    }
    if failures
        .iter()
        .all(|(_, e)| matches!(e, AttemptError::Timeout(_)))
    {
        return jsonrpc::UPSTREAM_TIMEOUT;
    }
    let mut detail: Vec<String> = failures
        .iter()
        .map(|(upstream, e)| format!("{}: {e}", upstream.name()))
        .collect();
    if calls == Calls::WithWrite
        && failures
            .last()
            .is_some_and(|(_, e)| !e.certainly_not_sent())
    {
        detail.push("a write that may have reached an upstream is not retried".into());
    }
    jsonrpc::NO_HEALTHY_UPSTREAM.with_data(detail.join("; "))
}

/// Encodes the forwarded calls with ethgate's ids `base..base + n`; a pin replaces its call's
/// params.
fn encode(calls: &[&Call<'_>], pins: &Pins, framing: Framing, base: u64) -> Vec<u8> {
    let batch = framing == Framing::Batch;
    let mut out = Vec::with_capacity(64 + calls.len() * 96);
    if batch {
        out.push(b'[');
    }
    for (i, call) in calls.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        jsonrpc::encode_call(&mut out, base + i as u64, call, pins.get(i));
    }
    if batch {
        out.push(b']');
    }
    out
}

#[cfg(test)]
mod tests;
