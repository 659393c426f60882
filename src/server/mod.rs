//! The client port: one accept loop per listen address, sharing a connection limit; the
//! access check right after accept, optional PROXY header and TLS handshake, then one HTTP/1.1
//! connection (`client_connection`) per socket, drained gracefully on shutdown.

pub mod access;
mod client_connection;
pub mod handshake;
pub mod proxy_protocol;
pub mod tls;
pub mod write_timeout;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::ServerConfig;
use crate::connection::{ConnectionCount, ConnectionGuard};
use crate::frontend::{ws, Frontend};
use crate::metrics::DenyReason;
use crate::shutdown::Drain;
use access::Access;
use tls::Tls;

/// TCP keepalive on client sockets: a peer that vanished without a FIN or RST (a half-open
/// WebSocket client, a crashed host) is found out after about `IDLE + INTERVAL * RETRIES`
/// and frees its slot in `max_connections`.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

/// At most one warning per this period about failed client TLS handshakes.
const HANDSHAKE_WARN_EVERY: Duration = Duration::from_secs(10);

/// Back-off after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Everything the accept loops need.
pub struct ClientPort {
    /// Bound client listeners (`server.listen`), each serving HTTP and WebSocket alike.
    pub listeners: Vec<TcpListener>,
    /// Request handling shared by every connection.
    pub frontend: Arc<Frontend>,
    /// Allowlist, trusted proxies and PROXY protocol setting.
    pub access: Arc<ArcSwap<Access>>,
    /// TLS material, when the port speaks HTTPS only.
    pub tls: Option<Arc<Tls>>,
    /// Open connections.
    pub connections: Arc<ConnectionCount>,
}

/// Who is on the other end of one connection.
struct Peer {
    /// The TCP peer.
    addr: SocketAddr,
    /// The client: the TCP peer, or the address a trusted PROXY header carried.
    client: SocketAddr,
    /// The connection's place in the limit and the count.
    guard: Arc<ConnectionGuard>,
}

/// Per-connection settings shared by every connection task.
struct Settings {
    frontend: Arc<Frontend>,
    access: Arc<ArcSwap<Access>>,
    tls: Option<Arc<Tls>>,
    connections: Arc<ConnectionCount>,
    /// Bound for the PROXY header, the TLS handshake and each request head.
    header_timeout: Duration,
    /// How long a client may accept no bytes before it is disconnected.
    write_timeout: Duration,
    /// Rate limit of the warning about failed TLS handshakes.
    handshake_log: handshake::RateLimit,
    drain: Drain,
}

impl ClientPort {
    /// Accepts on every listener until `drain.shutdown`, then waits up to `shutdown_grace` for
    /// open connections to finish their in-flight requests.
    pub async fn run(self, config: &ServerConfig, drain: Drain) {
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let settings = Arc::new(Settings {
            frontend: self.frontend,
            access: self.access,
            tls: self.tls,
            connections: self.connections.clone(),
            header_timeout: config.header_timeout,
            write_timeout: config.write_timeout,
            handshake_log: handshake::RateLimit::new(HANDSHAKE_WARN_EVERY),
            drain: drain.clone(),
        });
        // One task per listener, so every port accepts while another waits for a permit.
        let mut loops = tokio::task::JoinSet::new();
        for listener in self.listeners {
            loops.spawn(settings.clone().accept_loop(listener, limit.clone()));
        }
        while loops.join_next().await.is_some() {}
        wait_for_connections(&drain, config.shutdown_grace, &self.connections).await;
    }
}

impl Settings {
    /// Accepts on `listener` until shutdown; the listener is closed when this returns.
    async fn accept_loop(self: Arc<Self>, listener: TcpListener, limit: Arc<Semaphore>) {
        let shutdown = self.drain.shutdown.clone();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            // Peers that send no PROXY header are judged now, before any byte is read.
            if !self.access.load().expects_proxy_header(peer.ip()) && !self.admit(peer) {
                continue;
            }
            let settings = self.clone();
            let guard = Arc::new(ConnectionGuard::new(settings.connections.clone(), permit));
            self.drain.tracker.spawn(async move {
                let serve = settings.serve(
                    stream,
                    Peer {
                        addr: peer,
                        client: peer,
                        guard,
                    },
                );
                crate::gate::unless(serve, settings.drain.force_close.cancelled()).await;
            });
        }
    }

    /// Applies the allowlist to a client address, counting and logging a refusal.
    fn admit(&self, client: SocketAddr) -> bool {
        let access = self.access.load();
        if access.allows(client.ip()) {
            return true;
        }
        self.frontend
            .metrics
            .denied_connection(DenyReason::NotAllowed);
        access.log_denied(client.ip());
        false
    }

    async fn serve(&self, mut stream: TcpStream, mut peer: Peer) {
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream);
        if self.access.load().expects_proxy_header(peer.addr.ip()) {
            match proxy_protocol::read_header(&mut stream, self.header_timeout).await {
                // LOCAL / UNKNOWN: the load balancer itself (a health check), already trusted.
                Ok(header) if header.source.is_none() => {}
                Ok(header) => {
                    peer.client = header.client_or(peer.addr);
                    if !self.admit(peer.client) {
                        return;
                    }
                }
                Err(error) => {
                    self.frontend
                        .metrics
                        .denied_connection(DenyReason::ProxyHeader);
                    let addr = peer.addr;
                    tracing::debug!(%addr, %error, "invalid PROXY header; connection closed");
                    return;
                }
            }
        }
        let Some(tls) = &self.tls else {
            return self.serve_http(stream, peer).await;
        };
        let handshake = tokio::time::timeout(self.header_timeout, tls.acceptor().accept(stream));
        match handshake.await {
            Ok(Ok(stream)) => self.serve_http(stream, peer).await,
            Ok(Err(error)) => self.handshake_failed(peer.client, Some(&error)),
            Err(_) => self.handshake_failed(peer.client, None),
        }
    }

    /// Counts a failed handshake; one whose cause an operator can fix (a refused client
    /// certificate above all) is a rate-limited warning, the rest (EOF, timeouts) debug.
    fn handshake_failed(&self, client: SocketAddr, error: Option<&std::io::Error>) {
        self.frontend.metrics.tls_handshake_failure();
        let Some(error) = error else {
            return tracing::debug!(%client, "TLS handshake timed out");
        };
        match handshake::explain(error) {
            Some(reason) => {
                if let Some(suppressed) = self.handshake_log.allow() {
                    tracing::warn!(%client, reason, suppressed, "client TLS handshake failed");
                }
            }
            None => tracing::debug!(%client, %error, "TLS handshake failed"),
        }
    }

    async fn serve_http<IO>(&self, io: IO, peer: Peer)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Peer {
            addr,
            client,
            guard,
        } = peer;
        let io = write_timeout::WriteTimeout::new(io, self.write_timeout);
        let connection = client_connection::Connection::new(self, io, (addr, client));
        let Some(upgraded) = connection.serve().await else {
            return;
        };
        // A task of its own: this one's future is sized for HTTP handling, which would
        // otherwise be every idle WebSocket client's memory. The session keeps the
        // connection's place in `max_connections` and in the open-connection count.
        let frontend = self.frontend.clone();
        self.drain.tracker.spawn(async move {
            let _guard = guard;
            ws::serve_upgraded(frontend, upgraded.io, upgraded.read_ahead).await;
        });
    }
}

/// Turns on TCP keepalive; a failure only costs the early detection of dead peers.
fn set_keepalive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "could not enable TCP keepalive");
    }
}

async fn wait_for_connections(drain: &Drain, grace: Duration, connections: &ConnectionCount) {
    let open = connections.get();
    if open > 0 {
        tracing::info!(open, ?grace, "draining client connections");
    }
    drain.tracker.close();
    if tokio::time::timeout(grace, drain.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.get(),
            ?grace,
            "shutdown grace expired; closing remaining connections"
        );
        drain.force_close.cancel();
        drain.tracker.wait().await;
    }
}
