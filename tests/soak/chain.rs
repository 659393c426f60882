//! The soak's on-chain side: two copies of a tiny event-emitting contract, the filters the
//! clients hold, and a background pump of contract calls sent straight to the devnet's nodes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::schedule::Rng;
use crate::support::devnet::{Devnet, NodeState};
use crate::support::http::Http;

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// topic0 of every event: an arbitrary fixed 32-byte value (the contract just emits it).
pub const TOPIC: &str = "0x5a6b2ab3a7b0c2c45d9e6a3f5d0a61f1e8d2b1a1c0f9e8d7c6b5a4938271605f";

/// Runtime: LOG2(topic0 = TOPIC, topic1 = calldata[0..32]) with the calldata as data, then STOP.
///   36 6000 6000 37   CALLDATACOPY(0, 0, size)
///   6000 35           topic1 = CALLDATALOAD(0)
///   7f TOPIC          topic0
///   36 6000           size, offset 0
///   a2 00             LOG2, STOP                       = 47 bytes (0x2f)
/// Init: CODECOPY the 47 runtime bytes that follow the 11-byte init code, RETURN them.
pub fn bytecode() -> String {
    let runtime = format!("3660006000376000357f{}366000a200", &TOPIC[2..]);
    assert_eq!(
        runtime.len() / 2,
        0x2f,
        "runtime length must match the init code"
    );
    format!("0x602f80600b6000396000f3{runtime}")
}

/// The first 32-byte word of a call: which of three kinds of event it emits (topic1).
pub fn kind_word(kind: u64) -> String {
    format!("0x{kind:064x}")
}

/// The filters the clients hold, by name (addresses lower-case).
pub fn filters(a: &str, b: &str) -> Vec<(String, Value)> {
    vec![
        ("all_a".into(), json!({"address": a})),
        (
            "a_kind1".into(),
            json!({"address": a, "topics": [TOPIC, kind_word(1)]}),
        ),
        (
            "any_kind2or3".into(),
            json!({"topics": [null, [kind_word(2), kind_word(3)]]}),
        ),
        ("b_tick".into(), json!({"address": b, "topics": [TOPIC]})),
        (
            "ab_kind3".into(),
            json!({"address": [a, b], "topics": [[TOPIC], kind_word(3)]}),
        ),
    ]
}

/// Deploys the contract twice from `from` on node 0 and waits (mining must run) for both.
pub async fn deploy_two(dev: &Devnet, http: &Http, from: &str) -> Result<(String, String), String> {
    let url = dev.http_url(0);
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let h = http
            .rpc(
                &url,
                "eth_sendTransaction",
                json!([{"from": from, "data": bytecode(), "gas": "0x30000"}]),
                RPC_TIMEOUT,
            )
            .await
            .map_err(|e| format!("deploy: {e}"))?;
        hashes.push(h);
    }
    let mut addresses = Vec::new();
    for h in hashes {
        let mut receipt = Value::Null;
        for _ in 0..200 {
            receipt = http
                .rpc(&url, "eth_getTransactionReceipt", json!([h]), RPC_TIMEOUT)
                .await
                .unwrap_or(Value::Null);
            if !receipt.is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if receipt["status"] != json!("0x1") {
            return Err(format!("deploy receipt: {receipt}"));
        }
        let a = receipt["contractAddress"].as_str().unwrap_or_default();
        addresses.push(a.to_lowercase());
    }
    Ok((addresses[0].clone(), addresses[1].clone()))
}

/// Sends a contract call every `every`: sender k only ever to node k (so one account never
/// has two txs with one nonce in two pools), and only while that node is live; the contract
/// and the kind drawn from `seed`. Errors are counted, not fatal: what the clients must see is
/// read back from the chain at the end.
pub struct Pump {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Pump {
    /// Starts pumping; `senders[k]` sends to node k.
    pub fn start(
        dev: Arc<Devnet>,
        senders: Vec<String>,
        contracts: [String; 2],
        seed: u64,
        every: Duration,
    ) -> Pump {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (st, se, fa) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let http = Http::default();
            let mut rng = Rng::new(seed ^ 0x5eed);
            let mut seq = 0u64;
            while !st.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                let k = rng.below(senders.len() as u64) as usize;
                let contract = &contracts[rng.below(2) as usize];
                let kind = 1 + rng.below(3);
                seq += 1;
                if dev.state(k).await != NodeState::Live {
                    continue;
                }
                let data = format!("{}{seq:064x}", kind_word(kind));
                let r = http
                    .rpc(
                        &dev.http_url(k),
                        "eth_sendTransaction",
                        json!([{"from": senders[k], "to": contract, "data": data, "gas": "0x186a0"}]),
                        RPC_TIMEOUT,
                    )
                    .await;
                match r {
                    Ok(_) => se.fetch_add(1, Ordering::Relaxed),
                    Err(_) => fa.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
        Pump {
            stop,
            sent,
            failed,
            task,
        }
    }

    /// Stops after the call in progress (bounded); returns the calls sent and failed.
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Sends one call from `from` to node `i` alone (the reorg's event in the diverging branch).
pub async fn call_on(
    http: &Http,
    dev: &Devnet,
    i: usize,
    from: &str,
    contract: &str,
    kind: u64,
) -> Result<String, String> {
    let data = format!("{}{:064x}", kind_word(kind), 0xdead_u64);
    http.rpc(
        &dev.http_url(i),
        "eth_sendTransaction",
        json!([{"from": from, "to": contract, "data": data, "gas": "0x186a0"}]),
        RPC_TIMEOUT,
    )
    .await
    .map(|v| v.as_str().unwrap_or_default().to_lowercase())
    .map_err(|e| e.to_string())
}
