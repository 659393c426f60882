//! How the process winds down: the signals that end serving, and the tokens every
//! connection, session and background task watches, from the first SIGTERM to the forced
//! close. A leaf: it imports nothing from the crate.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How connections and WebSocket sessions are wound down on shutdown.
#[derive(Clone, Default)]
pub struct Drain {
    /// Cancelled on SIGTERM, `drain_delay` before `shutdown`: `/readyz` answers 503 so load
    /// balancers stop sending new connections, while the port still accepts and serves them,
    /// and HTTP answers carry `Connection: close` so keep-alive clients reconnect elsewhere.
    pub draining: CancellationToken,
    /// Cancelled when shutdown starts: stop accepting, finish in-flight work.
    pub shutdown: CancellationToken,
    /// Cancelled when the grace period expires: close whatever is still open.
    pub force_close: CancellationToken,
    /// Every connection and session task, so shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            tracing::warn!("cannot listen for SIGTERM; only Ctrl-C will stop ethgate");
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
