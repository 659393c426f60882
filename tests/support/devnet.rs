//! A lockstep anvil devnet: N anvil processes that produce the SAME chain (identical block
//! hashes), so a proxy in front of them can fail over between real nodes of one chain.
//!
//! What was verified against anvil 1.7.1 (the version `scripts/install-test-deps.sh` pins):
//!
//! * Same `--chain-id`, same `--timestamp T0`, default mnemonic/accounts, `--no-mining`, and
//!   every block mined with `evm_mine` and an explicit timestamp `[T0 + 12*n]`: the genesis and
//!   every block hash are identical across nodes, also when the nodes were started seconds apart
//!   and mine the block at different wall-clock moments. `mixHash` (prevrandao) differs per block
//!   but is derived deterministically, `baseFeePerGas` follows EIP-1559 from the parent, so no
//!   extra flag is needed for determinism. (The whole header: stateRoot, withdrawalsRoot,
//!   parentBeaconBlockRoot = 0, requestsHash, blob gas fields all agree; default hardfork.)
//! * `--port 0` works; anvil prints `Listening on 127.0.0.1:PORT` on stdout and serves HTTP and
//!   WebSocket on that one port. Without `-q` it logs every RPC method name on stdout, so its
//!   output must be drained continuously (see `process::Output`); with `-q` it prints nothing,
//!   not even the port.
//! * Pending transactions: `txpool_content` lists pending and queued txs (grouped by sender and
//!   nonce, with `hash`); `eth_getRawTransactionByHash` returns the signed raw bytes of a pending
//!   or mined tx; `eth_sendRawTransaction` imports them into another node. That is how the
//!   driver copies every node's pool to the others before each lockstep mine.
//! * Transaction ORDER within a block: anvil orders by fee (`--order fees`) and breaks ties by
//!   the order in which the node received the txs. Two txs from different senders with equal
//!   fees, received in different orders by two nodes, give two different blocks (verified: a
//!   fork). And a tx that reaches a node between the pool copy and its `evm_mine` lands in that
//!   node's block only. So the FIRST live node (the leader) mines first and its block is
//!   canonical; each follower then mines and its hash is compared. On a mismatch the driver
//!   saves the txs of the follower's block, rolls it back with `anvil_rollback [1]`, sends the
//!   canonical txs in canonical order and mines again (bounded attempts), then gives the saved
//!   non-canonical txs back to the pool. A follower can therefore show a one-block reorg when
//!   txs of several senders arrive at different nodes within one block time.
//! * Removing txs from a pool is lossy, so the driver avoids it: `anvil_dropAllTransactions`
//!   and `anvil_removePoolTransactions SENDER` also drop a tx a client sent a moment after the
//!   driver looked; `anvil_dropTransaction HASH` can also drop later nonces of the sender (seen
//!   for a ready tx) and does nothing for a queued one (nonce gap).
//! * `anvil_rollback N` (like `evm_revert`) does NOT restore the base fee of the rolled-back
//!   block: re-mined, the block gets the base fee that was computed from the dropped block and
//!   a different hash. `anvil_setNextBlockBaseFeePerGas [baseFee]` with the canonical block's
//!   base fee before re-mining gives the identical hash (verified). It also does not return the
//!   dropped block's txs to the pool, and it leaves later-nonce txs of their senders marked
//!   ready: the next `evm_mine` then discards them as invalid (verified: lost txs). So before a
//!   rollback the driver reads the raws of the block's txs, and after it reads and removes the
//!   pooled txs of those senders, and sends all of them again (in nonce order) once the
//!   canonical block is in place. The same is used by `catch_up` for a node that `diverge`d
//!   (a real reorg on that node). A stress test (txs of 6 senders sent to random nodes every
//!   few ms while mining every 40 ms) checks that no tx is lost and no node forks.
//!
//! The driver keeps every canonical block (hash, timestamp, base fee, raw txs in order), so a
//! paused node can be caught up by replaying the same blocks with the same txs and timestamps,
//! and a killed node can be revived: restarted on its old port (an empty node, like a crashed
//! one whose database was lost) and replayed from genesis.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::http::{CallError, Http};
use super::process::ChildGuard;

/// `DEVNET_DEBUG=1` traces every driver step on stderr.
fn trace_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("DEVNET_DEBUG").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if trace_on() {
            eprintln!("devnet {:?}: {}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() % 100_000, format!($($arg)*));
        }
    };
}

/// anvil's first default dev account (mnemonic "test test ... junk"), funded with 10000 ETH.
pub const DEV_ADDRESS: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
pub const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
pub const DEFAULT_CHAIN_ID: u64 = 31337;
/// Seconds between block timestamps, as on mainnet.
pub const BLOCK_SPACING: u64 = 12;

const RPC_TIMEOUT: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(20);
const REPAIR_ATTEMPTS: usize = 8;

/// Version the install script pins; printed in messages only.
pub const ANVIL_NPM_PACKAGE: &str = "@foundry-rs/anvil-linux-amd64";

/// Finds anvil: `$ANVIL`, then `anvil` on `PATH`, then the npm cache that
/// `scripts/install-test-deps.sh` fills (relative to the crate root).
pub fn find_anvil() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ANVIL") {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Some(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("anvil");
            if is_executable(&p) {
                return Some(p);
            }
        }
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/npm/node_modules")
        .join(ANVIL_NPM_PACKAGE)
        .join("bin/anvil");
    if is_executable(&p) {
        return Some(p);
    }
    None
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How to start a devnet.
#[derive(Debug, Clone)]
pub struct DevnetConfig {
    pub nodes: usize,
    pub chain_id: u64,
    /// Genesis timestamp; block n gets `t0 + spacing * n`.
    pub t0: u64,
    pub spacing: u64,
    /// Fixed ports (one per node); `None` lets anvil pick (`--port 0`).
    pub ports: Option<Vec<u16>>,
    /// Extra anvil arguments for every node.
    pub extra_args: Vec<String>,
    /// anvil binary; `None` uses [`find_anvil`].
    pub anvil: Option<PathBuf>,
}

impl DevnetConfig {
    pub fn new(nodes: usize) -> DevnetConfig {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1_700_000_000);
        DevnetConfig {
            nodes,
            chain_id: DEFAULT_CHAIN_ID,
            t0: now - now % BLOCK_SPACING,
            spacing: BLOCK_SPACING,
            ports: None,
            extra_args: Vec::new(),
            anvil: None,
        }
    }
}

/// One canonical block as the driver mined it.
#[derive(Debug, Clone)]
pub struct BlockRecord {
    pub number: u64,
    pub hash: String,
    pub timestamp: u64,
    pub base_fee: Option<String>,
    pub gas_used: u64,
    pub gas_limit: u64,
    /// Transaction hashes in block order.
    pub tx_hashes: Vec<String>,
    /// Signed raw transactions in block order.
    pub raw_txs: Vec<String>,
}

/// What `mine` reports.
#[derive(Debug, Clone)]
pub struct Mined {
    pub number: u64,
    pub hash: String,
    pub timestamp: u64,
    pub txs: usize,
    /// Nodes that got the block.
    pub nodes: Vec<usize>,
    /// Nodes found dead during this mine (killed from outside).
    pub died: Vec<usize>,
    /// Followers whose first attempt differed and were repaired by rollback.
    pub repaired: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Live,
    Paused,
    /// SIGSTOPped by `freeze`: its sockets stay open and nothing answers; not mined or read.
    Frozen,
    Dead,
}

struct Node {
    guard: ChildGuard,
    state: NodeState,
    /// Paused by a mining error (not by `pause`): `mine` catches it up again.
    auto_catch_up: bool,
}

struct Inner {
    nodes: Vec<Node>,
    /// Canonical chain, index = block number (0 = genesis).
    chain: Vec<BlockRecord>,
    /// Hashes of every canonical transaction.
    mined: HashSet<String>,
}

/// N anvils on one chain, mined in lockstep. All processes are killed when it is dropped.
pub struct Devnet {
    cfg: DevnetConfig,
    /// The anvil binary (kept to restart a killed node).
    anvil: PathBuf,
    http_urls: Vec<String>,
    ws_urls: Vec<String>,
    /// Current pid of each node (a revived node has a new one).
    pids: StdMutex<Vec<u32>>,
    http: Http,
    inner: tokio::sync::Mutex<Inner>,
    /// Hashes of blocks some node had that are not canonical (see [`Devnet::orphans`]).
    orphans: StdMutex<HashSet<String>>,
}

impl Devnet {
    /// Starts `n` nodes with defaults (chain id 31337, T0 = now rounded to 12 s).
    pub async fn start(n: usize) -> Result<Devnet, String> {
        Devnet::start_with(DevnetConfig::new(n)).await
    }

    pub async fn start_with(cfg: DevnetConfig) -> Result<Devnet, String> {
        let anvil = match cfg.anvil.clone().or_else(find_anvil) {
            Some(p) => p,
            None => {
                return Err(format!(
                    "anvil not found ($ANVIL, PATH, .cache/npm/node_modules/{ANVIL_NPM_PACKAGE}/bin/anvil); \
                     run scripts/install-test-deps.sh"
                ))
            }
        };
        if let Some(ports) = &cfg.ports {
            if ports.len() != cfg.nodes {
                return Err(format!("{} ports for {} nodes", ports.len(), cfg.nodes));
            }
        }
        let mut nodes = Vec::new();
        let mut http_urls = Vec::new();
        let mut ws_urls = Vec::new();
        let mut pids = Vec::new();
        for i in 0..cfg.nodes {
            let port = cfg.ports.as_ref().map(|p| p[i]).unwrap_or(0);
            let (guard, port) = spawn_anvil(&anvil, &cfg, i, port)?;
            http_urls.push(format!("http://127.0.0.1:{port}"));
            ws_urls.push(format!("ws://127.0.0.1:{port}"));
            pids.push(guard.pid());
            nodes.push(Node {
                guard,
                state: NodeState::Live,
                auto_catch_up: false,
            });
        }
        let dev = Devnet {
            cfg,
            anvil,
            http_urls,
            ws_urls,
            pids: StdMutex::new(pids),
            http: Http::default(),
            orphans: StdMutex::new(HashSet::new()),
            inner: tokio::sync::Mutex::new(Inner {
                nodes,
                chain: Vec::new(),
                mined: HashSet::new(),
            }),
        };
        // Genesis must agree everywhere, or the flags do not give one chain.
        let mut genesis: Option<Value> = None;
        for i in 0..dev.cfg.nodes {
            let b = dev.block_by_number(i, 0).await?;
            let chain_id = dev.call(i, "eth_chainId", json!([])).await?;
            if hex_u64(&chain_id) != Some(dev.cfg.chain_id) {
                return Err(format!("anvil{i} reports chain id {chain_id}"));
            }
            match &genesis {
                None => genesis = Some(b),
                Some(g) if g["hash"] == b["hash"] => {}
                Some(g) => {
                    return Err(format!(
                        "genesis differs: anvil0 {} vs anvil{i} {}",
                        g["hash"], b["hash"]
                    ))
                }
            }
        }
        let g = genesis.ok_or("devnet with zero nodes")?;
        dev.inner.lock().await.chain.push(BlockRecord {
            number: 0,
            hash: str_of(&g["hash"]),
            timestamp: hex_u64(&g["timestamp"]).unwrap_or(dev.cfg.t0),
            base_fee: g["baseFeePerGas"].as_str().map(str::to_string),
            gas_used: hex_u64(&g["gasUsed"]).unwrap_or(0),
            gas_limit: hex_u64(&g["gasLimit"]).unwrap_or(0),
            tx_hashes: Vec::new(),
            raw_txs: Vec::new(),
        });
        Ok(dev)
    }

    pub fn len(&self) -> usize {
        self.cfg.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.cfg.nodes == 0
    }

    pub fn chain_id(&self) -> u64 {
        self.cfg.chain_id
    }

    pub fn http_url(&self, i: usize) -> String {
        self.http_urls[i].clone()
    }

    pub fn ws_url(&self, i: usize) -> String {
        self.ws_urls[i].clone()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())[i]
    }

    /// Current state of node i (a node killed from outside shows `Dead` once noticed).
    pub async fn state(&self, i: usize) -> NodeState {
        let mut inner = self.inner.lock().await;
        refresh_dead(&mut inner, i);
        inner.nodes[i].state
    }

    /// Height of the canonical chain (the last block `mine` produced).
    pub async fn height(&self) -> u64 {
        self.inner.lock().await.chain.len() as u64 - 1
    }

    /// A canonical block record.
    pub async fn block(&self, n: u64) -> Option<BlockRecord> {
        self.inner.lock().await.chain.get(n as usize).cloned()
    }

    /// `eth_blockNumber` of node i.
    pub async fn head(&self, i: usize) -> Result<u64, String> {
        let v = self.call(i, "eth_blockNumber", json!([])).await?;
        hex_u64(&v).ok_or_else(|| format!("anvil{i}: bad eth_blockNumber {v}"))
    }

    /// Last lines anvil i printed (for failure messages).
    pub async fn log_tail(&self, i: usize, lines: usize) -> String {
        self.inner.lock().await.nodes[i]
            .guard
            .output()
            .last_lines(lines)
    }

    /// Kills node i (SIGKILL, like a crash). It is skipped from then on.
    pub async fn kill(&self, i: usize) {
        let mut inner = self.inner.lock().await;
        let node = &mut inner.nodes[i];
        node.guard.kill();
        node.state = NodeState::Dead;
    }

    /// Restarts a killed node on its old port with the same flags (a crashed node coming back
    /// with an empty database), replays the canonical chain on it (same txs and timestamps,
    /// hashes verified) and puts it back into lockstep; returns the blocks replayed. The node
    /// stays `Dead` to the miner while most of the chain is replayed without the devnet lock,
    /// so mining goes on meanwhile; the last few blocks are replayed under the lock.
    pub async fn revive(&self, i: usize) -> Result<u64, String> {
        let port: u16 = self.http_urls[i]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("anvil{i}: no port in {}", self.http_urls[i]))?;
        {
            let mut inner = self.inner.lock().await;
            refresh_dead(&mut inner, i);
            if inner.nodes[i].state != NodeState::Dead {
                return Err(format!("anvil{i} is not dead"));
            }
            // The old port may linger for a moment after SIGKILL: retry the bind briefly.
            let mut last = String::new();
            let mut spawned = None;
            for _ in 0..20 {
                match spawn_anvil(&self.anvil, &self.cfg, i, port) {
                    Ok(g) => {
                        spawned = Some(g);
                        break;
                    }
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let (guard, _) = spawned.ok_or(last)?;
            self.pids.lock().unwrap_or_else(|e| e.into_inner())[i] = guard.pid();
            // Still `Dead` for `mine` and `sync_pools` until the replay below is done.
            inner.nodes[i].guard = guard;
            let genesis = self.block_by_number(i, 0).await?;
            if str_of(&genesis["hash"]) != inner.chain[0].hash {
                return Err(format!("anvil{i}: genesis differs after the restart"));
            }
        }
        let mut replayed = 0;
        loop {
            let height = self.height().await;
            let head = self.head(i).await?;
            if height <= head + 2 {
                break;
            }
            for n in head + 1..=height {
                let rec = self.block(n).await.ok_or("block record missing")?;
                self.apply_block(i, &rec, false).await?;
                replayed += 1;
            }
        }
        let mut inner = self.inner.lock().await;
        if !inner.nodes[i].guard.is_running() {
            return Err(format!("anvil{i} exited during its replay"));
        }
        inner.nodes[i].state = NodeState::Paused;
        Ok(replayed + self.catch_up_locked(&mut inner, i).await?)
    }

    /// Stops mining node i: it keeps serving but falls behind.
    pub async fn pause(&self, i: usize) {
        let mut inner = self.inner.lock().await;
        if !matches!(inner.nodes[i].state, NodeState::Dead | NodeState::Frozen) {
            inner.nodes[i].state = NodeState::Paused;
            inner.nodes[i].auto_catch_up = false;
        }
    }

    /// Freezes node i with SIGSTOP, as a GC pause or a stalled disk would: connections stay
    /// open, nothing is answered. The driver stops mining it and reading its pool.
    pub async fn freeze(&self, i: usize) -> Result<(), String> {
        let mut inner = self.inner.lock().await;
        let node = &mut inner.nodes[i];
        if node.state == NodeState::Dead {
            return Err(format!("anvil{i} is dead"));
        }
        node.guard
            .signal(19)
            .map_err(|e| format!("SIGSTOP anvil{i}: {e}"))?;
        node.state = NodeState::Frozen;
        Ok(())
    }

    /// Resumes a frozen node with SIGCONT; the next `mine` replays the blocks it missed.
    pub async fn thaw(&self, i: usize) -> Result<(), String> {
        let mut inner = self.inner.lock().await;
        let node = &mut inner.nodes[i];
        if node.state != NodeState::Frozen {
            return Err(format!("anvil{i} is not frozen"));
        }
        node.guard
            .signal(18)
            .map_err(|e| format!("SIGCONT anvil{i}: {e}"))?;
        node.state = NodeState::Paused;
        node.auto_catch_up = true;
        Ok(())
    }

    /// Pauses node i and mines `blocks` blocks on it alone with timestamps 1 s off the canonical
    /// ones, so it builds a competing branch. `catch_up(i)` then reorgs it back (real reorg).
    pub async fn diverge(&self, i: usize, blocks: u64) -> Result<(), String> {
        {
            let mut inner = self.inner.lock().await;
            refresh_dead(&mut inner, i);
            if inner.nodes[i].state == NodeState::Dead {
                return Err(format!("anvil{i} is dead"));
            }
            inner.nodes[i].state = NodeState::Paused;
            inner.nodes[i].auto_catch_up = false;
        }
        let head = self.head(i).await?;
        for k in 1..=blocks {
            let ts = self.cfg.t0 + self.cfg.spacing * (head + k) + 1;
            self.call(i, "evm_mine", json!([ts])).await?;
            let b = self.block_by_number(i, head + k).await?;
            self.orphan(&str_of(&b["hash"]));
        }
        Ok(())
    }

    /// Hashes of every block that was on some node but is not canonical: the blocks of
    /// `diverge` branches, and follower blocks that came out different and were rolled back
    /// by the repair of `mine`/`catch_up` (a one-block reorg on that node, which a client
    /// reading the node at that moment may have seen).
    pub fn orphans(&self) -> HashSet<String> {
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn orphan(&self, hash: &str) {
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_lowercase());
    }

    /// Brings a paused (or diverged) node back onto the canonical chain: rolls back any block
    /// that is not canonical, replays the missed blocks with the same txs and timestamps,
    /// verifies each hash, and puts the node back into lockstep.
    pub async fn catch_up(&self, i: usize) -> Result<u64, String> {
        let mut inner = self.inner.lock().await;
        self.catch_up_locked(&mut inner, i).await
    }

    async fn catch_up_locked(&self, inner: &mut Inner, i: usize) -> Result<u64, String> {
        refresh_dead(inner, i);
        match inner.nodes[i].state {
            NodeState::Dead => return Err(format!("anvil{i} is dead")),
            NodeState::Frozen => return Err(format!("anvil{i} is frozen")),
            _ => {}
        }
        let head = self.head(i).await?;
        let height = inner.chain.len() as u64 - 1;
        // Common ancestor: walk down from min(head, height) until hashes agree.
        let mut n = head.min(height);
        loop {
            let b = self.block_by_number(i, n).await?;
            if str_of(&b["hash"]) == inner.chain[n as usize].hash {
                break;
            }
            if n == 0 {
                return Err(format!("anvil{i}: genesis differs from the devnet's"));
            }
            n -= 1;
        }
        // Roll back the node's own branch (saving its txs), replay the canonical blocks.
        let mut saved = Vec::new();
        if head > n {
            let mut rolled = Vec::new();
            for m in (n + 1)..=head {
                rolled.extend(self.block_txs(i, m).await?.1);
            }
            saved = self.rollback(i, head - n, &rolled).await?;
            // After a rollback the next base fee must be put back explicitly (also when no
            // canonical block is replayed now and the node mines the next one in lockstep).
            if let Some(fee) = next_base_fee(&inner.chain[n as usize]) {
                self.call(
                    i,
                    "anvil_setNextBlockBaseFeePerGas",
                    json!([format!("0x{fee:x}")]),
                )
                .await?;
            }
        }
        for m in (n + 1)..=height {
            let rec = inner.chain[m as usize].clone();
            self.apply_block(i, &rec, false).await?;
        }
        inner.nodes[i].state = NodeState::Live;
        inner.nodes[i].auto_catch_up = false;
        saved.retain(|t| !inner.mined.contains(&t.hash));
        self.resend(i, saved).await?;
        Ok(height - n)
    }

    /// Mines the next block on every live node in lockstep and verifies the hashes agree.
    pub async fn mine(&self) -> Result<Mined, String> {
        let mut inner = self.inner.lock().await;
        let mut died = Vec::new();
        for i in 0..inner.nodes.len() {
            if refresh_dead(&mut inner, i) {
                died.push(i);
            }
        }
        // 0. A follower that fell out of lockstep by an error gets replayed back in.
        for i in 0..inner.nodes.len() {
            if inner.nodes[i].state == NodeState::Paused && inner.nodes[i].auto_catch_up {
                if let Err(e) = self.catch_up_locked(&mut inner, i).await {
                    eprintln!("devnet: anvil{i}: catch up failed: {e}");
                }
            }
        }
        // 1. Copy every node's pending txs to every live node.
        self.sync_pools(&mut inner, &mut died).await;
        let number = inner.chain.len() as u64;
        let ts = self.cfg.t0 + self.cfg.spacing * number;
        // 2. The first live node is the leader: its block is canonical.
        let mut leader = None;
        for i in 0..inner.nodes.len() {
            if inner.nodes[i].state != NodeState::Live {
                continue;
            }
            match self.mine_leader(i, number, ts).await {
                Ok(rec) => {
                    leader = Some((i, rec));
                    break;
                }
                Err(e) => {
                    if refresh_dead(&mut inner, i) {
                        died.push(i);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        let (leader, rec) = leader.ok_or("no live node to mine")?;
        trace!("anvil{leader} leads block {number}: {:?}", rec.tx_hashes);
        for h in &rec.tx_hashes {
            inner.mined.insert(h.clone());
        }
        inner.chain.push(rec.clone());
        // 3. Followers get exactly the leader's block.
        let mut nodes = vec![leader];
        let mut repaired = Vec::new();
        let mut errors = Vec::new();
        for i in 0..inner.nodes.len() {
            if i == leader || inner.nodes[i].state != NodeState::Live {
                continue;
            }
            match self.apply_block(i, &rec, false).await {
                Ok(r) => {
                    nodes.push(i);
                    if r {
                        repaired.push(i);
                    }
                }
                Err(e) => {
                    if refresh_dead(&mut inner, i) {
                        died.push(i);
                    } else {
                        // Keep the devnet going: this node is out of lockstep until the next
                        // mine replays the missing blocks on it.
                        inner.nodes[i].state = NodeState::Paused;
                        inner.nodes[i].auto_catch_up = true;
                        errors.push(format!(
                            "anvil{i}: {e} (out of lockstep; catching up next block)"
                        ));
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(format!("block {number}: {}", errors.join("; ")));
        }
        Ok(Mined {
            number,
            hash: rec.hash,
            timestamp: ts,
            txs: rec.tx_hashes.len(),
            nodes,
            died,
            repaired,
        })
    }

    /// Mines a block every `every` in a background task until the returned handle is stopped
    /// or dropped. A mine in progress is never cancelled half-way (that would leave the nodes
    /// out of lockstep): stopping takes effect between two blocks.
    pub fn spawn_miner(self: &Arc<Self>, every: Duration) -> Miner {
        let dev = Arc::clone(self);
        let log = Arc::new(StdMutex::new(MinerLog::default()));
        let log2 = Arc::clone(&log);
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                if *stop_rx.borrow() {
                    break;
                }
                let r = dev.mine().await;
                let mut l = log2.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(m) => {
                        l.blocks += 1;
                        l.last = Some(m.number);
                        l.repairs += m.repaired.len();
                        l.died.extend(m.died);
                    }
                    Err(e) => {
                        eprintln!("devnet miner: {e}");
                        l.errors.push(e);
                    }
                }
            }
        });
        Miner {
            task: Some(task),
            stop: stop_tx,
            log,
        }
    }

    // --- internals ------------------------------------------------------------------------

    async fn call(&self, i: usize, method: &str, params: Value) -> Result<Value, String> {
        self.http
            .rpc(&self.http_urls[i], method, params, RPC_TIMEOUT)
            .await
            .map_err(|e| format!("anvil{i} {method}: {e}"))
    }

    /// `eth_sendRawTransaction`, where a JSON-RPC error (already imported, nonce too low after a
    /// race, ...) is fine: what counts is the block hash checked after mining. Transport errors
    /// are returned.
    async fn send_raw(&self, i: usize, raw: &str) -> Result<(), String> {
        let r = self
            .http
            .rpc(
                &self.http_urls[i],
                "eth_sendRawTransaction",
                json!([raw]),
                RPC_TIMEOUT,
            )
            .await;
        trace!("anvil{i} send -> {r:?}");
        match r {
            Ok(_) | Err(CallError::Rpc(_)) => Ok(()),
            Err(e) => Err(format!("anvil{i} eth_sendRawTransaction: {e}")),
        }
    }

    /// A call whose JSON-RPC error is fine (the block hash check after mining is what counts);
    /// transport errors are returned.
    async fn lenient(&self, i: usize, method: &str, params: Value) -> Result<(), String> {
        match self
            .http
            .rpc(&self.http_urls[i], method, params, RPC_TIMEOUT)
            .await
        {
            Ok(_) | Err(CallError::Rpc(_)) => Ok(()),
            Err(e) => Err(format!("anvil{i} {method}: {e}")),
        }
    }

    async fn block_by_number(&self, i: usize, n: u64) -> Result<Value, String> {
        let b = self
            .call(
                i,
                "eth_getBlockByNumber",
                json!([format!("0x{n:x}"), false]),
            )
            .await?;
        if b.is_null() {
            return Err(format!("anvil{i}: no block {n}"));
        }
        Ok(b)
    }

    /// Pending and queued txs of node i: (hash, sender, nonce).
    async fn pending(&self, i: usize) -> Result<Vec<(String, String, u64)>, String> {
        let v = self.call(i, "txpool_content", json!([])).await?;
        let mut out = Vec::new();
        for section in ["pending", "queued"] {
            if let Some(by_sender) = v[section].as_object() {
                for (sender, by_nonce) in by_sender {
                    if let Some(by_nonce) = by_nonce.as_object() {
                        for (nonce, tx) in by_nonce {
                            if let Some(h) = tx["hash"].as_str() {
                                out.push((
                                    h.to_lowercase(),
                                    sender.to_lowercase(),
                                    nonce.parse().unwrap_or(0),
                                ));
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn raw_tx(&self, i: usize, hash: &str) -> Result<String, String> {
        let v = self
            .call(i, "eth_getRawTransactionByHash", json!([hash]))
            .await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("anvil{i}: no raw tx for {hash}"))
    }

    /// Block n of node i: its hash and its txs (hash, sender, nonce; raw not yet fetched).
    async fn block_txs(&self, i: usize, n: u64) -> Result<(String, Vec<PoolTx>), String> {
        let b = self
            .call(i, "eth_getBlockByNumber", json!([format!("0x{n:x}"), true]))
            .await?;
        if b.is_null() {
            return Err(format!("anvil{i}: no block {n}"));
        }
        let txs = b["transactions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| PoolTx {
                hash: str_of(&t["hash"]).to_lowercase(),
                sender: str_of(&t["from"]).to_lowercase(),
                nonce: hex_u64(&t["nonce"]).unwrap_or(0),
                raw: String::new(),
            })
            .collect();
        Ok((str_of(&b["hash"]), txs))
    }

    /// `anvil_rollback depth` without losing transactions. anvil neither returns the txs of the
    /// dropped blocks to the pool nor re-checks the pooled txs of their senders: such a tx
    /// (say nonce 6 after nonce 5 was rolled back) stays "ready", and the next `evm_mine`
    /// discards it as invalid (verified). So the raws of the rolled-back txs are read first,
    /// and after the rollback the raws of the pooled txs of those senders; all of them are
    /// returned, to be sent again (in nonce order) once the canonical block is in place (a tx
    /// still pooled then just answers "already imported"). Nothing is removed from the pool: a
    /// tx that a client sends meanwhile is never lost (a late one is judged against the rolled
    /// back state and queued correctly, verified).
    async fn rollback(
        &self,
        i: usize,
        depth: u64,
        rolled: &[PoolTx],
    ) -> Result<Vec<PoolTx>, String> {
        let mut saved = Vec::new();
        for t in rolled {
            saved.push(PoolTx {
                raw: self.raw_tx(i, &t.hash).await?,
                ..t.clone()
            });
        }
        self.call(i, "anvil_rollback", json!([depth])).await?;
        trace!("anvil{i} rollback {depth}");
        let senders: HashSet<&String> = rolled.iter().map(|t| &t.sender).collect();
        if !senders.is_empty() {
            for (h, sender, nonce) in self.pending(i).await? {
                if senders.contains(&sender) {
                    if let Ok(raw) = self.raw_tx(i, &h).await {
                        saved.push(PoolTx {
                            hash: h,
                            sender,
                            nonce,
                            raw,
                        });
                    }
                }
            }
            trace!(
                "anvil{i} saved {:?}",
                saved.iter().map(|t| (&t.hash, t.nonce)).collect::<Vec<_>>()
            );
        }
        Ok(saved)
    }

    /// Sends txs again, each sender's in nonce order (duplicates and rejections are fine).
    async fn resend(&self, i: usize, mut txs: Vec<PoolTx>) -> Result<(), String> {
        txs.sort_by(|a, b| (&a.sender, a.nonce).cmp(&(&b.sender, b.nonce)));
        txs.dedup_by(|a, b| a.hash == b.hash);
        for t in txs {
            trace!("anvil{i} resend {} nonce {}", t.hash, t.nonce);
            self.send_raw(i, &t.raw).await?;
        }
        Ok(())
    }

    /// Copies every not-yet-mined pending tx of every non-dead node to every live node.
    async fn sync_pools(&self, inner: &mut Inner, died: &mut Vec<usize>) {
        let mut pools: HashMap<usize, HashSet<String>> = HashMap::new();
        // hash -> (sender, nonce, source node)
        let mut all: HashMap<String, (String, u64, usize)> = HashMap::new();
        for i in 0..inner.nodes.len() {
            if matches!(inner.nodes[i].state, NodeState::Dead | NodeState::Frozen) {
                continue;
            }
            match self.pending(i).await {
                Ok(p) => {
                    trace!(
                        "anvil{i} pool {:?}",
                        p.iter().map(|t| (&t.0[..10], t.2)).collect::<Vec<_>>()
                    );
                    let mut set = HashSet::new();
                    for (h, s, n) in p {
                        set.insert(h.clone());
                        all.entry(h).or_insert((s, n, i));
                    }
                    pools.insert(i, set);
                }
                Err(e) => {
                    if refresh_dead(inner, i) {
                        died.push(i);
                    } else {
                        eprintln!("devnet: {e}");
                    }
                }
            }
        }
        let mut txs: Vec<(String, (String, u64, usize))> = all
            .into_iter()
            .filter(|(h, _)| !inner.mined.contains(h))
            .collect();
        if txs.is_empty() {
            return;
        }
        txs.sort_by(|a, b| (&a.1 .0, a.1 .1).cmp(&(&b.1 .0, b.1 .1)));
        let mut raws: HashMap<String, String> = HashMap::new();
        for (h, (_, _, src)) in &txs {
            if let Ok(raw) = self.raw_tx(*src, h).await {
                raws.insert(h.clone(), raw);
            }
        }
        for i in 0..inner.nodes.len() {
            if inner.nodes[i].state != NodeState::Live {
                continue;
            }
            let have = pools.get(&i).cloned().unwrap_or_default();
            for (h, _) in &txs {
                if have.contains(h) {
                    continue;
                }
                if let Some(raw) = raws.get(h) {
                    trace!("anvil{i} sync {h}");
                    if let Err(e) = self.send_raw(i, raw).await {
                        eprintln!("devnet: {e}");
                    }
                }
            }
        }
    }

    async fn mine_leader(&self, i: usize, number: u64, ts: u64) -> Result<BlockRecord, String> {
        self.call(i, "evm_mine", json!([ts])).await?;
        let b = self.block_by_number(i, number).await?;
        if hex_u64(&b["timestamp"]) != Some(ts) {
            return Err(format!(
                "anvil{i}: block {number} has timestamp {} instead of {ts}",
                b["timestamp"]
            ));
        }
        let mut tx_hashes = Vec::new();
        let mut raw_txs = Vec::new();
        for h in b["transactions"].as_array().cloned().unwrap_or_default() {
            let h = str_of(&h).to_lowercase();
            raw_txs.push(self.raw_tx(i, &h).await?);
            tx_hashes.push(h);
        }
        Ok(BlockRecord {
            number,
            hash: str_of(&b["hash"]),
            timestamp: ts,
            base_fee: b["baseFeePerGas"].as_str().map(str::to_string),
            gas_used: hex_u64(&b["gasUsed"]).unwrap_or(0),
            gas_limit: hex_u64(&b["gasLimit"]).unwrap_or(0),
            tx_hashes,
            raw_txs,
        })
    }

    /// Mines `rec` on node i (whose head must be `rec.number - 1` on the canonical chain) and
    /// checks the hash. The node's pool is left alone in the common case; if the block comes
    /// out different (other txs, other order), it is rolled back without losing txs (see
    /// [`Devnet::rollback`]), the canonical txs are sent in canonical order and the block is
    /// mined again. Txs taken out on the way go back into the pool at the end. Returns whether
    /// a rollback was needed.
    async fn apply_block(
        &self,
        i: usize,
        rec: &BlockRecord,
        force_fee: bool,
    ) -> Result<bool, String> {
        let want: HashSet<&String> = rec.tx_hashes.iter().collect();
        let mut force_fee = force_fee;
        let mut saved: Vec<PoolTx> = Vec::new();
        let mut last_hash = String::new();
        // Canonical txs the node lacks (e.g. one that reached the leader after the pool sync).
        let have: HashSet<String> = self.pending(i).await?.into_iter().map(|p| p.0).collect();
        for (h, raw) in rec.tx_hashes.iter().zip(&rec.raw_txs) {
            if !have.contains(h) {
                self.send_raw(i, raw).await?;
            }
        }
        for attempt in 0..REPAIR_ATTEMPTS {
            if force_fee {
                if let Some(fee) = &rec.base_fee {
                    self.call(i, "anvil_setNextBlockBaseFeePerGas", json!([fee]))
                        .await?;
                }
            }
            trace!("anvil{i} mine {}", rec.number);
            self.call(i, "evm_mine", json!([rec.timestamp])).await?;
            let (hash, got) = self.block_txs(i, rec.number).await?;
            last_hash = hash;
            if last_hash == rec.hash {
                saved.retain(|t| !want.contains(&t.hash));
                self.resend(i, saved).await?;
                return Ok(attempt > 0);
            }
            self.orphan(&last_hash);
            trace!(
                "anvil{i} block {} attempt {attempt}: got {:?} want {:?}",
                rec.number,
                got.iter().map(|t| &t.hash).collect::<Vec<_>>(),
                rec.tx_hashes
            );
            saved.extend(self.rollback(i, 1, &got).await?);
            // anvil_rollback keeps the base fee computed from the dropped block: put it back.
            force_fee = true;
            // The canonical txs in canonical order; the next attempt mines them (plus any tx
            // that was pooled but not includable before, or arrived meanwhile).
            for raw in &rec.raw_txs {
                self.send_raw(i, raw).await?;
            }
        }
        // Give back what was taken out; the node stays one block behind until caught up.
        saved.retain(|t| !want.contains(&t.hash));
        let _ = self.resend(i, saved).await;
        Err(format!(
            "block {} still differs after {REPAIR_ATTEMPTS} attempts: {last_hash} vs canonical {}",
            rec.number, rec.hash
        ))
    }
}

/// Starts anvil node `i` on `port` (0: anvil picks) with the devnet's flags; returns the guard
/// and the port anvil reports.
fn spawn_anvil(
    anvil: &Path,
    cfg: &DevnetConfig,
    i: usize,
    port: u16,
) -> Result<(ChildGuard, u16), String> {
    let mut cmd = Command::new(anvil);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--chain-id", &cfg.chain_id.to_string()])
        .args(["--timestamp", &cfg.t0.to_string()])
        .arg("--no-mining")
        .args(["--color", "never"])
        .args(&cfg.extra_args);
    let mut guard = ChildGuard::spawn(&format!("anvil{i}"), &mut cmd)
        .map_err(|e| format!("spawn {}: {e}", anvil.display()))?;
    let line = guard
        .output()
        .wait_for_line(|l| l.contains("Listening on 127.0.0.1:"), START_TIMEOUT);
    match line.as_deref().and_then(|l| l.rsplit(':').next()) {
        Some(p) => {
            let port = p
                .trim()
                .parse()
                .map_err(|e| format!("anvil{i}: bad port in {line:?}: {e}"))?;
            Ok((guard, port))
        }
        None => {
            let status = guard.try_wait();
            Err(format!(
                "anvil{i} did not report its port within {START_TIMEOUT:?} (exit: {status:?}); output:\n{}",
                guard.output().text()
            ))
        }
    }
}

/// A transaction as the driver tracks it.
#[derive(Debug, Clone)]
struct PoolTx {
    hash: String,
    sender: String,
    nonce: u64,
    raw: String,
}

/// Marks node i dead if its process has exited; returns true if it just died.
fn refresh_dead(inner: &mut Inner, i: usize) -> bool {
    let node = &mut inner.nodes[i];
    if node.state != NodeState::Dead && !node.guard.is_running() {
        node.state = NodeState::Dead;
        return true;
    }
    false
}

/// Statistics of a background miner.
#[derive(Debug, Default, Clone)]
pub struct MinerLog {
    /// Blocks mined.
    pub blocks: u64,
    /// Number of the last block mined.
    pub last: Option<u64>,
    /// Follower blocks that needed a rollback repair.
    pub repairs: usize,
    /// Nodes found dead (killed from outside the driver).
    pub died: Vec<usize>,
    pub errors: Vec<String>,
}

/// Handle of [`Devnet::spawn_miner`]; stops mining (after the current block) when dropped.
pub struct Miner {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    log: Arc<StdMutex<MinerLog>>,
}

impl Miner {
    pub fn log(&self) -> MinerLog {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops mining, waits (bounded) for the block in progress, and returns the statistics.
    pub async fn stop(mut self) -> MinerLog {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        self.log()
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// EIP-1559 base fee of the block after `parent` (elasticity 2, change denominator 8), which
/// is what anvil computes (verified against its blocks: -12.5 % per empty block).
fn next_base_fee(parent: &BlockRecord) -> Option<u128> {
    let base =
        u128::from_str_radix(parent.base_fee.as_deref()?.trim_start_matches("0x"), 16).ok()?;
    let target = u128::from(parent.gas_limit / 2);
    let used = u128::from(parent.gas_used);
    if target == 0 {
        return Some(base);
    }
    Some(if used == target {
        base
    } else if used > target {
        base + (base * (used - target) / target / 8).max(1)
    } else {
        base - base * (target - used) / target / 8
    })
}

fn hex_u64(v: &Value) -> Option<u64> {
    let s = v.as_str()?;
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}
