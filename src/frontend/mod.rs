//! Client-facing protocol handling, shared by HTTP and WebSocket.

pub mod http;
pub mod ws;

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::jsonrpc::{self, Call, RpcError};
use crate::metrics::{self, CallResult, Metrics};
use crate::policy::DenyList;
use crate::router::{Answer, Framing, Router};
use crate::subscription::{Hub, PendingSubscription, SessionHandle};

/// What the front end needs to answer a client call.
pub struct Frontend {
    /// Routes calls to upstreams.
    pub router: Arc<Router>,
    /// Client subscriptions.
    pub hub: Arc<Hub>,
    /// Methods refused outright (swapped on reload).
    pub deny: arc_swap::ArcSwap<DenyList>,
    /// Largest batch accepted.
    pub max_batch_len: usize,
    /// Largest request body or WebSocket message accepted.
    pub max_request_bytes: usize,
    /// Deadline for a request body to arrive after its head.
    pub body_timeout: std::time::Duration,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
    /// Outgoing queue bounds of each WebSocket session.
    pub ws_queue: crate::subscription::QueueLimits,
    /// How sessions are wound down on shutdown.
    pub drain: crate::shutdown::Drain,
}

/// The transport a request came on, and for WebSocket the session it belongs to.
#[derive(Clone, Copy)]
pub enum Transport<'s> {
    /// HTTP POST: no subscriptions.
    Http,
    /// A WebSocket session.
    Ws(&'s Arc<SessionHandle>),
}

impl Transport<'_> {
    fn label(self) -> metrics::Transport {
        match self {
            Transport::Http => metrics::Transport::Http,
            Transport::Ws(_) => metrics::Transport::Ws,
        }
    }
}

/// The answer to one request body.
#[derive(Default)]
pub struct Served {
    /// Response body; `None` when the request held only notifications.
    pub body: Option<Vec<u8>>,
    /// Subscriptions to activate once `body` is queued.
    pub pending: Vec<PendingSubscription>,
}

/// A call answered without an upstream.
enum Local {
    Error(RpcError, CallResult),
    Result(String),
}

impl Frontend {
    /// Decodes a request body and answers it.
    pub async fn serve(&self, transport: Transport<'_>, body: &[u8]) -> Served {
        let started = tokio::time::Instant::now();
        // A guard, so a call dropped mid-way (client gone, shutdown) still leaves the gauge.
        let _inflight = InFlight::enter(&self.metrics);
        let served = self.answer(transport, body).await;
        self.metrics
            .request_duration(transport.label(), started.elapsed());
        served
    }

    async fn answer(&self, transport: Transport<'_>, body: &[u8]) -> Served {
        let mut served = Served::default();
        served.body = match jsonrpc::decode(body, self.max_batch_len) {
            Err(error) => {
                self.metrics
                    .request(transport.label(), "other", CallResult::Invalid);
                Some(jsonrpc::error_body(None, &error))
            }
            Ok(jsonrpc::Incoming::Single(Err(rejected))) => {
                self.metrics
                    .request(transport.label(), "other", CallResult::Invalid);
                Some(jsonrpc::error_body(rejected.id, &rejected.error))
            }
            Ok(jsonrpc::Incoming::Single(Ok(call))) => {
                self.serve_single(transport, &call, &mut served.pending)
                    .await
            }
            Ok(jsonrpc::Incoming::Batch(items)) => {
                self.serve_batch(transport, items, &mut served.pending)
                    .await
            }
        };
        served
    }

    async fn serve_single(
        &self,
        transport: Transport<'_>,
        call: &Call<'_>,
        pending: &mut Vec<PendingSubscription>,
    ) -> Option<Vec<u8>> {
        if let Some(local) = self.local(&self.deny.load(), transport, call, pending) {
            return self.render_local(transport, call, local);
        }
        match self.router.forward(&[call], Framing::Single).await {
            Ok(mut answers) => {
                let answer = answers.pop().flatten();
                self.count(transport, call, answer.as_ref());
                Some(answer?.body(call.id?))
            }
            Err(error) => {
                self.metrics
                    .request(transport.label(), &call.method, CallResult::Unavailable);
                call.id.map(|id| jsonrpc::error_body(Some(id), &error))
            }
        }
    }

    /// Answers a batch: invalid and local items at once, the rest in one forward; the reply is
    /// written in the client's order straight into one buffer.
    async fn serve_batch(
        &self,
        transport: Transport<'_>,
        items: Vec<jsonrpc::Decoded<'_>>,
        pending: &mut Vec<PendingSubscription>,
    ) -> Option<Vec<u8>> {
        // Empty and over-long batches were refused while decoding.
        let deny = self.deny.load();
        let mut slots: Vec<Slot> = Vec::with_capacity(items.len());
        let mut forwarded: Vec<&Call<'_>> = Vec::with_capacity(items.len());
        // The last method found to need no local answer: batches mostly repeat one method,
        // and a repeat is then one comparison instead of the deny list and the local methods.
        let mut plain: Option<&str> = None;
        for item in &items {
            slots.push(match item {
                Err(rejected) => {
                    self.metrics
                        .request(transport.label(), "other", CallResult::Invalid);
                    Slot::Done(Some(jsonrpc::error_body(rejected.id, &rejected.error)))
                }
                Ok(call) if plain == Some(&*call.method) => {
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
        drop(deny);
        let answers = if forwarded.is_empty() {
            Ok(Vec::new())
        } else {
            self.router.forward(&forwarded, Framing::Batch).await
        };
        let mut out = BatchBody::new(items.len());
        let mut tally = Tally::new(transport, &self.metrics);
        let mut forwarded = forwarded.into_iter();
        let mut answers = answers.as_ref().map(|a| a.iter());
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

    /// Calls answered by ethgate itself: denied methods, subscriptions, and `eth_chainId` and
    /// `net_version` once the chain id is verified. Every method named below must be listed
    /// in [`answers_locally`], which lets a batch skip this for repeats of other methods.
    fn local(
        &self,
        deny: &DenyList,
        transport: Transport<'_>,
        call: &Call<'_>,
        pending: &mut Vec<PendingSubscription>,
    ) -> Option<Local> {
        let method = call.method.as_ref();
        if deny.denies(method) {
            return Some(Local::Error(
                jsonrpc::method_not_allowed(method),
                CallResult::Denied,
            ));
        }
        match (method, transport) {
            ("eth_subscribe" | "eth_unsubscribe", Transport::Http) => Some(Local::Error(
                jsonrpc::NOTIFICATIONS_UNSUPPORTED,
                CallResult::Invalid,
            )),
            // A subscription nobody can learn the id of would only leak.
            ("eth_subscribe", Transport::Ws(_)) if call.id.is_none() => {
                Some(Local::Error(jsonrpc::INVALID_REQUEST, CallResult::Invalid))
            }
            ("eth_subscribe", Transport::Ws(session)) => {
                Some(match self.hub.prepare(call.params, session) {
                    Ok(subscription) => {
                        let result = format!("\"{}\"", subscription.id());
                        pending.push(subscription);
                        Local::Result(result)
                    }
                    Err(error) => Local::Error(error, CallResult::Invalid),
                })
            }
            ("eth_unsubscribe", Transport::Ws(session)) => {
                Some(self.unsubscribe(session, call.params))
            }
            ("eth_chainId", _) => {
                let chain_id = self.router.upstreams().chain_id()?;
                Some(Local::Result(format!("\"0x{chain_id:x}\"")))
            }
            // geth answers the network id, which equals the chain id on every chain a
            // Chainlink node uses; answering it from the verified id keeps it stable across
            // failovers (an upstream on another chain is out of rotation anyway).
            ("net_version", _) => {
                let chain_id = self.router.upstreams().chain_id()?;
                Some(Local::Result(format!("\"{chain_id}\"")))
            }
            _ => None,
        }
    }

    fn unsubscribe(&self, session: &SessionHandle, params: Option<&RawValue>) -> Local {
        let id: Option<String> = params
            .and_then(|p| serde_json::from_str::<Vec<String>>(p.get()).ok())
            .and_then(|ids| ids.into_iter().next());
        match id {
            Some(id) if self.hub.unsubscribe(session.id(), &id) => Local::Result("true".into()),
            // geth's answer for an id this connection does not hold.
            Some(_) => Local::Error(
                RpcError::new(jsonrpc::code::SERVER_ERROR, "subscription not found"),
                CallResult::RpcError,
            ),
            None => Local::Error(
                RpcError::new(jsonrpc::code::INVALID_PARAMS, "invalid params"),
                CallResult::Invalid,
            ),
        }
    }

    fn render_local(
        &self,
        transport: Transport<'_>,
        call: &Call<'_>,
        local: Local,
    ) -> Option<Vec<u8>> {
        let label = match &local {
            Local::Error(_, label) => *label,
            Local::Result(_) => CallResult::Ok,
        };
        self.metrics.request(transport.label(), &call.method, label);
        let id = call.id?;
        let mut out = Vec::with_capacity(96);
        match local {
            Local::Error(error, _) => jsonrpc::encode_error(&mut out, Some(id), &error),
            Local::Result(result) => jsonrpc::encode_result(&mut out, id, &result),
        }
        Some(out)
    }

    fn count(&self, transport: Transport<'_>, call: &Call<'_>, answer: Option<&Answer>) {
        self.metrics
            .request(transport.label(), &call.method, result_of(answer));
    }
}

/// One call counted in the in-flight gauge for as long as it lives.
struct InFlight<'m>(&'m Metrics);

impl<'m> InFlight<'m> {
    fn enter(metrics: &'m Metrics) -> Self {
        metrics.inflight(1);
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight(-1);
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

/// How a forwarded call is counted: its answer's error flag (a notification's too).
fn result_of(answer: Option<&Answer>) -> CallResult {
    if answer.is_some_and(|a| a.is_error) {
        CallResult::RpcError
    } else {
        CallResult::Ok
    }
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
            Some((m, r, n)) if *m == method && *r == result => *n += 1,
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
