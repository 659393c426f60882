//! The tables the bench prints.

use super::*;

pub(super) fn print_header(plan: &Plan, pinned: bool, pin_wanted: bool) {
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

pub(super) fn print_single(stats: &[Stats], targets: &[Target<'_>]) {
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

pub(super) fn print_batch(stats: &[(usize, &'static str, Stats)]) {
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
