//! Writes (`eth_sendRawTransaction` and the like) go to every in-rotation upstream at once,
//! each exactly once: a transaction must not depend on one node's mempool and peers. The
//! client gets the first full acceptance; without one, the selected upstream's answer once
//! every upstream has answered or left rotation (a frozen node is not waited for).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::consistency::Verdict;
use super::{
    candidates, encode, final_error, render, Answer, AttemptError, Calls, Framing, Pins, Rendered,
    Router,
};
use crate::jsonrpc::{Call, RpcError, UpstreamResponse};
use crate::policy;
use crate::upstream::{AttemptResult, Upstream, Upstreams};

/// What one upstream said to one call of a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acceptance {
    /// A result (for a send: the transaction hash).
    Accepted,
    /// An error saying the node already has the transaction: it is in that node's pool.
    AlreadyKnown,
    /// Any other error.
    Refused,
}

impl Acceptance {
    fn of(answer: &UpstreamResponse<'_>) -> Acceptance {
        match answer.error_summary() {
            None if answer.error.is_none_or(|e| e.get() == "null") => Acceptance::Accepted,
            Some((_, message)) if policy::is_already_known(&message) => Acceptance::AlreadyKnown,
            _ => Acceptance::Refused,
        }
    }
}

/// Whether the selected upstream (first candidate) is among the answers, as their first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Primary {
    /// It answered: the first answer is its.
    Answered,
    /// It has not answered (yet): every answer is another upstream's.
    Silent,
}

/// One upstream's rendered answer with the acceptance of each call.
pub(super) struct Answered {
    rendered: Rendered,
    acceptance: Vec<Acceptance>,
}

/// Sends `calls` to every in-rotation upstream concurrently and picks the answers. Each send
/// runs as its own task, so answering the client early (an upstream accepted every call) never
/// cancels a send that is on its way to another node.
pub(super) async fn forward(
    router: &Router,
    upstreams: &Arc<Upstreams>,
    calls: &[&Call<'_>],
    framing: Framing,
) -> Result<Rendered, RpcError> {
    let order = candidates(upstreams);
    let body = Bytes::from(encode(calls, &Pins::default(), framing, 0));
    let mut rx = spawn_sends(upstreams, &order, body, router.request_timeout);
    let mut answers: Vec<Option<Answered>> = order.iter().map(|_| None).collect();
    let mut failures = Vec::new();
    while let Some((rank, outcome)) = rx.recv().await {
        let accepted = match outcome.and_then(|answer| judge(&answer, calls, framing)) {
            Ok(answered) => {
                let all = answered
                    .acceptance
                    .iter()
                    .all(|a| *a == Acceptance::Accepted);
                answers[rank] = Some(answered);
                all
            }
            Err(error) => {
                failures.push((&**order[rank], error));
                false
            }
        };
        // Any upstream's full acceptance settles the answer (`choose` prefers acceptances), so
        // the client never waits for a slower or frozen node.
        if accepted {
            break;
        }
    }
    let primary = match answers.first() {
        Some(Some(_)) => Primary::Answered,
        _ => Primary::Silent,
    };
    let answered: Vec<Answered> = answers.into_iter().flatten().collect();
    if answered.is_empty() {
        return Err(final_error(&failures, Calls::WithWrite));
    }
    Ok(choose(calls, answered, primary))
}

/// Starts one send per upstream of `order`, each its own task; each reports its outcome
/// with its rank in `order` on the returned channel.
fn spawn_sends(
    upstreams: &Arc<Upstreams>,
    order: &[&Arc<Upstream>],
    body: Bytes,
    request_timeout: Duration,
) -> mpsc::Receiver<(usize, Result<Bytes, AttemptError>)> {
    let (tx, rx) = mpsc::channel(order.len().max(1));
    for (rank, &upstream) in order.iter().enumerate() {
        let (tx, upstreams, body) = (tx.clone(), upstreams.clone(), body.clone());
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let send = send_once(&upstreams, &upstream, body, request_timeout);
            tokio::pin!(send);
            // A node that leaves rotation mid-send is reported at once, so the client does
            // not wait for a frozen node; its send is never repeated, but is let run (within
            // `request_timeout`) so a node that wakes up still gets the transaction.
            let (report, still_sending) = tokio::select! {
                biased;
                outcome = &mut send => (outcome, false),
                reason = upstream.left_rotation() => (Err(AttemptError::LeftRotation(reason)), true),
            };
            // The receiver is gone once the client has its answer; the send itself goes on.
            let _ = tx.send((rank, report)).await;
            drop(tx);
            if still_sending {
                let _ = send.await;
            }
        });
    }
    rx
}

/// One send to `upstream`, counted on it; never retried.
async fn send_once(
    upstreams: &Upstreams,
    upstream: &Upstream,
    body: Bytes,
    request_timeout: Duration,
) -> Result<Bytes, AttemptError> {
    let started = tokio::time::Instant::now();
    let outcome = match timeout(request_timeout, upstream.post(body)).await {
        Ok(answer) => answer.map_err(AttemptError::Send),
        Err(_) => Err(AttemptError::Timeout(request_timeout)),
    };
    upstream.observe_attempt(started.elapsed());
    match &outcome {
        Ok(_) => upstream.count_attempt(AttemptResult::Ok),
        Err(error) => {
            upstream.count_attempt(error.label());
            if error.counts_against_health() {
                upstreams.record_passive_failure(upstream, &error.to_string());
            }
        }
    }
    outcome
}

/// Renders one upstream's answer and notes which calls it accepted.
fn judge(answer: &Bytes, calls: &[&Call<'_>], framing: Framing) -> Result<Answered, AttemptError> {
    let mut acceptance = Vec::with_capacity(calls.len());
    let attempted = render(answer, 0, calls, framing, |_, response| {
        acceptance.push(Acceptance::of(response));
        Verdict::Fine
    })
    .map_err(AttemptError::BadAnswer)?;
    Ok(Answered {
        rendered: attempted.rendered,
        acceptance,
    })
}

/// Picks one reply per call from the answers (in candidate order; the selected upstream's
/// first when the `primary` answered; the ones still on their way when the selected upstream
/// accepted every call are not waited for). A write gets the primary's acceptance, else another
/// upstream's acceptance (a result first, then "already known"), else the primary's error
/// verbatim. Other calls of the batch get the first answer.
pub(super) fn choose(
    calls: &[&Call<'_>],
    mut answered: Vec<Answered>,
    primary: Primary,
) -> Rendered {
    (0..calls.len())
        .map(|i| {
            let pick = if policy::is_write(&calls[i].method) {
                let accepted =
                    |wanted: Acceptance| answered.iter().position(|a| a.acceptance[i] == wanted);
                let primary_accepted = primary == Primary::Answered
                    && answered[0].acceptance[i] != Acceptance::Refused;
                if primary_accepted && answered[0].acceptance[i] == Acceptance::Accepted {
                    0
                } else {
                    accepted(Acceptance::Accepted)
                        .or(primary_accepted.then_some(0))
                        .or_else(|| accepted(Acceptance::AlreadyKnown))
                        .unwrap_or(0)
                }
            } else {
                0
            };
            let reply = answered[pick].rendered[i].take();
            let known_only = answered[pick].acceptance[i] == Acceptance::AlreadyKnown;
            if known_only {
                return already_known_as_success(calls[i]).or(reply);
            }
            reply
        })
        .collect()
}

/// A send that no node took afresh but some already hold is accepted: the client gets the
/// transaction's hash, as a first send would have answered, rather than an error that would
/// make it resend or give up.
fn already_known_as_success(call: &Call<'_>) -> Option<Answer> {
    if call.method != "eth_sendRawTransaction" {
        return None;
    }
    call.id?;
    let hash = super::txhash::of_send_params(call.params)?;
    Some(Answer::result(hash))
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    /// An answer whose value is `text`, flagged as an error when it says so.
    fn reply(text: &str) -> Option<Answer> {
        Some(Answer::verbatim(text, text.contains("error")))
    }

    fn answer(parts: &[(&str, Acceptance)]) -> Answered {
        Answered {
            rendered: parts.iter().map(|(t, _)| reply(t)).collect(),
            acceptance: parts.iter().map(|(_, a)| *a).collect(),
        }
    }

    fn body(rendered: &Rendered, i: usize) -> String {
        String::from_utf8(rendered[i].as_ref().unwrap().value().to_vec()).unwrap()
    }

    use Acceptance::*;

    fn send<'a>(id: &'a RawValue) -> Call<'a> {
        Call::new(Some(id), "eth_sendRawTransaction".into(), None)
    }

    #[test]
    fn the_selected_upstreams_acceptance_wins() {
        let id = RawValue::from_string("1".into()).unwrap();
        let call = send(&id);
        let picked = choose(
            &[&call],
            vec![
                answer(&[("hash-a", Accepted)]),
                answer(&[("hash-b", Accepted)]),
            ],
            Primary::Answered,
        );
        assert_eq!(body(&picked, 0), "hash-a");
    }

    #[test]
    fn another_upstreams_acceptance_replaces_the_selected_ones_error() {
        let id = RawValue::from_string("1".into()).unwrap();
        let call = send(&id);
        let picked = choose(
            &[&call],
            vec![
                answer(&[("error nonce too low", Refused)]),
                answer(&[("error already known", AlreadyKnown)]),
                answer(&[("hash-c", Accepted)]),
            ],
            Primary::Answered,
        );
        assert_eq!(body(&picked, 0), "hash-c");
        // Only "already known" elsewhere: that acceptance is passed on.
        let picked = choose(
            &[&call],
            vec![
                answer(&[("error underpriced", Refused)]),
                answer(&[("error already known", AlreadyKnown)]),
            ],
            Primary::Answered,
        );
        assert_eq!(
            body(&picked, 0),
            "error already known",
            "no raw transaction: as answered"
        );
    }

    #[test]
    fn a_send_only_known_already_is_answered_with_its_hash() {
        let id = RawValue::from_string("7".into()).unwrap();
        let raw = RawValue::from_string(r#"["0xf86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83"]"#.into()).unwrap();
        let call = Call::new(Some(&id), "eth_sendRawTransaction".into(), Some(&raw));
        let picked = choose(
            &[&call],
            vec![
                answer(&[("error underpriced", Refused)]),
                answer(&[("error already known", AlreadyKnown)]),
            ],
            Primary::Answered,
        );
        let reply = picked[0].as_ref().expect("an answer");
        assert_eq!(
            String::from_utf8(reply.body(&id)).unwrap(),
            r#"{"jsonrpc":"2.0","id":7,"result":"0x33469b22e9f636356c4160a87eb19df52b7412e8eac32a4a55ffe88ea8350788"}"#
        );
        assert!(!reply.is_error);
    }

    #[test]
    fn when_none_accepted_the_selected_error_passes_verbatim() {
        let id = RawValue::from_string("1".into()).unwrap();
        let call = send(&id);
        let picked = choose(
            &[&call],
            vec![
                answer(&[("error insufficient funds", Refused)]),
                answer(&[("error nonce too low", Refused)]),
            ],
            Primary::Answered,
        );
        assert_eq!(body(&picked, 0), "error insufficient funds");
        // The selected upstream did not answer at all: the first answer stands in.
        let picked = choose(
            &[&call],
            vec![answer(&[("error nonce too low", Refused)])],
            Primary::Silent,
        );
        assert_eq!(body(&picked, 0), "error nonce too low");
    }

    #[test]
    fn selected_already_known_gives_way_to_a_hash() {
        let id = RawValue::from_string("1".into()).unwrap();
        let call = send(&id);
        let picked = choose(
            &[&call],
            vec![
                answer(&[("error already known", AlreadyKnown)]),
                answer(&[("hash-b", Accepted)]),
            ],
            Primary::Answered,
        );
        assert_eq!(body(&picked, 0), "hash-b");
    }

    #[test]
    fn reads_in_a_batch_with_a_write_take_the_first_answer() {
        let id = RawValue::from_string("1".into()).unwrap();
        let write = send(&id);
        let read = Call::new(Some(&id), "eth_blockNumber".into(), None);
        let picked = choose(
            &[&read, &write],
            vec![
                answer(&[("0x10", Accepted), ("error x", Refused)]),
                answer(&[("0x11", Accepted), ("hash-b", Accepted)]),
            ],
            Primary::Answered,
        );
        assert_eq!(body(&picked, 0), "0x10");
        assert_eq!(body(&picked, 1), "hash-b");
    }
}
