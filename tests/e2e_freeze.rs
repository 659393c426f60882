//! End-to-end: the selected anvil node freezes (SIGSTOP: sockets open, nothing answered) while HTTP and
//! WebSocket clients keep reading and a writer keeps sending transactions through ethgate. No call may wait
//! anywhere near `request_timeout` (30 s): reads in flight on the frozen node move as soon as health takes it
//! out (interval 500 ms, failure threshold 2: about 1.5 s), sends are answered by the other nodes.
//!
//! Needs anvil (`scripts/install-test-deps.sh`); without it the test prints why and passes, unless `CI` is
//! set (then it fails).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::devnet::{Devnet, DEV_ADDRESS};
use support::e2e::deps_present;
use support::gateway::Gateway;
use support::http::Http;
use support::ws_client::{Frame, WsClient};

/// Longest any call may take: the freeze's detection time plus a generous margin, far below
/// `request_timeout`.
const BOUND: Duration = Duration::from_secs(8);
/// How long a client waits before calling a call lost (longer than `request_timeout`).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);
const HTTP_CLIENTS: usize = 6;
const WS_CLIENTS: usize = 4;
const RECEIVER: &str = "0x000000000000000000000000000000000000dEaD";

fn config(dev: &Devnet) -> String {
    let mut toml = format!(
        "chain_id = {}\n[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"30s\"\ndrain_delay = \"0s\"\n\
         [health]\ninterval = \"500ms\"\ntimeout = \"400ms\"\nfailure_threshold = 2\nrecovery_threshold = 2\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        dev.chain_id()
    );
    for i in 0..dev.len() {
        toml += &format!(
            "[[upstream]]\nname = \"anvil{i}\"\nhttp = \"{}\"\nws = \"{}\"\npriority = {i}\n",
            dev.http_url(i),
            dev.ws_url(i)
        );
    }
    toml
}

/// What the clients saw: the slowest call and every failure, by client kind.
#[derive(Default)]
struct Seen {
    calls: usize,
    slowest: Duration,
    failures: Vec<String>,
}

impl Seen {
    fn record(&mut self, what: &str, took: Duration, outcome: Result<(), String>) {
        self.calls += 1;
        self.slowest = self.slowest.max(took);
        if let Err(e) = outcome {
            self.failures.push(format!("{what} after {took:?}: {e}"));
        }
    }
}

/// Reads over HTTP until `stop`.
async fn http_reader(url: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let http = Http::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (method, params) = if n % 2 == 0 {
            ("eth_blockNumber", json!([]))
        } else {
            ("eth_getBalance", json!([DEV_ADDRESS, "latest"]))
        };
        n += 1;
        let started = Instant::now();
        let outcome = http.rpc(&url, method, params, CLIENT_TIMEOUT).await;
        let outcome = outcome.map(|_| ()).map_err(|e| format!("{e:?}"));
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.record(&format!("http {method}"), started.elapsed(), outcome);
    }
}

/// Reads over one WebSocket connection until `stop`.
async fn ws_reader(url: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut ws = WsClient::connect(&url).await;
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let started = Instant::now();
        ws.call(json!(id), "eth_blockNumber", json!([])).await;
        let outcome = match ws.next_within(CLIENT_TIMEOUT).await {
            Some(Frame::Json(answer))
                if answer["id"] == json!(id) && answer["result"].is_string() =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        };
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.record("ws eth_blockNumber", started.elapsed(), outcome);
    }
}

/// Signs a transfer with `nonce` on node `signer` (anvil holds the dev key); returns the raw tx.
async fn signed_transfer(http: &Http, dev: &Devnet, signer: usize, nonce: u64) -> String {
    let tx = json!({
        "from": DEV_ADDRESS, "to": RECEIVER, "value": "0x1", "gas": "0x5208",
        "maxFeePerGas": "0x2540be400", "maxPriorityFeePerGas": "0x3b9aca00",
        "nonce": format!("{nonce:#x}"), "chainId": format!("{:#x}", dev.chain_id()),
    });
    let raw = http
        .rpc(
            &dev.http_url(signer),
            "eth_signTransaction",
            json!([tx]),
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("eth_signTransaction on anvil{signer}: {e:?}"));
    raw.as_str().expect("raw tx").to_string()
}

/// Sends pre-signed transactions through ethgate every 300 ms until `stop`; returns their hashes.
async fn writer(
    url: String,
    raws: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Vec<String> {
    let http = Http::default();
    let mut hashes = Vec::new();
    for raw in raws {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let started = Instant::now();
        let outcome = http
            .rpc(&url, "eth_sendRawTransaction", json!([raw]), CLIENT_TIMEOUT)
            .await;
        let took = started.elapsed();
        let outcome = match outcome {
            Ok(Value::String(hash)) => {
                hashes.push(hash);
                Ok(())
            }
            other => Err(format!("{other:?}")),
        };
        seen.lock().unwrap_or_else(|e| e.into_inner()).record(
            "eth_sendRawTransaction",
            took,
            outcome,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    hashes
}

fn selected(status: &Value) -> Option<String> {
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["selected"] == json!(true))
        .and_then(|u| u["name"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_the_selected_node_under_load_costs_calls_the_detection_time_only() {
    if !deps_present(
        "freezing_the_selected_node_under_load_costs_calls_the_detection_time_only",
        false,
    ) {
        return;
    }
    let dev = Arc::new(Devnet::start(3).await.expect("start devnet"));
    let miner = dev.spawn_miner(Duration::from_secs(1));
    let gw = Gateway::start_toml(&config(&dev)).await;
    gw.wait_all_healthy().await;
    let victim = selected(&gw.status().await).expect("a selected upstream");
    let vi: usize = victim["anvil".len()..].parse().expect("anvilN");
    let signer = (vi + 1) % dev.len();

    // Transactions signed up front, so the writer sends at a steady pace through the freeze.
    let http = Http::default();
    let nonce = http
        .rpc(
            &dev.http_url(signer),
            "eth_getTransactionCount",
            json!([DEV_ADDRESS, "pending"]),
            CLIENT_TIMEOUT,
        )
        .await
        .expect("nonce");
    let nonce = u64::from_str_radix(nonce.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)
        .expect("hex nonce");
    let mut raws = Vec::new();
    for k in 0..40 {
        raws.push(signed_transfer(&http, &dev, signer, nonce + k).await);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(Mutex::new(Seen::default()));
    let writes = Arc::new(Mutex::new(Seen::default()));
    let mut clients = Vec::new();
    for _ in 0..HTTP_CLIENTS {
        clients.push(tokio::spawn(http_reader(
            gw.url(),
            stop.clone(),
            reads.clone(),
        )));
    }
    for _ in 0..WS_CLIENTS {
        clients.push(tokio::spawn(ws_reader(
            gw.ws_url(),
            stop.clone(),
            reads.clone(),
        )));
    }
    let sender = tokio::spawn(writer(gw.url(), raws, stop.clone(), writes.clone()));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    eprintln!("freezing {victim} (pid {}) under load", dev.pid(vi));
    let frozen_at = Instant::now();
    dev.freeze(vi).await.expect("SIGSTOP");
    gw.wait_state(&victim, "unreachable").await;
    eprintln!("{victim} out of rotation after {:?}", frozen_at.elapsed());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    let hashes = sender.await.expect("writer task");

    let reads = std::mem::take(&mut *reads.lock().unwrap_or_else(|e| e.into_inner()));
    let writes = std::mem::take(&mut *writes.lock().unwrap_or_else(|e| e.into_inner()));
    let (code, body) = gw.admin_get("/metrics").await;
    assert_eq!(code, 200);
    let metrics = String::from_utf8_lossy(&body).to_string();
    let moved = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ethgate_failovers_total{kind=\"in_flight\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!(
        "reads: {} calls, slowest {:?}; writes: {} sends, slowest {:?}; moved in flight: {moved}",
        reads.calls, reads.slowest, writes.calls, writes.slowest
    );
    assert!(
        reads.failures.is_empty(),
        "reads failed: {:?}",
        reads.failures
    );
    assert!(
        writes.failures.is_empty(),
        "sends failed: {:?}",
        writes.failures
    );
    assert!(reads.slowest < BOUND, "a read waited {:?}", reads.slowest);
    assert!(writes.slowest < BOUND, "a send waited {:?}", writes.slowest);
    assert!(
        moved >= 1.0,
        "no call was in flight on the frozen node?\n{metrics}"
    );
    assert_ne!(selected(&gw.status().await), Some(victim.clone()));

    // Every send went into the chain once (the live nodes mine it) and none was lost.
    for hash in &hashes {
        let mut mined = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mined && Instant::now() < deadline {
            let receipt = http
                .rpc(
                    &gw.url(),
                    "eth_getTransactionReceipt",
                    json!([hash]),
                    CLIENT_TIMEOUT,
                )
                .await
                .expect("receipt through ethgate");
            mined = receipt["status"] == json!("0x1");
            if !mined {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert!(mined, "send {hash} was not mined");
    }
    let log = miner.stop().await;
    assert!(
        log.errors.is_empty(),
        "devnet mining errors: {:?}",
        log.errors
    );
}
