//! ethgate: a JSON-RPC failover proxy for Ethereum clients.
//!
//! Clients (Chainlink nodes) send JSON-RPC over HTTP to one endpoint; ethgate health-checks
//! several Ethereum clients and forwards each call to a healthy, in-sync one, sticking to it
//! while it stays healthy and failing over when it does not.
//!
//! # Layout
//!
//! - [`config`]: raw TOML structs validated into a typed [`config::Config`].
//! - [`server`]: the client port's accept loop (connection limit, allowlist, graceful drain).
//! - [`frontend`]: request limits, JSON-RPC decoding, local answers, batch assembly.
//! - [`jsonrpc`]: framing: ids kept as raw bytes, upstream ids rewritten, answers spliced.
//! - [`policy`]: deny list, write methods, "lacks the data" errors.
//! - [`router`]: candidate order, attempts, failure classes and the retry decision.
//! - [`upstream`]: upstream nodes, the shared HTTP pool, health probes and states.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/metrics`.
//! - [`metrics`]: atomic counters and their Prometheus rendering.
//! - [`shutdown`]: SIGINT/SIGTERM handling.
//! - [`watch`]: balance watch of the Chainlink node's addresses.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod frontend;
pub mod jsonrpc;
pub mod metrics;
pub mod policy;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod subscription;
pub mod upstream;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;

/// A bound, not yet serving, ethgate instance.
pub struct Server {
    config: Config,
    client: TcpListener,
    admin: TcpListener,
    tls: Option<Arc<server::tls::Tls>>,
}

impl Server {
    /// Binds the client and admin listeners of `config` (port 0 picks a free port).
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let tls = match &config.server.tls {
            Some(tls) => Some(Arc::new(server::tls::Tls::load(tls)?)),
            None => None,
        };
        let client = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("server.listen: cannot bind {}", config.server.listen))?;
        let admin = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("admin.listen: cannot bind {}", config.admin.listen))?;
        Ok(Server {
            config,
            client,
            admin,
            tls,
        })
    }

    /// Address of the client (JSON-RPC) listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.client
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or(self.config.admin.listen)
    }

    /// The TLS material, for reloading certificates (SIGHUP) while serving.
    pub fn tls(&self) -> Option<Arc<server::tls::Tls>> {
        self.tls.clone()
    }

    /// Serves until `shutdown` completes, then drains within `server.shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Server {
            config,
            client,
            admin,
            tls,
        } = self;
        // 1. Shared state.
        let drain = server::Drain::default();
        let state = State::new(&config, drain.clone());
        let access = Arc::new(server::access::Access::new(&config.access));
        log_access(&config);

        // 2. One probe round before serving, so the first requests find upstreams in rotation.
        state.upstreams.probe_all_once().await;

        // 3. Background tasks: probers, subscription feed, balance watch, admin listener.
        let stop_tasks = CancellationToken::new();
        let tracker = TaskTracker::new();
        state.spawn_background(&config, admin, &tracker, &stop_tasks);

        // 4. Serve clients until shutdown, then drain.
        let port = server::ClientPort {
            listener: client,
            frontend: state.frontend,
            access,
            tls,
            connections: state.connections,
        };
        tracing::info!(
            listen = %port.listener.local_addr()?,
            tls = port.tls.is_some(),
            upstreams = config.upstreams.len(),
            "ethgate serving"
        );
        let serving = port.run(&config.server, drain.clone());
        tokio::pin!(serving);
        tokio::select! {
            _ = &mut serving => {}
            _ = shutdown => {
                tracing::info!("shutdown requested: no longer accepting connections");
                drain.shutdown.cancel();
                serving.await;
            }
        }

        // 5. Stop background tasks.
        stop_tasks.cancel();
        tracker.close();
        tracker.wait().await;
        tracing::info!("ethgate stopped");
        Ok(())
    }
}

/// Everything shared between the client port, the admin port and background tasks.
struct State {
    metrics: Arc<metrics::Metrics>,
    upstreams: Arc<upstream::Upstreams>,
    router: Arc<router::Router>,
    hub: Arc<subscription::Hub>,
    frontend: Arc<frontend::Frontend>,
    connections: Arc<server::ConnectionCount>,
}

impl State {
    fn new(config: &Config, drain: server::Drain) -> State {
        let metrics = Arc::new(metrics::Metrics::new(config.upstreams.len()));
        let upstreams = Arc::new(upstream::Upstreams::new(config, metrics.clone()));
        let router = Arc::new(router::Router::new(
            upstreams.clone(),
            config.server.request_timeout,
            metrics.clone(),
        ));
        let hub = Arc::new(subscription::Hub::new());
        let frontend = Arc::new(frontend::Frontend {
            router: router.clone(),
            hub: hub.clone(),
            deny: policy::DenyList::new(&config.access.deny_methods),
            max_batch_len: config.server.max_batch_len,
            max_request_bytes: config.server.max_request_bytes,
            metrics: metrics.clone(),
            ws_queue_len: config.server.ws_queue_len,
            drain,
        });
        State {
            metrics,
            upstreams,
            router,
            hub,
            frontend,
            connections: Arc::new(server::ConnectionCount::default()),
        }
    }

    fn spawn_background(
        &self,
        config: &Config,
        admin: TcpListener,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) {
        self.upstreams.spawn_probers(tracker, stop);
        let health = &config.health;
        let feed_settings = subscription::feed::FeedSettings {
            grace: config.server.subscription_grace,
            request_timeout: config.server.request_timeout,
            connect_timeout: config.server.request_timeout.min(health.interval * 2),
            ping_after: health.interval,
            dead_after: health.interval * 2 + health.timeout,
            check_every: health.interval,
        };
        let feed = subscription::feed::Feed::new(
            self.hub.clone(),
            self.upstreams.clone(),
            self.metrics.clone(),
            feed_settings,
        );
        tracker.spawn(feed.run(stop.clone()));
        let balances = Arc::new(watch::Balances::new(&config.watch));
        balances.spawn(&self.router, tracker, stop);
        let admin_state = Arc::new(admin::Admin {
            upstreams: self.upstreams.clone(),
            metrics: self.metrics.clone(),
            connections: self.connections.clone(),
            balances,
            hub: self.hub.clone(),
        });
        tracker.spawn(admin_state.run(admin, tracker.clone(), stop.clone()));
    }
}

fn log_access(config: &Config) {
    let allow: Vec<String> = config
        .access
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    let everyone = config.access.allow.iter().any(|net| net.prefix_len() == 0);
    if everyone {
        tracing::warn!(allow = ?allow, "access.allow admits every address");
    } else {
        tracing::info!(allow = ?allow, "client networks allowed");
    }
}
