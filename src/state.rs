//! Everything shared between the client port, the admin port, background tasks and reloads.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::{admin, frontend, metrics, policy, router, server, subscription, upstream, watch};

/// Shared state; the parts a reload may change sit behind `ArcSwap`.
pub(crate) struct Shared {
    pub metrics: Arc<metrics::Metrics>,
    pub router: Arc<router::Router>,
    pub hub: Arc<subscription::Hub>,
    pub feed: Arc<subscription::feed::FeedStatus>,
    /// The feed's timings from `[health]`: a reload sends new ones.
    pub feed_timings: subscription::timings::TimingsControl,
    pub frontend: Arc<frontend::Frontend>,
    pub access: Arc<ArcSwap<server::access::Access>>,
    pub tls: Option<Arc<server::tls::Tls>>,
    pub connections: Arc<crate::connection::ConnectionCount>,
    pub balances: Arc<ArcSwap<watch::Balances>>,
    /// Stops the probers of the current upstream set (replaced on reload).
    pub probers: Mutex<CancellationToken>,
    /// Stops the balance watchers of the current `[[watch]]` list (replaced on reload).
    pub watchers: Mutex<CancellationToken>,
}

impl Shared {
    pub fn new(
        config: &Config,
        tls: Option<Arc<server::tls::Tls>>,
        drain: crate::shutdown::Drain,
    ) -> Shared {
        let metrics = Arc::new(metrics::Metrics::new());
        let upstreams = Arc::new(upstream::Upstreams::new(config, metrics.clone()));
        let router = Arc::new(
            router::Router::new(upstreams, config.server.request_timeout, metrics.clone())
                .with_hedge_after(config.server.hedge_after),
        );
        let hub = Arc::new(subscription::Hub::new(subscription::Limits {
            per_connection: config.server.max_subscriptions_per_connection,
            total: config.server.max_subscriptions,
        }));
        let frontend = Arc::new(frontend::Frontend {
            router: router.clone(),
            hub: hub.clone(),
            deny: ArcSwap::from_pointee(policy::DenyList::new(&config.access.deny_methods)),
            max_batch_len: config.server.max_batch_len,
            max_request_bytes: config.server.max_request_bytes,
            body_timeout: config.server.body_timeout,
            metrics: metrics.clone(),
            ws_queue: subscription::QueueLimits {
                messages: config.server.ws_queue_len,
                bytes: config.server.ws_queue_bytes,
            },
            drain,
        });
        Shared {
            metrics,
            router,
            hub,
            feed: Arc::default(),
            feed_timings: subscription::timings::TimingsControl::new(
                &config.health,
                config.server.request_timeout,
            ),
            frontend,
            access: Arc::new(ArcSwap::from_pointee(server::access::Access::new(
                &config.access,
            ))),
            tls,
            connections: Arc::new(crate::connection::ConnectionCount::default()),
            balances: Arc::new(ArcSwap::from_pointee(watch::Balances::new(&config.watch))),
            probers: Mutex::new(CancellationToken::new()),
            watchers: Mutex::new(CancellationToken::new()),
        }
    }

    /// Starts probers, the subscription feed (timed by `feed_timings`, which reloads update),
    /// balance watchers and the admin listener.
    pub fn spawn_background(
        &self,
        config: &Config,
        admin: TcpListener,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) {
        self.restart_probers(tracker, stop);
        self.restart_watchers(tracker, stop);
        let pool = subscription::pool::RouterPool {
            router: self.router.clone(),
        };
        let feed_settings = subscription::feed::FeedSettings {
            grace: config.server.subscription_grace,
            request_timeout: config.server.request_timeout,
        };
        let feed = subscription::feed::Feed::new(
            self.hub.clone(),
            pool,
            self.metrics.clone(),
            feed_settings,
            self.feed_timings.subscribe(),
            self.feed.clone(),
        );
        tracker.spawn(feed.run(stop.clone()));
        let admin_state = Arc::new(admin::Admin {
            router: self.router.clone(),
            metrics: self.metrics.clone(),
            connections: self.connections.clone(),
            balances: self.balances.clone(),
            hub: self.hub.clone(),
            feed: self.feed.clone(),
            draining: self.frontend.drain.draining.clone(),
            header_timeout: config.server.header_timeout,
            write_timeout: config.server.write_timeout,
        });
        tracker.spawn(admin_state.run(admin, tracker.clone(), stop.clone()));
    }

    /// Stops the probers of the previous upstream set and probes the current one.
    pub fn restart_probers(&self, tracker: &TaskTracker, stop: &CancellationToken) {
        let token = stop.child_token();
        let previous = std::mem::replace(&mut *lock(&self.probers), token.clone());
        previous.cancel();
        self.router.upstreams().spawn_probers(tracker, &token);
    }

    /// Stops the previous balance watchers and starts the current ones.
    pub fn restart_watchers(&self, tracker: &TaskTracker, stop: &CancellationToken) {
        let token = stop.child_token();
        let previous = std::mem::replace(&mut *lock(&self.watchers), token.clone());
        previous.cancel();
        self.balances.load().spawn(&self.router, tracker, &token);
    }

    /// The client port over `listeners`.
    pub fn client_port(&self, listeners: Vec<TcpListener>) -> server::ClientPort {
        server::ClientPort {
            listeners,
            frontend: self.frontend.clone(),
            access: self.access.clone(),
            tls: self.tls.clone(),
            connections: self.connections.clone(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Tokens are swapped whole: a poisoned lock still holds a usable token.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
