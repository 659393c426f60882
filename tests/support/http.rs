//! The one HTTP client of the tests (loopback only), the JSON-RPC error object every part of the
//! support speaks (the mock answers with it, clients receive it), and polling with a deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

/// Upper bound of every wait in the test support: generous, since only a bug makes it expire.
pub const WAIT: Duration = Duration::from_secs(10);

/// A JSON-RPC error object (`code`, `message`, optional `data`), as an upstream sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// Error message.
    pub message: String,
    /// Optional `data` member (geth puts revert data here).
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The error object as JSON.
    pub fn to_json(&self) -> Value {
        match &self.data {
            Some(d) => json!({"code": self.code, "message": self.message, "data": d}),
            None => json!({"code": self.code, "message": self.message}),
        }
    }

    /// Reads an error object; a missing or non-integer code reads as 0, a missing message as "".
    pub fn from_json(v: &Value) -> RpcError {
        RpcError {
            code: v["code"].as_i64().unwrap_or(0),
            message: v["message"].as_str().unwrap_or_default().to_string(),
            data: v.get("data").cloned(),
        }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// Why a JSON-RPC call over HTTP gave no result.
#[derive(Debug, Clone)]
pub enum CallError {
    /// Connect/IO error, timeout, non-JSON answer.
    Transport(String),
    /// The server answered with a JSON-RPC error object.
    Rpc(RpcError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(s) => write!(f, "transport: {s}"),
            CallError::Rpc(e) => write!(f, "rpc error: {e}"),
        }
    }
}

/// A failed HTTP exchange: what was asked and what went wrong.
#[derive(Debug, Clone)]
pub struct HttpError(pub String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for String {
    fn from(e: HttpError) -> String {
        e.0
    }
}

/// How requests reach the server.
#[derive(Clone)]
enum Connections {
    /// Keep-alive connections reused across requests (a hot loop such as the devnet driver).
    Pooled(Client<HttpConnector, Full<Bytes>>),
    /// A fresh connection per request, closed after the answer: no idle connection outlives a
    /// call, so a test that counts connections or stops a server sees only its own.
    PerRequest,
}

/// An HTTP/1.1 client for loopback targets; every request is bounded by a timeout.
#[derive(Clone)]
pub struct Http {
    connections: Connections,
    timeout: Duration,
}

impl Default for Http {
    /// A pooled client whose requests give up after `WAIT`.
    fn default() -> Self {
        Http {
            connections: Connections::Pooled(Client::builder(TokioExecutor::new()).build_http()),
            timeout: WAIT,
        }
    }
}

impl Http {
    /// A client that opens one connection per request, giving up after `WAIT`.
    pub fn per_request() -> Http {
        Http::per_request_with_timeout(WAIT)
    }

    /// A client that opens one connection per request, giving up after `timeout`.
    pub fn per_request_with_timeout(timeout: Duration) -> Http {
        Http {
            connections: Connections::PerRequest,
            timeout,
        }
    }

    /// POSTs `body` as application/json with the client's timeout; (status, body).
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Result<(u16, Bytes), HttpError> {
        self.request("POST", url, Some(body.into()), self.timeout)
            .await
    }

    /// GETs `url` with the client's timeout; (status, body).
    pub async fn get(&self, url: &str) -> Result<(u16, Bytes), HttpError> {
        self.request("GET", url, None, self.timeout).await
    }

    /// Sends one request (a body goes as application/json) and returns (status, body), failing
    /// after `timeout`.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), HttpError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| HttpError(format!("bad url {url}: {e}")))?;
        check_loopback(&uri)?;
        let fail = |what: String| HttpError(format!("{method} {url}: {what}"));
        let exchange = async {
            match &self.connections {
                Connections::Pooled(client) => {
                    let req = build(method, uri.clone(), None, body).map_err(fail)?;
                    let resp = client
                        .request(req)
                        .await
                        .map_err(|e| fail(format!("{e:?}")))?;
                    collect(resp).await.map_err(fail)
                }
                Connections::PerRequest => one_shot(method, &uri, body).await.map_err(fail),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(fail(format!("no answer within {timeout:?}"))),
        }
    }

    /// A JSON-RPC call (id 1): the `result`, or the error (transport or JSON-RPC `error`).
    pub async fn rpc(
        &self,
        url: &str,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let (status, bytes) = self
            .request("POST", url, Some(body.to_string().into()), timeout)
            .await
            .map_err(|e| CallError::Transport(e.0))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Transport(format!(
                "{method} @ {url}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            ))
        })?;
        if let Some(err) = v.get("error") {
            return Err(CallError::Rpc(RpcError::from_json(err)));
        }
        v.get("result").cloned().ok_or_else(|| {
            CallError::Transport(format!("{method} @ {url}: HTTP {status}, no result: {v}"))
        })
    }
}

/// A request with a JSON content type when it has a body; `host` is set for a bare connection.
fn build(
    method: &str,
    uri: hyper::Uri,
    host: Option<&str>,
    body: Option<Bytes>,
) -> Result<Request<Full<Bytes>>, String> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    req.body(Full::new(body.unwrap_or_default()))
        .map_err(|e| format!("request: {e}"))
}

async fn collect(resp: hyper::Response<hyper::body::Incoming>) -> Result<(u16, Bytes), String> {
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

/// One request on a connection of its own, closed once the answer is read.
async fn one_shot(
    method: &str,
    uri: &hyper::Uri,
    body: Option<Bytes>,
) -> Result<(u16, Bytes), String> {
    let authority = uri.authority().ok_or("no host")?.clone();
    let path: hyper::Uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| format!("path: {e}"))?;
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = build(method, path, Some(authority.as_str()), body)?;
    let answer = match sender.send_request(req).await {
        Ok(resp) => collect(resp).await,
        Err(e) => Err(format!("{e:?}")),
    };
    driver.abort();
    answer
}

fn check_loopback(uri: &hyper::Uri) -> Result<(), HttpError> {
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if ok {
        Ok(())
    } else {
        Err(HttpError(format!("refusing non-loopback target {uri}")))
    }
}

/// GET `url` once on a connection of its own; (status, body as text).
pub async fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let (s, b) = Http::per_request()
        .request("GET", url, None, timeout)
        .await?;
    Ok((s, String::from_utf8_lossy(&b).into_owned()))
}

/// Polls `check` every `every` until it returns `Some`, or fails with `what` at the deadline.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(every).await;
    }
}
