//! Child processes for end-to-end tests: a guard that always kills its child, output capture,
//! free loopback ports, a self-removing temp dir, and the path of the `ethgate` binary (the
//! launcher is `support::gateway::Gateway::spawn`).
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
// The ethgate binary
// ---------------------------------------------------------------------------------------------

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

/// Runs `ethgate check --probe` on the config file at `path`: its exit code and standard
/// output. Async: mocks and relays on the caller's runtime must keep serving while the check
/// dials them.
pub async fn check_probe(path: &Path) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(ethgate_bin())
        .args(["check", "--probe", "--config"])
        .arg(path)
        .env_remove("ETHGATE_CONFIG")
        .output()
        .await
        .expect("run ethgate check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
