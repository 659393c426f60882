//! A TCP relay between ethgate and one upstream port, that a test can cut: every open
//! connection is dropped at once (both directions, like a peer that vanished or a NAT that
//! forgot the flow), and new connections can be refused for a while. ethgate's upstream `ws`
//! URL points at the relay, so a cut drops the upstream WebSocket while the node itself stays
//! up and keeps answering HTTP directly.
//!
//! Only loopback: the relay listens on `127.0.0.1:0` and forwards to `127.0.0.1:PORT`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// A running relay; stops (and drops every connection) when dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    target: SocketAddr,
    /// Bumped by every cut; each connection task ends when it changes.
    generation: watch::Sender<u64>,
    /// New connections are refused (closed right after accept) until then.
    refuse_until: Mutex<Option<Instant>>,
    /// Connections accepted and forwarded so far.
    accepted: AtomicU64,
}

impl Relay {
    /// Starts a relay on `127.0.0.1:0` forwarding to `127.0.0.1:target_port`.
    pub async fn start(target_port: u16) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            generation: watch::channel(0).0,
            refuse_until: Mutex::new(None),
            accepted: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Relay { addr, shared, task })
    }

    /// The relay's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://` URL of the relay.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Drops every open connection now, and refuses new ones for `refuse` (zero: accept again
    /// at once).
    pub fn cut(&self, refuse: Duration) {
        *self
            .shared
            .refuse_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + refuse);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Connections forwarded so far (a cut connection that is re-established counts again).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let refused = shared
            .refuse_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until);
        if refused {
            drop(inbound);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(forward(inbound, Arc::clone(&shared)));
    }
}

/// Copies both ways until either side closes or the relay is cut; then both sockets drop.
async fn forward(mut inbound: TcpStream, shared: Arc<Shared>) {
    let mut cut = shared.generation.subscribe();
    cut.mark_unchanged();
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(shared.target));
    let mut outbound = match connect.await {
        Ok(Ok(s)) => s,
        // Target down (a killed node): the client sees its connection closed.
        _ => return,
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.changed() => {}
    }
    // Dropping both streams closes them; SO_LINGER is left alone (a FIN, like a closed peer;
    // ethgate must notice either way).
}
