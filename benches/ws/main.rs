//! WebSocket load bench: request/response through ethgate vs directly to a fast upstream,
//! newHeads fan-out delay to 100 / 1,000 / 10,000 subscribed clients, and ethgate's RSS with
//! 10,000 idle subscribed clients.
//!
//! ```text
//! cargo bench --bench ws                          # full run (about a minute)
//! ETHGATE_BENCH_QUICK=1 cargo bench --bench ws    # smoke run (shorter points, 4 heads)
//! ETHGATE_WS_BENCH_CLIENTS="100 1000" cargo bench --bench ws   # other fan-out sizes
//! ETHGATE_WS_BENCH_HEADS=20 ETHGATE_WS_BENCH_HEAD_MS=100 cargo bench --bench ws  # other head pace
//! ETHGATE_WS_BENCH_PARTS=fanout cargo bench --bench ws   # only `rr` or `fanout`
//! ETHGATE_WS_BENCH_EXE=/tmp/ethgate-old cargo bench --bench ws   # another ethgate binary
//! ETHGATE_WS_BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p" \
//!     ETHGATE_WS_BENCH_PARTS=fanout ETHGATE_WS_BENCH_CLIENTS=1000 cargo bench --bench ws  # profile
//! benches/ws/callgrind.sh [ETHGATE_BINARY]   # instructions per fan-out notification (callgrind)
//! ```
//!
//! Request/response runs against the upstream directly, through HAProxy (`/usr/sbin/haproxy`,
//! a 1-thread WebSocket tunnel pinned like ethgate; its line is skipped, with the reason, when
//! it is missing) and through ethgate. Fan-out at the largest size is repeated against a
//! measured floor ([`baseline`]): a minimal tokio program writing the same pre-framed
//! notification to as many sockets. A summary block prints issue 12's ratios.
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

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

mod baseline;
mod client;
#[path = "../common/mod.rs"]
mod common;
mod fanout;
mod gate;
mod plan;
mod report;
mod reqresp;
mod subscribers;
mod tables;
mod upstream;

use common::{Pinned, Point, Stats};
use gate::{Gate, Haproxy};
pub use plan::Plan;
use report::Goals;
use reqresp::{rr_measure, RrTarget, RR_CONNECTIONS};
use subscribers::{grow, FanoutRow};
use upstream::Upstream;

/// First block number the upstream reports.
pub const FIRST_HEAD: u64 = 0x10_0000;

fn main() {
    if std::env::args().any(|a| a == baseline::CHILD_ARG) {
        if let Err(error) = baseline::serve_child() {
            eprintln!("ws bench baseline failed: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    common::run_bench("ws", run);
}

// ---------------------------------------------------------------------------------------------
// Timeline, to line ethgate's log up with the bench's phases.

pub static TIMELINE: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records that `what` starts now (UTC wall clock, like ethgate's log).
pub fn mark(what: impl Into<String>) {
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

    let upstream = Arc::new(Upstream::new());
    let (http_addr, ws_addr) = upstream_rt.rt.block_on(async {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let ws = TcpListener::bind("127.0.0.1:0").await?;
        let addrs = (http.local_addr()?, ws.local_addr()?);
        tokio::spawn(upstream::serve_upstream_http(upstream.clone(), http));
        tokio::spawn(upstream::serve_upstream_ws(upstream.clone(), ws));
        anyhow::Ok(addrs)
    })?;

    // ethgate in front of it, as a child process.
    let workers = if pin { 1 } else { 2 };
    mark("ethgate starting");
    let gate = start_gate(
        &client_rt,
        &upstream,
        (http_addr, ws_addr),
        (workers, pin),
        "http",
    )?;
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
    report::print_header(&plan, &gate, pinned, pin, workers);

    let mut goals = Goals {
        rr_c16: Vec::new(),
        cpu_per_notification: None,
        p99_delay: None,
        rss_per_client_kib: None,
        errors: 0,
    };
    if plan.parts_rr {
        let upstream_addrs = (http_addr, ws_addr);
        let ends = (&upstream_rt, &upstream);
        goals.rr_c16 = rr_phase(
            &plan,
            &client_rt,
            ends,
            &gate,
            upstream_addrs,
            (workers, pin),
        )?;
        let label = "after request/response, no client";
        memory.push(client_rt.rt.block_on(gate.memory_point(label)));
    }
    if plan.parts_fanout {
        let outcome = client_rt.rt.block_on(fanout::fanout(
            &plan,
            &upstream,
            &client_rt,
            &gate,
            &mut memory,
        ));
        let (rows, teardown) = outcome?;
        tables::print_fanout(&plan, &rows, &upstream);
        goals.errors += rows.iter().map(tables::row_errors).sum::<u64>();
        goals.rss_per_client_kib = tables::print_memory(&memory, &plan, teardown.as_ref());
        if let Some(largest) = rows.last() {
            let floor = client_rt
                .rt
                .block_on(baseline_phase(&plan, &client_rt, largest, pin))?;
            compare_with_floor(&mut goals, largest, &floor);
        }
    }
    report::print_log("ethgate", &gate);
    report::print_summary(&goals);
    print_load(started, steal_before);

    drop(gate);
    client_rt.rt.shutdown_timeout(Duration::from_secs(1));
    upstream_rt.rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Starts ethgate with its calls over `calls` in front of the upstream's `http` and `ws`
/// addresses, counts its feed among those the upstream expects, and waits for `/readyz`.
fn start_gate(
    client_rt: &Pinned,
    upstream: &Arc<Upstream>,
    (http_addr, ws_addr): (std::net::SocketAddr, std::net::SocketAddr),
    (workers, pin): (usize, bool),
    calls: &str,
) -> anyhow::Result<Gate> {
    let gate = Gate::start(http_addr, ws_addr, workers, pin, calls)?;
    upstream
        .feeds
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    client_rt
        .rt
        .block_on(gate.wait_ready(upstream))
        .with_context(|| format!("ethgate with calls = {calls:?} did not become ready"))?;
    Ok(gate)
}

/// Request/response against direct, HAProxy (when installed), ethgate with its calls over
/// HTTP (the default) and a second ethgate with `calls = "ws"`; returns each ethgate's and
/// HAProxy's msg/s at c=16.
fn rr_phase(
    plan: &Plan,
    client_rt: &Pinned,
    (upstream_rt, upstream): (&Pinned, &Arc<Upstream>),
    gate: &Gate,
    (http_addr, ws_addr): (std::net::SocketAddr, std::net::SocketAddr),
    (workers, pin): (usize, bool),
) -> anyhow::Result<Vec<(&'static str, Stats, Stats)>> {
    let (haproxy, missing) = match Haproxy::start(ws_addr, pin) {
        Ok(Some(h)) => match client_rt.rt.block_on(h.wait_ready()) {
            Ok(()) => (Some(h), None),
            Err(error) => (None, Some(format!("{error:#}"))),
        },
        Ok(None) => (None, Some(format!("{} not found", gate::HAPROXY))),
        Err(error) => (None, Some(format!("{error:#}"))),
    };
    // Started only for this phase, so fan-out and memory see one ethgate.
    let gate_ws = start_gate(
        client_rt,
        upstream,
        (http_addr, ws_addr),
        (workers, pin),
        "ws",
    )?;
    let mut targets = vec![RrTarget {
        name: "direct",
        url: format!("ws://{ws_addr}/"),
        proxy_pid: None,
    }];
    if let Some(h) = &haproxy {
        targets.push(RrTarget {
            name: "haproxy",
            url: format!("ws://{}/", h.listen),
            proxy_pid: Some(h.pid),
        });
    }
    for (name, gate) in [("ethgate", gate), ("ethgate-ws", &gate_ws)] {
        targets.push(RrTarget {
            name,
            url: format!("ws://{}/", gate.listen),
            proxy_pid: Some(gate.pid),
        });
    }
    let mut points: Vec<Vec<Vec<Point>>> =
        vec![vec![Vec::new(); targets.len()]; RR_CONNECTIONS.len()];
    for _ in 0..plan.rounds {
        for (ci, &conns) in RR_CONNECTIONS.iter().enumerate() {
            for (ti, target) in targets.iter().enumerate() {
                mark(format!("request/response {} c={conns}", target.name));
                let point = rr_measure(client_rt, upstream_rt, target, conns, plan)?;
                points[ci][ti].push(point);
            }
        }
    }
    let stats: Vec<Vec<Stats>> = points
        .iter()
        .map(|per_target| per_target.iter().map(|p| Stats::pool(p)).collect())
        .collect();
    report::print_rr(&stats, &targets, missing.as_deref());
    report::print_log("ethgate-ws", &gate_ws);
    let c16 = RR_CONNECTIONS.iter().position(|&c| c == 16);
    let Some((ci, _)) = c16.zip(haproxy.as_ref()) else {
        return Ok(Vec::new());
    };
    let row = &stats[ci];
    Ok(targets
        .iter()
        .zip(row)
        .skip(2)
        .map(|(target, s)| (target.name, s.clone(), row[1].clone()))
        .collect())
}

/// The same number of subscribers on the baseline server, and one heads round.
async fn baseline_phase(
    plan: &Plan,
    client_rt: &Pinned,
    ethgate: &FanoutRow,
    pin: bool,
) -> anyhow::Result<FanoutRow> {
    let clients = ethgate.clients;
    mark(format!("baseline {clients}: connecting"));
    let mut server = baseline::Baseline::start(pin).await?;
    let url = format!("ws://{}/", server.addr);
    let mut subscribers = Vec::new();
    let (_, failures, first) = grow(&mut subscribers, clients, &url).await;
    if let Some(first) = first {
        eprintln!("baseline: {failures} clients could not subscribe, first: {first}");
    }
    server.wait_count(clients - failures).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    mark(format!("baseline {clients}: emitting heads"));
    let pid_cpu = server.cpu_time_reader();
    let mut heads = baseline::BaselineHeads {
        baseline: &mut server,
        clock: upstream::EmitClock::default(),
        next: 0x20_0000,
        failed: 0,
    };
    let mut row = fanout::heads_round(plan, &subscribers, &mut heads, pid_cpu, client_rt).await?;
    let failed = heads.failed;
    row.connect_failures = failures;
    fanout::close_all(&mut subscribers).await;
    tables::print_baseline(ethgate, &row, failed);
    Ok(row)
}

/// Fills the fan-out goals from ethgate's and the baseline's rows at the same size.
fn compare_with_floor(goals: &mut Goals, ethgate: &FanoutRow, floor: &FanoutRow) {
    let per = |r: &FanoutRow| r.gate_cpu_per_head.as_secs_f64() * 1e6 / r.clients.max(1) as f64;
    goals.cpu_per_notification = Some((per(ethgate), per(floor)));
    let p99 = |r: &FanoutRow| common::percentile(&r.delays, 0.99);
    goals.p99_delay = Some((p99(ethgate), p99(floor)));
    goals.errors += tables::row_errors(floor);
}

/// How long the run took, the CPU stolen by the hypervisor and the load average.
fn print_load(started: Instant, steal_before: Option<Duration>) {
    let Ok(load) = std::fs::read_to_string("/proc/loadavg") else {
        return;
    };
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
