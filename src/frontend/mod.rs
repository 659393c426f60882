//! Client-facing protocol handling, shared by HTTP and WebSocket.

mod batch;
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
        self.serve_decoded(transport, || jsonrpc::decode(body, self.max_batch_len))
            .await
    }

    /// [`Frontend::serve`] for a body known to be UTF-8 (a WebSocket text message).
    pub async fn serve_text(&self, transport: Transport<'_>, body: &str) -> Served {
        self.serve_decoded(transport, || jsonrpc::decode_text(body, self.max_batch_len))
            .await
    }

    async fn serve_decoded<'b>(
        &self,
        transport: Transport<'_>,
        decode: impl FnOnce() -> Result<jsonrpc::Incoming<'b>, RpcError>,
    ) -> Served {
        let started = tokio::time::Instant::now();
        // A guard, so a call dropped mid-way (client gone, shutdown) still leaves the gauge.
        let _inflight = InFlight::enter(&self.metrics);
        let served = self.answer(transport, decode()).await;
        self.metrics
            .request_duration(transport.label(), started.elapsed());
        served
    }

    async fn answer(
        &self,
        transport: Transport<'_>,
        decoded: Result<jsonrpc::Incoming<'_>, RpcError>,
    ) -> Served {
        let mut served = Served::default();
        served.body = match decoded {
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

/// How a forwarded call is counted: its answer's error flag (a notification's too).
pub(super) fn result_of(answer: Option<&Answer>) -> CallResult {
    if answer.is_some_and(|a| a.is_error) {
        CallResult::RpcError
    } else {
        CallResult::Ok
    }
}
