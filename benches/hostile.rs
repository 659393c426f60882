//! Hostile-clients load bench: normal keep-alive HTTP clients' latency while hundreds of
//! slow-body, slow-reader and batch-bomb clients run against the same in-process ethgate, and
//! the process's peak RSS throughout.
//!
//! ```text
//! cargo bench --bench hostile                          # about 40 s
//! ETHGATE_BENCH_QUICK=1 cargo bench --bench hostile    # smoke run (a few seconds)
//! ```
//!
//! Two phases of equal length: normal clients alone (baseline), then the same normal clients
//! with the hostile ones. Normal clients loop on `eth_blockNumber` (forwarded to a fast
//! in-process backend). Hostile clients, each reconnecting when ethgate drops it:
//! - slow body: announces a 100-byte body and sends one byte per second;
//! - slow reader: a WebSocket client with a 4 KiB receive window that asks for 256 KiB
//!   `eth_getLogs` answers and reads nothing;
//! - batch bomb: POSTs 5 MB of `[0,0,…]` (about 2.6 million elements).
//!
//! ethgate runs with `body_timeout` and `write_timeout` of 2 s and its default limits. The
//! RSS figures are this whole process's (ethgate, backend and clients; the clients share
//! one bomb body). Nothing is asserted: the bench prints a table and exits 0 unless it breaks.
//! `cargo test --all-targets` builds it and runs it without `--bench`, which only prints a line.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::percentile;

const NORMAL_CLIENTS: usize = 16;
const SLOW_BODY_CLIENTS: usize = 200;
const SLOW_READER_CLIENTS: usize = 200;
const BOMB_CLIENTS: usize = 20;
const LOGS_ANSWER_BYTES: usize = 256 * 1024;
const REQUEST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("hostile bench: skipped (run it with `cargo bench --bench hostile`)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(error) = runtime.block_on(run()) {
        eprintln!("hostile bench failed: {error:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let quick = std::env::var_os("ETHGATE_BENCH_QUICK").is_some();
    let phase = Duration::from_secs(if quick { 3 } else { 20 });
    let backend = TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend.local_addr()?;
    tokio::spawn(serve_backend(backend));
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nbody_timeout = \"2s\"\nwrite_timeout = \"2s\"\n\
         header_timeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"backend\"\nhttp = \"http://{backend_addr}/\"\n"
    );
    let config =
        ethgate::config::Config::from_toml_str(&toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = ethgate::Server::bind(config).await?;
    let addr = server.local_addr();
    tokio::spawn(server.run(std::future::pending()));
    wait_until_serving(addr).await?;

    println!(
        "hostile bench: {NORMAL_CLIENTS} normal clients; hostile: {SLOW_BODY_CLIENTS} slow-body, \
              {SLOW_READER_CLIENTS} slow-reader, {BOMB_CLIENTS} batch-bomb; {phase:?} per phase"
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>7} {:>13} {:>11}",
        "phase", "requests", "p50 ms", "p99 ms", "errors", "hostile done", "VmHWM MiB"
    );
    let rss_before = vm_hwm_mib();
    let baseline = measure(addr, phase).await;
    print_row("alone", &baseline, 0, vm_hwm_mib());

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let bomb = Bytes::from(bomb_body());
    for i in 0..SLOW_BODY_CLIENTS {
        tokio::spawn(slow_body(addr, stop.clone(), done.clone(), i));
    }
    for _ in 0..SLOW_READER_CLIENTS {
        tokio::spawn(slow_reader(addr, stop.clone(), done.clone()));
    }
    for _ in 0..BOMB_CLIENTS {
        tokio::spawn(batch_bomb(addr, bomb.clone(), stop.clone(), done.clone()));
    }
    let hostile = measure(addr, phase).await;
    stop.store(true, Ordering::Relaxed);
    print_row(
        "hostile",
        &hostile,
        done.load(Ordering::Relaxed),
        vm_hwm_mib(),
    );
    println!("peak RSS before the run: {rss_before} MiB");
    Ok(())
}

struct Stats {
    latencies_us: Vec<u64>,
    errors: u64,
}

fn print_row(name: &str, stats: &Stats, done: u64, hwm: u64) {
    let ms = |q| percentile(&stats.latencies_us, q) / 1000.0;
    println!(
        "{name:<10} {:>9} {:>9.2} {:>9.2} {:>7} {:>13} {:>11}",
        stats.latencies_us.len(),
        ms(0.50),
        ms(0.99),
        stats.errors,
        done,
        hwm
    );
}

/// Normal clients in a closed loop for `length`; latencies in microseconds, sorted.
async fn measure(addr: SocketAddr, length: Duration) -> Stats {
    let until = Instant::now() + length;
    let clients = (0..NORMAL_CLIENTS).map(|_| tokio::spawn(normal_client(addr, until)));
    let mut stats = Stats {
        latencies_us: Vec::new(),
        errors: 0,
    };
    for client in futures_util::future::join_all(clients).await {
        let (latencies, errors) = client.unwrap_or_default();
        stats.latencies_us.extend(latencies);
        stats.errors += errors;
    }
    stats.latencies_us.sort_unstable();
    stats
}

async fn normal_client(addr: SocketAddr, until: Instant) -> (Vec<u64>, u64) {
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while Instant::now() < until {
        let Ok(mut sender) = connect(addr).await else {
            errors += 1;
            continue;
        };
        while Instant::now() < until {
            let started = Instant::now();
            match post(&mut sender, Bytes::from_static(REQUEST.as_bytes())).await {
                Ok(body) if body.windows(6).any(|w| w == b"result") => {
                    latencies.push(started.elapsed().as_micros() as u64)
                }
                Ok(_) => errors += 1,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
    }
    (latencies, errors)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn post(sender: &mut Sender, body: Bytes) -> anyhow::Result<Bytes> {
    let request = Request::post("/")
        .header("host", "ethgate")
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    Ok(response.into_body().collect().await?.to_bytes())
}

/// Announces 100 bytes of body and trickles one byte per second until ethgate hangs up.
async fn slow_body(addr: SocketAddr, stop: Arc<AtomicBool>, done: Arc<AtomicU64>, i: usize) {
    // Spread the starts so the slots are not all freed in the same instant.
    tokio::time::sleep(Duration::from_millis(i as u64 * 5)).await;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        let head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        while !stop.load(Ordering::Relaxed) && stream.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Asks for large answers over WebSocket with a tiny receive window and reads nothing.
async fn slow_reader(addr: SocketAddr, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(socket) = TcpSocket::new_v4() else {
            return;
        };
        let _ = socket.set_recv_buffer_size(4096);
        let Ok(stream) = socket.connect(addr).await else {
            continue;
        };
        let Ok((mut ws, _)) =
            tokio_tungstenite::client_async(format!("ws://{addr}/"), stream).await
        else {
            continue;
        };
        let mut id = 0u64;
        loop {
            id += 1;
            let call = json!({"jsonrpc":"2.0","id":id,"method":"eth_getLogs","params":[{}]});
            if stop.load(Ordering::Relaxed)
                || ws.send(Message::text(call.to_string())).await.is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// POSTs the bomb over and over.
async fn batch_bomb(addr: SocketAddr, body: Bytes, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut sender) = connect(addr).await {
            if post(&mut sender, body.clone()).await.is_ok() {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn bomb_body() -> Vec<u8> {
    let elements = (5 * 1024 * 1024 - 2) / 2;
    let mut body = Vec::with_capacity(elements * 2 + 1);
    body.push(b'[');
    for i in 0..elements {
        body.extend_from_slice(if i == 0 { b"0" } else { b",0" });
    }
    body.push(b']');
    body
}

/// Peak resident set size of this process, in MiB.
fn vm_hwm_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut sender) = connect(addr).await {
            if let Ok(body) = post(&mut sender, Bytes::from_static(REQUEST.as_bytes())).await {
                if body.windows(6).any(|w| w == b"result") {
                    return Ok(());
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "ethgate did not start serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JSON-RPC backend that answers anything at once; `eth_getLogs` with 256 KiB.
async fn serve_backend(listener: TcpListener) {
    let logs: Arc<str> = format!("\"{}\"", "a".repeat(LOGS_ANSWER_BYTES)).into();
    while let Ok((stream, _)) = listener.accept().await {
        let logs = logs.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let logs = logs.clone();
                async move { Ok::<_, Infallible>(backend_answer(request, &logs).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn backend_answer(request: Request<Incoming>, logs: &str) -> Response<Full<Bytes>> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = |call: &Value| -> String {
        let result = match call["method"].as_str().unwrap_or_default() {
            "eth_chainId" => "\"0x1\"",
            "eth_syncing" => "false",
            "eth_getLogs" => logs,
            _ => "\"0x64\"",
        };
        format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#,
            call["id"]
        )
    };
    let text = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(calls)) => format!(
            "[{}]",
            calls.iter().map(answer).collect::<Vec<_>>().join(",")
        ),
        Ok(call) => answer(&call),
        Err(_) => String::new(),
    };
    Response::new(Full::new(Bytes::from(text)))
}
