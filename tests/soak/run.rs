//! The soak's driver: a lockstep devnet of three anvils behind ethgate (each node's WebSocket
//! through a cuttable relay), three subscribers, and the schedule's events applied one by one,
//! each followed by a wait until every subscriber has seen new heads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::chain::{self, Pump};
use super::clients::{now_ms, Client, Seen};
use super::poison;
use super::schedule::{Step, Target};
use crate::support::devnet::{Devnet, Miner, NodeState};
use crate::support::e2e::feed_source_hint;
use crate::support::gateway::{Gateway, Ports};
use crate::support::http::{poll_until, Http};
use crate::support::relay::Relay;

/// Nodes of the devnet.
pub const NODES: usize = 3;
/// Bound of every wait for clients to make progress after an event (generous: a loaded
/// 2-core box, a revive replaying hundreds of blocks).
const PROGRESS_WAIT: Duration = Duration::from_secs(120);
/// New heads every client must see after an event before the next one.
const PROGRESS_BLOCKS: u64 = 2;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub events: usize,
    /// Event kinds left out of the schedule.
    pub skip: Vec<String>,
    pub block_time: Duration,
}

/// What one event did.
#[derive(Debug, Clone)]
pub struct Done {
    pub step: Step,
    /// The node it hit, and whether that node was feeding the subscriptions.
    pub node: Option<usize>,
    pub was_source: bool,
    /// When the fault was applied (ms since the epoch).
    pub t0: u64,
    pub note: String,
    /// Blocks of a diverged branch (reorg events).
    pub branch: Vec<String>,
}

/// The running bench.
pub struct Soak {
    pub settings: Settings,
    pub dev: Arc<Devnet>,
    pub relays: Vec<Relay>,
    pub eg: Gateway,
    pub http: Http,
    pub accounts: Vec<String>,
    pub contracts: [String; 2],
    pub clients: Vec<Client>,
    pub miner: Option<Miner>,
    pub pump: Option<Pump>,
    /// First block that can hold a client-visible event.
    pub from: u64,
    /// Contract calls the pump sent, and those that failed (a node dying under them).
    pub calls: (u64, u64),
    /// Contract violations found on the way (the poisonous subscribes' answers).
    pub violations: Vec<String>,
}

fn config(ports: &Ports, dev: &Devnet, relays: &[Relay]) -> String {
    let mut upstreams = String::new();
    for (i, relay) in relays.iter().enumerate() {
        upstreams.push_str(&format!(
            "\n[[upstream]]\nname = \"anvil{i}\"\nhttp = \"{}\"\nws = \"{}\"\npriority = {i}\n",
            dev.http_url(i),
            relay.ws_url()
        ));
    }
    format!(
        "chain_id = {}\n\n[server]\nlisten = \"{}\"\nsubscription_grace = \"30s\"\n\n\
         [admin]\nlisten = \"{}\"\n\n[health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         failure_threshold = 2\nmax_lag_blocks = 3\n\n[log]\nlevel = \"info\"\n{upstreams}",
        dev.chain_id(),
        ports.listen,
        ports.admin
    )
}

impl Soak {
    /// Starts the devnet, relays, ethgate, contracts and clients.
    pub async fn start(settings: Settings) -> Soak {
        let dev = Arc::new(Devnet::start(NODES).await.expect("start devnet"));
        let mut relays = Vec::new();
        for i in 0..NODES {
            let port = dev
                .ws_url(i)
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok());
            relays.push(
                Relay::start(port.expect("anvil port"))
                    .await
                    .expect("relay"),
            );
        }
        let miner = dev.spawn_miner(settings.block_time);
        let ports = Ports::free();
        let cfg = config(&ports, &dev, &relays);
        // SOAK_ETHGATE_LOG=ethgate=debug (say) to see the feed's every step.
        let level = std::env::var("SOAK_ETHGATE_LOG").unwrap_or_else(|_| "info".into());
        let eg = Gateway::spawn(
            ports,
            &cfg,
            &["--log-level", &level],
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("ethgate did not start: {e}\n{cfg}"));
        let http = Http::default();
        let accounts: Vec<String> = http
            .rpc(
                &dev.http_url(0),
                "eth_accounts",
                json!([]),
                Duration::from_secs(5),
            )
            .await
            .expect("eth_accounts")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        assert!(accounts.len() >= 6, "anvil's dev accounts: {accounts:?}");
        let (a, b) = chain::deploy_two(&dev, &http, &accounts[5])
            .await
            .expect("deploy the contracts");
        let mut soak = Soak {
            settings,
            dev,
            relays,
            eg,
            http,
            accounts,
            contracts: [a, b],
            clients: Vec::new(),
            miner: Some(miner),
            pump: None,
            from: 0,
            calls: (0, 0),
            violations: Vec::new(),
        };
        soak.start_clients().await;
        soak
    }

    async fn start_clients(&mut self) {
        let filters = chain::filters(&self.contracts[0], &self.contracts[1]);
        let pick = |names: &[&str]| -> Vec<(String, Value)> {
            filters
                .iter()
                .filter(|(n, _)| names.contains(&n.as_str()))
                .cloned()
                .collect()
        };
        let url = self.eg.ws_url();
        self.clients.push(Client::spawn_ethers(
            "ethers1",
            &url,
            pick(&["all_a", "a_kind1", "any_kind2or3"]),
        ));
        self.clients.push(Client::spawn_ethers(
            "ethers2",
            &url,
            pick(&["b_tick", "ab_kind3", "a_kind1"]),
        ));
        let raw = Client::connect_raw("raw", &url, filters.clone()).await;
        self.clients.push(raw.expect("raw client"));
        for c in &self.clients {
            let r = poll_until(
                &c.name,
                Duration::from_secs(60),
                Duration::from_millis(50),
                || async { c.with(|r| (r.ready || r.exited).then_some(r.ready)) },
            )
            .await;
            assert!(
                r == Ok(true),
                "client {} not ready: {r:?}; errors {:?}",
                c.name,
                c.with(|r| r.errors.clone())
            );
        }
        self.from = self.dev.height().await + 1;
        let senders = self.accounts[1..=NODES].to_vec();
        self.pump = Some(Pump::start(
            Arc::clone(&self.dev),
            senders,
            self.contracts.clone(),
            self.settings.seed,
            self.settings.block_time / 2,
        ));
    }

    /// Waits until every client's last head is at least `target`; fails at once when a client
    /// closes or exits.
    pub async fn wait_clients(&self, what: &str, target: u64) -> Result<(), String> {
        let r = poll_until(what, PROGRESS_WAIT, Duration::from_millis(50), || async {
            let mut all = true;
            for c in &self.clients {
                let (head, gone) = c.with(|r| {
                    let gone = r.closed.clone().or(r.exited.then(|| "exited".to_string()));
                    (r.last_head.as_ref().map_or(0, |h| h.0), gone)
                });
                if let Some(g) = gone {
                    return Some(Err(format!("client {} closed ({g}) during {what}", c.name)));
                }
                all &= head >= target;
            }
            all.then_some(Ok(()))
        })
        .await;
        match r {
            Ok(r) => r,
            Err(e) => {
                let heads: Vec<_> = self
                    .clients
                    .iter()
                    .map(|c| (c.name.clone(), c.with(|r| r.last_head.clone())))
                    .collect();
                Err(format!(
                    "{e} (target block {target}; clients' last heads {heads:?})"
                ))
            }
        }
    }

    /// The node feeding the subscriptions, as ethgate's log names it (the last subscription
    /// failover or source line), else the upstream `/status` shows as selected.
    pub async fn feed_source(&self) -> Option<usize> {
        let from_log = feed_source_hint(&self.eg.log());
        let name = match from_log {
            Some(n) => Some(n),
            None => self.eg.selected_upstream().await.ok().flatten(),
        };
        name.and_then(|n| n.trim_start_matches("anvil").parse().ok())
    }

    async fn nodes_in(&self, state: NodeState) -> Vec<usize> {
        let mut out = Vec::new();
        for i in 0..NODES {
            if self.dev.state(i).await == state {
                out.push(i);
            }
        }
        out
    }

    /// A live node for `target`, and whether it is the feed source.
    async fn resolve(&self, target: Target) -> Option<(usize, bool)> {
        let live = self.nodes_in(NodeState::Live).await;
        if live.is_empty() {
            return None;
        }
        let source = self.feed_source().await;
        let (r, want_source) = match target {
            Target::Source(r) => (r, true),
            Target::Any(r) => (r, false),
        };
        let node = match source {
            Some(s) if want_source && live.contains(&s) => s,
            _ => live[(r % live.len() as u64) as usize],
        };
        Some((node, source == Some(node)))
    }

    /// Applies one event and waits until every client has seen new heads after it.
    pub async fn apply(&mut self, step: Step) -> Result<Done, String> {
        let mut done = Done {
            step,
            node: None,
            was_source: false,
            t0: now_ms(),
            note: String::new(),
            branch: Vec::new(),
        };
        let mut hostile = None;
        match step {
            Step::Kill(t) | Step::Lag(t) => {
                let (i, src) = self.resolve(t).await.ok_or("no live node")?;
                (done.node, done.was_source, done.t0) = (Some(i), src, now_ms());
                if matches!(step, Step::Kill(_)) {
                    self.dev.kill(i).await;
                } else {
                    self.dev.pause(i).await;
                }
            }
            Step::Revive(r) | Step::CatchUp(r) => {
                let revive = matches!(step, Step::Revive(_));
                let want = if revive {
                    NodeState::Dead
                } else {
                    NodeState::Paused
                };
                let nodes = self.nodes_in(want).await;
                if nodes.is_empty() {
                    done.note = format!("skipped: no node {want:?}");
                } else {
                    let i = nodes[(r % nodes.len() as u64) as usize];
                    done.node = Some(i);
                    let n = if revive {
                        self.dev.revive(i).await
                    } else {
                        self.dev.catch_up(i).await
                    };
                    done.note = format!(
                        "{} blocks replayed",
                        n.map_err(|e| format!("anvil{i}: {e}"))?
                    );
                }
            }
            Step::Reorg { depth } => self.reorg(depth, &mut done).await?,
            Step::DropWs { target, refuse_ms } => {
                let (i, src) = self.resolve(target).await.ok_or("no live node")?;
                (done.node, done.was_source, done.t0) = (Some(i), src, now_ms());
                self.relays[i].cut(Duration::from_millis(refuse_ms));
            }
            Step::Poison(kind) => {
                let out = poison::send(kind, &self.eg.ws_url()).await;
                done.note = out.note;
                if let Some(v) = out.violation {
                    self.violations.push(v);
                }
                hostile = Some(out.socket);
            }
            Step::Quiet { blocks } => {
                let h = self.dev.height().await;
                self.wait_clients("a quiet spell", h + blocks).await?;
            }
        }
        let target = self.dev.height().await + PROGRESS_BLOCKS;
        let r = self
            .wait_clients(&format!("new heads after {step:?}"), target)
            .await;
        if let Some(s) = hostile {
            s.close().await;
        }
        r.map(|()| done)
    }

    /// The feeding node builds its own branch of `depth` blocks holding an extra event, the
    /// devnet moves on without it, then it is reorged back onto the canonical chain.
    async fn reorg(&mut self, depth: u64, done: &mut Done) -> Result<(), String> {
        let (i, src) = self
            .resolve(Target::Source(0))
            .await
            .ok_or("no live node")?;
        (done.node, done.was_source, done.t0) = (Some(i), src, now_ms());
        self.dev.pause(i).await;
        let extra = chain::call_on(
            &self.http,
            &self.dev,
            i,
            &self.accounts[4],
            &self.contracts[(depth % 2) as usize],
            1 + depth % 3,
        )
        .await
        .map_err(|e| format!("the reorg's extra call on anvil{i}: {e}"))?;
        let base = self.dev.head(i).await?;
        self.dev.diverge(i, depth).await?;
        for n in base + 1..=base + depth {
            let b = self
                .http
                .rpc(
                    &self.dev.http_url(i),
                    "eth_getBlockByNumber",
                    json!([format!("0x{n:x}"), false]),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| e.to_string())?;
            done.branch
                .push(b["hash"].as_str().unwrap_or_default().to_lowercase());
        }
        done.note = format!("anvil{i} diverged from block {base}, extra call {extra}");
        // The canonical chain must overtake the branch at every client before the node is
        // reorged back (else the node's own reorg would be all the clients see).
        self.wait_clients("the canonical chain past the branch", base + depth + 1)
            .await?;
        self.dev
            .catch_up(i)
            .await
            .map_err(|e| format!("catch up anvil{i}: {e}"))?;
        Ok(())
    }

    /// Milliseconds from `t0` to each client's first head newer than what it had at `t0`.
    pub fn first_head_after(&self, t0: u64) -> Vec<u64> {
        self.clients
            .iter()
            .filter_map(|c| {
                c.with(|r| {
                    let before = r
                        .seen
                        .iter()
                        .filter_map(|s| match s {
                            Seen::Head { n, t, .. } if *t <= t0 => Some(*n),
                            _ => None,
                        })
                        .max()
                        .unwrap_or(0);
                    r.seen.iter().find_map(|s| match s {
                        Seen::Head { n, t, .. } if *t > t0 && *n > before => Some(t - t0),
                        _ => None,
                    })
                })
            })
            .collect()
    }

    /// Brings every node back, lets the last calls be mined, stops mining, and waits until
    /// every client has the final head. Returns the final height.
    pub async fn finish(&mut self) -> Result<u64, String> {
        if let Some(p) = self.pump.take() {
            self.calls = p.stop().await;
        }
        for i in self.nodes_in(NodeState::Dead).await {
            self.dev
                .revive(i)
                .await
                .map_err(|e| format!("final revive anvil{i}: {e}"))?;
        }
        for i in self.nodes_in(NodeState::Paused).await {
            self.dev
                .catch_up(i)
                .await
                .map_err(|e| format!("final catch up anvil{i}: {e}"))?;
        }
        // Calls still pooled are mined within a few blocks; the last blocks carry none.
        let h = self.dev.height().await;
        poll_until(
            "the last blocks",
            PROGRESS_WAIT,
            Duration::from_millis(50),
            || async { (self.dev.height().await >= h + 3).then_some(()) },
        )
        .await?;
        if let Some(m) = self.miner.take() {
            let log = m.stop().await;
            if !log.errors.is_empty() {
                self.violations
                    .push(format!("devnet mining errors: {:?}", log.errors));
            }
        }
        let last = self.dev.height().await;
        self.wait_clients("the final head", last).await?;
        Ok(last)
    }

    /// The canonical hash of every block, and the canonical logs of each filter in
    /// `from..=to` (read from node 0, which holds the canonical chain once all are caught up).
    pub async fn canonical(
        &self,
        to: u64,
    ) -> Result<
        (
            BTreeMap<u64, String>,
            BTreeMap<String, Vec<super::check::LogId>>,
        ),
        String,
    > {
        let mut blocks = BTreeMap::new();
        for n in 0..=to {
            let b = self.dev.block(n).await.ok_or("missing block record")?;
            blocks.insert(n, b.hash.to_lowercase());
        }
        let mut logs = BTreeMap::new();
        for (name, filter) in chain::filters(&self.contracts[0], &self.contracts[1]) {
            let mut q = filter.clone();
            q["fromBlock"] = json!(format!("0x{:x}", self.from));
            q["toBlock"] = json!(format!("0x{to:x}"));
            let got = self
                .http
                .rpc(
                    &self.dev.http_url(0),
                    "eth_getLogs",
                    json!([q]),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| format!("eth_getLogs {name}: {e}"))?;
            let hex = |v: &Value| {
                u64::from_str_radix(v.as_str().unwrap_or("").trim_start_matches("0x"), 16)
                    .unwrap_or(0)
            };
            let list: Vec<_> = got
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|l| super::check::LogId {
                    n: hex(&l["blockNumber"]),
                    i: hex(&l["logIndex"]),
                    hash: l["blockHash"].as_str().unwrap_or_default().to_lowercase(),
                    tx: l["transactionHash"]
                        .as_str()
                        .unwrap_or_default()
                        .to_lowercase(),
                })
                .collect();
            logs.insert(name, list);
        }
        Ok((blocks, logs))
    }
}
