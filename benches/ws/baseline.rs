//! The fan-out floor: a minimal tokio program (this bench binary re-run as a child with
//! `--ws-fanout-baseline`, one thread, pinned like ethgate) that accepts the same WebSocket
//! clients, answers their `eth_subscribe` with a fixed frame, and on each head writes one
//! pre-framed notification (the same text ethgate sends, same size) to every socket: one
//! `try_write` per socket in a single loop, the rare partial write finished by a task.
//!
//! The parent drives it over stdin/stdout: `count` answers the subscribed sockets, `emit N`
//! writes head N and answers the sockets that failed. Its CPU time is read from /proc/PID
//! exactly like ethgate's.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::common::process_cpu_time;
use crate::fanout::Heads;
use crate::upstream::{header_json, EmitClock};

/// The argument that makes the bench binary the baseline server.
pub const CHILD_ARG: &str = "--ws-fanout-baseline";

/// Subscription id in every baseline frame: as long as ethgate's.
const SUBSCRIPTION: &str = "0x00000000000000000000000000b10c00";

/// The sockets a head is written to.
type Sockets = Arc<Mutex<Vec<Arc<TcpStream>>>>;

/// An unmasked (server) WebSocket text frame holding `text`.
fn text_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81);
    match len {
        0..=125 => frame.push(len as u8),
        126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// The notification of head `n`, as ethgate frames it for one subscription.
pub fn notification(n: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"{SUBSCRIPTION}","result":{}}}}}"#,
        header_json(n)
    )
}

/// The child's whole life: serve until stdin closes.
pub fn serve_child() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sockets: Sockets = Arc::default();
        let mut out = tokio::io::stdout();
        out.write_all(format!("listening {}\n", listener.local_addr()?).as_bytes())
            .await?;
        out.flush().await?;
        tokio::spawn(accept(listener, sockets.clone()));
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            let answer = match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["count"] => sockets.lock().unwrap().len(),
                ["emit", n] => write_all(&sockets, &text_frame(&notification(n.parse()?))),
                _ => bail!("unknown command {line:?}"),
            };
            out.write_all(format!("{answer}\n").as_bytes()).await?;
            out.flush().await?;
        }
        Ok(())
    })
}

async fn accept(listener: TcpListener, sockets: Sockets) {
    while let Ok((stream, _)) = listener.accept().await {
        let sockets = sockets.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Ok(stream) = handshake(stream).await {
                sockets.lock().unwrap().push(Arc::new(stream));
            }
        });
    }
}

/// The WebSocket upgrade, then the client's one `eth_subscribe` frame and its fixed answer.
async fn handshake(mut stream: TcpStream) -> anyhow::Result<TcpStream> {
    let mut request = Vec::with_capacity(1024);
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() > 16 * 1024 || stream.read_buf(&mut request).await? == 0 {
            bail!("no complete upgrade request");
        }
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim())
        })
        .context("no Sec-WebSocket-Key")?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    // The client's frame (masked): its length decides how much to skip.
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await?),
        127 => stream.read_u64().await?,
        n => u64::from(n),
    };
    let skip = len + if head[1] & 0x80 != 0 { 4 } else { 0 };
    tokio::io::copy(&mut (&mut stream).take(skip), &mut tokio::io::sink()).await?;
    let answer = format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{SUBSCRIPTION}"}}"#);
    stream.write_all(&text_frame(&answer)).await?;
    Ok(stream)
}

/// Writes `frame` to every socket; returns how many failed at once.
fn write_all(sockets: &Sockets, frame: &[u8]) -> usize {
    let frame: Arc<[u8]> = frame.into();
    let mut failed = 0;
    for socket in sockets.lock().unwrap().iter() {
        let written = match socket.try_write(&frame) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                failed += 1;
                continue;
            }
        };
        if written < frame.len() {
            let (socket, frame) = (socket.clone(), frame.clone());
            tokio::spawn(async move {
                let mut at = written;
                while at < frame.len() {
                    if socket.writable().await.is_err() {
                        return;
                    }
                    match socket.try_write(&frame[at..]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                }
            });
        }
    }
    failed
}

/// The parent's handle on the baseline child.
pub struct Baseline {
    child: Child,
    pid: u32,
    pub addr: SocketAddr,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Baseline {
    /// Starts the child (under `taskset -c 0` when pinned).
    pub async fn start(pin: bool) -> anyhow::Result<Baseline> {
        let exe = std::env::current_exe()?;
        let mut command = if pin {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", "0"]).arg(&exe);
            c
        } else {
            tokio::process::Command::new(&exe)
        };
        let mut child = command
            .arg(CHILD_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the baseline server")?;
        let pid = child.id().context("baseline pid")?;
        let stdin = child.stdin.take().context("baseline stdin")?;
        let stdout = child.stdout.take().context("baseline stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = answer(&mut lines).await?;
        let addr = first
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("baseline said {first:?}"))?;
        Ok(Baseline {
            child,
            pid,
            addr,
            stdin,
            lines,
        })
    }

    async fn ask(&mut self, command: String) -> anyhow::Result<usize> {
        self.stdin.write_all(command.as_bytes()).await?;
        self.stdin.flush().await?;
        let line = answer(&mut self.lines).await?;
        line.parse()
            .map_err(|_| anyhow!("baseline answered {line:?} to {command:?}"))
    }

    /// Sockets subscribed so far.
    pub async fn count(&mut self) -> anyhow::Result<usize> {
        self.ask("count\n".into()).await
    }

    /// Waits until `want` sockets are subscribed (15 s at most).
    pub async fn wait_count(&mut self, want: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let have = self.count().await?;
            if have >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("baseline holds {have} sockets, expected {want}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes head `n` to every socket; returns the sockets that failed.
    pub async fn emit(&mut self, n: u64) -> anyhow::Result<usize> {
        self.ask(format!("emit {n}\n")).await
    }

    /// Reads the child's CPU time so far (independent of the handle's borrows).
    pub fn cpu_time_reader(&self) -> impl Fn() -> Duration {
        let pid = self.pid;
        move || process_cpu_time(pid)
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn answer(lines: &mut Lines<BufReader<ChildStdout>>) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .map_err(|_| anyhow!("baseline silent for 15 s"))??
        .ok_or_else(|| anyhow!("baseline ended"))
}

/// The baseline's heads, numbered apart from the upstream's.
pub struct BaselineHeads<'a> {
    pub baseline: &'a mut Baseline,
    pub clock: EmitClock,
    pub next: u64,
    /// Socket writes that failed.
    pub failed: usize,
}

impl Heads for BaselineHeads<'_> {
    async fn emit(&mut self) -> anyhow::Result<u64> {
        self.next += 1;
        self.clock.record(self.next);
        self.failed += self.baseline.emit(self.next).await?;
        Ok(self.next)
    }

    fn clock(&self) -> &EmitClock {
        &self.clock
    }
}
