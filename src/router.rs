//! The router: tries in-rotation upstreams in order (sticky choice first), classifies every
//! failure, and decides from that class and the methods involved whether the next candidate
//! may be tried. Reads are kept monotonic ([`consistency`]); writes are broadcast to every
//! in-rotation upstream ([`broadcast`]).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::time::timeout;

use serde_json::value::RawValue;

use crate::jsonrpc::{self, Call, RpcError, UpstreamResponse};
use crate::metrics::Metrics;
use crate::policy;
use crate::upstream::{AttemptResult, SendError, Upstream, Upstreams};

mod broadcast;
mod consistency;
pub mod marks;
mod race;
pub mod tags;
mod txhash;

use consistency::{Plan, Verdict};
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
            AttemptError::Send(SendError::NoAnswer(_)) => AttemptResult::NoAnswer,
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

/// One response spliced under the client's id, complete: what [`splice`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The complete response object.
    pub body: Vec<u8>,
    /// Whether it carries a JSON-RPC error.
    pub is_error: bool,
}

/// The member of a response object that carries the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Result,
    Error,
}

/// One response without its id: the front end writes it under the call's id straight into
/// the reply body ([`Answer::write`]). A relayed value is a slice of the upstream's answer
/// (a reference count, no copy), so a batch of n calls costs no n allocations here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    member: Member,
    /// The member's JSON value, exactly as the upstream wrote it or as ethgate made it.
    value: Bytes,
    /// Whether it carries a JSON-RPC error.
    pub is_error: bool,
}

impl Answer {
    /// A result ethgate made (`value` is JSON text).
    pub fn result(value: impl Into<Bytes>) -> Answer {
        Answer {
            member: Member::Result,
            value: value.into(),
            is_error: false,
        }
    }

    /// An error ethgate made.
    pub fn error(error: &RpcError) -> Answer {
        let mut value = Vec::with_capacity(64);
        jsonrpc::encode_error_object(&mut value, error);
        Answer {
            member: Member::Error,
            value: value.into(),
            is_error: true,
        }
    }

    /// The upstream's `response` (which borrows from `answer`) as relayed: its error when
    /// that is not `null`, else its result, else a `null` result.
    fn relayed(answer: &Bytes, response: &UpstreamResponse<'_>) -> Answer {
        let (member, value) = match (response.error, response.result) {
            (Some(error), _) if error.get() != "null" => (Member::Error, error),
            (_, Some(result)) => (Member::Result, result),
            _ => {
                return Answer {
                    member: Member::Result,
                    value: Bytes::from_static(b"null"),
                    is_error: false,
                }
            }
        };
        Answer {
            member,
            // `value` borrows from `answer` (parsed in place), so this is a sub-slice of it.
            value: answer.slice_ref(value.get().as_bytes()),
            is_error: member == Member::Error,
        }
    }

    /// Appends the response object under the client's `id`.
    pub fn write(&self, out: &mut Vec<u8>, id: &RawValue) {
        out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
        out.extend_from_slice(id.get().as_bytes());
        out.extend_from_slice(match self.member {
            Member::Result => b",\"result\":",
            Member::Error => b",\"error\":",
        });
        out.extend_from_slice(&self.value);
        out.push(b'}');
    }

    /// The complete response object under the client's `id`.
    pub fn body(&self, id: &RawValue) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.value.len() + id.get().len() + 32);
        self.write(&mut out, id);
        out
    }
}

/// Answers, one per forwarded call (`None` for notifications).
pub type Rendered = Vec<Option<Answer>>;

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
    verdicts: Vec<Verdict>,
}

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
        let answer = self.post(upstream, encode(calls, &pins, framing)).await?;
        render(&answer, calls, framing, |i, response| {
            plan.judge(i, pins[i].is_some(), response, &self.marks)
        })
        .map_err(AttemptError::BadAnswer)
    }

    /// POSTs `body` to `upstream` within the request budget.
    async fn post(&self, upstream: &Upstream, body: Bytes) -> Result<Bytes, AttemptError> {
        Ok(timeout(self.request_timeout, upstream.post(body))
            .await
            .map_err(|_| AttemptError::Timeout(self.request_timeout))??)
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

/// Encodes the forwarded calls with ethgate's ids `0..n`; `pins[i]`, when present, replaces
/// call `i`'s params.
fn encode(calls: &[&Call<'_>], pins: &[Option<Box<RawValue>>], framing: Framing) -> Bytes {
    let batch = framing == Framing::Batch;
    let mut out = Vec::with_capacity(64 + calls.len() * 96);
    if batch {
        out.push(b'[');
    }
    for (i, call) in calls.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let params = pins.get(i).and_then(|p| p.as_deref()).or(call.params);
        jsonrpc::encode_request(&mut out, i as u64, &call.method, params);
    }
    if batch {
        out.push(b']');
    }
    Bytes::from(out)
}

/// Splices an upstream answer into one response per call under the client's ids, judging
/// nothing: the splicing alone, public for the fuzz target and its corpus.
pub fn splice(
    body: &[u8],
    calls: &[&Call<'_>],
    framing: Framing,
) -> Result<Vec<Option<Reply>>, String> {
    let body = Bytes::copy_from_slice(body);
    let attempted = render(&body, calls, framing, |_, _| Verdict::Fine)?;
    Ok(calls
        .iter()
        .zip(attempted.rendered)
        .map(|(call, answer)| {
            let (id, answer) = (call.id?, answer?);
            Some(Reply {
                body: answer.body(id),
                is_error: answer.is_error,
            })
        })
        .collect())
}

/// Splits an upstream answer into one [`Answer`] per call, with `judge`'s verdict on each.
fn render(
    body: &Bytes,
    calls: &[&Call<'_>],
    framing: Framing,
    mut judge: impl FnMut(usize, &UpstreamResponse<'_>) -> Verdict,
) -> Result<Attempted, String> {
    let answers = match_answers(body, calls.len(), framing)?;
    let mut verdicts = Vec::with_capacity(calls.len());
    let mut rendered = Vec::with_capacity(calls.len());
    for (i, (call, answer)) in calls.iter().zip(&answers).enumerate() {
        if answer.result.is_none() && answer.error.is_none() {
            return Err(format!("answer {i} has neither result nor error"));
        }
        verdicts.push(judge(i, answer));
        rendered.push(call.id.map(|_| Answer::relayed(body, answer)));
    }
    Ok(Attempted { rendered, verdicts })
}

/// The upstream's answers in call order: a batch answer may come in any order, and is matched
/// by ethgate's ids `0..n` in one pass.
fn match_answers(
    body: &[u8],
    n: usize,
    framing: Framing,
) -> Result<Vec<UpstreamResponse<'_>>, String> {
    // UTF-8 checked once for the whole answer rather than by serde_json string by string.
    let body = std::str::from_utf8(body).map_err(|e| format!("not a JSON-RPC answer: {e}"))?;
    if framing == Framing::Single {
        let answer =
            serde_json::from_str(body).map_err(|e| format!("not a JSON-RPC answer: {e}"))?;
        return Ok(vec![answer]);
    }
    let answers: Vec<UpstreamResponse> =
        serde_json::from_str(body).map_err(|e| format!("not a JSON-RPC batch answer: {e}"))?;
    let mut slots: Vec<Option<UpstreamResponse>> = (0..n).map(|_| None).collect();
    for answer in answers {
        let slot = answer
            .numeric_id()
            .and_then(|id| usize::try_from(id).ok())
            .and_then(|id| slots.get_mut(id))
            .ok_or("batch answer carries an id that was not sent")?;
        if slot.replace(answer).is_some() {
            return Err("batch answer repeats an id".into());
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, slot)| slot.ok_or_else(|| format!("batch answer lacks id {i}")))
        .collect()
}

#[cfg(test)]
mod tests;
