//! Part 1, WebSocket request/response: closed-loop clients, one WebSocket each,
//! `eth_blockNumber`, against the upstream directly, through an HAProxy tunnel and through ethgate.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect, next_text};
use crate::common::{
    closed_loop, process_cpu_time, process_kernel_time, CpuUse, Pinned, Point, Record,
};
use crate::Plan;

/// Request/response connection counts.
pub const RR_CONNECTIONS: [usize; 2] = [1, 16];

/// One target of the clients.
pub struct RrTarget {
    pub name: &'static str,
    pub url: String,
    /// The proxy process whose CPU is counted (none when direct).
    pub proxy_pid: Option<u32>,
}

/// One closed-loop client: send, wait for the answer, check its id, again until `end`.
async fn rr_client(url: String, measure_from: Instant, end: Instant) -> anyhow::Result<Record> {
    #[derive(Deserialize)]
    struct Answer<'a> {
        id: Option<u64>,
        #[serde(borrow)]
        result: Option<&'a RawValue>,
        #[serde(borrow)]
        error: Option<&'a RawValue>,
    }
    let mut ws = connect(&url).await?;
    let mut record = Record::new();
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
        let good = matches!(
            serde_json::from_str::<Answer>(text.as_str()),
            Ok(a) if a.error.is_none() && a.result.is_some() && a.id == Some(id)
        );
        if started >= measure_from {
            record.latencies_ns.push(elapsed.as_nanos() as u64);
            if !good {
                record.error(format!("unexpected answer to id {id}: {}", text.as_str()));
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(record)
}

/// One window of `conns` clients against `target`.
pub fn rr_measure(
    client_rt: &Pinned,
    upstream_rt: &Pinned,
    target: &RrTarget,
    conns: usize,
    plan: &Plan,
) -> anyhow::Result<Point> {
    let cpu = || CpuUse {
        proxy: target.proxy_pid.map(process_cpu_time).unwrap_or_default(),
        backend: upstream_rt.cpu_time(),
        proxy_kernel: target.proxy_pid.map(process_kernel_time),
    };
    let (records, used) = client_rt.rt.block_on(closed_loop(
        conns,
        plan.warmup,
        plan.measure,
        cpu,
        |measure_from, end| rr_client(target.url.clone(), measure_from, end),
    ))?;
    let label = format!("{} c={conns}", target.name);
    Ok(Point::merge(&label, records, plan.measure, used))
}
