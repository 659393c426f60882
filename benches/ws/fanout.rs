//! Part 2, newHeads fan-out through ethgate to a growing set of subscribed clients (part 3,
//! memory, is read along the way), then every client closed at once; and the shared heads
//! round the baseline also runs.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::Pinned;
use crate::gate::{Counts, Gate, MemoryPoint};
use crate::report::thousands;
use crate::subscribers::{evaluate, grow, FanoutRow, Subscriber};
use crate::upstream::{EmitClock, Upstream};
use crate::{mark, Plan};

/// Closing every client at once.
pub struct Teardown {
    pub clients: usize,
    pub took: Duration,
    /// ethgate's CPU time meanwhile.
    pub cpu: Duration,
    pub drained: bool,
    pub left: Option<Counts>,
}

/// A source of heads for the subscribers.
pub trait Heads {
    /// Sends the next head; returns its number.
    fn emit(&mut self) -> impl Future<Output = anyhow::Result<u64>>;
    /// When each head was sent.
    fn clock(&self) -> &EmitClock;
}

impl Heads for &Upstream {
    async fn emit(&mut self) -> anyhow::Result<u64> {
        Ok(self.emit_next())
    }

    fn clock(&self) -> &EmitClock {
        &self.emitted
    }
}

/// Emits `plan.heads` heads through `heads`, one every `plan.head_every`, waits until every
/// subscriber has them (10 s at most), and evaluates; `server_cpu` is the sending side's CPU
/// time, read before and after.
pub async fn heads_round(
    plan: &Plan,
    subscribers: &[Subscriber],
    heads: &mut impl Heads,
    server_cpu: impl Fn() -> Duration,
    client_rt: &Pinned,
) -> anyhow::Result<FanoutRow> {
    for s in subscribers {
        s.log.heads.lock().unwrap().clear();
        s.log.other.store(0, Ordering::Relaxed);
    }
    let cpu_before = server_cpu();
    let client_before = client_rt.cpu_time();
    let start = Instant::now();
    let mut numbers = Vec::new();
    for i in 0..plan.heads {
        tokio::time::sleep_until((start + plan.head_every * i as u32).into()).await;
        numbers.push(heads.emit().await?);
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
    let cpu = server_cpu().saturating_sub(cpu_before);
    let client_cpu = client_rt.cpu_time().saturating_sub(client_before);
    let mut row = evaluate(heads.clock(), subscribers, &numbers, subscribers.len());
    row.gate_cpu_per_head = cpu / plan.heads as u32;
    row.client_cpu_per_head = client_cpu / plan.heads as u32;
    Ok(row)
}

/// Grows one set of subscribers through `plan.fanout`, measuring a heads round at each size,
/// then closes them all at once.
pub async fn fanout(
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
        let label = format!("{} subscribed, idle", thousands(clients as u64));
        let mut point = gate.memory_point(&label).await;
        point.clients = Some(clients);
        memory.push(point);

        mark(format!("fan-out {clients}: emitting heads"));
        let cpu = || gate.cpu_time();
        let mut row = heads_round(plan, &subscribers, &mut &*upstream, cpu, client_rt).await?;
        row.connect = connect;
        row.connect_each = connect_each;
        row.connect_failures = connect_failures;
        row.registered = registered;
        rows.push(row);
        if plan.fanout.last() == Some(&clients) {
            let label = format!(
                "{} subscribed, after {} heads",
                thousands(clients as u64),
                plan.heads
            );
            let mut point = gate.memory_point(&label).await;
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
    let teardown = teardown(subscribers, gate, memory).await;
    Ok((rows, teardown))
}

/// Tears down every client at once and sees ethgate drain its sessions.
async fn teardown(
    mut subscribers: Vec<Subscriber>,
    gate: &Gate,
    memory: &mut Vec<MemoryPoint>,
) -> Option<Teardown> {
    if subscribers.is_empty() {
        return None;
    }
    let clients = subscribers.len();
    mark(format!("closing {clients} clients"));
    let cpu = gate.cpu_time();
    let started = Instant::now();
    close_all(&mut subscribers).await;
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
}

/// Ends every subscriber's task (which drops its socket).
pub async fn close_all(subscribers: &mut Vec<Subscriber>) {
    for s in subscribers.iter() {
        s.task.abort();
    }
    for s in subscribers.drain(..) {
        let _ = s.task.await;
    }
}
