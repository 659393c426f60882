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

mod backend;
mod client;
#[path = "../common/mod.rs"]
mod common;
mod report;

use backend::serve_backend;
use client::{client_loop, wait_until_serving, Workload};
use common::*;
use report::{print_batch, print_header, print_single};

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
    let cpu = || CpuUse {
        proxy: target.proxy.map(Pinned::cpu_time).unwrap_or_default(),
        backend: backend_rt.cpu_time(),
        proxy_kernel: None,
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
