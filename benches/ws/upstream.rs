//! The upstream: a fast JSON-RPC node over HTTP and WebSocket with a chain the bench drives,
//! and the geth-like header it sends (shared with the fan-out baseline).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

use crate::client::bench_ws_config;
use crate::common::status_only;
use crate::FIRST_HEAD;

/// When each head was emitted, by number: delays are measured on one clock from here.
#[derive(Default)]
pub struct EmitClock(Mutex<HashMap<u64, Instant>>);

impl EmitClock {
    /// Records that head `n` leaves now.
    pub fn record(&self, n: u64) {
        self.0.lock().unwrap().insert(n, Instant::now());
    }

    /// When head `n` left.
    pub fn at(&self, n: u64) -> Option<Instant> {
        self.0.lock().unwrap().get(&n).copied()
    }
}

/// The bench's upstream node and what it counted.
pub struct Upstream {
    pub head: AtomicU64,
    /// Emit instant of every head.
    pub emitted: EmitClock,
    pub heads: broadcast::Sender<Arc<str>>,
    /// Live newHeads subscriptions (ethgate's feed holds one).
    pub subscriptions: AtomicUsize,
    /// newHeads subscriptions ever made (more than one: ethgate's feed reconnected).
    pub subscribes_total: AtomicUsize,
    /// ethgate instances started against this upstream, each with a feed of its own.
    pub feeds: AtomicUsize,
    pub http_calls: AtomicU64,
    pub ws_calls: AtomicU64,
    /// Header fetches by hash or number (ethgate's gap fills).
    pub header_fetches: AtomicU64,
}

impl Upstream {
    /// A node at head FIRST_HEAD with no subscription.
    pub fn new() -> Upstream {
        Upstream {
            head: AtomicU64::new(FIRST_HEAD),
            emitted: EmitClock::default(),
            heads: broadcast::channel(1024).0,
            subscriptions: AtomicUsize::new(0),
            subscribes_total: AtomicUsize::new(0),
            feeds: AtomicUsize::new(0),
            http_calls: AtomicU64::new(0),
            ws_calls: AtomicU64::new(0),
            header_fetches: AtomicU64::new(0),
        }
    }

    /// Emits the next head to every newHeads subscription; returns its number.
    pub fn emit_next(&self) -> u64 {
        let n = self.head.load(Ordering::SeqCst) + 1;
        let header: Arc<str> = header_json(n).into();
        self.head.store(n, Ordering::SeqCst);
        self.emitted.record(n);
        let _ = self.heads.send(header);
        n
    }

    /// The result (raw JSON) of one call, or a JSON-RPC error.
    fn answer(&self, method: &str, params: Option<&RawValue>) -> Result<String, (i64, String)> {
        let head = self.head.load(Ordering::SeqCst);
        match method {
            "eth_chainId" => Ok(r#""0x1""#.into()),
            "eth_syncing" => Ok("false".into()),
            "eth_blockNumber" => Ok(format!(r#""0x{head:x}""#)),
            "eth_getBlockByHash" | "eth_getBlockByNumber" => {
                self.header_fetches.fetch_add(1, Ordering::Relaxed);
                let first: Option<String> = params
                    .and_then(|p| serde_json::from_str::<Vec<serde_json::Value>>(p.get()).ok())
                    .and_then(|v| v.first().and_then(|f| f.as_str().map(str::to_string)));
                let number = match (method, first.as_deref()) {
                    (_, None) => return Err((-32602, "missing block".into())),
                    ("eth_getBlockByHash", Some(hash)) => number_of_hash(hash),
                    (_, Some("latest")) => Some(head),
                    (_, Some(n)) => n
                        .strip_prefix("0x")
                        .and_then(|h| u64::from_str_radix(h, 16).ok()),
                };
                Ok(match number.filter(|&n| n <= head && n > 0) {
                    Some(n) => header_json(n),
                    None => "null".into(),
                })
            }
            "eth_getLogs" => Ok("[]".into()),
            "eth_unsubscribe" => Ok("true".into()),
            other => Err((-32601, format!("the method {other} does not exist"))),
        }
    }

    /// A whole JSON-RPC answer object for `call`.
    /// Answers a batch into `out`; false when it is not one.
    fn answer_batch(&self, out: &mut String, body: &[u8]) -> bool {
        let Ok(calls) = serde_json::from_slice::<Vec<Call>>(body) else {
            return false;
        };
        out.push('[');
        for (i, call) in calls.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.answer_object(out, call);
        }
        out.push(']');
        true
    }

    fn answer_object(&self, out: &mut String, call: &Call<'_>) {
        let id = call.id.map_or("null", |id| id.get());
        match self.answer(call.method, call.params) {
            Ok(result) => {
                let _ = write!(out, r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
            }
            Err((code, message)) => {
                let _ = write!(
                    out,
                    r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":"{message}"}}}}"#
                );
            }
        }
    }
}

#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: &'a str,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

fn block_hash(n: u64) -> String {
    format!("0xb10c{n:060x}")
}

fn number_of_hash(hash: &str) -> Option<u64> {
    u64::from_str_radix(hash.strip_prefix("0xb10c")?, 16).ok()
}

/// A geth newHeads header for block `n` (about 1.2 KB, like mainnet's).
pub fn header_json(n: u64) -> String {
    let h = |tag: u64| format!("0x{tag:04x}{n:060x}");
    format!(
        concat!(
            r#"{{"parentHash":"{parent}","sha3Uncles":"0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347","#,
            r#""miner":"0x95222290dd7278aa3ddd389cc1e1d165cc4bafe5","stateRoot":"{state}","#,
            r#""transactionsRoot":"{txs}","receiptsRoot":"{receipts}","logsBloom":"0x{bloom}","#,
            r#""difficulty":"0x0","number":"0x{n:x}","gasLimit":"0x1c9c380","gasUsed":"0xe4e1c0","#,
            r#""timestamp":"0x{ts:x}","extraData":"0x6265617665726275696c642e6f7267","#,
            r#""mixHash":"{mix}","nonce":"0x0000000000000000","baseFeePerGas":"0x3b9aca00","#,
            r#""withdrawalsRoot":"{wd}","blobGasUsed":"0x0","excessBlobGas":"0x0","#,
            r#""parentBeaconBlockRoot":"{beacon}","hash":"{hash}"}}"#
        ),
        parent = block_hash(n - 1),
        state = h(1),
        txs = h(2),
        receipts = h(3),
        bloom = "0".repeat(512),
        n = n,
        ts = 1_700_000_000 + n * 12,
        mix = h(4),
        wd = h(5),
        beacon = h(6),
        hash = block_hash(n),
    )
}

/// Serves JSON-RPC over HTTP (ethgate's probes and forwarded calls).
pub async fn serve_upstream_http(upstream: Arc<Upstream>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let upstream = upstream.clone();
                async move { upstream_http_answer(&upstream, request).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn upstream_http_answer(
    upstream: &Upstream,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    upstream.http_calls.fetch_add(1, Ordering::Relaxed);
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(status_only(StatusCode::BAD_REQUEST)),
    };
    let mut out = String::with_capacity(128);
    if body.first() == Some(&b'[') {
        if !upstream.answer_batch(&mut out, &body) {
            return Ok(status_only(StatusCode::BAD_REQUEST));
        }
    } else {
        let Ok(call) = serde_json::from_slice::<Call>(&body) else {
            return Ok(status_only(StatusCode::BAD_REQUEST));
        };
        upstream.answer_object(&mut out, &call);
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Serves JSON-RPC and newHeads over WebSocket.
pub async fn serve_upstream_ws(upstream: Arc<Upstream>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(upstream_ws_session(upstream.clone(), stream));
    }
}

/// The next head of a subscription; pending forever while there is none.
async fn next_head(
    heads: &mut Option<broadcast::Receiver<Arc<str>>>,
) -> Result<Arc<str>, broadcast::error::RecvError> {
    match heads {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn upstream_ws_session(upstream: Arc<Upstream>, stream: TcpStream) {
    let Ok(mut ws) =
        tokio_tungstenite::accept_async_with_config(stream, Some(bench_ws_config())).await
    else {
        return;
    };
    // One newHeads subscription per connection is all ethgate needs; its id is fixed.
    let mut heads: Option<broadcast::Receiver<Arc<str>>> = None;
    const SUBSCRIPTION: &str = "0x9ce59a13059e417087c02d3236a0b1cc";
    loop {
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                upstream.ws_calls.fetch_add(1, Ordering::Relaxed);
                let mut out = String::with_capacity(128);
                // Batches: ethgate's health probes when its calls go over this WebSocket.
                if text.as_bytes().first() == Some(&b'[') {
                    if !upstream.answer_batch(&mut out, text.as_bytes()) {
                        out.push_str(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#);
                    }
                } else {
                match serde_json::from_str::<Call>(text.as_str()) {
                    Ok(call) if call.method == "eth_subscribe" => {
                        let kind = call.params.map_or("", |p| p.get());
                        let id = call.id.map_or("null", |id| id.get());
                        let _ = write!(out, r#"{{"jsonrpc":"2.0","id":{id},"result":"{SUBSCRIPTION}"}}"#);
                        if kind.contains("newHeads") && heads.is_none() {
                            heads = Some(upstream.heads.subscribe());
                            upstream.subscriptions.fetch_add(1, Ordering::SeqCst);
                            upstream.subscribes_total.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(call) => upstream.answer_object(&mut out, &call),
                    Err(_) => out.push_str(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}"#),
                }
                }
                if ws.send(Message::text(out)).await.is_err() {
                    break;
                }
            }
            head = next_head(&mut heads) => match head {
                Ok(header) => {
                    let text = format!(
                        r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"{SUBSCRIPTION}","result":{header}}}}}"#
                    );
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    if heads.is_some() {
        upstream.subscriptions.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// ethgate as a child process.
