//! The client port's accept loop: connection limit, access check, then one hyper HTTP/1
//! connection per socket, drained gracefully on shutdown.

pub mod access;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::frontend::{self, Frontend};
use access::Access;

/// Back-off after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Open client connections, for /status.
#[derive(Debug, Default)]
pub struct ConnectionCount(AtomicUsize);

impl ConnectionCount {
    /// Current number of open client connections.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the accept loop needs.
pub struct ClientPort {
    /// Bound client listener.
    pub listener: TcpListener,
    /// Request handling shared by every connection.
    pub frontend: Arc<Frontend>,
    /// Allowlist.
    pub access: Arc<Access>,
    /// Open connections.
    pub connections: Arc<ConnectionCount>,
}

impl ClientPort {
    /// Accepts until `shutdown`, then waits up to `shutdown_grace` for open connections to
    /// finish their in-flight requests.
    pub async fn run(self, config: &ServerConfig, shutdown: CancellationToken) {
        let graceful = GracefulShutdown::new();
        // Cancelled when the grace period expires, to close connections still busy then.
        let force_close = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let mut builder = http1::Builder::new();
        // Without a timer hyper silently ignores header_read_timeout.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .keep_alive(true);
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
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            if !self.access.allows(peer.ip()) {
                self.frontend.metrics.denied_connection("not_allowed");
                self.access.log_denied(peer.ip());
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let frontend = self.frontend.clone();
            let service =
                service_fn(move |request| frontend::http::handle(frontend.clone(), request));
            let connection =
                graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            let connections = self.connections.clone();
            connections.0.fetch_add(1, Ordering::Relaxed);
            let force_close = force_close.clone();
            tokio::spawn(async move {
                tokio::select! {
                    result = connection => if let Err(error) = result {
                        tracing::debug!(%peer, %error, "client connection ended with an error");
                    },
                    _ = force_close.cancelled() => {}
                }
                connections.0.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
        drop(self.listener);
        drain(graceful, config.shutdown_grace, &self.connections).await;
        force_close.cancel();
    }
}

async fn drain(graceful: GracefulShutdown, grace: Duration, connections: &ConnectionCount) {
    let open = connections.get();
    if open > 0 {
        tracing::info!(open, ?grace, "draining client connections");
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.get(),
            ?grace,
            "shutdown grace expired; closing remaining connections"
        );
    }
}
