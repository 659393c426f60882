//! The run's header, the request/response table, the goals summary and ethgate's log.

use crate::client::BENCH_WS_READ_BUFFER;
use crate::common::{kilo, mode_line, print_machine, Stats, CELLS_HEADER, VERSUS_HEADER};
use crate::gate::Gate;
use crate::reqresp::{RrTarget, RR_CONNECTIONS};
use crate::subscribers::CONNECT_CONCURRENCY;
use crate::{Plan, TIMELINE};

/// `12345` as `12,345`.
pub fn thousands(n: u64) -> String {
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

/// Nanoseconds as milliseconds with two decimals, `-` for none.
pub fn ms(ns: f64) -> String {
    if ns.is_nan() {
        "-".into()
    } else {
        format!("{:.2}", ns / 1e6)
    }
}

/// What ran, how it was laid out, and the machine's load.
pub fn print_header(plan: &Plan, gate: &Gate, pinned: bool, pin_wanted: bool, workers: usize) {
    println!();
    println!("ethgate WebSocket bench: request/response, newHeads fan-out, memory");
    println!(
        "mode: {}; fan-out: {} heads, one every {} ms)",
        mode_line(plan.quick, plan.rounds, plan.measure, plan.warmup),
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
    print_machine();
}

/// The request/response table: `stats[c][target]`, then each proxy against direct.
pub fn print_rr(stats: &[Vec<Stats>], targets: &[RrTarget], haproxy_missing: Option<&str>) {
    println!();
    println!("1. WS request/response: closed loop, one WebSocket per client, eth_blockNumber");
    println!(
        "   direct = the upstream's WebSocket; haproxy = HAProxy 1-thread WebSocket tunnel to it;"
    );
    println!("   ethgate = ethgate's WebSocket, calls to the upstream over HTTP (the default);");
    println!("   ethgate-ws = a second ethgate with calls = \"ws\": calls multiplexed over one upstream WebSocket");
    println!("   latencies in µs; cpu = on-CPU µs per message of the proxy (whole process) / of the upstream runtime");
    if let Some(why) = haproxy_missing {
        println!("   haproxy line skipped: {why}");
    }
    println!("{:<10} {:>3} {CELLS_HEADER}", "target", "c");
    for (ci, &conns) in RR_CONNECTIONS.iter().enumerate() {
        for (target, s) in targets.iter().zip(&stats[ci]) {
            let cells = s.cells(target.proxy_pid.is_some());
            println!("{:<10} {:>3} {cells}", target.name, conns);
        }
    }
    println!();
    println!("proxies vs direct");
    println!("{:<10} {:>3} {VERSUS_HEADER}", "proxy", "c");
    for (ci, &conns) in RR_CONNECTIONS.iter().enumerate() {
        let direct = &stats[ci][0];
        for (target, s) in targets.iter().zip(&stats[ci]).skip(1) {
            println!("{:<10} {:>3} {}", target.name, conns, s.versus(direct));
        }
    }
}

/// The goals of issue 12 as ratios measured in this run.
pub struct Goals {
    /// Per ethgate configuration: its name, its figures and HAProxy's at c=16 (HAProxy
    /// absent: none).
    pub rr_c16: Vec<(&'static str, Stats, Stats)>,
    /// ethgate and baseline CPU µs per notification at the largest fan-out size.
    pub cpu_per_notification: Option<(f64, f64)>,
    /// ethgate and baseline p99 delay, ns.
    pub p99_delay: Option<(f64, f64)>,
    /// RSS KiB per idle subscribed client.
    pub rss_per_client_kib: Option<f64>,
    /// Missing, duplicate, out-of-order, unexpected or failed deliveries and connections.
    pub errors: u64,
}

/// The summary block: each goal, its figure and whether it is met.
pub fn print_summary(goals: &Goals) {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!("summary (issue 12 goals, measured side by side in this run)");
    for (name, ethgate, haproxy) in &goals.rr_c16 {
        let (e, h) = (ethgate.rate, haproxy.rate);
        println!(
            "  WS request/response c=16: {name} {} msg/s / HAProxy {} msg/s = {:.2}x (goal >= 1.5x: {})",
            kilo(e), kilo(h), e / h, verdict(e / h >= 1.5)
        );
        print_cpu_budget(name, ethgate, haproxy);
    }
    if goals.rr_c16.is_empty() {
        println!(
            "  WS request/response c=16: not measured against HAProxy in this run (see above)"
        );
    }
    let ratio_line = |what: &str, pair: Option<(f64, f64)>, unit: &str, scale: f64| {
        match pair {
        Some((e, b)) => println!(
            "  fan-out {what}: ethgate {:.2} {unit} / baseline {:.2} {unit} = {:.2}x (goal <= 2x: {})",
            e / scale, b / scale, e / b, verdict(e / b <= 2.0)
        ),
        None => println!("  fan-out {what}: no baseline in this run, no ratio"),
    }
    };
    ratio_line(
        "CPU per notification",
        goals.cpu_per_notification,
        "µs",
        1.0,
    );
    ratio_line("p99 delay", goals.p99_delay, "ms", 1e6);
    match goals.rss_per_client_kib {
        Some(kib) => println!(
            "  RSS per idle subscribed client: {kib:.1} KiB (goal <= ~9 KiB: {})",
            verdict(kib <= 9.5)
        ),
        None => println!("  RSS per idle subscribed client: not measured"),
    }
    println!(
        "  errors: {} (goal 0: {})",
        goals.errors,
        verdict(goals.errors == 0)
    );
}

/// Where each message's time on CPU 0 goes (proxy in user space and in the kernel, and the
/// node), and what 1.5× HAProxy's rate would leave ethgate's user space: with both proxies
/// keeping CPU 0 about as busy, the rate goes as the inverse of that sum.
fn print_cpu_budget(name: &str, ethgate: &Stats, haproxy: &Stats) {
    let (Some(e_sys), Some(h_sys)) = (ethgate.proxy_kernel_us, haproxy.proxy_kernel_us) else {
        return;
    };
    let split = |s: &Stats, sys: f64| {
        let user = s.proxy_us - sys;
        let total = s.proxy_us + s.backend_us;
        format!(
            "user {user:.1} + kernel {sys:.1} + node {:.1} = {total:.1}",
            s.backend_us
        )
    };
    println!(
        "    CPU 0 µs per message: {name} {}; HAProxy {}",
        split(ethgate, e_sys),
        split(haproxy, h_sys)
    );
    let budget = (haproxy.proxy_us + haproxy.backend_us) / 1.5;
    let user_room = budget - e_sys - ethgate.backend_us;
    println!(
        "    1.5x needs <= {budget:.1} in all: with {name}'s kernel and node time as measured, \
         {user_room:.1} µs of user time per message (HAProxy's own user time: {:.1})",
        haproxy.proxy_us - h_sys
    );
}

/// ethgate's warnings, placed on the bench's timeline.
pub fn print_log(name: &str, gate: &Gate) {
    let text = gate.log_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    println!();
    if lines.is_empty() {
        println!("{name} log (warn and above): empty");
        return;
    }
    println!("{name} log (warn and above): {} line(s)", lines.len());
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
