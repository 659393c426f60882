//! The ethers v6 WebSocketProvider client of the end-to-end tests (`tests/js/ws_watch.mjs`):
//! spawned against ethgate, its stdout parsed as it arrives (blocks, logs, readiness, the final
//! summary), with waits on its progress.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::e2e::spawn_js;
use super::http::poll_until;

/// Upper bound of one wait on the client's progress (blocks come every 500 ms or so).
pub const CLIENT_WAIT: Duration = Duration::from_secs(15);

/// What the client printed so far.
#[derive(Default)]
pub struct ClientState {
    pub ready: Option<Value>,
    /// Highest block number of an ethers "block" event.
    pub last_block: Option<u64>,
    /// "block" events so far.
    pub blocks: usize,
    /// Logs delivered to the filter listener, as of the last "block" event.
    pub logs: u64,
    /// (transaction, block hash) of every log delivered and not retracted, lower-cased.
    pub delivered: HashSet<(String, String)>,
    pub summary: Option<Value>,
    /// Lines that were not JSON, and stderr.
    pub other: Vec<String>,
    pub exited: bool,
}

/// `node ws_watch.mjs WS_URL`, killed on drop; stdout parsed as it arrives.
pub struct Client {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    state: Arc<Mutex<ClientState>>,
}

impl Client {
    /// Starts the client against `url`; it stops by itself after `max_run`.
    pub fn spawn(url: &str, max_run: Duration) -> Client {
        let max_ms = max_run.as_millis().to_string();
        let mut child = spawn_js("ws_watch.mjs", &[url, "--max-ms", &max_ms]);
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
                        Some("log") => {
                            let key = |k: &str| v[k].as_str().unwrap_or_default().to_lowercase();
                            let log = (key("tx"), key("blockHash"));
                            if v["removed"] == true {
                                s.delivered.remove(&log);
                            } else {
                                s.delivered.insert(log);
                            }
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

    /// Reads the client's state.
    pub fn with<T>(&self, f: impl FnOnce(&ClientState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until `check` holds on the client's state; panics with `what` at the deadline or
    /// if the client exits first.
    pub async fn wait(&self, what: &str, timeout: Duration, check: impl Fn(&ClientState) -> bool) {
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
    pub async fn wait_progress(&self, what: &str, blocks: u64, logs: u64) {
        let (b0, l0) = self.with(|s| (s.last_block.unwrap_or(0), s.logs));
        self.wait(what, CLIENT_WAIT, |s| {
            s.last_block.unwrap_or(0) >= b0 + blocks && s.logs >= l0 + logs
        })
        .await;
    }

    /// Asks the client to stop and returns its summary.
    pub async fn stop(&mut self) -> Summary {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n").await;
            let _ = stdin.flush().await;
        }
        self.wait("the client's summary", CLIENT_WAIT, |s| s.summary.is_some())
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let v = self.with(|s| s.summary.clone()).unwrap_or_default();
        serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("client summary does not parse ({e}): {v}"))
    }

    /// What the client printed besides its events, and its summary.
    pub fn output(&self) -> String {
        self.with(|s| {
            let mut o = s.other.join("\n");
            if let Some(sum) = &s.summary {
                o.push_str(&format!("\nsummary: {sum}"));
            }
            o
        })
    }
}

/// A newHeads notification as the client saw it.
#[derive(Debug, Deserialize, Clone)]
pub struct SeenHead {
    pub n: u64,
    pub hash: String,
    pub parent: String,
}

/// A log as the client saw it (or as eth_getLogs lists it).
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SeenLog {
    pub n: u64,
    pub block_hash: String,
    pub tx: String,
    pub index: u64,
    #[serde(default)]
    pub removed: bool,
}

/// The subscription ids notifications arrived for, by kind.
#[derive(Debug, Deserialize)]
pub struct SubscriptionIds {
    #[serde(rename = "newHeads")]
    pub new_heads: Vec<String>,
    pub logs: Vec<String>,
    pub other: Vec<String>,
}

/// A contract call the client sent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentTx {
    pub hash: String,
    pub nonce: u64,
    pub at_block: u64,
}

/// What the client reports when it stops.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub contract: Option<String>,
    pub topic: String,
    pub blocks: Vec<u64>,
    pub logs: Vec<SeenLog>,
    pub heads: Vec<SeenHead>,
    pub raw_logs: Vec<SeenLog>,
    pub subscription_ids: SubscriptionIds,
    pub ws_opens: u64,
    pub ws_closed: Value,
    pub errors: Vec<Value>,
    pub sent: Vec<SentTx>,
    /// Every eth_sendRawTransaction: {nonce, rebroadcast, atBlock, atMs, ms}.
    pub sends: Value,
    pub rebroadcasts: u64,
    pub send_errors: Vec<Value>,
    pub stopped_by: Value,
    pub fatal: Value,
    pub duration_ms: u64,
}
