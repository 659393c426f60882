//! End-to-end test of WebSocket subscriptions through ethgate: a lockstep anvil devnet (see
//! `tests/support/devnet.rs`) behind the ethgate binary, and an ethers v6 WebSocketProvider
//! client (`tests/js/ws_watch.mjs`) subscribed to blocks and to a contract's event while the
//! devnet kills the selected node, then lags another one and brings it back, then makes the
//! node feeding the subscriptions build its own branch and reorgs it back.
//!
//! Needs anvil and the JS deps (`scripts/install-test-deps.sh`). Without them the test prints
//! why and passes, unless `CI` is set: under CI missing deps are a failure.
//!
//! `WS_E2E_DEBUG=1` also prints ethgate's output and the client's calls on success
//! (`DEVNET_DEBUG=1` traces the devnet driver).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use support::devnet::Devnet;
use support::e2e::{deps_present, js_dir};
use support::gateway::{Gateway, Ports};
use support::http::{http_get, poll_until, Http};

const CHAIN_ID: u64 = 31337;
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Block time of the devnet.
const BLOCK_TIME: Duration = Duration::from_millis(500);
/// Upper bound of any single wait on the client or on ethgate's `/status`.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Dependencies (as in e2e_anvil.rs)
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// The ethers client (tests/js/ws_watch.mjs)
// ---------------------------------------------------------------------------------------------

/// What the client printed so far.
#[derive(Default)]
struct ClientState {
    ready: Option<Value>,
    /// Highest block number of an ethers "block" event.
    last_block: Option<u64>,
    /// "block" events so far.
    blocks: usize,
    /// Logs delivered to the filter listener, as of the last "block" event.
    logs: u64,
    summary: Option<Value>,
    /// Lines that were not JSON, and stderr.
    other: Vec<String>,
    exited: bool,
}

/// `node ws_watch.mjs WS_URL`, killed on drop; stdout parsed as it arrives.
struct Client {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    state: Arc<Mutex<ClientState>>,
}

impl Client {
    fn spawn(url: &str, max_run: Duration) -> Client {
        let mut child = tokio::process::Command::new("node")
            .arg(js_dir().join("ws_watch.mjs"))
            .arg(url)
            .args(["--max-ms", &max_run.as_millis().to_string()])
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node ws_watch.mjs");
        let state = Arc::new(Mutex::new(ClientState::default()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let st = state.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => match v["event"].as_str() {
                        Some("block") => {
                            let n = v["n"].as_u64().unwrap_or(0);
                            s.last_block = Some(s.last_block.map_or(n, |l| l.max(n)));
                            s.blocks += 1;
                            s.logs = v["logs"].as_u64().unwrap_or(0);
                        }
                        Some("ready") => s.ready = Some(v),
                        Some("summary") => s.summary = Some(v),
                        _ => s.other.push(line),
                    },
                    Err(_) => s.other.push(line),
                }
            }
            st.lock().unwrap_or_else(|e| e.into_inner()).exited = true;
        });
        let st = state.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                st.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .other
                    .push(format!("stderr: {line}"));
            }
        });
        Client {
            stdin: child.stdin.take(),
            child,
            state,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&ClientState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until `check` holds on the client's state; panics with `what` at the deadline or
    /// if the client exits first.
    async fn wait(&self, what: &str, timeout: Duration, check: impl Fn(&ClientState) -> bool) {
        let r = poll_until(what, timeout, Duration::from_millis(50), || async {
            self.with(|s| {
                if check(s) {
                    Some(Ok(()))
                } else if s.exited && s.summary.is_none() {
                    Some(Err(format!("client exited while waiting for {what}")))
                } else {
                    s.summary.as_ref().map(|sum| {
                        Err(format!(
                            "client stopped ({}) while waiting for {what}: \
                             fatal={} wsClosed={} errors={}",
                            sum["stoppedBy"], sum["fatal"], sum["wsClosed"], sum["errors"]
                        ))
                    })
                }
            })
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => panic!("{e}\nclient output:\n{}", self.output()),
        }
    }

    /// Waits until the client has seen `blocks` more blocks and `logs` more logs than now.
    async fn wait_progress(&self, what: &str, blocks: u64, logs: u64) {
        let (b0, l0) = self.with(|s| (s.last_block.unwrap_or(0), s.logs));
        self.wait(what, WAIT, |s| {
            s.last_block.unwrap_or(0) >= b0 + blocks && s.logs >= l0 + logs
        })
        .await;
    }

    /// Asks the client to stop and returns its summary.
    async fn stop(mut self) -> Summary {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n").await;
            let _ = stdin.flush().await;
        }
        self.wait("the client's summary", WAIT, |s| s.summary.is_some())
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let v = self.with(|s| s.summary.clone()).unwrap_or_default();
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("client summary does not parse ({e}): {v}"))
    }

    fn output(&self) -> String {
        self.with(|s| {
            let mut o = s.other.join("\n");
            if let Some(sum) = &s.summary {
                o.push_str(&format!("\nsummary: {sum}"));
            }
            o
        })
    }
}

#[derive(Debug, Deserialize, Clone)]
struct SeenHead {
    n: u64,
    hash: String,
    parent: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct SeenLog {
    n: u64,
    block_hash: String,
    tx: String,
    index: u64,
    #[serde(default)]
    removed: bool,
}

#[derive(Debug, Deserialize)]
struct SubscriptionIds {
    #[serde(rename = "newHeads")]
    new_heads: Vec<String>,
    logs: Vec<String>,
    other: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SentTx {
    hash: String,
    nonce: u64,
    at_block: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    contract: Option<String>,
    topic: String,
    blocks: Vec<u64>,
    logs: Vec<SeenLog>,
    heads: Vec<SeenHead>,
    raw_logs: Vec<SeenLog>,
    subscription_ids: SubscriptionIds,
    ws_opens: u64,
    ws_closed: Value,
    errors: Vec<Value>,
    sent: Vec<SentTx>,
    /// Every eth_sendRawTransaction: {nonce, rebroadcast, atBlock, atMs, ms}.
    sends: Value,
    rebroadcasts: u64,
    send_errors: Vec<Value>,
    stopped_by: Value,
    fatal: Value,
    duration_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// What the newHeads stream looked like.
#[derive(Debug)]
struct HeadsReport {
    first: u64,
    last: u64,
    /// Delivered blocks later replaced by a reorg: (number, hash).
    replaced: Vec<(u64, String)>,
}

/// Replays the delivered heads: each must extend the chain delivered so far by one block, or
/// replace its top from some height up (a reorg, new branch from the fork point). No hash
/// twice, no gap. At the end the chain must be the devnet's canonical chain from the first
/// delivered number to the last.
fn check_heads(heads: &[SeenHead], canonical: &BTreeMap<u64, String>) -> HeadsReport {
    assert!(!heads.is_empty(), "no newHeads notification arrived");
    let mut hashes = HashSet::new();
    for h in heads {
        assert!(
            hashes.insert(h.hash.to_lowercase()),
            "block hash {} (number {}) delivered twice",
            h.hash,
            h.n
        );
    }
    let first = heads[0].n;
    let mut chain: BTreeMap<u64, String> = BTreeMap::new();
    let mut replaced = Vec::new();
    for (i, h) in heads.iter().enumerate() {
        let hash = h.hash.to_lowercase();
        let parent = h.parent.to_lowercase();
        let Some((&tip, _)) = chain.last_key_value() else {
            chain.insert(h.n, hash);
            continue;
        };
        assert!(
            h.n <= tip + 1,
            "gap: head #{i} is block {} right after block {tip}",
            h.n
        );
        assert!(
            h.n >= first,
            "head #{i} (block {}) below the first delivered block {first}",
            h.n
        );
        // Its parent: the delivered block below it, or (below the first one) the canonical one.
        let below = chain
            .get(&(h.n - 1))
            .or_else(|| canonical.get(&(h.n - 1)))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            parent,
            below,
            "head #{i} (block {} {hash}) does not link to the delivered block {} below it",
            h.n,
            h.n - 1
        );
        if h.n <= tip {
            replaced.extend(chain.split_off(&h.n));
        }
        chain.insert(h.n, hash);
    }
    let last = *chain.keys().next_back().expect("non-empty");
    for n in first..=last {
        assert_eq!(
            chain.get(&n).map(String::as_str),
            canonical.get(&n).map(String::as_str),
            "block {n}: the hash the client ended with is not the canonical one"
        );
    }
    HeadsReport {
        first,
        last,
        replaced,
    }
}

/// Counts of the events check.
#[derive(Debug)]
struct EventsReport {
    canonical: usize,
    delivered: usize,
    retracted: usize,
}

/// Every canonical log delivered exactly once; every delivered log of a block that left the
/// chain retracted with `removed: true`; nothing else delivered.
fn check_events(
    summary: &Summary,
    heads: &HeadsReport,
    canonical_logs: &[SeenLog],
    canonical_blocks: &BTreeMap<u64, String>,
) -> EventsReport {
    let key = |l: &SeenLog| (l.block_hash.to_lowercase(), l.index);
    // ethers handed every non-removed raw notification to the listener, in order.
    let raw_live: Vec<_> = summary
        .raw_logs
        .iter()
        .filter(|l| !l.removed)
        .map(key)
        .collect();
    let ethers: Vec<_> = summary.logs.iter().map(key).collect();
    assert_eq!(
        ethers, raw_live,
        "the ethers listener's logs differ from the logs notifications on the socket"
    );
    let delivered_heads: HashSet<String> = summary
        .heads
        .iter()
        .map(|h| h.hash.to_lowercase())
        .collect();
    let replaced: HashSet<String> = heads.replaced.iter().map(|r| r.1.clone()).collect();
    let mut live: HashMap<(String, u64), &SeenLog> = HashMap::new();
    let mut retracted = 0;
    for l in &summary.raw_logs {
        let k = key(l);
        assert!(
            delivered_heads.contains(&k.0),
            "log {k:?} of block {} whose header was never delivered",
            l.n
        );
        if l.removed {
            assert!(
                live.remove(&k).is_some(),
                "removed log {k:?} (tx {}) was not delivered before (or retracted twice)",
                l.tx
            );
            assert!(
                replaced.contains(&k.0),
                "log {k:?} retracted but its block {} was never replaced on the newHeads stream",
                l.n
            );
            retracted += 1;
        } else {
            assert!(
                live.insert(k.clone(), l).is_none(),
                "log {k:?} (tx {}, block {}) delivered twice",
                l.tx,
                l.n
            );
        }
    }
    // What stands now must be exactly the canonical logs.
    let want: HashMap<(String, u64), &SeenLog> =
        canonical_logs.iter().map(|l| (key(l), l)).collect();
    let mut missing: Vec<_> = want
        .iter()
        .filter(|(k, _)| !live.contains_key(*k))
        .map(|(k, l)| format!("block {} {k:?} tx {}", l.n, l.tx))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {} canonical events never reached the client (first/last head {}..{}): {missing:#?}",
        missing.len(),
        want.len(),
        heads.first,
        heads.last
    );
    let mut extra: Vec<_> = live
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .map(|(k, l)| {
            format!(
                "block {} {k:?} tx {} (canonical hash of {}: {:?})",
                l.n,
                l.tx,
                l.n,
                canonical_blocks.get(&l.n)
            )
        })
        .collect();
    extra.sort();
    assert!(
        extra.is_empty(),
        "the client holds events that are not on the canonical chain (not retracted): {extra:#?}"
    );
    for (k, l) in &want {
        assert_eq!(
            live[k].tx.to_lowercase(),
            l.tx.to_lowercase(),
            "event {k:?}: tx differs"
        );
    }
    EventsReport {
        canonical: want.len(),
        delivered: summary.raw_logs.len() - retracted,
        retracted,
    }
}

// ---------------------------------------------------------------------------------------------
// ethgate helpers
// ---------------------------------------------------------------------------------------------

/// Prints ethgate's output if the test panics while this is alive.
struct DumpOnPanic<'a> {
    ethgate: &'a Gateway,
}

impl Drop for DumpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- ethgate output (pid {}) -----\n{}\n-----",
                self.ethgate.child().pid(),
                self.ethgate.log()
            );
        }
    }
}

/// Prints its text if the test panics while this is alive.
struct PrintOnPanic(String);

impl Drop for PrintOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0);
        }
    }
}

fn ethgate_config(ports: &Ports, dev: &Devnet) -> String {
    let mut upstreams = String::new();
    for i in 0..dev.len() {
        upstreams.push_str(&format!(
            "\n[[upstream]]\nname = \"anvil{i}\"\nhttp = \"{}\"\nws = \"{}\"\npriority = {i}\n",
            dev.http_url(i),
            dev.ws_url(i)
        ));
    }
    format!(
        r#"chain_id = {CHAIN_ID}

[server]
listen = "{listen}"
subscription_grace = "10s"

[admin]
listen = "{admin}"

[health]
interval = "200ms"
timeout = "150ms"
failure_threshold = 2
max_lag_blocks = 3

[log]
level = "info"
{upstreams}"#,
        listen = ports.listen,
        admin = ports.admin,
    )
}

fn selected_name(status: &Value) -> Option<String> {
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["selected"] == json!(true))
        .and_then(|u| u["name"].as_str().map(str::to_string))
}

/// The upstream that serves requests and (absent failures) subscriptions: the one `/status`
/// shows as selected, else the healthy one of the highest priority (lowest number), which is
/// what the router and the subscription feed fall back to when no sticky choice exists.
fn preferred_name(status: &Value) -> Option<String> {
    if let Some(s) = selected_name(status) {
        return Some(s);
    }
    status["upstreams"]
        .as_array()?
        .iter()
        .filter(|u| u["state"] == json!("healthy"))
        .min_by_key(|u| u["priority"].as_u64().unwrap_or(u64::MAX))
        .and_then(|u| u["name"].as_str().map(str::to_string))
}

fn upstream_state(status: &Value, name: &str) -> Option<String> {
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"].as_str() == Some(name))
        .and_then(|u| u["state"].as_str().map(str::to_string))
}

/// The upstream the subscription feed follows now according to ethgate's text log, if a line
/// says so: the last line about subscriptions that names a new source (`to="NAME"`, or
/// `upstream="NAME"` on a line that is not about losing it). Only a hint: log wording changes.
fn feed_source_hint(log: &str) -> Option<String> {
    let field = |line: &str, key: &str| {
        line.split(key)
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_string)
    };
    log.lines().rev().find_map(|l| {
        if !l.contains("subscription") {
            return None;
        }
        field(l, " to=\"").or_else(|| {
            (!l.contains("lost"))
                .then(|| field(l, " upstream=\""))
                .flatten()
        })
    })
}

fn index_of(name: &str) -> usize {
    name.trim_start_matches("anvil")
        .parse()
        .expect("upstream name anvilN")
}

/// Polls `/status` until `check` returns `Some`; panics with the last `/status` at the deadline.
async fn wait_status<T>(eg: &Gateway, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    let last = Mutex::new(Value::Null);
    let r = poll_until(what, WAIT, Duration::from_millis(50), || async {
        let st = eg.try_status().await.ok()?;
        let r = check(&st);
        *last.lock().unwrap_or_else(|e| e.into_inner()) = st;
        r
    })
    .await;
    r.unwrap_or_else(|e| {
        panic!(
            "{e}; last /status: {}",
            last.lock().unwrap_or_else(|e| e.into_inner())
        )
    })
}

/// A sample's value from ethgate's Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn hex_u64(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.trim_start_matches("0x"), 16).ok()
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// ethers v6 WebSocketProvider, subscribed to blocks and to a contract event through ethgate,
/// with a contract call every block. The selected node is killed; later another one lags and
/// comes back; then the node feeding the subscriptions diverges (a real 2-block reorg). The
/// client must see every canonical block and every event exactly once (reorg replacements
/// only as retracted and redelivered), on one WebSocket that never closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethers_ws_subscriptions_survive_kill_lag_and_reorg() {
    if !deps_present("ethers_ws_subscriptions_survive_kill_lag_and_reorg", true) {
        return;
    }
    let started = std::time::Instant::now();
    let dev = Arc::new(Devnet::start(3).await.expect("start devnet"));
    let miner = dev.spawn_miner(BLOCK_TIME);
    let ports = Ports::free();
    let config = ethgate_config(&ports, &dev);
    let eg = Gateway::spawn(
        ports,
        &config,
        &["--log-level", "ethgate=debug"],
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("ethgate did not start: {e}\nconfig:\n{config}"));
    let _dump = DumpOnPanic { ethgate: &eg };
    let http = Http::default();

    wait_status(&eg, "all upstreams healthy", |st| {
        let ups = st["upstreams"].as_array()?;
        (ups.len() == 3 && ups.iter().all(|u| u["state"] == json!("healthy"))).then_some(())
    })
    .await;

    // The client: deploys the contract, subscribes, then calls it every ~400 ms (block: 500 ms).
    let client = Client::spawn(&eg.ws_url(), Duration::from_secs(50));
    client
        .wait("the client to deploy and subscribe", WAIT, |s| {
            s.ready.is_some()
        })
        .await;
    let ready = client.with(|s| s.ready.clone()).unwrap_or_default();
    eprintln!("client ready: {ready}");
    let contract = ready["contract"]
        .as_str()
        .expect("contract address")
        .to_string();
    wait_status(&eg, "/status counting the client's subscriptions", |st| {
        let subs = &st["subscriptions"];
        (subs["newHeads"] == json!(1) && subs["logs"] == json!(1)).then_some(())
    })
    .await;
    client.wait_progress("blocks with events", 3, 2).await;

    // 1. Kill the selected node.
    let st = eg.try_status().await.expect("/status");
    let victim = preferred_name(&st).expect("a healthy upstream");
    if selected_name(&st).is_none() {
        eprintln!("note: /status shows no selected upstream; using the preferred one by priority");
    }
    let vi = index_of(&victim);
    let at_kill = client.with(|s| s.last_block).unwrap_or(0);
    eprintln!(
        "killing the selected upstream {victim} (pid {}) at client block {at_kill}",
        dev.pid(vi)
    );
    dev.kill(vi).await;
    let second = wait_status(
        &eg,
        "killed upstream unreachable, another preferred",
        |st| {
            let next = preferred_name(st)?;
            (upstream_state(st, &victim)? == "unreachable" && next != victim).then_some(next)
        },
    )
    .await;
    client
        .wait_progress("blocks and events after the kill", 4, 2)
        .await;

    // 2. Let the newly selected node lag, then bring it back.
    let li = index_of(&second);
    let at_pause = client.with(|s| s.last_block).unwrap_or(0);
    eprintln!("pausing {second} at client block {at_pause}");
    dev.pause(li).await;
    wait_status(&eg, "the paused upstream lagging", |st| {
        (upstream_state(st, &second)? == "lagging").then_some(())
    })
    .await;
    client
        .wait_progress("blocks and events while a node lags", 2, 1)
        .await;
    let replayed = dev.catch_up(li).await.expect("catch up the paused node");
    eprintln!("{second} caught up ({replayed} blocks replayed)");
    wait_status(&eg, "the caught-up upstream healthy again", |st| {
        (upstream_state(st, &second)? == "healthy").then_some(())
    })
    .await;
    client
        .wait_progress("blocks and events after the catch-up", 4, 2)
        .await;

    // 3. A real reorg: the node feeding the subscriptions builds a 2-block branch of its own,
    //    which ethgate delivers, falls behind the devnet, and is reorged back. An extra contract
    //    call (another sender) sent to that node alone just before lands in the branch, so an
    //    event is delivered, retracted with "removed": true, and delivered again once mined on
    //    the canonical chain.
    // Where the feed must be: during step 2 one node was dead and one lagging, so it moved to
    // the third, and it leaves a source only when losing it. ethgate's log, if it says, agrees.
    let third = (0..dev.len())
        .find(|&i| i != vi && i != li)
        .map(|i| format!("anvil{i}"))
        .expect("a third node");
    let hint = feed_source_hint(&eg.log());
    if hint.as_deref().is_some_and(|h| h != third) {
        eprintln!("note: ethgate's log names {hint:?} as the subscription source, not {third}");
    }
    let source = hint.clone().unwrap_or_else(|| third.clone());
    let di = index_of(&source);
    let at_diverge = client.with(|s| s.last_block).unwrap_or(0);
    dev.pause(di).await;
    let accounts = http
        .rpc(&dev.http_url(di), "eth_accounts", json!([]), RPC_TIMEOUT)
        .await
        .expect("eth_accounts");
    let extra_call = http
        .rpc(
            &dev.http_url(di),
            "eth_sendTransaction",
            json!([{"from": accounts[1], "to": contract, "gas": "0x186a0",
                    "data": format!("0x{:064x}", 0xdead)}]),
            RPC_TIMEOUT,
        )
        .await
        .expect("extra call to the node about to diverge");
    let extra_call = extra_call.as_str().unwrap_or_default().to_lowercase();
    eprintln!(
        "diverging {source} (the subscription source; log hint {hint:?}) at client block \
         {at_diverge}, with call {extra_call} in its pool"
    );
    dev.diverge(di, 2).await.expect("diverge");
    wait_status(&eg, "the diverged upstream out of rotation", |st| {
        (upstream_state(st, &source)? != "healthy").then_some(())
    })
    .await;
    // Heads only: the client's calls may sit in the paused node's pool (the router still sends
    // to it until it is marked lagging) and are mined again only after its catch-up below.
    client
        .wait_progress("blocks after the diverged source left", 3, 0)
        .await;
    let replayed = dev.catch_up(di).await.expect("catch up the diverged node");
    eprintln!("{source} reorged back ({replayed} blocks replayed)");
    wait_status(&eg, "the reorged upstream healthy again", |st| {
        (upstream_state(st, &source)? == "healthy").then_some(())
    })
    .await;
    client
        .wait_progress("blocks and events after the reorg", 3, 2)
        .await;

    // 4. Stop mining, let the client see the last block, stop the client.
    let mined = miner.stop().await;
    let height = dev.height().await;
    client
        .wait("the client at the devnet's last block", WAIT, |s| {
            s.last_block == Some(height)
        })
        .await;
    // The logs of the last block follow its header on the same socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics_live = http_get(&eg.admin_url("/metrics"), RPC_TIMEOUT)
        .await
        .expect("/metrics")
        .1;
    let summary = client.stop().await;
    let _summary_dump = PrintOnPanic(format!(
        "----- client summary -----\nblocks={:?}\nheads={:?}\nlogs={:?}\nsendErrors={:?}\n-----",
        summary.blocks, summary.heads, summary.raw_logs, summary.send_errors
    ));

    // The run itself: one socket, never closed, no errors, both subscriptions kept their ids.
    assert!(summary.fatal.is_null(), "client failed: {}", summary.fatal);
    assert_eq!(summary.stopped_by, json!("stdin"), "client stopped by");
    assert_eq!(summary.ws_opens, 1, "WebSocket opened once");
    assert!(
        summary.ws_closed.is_null(),
        "the client's WebSocket closed during the run: {}",
        summary.ws_closed
    );
    assert!(
        summary.errors.is_empty(),
        "socket/provider errors: {:?}",
        summary.errors
    );
    assert_eq!(
        summary.subscription_ids.new_heads.len(),
        1,
        "newHeads ids: {:?}",
        summary.subscription_ids.new_heads
    );
    assert_eq!(
        summary.subscription_ids.logs.len(),
        1,
        "logs ids: {:?}",
        summary.subscription_ids.logs
    );
    assert!(
        summary.subscription_ids.other.is_empty(),
        "unexpected notifications: {:?}",
        summary.subscription_ids.other
    );
    assert_eq!(
        metric(&metrics_live, "ethgate_ws_connections"),
        Some(1.0),
        "ethgate counted other WebSocket connections than the client's"
    );
    assert!(
        mined.errors.is_empty(),
        "devnet mining errors: {:?}",
        mined.errors
    );

    // Blocks: the canonical chain, each number once except reorg replacements.
    let mut canonical = BTreeMap::new();
    for n in 0..=height {
        let b = dev.block(n).await.expect("canonical block record");
        canonical.insert(n, b.hash.to_lowercase());
    }
    let heads = check_heads(&summary.heads, &canonical);
    assert_eq!(
        summary.blocks,
        summary.heads.iter().map(|h| h.n).collect::<Vec<_>>(),
        "ethers' block events are not the newHeads notifications"
    );
    assert_eq!(heads.last, height, "the client's last block");
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for n in &summary.blocks {
        *counts.entry(*n).or_default() += 1;
    }
    for (n, c) in &counts {
        let replacements = heads.replaced.iter().filter(|r| r.0 == *n).count();
        assert_eq!(
            *c,
            1 + replacements,
            "block number {n} seen {c} times with {replacements} reorg replacements"
        );
    }
    assert_eq!(
        counts.len() as u64,
        heads.last - heads.first + 1,
        "numbers {}..={} not all seen",
        heads.first,
        heads.last
    );
    assert!(
        heads.first < at_kill && at_pause < heads.last,
        "the client's blocks {}..={} do not span the faults",
        heads.first,
        heads.last
    );

    // Events: what is on chain now, through ethgate (all nodes agree once mining stopped).
    assert_eq!(summary.contract.as_deref(), Some(contract.as_str()));
    let on_chain = http
        .rpc(
            &eg.url(),
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "toBlock": format!("0x{height:x}"),
                    "address": contract, "topics": [summary.topic]}]),
            RPC_TIMEOUT,
        )
        .await
        .expect("eth_getLogs through ethgate");
    let canonical_logs: Vec<SeenLog> = on_chain
        .as_array()
        .expect("logs array")
        .iter()
        .map(|l| SeenLog {
            n: hex_u64(&l["blockNumber"]).expect("blockNumber"),
            block_hash: l["blockHash"].as_str().expect("blockHash").to_lowercase(),
            tx: l["transactionHash"].as_str().expect("tx").to_lowercase(),
            index: hex_u64(&l["logIndex"]).expect("logIndex"),
            removed: false,
        })
        .collect();
    // Cross-check with the devnet's own record: every canonical contract call is one event.
    let mut sent: HashSet<String> = summary.sent.iter().map(|t| t.hash.to_lowercase()).collect();
    sent.insert(extra_call.clone());
    let mut calls_on_chain = 0;
    for n in 0..=height {
        let b = dev.block(n).await.expect("block");
        calls_on_chain += b.tx_hashes.iter().filter(|h| sent.contains(*h)).count();
    }
    assert_eq!(
        canonical_logs.len(),
        calls_on_chain,
        "eth_getLogs through ethgate vs contract calls in the devnet's blocks"
    );
    for l in &canonical_logs {
        assert_eq!(
            canonical.get(&l.n),
            Some(&l.block_hash),
            "eth_getLogs returned a log of a non-canonical block: {l:?}"
        );
        assert!(
            l.n >= heads.first,
            "an event in block {} before the client's first block {}",
            l.n,
            heads.first
        );
    }
    assert!(
        canonical_logs.iter().any(|l| l.n > at_kill + 2)
            && canonical_logs.iter().any(|l| l.n > at_pause + 2),
        "no events after the faults"
    );
    let events = check_events(&summary, &heads, &canonical_logs, &canonical);
    // The reorg of step 3 reached the client: the branch delivered, then replaced, and the
    // extra call's event retracted (then delivered again from the canonical chain, as
    // check_events verified).
    let branch: Vec<_> = heads.replaced.iter().filter(|r| r.0 > at_diverge).collect();
    assert!(
        branch.len() >= 2,
        "the diverged branch of {source} was not delivered and replaced (was {source} the \
         subscription source? log hint {hint:?}); replaced blocks: {:?}",
        heads.replaced
    );
    assert!(
        summary
            .raw_logs
            .iter()
            .any(|l| l.removed && l.tx.to_lowercase() == extra_call),
        "the extra call's event in the diverged branch was never retracted"
    );
    assert!(
        canonical_logs.iter().any(|l| l.tx == extra_call),
        "the extra call {extra_call} never made it into the canonical chain"
    );
    let first_call = canonical_logs.iter().map(|l| l.n).min().unwrap_or(height);
    let with_event: HashSet<u64> = canonical_logs.iter().map(|l| l.n).collect();

    // ethgate followed a new source for the subscriptions at least once.
    let metrics = http_get(&eg.admin_url("/metrics"), RPC_TIMEOUT)
        .await
        .expect("/metrics")
        .1;
    let failovers = metric(&metrics, "ethgate_failovers_total{kind=\"subscription\"}")
        .expect("ethgate_failovers_total{kind=\"subscription\"} in /metrics");
    let gap_filled = metric(&metrics, "ethgate_gap_filled_blocks_total").unwrap_or(-1.0);
    let log = eg.log();
    let sources: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("subscription source"))
        .collect();
    eprintln!(
        "ws e2e: blocks {}..={} ({} block events, {} reorg replacements {:?}), events: {} canonical, \
         {} delivered, {} retracted; blocks with an event {} of {} from block {first_call}; \
         calls sent {} (rebroadcasts {}, send errors {}); \
         subscription failovers {failovers}, gap-filled blocks {gap_filled}; devnet repairs {}; \
         client ran {} ms, test {:?}\nsource changes:\n{}",
        heads.first,
        heads.last,
        summary.blocks.len(),
        heads.replaced.len(),
        heads.replaced,
        events.canonical,
        events.delivered,
        events.retracted,
        with_event.len(),
        height - first_call + 1,
        summary.sent.len(),
        summary.rebroadcasts,
        summary.send_errors.len(),
        mined.repairs,
        summary.duration_ms,
        started.elapsed(),
        sources.join("\n")
    );
    let without: Vec<u64> = (first_call..=height)
        .filter(|n| !with_event.contains(n))
        .collect();
    eprintln!("blocks without an event: {without:?} (kill at {at_kill}, pause at {at_pause})");
    if std::env::var_os("WS_E2E_DEBUG").is_some() {
        let mined_in: HashMap<&str, u64> = canonical_logs
            .iter()
            .map(|l| (l.tx.as_str(), l.n))
            .collect();
        let calls: Vec<_> = summary
            .sent
            .iter()
            .map(|t| {
                let n = mined_in.get(t.hash.to_lowercase().as_str());
                (t.nonce, t.at_block, n.copied())
            })
            .collect();
        eprintln!("----- ethgate output -----\n{log}\n-----");
        eprintln!("calls (nonce, client block when sent, mined in): {calls:?}");
        eprintln!("eth_sendRawTransaction calls: {}", summary.sends);
    }
    if !summary.send_errors.is_empty() {
        eprintln!("send errors: {:?}", summary.send_errors);
    }
    assert!(
        failovers >= 1.0,
        "ethgate_failovers_total{{kind=\"subscription\"}} = {failovers}"
    );
}

// ---------------------------------------------------------------------------------------------
// The checks themselves, on made-up streams (no devnet needed)
// ---------------------------------------------------------------------------------------------

fn head(n: u64, hash: &str, parent: &str) -> SeenHead {
    SeenHead {
        n,
        hash: hash.into(),
        parent: parent.into(),
    }
}

fn log_of(n: u64, block: &str, tx: &str, removed: bool) -> SeenLog {
    SeenLog {
        n,
        block_hash: block.into(),
        tx: tx.into(),
        index: 0,
        removed,
    }
}

fn canonical_of(list: &[(u64, &str)]) -> BTreeMap<u64, String> {
    list.iter().map(|(n, h)| (*n, h.to_string())).collect()
}

fn summary_of(heads: Vec<SeenHead>, raw_logs: Vec<SeenLog>) -> Summary {
    Summary {
        contract: None,
        topic: String::new(),
        blocks: heads.iter().map(|h| h.n).collect(),
        logs: raw_logs.iter().filter(|l| !l.removed).cloned().collect(),
        heads,
        raw_logs,
        subscription_ids: SubscriptionIds {
            new_heads: vec![],
            logs: vec![],
            other: vec![],
        },
        ws_opens: 1,
        ws_closed: Value::Null,
        errors: vec![],
        sent: vec![],
        sends: Value::Null,
        rebroadcasts: 0,
        send_errors: vec![],
        stopped_by: Value::Null,
        fatal: Value::Null,
        duration_ms: 0,
    }
}

/// A one-block reorg (block 6 replaced, its event retracted and mined again in 7) passes; the
/// same stream without the retraction, with a gap, or ending off the canonical chain fails.
#[test]
fn checks_accept_a_retracted_reorg_and_reject_gaps_and_leftovers() {
    let canonical = canonical_of(&[(4, "0xa4"), (5, "0xa5"), (6, "0xa6"), (7, "0xa7")]);
    let heads = vec![
        head(5, "0xa5", "0xa4"),
        head(6, "0xb6", "0xa5"),
        head(6, "0xa6", "0xa5"),
        head(7, "0xa7", "0xa6"),
    ];
    let logs = vec![
        log_of(6, "0xb6", "0xt1", false),
        log_of(6, "0xb6", "0xt1", true),
        log_of(7, "0xa7", "0xt1", false),
    ];
    let on_chain = vec![log_of(7, "0xa7", "0xt1", false)];
    let report = check_heads(&heads, &canonical);
    assert_eq!((report.first, report.last), (5, 7));
    assert_eq!(report.replaced, vec![(6, "0xb6".to_string())]);
    let events = check_events(
        &summary_of(heads.clone(), logs.clone()),
        &report,
        &on_chain,
        &canonical,
    );
    assert_eq!(
        (events.canonical, events.delivered, events.retracted),
        (1, 2, 1)
    );

    eprintln!("checks_accept_a_retracted_reorg_and_reject_gaps_and_leftovers: the next 4 panics are expected");
    let not_retracted = vec![logs[0].clone(), logs[2].clone()];
    let r = std::panic::catch_unwind(|| {
        check_events(
            &summary_of(heads.clone(), not_retracted),
            &report,
            &on_chain,
            &canonical,
        )
    });
    assert!(
        r.is_err(),
        "an event of a replaced block left standing must fail"
    );

    let gap = vec![head(5, "0xa5", "0xa4"), head(7, "0xa7", "0xa6")];
    assert!(std::panic::catch_unwind(|| check_heads(&gap, &canonical)).is_err());

    let off_chain = vec![head(5, "0xa5", "0xa4"), head(6, "0xb6", "0xa5")];
    assert!(std::panic::catch_unwind(|| check_heads(&off_chain, &canonical)).is_err());

    let twice = vec![
        head(5, "0xa5", "0xa4"),
        head(6, "0xa6", "0xa5"),
        head(6, "0xa6", "0xa5"),
    ];
    assert!(std::panic::catch_unwind(|| check_heads(&twice, &canonical)).is_err());
}

#[test]
fn feed_source_hint_reads_either_log_wording() {
    let old = "2026-11-25T19:34:42.867984Z  WARN ethgate::subscription::feed: subscription source lost upstream=\"anvil0\" error=x\n\
               2026-11-25T19:34:42.870657Z  INFO ethgate::subscription::feed: subscription source connected upstream=\"anvil1\" unserved_ms=2 failover=true";
    assert_eq!(feed_source_hint(old).as_deref(), Some("anvil1"));
    let new = "2026-11-25T19:52:39.495412Z  WARN ethgate::subscription::feed: subscription source lost upstream=\"anvil1\" error=connection lost: anvil1 is lagging\n\
               2026-11-25T19:52:39.497062Z  WARN ethgate::subscription::feed: subscription failover from=\"anvil1\" to=\"anvil2\" duration_ms=1 subscriptions=true\n\
               2026-11-25T19:52:39.361768Z  WARN ethgate::upstream: failover from=\"anvil1\" to=\"anvil0\" reason=\"anvil1 is lagging\"";
    assert_eq!(feed_source_hint(new).as_deref(), Some("anvil2"));
    assert_eq!(feed_source_hint("INFO ethgate: ethgate serving"), None);
}
