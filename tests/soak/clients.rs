//! The soak's subscribers: ethers v6 clients (`tests/js/soak_client.mjs`, a child process
//! each) and a raw WebSocket client in Rust. Both record every notification in socket order,
//! with its arrival time, into the same [`Record`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

use crate::support::e2e::spawn_js;

/// Milliseconds since the epoch (the JS clients stamp arrivals the same way).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One notification as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Head {
        n: u64,
        hash: String,
        parent: String,
        t: u64,
    },
    Log {
        sub: String,
        n: u64,
        hash: String,
        tx: String,
        i: u64,
        removed: bool,
        t: u64,
    },
    /// A notification for a subscription id the client never got.
    Unknown(String),
}

/// Everything a client saw.
#[derive(Debug, Default)]
pub struct Record {
    pub seen: Vec<Seen>,
    /// Number and hash of the last newHeads notification.
    pub last_head: Option<(u64, String)>,
    /// Subscription ids by name ("newHeads" or the filter's name).
    pub subs: BTreeMap<String, String>,
    pub ready: bool,
    /// How the socket closed before the stop, if it did.
    pub closed: Option<String>,
    pub errors: Vec<String>,
    /// The process or task ended.
    pub exited: bool,
    /// The ethers client's summary (what ethers handed to the application).
    pub summary: Option<Value>,
}

impl Record {
    fn push(&mut self, seen: Seen) {
        if let Seen::Head { n, hash, .. } = &seen {
            self.last_head = Some((*n, hash.clone()));
        }
        self.seen.push(seen);
    }
}

/// A subscriber of either kind.
pub struct Client {
    pub name: String,
    /// The filters it holds: (name, filter object).
    pub filters: Vec<(String, Value)>,
    pub record: Arc<Mutex<Record>>,
    stop: Stopper,
}

enum Stopper {
    Ethers {
        child: Box<tokio::process::Child>,
        stdin: Option<tokio::process::ChildStdin>,
    },
    Raw(Option<tokio::sync::oneshot::Sender<()>>),
}

impl Client {
    /// Reads the record.
    pub fn with<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&self.record.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `node soak_client.mjs URL --filters JSON`, killed on drop.
    pub fn spawn_ethers(name: &str, url: &str, filters: Vec<(String, Value)>) -> Client {
        let list: Vec<Value> = filters
            .iter()
            .map(|(n, f)| json!({"name": n, "filter": f}))
            .collect();
        let list = Value::Array(list).to_string();
        let mut child = spawn_js("soak_client.mjs", &[url, "--filters", &list]);
        let record = Arc::new(Mutex::new(Record::default()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let rec = Arc::clone(&record);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => on_ethers_line(&mut r, v),
                    Err(_) => r.errors.push(format!("stdout: {line}")),
                }
            }
            rec.lock().unwrap_or_else(|e| e.into_inner()).exited = true;
        });
        let rec = Arc::clone(&record);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
                r.errors.push(format!("stderr: {line}"));
            }
        });
        let stdin = child.stdin.take();
        Client {
            name: name.to_string(),
            filters,
            record,
            stop: Stopper::Ethers {
                child: Box::new(child),
                stdin,
            },
        }
    }

    /// A raw tokio-tungstenite client: subscribes newHeads and each filter, one at a time, then
    /// records every frame until stopped.
    pub async fn connect_raw(
        name: &str,
        url: &str,
        filters: Vec<(String, Value)>,
    ) -> Result<Client, String> {
        let (mut socket, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| format!("{name}: connect timed out"))?
        .map_err(|e| format!("{name}: connect: {e}"))?;
        let record = Arc::new(Mutex::new(Record::default()));
        let mut wanted = vec![("newHeads".to_string(), json!(["newHeads"]))];
        for (n, f) in &filters {
            wanted.push((n.clone(), json!(["logs", f])));
        }
        for (id, (sub, params)) in wanted.iter().enumerate() {
            let call =
                json!({"jsonrpc": "2.0", "id": id, "method": "eth_subscribe", "params": params});
            socket
                .send(Message::text(call.to_string()))
                .await
                .map_err(|e| format!("{name}: send: {e}"))?;
            // Notifications of earlier subscriptions may come before the answer.
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
                    .await
                    .map_err(|_| format!("{name}: no answer to eth_subscribe {sub}"))?;
                let Some(Ok(Message::Text(text))) = frame else {
                    match frame {
                        Some(Ok(_)) => continue,
                        other => return Err(format!("{name}: socket ended: {other:?}")),
                    }
                };
                let v: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
                let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                if v["id"] == json!(id) {
                    let sid = v["result"]
                        .as_str()
                        .ok_or_else(|| format!("{name}: eth_subscribe {sub} refused: {v}"))?;
                    r.subs.insert(sub.clone(), sid.to_string());
                    break;
                }
                on_frame(&mut r, &v, now_ms());
            }
        }
        record.lock().unwrap_or_else(|e| e.into_inner()).ready = true;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(read_raw(socket, Arc::clone(&record), stop_rx));
        Ok(Client {
            name: name.to_string(),
            filters,
            record,
            stop: Stopper::Raw(Some(stop_tx)),
        })
    }

    /// Stops the client (bounded) and, for ethers, waits for its summary.
    pub async fn stop(&mut self) {
        match &mut self.stop {
            Stopper::Ethers { child, stdin } => {
                if let Some(mut s) = stdin.take() {
                    let _ = s.write_all(b"stop\n").await;
                    let _ = s.flush().await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
                // stdout may still be draining after the exit.
                for _ in 0..100 {
                    if self.with(|r| r.exited) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Stopper::Raw(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
                for _ in 0..100 {
                    if self.with(|r| r.exited) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

fn on_ethers_line(r: &mut Record, v: Value) {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_lowercase();
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    match v["event"].as_str() {
        Some("h") => r.push(Seen::Head {
            n: u("n"),
            hash: s("hash"),
            parent: s("parent"),
            t: u("t"),
        }),
        Some("l") => r.push(Seen::Log {
            sub: v["sub"].as_str().unwrap_or_default().to_string(),
            n: u("n"),
            hash: s("hash"),
            tx: s("tx"),
            i: u("i"),
            removed: v["removed"] == json!(true),
            t: u("t"),
        }),
        Some("x") => r.push(Seen::Unknown(s("sub"))),
        Some("ready") => {
            if let Some(subs) = v["subs"].as_object() {
                for (k, id) in subs {
                    r.subs
                        .insert(k.clone(), id.as_str().unwrap_or_default().to_string());
                }
            }
            r.ready = true;
        }
        Some("closed") => r.closed = Some(format!("code {} {}", v["code"], v["reason"])),
        Some("summary") => {
            if !v["fatal"].is_null() {
                r.errors.push(format!("fatal: {}", v["fatal"]));
            }
            r.summary = Some(v);
        }
        _ => r.errors.push(v.to_string()),
    }
}

/// Records one frame of the raw client.
fn on_frame(r: &mut Record, v: &Value, t: u64) {
    if v["method"] != json!("eth_subscription") {
        r.errors.push(format!("unexpected frame: {v}"));
        return;
    }
    let sid = v["params"]["subscription"].as_str().unwrap_or_default();
    let res = &v["params"]["result"];
    let name = r
        .subs
        .iter()
        .find(|(_, id)| id.as_str() == sid)
        .map(|(n, _)| n.clone());
    let s = |k: &str| res[k].as_str().unwrap_or_default().to_lowercase();
    let hex = |k: &str| u64::from_str_radix(s(k).trim_start_matches("0x"), 16).unwrap_or(0);
    match name.as_deref() {
        Some("newHeads") => r.push(Seen::Head {
            n: hex("number"),
            hash: s("hash"),
            parent: s("parentHash"),
            t,
        }),
        Some(sub) => r.push(Seen::Log {
            sub: sub.to_string(),
            n: hex("blockNumber"),
            hash: s("blockHash"),
            tx: s("transactionHash"),
            i: hex("logIndex"),
            removed: res["removed"] == json!(true),
            t,
        }),
        None => r.push(Seen::Unknown(sid.to_string())),
    }
}

async fn read_raw(
    mut socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    record: Arc<Mutex<Record>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => {
                let _ = tokio::time::timeout(Duration::from_secs(5), socket.close(None)).await;
                break;
            }
            frame = socket.next() => {
                let t = now_ms();
                let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                match frame {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(text.as_str()) {
                        Ok(v) => on_frame(&mut r, &v, t),
                        Err(e) => r.errors.push(format!("not JSON ({e}): {text}")),
                    },
                    Some(Ok(Message::Close(f))) => {
                        r.closed = Some(format!("{f:?}"));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        r.closed = Some(format!("error: {e}"));
                        break;
                    }
                    None => {
                        r.closed = Some("EOF".into());
                        break;
                    }
                }
            }
        }
    }
    record.lock().unwrap_or_else(|e| e.into_inner()).exited = true;
}
