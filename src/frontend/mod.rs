//! Client-facing protocol handling, shared by every transport.

pub mod http;

use std::sync::Arc;

use crate::jsonrpc::{self, Call, RpcError};
use crate::metrics::Metrics;
use crate::policy::DenyList;
use crate::router::{Reply, Router};

/// What the front end needs to answer a client call.
pub struct Frontend {
    /// Routes calls to upstreams.
    pub router: Arc<Router>,
    /// Methods refused outright.
    pub deny: DenyList,
    /// Largest batch accepted.
    pub max_batch_len: usize,
    /// Largest request body accepted.
    pub max_request_bytes: usize,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
}

/// A call answered without an upstream.
enum Local {
    Error(RpcError, &'static str),
    Result(String),
}

impl Frontend {
    /// Decodes a request body and answers it; `None` when nothing is to be sent back
    /// (only notifications).
    pub async fn serve(&self, transport: &'static str, body: &[u8]) -> Option<Vec<u8>> {
        match jsonrpc::decode(body) {
            Err(error) | Ok(jsonrpc::Incoming::Single(Err(error))) => {
                self.metrics.request(transport, "other", "invalid");
                Some(jsonrpc::error_body(None, &error))
            }
            Ok(jsonrpc::Incoming::Single(Ok(call))) => self.serve_single(transport, &call).await,
            Ok(jsonrpc::Incoming::Batch(items)) => self.serve_batch(transport, items).await,
        }
    }

    async fn serve_single(&self, transport: &'static str, call: &Call<'_>) -> Option<Vec<u8>> {
        if let Some(local) = self.local(transport, call) {
            return self.render_local(transport, call, local);
        }
        match self.router.forward(&[call], false).await {
            Ok(mut replies) => {
                let reply = replies.pop().flatten();
                self.count(transport, call, reply.as_ref());
                reply.map(|r| r.body)
            }
            Err(error) => {
                self.metrics.request(transport, &call.method, "unavailable");
                call.id.map(|id| jsonrpc::error_body(Some(id), &error))
            }
        }
    }

    async fn serve_batch(
        &self,
        transport: &'static str,
        items: Vec<Result<Call<'_>, RpcError>>,
    ) -> Option<Vec<u8>> {
        if items.is_empty() {
            return Some(jsonrpc::error_body(None, &jsonrpc::EMPTY_BATCH));
        }
        if items.len() > self.max_batch_len {
            return Some(jsonrpc::error_body(None, &jsonrpc::BATCH_TOO_LARGE));
        }
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; items.len()];
        let mut forwarded: Vec<(usize, &Call<'_>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Err(error) => {
                    self.metrics.request(transport, "other", "invalid");
                    slots[i] = Some(jsonrpc::error_body(None, error));
                }
                Ok(call) => match self.local(transport, call) {
                    Some(local) => slots[i] = self.render_local(transport, call, local),
                    None => forwarded.push((i, call)),
                },
            }
        }
        if !forwarded.is_empty() {
            let calls: Vec<&Call<'_>> = forwarded.iter().map(|(_, c)| *c).collect();
            match self.router.forward(&calls, true).await {
                Ok(replies) => {
                    for ((i, call), reply) in forwarded.iter().zip(replies) {
                        self.count(transport, call, reply.as_ref());
                        slots[*i] = reply.map(|r| r.body);
                    }
                }
                Err(error) => {
                    for (i, call) in &forwarded {
                        self.metrics.request(transport, &call.method, "unavailable");
                        slots[*i] = call.id.map(|id| jsonrpc::error_body(Some(id), &error));
                    }
                }
            }
        }
        join_batch(slots)
    }

    /// Calls answered by ethgate itself: denied methods, subscriptions over HTTP, and
    /// `eth_chainId` once the chain id is verified.
    fn local(&self, transport: &str, call: &Call<'_>) -> Option<Local> {
        let method = call.method.as_ref();
        if self.deny.denies(method) {
            return Some(Local::Error(jsonrpc::method_not_allowed(method), "denied"));
        }
        if transport == "http" && matches!(method, "eth_subscribe" | "eth_unsubscribe") {
            return Some(Local::Error(jsonrpc::NOTIFICATIONS_UNSUPPORTED, "invalid"));
        }
        if method == "eth_chainId" {
            let chain_id = self.router.upstreams().chain_id()?;
            return Some(Local::Result(format!("\"0x{chain_id:x}\"")));
        }
        None
    }

    fn render_local(&self, transport: &str, call: &Call<'_>, local: Local) -> Option<Vec<u8>> {
        let id = call.id?;
        let mut out = Vec::with_capacity(96);
        match local {
            Local::Error(error, label) => {
                self.metrics.request(transport, &call.method, label);
                jsonrpc::encode_error(&mut out, Some(id), &error);
            }
            Local::Result(result) => {
                self.metrics.request(transport, &call.method, "ok");
                jsonrpc::encode_result(&mut out, id, &result);
            }
        }
        Some(out)
    }

    fn count(&self, transport: &str, call: &Call<'_>, reply: Option<&Reply>) {
        let result = if reply.is_some_and(|r| r.is_error) {
            "rpc_error"
        } else {
            "ok"
        };
        self.metrics.request(transport, &call.method, result);
    }
}

/// Joins batch answers into one array; a batch of notifications only gets no body.
fn join_batch(slots: Vec<Option<Vec<u8>>>) -> Option<Vec<u8>> {
    let parts: Vec<Vec<u8>> = slots.into_iter().flatten().collect();
    if parts.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 1);
    out.push(b'[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(part);
    }
    out.push(b']');
    Some(out)
}
