//! End-to-end tests against real Ethereum nodes (an anvil devnet mined in lockstep, see
//! `tests/support/devnet.rs`) and a real client library (ethers v6, `tests/js/`).
//!
//! Needs anvil and the JS deps (`scripts/install-test-deps.sh`). Without them the tests print
//! why and pass, unless `CI` is set: under CI missing deps are a failure.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use support::devnet::{Devnet, NodeState, DEV_ADDRESS};
use support::e2e::{block_at, deps_present, devnet_upstreams, js_dir};
use support::gateway::{Gateway, Ports};
use support::http::{poll_until, Http};

const CHAIN_ID: u64 = 31337;
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Dependencies
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs a script from tests/js with node; (exit code, stdout, stderr). Killed at the deadline.
async fn run_js(script: &str, args: &[String], timeout: Duration) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(js_dir().join(script))
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn node");
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("{script}: wait failed: {e}"),
        Err(_) => panic!("{script} {args:?} did not finish within {timeout:?} (killed)"),
    }
}

/// Prints ethgate's output and the devnet's state if the test panics while this is alive.
struct DumpOnPanic<'a> {
    ethgate: Option<&'a Gateway>,
}

impl Drop for DumpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(eg) = self.ethgate {
                eprintln!(
                    "----- ethgate output (pid {}) -----\n{}\n-----",
                    eg.child().pid(),
                    eg.log()
                );
            }
        }
    }
}

fn ethgate_config(ports: &Ports, dev: &Devnet) -> String {
    ethgate_config_with_calls(ports, dev, None)
}

/// The config with `calls = "…"` on every upstream when given.
fn ethgate_config_with_calls(ports: &Ports, dev: &Devnet, calls: Option<&str>) -> String {
    let mut upstreams = devnet_upstreams(dev);
    if let Some(calls) = calls {
        upstreams = upstreams.replace(
            "[[upstream]]\n",
            &format!("[[upstream]]\ncalls = \"{calls}\"\n"),
        );
    }
    format!(
        r#"chain_id = {CHAIN_ID}

[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[health]
interval = "200ms"
timeout = "150ms"
failure_threshold = 2

[log]
level = "info"
{upstreams}"#,
        listen = ports.listen,
        admin = ports.admin,
    )
}

fn upstream_entry<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"].as_str() == Some(name))
}

fn selected_name(status: &Value) -> Option<String> {
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["selected"] == Value::Bool(true))
        .and_then(|u| u["name"].as_str().map(str::to_string))
}

fn hex_u64(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

/// Sends a transfer through `url` with ethers (send_tx.mjs) and waits for its receipt;
/// returns (hash, block number).
async fn send_tx_through(url: &str) -> (String, u64) {
    let (code, out, err) = run_js(
        "send_tx.mjs",
        &[url.to_string(), "--wait-ms".into(), "20000".into()],
        Duration::from_secs(45),
    )
    .await;
    assert_eq!(code, 0, "send_tx.mjs failed: stdout={out} stderr={err}");
    let mut lines = out.lines();
    let hash = lines.next().unwrap_or_default().trim().to_string();
    assert!(
        hash.starts_with("0x") && hash.len() == 66,
        "send_tx.mjs printed no tx hash: {out}"
    );
    let receipt: Value = serde_json::from_str(lines.next().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("send_tx.mjs receipt line is not JSON ({e}): {out}"));
    assert_eq!(receipt["status"], json!(1), "receipt: {receipt}");
    let n = receipt["blockNumber"]
        .as_u64()
        .expect("receipt blockNumber");
    (hash, n)
}

// ---------------------------------------------------------------------------------------------
// The devnet driver itself (anvil only)
// ---------------------------------------------------------------------------------------------

/// Lockstep mining with competing txs on different nodes, a lagging node caught up, and a
/// diverged node reorged back: every node ends on the same chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_nodes_stay_on_one_chain() {
    if !deps_present("devnet_nodes_stay_on_one_chain", false) {
        return;
    }
    let dev = Devnet::start(3).await.expect("start devnet");
    let http = Http::default();
    for _ in 0..2 {
        dev.mine().await.expect("mine");
    }
    // Six txs from six dev accounts with equal fees, each sent to a different node: the nodes
    // receive them in different orders, which anvil alone would turn into a fork.
    let accounts = http
        .rpc(&dev.http_url(0), "eth_accounts", json!([]), RPC_TIMEOUT)
        .await
        .expect("eth_accounts");
    let accounts = accounts.as_array().expect("accounts").clone();
    let mut hashes = Vec::new();
    for k in 0..6 {
        let tx = json!({"from": accounts[k], "to": accounts[9], "value": "0x1", "gas": "0x5208",
            "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00"});
        let h = http
            .rpc(
                &dev.http_url(k % 3),
                "eth_sendTransaction",
                json!([tx]),
                RPC_TIMEOUT,
            )
            .await
            .expect("eth_sendTransaction");
        hashes.push(h);
    }
    let m = dev.mine().await.expect("mine with txs");
    assert_eq!(m.txs, 6, "all six txs in one block: {m:?}");
    assert_eq!(m.nodes, vec![0, 1, 2]);

    // Node 2 lags three blocks, then catches up.
    dev.pause(2).await;
    for _ in 0..3 {
        let m = dev.mine().await.expect("mine");
        assert_eq!(m.nodes, vec![0, 1]);
    }
    let h = dev.height().await;
    assert_eq!(dev.head(2).await.unwrap(), h - 3, "node 2 lags");
    assert_eq!(dev.catch_up(2).await.expect("catch up"), 3);
    assert_eq!(dev.head(2).await.unwrap(), h);

    // Node 1 builds its own two-block branch, then is reorged back onto the devnet's chain.
    dev.diverge(1, 2).await.expect("diverge");
    dev.mine().await.expect("mine");
    let h = dev.height().await;
    let theirs = http
        .rpc(
            &dev.http_url(1),
            "eth_getBlockByNumber",
            json!([format!("0x{:x}", h), false]),
            RPC_TIMEOUT,
        )
        .await
        .expect("block");
    assert_ne!(
        theirs["hash"].as_str(),
        Some(dev.block(h).await.unwrap().hash.as_str())
    );
    dev.catch_up(1).await.expect("catch up after divergence");
    let m = dev.mine().await.expect("mine");
    assert_eq!(m.nodes, vec![0, 1, 2]);
    // A branch ahead of the devnet, rolled back with nothing to replay: the next lockstep
    // block must come out right the first time (the base fee is put back after the rollback).
    dev.diverge(2, 2).await.expect("diverge");
    assert_eq!(dev.catch_up(2).await.expect("catch up"), 0);
    let m = dev.mine().await.expect("mine");
    assert_eq!(m.nodes, vec![0, 1, 2]);
    assert!(m.repaired.is_empty(), "no repair needed: {m:?}");

    // Every node has every canonical block hash, and every tx.
    let h = dev.height().await;
    for i in 0..3 {
        assert_eq!(dev.head(i).await.unwrap(), h);
        for n in 0..=h {
            let b = block_at(&http, &dev.http_url(i), n, RPC_TIMEOUT).await;
            assert_eq!(
                b["hash"].as_str(),
                Some(dev.block(n).await.unwrap().hash.as_str()),
                "node {i} block {n}"
            );
        }
        for tx in &hashes {
            let r = http
                .rpc(
                    &dev.http_url(i),
                    "eth_getTransactionReceipt",
                    json!([tx]),
                    RPC_TIMEOUT,
                )
                .await
                .expect("receipt");
            assert_eq!(r["status"], json!("0x1"), "node {i} tx {tx}");
        }
    }

    // Fast mining while txs of several senders keep arriving at different nodes (so they reach
    // the nodes in different orders, some between the pool copy and a follower's evm_mine):
    // the driver must repair followers by rollback, never fork and never lose a tx.
    let dev = Arc::new(dev);
    let miner = dev.spawn_miner(Duration::from_millis(40));
    let mut nonces = Vec::new();
    for a in accounts.iter().take(6) {
        let n = http
            .rpc(
                &dev.http_url(0),
                "eth_getTransactionCount",
                json!([a, "latest"]),
                RPC_TIMEOUT,
            )
            .await
            .expect("nonce");
        nonces.push(hex_u64(&n).expect("nonce hex"));
    }
    let mut sent = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    let mut k = 0usize;
    while tokio::time::Instant::now() < deadline {
        // Signed with explicit nonces (no node assigns them), each tx sent to one node only,
        // consecutive txs of one sender to different nodes (nonce gaps until the driver copies).
        let a = k % 6;
        let tx = json!({"from": accounts[a], "to": accounts[9], "value": "0x1", "gas": "0x5208",
            "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00",
            "nonce": format!("0x{:x}", nonces[a]), "chainId": format!("0x{CHAIN_ID:x}")});
        nonces[a] += 1;
        let raw = http
            .rpc(
                &dev.http_url(0),
                "eth_signTransaction",
                json!([tx]),
                RPC_TIMEOUT,
            )
            .await
            .expect("eth_signTransaction");
        let h = http
            .rpc(
                &dev.http_url((k / 6 + a) % 3),
                "eth_sendRawTransaction",
                json!([raw]),
                RPC_TIMEOUT,
            )
            .await
            .expect("eth_sendRawTransaction during fast mining");
        if std::env::var_os("DEVNET_DEBUG").is_some() {
            eprintln!(
                "test {:?}: sent {h} nonce {} to anvil{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis()
                    % 100_000,
                nonces[a] - 1,
                (k / 6 + a) % 3
            );
        }
        sent.push(h);
        k += 1;
        tokio::time::sleep(Duration::from_millis(7)).await; // pacing of the tx stream
    }
    let log = miner.stop().await;
    assert!(log.errors.is_empty(), "mining errors: {:?}", log.errors);
    eprintln!(
        "fast mining: {} blocks, {} txs sent, {} follower blocks repaired",
        log.blocks,
        sent.len(),
        log.repairs
    );
    for _ in 0..3 {
        dev.mine().await.expect("mine the rest");
    }
    let h = dev.height().await;
    for i in 0..3 {
        assert_eq!(dev.head(i).await.unwrap(), h, "node {i} head");
        let b = http
            .rpc(
                &dev.http_url(i),
                "eth_getBlockByNumber",
                json!(["latest", false]),
                RPC_TIMEOUT,
            )
            .await
            .expect("block");
        assert_eq!(
            b["hash"].as_str(),
            Some(dev.block(h).await.unwrap().hash.as_str())
        );
    }
    let mut lost = Vec::new();
    for tx in &sent {
        let r = http
            .rpc(
                &dev.http_url(2),
                "eth_getTransactionReceipt",
                json!([tx]),
                RPC_TIMEOUT,
            )
            .await
            .expect("receipt");
        if r["status"] != json!("0x1") {
            let mut seen = Vec::new();
            for i in 0..3 {
                let t = http
                    .rpc(
                        &dev.http_url(i),
                        "eth_getTransactionByHash",
                        json!([tx]),
                        RPC_TIMEOUT,
                    )
                    .await
                    .unwrap_or(Value::Null);
                seen.push(format!(
                    "node {i}: {}",
                    if t.is_null() {
                        "unknown".to_string()
                    } else {
                        format!("nonce {} from {}", t["nonce"], t["from"])
                    }
                ));
            }
            lost.push(format!("{tx}: {seen:?}"));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} txs not mined: {lost:#?}",
        lost.len(),
        sent.len()
    );

    // A killed node is skipped.
    dev.kill(0).await;
    let m = dev.mine().await.expect("mine without node 0");
    assert_eq!(m.nodes, vec![1, 2]);
    assert_eq!(dev.state(0).await, NodeState::Dead);
}

// ---------------------------------------------------------------------------------------------
// ethgate in front of the devnet
// ---------------------------------------------------------------------------------------------

/// ethers reads and a signed tx through ethgate; then a read load during which the selected
/// upstream is killed: no read may fail, and /status must show the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethgate_fails_over_between_real_nodes_under_ethers_load() {
    let test = "ethgate_fails_over_between_real_nodes_under_ethers_load";
    if deps_present(test, true) {
        fails_over_under_ethers_load(None).await;
    }
}

/// The same with every call multiplexed over the nodes' WebSockets (`calls = "ws"`): the
/// broadcast of a transaction, probes, and reads that must move when their node dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_nodes_websockets_fail_over_under_ethers_load() {
    let test = "calls_over_the_nodes_websockets_fail_over_under_ethers_load";
    if deps_present(test, true) {
        fails_over_under_ethers_load(Some("ws")).await;
    }
}

async fn fails_over_under_ethers_load(calls: Option<&str>) {
    let dev = Arc::new(Devnet::start(3).await.expect("start devnet"));
    let miner = dev.spawn_miner(Duration::from_millis(500));
    let ports = Ports::free();
    let config = ethgate_config_with_calls(&ports, &dev, calls);
    let eg = Gateway::spawn(ports, &config, &[], Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("ethgate did not start: {e}\nconfig:\n{config}"));
    let _dump = DumpOnPanic { ethgate: Some(&eg) };
    let url = eg.url();
    let http = Http::default();

    // Ready, with every upstream healthy and one selected.
    let status = poll_until(
        "/status: all upstreams healthy and one selected",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let st = eg.try_status().await.ok()?;
            let ups = st["upstreams"].as_array()?;
            let all_healthy = ups.len() == 3 && ups.iter().all(|u| u["state"] == json!("healthy"));
            (all_healthy && selected_name(&st).is_some()).then_some(st)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; last /status: {:?}", futures_status(&eg)));
    eprintln!("initial /status: {status}");
    let (code, _) = support::http::http_get(&eg.admin_url("/readyz"), RPC_TIMEOUT)
        .await
        .expect("/readyz");
    assert_eq!(code, 200, "/readyz");

    // Plain JSON-RPC through ethgate.
    let chain_id = http
        .rpc(&url, "eth_chainId", json!([]), RPC_TIMEOUT)
        .await
        .expect("eth_chainId through ethgate");
    assert_eq!(hex_u64(&chain_id), Some(CHAIN_ID));
    let bal = http
        .rpc(
            &url,
            "eth_getBalance",
            json!([DEV_ADDRESS, "latest"]),
            RPC_TIMEOUT,
        )
        .await
        .expect("eth_getBalance through ethgate");
    assert!(bal.as_str().is_some_and(|b| b.len() > 3), "balance {bal}");

    // ethers reads (a short load run) through ethgate.
    let (code, out, err) = run_js(
        "http_load.mjs",
        &[
            url.clone(),
            "1500".into(),
            "--concurrency".into(),
            "2".into(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, 0, "http_load.mjs: {out} {err}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or("")).expect("summary");
    assert_eq!(
        summary["failed"],
        json!(0),
        "ethers reads through ethgate failed: {summary}"
    );
    assert!(summary["ok"].as_u64().unwrap_or(0) > 0, "{summary}");

    // A signed tx through ethgate is mined by the devnet; its receipt is found through ethgate.
    let (hash, n) = send_tx_through(&url).await;
    let receipt = http
        .rpc(
            &url,
            "eth_getTransactionReceipt",
            json!([hash]),
            RPC_TIMEOUT,
        )
        .await
        .expect("receipt through ethgate");
    assert_eq!(receipt["status"], json!("0x1"));
    let canonical = dev.block(n).await.expect("canonical block");
    assert_eq!(receipt["blockHash"].as_str(), Some(canonical.hash.as_str()));
    assert!(canonical.tx_hashes.contains(&hash.to_lowercase()));

    // Read load; mid-load the selected upstream dies.
    let load_ms: u64 = 8000;
    let load = tokio::spawn({
        let url = url.clone();
        async move {
            run_js(
                "http_load.mjs",
                &[url, load_ms.to_string(), "--concurrency".into(), "4".into()],
                Duration::from_millis(load_ms) + Duration::from_secs(40),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(2500)).await; // let the load run a while first
    let victim = poll_until(
        "/status: an upstream selected before the kill",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { selected_name(&eg.try_status().await.ok()?) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; last /status: {:?}", futures_status(&eg)));
    let vi: usize = victim
        .trim_start_matches("anvil")
        .parse()
        .expect("upstream name anvilN");
    eprintln!("killing selected upstream {victim} (pid {})", dev.pid(vi));
    dev.kill(vi).await;

    let after = poll_until(
        "/status: killed upstream unreachable and another selected",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let st = eg.try_status().await.ok()?;
            let dead = upstream_entry(&st, &victim)?;
            let sel = selected_name(&st)?;
            (dead["state"] == json!("unreachable") && sel != victim).then_some(st)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; last /status: {:?}", futures_status(&eg)));
    eprintln!("/status after the kill: {after}");

    let (code, out, err) = load.await.expect("load task");
    assert_eq!(code, 0, "http_load.mjs: stdout={out} stderr={err}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("http_load summary not JSON ({e}): {out} {err}"));
    eprintln!("load summary: {summary}");
    assert!(
        summary["ok"].as_u64().unwrap_or(0) > 0,
        "no successful reads: {summary}"
    );
    assert_eq!(
        summary["failed"],
        json!(0),
        "reads failed while the selected upstream was killed: {}",
        summary["errors"]
    );

    // Writes still work after the failover, and the devnet stayed in lockstep throughout.
    let (hash2, n2) = send_tx_through(&url).await;
    let canonical = dev.block(n2).await.expect("canonical block");
    assert!(canonical.tx_hashes.contains(&hash2.to_lowercase()));
    let log = miner.stop().await;
    assert!(
        log.errors.is_empty(),
        "devnet mining errors: {:?}",
        log.errors
    );
}

/// Best effort /status for failure messages.
fn futures_status(eg: &Gateway) -> String {
    let url = eg.admin_url("/status");
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| {
                rt.block_on(support::http::http_get(&url, Duration::from_secs(2)))
                    .map(|(_, b)| b)
                    .unwrap_or_else(|e| e)
            })
            .unwrap_or_default()
    })
    .join()
    .unwrap_or_default()
}

/// A transaction sent through ethgate reaches every live node's pool (each node gets it once),
/// `net_version` comes from the verified chain id, and the tx is mined on the one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sent_through_ethgate_lands_in_every_nodes_pool() {
    if !deps_present(
        "a_transaction_sent_through_ethgate_lands_in_every_nodes_pool",
        false,
    ) {
        return;
    }
    let dev = Devnet::start(3).await.expect("start devnet");
    dev.mine().await.expect("first block");
    let ports = Ports::free();
    let config = ethgate_config(&ports, &dev);
    let eg = Gateway::spawn(ports, &config, &[], Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("ethgate did not start: {e}\nconfig:\n{config}"));
    let _dump = DumpOnPanic { ethgate: Some(&eg) };
    let url = eg.url();
    let http = Http::default();
    poll_until(
        "/status: all upstreams healthy",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let st = eg.try_status().await.ok()?;
            let ups = st["upstreams"].as_array()?;
            (ups.len() == 3 && ups.iter().all(|u| u["state"] == json!("healthy"))).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let version = http
        .rpc(&url, "net_version", json!([]), RPC_TIMEOUT)
        .await
        .expect("net_version");
    assert_eq!(version, json!(CHAIN_ID.to_string()));

    // anvil signs for its dev accounts deterministically, so every node sees the same tx;
    // every field is given so no node fills one in differently.
    let tx = json!({
        "from": DEV_ADDRESS,
        "to": "0x000000000000000000000000000000000000dEaD",
        "value": "0x1",
        "gas": "0x5208",
        "nonce": "0x0",
        "maxFeePerGas": "0x77359400",
        "maxPriorityFeePerGas": "0x1",
        "chainId": format!("0x{CHAIN_ID:x}"),
        "type": "0x2",
    });
    let hash = http
        .rpc(&url, "eth_sendTransaction", json!([tx]), RPC_TIMEOUT)
        .await
        .expect("eth_sendTransaction through ethgate");
    let hash = hash.as_str().expect("tx hash").to_string();
    // The client has the first node's acceptance; the others take the broadcast in parallel:
    // wait until each node's pool shows the tx (still pending).
    for i in 0..dev.len() {
        let url = dev.http_url(i);
        let lookup = || async {
            let params = json!([hash]);
            let seen = http.rpc(&url, "eth_getTransactionByHash", params, RPC_TIMEOUT);
            let seen = seen.await.unwrap_or_else(|e| panic!("anvil{i}: {e:?}"));
            (seen["hash"] == json!(hash)).then_some(seen)
        };
        let seen = poll_until(
            &format!("the tx in anvil{i}'s pool"),
            RPC_TIMEOUT,
            Duration::from_millis(20),
            lookup,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            seen["blockNumber"].is_null(),
            "anvil{i}: still pending: {seen}"
        );
    }
    let mined = dev.mine().await.expect("mine");
    assert_eq!(
        mined.txs, 1,
        "the tx is mined once, on every node: {mined:?}"
    );
}
