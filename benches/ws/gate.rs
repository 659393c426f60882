//! The proxies under test as child processes: ethgate (with its admin API for counts) and an
//! HAProxy WebSocket tunnel; each is killed when its guard drops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::common::{process_cpu_time, rss_kib};
use crate::upstream::Upstream;

/// Where HAProxy is looked for.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// `command`, started under `taskset -c 0` when pinned, and under the words of
/// `ETHGATE_WS_BENCH_WRAP` (for example a valgrind command line) when set.
fn pinned_command(exe: &str, pin: bool) -> Command {
    let mut words: Vec<String> = Vec::new();
    if pin {
        words.extend(["taskset".into(), "-c".into(), "0".into()]);
    }
    if let Ok(wrap) = std::env::var("ETHGATE_WS_BENCH_WRAP") {
        words.extend(wrap.split_whitespace().map(str::to_string));
    }
    words.push(exe.to_string());
    let mut command = Command::new(&words[0]);
    command.args(&words[1..]);
    command
}

/// ethgate running as a child process.
pub struct Gate {
    child: Child,
    pub pid: u32,
    dir: PathBuf,
    log: PathBuf,
    pub listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Gate {
    fn drop(&mut self) {
        // SIGTERM first: ethgate shuts down cleanly, and a profiler wrapping it (see
        // ETHGATE_WS_BENCH_WRAP) writes its output; SIGKILL after 10 s.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

impl Gate {
    /// Starts ethgate in front of the upstream's `http` and `ws` addresses, sending its calls
    /// over `calls` (the upstream key: "http" or "ws").
    pub fn start(
        http: SocketAddr,
        ws: SocketAddr,
        workers: usize,
        pin: bool,
        calls: &str,
    ) -> anyhow::Result<Gate> {
        let dir =
            std::env::temp_dir().join(format!("ethgate-ws-bench-{}-{calls}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let listen = free_port()?;
        let admin = free_port()?;
        let config = dir.join("ethgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = "{listen}"
max_connections = 15000
ws_queue_len = 4096
drain_delay = "0s"
shutdown_grace = "1s"

[health]
interval = "200ms"
timeout = "150ms"

[admin]
listen = "{admin}"

[log]
level = "warn"

[[upstream]]
name = "bench-upstream"
http = "http://{http}/"
ws = "ws://{ws}/"
calls = "{calls}"
"#
            ),
        )?;
        let log = dir.join("ethgate.log");
        // ETHGATE_WS_BENCH_EXE: another ethgate binary (say, a build of an older commit).
        let exe = std::env::var("ETHGATE_WS_BENCH_EXE")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_ethgate").to_string());
        let exe = exe.as_str();
        let mut command = pinned_command(exe, pin);
        command
            .args(["run", "--config"])
            .arg(&config)
            .args(["--log-level", "warn", "--workers", &workers.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = command.spawn().with_context(|| format!("starting {exe}"))?;
        let pid = child.id();
        Ok(Gate {
            child,
            pid,
            dir,
            log,
            listen,
            admin,
        })
    }

    /// Waits until `/readyz` answers 200 and ethgate's feed holds a newHeads subscription.
    pub async fn wait_ready(&self, upstream: &Upstream) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::from("nothing yet");
        while Instant::now() < deadline {
            if let Some(state) = self.exited() {
                bail!("ethgate exited ({state}); log:\n{}", self.log_text());
            }
            match admin_get(self.admin, "/readyz").await {
                Ok((status, _)) if status == StatusCode::OK => {
                    if upstream.subscriptions.load(Ordering::SeqCst) > 0 {
                        return Ok(());
                    }
                    last = "ready, but no newHeads subscription upstream yet".into();
                }
                Ok((status, _)) => last = format!("/readyz {status}"),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "not ready within 20 s (last: {last}); log:\n{}",
            self.log_text()
        )
    }

    fn exited(&self) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok();
        match stat {
            None => Some("gone".into()),
            Some(s)
                if s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z')) =>
            {
                Some("zombie".into())
            }
            Some(_) => None,
        }
    }

    /// ethgate's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// ethgate's CPU time so far (every thread).
    pub fn cpu_time(&self) -> Duration {
        process_cpu_time(self.pid)
    }

    /// WebSocket sessions (`ethgate_ws_connections` in `/metrics`), `connections` and
    /// `subscriptions.newHeads` from `/status`.
    pub async fn counts(&self) -> Option<Counts> {
        let (status, body) = admin_get(self.admin, "/status").await.ok()?;
        if status != StatusCode::OK {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let (status, metrics) = admin_get(self.admin, "/metrics").await.ok()?;
        if status != StatusCode::OK {
            return None;
        }
        let metrics = String::from_utf8_lossy(&metrics);
        let ws_sessions = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ethgate_ws_connections "))
            .and_then(|v| v.trim().parse::<f64>().ok())? as u64;
        Some(Counts {
            ws_sessions,
            status_connections: value["connections"].as_u64()?,
            new_heads: value["subscriptions"]["newHeads"].as_u64()?,
        })
    }

    /// ethgate's RSS and counts now.
    pub async fn memory_point(&self, label: &str) -> MemoryPoint {
        let (rss_kib, hwm_kib) = rss_kib(self.pid);
        let counts = self.counts().await;
        MemoryPoint {
            label: label.to_string(),
            clients: None,
            rss_kib,
            hwm_kib,
            counts,
        }
    }

    /// Waits until ethgate counts `want` WebSocket sessions and newHeads subscriptions.
    pub async fn wait_counts(
        &self,
        want: u64,
        limit: Duration,
    ) -> (bool, Duration, Option<Counts>) {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < limit {
            last = self.counts().await;
            if last.is_some_and(|c| c.ws_sessions == want && c.new_heads == want) {
                return (true, started.elapsed(), last);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (false, started.elapsed(), last)
    }
}

async fn admin_get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let call = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(HOST, addr.to_string())
            .body(Empty::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .map_err(|_| anyhow!("GET {path}: no answer within 5 s"))?
}

// ---------------------------------------------------------------------------------------------

/// One reading of ethgate's memory.
pub struct MemoryPoint {
    pub label: String,
    pub clients: Option<usize>,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub counts: Option<Counts>,
}

/// What ethgate reports about its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `ethgate_ws_connections` from `/metrics`.
    pub ws_sessions: u64,
    /// `connections` from `/status`.
    pub status_connections: u64,
    /// `subscriptions.newHeads` from `/status`.
    pub new_heads: u64,
}

/// HAProxy 2.x as a WebSocket tunnel (`mode http`: it answers the upgrade, then relays
/// frames) to the upstream's WebSocket, one thread, pinned like ethgate.
pub struct Haproxy {
    child: Child,
    pub pid: u32,
    dir: PathBuf,
    pub listen: SocketAddr,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Haproxy {
    /// Starts HAProxy in front of `ws`; `Ok(None)` when it is not installed.
    pub fn start(ws: SocketAddr, pin: bool) -> anyhow::Result<Option<Haproxy>> {
        if !std::path::Path::new(HAPROXY).exists() {
            return Ok(None);
        }
        let dir =
            std::env::temp_dir().join(format!("ethgate-ws-bench-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let listen = free_port()?;
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    nbthread 1\n    maxconn 4000\n\
                 defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n\
                 \x20   timeout server 60s\n    timeout tunnel 1h\n\
                 frontend ws\n    bind {listen}\n    default_backend upstream\n\
                 backend upstream\n    server upstream1 {ws}\n"
            ),
        )?;
        let mut command = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", HAPROXY]);
            c
        } else {
            Command::new(HAPROXY)
        };
        command
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log"))?);
        let child = command.spawn().context("starting HAProxy")?;
        let haproxy = Haproxy {
            pid: child.id(),
            child,
            dir,
            listen,
        };
        Ok(Some(haproxy))
    }

    /// Waits until HAProxy accepts connections.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(self.listen).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        bail!("HAProxy did not listen within 10 s; log:\n{log}")
    }
}
