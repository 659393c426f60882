//! Batches: invalid and local items answered at once, the rest forwarded in one request, and
//! the reply written in the client's order straight into one buffer.

use super::{result_of, Frontend, Transport};
use crate::jsonrpc::{self, Call, RpcError};
use crate::metrics::{self, CallResult, Metrics};
use crate::router::{Framing, Rendered};
use crate::subscription::PendingSubscription;

impl Frontend {
    /// Answers a batch: invalid and local items at once, the rest in one forward; the reply is
    /// written in the client's order straight into one buffer.
    pub(super) async fn serve_batch(
        &self,
        transport: Transport<'_>,
        items: Vec<jsonrpc::Decoded<'_>>,
        pending: &mut Vec<PendingSubscription>,
    ) -> Option<Vec<u8>> {
        // Empty and over-long batches were refused while decoding.
        let (slots, forwarded) = self.sort(transport, &items, pending);
        let answers = if forwarded.is_empty() {
            Ok(Rendered::new())
        } else {
            self.router.forward(&forwarded, Framing::Batch).await
        };
        self.write_batch(transport, slots, forwarded, answers.as_ref())
    }

    /// Answers the invalid and local items of a batch, and lists the calls to forward.
    fn sort<'c>(
        &self,
        transport: Transport<'_>,
        items: &'c [jsonrpc::Decoded<'c>],
        pending: &mut Vec<PendingSubscription>,
    ) -> (Vec<Slot>, Vec<&'c Call<'c>>) {
        let deny = self.deny.load();
        let mut slots: Vec<Slot> = Vec::with_capacity(items.len());
        let mut forwarded: Vec<&Call<'_>> = Vec::with_capacity(items.len());
        // The last method found to need no local answer: batches mostly repeat one method,
        // and a repeat is then one comparison instead of the deny list and the local methods.
        let mut plain: Option<&str> = None;
        for item in items {
            slots.push(match item {
                Err(rejected) => {
                    self.metrics
                        .request(transport.label(), "other", CallResult::Invalid);
                    Slot::Done(Some(jsonrpc::error_body(rejected.id, &rejected.error)))
                }
                Ok(call) if plain.is_some_and(|plain| same_method(plain, &call.method)) => {
                    forwarded.push(call);
                    Slot::Forwarded
                }
                Ok(call) => match self.local(&deny, transport, call, pending) {
                    Some(local) => Slot::Done(self.render_local(transport, call, local)),
                    None => {
                        if !answers_locally(&call.method) {
                            plain = Some(&call.method);
                        }
                        forwarded.push(call);
                        Slot::Forwarded
                    }
                },
            });
        }
        (slots, forwarded)
    }

    /// Writes the batch reply in the client's order, counting each forwarded call.
    fn write_batch(
        &self,
        transport: Transport<'_>,
        slots: Vec<Slot>,
        forwarded: Vec<&Call<'_>>,
        answers: Result<&Rendered, &RpcError>,
    ) -> Option<Vec<u8>> {
        let mut out = BatchBody::new(slots.len());
        let mut tally = Tally::new(transport, &self.metrics);
        let mut forwarded = forwarded.into_iter();
        let mut answers = answers.map(|a| a.iter());
        for slot in slots {
            let Slot::Forwarded = slot else {
                if let Slot::Done(Some(part)) = slot {
                    out.element().extend_from_slice(&part);
                }
                continue;
            };
            // One call per `Forwarded` slot, and the router answers every call it was given.
            let Some(call) = forwarded.next() else { break };
            match &mut answers {
                Ok(answers) => {
                    let answer = answers.next().and_then(Option::as_ref);
                    tally.add(&call.method, result_of(answer));
                    if let (Some(id), Some(answer)) = (call.id, answer) {
                        answer.write(out.element(), id);
                    }
                }
                Err(error) => {
                    tally.add(&call.method, CallResult::Unavailable);
                    if let Some(id) = call.id {
                        jsonrpc::encode_error(out.element(), Some(id), error);
                    }
                }
            }
        }
        out.finish()
    }
}

/// Whether [`Frontend::local`] may answer `method` itself (depending on more than the name):
/// calls of any other method that is not denied always go to an upstream.
fn answers_locally(method: &str) -> bool {
    matches!(
        method,
        "eth_subscribe" | "eth_unsubscribe" | "eth_chainId" | "net_version"
    )
}

/// Whether two method names are equal. Batches compare each call's method with the one before
/// it twice (sorting, counting): names of 8 to 16 bytes, most of them, are compared by two
/// word loads each instead of a `memcmp` call.
#[inline(always)]
fn same_method(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let words = |s: &[u8]| {
        let first = s.first_chunk::<8>().copied().map(u64::from_ne_bytes);
        let last = s.last_chunk::<8>().copied().map(u64::from_ne_bytes);
        (first, last)
    };
    if a.len() <= 16 {
        if let ((Some(a0), Some(a1)), (Some(b0), Some(b1))) = (words(a), words(b)) {
            return a0 == b0 && a1 == b1;
        }
    }
    a == b
}

/// Counts forwarded calls by runs of one method and result, so a batch of repeats looks its
/// method label up once per run; the last run is counted on drop.
struct Tally<'a> {
    transport: metrics::Transport,
    metrics: &'a Metrics,
    run: Option<(&'a str, CallResult, u64)>,
}

impl<'a> Tally<'a> {
    fn new(transport: Transport<'_>, metrics: &'a Metrics) -> Self {
        Tally {
            transport: transport.label(),
            metrics,
            run: None,
        }
    }

    fn add(&mut self, method: &'a str, result: CallResult) {
        match &mut self.run {
            Some((m, r, n)) if *r == result && same_method(m, method) => *n += 1,
            run => {
                if let Some((m, r, n)) = run.replace((method, result, 1)) {
                    self.metrics.requests(self.transport, m, r, n);
                }
            }
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if let Some((method, result, n)) = self.run.take() {
            self.metrics.requests(self.transport, method, result, n);
        }
    }
}

/// Where one batch item's answer comes from.
enum Slot {
    /// Answered without an upstream (`None`: a notification).
    Done(Option<Vec<u8>>),
    /// The next of the forwarded calls.
    Forwarded,
}

/// A batch reply being written: a JSON array of the answers; a batch of notifications only
/// gets no body.
struct BatchBody {
    out: Vec<u8>,
    /// Bytes to reserve at the first element.
    expected: usize,
}

impl BatchBody {
    /// A reply to `items` elements; nothing is allocated until the first one is written.
    fn new(items: usize) -> Self {
        BatchBody {
            out: Vec::new(),
            // A read's answer is typically under 64 bytes: one reservation instead of the
            // doublings of a growing reply; larger answers grow it as before.
            expected: items.saturating_mul(64).saturating_add(2),
        }
    }

    /// The buffer to append the next element to, after its separator.
    fn element(&mut self) -> &mut Vec<u8> {
        if self.out.is_empty() {
            self.out.reserve(self.expected);
            self.out.push(b'[');
        } else {
            self.out.push(b',');
        }
        &mut self.out
    }

    fn finish(mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            return None;
        }
        self.out.push(b']');
        Some(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_body_is_an_array_of_its_elements_or_nothing() {
        assert_eq!(BatchBody::new(3).finish(), None);
        let mut body = BatchBody::new(2);
        body.element().extend_from_slice(b"{\"a\":1}");
        body.element().extend_from_slice(b"{}");
        assert_eq!(body.finish().as_deref(), Some(&b"[{\"a\":1},{}]"[..]));
    }

    #[test]
    fn method_names_are_equal_exactly_when_their_bytes_are() {
        let names = [
            "",
            "a",
            "eth_cal",
            "eth_call",
            "eth_calm",
            "fth_call",
            "eth_blockNumber",
            "eth_blockNumbes",
            "fth_blockNumber",
            "eth_getBlockByNum",
            "eth_getBlockByNumber",
            "eth_getBlockByNumbes",
            "eth_getBlockByNumbér",
        ];
        for a in names {
            for b in names {
                // Equal texts at other addresses, as two calls of a batch hold them.
                let copy = String::from(b);
                assert_eq!(same_method(a, b), a == b, "{a:?} {b:?}");
                assert_eq!(same_method(a, copy.as_str()), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn a_tally_counts_every_call_under_its_own_series() {
        let (tallied, one_by_one) = (Metrics::new(), Metrics::new());
        let calls = [
            ("eth_blockNumber", CallResult::Ok),
            ("eth_blockNumber", CallResult::Ok),
            ("eth_blockNumber", CallResult::RpcError),
            ("eth_call", CallResult::Ok),
            ("eth_blockNumber", CallResult::Ok),
            ("eth_madeUp", CallResult::Unavailable),
        ];
        {
            let mut tally = Tally::new(Transport::Http, &tallied);
            for (method, result) in calls {
                tally.add(method, result);
            }
        }
        for (method, result) in calls {
            one_by_one.request(metrics::Transport::Http, method, result);
        }
        assert_eq!(tallied.render(), one_by_one.render());
    }
}
