//! Pooled keep-alive HTTP transport to upstream nodes, with errors classified by whether the
//! request could have reached the node.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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

/// A shared connection pool for every upstream.
#[derive(Clone)]
pub struct HttpPool {
    client: Client<HttpConnector, Full<Bytes>>,
    max_response_bytes: usize,
}

impl HttpPool {
    /// A pool whose connects give up after `connect_timeout`, so a black-holed node surfaces
    /// as "not sent" rather than as a request timeout, and whose answers are read up to
    /// `max_response_bytes`.
    pub fn new(connect_timeout: Duration, max_response_bytes: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        HttpPool {
            client,
            max_response_bytes,
        }
    }

    /// POSTs a JSON body and returns the answer's body.
    pub async fn post(&self, uri: &http::Uri, body: Bytes) -> Result<Bytes, SendError> {
        let mut request = hyper::Request::post(uri.clone())
            .body(Full::new(body))
            .map_err(|e| SendError::NotSent(e.to_string()))?;
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
