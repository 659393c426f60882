//! The mock's network side: accept loop, hyper HTTP service, WebSocket session, fault injection.

use super::answers::{self, Body, ChainState, Item, RpcError};
use super::{Received, Shared, Transport};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One listening period of the mock (between `start`/`restore` and `refuse`).
pub(super) struct Listening {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Listening {
    /// Closes the listener and every connection accepted by it, and waits until they are gone.
    pub(super) async fn stop(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Starts accepting on `listener`.
pub(super) fn listen(shared: Arc<Shared>, listener: TcpListener) -> Listening {
    let token = shared.root.child_token();
    let tracker = TaskTracker::new();
    let (t, tr) = (token.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = t.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let conn = Conn {
                shared: shared.clone(),
                reset: Arc::new(AtomicBool::new(false)),
                kill: t.child_token(),
                tracker: tr.clone(),
            };
            tr.spawn(conn.serve(stream));
        }
    });
    Listening { token, tracker }
}

/// A TCP stream that closes with RST (SO_LINGER 0) instead of FIN when `reset` is set before it drops.
struct ResettableIo {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableIo {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// What to do with one request after decoding and recording it.
enum Outcome {
    /// Answer with this body (`None`: only notifications, nothing to say) and register these subscriptions.
    Reply(Option<String>, Vec<(String, String)>),
    /// Answer with this body, cut in the middle by a reset.
    Truncated(String),
    /// Answer with a bare HTTP status.
    Status(u16),
    /// Reset the connection without answering.
    Reset,
    /// Never answer.
    Silent,
}

/// One accepted connection.
#[derive(Clone)]
struct Conn {
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    /// Cancelled by `refuse` (through the listening token) or by a reset: drops the connection.
    kill: CancellationToken,
    tracker: TaskTracker,
}

type Resp = Response<ReplyBody>;

impl Conn {
    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(ResettableIo {
            stream,
            reset: self.reset.clone(),
        });
        let kill = self.kill.clone();
        let svc = hyper::service::service_fn(move |req| self.clone().request(req));
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::select! {
            _ = conn => {}
            _ = kill.cancelled() => {}
        }
    }

    async fn request(self, req: Request<Incoming>) -> Result<Resp, Infallible> {
        if is_ws_upgrade(&req) {
            let status = self.shared.lock().http_status;
            if let Some(code) = status {
                return Ok(plain(code, "mock: scripted status"));
            }
            return Ok(self.upgrade(req));
        }
        if req.method() != Method::POST {
            return Ok(plain(405, "method not allowed"));
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(plain(400, "bad body")),
        };
        let (close, chunked) = {
            let state = self.shared.lock();
            (state.close_connections, state.chunked)
        };
        match handle(&self.shared, &body, Transport::Http, None, &self.kill).await {
            Outcome::Reply(text, _) => {
                let body = ReplyBody::full(text.unwrap_or_default()).chunked(chunked);
                let mut resp = Response::new(body);
                let headers = resp.headers_mut();
                headers.insert(
                    "content-type",
                    "application/json".parse().expect("static header"),
                );
                if close {
                    headers.insert("connection", "close".parse().expect("static header"));
                }
                Ok(resp)
            }
            Outcome::Status(code) => Ok(plain(code, "mock: scripted status")),
            Outcome::Truncated(text) => {
                let cut = Cut {
                    reset: self.reset.clone(),
                    kill: self.kill.clone(),
                    polls: 0,
                };
                let mut resp = Response::new(ReplyBody::truncated(text, cut));
                let headers = resp.headers_mut();
                headers.insert(
                    "content-type",
                    "application/json".parse().expect("static header"),
                );
                Ok(resp)
            }
            Outcome::Reset => {
                self.reset.store(true, Ordering::SeqCst);
                self.kill.cancel();
                std::future::pending().await
            }
            Outcome::Silent => std::future::pending().await,
        }
    }

    fn upgrade(self, mut req: Request<Incoming>) -> Resp {
        let Some(key) = req.headers().get("sec-websocket-key") else {
            return plain(400, "missing sec-websocket-key");
        };
        let accept = derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        let tracker = self.tracker.clone();
        tracker.spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                self.ws_session(ws).await;
            }
        });
        let mut resp = Response::new(ReplyBody::full(String::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert("connection", "upgrade".parse().expect("static header"));
        h.insert("upgrade", "websocket".parse().expect("static header"));
        h.insert(
            "sec-websocket-accept",
            accept.parse().expect("base64 header"),
        );
        resp
    }

    async fn ws_session<S>(self, ws: WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
        // Subscription id -> kind; registration and the subscribe reply go out under this lock, so a
        // notification can never overtake its subscribe response.
        let subs: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let mut notes = self.shared.notifications.subscribe();
        loop {
            tokio::select! {
                _ = self.kill.cancelled() => break,
                out = out_rx.recv() => {
                    let Some(text) = out else { break };
                    if sink.send(Message::text(text)).await.is_err() { break; }
                }
                note = notes.recv() => {
                    let Ok((kind, result)) = note else { continue };
                    let subs = subs.lock().unwrap_or_else(|e| e.into_inner());
                    for (id, _) in subs.iter().filter(|(_, k)| **k == kind) {
                        let _ = out_tx.send(format!(
                            r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"{id}","result":{result}}}}}"#
                        ));
                    }
                }
                msg = stream.next() => {
                    let body = match msg {
                        Some(Ok(Message::Text(t))) => Bytes::from(t.as_str().to_owned()),
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let (conn, subs, out_tx) = (self.clone(), subs.clone(), out_tx.clone());
                    self.tracker.spawn(async move {
                        let outcome = tokio::select! {
                            _ = conn.kill.cancelled() => return,
                            o = handle(&conn.shared, &body, Transport::Ws, Some(&subs), &conn.kill) => o,
                        };
                        match outcome {
                            Outcome::Reply(Some(text), new_subs) => {
                                // Counted before the reply leaves, so a client that saw the reply sees the count.
                                if !new_subs.is_empty() {
                                    let counted = new_subs.clone();
                                    conn.shared.update(|s| s.live_subscriptions.extend(counted));
                                }
                                let mut subs = subs.lock().unwrap_or_else(|e| e.into_inner());
                                subs.extend(new_subs);
                                let _ = out_tx.send(text);
                            }
                            Outcome::Reset => {
                                conn.reset.store(true, Ordering::SeqCst);
                                conn.kill.cancel();
                            }
                            Outcome::Reply(None, _)
                            | Outcome::Truncated(_)
                            | Outcome::Status(_)
                            | Outcome::Silent => {}
                        }
                    });
                }
            }
        }
        let ids: Vec<String> = subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(id, _)| id)
            .collect();
        self.shared.update(|s| {
            for id in &ids {
                s.live_subscriptions.remove(id);
            }
        });
    }
}

fn plain(code: u16, text: &'static str) -> Resp {
    let mut resp = Response::new(ReplyBody::full(text.to_string()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

fn is_ws_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Decodes, records, applies the scripted faults, then answers one request body.
async fn handle(
    shared: &Shared,
    body: &[u8],
    transport: Transport,
    subs: Option<&Mutex<HashMap<String, String>>>,
    kill: &CancellationToken,
) -> Outcome {
    let decoded = answers::decode(body);
    let methods: Vec<String> = decoded.calls().iter().map(|c| c.method.clone()).collect();
    let mut changes = shared.changed.subscribe();
    let (fault, truncate, delay) = {
        let mut s = shared.lock();
        if !methods.is_empty() {
            s.received.push(Received {
                transport,
                batch: matches!(decoded, Body::Batch(_)),
                calls: decoded.calls().into_iter().cloned().collect(),
            });
        }
        let fault = pick_fault(&mut s, &methods, transport);
        let truncate = fault.is_none()
            && transport == Transport::Http
            && spend(&mut s.method_truncations, &methods);
        let delay = methods
            .iter()
            .filter_map(|m| s.method_delays.get(m).copied())
            .fold(s.delay, Duration::max);
        (fault, truncate, delay)
    };
    shared.changed.send_modify(|v| *v += 1);
    if let Some(fault) = fault {
        return fault;
    }
    // Held methods wait for `release`, re-checking on every scripted change.
    loop {
        let held = {
            let s = shared.lock();
            methods.iter().any(|m| s.held.contains(m))
        };
        if !held {
            break;
        }
        tokio::select! {
            _ = kill.cancelled() => return Outcome::Silent,
            r = changes.changed() => if r.is_err() { return Outcome::Silent },
        }
    }
    if !delay.is_zero() {
        tokio::select! {
            _ = kill.cancelled() => return Outcome::Silent,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    if transport == Transport::Http {
        let s = shared.lock();
        let status = methods.iter().find_map(|m| s.method_status.get(m).copied());
        if let Some(code) = status.or(s.http_status) {
            return Outcome::Status(code);
        }
    }
    match answer(shared, decoded, transport, subs) {
        Outcome::Reply(Some(text), _) if truncate => Outcome::Truncated(text),
        outcome => outcome,
    }
}

/// Spends one of the scripted counts of the first method in `methods` that has one left.
fn spend(counts: &mut HashMap<String, usize>, methods: &[String]) -> bool {
    for m in methods {
        if let Some(n) = counts.get_mut(m) {
            if *n > 0 {
                *n -= 1;
                return true;
            }
        }
    }
    false
}

/// Reset and silence are decided (and reset counters spent) when the request arrives.
fn pick_fault(s: &mut super::State, methods: &[String], transport: Transport) -> Option<Outcome> {
    if methods.is_empty() && transport == Transport::Ws {
        return None;
    }
    if s.reset_next > 0 {
        s.reset_next -= 1;
        return Some(Outcome::Reset);
    }
    if spend(&mut s.method_resets, methods) {
        return Some(Outcome::Reset);
    }
    s.silent.then_some(Outcome::Silent)
}

fn answer(
    shared: &Shared,
    decoded: Body,
    transport: Transport,
    subs: Option<&Mutex<HashMap<String, String>>>,
) -> Outcome {
    let mut s = shared.lock();
    let reverse = s.reverse_batches;
    let mut new_subs = Vec::new();
    let mut one = |item: Item| -> Option<String> {
        match item {
            Item::Invalid(id) => Some(answers::response(
                id.as_deref(),
                &Err(RpcError::new(-32600, "invalid request")),
            )),
            Item::Call(call) => {
                let result = answer_call(
                    &mut s,
                    &call.method,
                    &call.params,
                    transport,
                    subs,
                    &mut new_subs,
                );
                call.id
                    .as_deref()
                    .map(|id| answers::response(Some(id), &result))
            }
        }
    };
    let text = match decoded {
        Body::ParseError => Some(answers::response(
            None,
            &Err(RpcError::new(-32700, "parse error")),
        )),
        Body::EmptyBatch => Some(answers::response(
            None,
            &Err(RpcError::new(-32600, "empty batch")),
        )),
        Body::Single(item) => one(item),
        Body::Batch(items) => {
            let mut parts: Vec<String> = items.into_iter().filter_map(&mut one).collect();
            if reverse {
                parts.reverse();
            }
            (!parts.is_empty()).then(|| format!("[{}]", parts.join(",")))
        }
    };
    Outcome::Reply(text, new_subs)
}

fn answer_call(
    s: &mut super::State,
    method: &str,
    params: &Value,
    transport: Transport,
    subs: Option<&Mutex<HashMap<String, String>>>,
    new_subs: &mut Vec<(String, String)>,
) -> Result<String, RpcError> {
    if let Some(e) = s.failures.get(method) {
        return Err(e.clone());
    }
    if let Some(h) = s.handlers.get(method) {
        return h(params).map(|v| v.to_string());
    }
    if let Some(r) = s.results.get(method) {
        return Ok(r.clone());
    }
    let value = match (method, transport, subs) {
        ("eth_subscribe", Transport::Ws, Some(_)) => {
            let kind = params.get(0).and_then(Value::as_str).unwrap_or_default();
            if !["newHeads", "logs", "newPendingTransactions", "syncing"].contains(&kind) {
                return Err(RpcError::new(
                    -32602,
                    format!("no \"{kind}\" subscription in eth namespace"),
                ));
            }
            s.next_subscription += 1;
            let id = format!("0x{:032x}", 0x00c0_ffee_0000_0000_u64 + s.next_subscription);
            new_subs.push((id.clone(), kind.to_string()));
            Ok(json!(id))
        }
        ("eth_unsubscribe", Transport::Ws, Some(subs)) => {
            let id = params.get(0).and_then(Value::as_str).unwrap_or_default();
            let removed = subs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id)
                .is_some();
            s.live_subscriptions.remove(id);
            Ok(json!(removed))
        }
        _ => {
            let chain = ChainState {
                head: s.head,
                chain_id: s.chain_id,
                syncing: s.syncing,
                safe: s.safe,
                finalized: s.finalized,
            };
            answers::default_answer(method, params, &chain)
        }
    };
    value.map(|v| v.to_string())
}

/// How far a truncated reply has got.
struct Cut {
    reset: Arc<AtomicBool>,
    kill: CancellationToken,
    polls: u8,
}

/// A response body: whole, or (for `reset_mid_response_for`) its first half followed by a reset.
pub(super) struct ReplyBody {
    next: Option<Bytes>,
    len: u64,
    cut: Option<Cut>,
    /// No Content-Length, 64 KiB chunks (as geth sends large answers).
    chunked: bool,
}

/// Chunk size of a chunked reply.
const CHUNK: usize = 64 * 1024;

impl ReplyBody {
    fn full(text: String) -> ReplyBody {
        let len = text.len() as u64;
        ReplyBody {
            next: (len > 0).then(|| Bytes::from(text)),
            len,
            cut: None,
            chunked: false,
        }
    }

    fn chunked(mut self, chunked: bool) -> ReplyBody {
        self.chunked = chunked;
        self
    }

    fn truncated(text: String, cut: Cut) -> ReplyBody {
        let len = text.len() as u64;
        let half = Bytes::from(text).slice(..(len / 2) as usize);
        ReplyBody {
            next: Some(half),
            len,
            cut: Some(cut),
            chunked: false,
        }
    }
}

impl HttpBody for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(mut chunk) = this.next.take() {
            if this.chunked && chunk.len() > CHUNK {
                this.next = Some(chunk.split_off(CHUNK));
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(cut) = this.cut.as_mut() else {
            return Poll::Ready(None);
        };
        // First poll after the half: yield once so hyper flushes it; the next poll resets the connection.
        if cut.polls == 0 {
            cut.polls = 1;
            cx.waker().wake_by_ref();
        } else {
            cut.reset.store(true, Ordering::SeqCst);
            cut.kill.cancel();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none() && self.cut.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunked {
            return SizeHint::default();
        }
        SizeHint::with_exact(self.len)
    }
}
