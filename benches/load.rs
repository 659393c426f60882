//! Closed-loop HTTP load bench: N keep-alive HTTP/1.1 clients (one connection each) against a
//! fast in-process JSON-RPC backend, directly and through an in-process ethgate.
//!
//! ```text
//! cargo bench --bench load                          # full run (about a minute)
//! ETHGATE_BENCH_QUICK=1 cargo bench --bench load    # smoke run (a few seconds)
//! ```
//!
//! Layout (after docs benchmarks.md): three tokio runtimes with one worker thread each. The
//! backend's and ethgate's threads are pinned to CPU 0, the clients' thread to CPU 1 (with
//! `taskset -p` on the thread id, so no unsafe code and no extra dependency); set
//! `ETHGATE_BENCH_PIN=0` to leave scheduling to the kernel. The request is
//! `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}` (ethgate answers
//! `eth_chainId` itself, so that one would not measure forwarding).
//!
//! Each point runs every client in a closed loop for a fixed time after a warm-up; only
//! requests started inside the measured window are recorded (exact latencies in a sorted
//! `Vec`). CPU time per request is read per thread from `/proc/self/task/TID/schedstat`.
//! Nothing is asserted about speed: the bench prints tables and exits 0 unless it breaks.
//!
//! `cargo test --all-targets` builds this target and runs it without `--bench`; it then
//! prints one line and exits at once, so the test suite is not slowed.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

mod common;
use common::*;

const SINGLE_REQUEST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#;
const CONCURRENCY: [usize; 3] = [1, 16, 64];
const BATCH_SIZES: [usize; 3] = [1, 10, 100];
const BATCH_CONCURRENCY: usize = 16;

fn main() {
    run_bench("load", run);
}

/// Durations of one run of the bench.
struct Plan {
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    batch_rounds: usize,
    batch_sizes: Vec<usize>,
    quick: bool,
}

impl Plan {
    /// `ETHGATE_BENCH_QUICK=1` shortens every point; `ETHGATE_BENCH_BATCHES="1 10 100 1000"`
    /// overrides the batch sizes.
    fn from_env() -> Plan {
        let quick = std::env::var("ETHGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let batch_sizes = std::env::var("ETHGATE_BENCH_BATCHES")
            .ok()
            .map(|v| {
                v.split([' ', ','])
                    .filter_map(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .collect::<Vec<usize>>()
            })
            .unwrap_or_else(|| BATCH_SIZES.to_vec());
        let (warmup, measure, rounds) = if quick {
            (Duration::from_millis(100), Duration::from_millis(300), 1)
        } else {
            (Duration::from_millis(500), Duration::from_millis(2500), 2)
        };
        Plan {
            warmup,
            measure,
            rounds,
            batch_rounds: 1,
            batch_sizes,
            quick,
        }
    }
}

fn run() -> anyhow::Result<()> {
    let plan = Plan::from_env();
    let pin = std::env::var("ETHGATE_BENCH_PIN").map_or(true, |v| v != "0")
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);

    let backend_rt = Pinned::runtime("bench-backend", pin.then_some(0))?;
    let proxy_rt = Pinned::runtime("bench-ethgate", pin.then_some(0))?;
    let client_rt = Pinned::runtime("bench-client", pin.then_some(1))?;
    let pinned = pin && backend_rt.pinned() && proxy_rt.pinned() && client_rt.pinned();

    // Backend.
    let backend_listener = backend_rt
        .rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .context("binding the backend")?;
    let backend_addr = backend_listener.local_addr()?;
    backend_rt.rt.spawn(serve_backend(backend_listener));

    // ethgate in front of it.
    let config = ethgate::config::Config::from_toml_str(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[[upstream]]
name = "bench-backend"
http = "http://{backend_addr}/"
"#
    ))
    .map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
    let server = proxy_rt.rt.block_on(ethgate::Server::bind(config))?;
    let proxy_addr = server.local_addr();
    let (stop_proxy, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = proxy_rt.rt.spawn(server.run(async {
        let _ = stopped.await;
    }));
    client_rt
        .rt
        .block_on(wait_until_serving(proxy_addr))
        .context("ethgate did not start serving")?;

    print_header(&plan, pinned, pin);

    let targets = [
        Target {
            name: "direct",
            addr: backend_addr,
            proxy: None,
        },
        Target {
            name: "ethgate",
            addr: proxy_addr,
            proxy: Some(&proxy_rt),
        },
    ];
    let single = Workload::single();

    // 1. Single calls at c = 1, 16, 64; direct and ethgate interleaved, `rounds` times.
    let mut single_results: Vec<Vec<Point>> = vec![Vec::new(); CONCURRENCY.len() * 2];
    for _ in 0..plan.rounds {
        for (ci, &clients) in CONCURRENCY.iter().enumerate() {
            for (ti, target) in targets.iter().enumerate() {
                let point = measure(&client_rt, &backend_rt, target, &single, clients, &plan)?;
                single_results[ci * 2 + ti].push(point);
            }
        }
    }
    let single_stats: Vec<Stats> = single_results.iter().map(|r| Stats::pool(r)).collect();
    print_single(&single_stats, &targets);

    // 2. Batches of 1, 10 and 100 at c = 16.
    let mut batch_stats = Vec::new();
    for &size in &plan.batch_sizes {
        let workload = Workload::batch(size);
        for target in &targets {
            let mut points = Vec::new();
            for _ in 0..plan.batch_rounds {
                points.push(measure(
                    &client_rt,
                    &backend_rt,
                    target,
                    &workload,
                    BATCH_CONCURRENCY,
                    &plan,
                )?);
            }
            batch_stats.push((size, target.name, Stats::pool(&points)));
        }
    }
    print_batch(&batch_stats);

    let total_errors: u64 = single_stats
        .iter()
        .chain(batch_stats.iter().map(|(_, _, s)| s))
        .map(|s| s.errors)
        .sum();
    if total_errors > 0 {
        println!();
        println!("WARNING: {total_errors} responses were not the expected JSON-RPC answers (see err column)");
    }

    let _ = stop_proxy.send(());
    let _ = proxy_rt
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), proxy_task).await });
    client_rt.rt.shutdown_timeout(Duration::from_secs(1));
    proxy_rt.rt.shutdown_timeout(Duration::from_secs(1));
    backend_rt.rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Runtimes pinned to a CPU, with their thread ids recorded for CPU accounting.

// ---------------------------------------------------------------------------------------------
// The backend: a minimal hyper server answering JSON-RPC objects and batches.

async fn serve_backend(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(backend_answer);
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[derive(Deserialize)]
struct BackendCall<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: &'a str,
}

/// `{"jsonrpc":"2.0","id":ID,"result":…}` for one call: eth_chainId `"0x1"`, eth_syncing
/// `false`, anything else `"0x1234"` (so ethgate's health probe sees a synced chain 1 node).
fn backend_object(out: &mut Vec<u8>, call: &BackendCall<'_>) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    out.extend_from_slice(call.id.map_or("null", |id| id.get()).as_bytes());
    out.extend_from_slice(br#","result":"#);
    out.extend_from_slice(match call.method {
        "eth_chainId" => br#""0x1""#.as_slice(),
        "eth_syncing" => b"false".as_slice(),
        _ => br#""0x1234""#.as_slice(),
    });
    out.push(b'}');
}

async fn backend_answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(status_only(StatusCode::BAD_REQUEST)),
    };
    let mut out = Vec::with_capacity(64);
    if body.first() == Some(&b'[') {
        let Ok(calls) = serde_json::from_slice::<Vec<BackendCall>>(&body) else {
            return Ok(status_only(StatusCode::BAD_REQUEST));
        };
        out.reserve(calls.len() * 48);
        out.push(b'[');
        for (i, call) in calls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            backend_object(&mut out, call);
        }
        out.push(b']');
    } else {
        let Ok(call) = serde_json::from_slice::<BackendCall>(&body) else {
            return Ok(status_only(StatusCode::BAD_REQUEST));
        };
        backend_object(&mut out, &call);
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// What the clients send and how an answer is recognised.
struct Workload {
    body: Bytes,
    /// `None` for a single call, else the batch length.
    batch: Option<usize>,
}

impl Workload {
    fn single() -> Workload {
        Workload {
            body: Bytes::from_static(SINGLE_REQUEST.as_bytes()),
            batch: None,
        }
    }

    fn batch(size: usize) -> Workload {
        let mut body = String::from("[");
        for i in 0..size {
            if i > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                r#"{{"jsonrpc":"2.0","id":{i},"method":"eth_blockNumber","params":[]}}"#
            );
        }
        body.push(']');
        Workload {
            body: Bytes::from(body),
            batch: Some(size),
        }
    }

    /// Full check: a JSON-RPC result for every call, under the ids sent.
    fn validate(&self, body: &[u8]) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Answer {
            id: serde_json::Value,
            result: Option<serde_json::Value>,
            error: Option<serde_json::Value>,
        }
        let check = |a: &Answer, id: u64| -> Result<(), String> {
            if let Some(error) = &a.error {
                return Err(format!("error answer: {error}"));
            }
            if a.result.is_none() {
                return Err("answer without result".into());
            }
            if a.id != serde_json::json!(id) {
                return Err(format!("id {} instead of {id}", a.id));
            }
            Ok(())
        };
        match self.batch {
            None => {
                let answer: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
                check(&answer, 1)
            }
            Some(size) => {
                let answers: Vec<Answer> =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                if answers.len() != size {
                    return Err(format!("{} answers to a batch of {size}", answers.len()));
                }
                let mut ids: Vec<u64> = answers.iter().filter_map(|a| a.id.as_u64()).collect();
                ids.sort_unstable();
                if ids != (0..size as u64).collect::<Vec<_>>() {
                    return Err("batch answer ids differ from the ids sent".into());
                }
                answers
                    .iter()
                    .try_for_each(|a| check(a, a.id.as_u64().unwrap_or(0)))
            }
        }
    }

    /// Cheap check for every answer after the first: right shape and no error object.
    fn looks_right(&self, body: &[u8]) -> bool {
        let opening = if self.batch.is_some() { b'[' } else { b'{' };
        body.first() == Some(&opening) && !body.windows(8).any(|w| w == b"\"error\":")
    }
}

async fn client_loop(
    addr: SocketAddr,
    workload: Arc<Workload>,
    measure_from: std::time::Instant,
    end: std::time::Instant,
) -> anyhow::Result<Record> {
    let (measure_from, end) = (Instant::from_std(measure_from), Instant::from_std(end));
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let host = HeaderValue::from_str(&addr.to_string())?;
    let mut record = Record::new();
    let mut validated = false;
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let mut request = Request::post("/").body(Full::new(workload.body.clone()))?;
        request.headers_mut().insert(HOST, host.clone());
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        let verdict = if status != StatusCode::OK {
            Err(format!("HTTP {status}"))
        } else if !validated {
            validated = true;
            workload.validate(&body)
        } else if workload.looks_right(&body) {
            Ok(())
        } else {
            Err(format!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        };
        if started >= measure_from {
            record.latencies_ns.push(elapsed.as_nanos() as u64);
            if let Err(error) = verdict {
                record.error(error);
            }
        }
    }
    Ok(record)
}

async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let workload = Arc::new(Workload::single());
    let mut last = String::new();
    while Instant::now() < deadline {
        let now = Instant::now();
        let (from, to) = (now.into_std(), (now + Duration::from_millis(1)).into_std());
        match client_loop(addr, workload.clone(), from, to).await {
            Ok(record) if !record.latencies_ns.is_empty() && record.errors == 0 => return Ok(()),
            Ok(record) => last = record.first_error.unwrap_or_default(),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no good answer within 15 s (last: {last})")
}

/// One target of the clients: the backend itself or ethgate in front of it.
struct Target<'a> {
    name: &'static str,
    addr: SocketAddr,
    proxy: Option<&'a Pinned>,
}

fn measure(
    client_rt: &Pinned,
    backend_rt: &Pinned,
    target: &Target<'_>,
    workload: &Workload,
    clients: usize,
    plan: &Plan,
) -> anyhow::Result<Point> {
    let workload = Arc::new(Workload {
        body: workload.body.clone(),
        batch: workload.batch,
    });
    let addr = target.addr;
    let window = plan.measure;
    let cpu = || {
        let proxy = target.proxy.map(Pinned::cpu_time).unwrap_or_default();
        [proxy, backend_rt.cpu_time()]
    };
    let (records, used) = client_rt.rt.block_on(closed_loop(
        clients,
        plan.warmup,
        window,
        cpu,
        |measure_from, end| client_loop(addr, workload.clone(), measure_from, end),
    ))?;
    let label = format!("{} c={clients}", target.name);
    Ok(Point::merge(&label, records, window, used))
}

// ---------------------------------------------------------------------------------------------
// Statistics and tables.

fn print_header(plan: &Plan, pinned: bool, pin_wanted: bool) {
    println!();
    println!("ethgate load bench: closed loop, HTTP/1.1 keep-alive, one connection per client");
    let mode = mode_line(plan.quick, plan.rounds, plan.measure, plan.warmup);
    println!("mode: {mode}, rounds interleaved and pooled)");
    println!(
        "layout: 3 runtimes x 1 worker; {}",
        if pinned {
            "backend + ethgate pinned to CPU 0, clients to CPU 1"
        } else if pin_wanted {
            "pinning FAILED (taskset?), threads float"
        } else {
            "not pinned"
        }
    );
    println!("request: {SINGLE_REQUEST}");
    print_machine();
    println!("latencies in µs; cpu = on-CPU µs per request of that side's threads");
}

fn print_single(stats: &[Stats], targets: &[Target<'_>]) {
    println!();
    println!("single calls (rate = requests per second)");
    println!("{:<8} {:>3} {CELLS_HEADER}", "target", "c");
    for (ci, &clients) in CONCURRENCY.iter().enumerate() {
        for (ti, target) in targets.iter().enumerate() {
            let s = &stats[ci * 2 + ti];
            let cells = s.cells(target.proxy.is_some());
            println!("{:<8} {:>3} {cells}", target.name, clients);
        }
    }
    println!();
    println!("ethgate vs direct");
    println!("{:>3} {VERSUS_HEADER}", "c");
    for (ci, &clients) in CONCURRENCY.iter().enumerate() {
        let (d, e) = (&stats[ci * 2], &stats[ci * 2 + 1]);
        println!("{:>3} {}", clients, e.versus(d));
    }
}

fn print_batch(stats: &[(usize, &'static str, Stats)]) {
    println!();
    println!("batches of eth_blockNumber, c={BATCH_CONCURRENCY} (cpu per batch)");
    println!(
        "{:>5} {:<8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>11} {:>4} {:>11}",
        "size",
        "target",
        "batches/s",
        "calls/s",
        "p50",
        "p99",
        "p99.9",
        "proxy cpu",
        "backend cpu",
        "err",
        "vs direct"
    );
    for (i, (size, name, s)) in stats.iter().enumerate() {
        let is_proxy = *name != "direct";
        let versus = if is_proxy && i > 0 && stats[i - 1].0 == *size {
            format!("{:.2}x rps", s.rate / stats[i - 1].2.rate)
        } else {
            String::new()
        };
        println!(
            "{:>5} {:<8} {:>9} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>11.1} {:>4} {:>11}",
            size,
            name,
            kilo(s.rate),
            kilo(s.rate * *size as f64),
            s.p50,
            s.p99,
            s.p999,
            if is_proxy {
                format!("{:.1}", s.proxy_us)
            } else {
                "-".into()
            },
            s.backend_us,
            s.errors,
            versus
        );
    }
}
