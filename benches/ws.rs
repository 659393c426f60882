//! WebSocket load bench: request/response through ethgate vs directly to a fast upstream,
//! newHeads fan-out delay to 100 / 1,000 / 10,000 subscribed clients, and ethgate's RSS with
//! 10,000 idle subscribed clients.
//!
//! ```text
//! cargo bench --bench ws                          # full run (about a minute)
//! ETHGATE_BENCH_QUICK=1 cargo bench --bench ws    # smoke run (shorter points, 4 heads)
//! ETHGATE_WS_BENCH_CLIENTS="100 1000" cargo bench --bench ws   # other fan-out sizes
//! ETHGATE_WS_BENCH_HEADS=20 ETHGATE_WS_BENCH_HEAD_MS=100 cargo bench --bench ws  # other head pace
//! ```
//!
//! Layout (after docs benchmarks.md): ethgate runs as a child process (`ethgate run --workers 1
//! --log-level warn`, started under `taskset -c 0`), so its RSS and CPU time can be read from
//! `/proc/PID`. This process holds the upstream (one tokio worker, pinned to CPU 0 with ethgate)
//! and the clients (one worker, pinned to CPU 1). `ETHGATE_BENCH_PIN=0` pins nothing and gives
//! ethgate two workers.
//!
//! The upstream is a compact in-process JSON-RPC node: HTTP (ethgate's health probes and every
//! call ethgate forwards) and WebSocket (`eth_subscribe` newHeads, `eth_blockNumber`,
//! `eth_getBlockByHash`/`ByNumber` for gap fills). Heads chain (number n, hash h(n), parentHash
//! h(n-1)) and carry geth's header fields; the bench emits them and keeps number → emit instant,
//! so the fan-out delay is measured on one clock from the upstream's notification to each
//! client's receipt.
//!
//! Nothing is asserted about speed: the bench prints tables and exits 0 unless it breaks. Every
//! wait is bounded; the child is killed when the bench ends (a drop guard).
//!
//! `cargo test --all-targets` builds this target and runs it without `--bench`; it then prints
//! one line and exits at once.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod common;
use common::*;

/// Request/response connection counts.
const RR_CONNECTIONS: [usize; 2] = [1, 16];
/// Default fan-out sizes.
const FANOUT_CLIENTS: [usize; 3] = [100, 1_000, 10_000];
/// Clients connecting (and subscribing) at once.
const CONNECT_CONCURRENCY: usize = 200;
/// Read buffer of the bench's own WebSockets (clients and upstream); ethgate's are its own.
const BENCH_WS_READ_BUFFER: usize = 8 * 1024;
/// First block number the upstream reports.
const FIRST_HEAD: u64 = 0x10_0000;
/// File descriptors kept free besides the client sockets.
const FD_MARGIN: usize = 256;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("ws bench: skipped (run it with `cargo bench --bench ws`)");
        return;
    }
    if let Err(error) = run() {
        eprintln!("ws bench failed: {error:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Plan.

struct Plan {
    quick: bool,
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    fanout: Vec<usize>,
    heads: u64,
    head_every: Duration,
    /// Clients the fd limit allows in this process (and in ethgate).
    fd_soft_limit: Option<usize>,
    clients_capped: bool,
}

impl Plan {
    fn from_env() -> Plan {
        let quick = std::env::var("ETHGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut fanout = std::env::var("ETHGATE_WS_BENCH_CLIENTS")
            .ok()
            .map(|v| {
                v.split([' ', ','])
                    .filter_map(|n| n.replace('_', "").parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .collect::<Vec<usize>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| FANOUT_CLIENTS.to_vec());
        fanout.sort_unstable();
        fanout.dedup();
        let fd_soft_limit = open_files_soft_limit();
        let mut clients_capped = false;
        if let Some(limit) = fd_soft_limit {
            let max = limit.saturating_sub(FD_MARGIN).max(1);
            for n in &mut fanout {
                if *n > max {
                    *n = max;
                    clients_capped = true;
                }
            }
            fanout.dedup();
        }
        let (warmup, measure, rounds, heads) = if quick {
            (Duration::from_millis(100), Duration::from_millis(500), 1, 4)
        } else {
            (
                Duration::from_millis(500),
                Duration::from_millis(2500),
                2,
                10,
            )
        };
        Plan {
            quick,
            warmup,
            measure,
            rounds,
            fanout,
            heads: env_number("ETHGATE_WS_BENCH_HEADS").unwrap_or(heads).max(1),
            head_every: Duration::from_millis(
                env_number("ETHGATE_WS_BENCH_HEAD_MS").unwrap_or(300),
            ),
            fd_soft_limit,
            clients_capped,
        }
    }
}

/// A positive number from the environment.
fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .filter(|&n: &u64| n > 0)
}

/// Soft "Max open files" of this process (the child inherits it).
fn open_files_soft_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Timeline, to line ethgate's log up with the bench's phases.

static TIMELINE: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records that `what` starts now (UTC wall clock, like ethgate's log).
fn mark(what: impl Into<String>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let day = now.as_secs() % 86_400;
    let clock = format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        now.subsec_millis()
    );
    TIMELINE.lock().unwrap().push((clock, what.into()));
}

// ---------------------------------------------------------------------------------------------
// The whole run.

/// CPU time stolen from this VM by the hypervisor so far (all CPUs), from `/proc/stat`.
fn steal_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: u64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .nth(8)?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn run() -> anyhow::Result<()> {
    let plan = Plan::from_env();
    let steal_before = steal_time();
    let started = Instant::now();
    let pin = std::env::var("ETHGATE_BENCH_PIN").map_or(true, |v| v != "0")
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());

    let upstream_rt = Pinned::runtime("ws-upstream", pin.then_some(0))?;
    let client_rt = Pinned::runtime("ws-client", pin.then_some(1))?;
    let pinned = pin && upstream_rt.pinned() && client_rt.pinned();

    // Upstream.
    let upstream = Arc::new(Upstream::new());
    let (http_addr, ws_addr) = upstream_rt.rt.block_on(async {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let ws = TcpListener::bind("127.0.0.1:0").await?;
        let addrs = (http.local_addr()?, ws.local_addr()?);
        tokio::spawn(serve_upstream_http(upstream.clone(), http));
        tokio::spawn(serve_upstream_ws(upstream.clone(), ws));
        anyhow::Ok(addrs)
    })?;

    // ethgate in front of it, as a child process.
    let workers = if pin { 1 } else { 2 };
    mark("ethgate starting");
    let gate = Gate::start(http_addr, ws_addr, workers, pin)?;
    client_rt
        .rt
        .block_on(gate.wait_ready(&upstream))
        .context("ethgate did not become ready")?;
    // Two heads so ethgate's chain view has started before anything is measured.
    client_rt.rt.block_on(async {
        for _ in 0..2 {
            upstream.emit_next();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut memory = vec![client_rt
        .rt
        .block_on(gate.memory_point("started, no client yet"))];

    print_header(&plan, &gate, pinned, pin, workers);

    // 1. Request/response.
    let targets = [
        RrTarget {
            name: "direct",
            url: format!("ws://{ws_addr}/"),
            proxy: false,
        },
        RrTarget {
            name: "ethgate",
            url: format!("ws://{}/", gate.listen),
            proxy: true,
        },
    ];
    let mut rr_points: Vec<Vec<RrPoint>> = vec![Vec::new(); RR_CONNECTIONS.len() * 2];
    for _ in 0..plan.rounds {
        for (ci, &conns) in RR_CONNECTIONS.iter().enumerate() {
            for (ti, target) in targets.iter().enumerate() {
                mark(format!("request/response {} c={conns}", target.name));
                let point = rr_measure(&client_rt, &upstream_rt, &gate, target, conns, &plan)?;
                rr_points[ci * 2 + ti].push(point);
            }
        }
    }
    let rr_stats: Vec<RrStats> = rr_points.iter().map(|p| RrStats::pool(p)).collect();
    print_rr(&rr_stats, &targets);
    memory.push(
        client_rt
            .rt
            .block_on(gate.memory_point("after request/response, no client")),
    );

    // 2. Fan-out, growing one set of subscribers; 3. memory along the way.
    let outcome = client_rt
        .rt
        .block_on(fanout(&plan, &upstream, &client_rt, &gate, &mut memory));
    let (fanout_rows, teardown) = outcome?;
    print_fanout(&plan, &fanout_rows, &upstream);
    print_memory(&memory, &plan, teardown.as_ref());
    print_log(&gate);
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        let steal = match (steal_before, steal_time()) {
            (Some(a), Some(b)) => format!("{:.2} s", b.saturating_sub(a).as_secs_f64()),
            _ => "unknown".into(),
        };
        println!(
            "run took {:.0} s; CPU steal meanwhile {steal}; load average now {}",
            started.elapsed().as_secs_f64(),
            load.join(" ")
        );
    }

    drop(gate);
    client_rt.rt.shutdown_timeout(Duration::from_secs(1));
    upstream_rt.rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Runtimes pinned to a CPU, with their thread ids recorded for CPU accounting.

// ---------------------------------------------------------------------------------------------
// The upstream: a fast JSON-RPC node over HTTP and WebSocket with a chain the bench drives.

struct Upstream {
    head: AtomicU64,
    /// Emit instant of every head, by number.
    emitted: Mutex<HashMap<u64, Instant>>,
    heads: broadcast::Sender<Arc<str>>,
    /// Live newHeads subscriptions (ethgate's feed holds one).
    subscriptions: AtomicUsize,
    /// newHeads subscriptions ever made (more than one: ethgate's feed reconnected).
    subscribes_total: AtomicUsize,
    http_calls: AtomicU64,
    ws_calls: AtomicU64,
    /// Header fetches by hash or number (ethgate's gap fills).
    header_fetches: AtomicU64,
}

impl Upstream {
    fn new() -> Upstream {
        Upstream {
            head: AtomicU64::new(FIRST_HEAD),
            emitted: Mutex::new(HashMap::new()),
            heads: broadcast::channel(1024).0,
            subscriptions: AtomicUsize::new(0),
            subscribes_total: AtomicUsize::new(0),
            http_calls: AtomicU64::new(0),
            ws_calls: AtomicU64::new(0),
            header_fetches: AtomicU64::new(0),
        }
    }

    /// Emits the next head to every newHeads subscription; returns its number.
    fn emit_next(&self) -> u64 {
        let n = self.head.load(Ordering::SeqCst) + 1;
        let header: Arc<str> = header_json(n).into();
        self.head.store(n, Ordering::SeqCst);
        self.emitted.lock().unwrap().insert(n, Instant::now());
        let _ = self.heads.send(header);
        n
    }

    fn emitted_at(&self, n: u64) -> Option<Instant> {
        self.emitted.lock().unwrap().get(&n).copied()
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
fn header_json(n: u64) -> String {
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

async fn serve_upstream_http(upstream: Arc<Upstream>, listener: TcpListener) {
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
        let Ok(calls) = serde_json::from_slice::<Vec<Call>>(&body) else {
            return Ok(status_only(StatusCode::BAD_REQUEST));
        };
        out.push('[');
        for (i, call) in calls.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            upstream.answer_object(&mut out, call);
        }
        out.push(']');
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

fn bench_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(BENCH_WS_READ_BUFFER)
}

async fn serve_upstream_ws(upstream: Arc<Upstream>, listener: TcpListener) {
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

struct Gate {
    child: Child,
    pid: u32,
    dir: PathBuf,
    log: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

impl Gate {
    fn start(http: SocketAddr, ws: SocketAddr, workers: usize, pin: bool) -> anyhow::Result<Gate> {
        let dir = std::env::temp_dir().join(format!("ethgate-ws-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let listen = free_port()?;
        let admin = free_port()?;
        let config = dir.join("ethgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = "{listen}"
max_connections = 15000
ws_queue_len = 4096

[health]
interval = "200ms"
timeout = "150ms"

[admin]
listen = "{admin}"

[log]
level = "warn"

[[upstream]]
name = "bench-upstream"
http = "http://{http}/"
ws = "ws://{ws}/"
"#
            ),
        )?;
        let log = dir.join("ethgate.log");
        let exe = env!("CARGO_BIN_EXE_ethgate");
        let mut command = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", exe]);
            c
        } else {
            Command::new(exe)
        };
        command
            .args(["run", "--config"])
            .arg(&config)
            .args(["--log-level", "warn", "--workers", &workers.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = command.spawn().with_context(|| format!("starting {exe}"))?;
        let pid = child.id();
        Ok(Gate {
            child,
            pid,
            dir,
            log,
            listen,
            admin,
        })
    }

    /// Waits until `/readyz` answers 200 and ethgate's feed holds a newHeads subscription.
    async fn wait_ready(&self, upstream: &Upstream) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::from("nothing yet");
        while Instant::now() < deadline {
            if let Some(state) = self.exited() {
                bail!("ethgate exited ({state}); log:\n{}", self.log_text());
            }
            match admin_get(self.admin, "/readyz").await {
                Ok((status, _)) if status == StatusCode::OK => {
                    if upstream.subscriptions.load(Ordering::SeqCst) > 0 {
                        return Ok(());
                    }
                    last = "ready, but no newHeads subscription upstream yet".into();
                }
                Ok((status, _)) => last = format!("/readyz {status}"),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "not ready within 20 s (last: {last}); log:\n{}",
            self.log_text()
        )
    }

    fn exited(&self) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok();
        match stat {
            None => Some("gone".into()),
            Some(s)
                if s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')) =>
            {
                Some("zombie".into())
            }
            Some(_) => None,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cpu_time(&self) -> Duration {
        process_cpu_time(self.pid)
    }

    /// VmRSS and VmHWM in KiB.
    fn rss(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// WebSocket sessions (`ethgate_ws_connections` in `/metrics`), `connections` and
    /// `subscriptions.newHeads` from `/status`.
    async fn counts(&self) -> Option<Counts> {
        let (status, body) = admin_get(self.admin, "/status").await.ok()?;
        if status != StatusCode::OK {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let (status, metrics) = admin_get(self.admin, "/metrics").await.ok()?;
        if status != StatusCode::OK {
            return None;
        }
        let metrics = String::from_utf8_lossy(&metrics);
        let ws_sessions = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ethgate_ws_connections "))
            .and_then(|v| v.trim().parse::<f64>().ok())? as u64;
        Some(Counts {
            ws_sessions,
            status_connections: value["connections"].as_u64()?,
            new_heads: value["subscriptions"]["newHeads"].as_u64()?,
        })
    }

    async fn memory_point(&self, label: &str) -> MemoryPoint {
        let (rss_kib, hwm_kib) = self.rss();
        let counts = self.counts().await;
        MemoryPoint {
            label: label.to_string(),
            clients: None,
            rss_kib,
            hwm_kib,
            counts,
        }
    }

    /// Waits until ethgate counts `want` WebSocket sessions and newHeads subscriptions.
    async fn wait_counts(&self, want: u64, limit: Duration) -> (bool, Duration, Option<Counts>) {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < limit {
            last = self.counts().await;
            if last.is_some_and(|c| c.ws_sessions == want && c.new_heads == want) {
                return (true, started.elapsed(), last);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (false, started.elapsed(), last)
    }
}

async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let call = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(HOST, addr.to_string())
            .body(Empty::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .map_err(|_| anyhow!("GET {path}: no answer within 5 s"))?
}

// ---------------------------------------------------------------------------------------------
// 1. Request/response.

struct RrTarget {
    name: &'static str,
    url: String,
    proxy: bool,
}

#[derive(Clone)]
struct RrPoint {
    latencies_ns: Vec<u64>,
    window: Duration,
    errors: u64,
    proxy_cpu: Duration,
    upstream_cpu: Duration,
}

struct RrRecord {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async_with_config(url, Some(bench_ws_config()), true),
    )
    .await
    .map_err(|_| anyhow!("WebSocket connect to {url}: timed out"))??;
    Ok(ws)
}

/// The next text frame (pings and pongs skipped); an error on close.
async fn next_text(ws: &mut Ws) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => bail!("connection ended"),
        }
    }
}

async fn rr_client(url: String, measure_from: Instant, end: Instant) -> anyhow::Result<RrRecord> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        id: Option<u64>,
        #[serde(borrow)]
        result: Option<&'a RawValue>,
        #[serde(borrow)]
        error: Option<&'a RawValue>,
    }
    let mut ws = connect(&url).await?;
    let mut record = RrRecord {
        latencies_ns: Vec::with_capacity(64 * 1024),
        errors: 0,
        first_error: None,
    };
    let mut id = 0u64;
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        id += 1;
        let request =
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_blockNumber","params":[]}}"#);
        ws.send(Message::text(request)).await?;
        let text = tokio::time::timeout(Duration::from_secs(10), next_text(&mut ws))
            .await
            .map_err(|_| anyhow!("no answer within 10 s"))??;
        let elapsed = started.elapsed();
        let verdict = match serde_json::from_str::<Answer>(text.as_str()) {
            Ok(a) if a.error.is_none() && a.result.is_some() && a.id == Some(id) => Ok(()),
            _ => Err(format!("unexpected answer to id {id}: {}", text.as_str())),
        };
        if started >= measure_from {
            record.latencies_ns.push(elapsed.as_nanos() as u64);
            if let Err(error) = verdict {
                record.errors += 1;
                record.first_error.get_or_insert(error);
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(record)
}

fn rr_measure(
    client_rt: &Pinned,
    upstream_rt: &Pinned,
    gate: &Gate,
    target: &RrTarget,
    conns: usize,
    plan: &Plan,
) -> anyhow::Result<RrPoint> {
    let window = plan.measure;
    let (records, proxy_cpu, upstream_cpu) = client_rt.rt.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let measure_from = start + plan.warmup;
        let end = measure_from + window;
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let url = target.url.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    rr_client(url, measure_from, end).await
                })
            })
            .collect();
        tokio::time::sleep_until(measure_from.into()).await;
        let proxy_before = gate.cpu_time();
        let upstream_before = upstream_rt.cpu_time();
        tokio::time::sleep_until(end.into()).await;
        let proxy_cpu = gate.cpu_time().saturating_sub(proxy_before);
        let upstream_cpu = upstream_rt.cpu_time().saturating_sub(upstream_before);
        let mut records = Vec::with_capacity(conns);
        for task in tasks {
            records.push(task.await??);
        }
        anyhow::Ok((records, proxy_cpu, upstream_cpu))
    })?;
    let mut point = RrPoint {
        latencies_ns: Vec::new(),
        window,
        errors: 0,
        proxy_cpu: if target.proxy {
            proxy_cpu
        } else {
            Duration::ZERO
        },
        upstream_cpu,
    };
    let mut first_error = None;
    for record in records {
        point.latencies_ns.extend(record.latencies_ns);
        point.errors += record.errors;
        first_error = first_error.or(record.first_error);
    }
    if let Some(error) = first_error {
        eprintln!(
            "{} c={conns}: {} bad answers, first: {error}",
            target.name, point.errors
        );
    }
    Ok(point)
}

struct RrStats {
    rate: f64,
    round_rates: Vec<f64>,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    errors: u64,
    proxy_us: f64,
    upstream_us: f64,
}

impl RrStats {
    fn pool(points: &[RrPoint]) -> RrStats {
        let mut all: Vec<u64> = points
            .iter()
            .flat_map(|p| p.latencies_ns.iter().copied())
            .collect();
        all.sort_unstable();
        let count = all.len() as f64;
        let seconds: f64 = points.iter().map(|p| p.window.as_secs_f64()).sum();
        let per_message = |cpu: Duration| {
            if all.is_empty() {
                0.0
            } else {
                cpu.as_secs_f64() * 1e6 / count
            }
        };
        RrStats {
            rate: count / seconds,
            round_rates: points
                .iter()
                .map(|p| p.latencies_ns.len() as f64 / p.window.as_secs_f64())
                .collect(),
            p50: percentile(&all, 0.50) / 1e3,
            p99: percentile(&all, 0.99) / 1e3,
            p999: percentile(&all, 0.999) / 1e3,
            max: all.last().map_or(f64::NAN, |&ns| ns as f64 / 1e3),
            errors: points.iter().map(|p| p.errors).sum(),
            proxy_us: per_message(points.iter().map(|p| p.proxy_cpu).sum()),
            upstream_us: per_message(points.iter().map(|p| p.upstream_cpu).sum()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Fan-out and 3. memory.

/// What one subscribed client saw.
#[derive(Default)]
struct ClientLog {
    /// (block number, receipt instant) of every newHeads notification.
    heads: Mutex<Vec<(u64, Instant)>>,
    /// Text frames that were not a newHeads notification.
    other: AtomicU64,
    /// Why the connection ended, if it did.
    ended: Mutex<Option<String>>,
}

struct Subscriber {
    log: Arc<ClientLog>,
    task: JoinHandle<()>,
}

/// `"number":"0x…"` of a notification, read without parsing the JSON.
fn head_number(text: &str) -> Option<u64> {
    const KEY: &str = r#""number":"0x"#;
    let start = text.find(KEY)? + KEY.len();
    let end = start + text[start..].find('"')?;
    u64::from_str_radix(&text[start..end], 16).ok()
}

/// Connects, subscribes to newHeads and reports readiness; then records every frame.
async fn subscriber_task(
    url: String,
    permits: Arc<Semaphore>,
    log: Arc<ClientLog>,
    ready: oneshot::Sender<anyhow::Result<Duration>>,
) {
    let permit = permits.acquire_owned().await;
    let started = Instant::now();
    let subscribed = async {
        let mut ws = connect(&url).await?;
        ws.send(Message::text(
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#,
        ))
        .await?;
        let text = tokio::time::timeout(Duration::from_secs(15), next_text(&mut ws))
            .await
            .map_err(|_| anyhow!("no subscribe answer within 15 s"))??;
        let text = text.as_str();
        if !text.contains(r#""id":1"#) || !text.contains(r#""result":"0x"#) {
            bail!("unexpected subscribe answer: {text}");
        }
        anyhow::Ok(ws)
    };
    let mut ws = match subscribed.await {
        Ok(ws) => {
            let _ = ready.send(Ok(started.elapsed()));
            ws
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    drop(permit);
    let ended = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let now = Instant::now();
                match head_number(text.as_str()) {
                    Some(n) if text.as_str().contains("eth_subscription") => {
                        log.heads.lock().unwrap().push((n, now));
                    }
                    _ => {
                        log.other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => break format!("closed by ethgate: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => break format!("error: {error}"),
            None => break "connection ended".to_string(),
        }
    };
    *log.ended.lock().unwrap() = Some(ended);
}

/// Adds subscribers until there are `total`; returns each one's connect + subscribe time
/// (sorted, ns), the failures and the first failure.
async fn grow(
    subscribers: &mut Vec<Subscriber>,
    total: usize,
    url: &str,
) -> (Vec<u64>, usize, Option<String>) {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut ready = Vec::new();
    while subscribers.len() < total {
        let log = Arc::new(ClientLog::default());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(subscriber_task(
            url.to_string(),
            permits.clone(),
            log.clone(),
            tx,
        ));
        subscribers.push(Subscriber { log, task });
        ready.push(rx);
    }
    let mut failures = 0;
    let mut first = None;
    let mut took = Vec::with_capacity(ready.len());
    for rx in ready {
        match rx.await {
            Ok(Ok(duration)) => took.push(duration.as_nanos() as u64),
            Ok(Err(error)) => {
                failures += 1;
                first.get_or_insert(format!("{error:#}"));
            }
            Err(_) => {
                failures += 1;
                first.get_or_insert("subscriber task ended".to_string());
            }
        }
    }
    took.sort_unstable();
    (took, failures, first)
}

struct FanoutRow {
    clients: usize,
    connect: Duration,
    /// Connect + subscribe time of each new client, sorted, ns.
    connect_each: Vec<u64>,
    connect_failures: usize,
    registered: bool,
    heads: u64,
    expected: u64,
    delivered: u64,
    missing: u64,
    duplicates: u64,
    disordered_clients: u64,
    unexpected: u64,
    ended_clients: u64,
    first_ended: Option<String>,
    /// All (client, head) delays, sorted, ns.
    delays: Vec<u64>,
    /// Per head: delay to the first and to the last client, ns.
    first_client: Vec<u64>,
    last_client: Vec<u64>,
    gate_cpu_per_head: Duration,
    client_cpu_per_head: Duration,
}

struct Teardown {
    clients: usize,
    took: Duration,
    /// ethgate's CPU time meanwhile.
    cpu: Duration,
    drained: bool,
    left: Option<Counts>,
}

struct MemoryPoint {
    label: String,
    clients: Option<usize>,
    rss_kib: u64,
    hwm_kib: u64,
    counts: Option<Counts>,
}

/// What ethgate reports about its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// `ethgate_ws_connections` from `/metrics`.
    ws_sessions: u64,
    /// `connections` from `/status`.
    status_connections: u64,
    /// `subscriptions.newHeads` from `/status`.
    new_heads: u64,
}

async fn fanout(
    plan: &Plan,
    upstream: &Upstream,
    client_rt: &Pinned,
    gate: &Gate,
    memory: &mut Vec<MemoryPoint>,
) -> anyhow::Result<(Vec<FanoutRow>, Option<Teardown>)> {
    let url = format!("ws://{}/", gate.listen);
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut rows = Vec::new();
    let fetches_before = upstream.header_fetches.load(Ordering::Relaxed);
    for &clients in &plan.fanout {
        // Grow to `clients` subscribed clients, all registered in ethgate's hub.
        mark(format!("fan-out {clients}: connecting"));
        let connect_started = Instant::now();
        let (connect_each, connect_failures, first_failure) =
            grow(&mut subscribers, clients, &url).await;
        let connect = connect_started.elapsed();
        if let Some(failure) = &first_failure {
            eprintln!("fan-out {clients}: {connect_failures} clients could not subscribe, first: {failure}");
        }
        let live = (clients - connect_failures) as u64;
        let (registered, _, counts) = gate.wait_counts(live, Duration::from_secs(15)).await;
        if !registered {
            eprintln!("fan-out {clients}: ethgate shows {counts:?}, expected {live} sessions and subscriptions");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut point = gate
            .memory_point(&format!("{} subscribed, idle", thousands(clients as u64)))
            .await;
        point.clients = Some(clients);
        memory.push(point);

        // Emit the heads.
        mark(format!("fan-out {clients}: emitting heads"));
        for s in &subscribers {
            s.log.heads.lock().unwrap().clear();
            s.log.other.store(0, Ordering::Relaxed);
        }
        let gate_cpu = gate.cpu_time();
        let client_cpu = client_rt.cpu_time();
        let start = Instant::now();
        let mut numbers = Vec::new();
        for i in 0..plan.heads {
            let at = start + plan.head_every * i as u32;
            tokio::time::sleep_until(at.into()).await;
            numbers.push(upstream.emit_next());
        }
        let want = plan.heads as usize;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let done = subscribers.iter().all(|s| {
                s.log.heads.lock().unwrap().len() >= want || s.log.ended.lock().unwrap().is_some()
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Late duplicates would show up here.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gate_cpu = gate.cpu_time().saturating_sub(gate_cpu);
        let client_cpu = client_rt.cpu_time().saturating_sub(client_cpu);
        let mut row = evaluate(upstream, &subscribers, &numbers, clients);
        row.connect = connect;
        row.connect_each = connect_each;
        row.connect_failures = connect_failures;
        row.registered = registered;
        row.gate_cpu_per_head = gate_cpu / plan.heads as u32;
        row.client_cpu_per_head = client_cpu / plan.heads as u32;
        rows.push(row);
        if plan.fanout.last() == Some(&clients) {
            let mut point = gate
                .memory_point(&format!(
                    "{} subscribed, after {} heads",
                    thousands(clients as u64),
                    plan.heads
                ))
                .await;
            point.clients = Some(clients);
            memory.push(point);
        }
    }
    let fetches = upstream.header_fetches.load(Ordering::Relaxed) - fetches_before;
    if fetches > 0 {
        eprintln!(
            "note: ethgate fetched {fetches} headers from the upstream during fan-out (gap fills)"
        );
    }

    // Tear down every client at once and see ethgate drain its sessions.
    let teardown = if subscribers.is_empty() {
        None
    } else {
        let clients = subscribers.len();
        mark(format!("closing {clients} clients"));
        let cpu = gate.cpu_time();
        let started = Instant::now();
        for s in &subscribers {
            s.task.abort();
        }
        for s in subscribers.drain(..) {
            let _ = s.task.await;
        }
        let (drained, _, left) = gate.wait_counts(0, Duration::from_secs(20)).await;
        let took = started.elapsed();
        let cpu = gate.cpu_time().saturating_sub(cpu);
        mark("clients closed");
        // Long enough for the RSS to settle and for ethgate to log what the burst caused.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        memory.push(gate.memory_point("all clients closed").await);
        Some(Teardown {
            clients,
            took,
            cpu,
            drained,
            left,
        })
    };
    Ok((rows, teardown))
}

fn evaluate(
    upstream: &Upstream,
    subscribers: &[Subscriber],
    numbers: &[u64],
    clients: usize,
) -> FanoutRow {
    let heads = numbers.len() as u64;
    let (lo, hi) = (numbers[0], *numbers.last().unwrap_or(&numbers[0]));
    let emitted: Vec<Instant> = numbers
        .iter()
        .map(|&n| upstream.emitted_at(n).expect("emitted head"))
        .collect();
    let mut row = FanoutRow {
        clients,
        connect: Duration::ZERO,
        connect_each: Vec::new(),
        connect_failures: 0,
        registered: true,
        heads,
        expected: heads * subscribers.len() as u64,
        delivered: 0,
        missing: 0,
        duplicates: 0,
        disordered_clients: 0,
        unexpected: 0,
        ended_clients: 0,
        first_ended: None,
        delays: Vec::with_capacity(subscribers.len() * numbers.len()),
        first_client: vec![u64::MAX; numbers.len()],
        last_client: vec![0; numbers.len()],
        gate_cpu_per_head: Duration::ZERO,
        client_cpu_per_head: Duration::ZERO,
    };
    for s in subscribers {
        let log = s.log.heads.lock().unwrap();
        let mut seen = vec![0u32; numbers.len()];
        let mut previous = 0u64;
        let mut disordered = false;
        for &(n, at) in log.iter() {
            if n < lo || n > hi {
                row.unexpected += 1;
                continue;
            }
            if n <= previous {
                disordered = true;
            }
            previous = n;
            let i = (n - lo) as usize;
            seen[i] += 1;
            if seen[i] > 1 {
                row.duplicates += 1;
                continue;
            }
            row.delivered += 1;
            let delay = at.saturating_duration_since(emitted[i]).as_nanos() as u64;
            row.delays.push(delay);
            row.first_client[i] = row.first_client[i].min(delay);
            row.last_client[i] = row.last_client[i].max(delay);
        }
        row.missing += seen.iter().filter(|&&c| c == 0).count() as u64;
        row.unexpected += s.log.other.load(Ordering::Relaxed);
        if disordered {
            row.disordered_clients += 1;
        }
        if let Some(ended) = s.log.ended.lock().unwrap().as_ref() {
            row.ended_clients += 1;
            row.first_ended.get_or_insert(ended.clone());
        }
    }
    row.delays.sort_unstable();
    // Heads nobody received have no first/last delay.
    let received: Vec<bool> = row.first_client.iter().map(|&d| d != u64::MAX).collect();
    row.first_client = row
        .first_client
        .iter()
        .zip(&received)
        .filter_map(|(&d, &r)| r.then_some(d))
        .collect();
    row.last_client = row
        .last_client
        .iter()
        .zip(&received)
        .filter_map(|(&d, &r)| r.then_some(d))
        .collect();
    row.first_client.sort_unstable();
    row.last_client.sort_unstable();
    row
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tables.

fn print_header(plan: &Plan, gate: &Gate, pinned: bool, pin_wanted: bool, workers: usize) {
    println!();
    println!("ethgate WebSocket bench: request/response, newHeads fan-out, memory");
    println!(
        "mode: {} (request/response: {} round(s) x {:.1} s per point after {:.1} s warm-up; fan-out: {} heads, one every {} ms)",
        if plan.quick { "quick" } else { "full" },
        plan.rounds,
        plan.measure.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        plan.heads,
        plan.head_every.as_millis()
    );
    println!(
        "layout: ethgate child pid {} (--workers {workers}); upstream runtime 1 worker, clients runtime 1 worker; {}",
        gate.pid,
        if pinned {
            "ethgate + upstream pinned to CPU 0, clients to CPU 1"
        } else if pin_wanted {
            "pinning FAILED (taskset?), threads float"
        } else {
            "not pinned"
        }
    );
    println!(
        "bench side: WebSocket read buffers {} KiB; {CONNECT_CONCURRENCY} clients connect at a time",
        BENCH_WS_READ_BUFFER / 1024
    );
    println!(
        "open files soft limit: {}{}",
        plan.fd_soft_limit
            .map_or("unknown".into(), |l| l.to_string()),
        if plan.clients_capped {
            " (fan-out sizes capped to fit it)"
        } else {
            ""
        }
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!(
            "machine: {} CPUs, load average {} (other work on the machine skews absolute figures)",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load.join(" ")
        );
    }
}

fn print_rr(stats: &[RrStats], targets: &[RrTarget]) {
    println!();
    println!("1. WS request/response: closed loop, one WebSocket per client, eth_blockNumber");
    println!("   direct = the upstream's WebSocket; ethgate = ethgate's WebSocket (it calls the upstream over HTTP)");
    println!("   latencies in µs; cpu = on-CPU µs per message of ethgate (whole process) / of the upstream runtime");
    println!(
        "{:<8} {:>3} {:>9} {:>15} {:>8} {:>8} {:>8} {:>8} {:>11} {:>12} {:>4}",
        "target",
        "c",
        "msg/s",
        "rounds",
        "p50",
        "p99",
        "p99.9",
        "max",
        "ethgate cpu",
        "upstream cpu",
        "err"
    );
    for (ci, &conns) in RR_CONNECTIONS.iter().enumerate() {
        for (ti, target) in targets.iter().enumerate() {
            let s = &stats[ci * 2 + ti];
            let rounds: Vec<String> = s.round_rates.iter().map(|&r| kilo(r)).collect();
            println!(
                "{:<8} {:>3} {:>9} {:>15} {:>8.1} {:>8.1} {:>8.1} {:>8.0} {:>11} {:>12.1} {:>4}",
                target.name,
                conns,
                kilo(s.rate),
                rounds.join("/"),
                s.p50,
                s.p99,
                s.p999,
                s.max,
                if target.proxy {
                    format!("{:.1}", s.proxy_us)
                } else {
                    "-".into()
                },
                s.upstream_us,
                s.errors
            );
        }
    }
    println!();
    println!("ethgate vs direct");
    println!(
        "{:>3} {:>11} {:>10} {:>10} {:>12} {:>12}",
        "c", "msg/s ratio", "p50 ratio", "p99 ratio", "p50 added", "p99 added"
    );
    for (ci, &conns) in RR_CONNECTIONS.iter().enumerate() {
        let (d, e) = (&stats[ci * 2], &stats[ci * 2 + 1]);
        println!(
            "{:>3} {:>11.2} {:>10.2} {:>10.2} {:>12.1} {:>12.1}",
            conns,
            e.rate / d.rate,
            e.p50 / d.p50,
            e.p99 / d.p99,
            e.p50 - d.p50,
            e.p99 - d.p99
        );
    }
}

fn ms(ns: f64) -> String {
    if ns.is_nan() {
        "-".into()
    } else {
        format!("{:.2}", ns / 1e6)
    }
}

fn print_fanout(plan: &Plan, rows: &[FanoutRow], upstream: &Upstream) {
    println!();
    println!(
        "2. newHeads fan-out through ethgate: {} heads per size, one every {} ms, ~{} B header",
        plan.heads,
        plan.head_every.as_millis(),
        header_json(FIRST_HEAD).len()
    );
    println!("   delay = client receipt − upstream emit, in ms, over every (client, head); first/last = median over heads");
    println!("   of the delay to the first / the last client; cpu = on-CPU ms per head (ethgate: whole process, probes included);");
    println!("   ethgate µs = ethgate's CPU per notification sent (cpu per head / clients)");
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12} {:>12} {:>12}",
        "clients",
        "p50",
        "p99",
        "max",
        "first",
        "last",
        "ethgate cpu",
        "clients cpu",
        "ethgate µs",
        "delivered"
    );
    for r in rows {
        let per_notification = r.gate_cpu_per_head.as_secs_f64() * 1e6 / r.clients.max(1) as f64;
        println!(
            "{:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12.2} {:>12.2} {:>12.2} {:>12}",
            thousands(r.clients as u64),
            ms(percentile(&r.delays, 0.50)),
            ms(percentile(&r.delays, 0.99)),
            ms(r.delays.last().map_or(f64::NAN, |&d| d as f64)),
            ms(percentile(&r.first_client, 0.5)),
            ms(percentile(&r.last_client, 0.5)),
            r.gate_cpu_per_head.as_secs_f64() * 1e3,
            r.client_cpu_per_head.as_secs_f64() * 1e3,
            per_notification,
            format!("{}/{}", r.delivered, r.expected)
        );
    }
    println!();
    println!(
        "connecting: new clients per size, {CONNECT_CONCURRENCY} at a time; each = TCP + WebSocket handshake + eth_subscribe answer, ms"
    );
    println!(
        "{:>7} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "clients", "new", "total s", "per sec", "p50", "p99", "max", ">= 1 s"
    );
    for r in rows {
        let new = r.connect_each.len();
        println!(
            "{:>7} {:>8} {:>9.2} {:>9.0} {:>8} {:>8} {:>8} {:>8}",
            thousands(r.clients as u64),
            new,
            r.connect.as_secs_f64(),
            new as f64 / r.connect.as_secs_f64(),
            ms(percentile(&r.connect_each, 0.5)),
            ms(percentile(&r.connect_each, 0.99)),
            ms(r.connect_each.last().map_or(f64::NAN, |&d| d as f64)),
            r.connect_each
                .iter()
                .filter(|&&d| d >= 1_000_000_000)
                .count()
        );
    }
    println!();
    println!("delivery check (every subscribed client must get every head exactly once, in order)");
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8} {:>10} {:>8}",
        "clients",
        "heads",
        "missing",
        "dup",
        "disorder",
        "unexpected",
        "closed",
        "conn fail",
        "verdict"
    );
    for r in rows {
        let ok = r.missing == 0
            && r.duplicates == 0
            && r.disordered_clients == 0
            && r.unexpected == 0
            && r.ended_clients == 0
            && r.connect_failures == 0
            && r.registered
            && r.delivered == r.expected;
        println!(
            "{:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8} {:>10} {:>8}",
            thousands(r.clients as u64),
            r.heads,
            r.missing,
            r.duplicates,
            r.disordered_clients,
            r.unexpected,
            r.ended_clients,
            r.connect_failures,
            if ok { "ok" } else { "PROBLEM" }
        );
        if let Some(ended) = &r.first_ended {
            println!("        first closed client: {ended}");
        }
        if !r.registered {
            println!("        ethgate's /status never showed every client subscribed");
        }
    }
    println!(
        "upstream: {} HTTP requests, {} WS messages, {} header fetches (gap fills), newHeads subscriptions: {} live, {} made in all{}",
        upstream.http_calls.load(Ordering::Relaxed),
        upstream.ws_calls.load(Ordering::Relaxed),
        upstream.header_fetches.load(Ordering::Relaxed),
        upstream.subscriptions.load(Ordering::SeqCst),
        upstream.subscribes_total.load(Ordering::SeqCst),
        if upstream.subscribes_total.load(Ordering::SeqCst) > 1 {
            " (ethgate's feed re-subscribed: see its log)"
        } else {
            ""
        }
    );
}

fn print_memory(points: &[MemoryPoint], plan: &Plan, teardown: Option<&Teardown>) {
    println!();
    println!("3. ethgate memory (child process /proc/PID/status)");
    println!("   ws = ethgate_ws_connections (/metrics); conns = \"connections\" of /status; newHeads = /status subscriptions");
    println!(
        "{:<36} {:>9} {:>9} {:>7} {:>7} {:>9}",
        "point", "VmRSS MiB", "VmHWM MiB", "ws", "conns", "newHeads"
    );
    for p in points {
        let [ws, conns, subs] = p
            .counts
            .map_or(["?".to_string(), "?".into(), "?".into()], |c| {
                [
                    c.ws_sessions.to_string(),
                    c.status_connections.to_string(),
                    c.new_heads.to_string(),
                ]
            });
        println!(
            "{:<36} {:>9.1} {:>9.1} {:>7} {:>7} {:>9}",
            p.label,
            p.rss_kib as f64 / 1024.0,
            p.hwm_kib as f64 / 1024.0,
            ws,
            conns,
            subs
        );
    }
    if points.iter().any(|p| {
        p.counts
            .is_some_and(|c| c.ws_sessions > 0 && c.status_connections == 0)
    }) {
        println!("   note: /status \"connections\" stays 0 while WebSocket sessions are open (they are not counted once upgraded)");
    }
    let baseline = points
        .iter()
        .rfind(|p| p.clients.is_none() && p.label.starts_with("after request"))
        .or_else(|| points.first());
    let pristine = points.first();
    let largest = plan.fanout.last().copied();
    let idle = points
        .iter()
        .find(|p| p.clients == largest && p.label.ends_with("idle"));
    if let (Some(base), Some(pristine), Some(idle), Some(n)) = (baseline, pristine, idle, largest) {
        let per = |from: &MemoryPoint| (idle.rss_kib as f64 - from.rss_kib as f64) / n as f64;
        println!(
            "per idle subscribed client at {}: {:.1} KiB over the point before any subscriber, {:.1} KiB over the fresh start",
            thousands(n as u64),
            per(base),
            per(pristine)
        );
    }
    if let Some(t) = teardown {
        println!(
            "closing all {} clients at once: ethgate reached 0 WebSocket sessions / 0 newHeads subscriptions in {:.2} s ({:.2} s of ethgate CPU){}",
            thousands(t.clients as u64),
            t.took.as_secs_f64(),
            t.cpu.as_secs_f64(),
            if t.drained {
                String::new()
            } else {
                format!(" — NOT drained, last seen {:?}", t.left)
            }
        );
    }
}

fn print_log(gate: &Gate) {
    let text = gate.log_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    println!();
    if lines.is_empty() {
        println!("ethgate log (warn and above): empty");
        return;
    }
    println!("ethgate log (warn and above): {} line(s)", lines.len());
    let shown: Vec<&str> = if lines.len() > 15 {
        lines[..10]
            .iter()
            .chain(std::iter::once(&"…"))
            .chain(&lines[lines.len() - 5..])
            .copied()
            .collect()
    } else {
        lines.clone()
    };
    for line in shown {
        println!("  {line}");
    }
    println!("bench timeline (UTC), to place those lines:");
    for (clock, what) in TIMELINE.lock().unwrap().iter() {
        println!("  {clock}  {what}");
    }
}
