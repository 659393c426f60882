//! Pooled keep-alive HTTP transport to upstream nodes, with errors classified by whether the
//! request could have reached the node.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
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
}

/// A shared connection pool for every upstream.
#[derive(Clone)]
pub struct HttpPool {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpPool {
    /// A pool whose connects give up after `connect_timeout`, so a black-holed node surfaces
    /// as "not sent" rather than as a request timeout.
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        HttpPool { client }
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
            if e.is_connect() {
                SendError::NotSent(detail)
            } else {
                SendError::NoAnswer(detail)
            }
        })?;
        let status = response.status();
        if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(SendError::Status(status.as_u16()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SendError::NoAnswer(error_chain(&e)))?;
        Ok(body.to_bytes())
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
