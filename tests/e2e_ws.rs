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
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use support::chainlink::hex_u64;
use support::devnet::{Devnet, Miner, MinerLog};
use support::e2e::{deps_present, devnet_upstreams, feed_source_hint, DumpOnPanic, PrintOnPanic};
use support::gateway::{preferred_name, selected_name, upstream_state, Gateway, Ports};
use support::http::{http_get, Http};
use support::prometheus::sample;
use support::ws_checks::{check_events, check_heads, EventsReport, HeadsReport};
use support::ws_watch::{Client, SeenHead, SeenLog, SubscriptionIds, Summary, CLIENT_WAIT};

const CHAIN_ID: u64 = 31337;
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Block time of the devnet.
const BLOCK_TIME: Duration = Duration::from_millis(500);
/// Upper bound of any single wait on the client or on ethgate's `/status`.
const WAIT: Duration = CLIENT_WAIT;

// ---------------------------------------------------------------------------------------------
// The scenario's ethgate
// ---------------------------------------------------------------------------------------------

fn ethgate_config(ports: &Ports, dev: &Devnet) -> String {
    let upstreams = devnet_upstreams(dev);
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
fn index_of(name: &str) -> usize {
    name.trim_start_matches("anvil")
        .parse()
        .expect("upstream name anvilN")
}

/// Polls ethgate's `/status` until `check` returns `Some` (at most `WAIT`).
async fn wait_status<T>(eg: &Gateway, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    eg.poll_status(what, WAIT, check).await
}

// ---------------------------------------------------------------------------------------------
// The scenario, phase by phase
// ---------------------------------------------------------------------------------------------

/// The devnet, ethgate in front of it, and the ethers client subscribed through ethgate.
struct Scenario {
    dev: Arc<Devnet>,
    eg: Gateway,
    client: Client,
    http: Http,
    /// The client's event contract and its event's topic.
    contract: String,
    topic: String,
}

/// Client block numbers when each fault began.
struct Faults {
    at_kill: u64,
    at_pause: u64,
    at_diverge: u64,
    /// The upstream that diverged, and what ethgate's log said the feed followed.
    source: String,
    hint: Option<String>,
    /// The contract call mined only in the diverged branch, then on the canonical chain.
    extra_call: String,
}

/// What the run left behind once mining stopped.
struct Finished {
    height: u64,
    mined: MinerLog,
    metrics_live: String,
    summary: Summary,
}

impl Scenario {
    /// Starts the devnet and ethgate, waits for all upstreams healthy, starts the client and
    /// waits until it deployed its contract, subscribed, and saw blocks with events.
    async fn start() -> (Scenario, Miner) {
        let dev = Arc::new(Devnet::start(3).await.expect("start devnet"));
        let miner = dev.spawn_miner(BLOCK_TIME);
        let ports = Ports::free();
        let config = ethgate_config(&ports, &dev);
        let args = ["--log-level", "ethgate=debug"];
        let eg = Gateway::spawn(ports, &config, &args, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("ethgate did not start: {e}\nconfig:\n{config}"));
        wait_status(&eg, "all upstreams healthy", |st| {
            let ups = st["upstreams"].as_array()?;
            (ups.len() == 3 && ups.iter().all(|u| u["state"] == json!("healthy"))).then_some(())
        })
        .await;
        // The client deploys the contract, subscribes, then calls it every ~400 ms (block: 500 ms).
        let client = Client::spawn(&eg.ws_url(), Duration::from_secs(50));
        client
            .wait("the client to deploy and subscribe", WAIT, |s| {
                s.ready.is_some()
            })
            .await;
        let ready = client.with(|s| s.ready.clone()).unwrap_or_default();
        eprintln!("client ready: {ready}");
        let contract = ready["contract"].as_str().expect("contract address");
        let topic = ready["topic"].as_str().expect("event topic");
        wait_status(&eg, "/status counting the client's subscriptions", |st| {
            let subs = &st["subscriptions"];
            (subs["newHeads"] == json!(1) && subs["logs"] == json!(1)).then_some(())
        })
        .await;
        client.wait_progress("blocks with events", 3, 2).await;
        let scenario = Scenario {
            contract: contract.to_string(),
            topic: topic.to_string(),
            dev,
            eg,
            client,
            http: Http::default(),
        };
        (scenario, miner)
    }

    fn client_block(&self) -> u64 {
        self.client.with(|s| s.last_block).unwrap_or(0)
    }

    /// 1. Kills the selected node; returns (its index, client block then, the next preferred).
    async fn kill_selected(&self) -> (usize, u64, String) {
        let st = self.eg.try_status().await.expect("/status");
        let victim = preferred_name(&st).expect("a healthy upstream");
        if selected_name(&st).is_none() {
            eprintln!(
                "note: /status shows no selected upstream; using the preferred one by priority"
            );
        }
        let vi = index_of(&victim);
        let at_kill = self.client_block();
        eprintln!(
            "killing the selected upstream {victim} (pid {}) at client block {at_kill}",
            self.dev.pid(vi)
        );
        self.dev.kill(vi).await;
        let second = wait_status(
            &self.eg,
            "killed upstream unreachable, another preferred",
            |st| {
                let next = preferred_name(st)?;
                (upstream_state(st, &victim)? == "unreachable" && next != victim).then_some(next)
            },
        )
        .await;
        self.client
            .wait_progress("blocks and events after the kill", 4, 2)
            .await;
        (vi, at_kill, second)
    }

    /// 2. Lets `name` lag, then brings it back; returns (its index, client block at the pause).
    async fn lag_and_catch_up(&self, name: &str) -> (usize, u64) {
        let li = index_of(name);
        let at_pause = self.client_block();
        eprintln!("pausing {name} at client block {at_pause}");
        self.dev.pause(li).await;
        wait_status(&self.eg, "the paused upstream lagging", |st| {
            (upstream_state(st, name)? == "lagging").then_some(())
        })
        .await;
        self.client
            .wait_progress("blocks and events while a node lags", 2, 1)
            .await;
        let replayed = self
            .dev
            .catch_up(li)
            .await
            .expect("catch up the paused node");
        eprintln!("{name} caught up ({replayed} blocks replayed)");
        wait_status(&self.eg, "the caught-up upstream healthy again", |st| {
            (upstream_state(st, name)? == "healthy").then_some(())
        })
        .await;
        self.client
            .wait_progress("blocks and events after the catch-up", 4, 2)
            .await;
        (li, at_pause)
    }

    /// The node feeding the subscriptions after steps 1 and 2: one node was dead and one
    /// lagging, so the feed moved to the third, and it leaves a source only when losing it.
    /// ethgate's log, if it says, agrees. Returns (source, log hint).
    fn feed_source(&self, dead: usize, lagged: usize) -> (String, Option<String>) {
        let third = (0..self.dev.len())
            .find(|&i| i != dead && i != lagged)
            .map(|i| format!("anvil{i}"))
            .expect("a third node");
        let hint = feed_source_hint(&self.eg.log());
        if hint.as_deref().is_some_and(|h| h != third) {
            eprintln!("note: ethgate's log names {hint:?} as the subscription source, not {third}");
        }
        (hint.clone().unwrap_or(third), hint)
    }

    /// Sends a contract call (from another sender) to node `di` alone; returns its hash.
    async fn call_on_node(&self, di: usize) -> String {
        let url = self.dev.http_url(di);
        let accounts = self
            .http
            .rpc(&url, "eth_accounts", json!([]), RPC_TIMEOUT)
            .await
            .expect("eth_accounts");
        let tx = json!([{"from": accounts[1], "to": self.contract, "gas": "0x186a0",
                         "data": format!("0x{:064x}", 0xdead)}]);
        let hash = self
            .http
            .rpc(&url, "eth_sendTransaction", tx, RPC_TIMEOUT)
            .await
            .expect("extra call to the node about to diverge");
        hash.as_str().unwrap_or_default().to_lowercase()
    }

    /// 3. A real reorg: the node feeding the subscriptions builds a 2-block branch of its own,
    ///    which ethgate delivers, falls behind the devnet, and is reorged back. An extra contract
    ///    call sent to that node alone just before lands in the branch, so an event is
    ///    delivered, retracted with "removed": true, and delivered again once mined on the
    ///    canonical chain.
    async fn reorg_the_feed_source(
        &self,
        dead: usize,
        lagged: usize,
    ) -> (u64, String, Option<String>, String) {
        let (source, hint) = self.feed_source(dead, lagged);
        let di = index_of(&source);
        let at_diverge = self.client_block();
        self.dev.pause(di).await;
        let extra_call = self.call_on_node(di).await;
        eprintln!(
            "diverging {source} (the subscription source; log hint {hint:?}) at client block \
             {at_diverge}, with call {extra_call} in its pool"
        );
        self.dev.diverge(di, 2).await.expect("diverge");
        wait_status(&self.eg, "the diverged upstream out of rotation", |st| {
            (upstream_state(st, &source)? != "healthy").then_some(())
        })
        .await;
        // Heads only: the client's calls may sit in the paused node's pool (the router still
        // sends to it until it is marked lagging) and are mined again only after its catch-up.
        self.client
            .wait_progress("blocks after the diverged source left", 3, 0)
            .await;
        let replayed = self
            .dev
            .catch_up(di)
            .await
            .expect("catch up the diverged node");
        eprintln!("{source} reorged back ({replayed} blocks replayed)");
        wait_status(&self.eg, "the reorged upstream healthy again", |st| {
            (upstream_state(st, &source)? == "healthy").then_some(())
        })
        .await;
        self.client
            .wait_progress("blocks and events after the reorg", 3, 2)
            .await;
        (at_diverge, source, hint, extra_call)
    }

    /// Runs the three faults in turn.
    async fn run_faults(&self) -> Faults {
        let (vi, at_kill, second) = self.kill_selected().await;
        let (li, at_pause) = self.lag_and_catch_up(&second).await;
        let (at_diverge, source, hint, extra_call) = self.reorg_the_feed_source(vi, li).await;
        Faults {
            at_kill,
            at_pause,
            at_diverge,
            source,
            hint,
            extra_call,
        }
    }

    /// 4. Stops mining, waits until the client saw the last block and every canonical event,
    ///    samples `/metrics` while the client is still connected, and stops the client.
    async fn finish(&mut self, miner: Miner) -> Finished {
        let mined = miner.stop().await;
        let height = self.dev.height().await;
        self.client
            .wait("the client at the devnet's last block", WAIT, |s| {
                s.last_block == Some(height)
            })
            .await;
        // The logs of the last block follow its header on the same socket: wait for each.
        let on_chain = self.canonical_logs(&self.topic, height).await;
        self.client
            .wait("every canonical event delivered", WAIT, |s| {
                on_chain
                    .iter()
                    .all(|l| s.delivered.contains(&(l.tx.clone(), l.block_hash.clone())))
            })
            .await;
        let metrics_live = http_get(&self.eg.admin_url("/metrics"), RPC_TIMEOUT)
            .await
            .expect("/metrics")
            .1;
        let summary = self.client.stop().await;
        Finished {
            height,
            mined,
            metrics_live,
            summary,
        }
    }

    /// The contract's logs of `topic` on the canonical chain up to `height`, through ethgate
    /// (all nodes agree once mining stopped).
    async fn canonical_logs(&self, topic: &str, height: u64) -> Vec<SeenLog> {
        let filter = json!([{"fromBlock": "0x0", "toBlock": format!("0x{height:x}"),
                             "address": self.contract, "topics": [topic]}]);
        let on_chain = self
            .http
            .rpc(&self.eg.url(), "eth_getLogs", filter, RPC_TIMEOUT)
            .await
            .expect("eth_getLogs through ethgate");
        on_chain
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
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// What the run must show
// ---------------------------------------------------------------------------------------------

/// One socket, never closed, no errors, both subscriptions kept their ids, no stray connection,
/// no mining error.
fn assert_run_clean(f: &Finished) {
    let summary = &f.summary;
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
    let ids = &summary.subscription_ids;
    assert_eq!(ids.new_heads.len(), 1, "newHeads ids: {:?}", ids.new_heads);
    assert_eq!(ids.logs.len(), 1, "logs ids: {:?}", ids.logs);
    assert!(
        ids.other.is_empty(),
        "unexpected notifications: {:?}",
        ids.other
    );
    assert_eq!(
        sample(&f.metrics_live, "ethgate_ws_connections"),
        Some(1.0),
        "ethgate counted other WebSocket connections than the client's"
    );
    assert!(
        f.mined.errors.is_empty(),
        "devnet mining errors: {:?}",
        f.mined.errors
    );
}

/// Blocks: the canonical chain, each number once except reorg replacements, spanning the
/// faults. Returns the report and the canonical chain (number -> hash).
async fn check_blocks(
    dev: &Devnet,
    f: &Finished,
    faults: &Faults,
) -> (HeadsReport, BTreeMap<u64, String>) {
    let summary = &f.summary;
    let mut canonical = BTreeMap::new();
    for n in 0..=f.height {
        let b = dev.block(n).await.expect("canonical block record");
        canonical.insert(n, b.hash.to_lowercase());
    }
    let heads = check_heads(&summary.heads, &canonical);
    assert_eq!(
        summary.blocks,
        summary.heads.iter().map(|h| h.n).collect::<Vec<_>>(),
        "ethers' block events are not the newHeads notifications"
    );
    assert_eq!(heads.last, f.height, "the client's last block");
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
        heads.first < faults.at_kill && faults.at_pause < heads.last,
        "the client's blocks {}..={} do not span the faults",
        heads.first,
        heads.last
    );
    (heads, canonical)
}

/// Events: every contract call on the canonical chain is one event, each delivered exactly
/// once, some after each fault. Returns the canonical logs and the events report.
async fn check_events_on_chain(
    s: &Scenario,
    f: &Finished,
    faults: &Faults,
    heads: &HeadsReport,
    canonical: &BTreeMap<u64, String>,
) -> (Vec<SeenLog>, EventsReport) {
    let summary = &f.summary;
    assert_eq!(summary.contract.as_deref(), Some(s.contract.as_str()));
    let canonical_logs = s.canonical_logs(&summary.topic, f.height).await;
    // Cross-check with the devnet's own record: every canonical contract call is one event.
    let mut sent: HashSet<String> = summary.sent.iter().map(|t| t.hash.to_lowercase()).collect();
    sent.insert(faults.extra_call.clone());
    let mut calls_on_chain = 0;
    for n in 0..=f.height {
        let b = s.dev.block(n).await.expect("block");
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
        canonical_logs.iter().any(|l| l.n > faults.at_kill + 2)
            && canonical_logs.iter().any(|l| l.n > faults.at_pause + 2),
        "no events after the faults"
    );
    let events = check_events(summary, heads, &canonical_logs, canonical);
    (canonical_logs, events)
}

/// The reorg of step 3 reached the client: the branch delivered, then replaced, and the extra
/// call's event retracted (then delivered again from the canonical chain, as check_events
/// verified).
fn assert_reorg_reached_the_client(
    f: &Finished,
    faults: &Faults,
    heads: &HeadsReport,
    canonical_logs: &[SeenLog],
) {
    let (source, hint, extra_call) = (&faults.source, &faults.hint, &faults.extra_call);
    let branch: Vec<_> = heads
        .replaced
        .iter()
        .filter(|r| r.0 > faults.at_diverge)
        .collect();
    assert!(
        branch.len() >= 2,
        "the diverged branch of {source} was not delivered and replaced (was {source} the \
         subscription source? log hint {hint:?}); replaced blocks: {:?}",
        heads.replaced
    );
    assert!(
        f.summary
            .raw_logs
            .iter()
            .any(|l| l.removed && l.tx.to_lowercase() == *extra_call),
        "the extra call's event in the diverged branch was never retracted"
    );
    assert!(
        canonical_logs.iter().any(|l| l.tx == *extra_call),
        "the extra call {extra_call} never made it into the canonical chain"
    );
}

/// What the checks found.
struct Checked {
    heads: HeadsReport,
    events: EventsReport,
    canonical_logs: Vec<SeenLog>,
}

/// Prints what the run looked like (and, with `WS_E2E_DEBUG`, ethgate's output and the calls).
fn report(
    s: &Scenario,
    f: &Finished,
    faults: &Faults,
    checked: &Checked,
    subscription_metrics: (f64, f64),
    started: std::time::Instant,
) {
    let summary = &f.summary;
    let Checked {
        heads,
        events,
        canonical_logs,
    } = checked;
    let (failovers, gap_filled) = subscription_metrics;
    let first_call = canonical_logs.iter().map(|l| l.n).min().unwrap_or(f.height);
    let with_event: HashSet<u64> = canonical_logs.iter().map(|l| l.n).collect();
    let log = s.eg.log();
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
        f.height - first_call + 1,
        summary.sent.len(),
        summary.rebroadcasts,
        summary.send_errors.len(),
        f.mined.repairs,
        summary.duration_ms,
        started.elapsed(),
        sources.join("\n")
    );
    let without: Vec<u64> = (first_call..=f.height)
        .filter(|n| !with_event.contains(n))
        .collect();
    eprintln!(
        "blocks without an event: {without:?} (kill at {}, pause at {})",
        faults.at_kill, faults.at_pause
    );
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
    let (mut s, miner) = Scenario::start().await;
    let faults = {
        let _dump = DumpOnPanic(&s.eg);
        s.run_faults().await
    };
    let f = s.finish(miner).await;
    let _dump = DumpOnPanic(&s.eg);
    let _summary_dump = PrintOnPanic(format!(
        "----- client summary -----\nblocks={:?}\nheads={:?}\nlogs={:?}\nsendErrors={:?}\n-----",
        f.summary.blocks, f.summary.heads, f.summary.raw_logs, f.summary.send_errors
    ));
    assert_run_clean(&f);
    let (heads, canonical) = check_blocks(&s.dev, &f, &faults).await;
    let (canonical_logs, events) = check_events_on_chain(&s, &f, &faults, &heads, &canonical).await;
    assert_reorg_reached_the_client(&f, &faults, &heads, &canonical_logs);

    // ethgate followed a new source for the subscriptions at least once.
    let metrics = http_get(&s.eg.admin_url("/metrics"), RPC_TIMEOUT)
        .await
        .expect("/metrics")
        .1;
    let failovers = sample(&metrics, "ethgate_failovers_total{kind=\"subscription\"}")
        .expect("ethgate_failovers_total{kind=\"subscription\"} in /metrics");
    let gap_filled = sample(&metrics, "ethgate_gap_filled_blocks_total").unwrap_or(-1.0);
    let counters = (failovers, gap_filled);
    let checked = Checked {
        heads,
        events,
        canonical_logs,
    };
    report(&s, &f, &faults, &checked, counters, started);
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
