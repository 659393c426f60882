//! A client that talks to ethgate the way a Chainlink node does (MultiNode, HeadTracker,
//! LogPoller), and checks what it sees as it goes:
//!
//! * pollers: `eth_blockNumber`, `eth_getBlockByNumber` with `latest`, `safe` and `finalized`,
//!   `web3_clientVersion` and `eth_chainId` now and then, and a batch of
//!   `eth_getBlockByNumber` by number from the finalized block up;
//! * a head follower: `eth_chainId` on dial, `newHeads` over one WebSocket, and
//!   `eth_getLogs {blockHash}` for every head delivered.
//!
//! The monotonic check is the guarantee ethgate documents: once an answer naming block `n`
//! under a tag has reached a client, no read sent after that moment answers below `n`. Each
//! read snapshots the highest values answered so far before it is sent, and its answer is
//! compared with that snapshot (reads in flight together may legitimately finish in any
//! order). `eth_blockNumber` and `latest` are one series, as in ethgate. A read failing in
//! any way (transport error, JSON-RPC error, `null` block) is a failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::http::Http;

/// The tags whose values must never go back, in ethgate's order.
pub const TAGS: [&str; 3] = ["latest", "safe", "finalized"];
const LATEST: usize = 0;
const FINALIZED: usize = 2;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the client saw, shared by its tasks.
#[derive(Default)]
pub struct Ledger {
    /// Highest value of each tag whose answer has reached the client.
    pub max: [u64; 3],
    /// Reads answered per tag (including `eth_blockNumber` under `latest`).
    pub reads: [u64; 3],
    /// Every other read answered (client version, chain id, batches, logs).
    pub other_reads: u64,
    /// A value below one answered before the read was sent.
    pub regressions: Vec<String>,
    /// Reads that failed: (what, error).
    pub failures: Vec<String>,
    /// Block hashes named by answers, by number (latest/safe/finalized blocks, batch blocks).
    pub hashes: BTreeMap<u64, HashSet<String>>,
    /// Heads delivered over the WebSocket, in order.
    pub heads: Vec<Head>,
    /// Head stream problems (gaps, repeats, a head below the finalized block, socket closed).
    pub head_violations: Vec<String>,
    /// Reorgs seen on the head stream: (first replaced number, replaced hashes).
    pub reorgs: Vec<(u64, Vec<String>)>,
    /// The chain as delivered so far (number -> hash), reorgs applied.
    pub delivered: BTreeMap<u64, String>,
    /// `eth_getLogs {blockHash}` per delivered head: tx hashes of the logs, in log order.
    pub logs: HashMap<String, Vec<String>>,
    /// `eth_getLogs` attempts that failed: (block hash, error). Each is tried again, up to a
    /// bound, as Chainlink's LogPoller does on its next poll.
    pub log_retries: Vec<(String, String)>,
    /// Blocks whose logs could not be fetched at all: (hash, last error). Fine only for a block
    /// that left the chain (every node answers "unknown block" for it by then).
    pub log_failures: Vec<(String, String)>,
}

/// A delivered head.
#[derive(Debug, Clone)]
pub struct Head {
    pub n: u64,
    pub hash: String,
    pub parent: String,
}

/// The shared ledger.
#[derive(Clone, Default)]
pub struct Observer(Arc<Mutex<Ledger>>);

impl Observer {
    /// Runs `f` on the ledger.
    pub fn with<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The highest values answered so far (taken before sending a read).
    pub fn snapshot(&self) -> [u64; 3] {
        self.with(|l| l.max)
    }

    /// Reads answered so far, of any kind.
    pub fn total_reads(&self) -> u64 {
        self.with(|l| l.reads.iter().sum::<u64>() + l.other_reads)
    }

    /// Records block `n` answered under tag `tag` by a read sent when `before` was the state.
    fn saw(&self, tag: usize, n: u64, before: [u64; 3], what: &str) {
        self.with(|l| {
            if n < before[tag] {
                l.regressions.push(format!(
                    "{what}: {} {n} after {} was answered",
                    TAGS[tag], before[tag]
                ));
            }
            l.max[tag] = l.max[tag].max(n);
            l.reads[tag] += 1;
        });
    }

    fn saw_block(&self, block: &Value) {
        if let (Some(n), Some(h)) = (hex_u64(&block["number"]), block["hash"].as_str()) {
            self.with(|l| l.hashes.entry(n).or_default().insert(h.to_lowercase()));
        }
    }

    fn failed(&self, what: &str, error: String) {
        self.with(|l| l.failures.push(format!("{what}: {error}")));
    }

    fn other_read(&self) {
        self.with(|l| l.other_reads += 1);
    }

    /// Adds a delivered head: it must extend the delivered chain, or replace its top from a
    /// delivered parent (a reorg); never below the finalized block answered before.
    fn head(&self, head: Head) {
        self.with(|l| {
            if head.n < l.max[FINALIZED] {
                l.head_violations.push(format!(
                    "head {} below the finalized block {} (Chainlink: ErrFinalityViolated)",
                    head.n, l.max[FINALIZED]
                ));
            }
            if let Some((&last, last_hash)) = l.delivered.last_key_value() {
                let extends = head.n == last + 1 && head.parent == *last_hash;
                let forks = head.n <= last + 1
                    && head.n > 0
                    && l.delivered.get(&(head.n - 1)) == Some(&head.parent)
                    && l.delivered.get(&head.n) != Some(&head.hash);
                if forks && !extends {
                    let replaced: Vec<String> =
                        l.delivered.split_off(&head.n).into_values().collect();
                    l.reorgs.push((head.n, replaced));
                } else if !extends {
                    l.head_violations.push(format!(
                        "head {} {} (parent {}) neither extends block {last} {last_hash} nor forks \
                         from a delivered block",
                        head.n, head.hash, head.parent
                    ));
                }
            }
            l.delivered.insert(head.n, head.hash.clone());
            l.heads.push(head);
        });
    }
}

/// What a poller sends.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub url: String,
    pub chain_id: u64,
    /// Pause between two rounds.
    pub every: Duration,
    /// Also send a batch of `eth_getBlockByNumber` by number each round, for the finalized
    /// block and this many blocks above it (see [`batch_blocks`] for the bound).
    pub batch: Option<u64>,
}

/// A Chainlink-like poller (MultiNode's polling plus HeadTracker's block reads) until `stop`.
pub fn spawn_poller(
    obs: Observer,
    cfg: PollerConfig,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = Http::default();
        let mut round: u64 = 0;
        while !*stop.borrow() {
            poll_round(&http, &obs, &cfg, round).await;
            round += 1;
            tokio::select! {
                _ = tokio::time::sleep(cfg.every) => {}
                _ = stop.changed() => {}
            }
        }
    })
}

async fn poll_round(http: &Http, obs: &Observer, cfg: &PollerConfig, round: u64) {
    let url = &cfg.url;
    let before = obs.snapshot();
    match http
        .rpc(url, "eth_blockNumber", json!([]), CALL_TIMEOUT)
        .await
    {
        Ok(v) => match hex_u64(&v) {
            Some(n) => obs.saw(LATEST, n, before, "eth_blockNumber"),
            None => obs.failed("eth_blockNumber", format!("not a quantity: {v}")),
        },
        Err(e) => obs.failed("eth_blockNumber", e.to_string()),
    }
    let mut finalized = None;
    for (tag, name) in [(2, "finalized"), (1, "safe"), (0, "latest")] {
        let before = obs.snapshot();
        let what = format!("eth_getBlockByNumber({name})");
        match http
            .rpc(
                url,
                "eth_getBlockByNumber",
                json!([name, false]),
                CALL_TIMEOUT,
            )
            .await
        {
            Ok(b) => match hex_u64(&b["number"]) {
                Some(n) => {
                    obs.saw(tag, n, before, &what);
                    obs.saw_block(&b);
                    if tag == FINALIZED {
                        finalized = Some(n);
                    }
                }
                None => obs.failed(&what, format!("no block: {b}")),
            },
            Err(e) => obs.failed(&what, e.to_string()),
        }
    }
    if round % 8 == 0 {
        match http
            .rpc(url, "web3_clientVersion", json!([]), CALL_TIMEOUT)
            .await
        {
            Ok(v) if v.as_str().is_some_and(|s| !s.is_empty()) => obs.other_read(),
            Ok(v) => obs.failed("web3_clientVersion", format!("odd answer {v}")),
            Err(e) => obs.failed("web3_clientVersion", e.to_string()),
        }
        match http.rpc(url, "eth_chainId", json!([]), CALL_TIMEOUT).await {
            Ok(v) if hex_u64(&v) == Some(cfg.chain_id) => obs.other_read(),
            Ok(v) => obs.failed("eth_chainId", format!("wrong chain id {v}")),
            Err(e) => obs.failed("eth_chainId", e.to_string()),
        }
    }
    if let (Some(above), Some(base)) = (cfg.batch, finalized) {
        batch_blocks(http, obs, url, base..=base + above).await;
    }
}

/// `eth_getBlockByNumber` for every number in `range` as one batch (the LogPoller batch-reads
/// blocks from its last finalized block up): every block must come back, with its own number.
/// The caller keeps the range below the head of every node that may be left serving: a block
/// above every live node's head (one only a node that died had) cannot be served by anyone,
/// and ethgate then answers `null`, as documented.
async fn batch_blocks(
    http: &Http,
    obs: &Observer,
    url: &str,
    range: std::ops::RangeInclusive<u64>,
) {
    let calls: Vec<Value> = range
        .clone()
        .map(|n| {
            json!({"jsonrpc": "2.0", "id": n, "method": "eth_getBlockByNumber",
                   "params": [format!("0x{n:x}"), false]})
        })
        .collect();
    let what = format!("batch eth_getBlockByNumber {range:?}");
    let body = Value::Array(calls).to_string().into();
    let answers = match http.request("POST", url, Some(body), CALL_TIMEOUT).await {
        Ok((200, bytes)) => serde_json::from_slice::<Vec<Value>>(&bytes).map_err(|e| {
            format!(
                "not a JSON array ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        }),
        Ok((status, bytes)) => Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        )),
        Err(e) => Err(e.0),
    };
    let answers = match answers {
        Ok(a) => a,
        Err(e) => return obs.failed(&what, e),
    };
    let by_id: HashMap<u64, &Value> = answers
        .iter()
        .filter_map(|a| Some((a["id"].as_u64()?, a)))
        .collect();
    for n in range {
        match by_id.get(&n) {
            Some(a) if hex_u64(&a["result"]["number"]) == Some(n) => obs.saw_block(&a["result"]),
            Some(a) => return obs.failed(&what, format!("block {n}: {a}")),
            None => return obs.failed(&what, format!("no answer for block {n}: {answers:?}")),
        }
    }
    obs.other_read();
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// HeadTracker + LogPoller: `eth_chainId` on dial, `newHeads` over one WebSocket, and
/// `eth_getLogs {blockHash, address}` over HTTP for every delivered head (a failed fetch is
/// tried again, up to a bound, as the LogPoller does on its next poll). Runs until `stop`.
pub async fn spawn_head_follower(
    obs: Observer,
    ws_url: &str,
    http_url: &str,
    address: &str,
    chain_id: u64,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, String> {
    let (mut socket, _) =
        tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(ws_url))
            .await
            .map_err(|_| "WebSocket connect timed out".to_string())?
            .map_err(|e| format!("WebSocket connect: {e}"))?;
    let id = ws_call(&mut socket, "eth_chainId", json!([])).await?;
    if hex_u64(&id) != Some(chain_id) {
        return Err(format!("eth_chainId on dial: {id}"));
    }
    let sub = ws_call(&mut socket, "eth_subscribe", json!(["newHeads"])).await?;
    if !sub.is_string() {
        return Err(format!("eth_subscribe newHeads: {sub}"));
    }
    let (logs_tx, logs_rx) = mpsc::unbounded_channel::<String>();
    let fetcher = tokio::spawn(fetch_logs(
        obs.clone(),
        http_url.to_string(),
        address.to_string(),
        logs_rx,
    ));
    Ok(tokio::spawn(async move {
        follow_heads(&obs, &mut socket, &logs_tx, stop).await;
        drop(logs_tx);
        // The logs of the last heads are still being fetched; bounded by the fetcher's retries.
        let _ = tokio::time::timeout(Duration::from_secs(30), fetcher).await;
        let _ = socket.close(None).await;
    }))
}

/// One call on the socket before any subscription exists: the answer's `result`.
async fn ws_call(socket: &mut Socket, method: &str, params: Value) -> Result<Value, String> {
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    socket
        .send(Message::text(call.to_string()))
        .await
        .map_err(|e| format!("{method}: {e}"))?;
    loop {
        let frame = tokio::time::timeout(CALL_TIMEOUT, socket.next())
            .await
            .map_err(|_| format!("{method}: no answer within {CALL_TIMEOUT:?}"))?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                let m: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("{method}: answer not JSON ({e}): {text}"))?;
                return m
                    .get("result")
                    .cloned()
                    .ok_or_else(|| format!("{method}: {m}"));
            }
            Some(Ok(Message::Close(c))) => return Err(format!("{method}: socket closed {c:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("{method}: {e}")),
            None => return Err(format!("{method}: socket ended")),
        }
    }
}

/// Reads newHeads notifications until `stop`, recording each head and queueing its logs.
async fn follow_heads(
    obs: &Observer,
    socket: &mut Socket,
    logs: &mpsc::UnboundedSender<String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let frame = tokio::select! {
            f = socket.next() => f,
            _ = stop.changed() => return,
        };
        let problem = match frame {
            Some(Ok(Message::Text(text))) => {
                let m: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                let r = &m["params"]["result"];
                match (
                    hex_u64(&r["number"]),
                    r["hash"].as_str(),
                    r["parentHash"].as_str(),
                ) {
                    (Some(n), Some(h), Some(p)) => {
                        let hash = h.to_lowercase();
                        obs.head(Head {
                            n,
                            hash: hash.clone(),
                            parent: p.to_lowercase(),
                        });
                        let _ = logs.send(hash);
                        continue;
                    }
                    _ => {
                        obs.with(|l| l.head_violations.push(format!("odd frame {m}")));
                        continue;
                    }
                }
            }
            Some(Ok(Message::Close(c))) => format!("WebSocket closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => format!("WebSocket error: {e}"),
            None => "WebSocket ended".to_string(),
        };
        obs.with(|l| l.head_violations.push(problem));
        return;
    }
}

const LOG_ATTEMPTS: usize = 5;

async fn fetch_logs(
    obs: Observer,
    url: String,
    address: String,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let http = Http::default();
    while let Some(hash) = rx.recv().await {
        let params = json!([{"blockHash": hash, "address": address}]);
        for attempt in 1..=LOG_ATTEMPTS {
            match http
                .rpc(&url, "eth_getLogs", params.clone(), CALL_TIMEOUT)
                .await
            {
                Ok(Value::Array(logs)) => {
                    let txs = logs
                        .iter()
                        .map(|l| l["transactionHash"].as_str().unwrap_or("?").to_lowercase())
                        .collect();
                    obs.with(|l| {
                        l.logs.insert(hash.clone(), txs);
                        l.other_reads += 1;
                    });
                    break;
                }
                other => {
                    let error = match other {
                        Ok(v) => format!("not an array: {v}"),
                        Err(e) => e.to_string(),
                    };
                    let what = format!("attempt {attempt}: {error}");
                    obs.with(|l| l.log_retries.push((hash.clone(), what)));
                    if attempt == LOG_ATTEMPTS {
                        obs.with(|l| l.log_failures.push((hash.clone(), error)));
                    } else {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        }
    }
}

/// The event's topic: any fixed 32 bytes do (here the ASCII of "ethgate chainlink e2e tick event").
pub const TICK_TOPIC: &str = "0x6574686761746520636861696e6c696e6b20653265207469636b206576656e74";

/// Init code + runtime of the event contract of `tests/js/ws_watch.mjs` (the bytecode is
/// annotated there): every call emits `LOG1(topic)` with the call data as the log's data.
/// `topic` is 32 bytes, `0x` hex.
pub fn tick_contract_bytecode(topic: &str) -> String {
    let topic = topic.trim_start_matches("0x");
    format!("0x602c80600b6000396000f33660006000377f{topic}366000a100")
}

/// A type-2 transaction from anvil's dev account `from` with an explicit nonce, signed by a
/// devnet node (`eth_signTransaction`; anvil signs for its dev accounts). `to: None` deploys.
pub async fn sign_tx(
    http: &Http,
    node_url: &str,
    from: &str,
    chain_id: u64,
    nonce: u64,
    to: Option<&str>,
    data: &str,
) -> Result<String, String> {
    let mut tx = json!({
        "from": from, "value": "0x0", "gas": "0x30d40", "nonce": format!("0x{nonce:x}"),
        "maxFeePerGas": "0x4a817c800", "maxPriorityFeePerGas": "0x3b9aca00",
        "chainId": format!("0x{chain_id:x}"), "type": "0x2", "data": data,
    });
    if let Some(to) = to {
        tx["to"] = json!(to);
    }
    let raw = http
        .rpc(node_url, "eth_signTransaction", json!([tx]), CALL_TIMEOUT)
        .await
        .map_err(|e| format!("eth_signTransaction: {e}"))?;
    raw.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("eth_signTransaction answered {raw}"))
}

/// A `0x` hex quantity.
pub fn hex_u64(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.strip_prefix("0x")?, 16).ok()
}
