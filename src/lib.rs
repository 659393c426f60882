//! ethgate: a JSON-RPC failover proxy for Ethereum clients.
//!
//! Clients (Chainlink nodes) send JSON-RPC over HTTP or WebSocket to one endpoint; ethgate
//! health-checks several Ethereum clients and forwards each call to a healthy, in-sync one,
//! sticking to it while it stays healthy and failing over when it does not. WebSocket
//! subscriptions are owned by ethgate and survive upstream failover.
//!
//! # Layout
//!
//! The path of a call, and the module that owns each step:
//!
//! ```text
//! accept ─► allowlist ─► [PROXY] ─► [TLS] ─► HTTP/1.1 ─┬─► POST ─► decode ─► deny/local ─► router ─► upstream
//! server    server::access  ::proxy_protocol ::tls server::http1  frontend::http jsonrpc  policy, frontend  router   upstream
//!                                                      └─► WS upgrade ─► session ─┬─► calls: same path as POST
//!                                                          frontend::ws           └─► eth_subscribe ─► subscription (hub)
//! upstream heads ─► subscription::feed ─► chain view, logs ─► hub ─► each session's bounded queue
//! health probes (upstream::probe) ─► upstream state ─► rotation, which routing and the feed follow
//! ```
//!
//! Modules, each using only those listed after it (leaves use nothing from the crate; a test,
//! `tests/architecture.rs`, keeps the graph free of cycles):
//!
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/metrics` (composes every module's series).
//! - [`server`]: the client port (connection limit, allowlist, PROXY header, TLS, each
//!   connection's HTTP/1.1 loop, drain).
//! - [`frontend`]: HTTP and WebSocket handling, JSON-RPC dispatch, local answers, batches.
//! - [`subscription`]: hub, feed, canonical chain view, log filters, the feed's sources.
//! - [`watch`]: balance watch of the Chainlink node's addresses.
//! - [`router`]: candidate order, attempts, failure classes and the retry decision; reads in
//!   flight move when their upstream leaves rotation, and may be hedged; monotonic tags.
//! - [`upstream`]: upstream nodes and their set (candidate order), the HTTP/1.1 client and its
//!   keep-alive connections, health probes and states (failovers and transitions reported to a
//!   `HealthObserve`), their metrics.
//! - [`reload`]: applying a new config to a running server (SIGHUP); uses `state` (the
//!   [`Server`]'s shared parts, `state::Shared`), `server`, `upstream`, `policy`, `watch`.
//! - [`descriptors`]: the open-file limit raised and checked at start.
//! - [`policy`]: deny list, write methods, "lacks the data" errors.
//! - leaves: [`http1`] (request heads, answers, chunked bodies: the wire both the client port
//!   and the upstream client speak), [`config`] (raw TOML validated into [`config::Config`], problems as
//!   [`config::ConfigError`] naming their key), [`jsonrpc`] (framing: raw ids, rewritten
//!   upstream ids, spliced answers; every error code ethgate mints, in [`jsonrpc::code`]),
//!   [`metrics`] (atomic counters, label enums with `ALL` tables, histogram, text format), [`shutdown`] (signals and the drain
//!   tokens), [`connection`] (a client connection's place in `max_connections`), `websocket`
//!   (RFC 6455 frames read in either role: a client's for `frontend::ws`, a node's for
//!   `upstream::ws`).
//!
//! Errors are typed per layer (`thiserror`): [`StartError`] from [`Server::bind`],
//! [`reload::ReloadError`] from a reload, [`config::ConfigErrors`] from loading a file; only the
//! binary uses `anyhow`, to print an error with its causes.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod connection;
pub mod descriptors;
pub mod frontend;
mod gate;
pub mod http1;
pub mod jsonrpc;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod subscription;
pub mod upstream;
pub mod watch;
mod websocket;

mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;
use reload::{ReloadRequest, Reloader};

/// Why ethgate could not start; printed by `main` with its cause (`{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TLS certificate, key or client CA could not be loaded (names the key and file).
    #[error(transparent)]
    Tls(#[from] server::tls::TlsError),
    /// A listener could not be bound; the cause (address in use, permission) is the source.
    #[error("{key}: cannot bind {addr}")]
    Bind {
        /// `server.listen` or `admin.listen`.
        key: &'static str,
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet serving, ethgate instance.
pub struct Server {
    config: Config,
    clients: Vec<TcpListener>,
    admin: TcpListener,
    tls: Option<Arc<server::tls::Tls>>,
    /// Handed out by [`Server::reloader`]; requests arrive on `reload_requests`.
    reloader: Reloader,
    reload_requests: mpsc::Receiver<ReloadRequest>,
}

impl Server {
    /// Binds the client and admin listeners of `config` (port 0 picks a free port) and loads
    /// the TLS material, so every start-up error surfaces before serving.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        // Before any socket exists, so every connection counts against the raised limit.
        descriptors::raise_and_check(&config);
        let tls = match &config.server.tls {
            Some(tls) => Some(Arc::new(server::tls::Tls::load(tls)?)),
            None => None,
        };
        let mut clients = Vec::with_capacity(config.server.listen.len());
        for &addr in &config.server.listen {
            clients.push(listen(addr).map_err(|source| StartError::Bind {
                key: "server.listen",
                addr,
                source,
            })?);
        }
        let admin_addr = config.admin.listen;
        let admin = TcpListener::bind(admin_addr)
            .await
            .map_err(|source| StartError::Bind {
                key: "admin.listen",
                addr: admin_addr,
                source,
            })?;
        let (reloader, reload_requests) = Reloader::channel();
        Ok(Server {
            config,
            clients,
            admin,
            tls,
            reloader,
            reload_requests,
        })
    }

    /// Address of the first client (JSON-RPC) listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs()[0]
    }

    /// Addresses of every client listener, in `server.listen` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.clients
            .iter()
            .zip(&self.config.server.listen)
            .map(|(listener, &configured)| listener.local_addr().unwrap_or(configured))
            .collect()
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin.listen)
    }

    /// A handle that applies new configs to the running server (what SIGHUP uses).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes; then `/readyz` answers 503 while the port keeps
    /// serving for `server.drain_delay`, and the port drains within `server.shutdown_grace`.
    ///
    /// Every start-up failure surfaces in [`Server::bind`]; the `Result` leaves room for one
    /// that can only happen once serving starts.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartError> {
        let Server {
            config,
            clients,
            admin,
            tls,
            reloader: _,
            reload_requests,
        } = self;
        // 1. Shared state.
        let drain = shutdown::Drain::default();
        let state = Arc::new(state::Shared::new(&config, tls, drain.clone()));
        log_access(&config);

        // 2. One probe round before serving, so the first requests find upstreams in rotation.
        state.router.upstreams().probe_all_once().await;

        // 3. Background tasks: probers, subscription feed, balance watch, admin, reloads.
        let stop_tasks = CancellationToken::new();
        let tracker = TaskTracker::new();
        state.spawn_background(&config, admin, &tracker, &stop_tasks);
        tracker.spawn(reload::run(
            state.clone(),
            config.clone(),
            reload_requests,
            tracker.clone(),
            stop_tasks.clone(),
        ));

        // 4. Serve clients until shutdown, keep serving through the drain delay, then drain.
        serve(&state, clients, &config, &drain, shutdown).await;

        // 5. Stop background tasks.
        stop_tasks.cancel();
        tracker.close();
        tracker.wait().await;
        tracing::info!("ethgate stopped");
        Ok(())
    }
}

/// Step 4 of [`Server::run`]: serves the client port until `shutdown`, keeps serving through
/// the drain delay, then drains the port.
async fn serve(
    state: &state::Shared,
    clients: Vec<TcpListener>,
    config: &Config,
    drain: &shutdown::Drain,
    shutdown: impl Future<Output = ()> + Send,
) {
    let listen: Vec<String> = clients
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let port = state.client_port(clients);
    tracing::info!(
        listen = %listen.join(", "),
        tls = port.tls.is_some(),
        upstreams = config.upstreams.len(),
        "ethgate serving"
    );
    let serving = port.run(&config.server, drain.clone());
    tokio::pin!(serving);
    tokio::select! {
        _ = &mut serving => {}
        _ = shutdown => {
            drain_delay(drain, config.server.drain_delay).await;
            tracing::info!("shutdown: no longer accepting connections");
            drain.shutdown.cancel();
            serving.await;
        }
    }
}

/// Marks the server as draining (`/readyz` 503) and waits `delay` while the accept loops, which
/// run as their own tasks, go on serving: the load balancer's health checks see the 503 and
/// stop sending new connections before the port closes.
async fn drain_delay(drain: &shutdown::Drain, delay: std::time::Duration) {
    drain.draining.cancel();
    if delay.is_zero() {
        return;
    }
    tracing::info!(
        ?delay,
        "shutdown requested: /readyz now answers 503; serving for server.drain_delay before closing"
    );
    tokio::time::sleep(delay).await;
}

/// Backlog of the client port: a reconnect storm (every Chainlink node after a restart) must
/// not overflow the kernel's accept queue, which the default of 128 does.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Logs the allowlist in force, warning when it admits everyone.
pub(crate) fn log_access(config: &Config) {
    let allow: Vec<String> = config
        .access
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    if config.access.allow.iter().any(|net| net.prefix_len() == 0) {
        tracing::warn!(allow = %allow.join(", "), "access.allow admits every address");
    } else {
        tracing::info!(allow = %allow.join(", "), "client networks allowed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: SocketAddr, admin: SocketAddr) -> Config {
        Config::from_toml_str(&format!(
            "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n\
             [[upstream]]\nname = \"a\"\nhttp = \"http://127.0.0.1:1\"\n"
        ))
        .expect("valid config")
    }

    fn any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// What `main` prints (`{:#}` through anyhow): the key, the address and the cause.
    fn as_printed(error: StartError) -> String {
        format!("{:#}", anyhow::Error::from(error))
    }

    #[tokio::test]
    async fn a_taken_client_port_names_server_listen_and_the_cause() {
        let taken = std::net::TcpListener::bind(any_port()).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let error = Server::bind(config(addr, any_port()))
            .await
            .err()
            .expect("the port is taken");
        assert!(
            matches!(&error, StartError::Bind { key: "server.listen", addr: a, source }
                if *a == addr && source.kind() == std::io::ErrorKind::AddrInUse),
            "{error:?}"
        );
        let printed = as_printed(error);
        assert!(
            printed.starts_with(&format!("server.listen: cannot bind {addr}: ")),
            "{printed}"
        );
    }

    #[tokio::test]
    async fn a_taken_admin_port_names_admin_listen() {
        let taken = std::net::TcpListener::bind(any_port()).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let error = Server::bind(config(any_port(), addr))
            .await
            .err()
            .expect("the port is taken");
        assert!(
            matches!(&error, StartError::Bind { key: "admin.listen", addr: a, .. } if *a == addr),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("admin.listen: cannot bind {addr}")
        );
    }

    #[tokio::test]
    async fn a_reload_after_the_server_is_gone_says_it_is_not_running() {
        let server = Server::bind(config(any_port(), any_port()))
            .await
            .expect("bind");
        let reloader = server.reloader();
        drop(server);
        let error = reloader
            .reload(config(any_port(), any_port()))
            .await
            .expect_err("no server to apply it");
        assert!(
            matches!(error, reload::ReloadError::NotRunning),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "ethgate is not running");
    }
}
