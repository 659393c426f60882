//! Subscribed clients: each connects, subscribes to newHeads and records every notification
//! it receives; then every client's log is checked (each head exactly once, in order) and the
//! delays pooled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect, next_text};
use crate::upstream::EmitClock;

/// Clients connecting (and subscribing) at once.
pub const CONNECT_CONCURRENCY: usize = 200;

/// What one subscribed client saw.
#[derive(Default)]
pub struct ClientLog {
    /// (block number, receipt instant) of every newHeads notification.
    pub heads: Mutex<Vec<(u64, Instant)>>,
    /// Text frames that were not a newHeads notification.
    pub other: AtomicU64,
    /// Why the connection ended, if it did.
    pub ended: Mutex<Option<String>>,
}

/// One subscribed client's task and log.
pub struct Subscriber {
    pub log: Arc<ClientLog>,
    pub task: JoinHandle<()>,
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
pub async fn grow(
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

/// What one fan-out size measured.
pub struct FanoutRow {
    pub clients: usize,
    pub connect: Duration,
    /// Connect + subscribe time of each new client, sorted, ns.
    pub connect_each: Vec<u64>,
    pub connect_failures: usize,
    pub registered: bool,
    pub heads: u64,
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub disordered_clients: u64,
    pub unexpected: u64,
    pub ended_clients: u64,
    pub first_ended: Option<String>,
    /// All (client, head) delays, sorted, ns.
    pub delays: Vec<u64>,
    /// Per head: delay to the first and to the last client, ns.
    pub first_client: Vec<u64>,
    pub last_client: Vec<u64>,
    pub gate_cpu_per_head: Duration,
    pub client_cpu_per_head: Duration,
}

/// Checks every client's log against the heads `numbers` emitted on `clock`.
pub fn evaluate(
    clock: &EmitClock,
    subscribers: &[Subscriber],
    numbers: &[u64],
    clients: usize,
) -> FanoutRow {
    let heads = numbers.len() as u64;
    let (lo, hi) = (numbers[0], *numbers.last().unwrap_or(&numbers[0]));
    let emitted: Vec<Instant> = numbers
        .iter()
        .map(|&n| clock.at(n).expect("emitted head"))
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
