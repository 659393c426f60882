//! Pooled keep-alive HTTP transport to upstream nodes, with errors classified by whether the
//! request could have reached the node.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_rustls::rustls::ClientConfig;

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

/// One upstream's keep-alive connection pool (plain or TLS), with its credentials.
#[derive(Clone)]
pub struct HttpPool {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    max_response_bytes: usize,
    /// Sent on every request; values are marked sensitive so no debug output shows them.
    headers: Arc<[(HeaderName, HeaderValue)]>,
    /// Set when this upstream's TLS files could not be loaded: every request fails with it.
    broken: Option<Arc<str>>,
}

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
    /// A pool whose connects give up after `connect_timeout`, so a black-holed node surfaces
    /// as "not sent" rather than as a request timeout, and whose answers are read up to
    /// `max_response_bytes`. `https://` URIs are verified against `tls`.
    pub fn new(
        connect_timeout: Duration,
        max_response_bytes: usize,
        tls: Arc<ClientConfig>,
        headers: &Credentials,
    ) -> Self {
        // A new connection resolves the host name again (GaiResolver per connect), so a node
        // that moved to another address is found on the next connect.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        // The TLS layer wraps this connector and takes `https://` itself.
        connector.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        HttpPool {
            client,
            max_response_bytes,
            headers: sensitive_headers(headers).into(),
            broken: None,
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
    pub async fn post(&self, uri: &http::Uri, body: Bytes) -> Result<Bytes, SendError> {
        if let Some(reason) = &self.broken {
            return Err(SendError::NotSent(reason.to_string()));
        }
        let mut request = hyper::Request::post(uri.clone())
            .body(Full::new(body))
            .map_err(|e| SendError::NotSent(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in self.headers.iter() {
            headers.insert(name.clone(), value.clone());
        }
        let response = self.client.request(request).await.map_err(|e| {
            let detail = error_chain(&e);
            if out_of_descriptors(&e) {
                SendError::Local(detail)
            } else if e.is_connect() {
                SendError::NotSent(detail)
            } else {
                SendError::NoAnswer(detail)
            }
        })?;
        let status = response.status();
        if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(SendError::Status(status.as_u16()));
        }
        let limit = self.max_response_bytes;
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(SendError::TooLarge(limit));
        }
        // Chunked answers are counted while they stream: reading stops at the limit, so an
        // answer that never ends, or a huge one, costs at most `limit` bytes.
        match Limited::new(response.into_body(), limit).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(SendError::TooLarge(limit)),
            Err(e) => Err(SendError::NoAnswer(error_chain(e.as_ref()))),
        }
    }
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
