//! A scriptable in-process mock Ethereum upstream: JSON-RPC over HTTP (POST) and WebSocket (GET + Upgrade) on
//! one `127.0.0.1:0` port, with the faults ethgate must survive.
//!
//! Layout: `answers` (decoding, default geth-like answers, deterministic headers), `server` (accept loop, hyper
//! service, WS session, fault injection). ethgate itself is started by `support::gateway`.
//!
//! Faults never touch the health prober's calls unless the test asks for it: the `*_for(method, …)` variants
//! hit only one method, the plain ones hit every request (probes included).

mod answers;
mod server;

// Each test crate uses a different part of the support code.
#[allow(unused_imports)]
pub use answers::{block_hash, header, hex, Call, TX_HASH};

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::http::{RpcError, WAIT};

/// A custom answer for one method: params in, result or JSON-RPC error out.
pub type Handler = Arc<dyn Fn(&Value) -> Result<Value, RpcError> + Send + Sync>;

/// Transport a call arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// HTTP POST.
    Http,
    /// WebSocket text frame.
    Ws,
}

/// One request (HTTP body or WS message) the mock received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Where it came from.
    pub transport: Transport,
    /// Whether the body was a JSON array.
    pub batch: bool,
    /// The well-formed calls in it, in order.
    pub calls: Vec<Call>,
}

/// Everything a test can script, behind one lock that is never held across an await.
#[derive(Default)]
struct State {
    head: u64,
    safe: Option<u64>,
    finalized: Option<u64>,
    chain_id: u64,
    syncing: bool,
    delay: Duration,
    method_delays: HashMap<String, Duration>,
    failures: HashMap<String, RpcError>,
    /// Raw JSON text of fixed results.
    results: HashMap<String, String>,
    handlers: HashMap<String, Handler>,
    http_status: Option<u16>,
    method_status: HashMap<String, u16>,
    reset_next: usize,
    method_resets: HashMap<String, usize>,
    method_truncations: HashMap<String, usize>,
    silent: bool,
    held: HashSet<String>,
    reverse_batches: bool,
    close_connections: bool,
    chunked: bool,
    received: Vec<Received>,
    next_subscription: u64,
    /// Open subscriptions on every WS connection: id -> kind.
    live_subscriptions: HashMap<String, String>,
}

/// State shared by the handle and the server tasks.
struct Shared {
    state: Mutex<State>,
    /// Bumped on every recorded request and every scripted change: lets waits be events, not sleeps.
    changed: watch::Sender<u64>,
    /// Subscription notifications: (kind, result as JSON text).
    notifications: broadcast::Sender<(String, String)>,
    /// Cancelled when the mock is dropped: ends every task.
    root: CancellationToken,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.send_modify(|v| *v += 1);
    }
}

/// A running mock upstream; dropping it stops it and closes its connections.
pub struct MockUpstream {
    shared: Arc<Shared>,
    listener: tokio::sync::Mutex<Option<server::Listening>>,
    ticker: Mutex<Option<CancellationToken>>,
}

impl MockUpstream {
    /// Starts a mock on a free 127.0.0.1 port: chain id 1, head 100, not syncing.
    pub async fn start() -> MockUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock: local_addr");
        let state = State {
            head: 100,
            chain_id: 1,
            ..State::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            notifications: broadcast::channel(1024).0,
            root: CancellationToken::new(),
            addr,
        });
        let listening = server::listen(shared.clone(), listener);
        MockUpstream {
            shared,
            listener: tokio::sync::Mutex::new(Some(listening)),
            ticker: Mutex::new(None),
        }
    }

    /// The port's address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `ws://127.0.0.1:PORT`
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.shared.addr)
    }

    // ---- chain state -------------------------------------------------------------------------------------

    /// Sets the head block number (eth_blockNumber, "latest").
    pub fn set_head(&self, n: u64) {
        self.shared.update(|s| s.head = n);
    }

    /// Sets the `safe` and `finalized` block numbers (`None`: the head, the default).
    pub fn set_tags(&self, safe: Option<u64>, finalized: Option<u64>) {
        self.shared.update(|s| {
            s.safe = safe;
            s.finalized = finalized;
        });
    }

    /// Current head block number.
    pub fn head(&self) -> u64 {
        self.shared.lock().head
    }

    /// Sets the chain id (eth_chainId, net_version).
    pub fn set_chain_id(&self, id: u64) {
        self.shared.update(|s| s.chain_id = id);
    }

    /// Makes eth_syncing report progress (true) or `false`.
    pub fn set_syncing(&self, syncing: bool) {
        self.shared.update(|s| s.syncing = syncing);
    }

    /// Sets the head to `n` and pushes header `n` to every `newHeads` subscription.
    pub fn emit_new_head(&self, n: u64) {
        self.set_head(n);
        self.notify("newHeads", header(n));
    }

    /// Pushes `result` to every subscription of `kind` (e.g. "logs").
    pub fn notify(&self, kind: &str, result: Value) {
        let _ = self
            .shared
            .notifications
            .send((kind.to_string(), result.to_string()));
    }

    /// How many subscriptions of `kind` (e.g. "newHeads") are open on this mock, over all WS connections.
    pub fn subscriptions(&self, kind: &str) -> usize {
        let s = self.shared.lock();
        s.live_subscriptions.values().filter(|k| *k == kind).count()
    }

    /// Waits (at most `WAIT`) until at least `n` subscriptions of `kind` are open, so a notification emitted
    /// next cannot be lost for want of a subscriber; panics on timeout.
    pub async fn wait_for_subscriptions(&self, kind: &str, n: usize) {
        self.wait_until(&format!("{n} {kind} subscriptions"), |m| {
            m.subscriptions(kind) >= n
        })
        .await;
    }

    /// Waits (at most `WAIT`) until `pred` holds, re-checking on every request and scripted change; panics
    /// on timeout naming `what`.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&MockUpstream) -> bool) {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !pred(self) {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                panic!("mock {}: timed out waiting for {what}", self.shared.addr);
            }
        }
    }

    /// Advances the head by one (and emits it) every `every`; `None` stops.
    pub fn advance_every(&self, every: Option<Duration>) {
        let mut ticker = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = ticker.take() {
            old.cancel();
        }
        let Some(every) = every else { return };
        let token = self.shared.root.child_token();
        *ticker = Some(token.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.tick().await;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = interval.tick() => {}
                }
                let mut n = 0;
                shared.update(|s| {
                    s.head += 1;
                    n = s.head;
                });
                let _ = shared
                    .notifications
                    .send(("newHeads".into(), header(n).to_string()));
            }
        });
    }

    // ---- answers -----------------------------------------------------------------------------------------

    /// Answers `method` with a JSON-RPC error.
    pub fn fail_method(&self, method: &str, code: i64, message: &str) {
        self.fail_method_with(method, RpcError::new(code, message));
    }

    /// Answers `method` with a JSON-RPC error carrying `data` (e.g. revert data).
    pub fn fail_method_with_data(&self, method: &str, code: i64, message: &str, data: Value) {
        let mut e = RpcError::new(code, message);
        e.data = Some(data);
        self.fail_method_with(method, e);
    }

    fn fail_method_with(&self, method: &str, e: RpcError) {
        self.shared.update(|s| {
            s.failures.insert(method.to_string(), e);
        });
    }

    /// Removes every `fail_method*` error.
    pub fn clear_failures(&self) {
        self.shared.update(|s| s.failures.clear());
    }

    /// Answers `method` with a fixed result.
    pub fn set_result(&self, method: &str, result: Value) {
        self.set_raw_result(method, &result.to_string());
    }

    /// Answers `method` with this exact JSON text as the result (for byte-for-byte relay checks).
    pub fn set_raw_result(&self, method: &str, raw_json: &str) {
        serde_json::from_str::<serde::de::IgnoredAny>(raw_json)
            .expect("set_raw_result: valid JSON");
        self.shared.update(|s| {
            s.results.insert(method.to_string(), raw_json.to_string());
        });
    }

    /// Answers `method` with a custom function of its params.
    pub fn set_handler(
        &self,
        method: &str,
        f: impl Fn(&Value) -> Result<Value, RpcError> + Send + Sync + 'static,
    ) {
        self.shared.update(|s| {
            s.handlers.insert(method.to_string(), Arc::new(f));
        });
    }

    /// Removes every `set_result` / `set_handler` answer.
    pub fn clear_results(&self) {
        self.shared.update(|s| {
            s.results.clear();
            s.handlers.clear();
        });
    }

    /// Sends HTTP answers chunked, without Content-Length (as geth does for large ones).
    pub fn set_chunked(&self, chunked: bool) {
        self.shared.update(|s| s.chunked = chunked);
    }

    /// Answers batches in reverse order (ids still matched), as a JSON-RPC server may.
    pub fn set_reverse_batches(&self, reverse: bool) {
        self.shared.update(|s| s.reverse_batches = reverse);
    }

    // ---- faults ------------------------------------------------------------------------------------------

    /// Delays every answer by `d` (zero: none).
    pub fn set_delay(&self, d: Duration) {
        self.shared.update(|s| s.delay = d);
    }

    /// Delays answers to requests containing `method` (`None`: no delay).
    pub fn set_delay_for(&self, method: &str, d: Option<Duration>) {
        self.shared
            .update(|s| set_or_clear(&mut s.method_delays, method, d));
    }

    /// Answers every HTTP request (and WS upgrade) with this status instead (e.g. 503, 429); `None` heals.
    pub fn set_http_status(&self, status: Option<u16>) {
        self.shared.update(|s| s.http_status = status);
    }

    /// Answers HTTP requests containing `method` with this status; `None` heals.
    pub fn set_http_status_for(&self, method: &str, status: Option<u16>) {
        self.shared
            .update(|s| set_or_clear(&mut s.method_status, method, status));
    }

    /// Reads the next `n` requests, then resets their connection (RST) without answering.
    pub fn reset_next(&self, n: usize) {
        self.shared.update(|s| s.reset_next = n);
    }

    /// Like `reset_next`, counting only requests containing `method`.
    pub fn reset_next_for(&self, method: &str, n: usize) {
        self.shared.update(|s| {
            s.method_resets.insert(method.to_string(), n);
        });
    }

    /// Answers the next `n` HTTP requests containing `method` with the status line, headers and half the
    /// body, then resets the connection.
    pub fn reset_mid_response_for(&self, method: &str, n: usize) {
        self.shared.update(|s| {
            s.method_truncations.insert(method.to_string(), n);
        });
    }

    /// Accepts and reads requests but never answers them, keeping the sockets open (`false` heals).
    pub fn go_silent(&self, silent: bool) {
        self.shared.update(|s| s.silent = silent);
    }

    /// Holds requests containing `method` unanswered until `release(method)`.
    pub fn hold(&self, method: &str) {
        self.shared.update(|s| {
            s.held.insert(method.to_string());
        });
    }

    /// Lets held requests of `method` be answered.
    pub fn release(&self, method: &str) {
        self.shared.update(|s| {
            s.held.remove(method);
        });
    }

    /// Answers with `Connection: close`, so clients cannot keep pooled connections to this mock.
    pub fn set_close_connections(&self, close: bool) {
        self.shared.update(|s| s.close_connections = close);
    }

    /// Stops listening and closes every open connection (HTTP and WS); returns once connects are refused.
    pub async fn refuse(&self) {
        if let Some(listening) = self.listener.lock().await.take() {
            listening.stop().await;
        }
    }

    /// Listens on the same port again after `refuse`.
    pub async fn restore(&self) {
        let mut slot = self.listener.lock().await;
        if slot.is_some() {
            return;
        }
        let listener = tokio::net::TcpListener::bind(self.shared.addr)
            .await
            .unwrap_or_else(|e| panic!("mock: rebind {}: {e}", self.shared.addr));
        *slot = Some(server::listen(self.shared.clone(), listener));
    }

    // ---- records -----------------------------------------------------------------------------------------

    /// How many calls of `method` arrived (batch elements count one each; faulted requests count too).
    pub fn calls(&self, method: &str) -> usize {
        let s = self.shared.lock();
        s.received
            .iter()
            .flat_map(|r| &r.calls)
            .filter(|c| c.method == method)
            .count()
    }

    /// How many calls of `method` arrived over `transport`.
    pub fn calls_over(&self, transport: Transport, method: &str) -> usize {
        let s = self.shared.lock();
        s.received
            .iter()
            .filter(|r| r.transport == transport)
            .flat_map(|r| &r.calls)
            .filter(|c| c.method == method)
            .count()
    }

    /// How many calls arrived, any method.
    pub fn total_calls(&self) -> usize {
        self.shared
            .lock()
            .received
            .iter()
            .map(|r| r.calls.len())
            .sum()
    }

    /// Raw JSON text of every id received, in arrival order (notifications have none).
    pub fn received_ids(&self) -> Vec<String> {
        let s = self.shared.lock();
        s.received
            .iter()
            .flat_map(|r| &r.calls)
            .filter_map(|c| c.id.clone())
            .collect()
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// The requests that contained a call of `method`.
    pub fn requests_with(&self, method: &str) -> Vec<Received> {
        let s = self.shared.lock();
        s.received
            .iter()
            .filter(|r| r.calls.iter().any(|c| c.method == method))
            .cloned()
            .collect()
    }

    /// Forgets every recorded request.
    pub fn clear_calls(&self) {
        self.shared.update(|s| s.received.clear());
    }

    /// Waits (at most `WAIT`) until at least `n` calls of `method` arrived; panics on timeout.
    pub async fn wait_for_calls(&self, method: &str, n: usize) {
        self.wait_until(&format!("{n} calls of {method}"), |m| m.calls(method) >= n)
            .await;
    }
}

/// Sets `method`'s entry to `value`, or removes it for `None`.
fn set_or_clear<T>(map: &mut HashMap<String, T>, method: &str, value: Option<T>) {
    match value {
        Some(v) => {
            map.insert(method.to_string(), v);
        }
        None => {
            map.remove(method);
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.root.cancel();
    }
}
