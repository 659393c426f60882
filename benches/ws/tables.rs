//! The fan-out, baseline and memory tables.

use std::sync::atomic::Ordering;

use crate::common::percentile;
use crate::fanout::Teardown;
use crate::gate::MemoryPoint;
use crate::report::{ms, thousands};
use crate::subscribers::{FanoutRow, CONNECT_CONCURRENCY};
use crate::upstream::{header_json, Upstream};
use crate::{Plan, FIRST_HEAD};

/// Delays, CPU, connect times and the delivery check per fan-out size.
pub fn print_fanout(plan: &Plan, rows: &[FanoutRow], upstream: &Upstream) {
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
        let ok = row_errors(r) == 0 && r.delivered == r.expected;
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
        // One per ethgate started; more means a feed re-subscribed.
        if upstream.subscribes_total.load(Ordering::SeqCst) > upstream.feeds.load(Ordering::SeqCst) {
            " (ethgate's feed re-subscribed: see its log)"
        } else {
            ""
        }
    );
}

/// ethgate's RSS along the run and per idle subscribed client.
pub fn print_memory(
    points: &[MemoryPoint],
    plan: &Plan,
    teardown: Option<&Teardown>,
) -> Option<f64> {
    let mut per_client = None;
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
        per_client = Some(per(base));
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
    per_client
}

/// ethgate's fan-out next to the baseline's at the same size: CPU per notification and delays.
pub fn print_baseline(ethgate: &FanoutRow, baseline: &FanoutRow, failed_writes: usize) {
    let per = |r: &FanoutRow| r.gate_cpu_per_head.as_secs_f64() * 1e6 / r.clients.max(1) as f64;
    println!();
    println!(
        "fan-out floor at {} clients: a 1-thread tokio program writing one pre-framed notification to every socket",
        thousands(ethgate.clients as u64)
    );
    println!(
        "{:<9} {:>12} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "server", "µs/notif", "p50 ms", "p99 ms", "max ms", "delivered", "write fail"
    );
    for (name, r, failed) in [
        ("ethgate", ethgate, 0),
        ("baseline", baseline, failed_writes),
    ] {
        println!(
            "{:<9} {:>12.2} {:>8} {:>8} {:>8} {:>12} {:>12}",
            name,
            per(r),
            ms(percentile(&r.delays, 0.50)),
            ms(percentile(&r.delays, 0.99)),
            ms(r.delays.last().map_or(f64::NAN, |&d| d as f64)),
            format!("{}/{}", r.delivered, r.expected),
            failed
        );
    }
}

/// Deliveries that went wrong in a row (0 when all is well).
pub fn row_errors(r: &FanoutRow) -> u64 {
    r.missing
        + r.duplicates
        + r.disordered_clients
        + r.unexpected
        + r.ended_clients
        + r.connect_failures as u64
        + u64::from(!r.registered)
}
