//! Child processes for end-to-end tests: a guard that always kills its child, output capture,
//! free loopback ports, a self-removing temp dir, a small HTTP client, and a helper that starts
//! the `ethgate` binary with a config file and waits for its admin `/healthz`.
//!
//! Everything here only ever talks to loopback addresses, and every wait has a deadline.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How many of a child's first and last output lines are kept (the middle is dropped).
const KEEP_LINES: usize = 400;

// ---------------------------------------------------------------------------------------------
// Output capture
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct OutputState {
    /// The first `KEEP_LINES` lines, kept for good (start-up banners live here).
    head: Vec<String>,
    /// The last `KEEP_LINES` lines after `head` filled up.
    tail: VecDeque<String>,
    /// Lines seen in total.
    total: usize,
    /// Streams that reached EOF (stdout and stderr: 2 means the child closed both).
    closed: usize,
}

/// Captured stdout+stderr of a child. Reader threads drain the pipes continuously so a chatty
/// child (anvil logs every RPC method) never blocks on a full pipe.
#[derive(Clone, Default)]
pub struct Output {
    inner: Arc<(Mutex<OutputState>, Condvar)>,
}

impl Output {
    fn push(&self, line: String) {
        let (lock, cvar) = &*self.inner;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.total += 1;
        if st.head.len() < KEEP_LINES {
            st.head.push(line);
        } else {
            if st.tail.len() == KEEP_LINES {
                st.tail.pop_front();
            }
            st.tail.push_back(line);
        }
        cvar.notify_all();
    }

    fn close(&self) {
        let (lock, cvar) = &*self.inner;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.closed += 1;
        cvar.notify_all();
    }

    fn drain<R: Read + Send + 'static>(&self, name: String, stream: R) {
        let out = self.clone();
        let echo = std::env::var_os("ETHGATE_TEST_ECHO").is_some();
        let spawned = std::thread::Builder::new()
            .name(format!("drain-{name}"))
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                            if echo {
                                eprintln!("[{name}] {line}");
                            }
                            out.push(line);
                        }
                    }
                }
                out.close();
            });
        if spawned.is_err() {
            self.close();
        }
    }

    /// Waits until a line satisfies `pred` and returns that line; `None` when the deadline passes
    /// or the child closed its output first.
    pub fn wait_for_line(
        &self,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut checked = 0usize;
        loop {
            // Lines are checked once each; lines that fell out of the kept window are skipped.
            let dropped = st.total - st.head.len() - st.tail.len();
            let all: Vec<&String> = st.head.iter().chain(st.tail.iter()).collect();
            while checked < st.total {
                if checked >= st.head.len() && checked < st.head.len() + dropped {
                    checked = st.head.len() + dropped;
                    continue;
                }
                let idx = if checked < st.head.len() {
                    checked
                } else {
                    checked - dropped
                };
                let line = all[idx];
                checked += 1;
                if pred(line) {
                    return Some(line.clone());
                }
            }
            if st.closed >= 2 {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = cvar
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The kept output as one string (first lines, a marker for dropped ones, last lines).
    pub fn text(&self) -> String {
        let (lock, _) = &*self.inner;
        let st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = st.head.join("\n");
        let dropped = st.total - st.head.len() - st.tail.len();
        if dropped > 0 {
            s.push_str(&format!("\n... ({dropped} lines dropped) ...\n"));
        } else if !st.tail.is_empty() {
            s.push('\n');
        }
        for l in &st.tail {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// The last `n` kept lines.
    pub fn last_lines(&self, n: usize) -> String {
        let (lock, _) = &*self.inner;
        let st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<&String> = st.head.iter().chain(st.tail.iter()).collect();
        let start = all.len().saturating_sub(n);
        all[start..]
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// ChildGuard
// ---------------------------------------------------------------------------------------------

/// Owns a child process and kills (SIGKILL) and reaps it when dropped, including while a failed
/// test unwinds. `kill` may be called earlier; it is idempotent.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    pid: u32,
    output: Output,
    exit: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout/stderr captured (see [`Output`]).
    pub fn spawn(name: &str, cmd: &mut Command) -> std::io::Result<ChildGuard> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let output = Output::default();
        if let Some(out) = child.stdout.take() {
            output.drain(name.to_string(), out);
        } else {
            output.close();
        }
        if let Some(err) = child.stderr.take() {
            output.drain(format!("{name}:err"), err);
        } else {
            output.close();
        }
        Ok(ChildGuard {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            output,
            exit: None,
        })
    }

    /// Wraps an already spawned child (its pipes, if any, are left to the caller).
    pub fn from_child(name: &str, child: Child) -> ChildGuard {
        let output = Output::default();
        output.close();
        output.close();
        ChildGuard {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            output,
            exit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn output(&self) -> &Output {
        &self.output
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Sends SIGKILL (if still running) and reaps the child. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                let _ = child.kill();
                if let Ok(status) = child.wait() {
                    self.exit = Some(status);
                }
            }
        }
    }

    /// Sends a signal by number (e.g. 15 for SIGTERM) with `kill(1)`; the child stays guarded.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        if self.child.is_none() || self.exit.is_some() {
            return Ok(());
        }
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -{sig} {} failed",
                self.pid
            )))
        }
    }

    /// Waits (polling) until the child exits, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and temp dirs
// ---------------------------------------------------------------------------------------------

/// A loopback address with a port that was free a moment ago (bound to `127.0.0.1:0`, released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

pub fn free_port() -> u16 {
    free_addr().port()
}

/// A directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client (loopback only)
// ---------------------------------------------------------------------------------------------

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    // One pooled client per call site would be nicer; building one is cheap enough for tests,
    // and a fresh pool never reuses a connection to a process that was killed.
    Client::builder(TokioExecutor::new()).build_http()
}

/// A reusable HTTP client (connection pool) for a hot loop such as the devnet driver.
#[derive(Clone)]
pub struct Http {
    client: HttpClient,
}

impl Default for Http {
    fn default() -> Self {
        Http { client: client() }
    }
}

impl Http {
    /// Sends one request and returns (status, body), failing after `timeout`.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
        check_loopback(&uri)?;
        let mut req = hyper::Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("request: {e}"))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{method} {url}: {e:?}"))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: body: {e}"))?
                .to_bytes();
            Ok((status, bytes.to_vec()))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("{method} {url}: timed out after {timeout:?}")),
        }
    }

    /// A JSON-RPC call: the `result`, or the error (transport error or the JSON-RPC `error`).
    pub async fn rpc(
        &self,
        url: &str,
        method: &str,
        params: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, RpcError> {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let (status, bytes) = self
            .request("POST", url, Some(body.to_string().into_bytes()), timeout)
            .await
            .map_err(RpcError::Transport)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            RpcError::Transport(format!(
                "{method} @ {url}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ))
        })?;
        if let Some(err) = v.get("error") {
            return Err(RpcError::Rpc(err.clone()));
        }
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(RpcError::Transport(format!(
                "{method} @ {url}: HTTP {status}, no result: {v}"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub enum RpcError {
    /// Connect/IO error, timeout, non-JSON answer.
    Transport(String),
    /// A JSON-RPC error object.
    Rpc(serde_json::Value),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Transport(s) => write!(f, "transport: {s}"),
            RpcError::Rpc(v) => write!(f, "rpc error: {v}"),
        }
    }
}

fn check_loopback(uri: &hyper::Uri) -> Result<(), String> {
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!("refusing non-loopback target {uri}"))
    }
}

/// GET `url` once with a fresh client; (status, body as text).
pub async fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let (s, b) = Http::default().request("GET", url, None, timeout).await?;
    Ok((s, String::from_utf8_lossy(&b).into_owned()))
}

/// Polls `check` every `every` until it returns `Some`, or fails with `what` at the deadline.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The ethgate binary
// ---------------------------------------------------------------------------------------------

/// Listen and admin addresses for one ethgate instance, on free loopback ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Ports {
    pub fn free() -> Ports {
        // Hold both listeners at once so the two ports differ.
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        Ports {
            listen: a.local_addr().expect("addr"),
            admin: b.local_addr().expect("addr"),
        }
    }
}

/// Path of the ethgate binary that cargo built for this test run (cargo sets
/// `CARGO_BIN_EXE_ethgate` for integration tests; examples fall back to `target/*/ethgate`
/// next to their own executable).
pub fn ethgate_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ethgate") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/examples/NAME -> target/<profile>/ethgate
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("ethgate"))
        .unwrap_or_else(|| PathBuf::from("ethgate"))
}

/// A running `ethgate run --config FILE`, killed on drop.
pub struct Ethgate {
    pub guard: ChildGuard,
    pub ports: Ports,
    pub config_path: PathBuf,
    _dir: TempDir,
}

impl Ethgate {
    /// Writes `config_toml` to a temp dir, starts `ethgate run --config FILE` plus `extra_args`
    /// and waits up to `ready_timeout` until `GET /healthz` on `ports.admin` answers 200.
    /// The TOML must put `server.listen` / `admin.listen` on `ports` (see [`Ports::free`]).
    pub async fn start(
        ports: Ports,
        config_toml: &str,
        extra_args: &[&str],
        ready_timeout: Duration,
    ) -> Result<Ethgate, String> {
        let dir = TempDir::new("ethgate-test").map_err(|e| format!("temp dir: {e}"))?;
        let config_path = dir.path().join("ethgate.toml");
        std::fs::write(&config_path, config_toml).map_err(|e| format!("write config: {e}"))?;
        let mut cmd = Command::new(ethgate_bin());
        cmd.arg("run").arg("--config").arg(&config_path);
        cmd.args(extra_args);
        cmd.env_remove("ETHGATE_CONFIG");
        let guard = ChildGuard::spawn("ethgate", &mut cmd)
            .map_err(|e| format!("spawn {}: {e}", ethgate_bin().display()))?;
        let mut eg = Ethgate {
            guard,
            ports,
            config_path,
            _dir: dir,
        };
        eg.wait_healthy(ready_timeout).await?;
        Ok(eg)
    }

    /// Polls `/healthz` until it answers 200 `ok`; fails early if the process exits.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let url = self.admin_url("/healthz");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.guard.try_wait() {
                return Err(format!(
                    "ethgate exited ({status}) before /healthz answered; output:\n{}",
                    self.guard.output().text()
                ));
            }
            if let Ok((200, _)) = http_get(&url, Duration::from_millis(500)).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "ethgate /healthz at {url} did not answer 200 within {timeout:?}; output:\n{}",
                    self.guard.output().text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.ports.listen)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.ports.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ports.admin)
    }

    /// `GET /status` parsed as JSON.
    pub async fn status(&self) -> Result<serde_json::Value, String> {
        let (code, body) = http_get(&self.admin_url("/status"), Duration::from_secs(2)).await?;
        if code != 200 {
            return Err(format!("/status answered HTTP {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/status is not JSON ({e}): {body}"))
    }

    /// The name of the upstream `/status` shows as selected, if any.
    pub async fn selected_upstream(&self) -> Result<Option<String>, String> {
        let st = self.status().await?;
        Ok(st["upstreams"].as_array().and_then(|ups| {
            ups.iter()
                .find(|u| u["selected"] == serde_json::Value::Bool(true))
                .and_then(|u| u["name"].as_str().map(str::to_string))
        }))
    }

    /// The kept stdout/stderr of ethgate (for failure messages).
    pub fn log(&self) -> String {
        self.guard.output().text()
    }
}
