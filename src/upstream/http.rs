//! Pooled keep-alive HTTP transport to upstream nodes, with errors classified by whether the
//! request could have reached the node.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;

mod conn;
mod exchange;

use conn::{Endpoint, Stream};
use exchange::Failure;

use crate::config::{Credentials, UpstreamConfig};

/// Why an HTTP exchange with an upstream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The request never left ethgate (connect refused, connect timeout, DNS).
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have reached the node, but no answer came back (reset, closed).
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// The node answered with an HTTP status that means "try elsewhere" (5xx, 429).
    #[error("HTTP {0}")]
    Status(u16),
    /// The call shared a multiplexed connection that was dropped for another call's answer
    /// (one over `max_response_bytes`): it may have reached the node, but says nothing about it.
    #[error("no answer: {0}")]
    Collateral(String),
    /// The answer is larger than `server.max_response_bytes`; reading stopped at the limit.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// The request never left ethgate for a reason of ethgate's own (out of file descriptors):
    /// says nothing about the node.
    #[error("not sent (local): {0}")]
    Local(String),
}

impl SendError {
    /// Whether the request certainly never reached the node.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(self, SendError::NotSent(_) | SendError::Local(_))
    }

    /// Whether the failure is evidence about the node itself (connect refused or failed, reset
    /// or closed before answering), as opposed to the call or to ethgate.
    pub fn is_node_evidence(&self) -> bool {
        matches!(self, SendError::NotSent(_) | SendError::NoAnswer(_))
    }
}

/// errno values for "too many open files" (process and system-wide), the same on Linux and
/// the BSDs.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Whether an error chain holds an I/O error that means ethgate ran out of descriptors.
fn out_of_descriptors(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(EMFILE | ENFILE)) {
                return true;
            }
        }
        current = e.source();
    }
    false
}

/// One upstream's keep-alive connections (plain or TLS), with its credentials.
#[derive(Clone)]
pub struct HttpPool {
    /// Connections waiting for a request, most recently used last.
    idle: Arc<Mutex<Vec<Idle>>>,
    connect_timeout: Duration,
    max_response_bytes: usize,
    /// Verifies `https://` upstreams; announces HTTP/1.1 by ALPN.
    tls: Arc<ClientConfig>,
    /// Sent on every request; values are marked sensitive so no debug output shows them.
    headers: Arc<[(HeaderName, HeaderValue)]>,
    /// Set when this upstream's TLS files could not be loaded: every request fails with it.
    broken: Option<Arc<str>>,
    /// The URL this pool serves, parsed once.
    target: Arc<OnceLock<Arc<Target>>>,
}

/// A connection between two requests, with its read buffer (which may hold capacity only).
struct Idle {
    /// `scheme://authority` it was opened for.
    origin: Arc<str>,
    stream: Stream,
    buf: BytesMut,
    since: Instant,
}

/// Idle connections older than this are closed rather than reused (hyper's default too).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream; more are closed when returned.
const MAX_IDLE: usize = 512;

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are credentials: names only.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpPool")
            .field("headers", &names)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl HttpPool {
    /// A pool whose connects (and TLS handshakes) give up after `connect_timeout`, so a
    /// black-holed node surfaces as "not sent" rather than as a request timeout, and whose
    /// answers are read up to `max_response_bytes`. `https://` URIs are verified against `tls`.
    pub fn new(
        connect_timeout: Duration,
        max_response_bytes: usize,
        tls: Arc<ClientConfig>,
        headers: &Credentials,
    ) -> Self {
        let mut tls = Arc::unwrap_or_clone(tls);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        HttpPool {
            idle: Arc::default(),
            connect_timeout,
            max_response_bytes,
            tls: Arc::new(tls),
            headers: sensitive_headers(headers).into(),
            broken: None,
            target: Arc::default(),
        }
    }

    /// A pool for one upstream: its TLS settings and headers. TLS files that cannot be loaded
    /// (they were checked at config load, so they changed since) make every request fail
    /// with the reason, which then shows in /status.
    pub fn for_upstream(
        connect_timeout: Duration,
        max_response_bytes: usize,
        upstream: &UpstreamConfig,
    ) -> Self {
        let (tls, broken) = if upstream.uses_tls() {
            match crate::config::upstream_tls::client_config(&upstream.tls) {
                Ok(tls) => (tls, None),
                Err(reason) => (
                    crate::config::upstream_tls::plain_only(),
                    Some(reason.into()),
                ),
            }
        } else {
            (crate::config::upstream_tls::plain_only(), None)
        };
        let mut pool = Self::new(connect_timeout, max_response_bytes, tls, &upstream.headers);
        pool.broken = broken;
        pool
    }

    /// The largest answer read.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// POSTs a JSON body and returns the answer's body.
    pub async fn post(&self, uri: &http::Uri, body: &[u8]) -> Result<Bytes, SendError> {
        if let Some(reason) = &self.broken {
            return Err(SendError::NotSent(reason.to_string()));
        }
        let target = self.target(uri)?;
        let request = (&target.head_start[..], body);
        loop {
            let (mut conn, reused) = match self.checkout(&target.origin) {
                Some(conn) => (conn, true),
                // Boxed: a connect with its TLS handshake is a large future that every call
                // would otherwise carry (and move) although most reuse a connection.
                None => (Box::pin(self.connect(&target)).await?, false),
            };
            let limit = self.max_response_bytes;
            let answer =
                match exchange::exchange(&mut conn.stream, &mut conn.buf, request, limit).await {
                    Ok(answer) => answer,
                    // A kept-alive connection the node closed meanwhile: the request never left,
                    // so it goes out on another connection.
                    Err(Failure::NotWritten(_)) if reused => continue,
                    Err(Failure::NotWritten(e)) => return Err(SendError::NotSent(e.to_string())),
                    Err(Failure::NoAnswer(detail)) => return Err(SendError::NoAnswer(detail)),
                    Err(Failure::TooLarge) => return Err(SendError::TooLarge(limit)),
                };
            if exchange::is_retry_status(answer.status) {
                return Err(SendError::Status(answer.status));
            }
            if answer.reusable {
                self.check_in(conn);
            }
            return Ok(answer.body);
        }
    }

    /// What a request to `uri` needs, worked out on the first call and kept: a pool serves
    /// one upstream URL, so later calls find it ready. Another URL gets its own, unkept.
    fn target(&self, uri: &http::Uri) -> Result<Arc<Target>, SendError> {
        if let Some(target) = self.target.get().filter(|t| same_uri(&t.uri, uri)) {
            return Ok(target.clone());
        }
        let target = Arc::new(Target::of(uri, &self.tls, &self.headers)?);
        let _ = self.target.set(target.clone());
        Ok(target)
    }

    /// The most recently used idle connection to `origin` that is still open.
    fn checkout(&self, origin: &str) -> Option<Idle> {
        let mut idle = lock(&self.idle);
        while let Some(position) = idle.iter().rposition(|c| &*c.origin == origin) {
            // `remove`, not `swap_remove`: the list stays ordered by `since` (almost always
            // the last one is taken, which moves nothing).
            let conn = idle.remove(position);
            if conn.since.elapsed() < IDLE_TIMEOUT && conn.stream.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    fn check_in(&self, mut conn: Idle) {
        let now = Instant::now();
        conn.since = now;
        let mut idle = lock(&self.idle);
        // Connections a steady load never reaches (the list is used last-in first-out) are
        // closed here once past the idle timeout, instead of holding their descriptors. The
        // list is ordered by `since`, so they are at its front.
        let expired = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    async fn connect(&self, target: &Target) -> Result<Idle, SendError> {
        let stream = Stream::connect(&target.endpoint, self.connect_timeout)
            .await
            .map_err(|e| {
                let detail = format!("connect: {}", error_chain(&e));
                if out_of_descriptors(&e) {
                    SendError::Local(detail)
                } else {
                    SendError::NotSent(detail)
                }
            })?;
        Ok(Idle {
            origin: target.origin.clone(),
            stream,
            buf: BytesMut::new(),
            since: Instant::now(),
        })
    }
}

/// Byte-for-byte equality: `Uri`'s own compares the host without regard to case, which cost
/// more than the rest of a pool lookup. The URL is always the pool's own, as configured.
fn same_uri(a: &http::Uri, b: &http::Uri) -> bool {
    a.scheme_str() == b.scheme_str()
        && a.authority().map(|x| x.as_str()) == b.authority().map(|x| x.as_str())
        && a.path_and_query().map(|x| x.as_str()) == b.path_and_query().map(|x| x.as_str())
}

/// One upstream URL, parsed for requests.
struct Target {
    uri: http::Uri,
    endpoint: Endpoint,
    /// `scheme://authority`: the key of idle connections.
    origin: Arc<str>,
    /// Every request's head up to its length, credentials included (so never logged).
    head_start: Vec<u8>,
}

impl Target {
    fn of(
        uri: &http::Uri,
        tls: &Arc<ClientConfig>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Target, SendError> {
        let (Some(endpoint), Some(authority)) = (Endpoint::of(uri, tls), uri.authority()) else {
            return Err(SendError::NotSent(format!("not an http(s) URL: {uri}")));
        };
        Ok(Target {
            uri: uri.clone(),
            endpoint,
            origin: format!("{}://{authority}", uri.scheme_str().unwrap_or("http")).into(),
            head_start: exchange::head_start(
                uri.path_and_query().map_or("/", |p| p.as_str()),
                authority.as_str(),
                headers,
            ),
        })
    }
}

/// The pool's lock; a panic elsewhere while holding it leaves a list that is still valid.
fn lock(idle: &Mutex<Vec<Idle>>) -> std::sync::MutexGuard<'_, Vec<Idle>> {
    idle.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Parses validated header pairs, marking every value sensitive.
pub fn sensitive_headers(headers: &Credentials) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .0
        .iter()
        .filter_map(|(name, value)| {
            // Validated at config load; a pair that fails here is skipped rather than sent.
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let mut value = HeaderValue::from_str(value).ok()?;
            value.set_sensitive(true);
            Some((name, value))
        })
        .collect()
}

/// Joins an error with its sources: hyper's top-level messages alone say little.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests;
