//! The admin listener: `/healthz`, `/readyz`, `/status` and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::ConnectionCount;
use crate::metrics::Metrics;
use crate::router::Router;
use crate::server::write_timeout::WriteTimeout;
use crate::subscription::Kind;
use crate::watch::Balances;

/// What the admin endpoints report on.
pub struct Admin {
    /// The router, holding the current upstream set.
    pub router: Arc<Router>,
    /// Metric registry.
    pub metrics: Arc<Metrics>,
    /// Open client connections.
    pub connections: Arc<ConnectionCount>,
    /// Watched balances.
    pub balances: Arc<arc_swap::ArcSwap<Balances>>,
    /// Client subscriptions.
    pub hub: Arc<crate::subscription::Hub>,
    /// The subscription feed's source and last delivered head.
    pub feed: Arc<crate::subscription::feed::FeedStatus>,
    /// Cancelled when shutdown begins: `/readyz` then answers 503 whatever the upstreams.
    pub draining: CancellationToken,
    /// Deadline for a request head (`server.header_timeout`).
    pub header_timeout: Duration,
    /// How long a client may accept no bytes (`server.write_timeout`).
    pub write_timeout: Duration,
}

/// Open admin connections at most; more wait in the backlog. Scrapers and probes need a
/// handful; the cap keeps a flood on the admin port from costing memory or descriptors.
pub const MAX_CONNECTIONS: usize = 64;

/// Whether `addr` is reachable from other hosts: the admin port has no access control.
pub fn is_exposed(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

impl Admin {
    /// Serves the admin listener until `shutdown`; connections are tracked on `tracker`.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        if let Ok(addr) = listener.local_addr() {
            if is_exposed(addr) {
                tracing::warn!(
                    %addr,
                    "admin.listen is not a loopback address: /status and /metrics are open to \
                     anyone who can reach it (there is no allowlist on the admin port)"
                );
            }
        }
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            tracker.spawn(
                self.clone()
                    .serve(stream, shutdown.clone())
                    .map(move |()| drop(permit)),
            );
        }
    }

    /// Serves one admin connection until it ends or `shutdown`.
    async fn serve(self: Arc<Self>, stream: tokio::net::TcpStream, shutdown: CancellationToken) {
        let write_timeout = self.write_timeout;
        let header_timeout = self.header_timeout;
        let service = service_fn(move |request| {
            let admin = self.clone();
            async move { Ok::<_, Infallible>(admin.handle(&request)) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let io = WriteTimeout::new(stream, write_timeout);
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::select! {
            _ = connection => {}
            _ = shutdown.cancelled() => {}
        }
    }

    fn handle(&self, request: &Request<Incoming>) -> HttpResponse {
        if request.method() != Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match request.uri().path() {
            "/healthz" => plain(StatusCode::OK, "ok"),
            "/readyz" if self.draining.is_cancelled() => {
                plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" if self.router.upstreams().any_in_rotation() => {
                plain(StatusCode::OK, "ready")
            }
            "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "no upstream in rotation"),
            "/status" => typed(self.status().to_string(), "application/json"),
            "/metrics" => {
                let mut text = self.metrics.render();
                let upstreams = self.router.upstreams();
                crate::upstream::metrics::render(&mut text, &upstreams);
                crate::upstream::metrics::render_requests(&mut text, &upstreams);
                self.balances.load().render(&mut text);
                self.render_subscriptions(&mut text);
                typed(text, "text/plain; version=0.0.4")
            }
            _ => plain(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        let set = self.router.upstreams();
        let selected = set.selected();
        let upstreams: Vec<_> = set
            .all()
            .iter()
            .map(|u| {
                json!({
                    "name": u.name(),
                    "state": u.state().as_str(),
                    "head": u.head(),
                    "safe": u.safe(),
                    "finalized": u.finalized(),
                    "lag": set.lag(u),
                    "latency_ms": u.latency().as_secs_f64() * 1000.0,
                    "priority": u.config.priority,
                    "selected": selected.is_some_and(|s| Arc::ptr_eq(s, u)),
                    // Why an unreachable upstream is so (connect or TLS error); null otherwise.
                    "reason": set.unreachable_reason(u),
                })
            })
            .collect();
        let [latest, safe, finalized] = self.router.marks().snapshot();
        json!({
            "chain_id": set.chain_id(),
            "upstreams": upstreams,
            "served": {"latest": latest, "safe": safe, "finalized": finalized},
            "connections": self.connections.get(),
            "subscriptions": {
                "newHeads": self.hub.count(Kind::NewHeads),
                "logs": self.hub.count(Kind::Logs),
                "newPendingTransactions": self.hub.count(Kind::NewPendingTransactions),
                "syncing": self.hub.count(Kind::Syncing),
            },
            "balances": self.balances.load().status(),
            "feed": self.feed_status(),
        })
    }

    /// The feed's part of `/status`: which upstream feeds subscriptions, the last head
    /// delivered, and how long ago (a growing age while upstreams advance is a stuck feed).
    fn feed_status(&self) -> serde_json::Value {
        let feed = self.feed.snapshot();
        json!({
            "source": feed.source.as_deref(),
            "head": feed.head,
            "head_age_seconds": feed.head_age.map(|age| age.as_secs_f64()),
        })
    }
}

impl Admin {
    fn render_subscriptions(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP ethgate_subscriptions Client subscriptions by kind."
        );
        let _ = writeln!(out, "# TYPE ethgate_subscriptions gauge");
        for kind in Kind::ALL {
            let _ = writeln!(
                out,
                "ethgate_subscriptions{{kind=\"{}\"}} {}",
                kind.as_str(),
                self.hub.count(kind)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ethgate_subscription_head_age_seconds Time since the feed last delivered a new head (absent before the first)."
        );
        let _ = writeln!(out, "# TYPE ethgate_subscription_head_age_seconds gauge");
        if let Some(age) = self.feed.snapshot().head_age {
            let _ = writeln!(
                out,
                "ethgate_subscription_head_age_seconds {:.3}",
                age.as_secs_f64()
            );
        }
    }
}

fn typed(body: String, content_type: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Response type of every admin handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// A plain-text response with `status`.
pub fn plain(status: StatusCode, text: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    if !text.is_empty() {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_admin_addresses_are_private() {
        assert!(!is_exposed("127.0.0.1:9545".parse().expect("addr")));
        assert!(!is_exposed("[::1]:9545".parse().expect("addr")));
        assert!(is_exposed("0.0.0.0:9545".parse().expect("addr")));
        assert!(is_exposed("10.0.0.5:9545".parse().expect("addr")));
    }
}
