//! ethgate in-process for integration tests, and a tiny HTTP client to speak to it.

use super::{MockUpstream, WAIT};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A one-connection-per-request HTTP/1.1 client; every call is bounded by its timeout.
#[derive(Clone, Debug)]
pub struct HttpClient {
    timeout: Duration,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient { timeout: WAIT }
    }
}

impl HttpClient {
    /// A client whose requests give up after `WAIT`.
    pub fn new() -> HttpClient {
        HttpClient::default()
    }

    /// A client whose requests give up after `timeout`.
    pub fn with_timeout(timeout: Duration) -> HttpClient {
        HttpClient { timeout }
    }

    /// POSTs `body` as application/json; returns (status, body).
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> anyhow::Result<(u16, Bytes)> {
        self.send("POST", url, body.into()).await
    }

    /// GETs `url`; returns (status, body).
    pub async fn get(&self, url: &str) -> anyhow::Result<(u16, Bytes)> {
        self.send("GET", url, Bytes::new()).await
    }

    /// Sends any HTTP method with `body`; returns (status, body).
    pub async fn send(&self, method: &str, url: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        match tokio::time::timeout(self.timeout, exchange(method, url, body)).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("{method} {url}: no answer within {:?}", self.timeout),
        }
    }
}

async fn exchange(method: &str, url: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?
        .clone();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority.as_str())
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok((status, bytes))
}

/// Builder of an ethgate TOML config with fast health settings for tests.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    top: Vec<(String, String)>,
    server: Vec<(String, String)>,
    health: Vec<(String, String)>,
    access: Vec<(String, String)>,
    upstreams: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        GatewayConfig {
            top: Vec::new(),
            server: kv(&[
                ("listen", "\"127.0.0.1:0\""),
                ("request_timeout", "\"2s\""),
                ("shutdown_grace", "\"5s\""),
                // Tests that stop the gateway need no balancer to notice; the drain tests set it.
                ("drain_delay", "\"0s\""),
            ]),
            health: kv(&[
                ("interval", "\"300ms\""),
                ("timeout", "\"250ms\""),
                ("failure_threshold", "3"),
                ("recovery_threshold", "1"),
                ("max_lag_blocks", "5"),
            ]),
            access: Vec::new(),
            upstreams: Vec::new(),
        }
    }
}

fn set(list: &mut Vec<(String, String)>, key: &str, value: &str) {
    list.retain(|(k, _)| k != key);
    list.push((key.to_string(), value.to_string()));
}

impl GatewayConfig {
    /// Loopback listeners on free ports, request_timeout 2s, health every 300ms (timeout 250ms, 3 failures
    /// out, 1 success back, lag 5). The probe timeout is generous so a loaded CI machine does not make a
    /// healthy mock look unreachable; state changes still show within about a second.
    pub fn new() -> GatewayConfig {
        GatewayConfig::default()
    }

    /// Sets the top-level `chain_id`.
    pub fn chain_id(mut self, id: u64) -> Self {
        set(&mut self.top, "chain_id", &id.to_string());
        self
    }

    /// Sets `[server] key = value` (`value` is TOML: quote strings).
    pub fn server(mut self, key: &str, value: &str) -> Self {
        set(&mut self.server, key, value);
        self
    }

    /// Sets `[health] key = value` (`value` is TOML).
    pub fn health(mut self, key: &str, value: &str) -> Self {
        set(&mut self.health, key, value);
        self
    }

    /// Sets `[access] key = value` (`value` is TOML).
    pub fn access(mut self, key: &str, value: &str) -> Self {
        set(&mut self.access, key, value);
        self
    }

    /// Adds an `[[upstream]]` with the mock's HTTP and WS URLs.
    pub fn upstream(mut self, name: &str, mock: &MockUpstream, priority: u32) -> Self {
        self.upstreams.push(format!(
            "[[upstream]]\nname = \"{name}\"\nhttp = \"{}\"\nws = \"{}\"\npriority = {priority}\n",
            mock.http_url(),
            mock.ws_url()
        ));
        self
    }

    /// Adds an `[[upstream]]` with only an HTTP URL.
    pub fn upstream_http(mut self, name: &str, http: &str, priority: u32) -> Self {
        self.upstreams.push(format!(
            "[[upstream]]\nname = \"{name}\"\nhttp = \"{http}\"\npriority = {priority}\n"
        ));
        self
    }

    /// The TOML document.
    pub fn to_toml(&self) -> String {
        let lines = |list: &[(String, String)]| -> String {
            list.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
        };
        let mut out = lines(&self.top);
        out += &format!("\n[server]\n{}", lines(&self.server));
        out += &format!("\n[health]\n{}", lines(&self.health));
        if !self.access.is_empty() {
            out += &format!("\n[access]\n{}", lines(&self.access));
        }
        for u in &self.upstreams {
            out += &format!("\n{u}");
        }
        out += "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
        out
    }
}

/// An ethgate server running in-process; dropping it triggers shutdown.
pub struct Gateway {
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    admin: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ethgate::StartError>>>,
    client: HttpClient,
}

impl Gateway {
    /// Starts ethgate with `config`; panics with the config problems if it is refused.
    pub async fn start(config: &GatewayConfig) -> Gateway {
        Gateway::start_toml(&config.to_toml()).await
    }

    /// Starts ethgate with a TOML document.
    pub async fn start_toml(toml: &str) -> Gateway {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let config = ethgate::config::Config::from_toml_str(toml)
            .unwrap_or_else(|e| panic!("config refused:\n{e}\n---\n{toml}"));
        let server = ethgate::Server::bind(config).await.expect("ethgate: bind");
        let (addr, admin) = (server.local_addr(), server.admin_addr());
        let addrs = server.local_addrs();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone().cancelled_owned()));
        Gateway {
            addr,
            addrs,
            admin,
            shutdown,
            task: Some(task),
            client: HttpClient::new(),
        }
    }

    /// Starts ethgate in front of `a` (priority 0) and `b` (priority 1) and waits until both are healthy.
    pub async fn start_pair(config: GatewayConfig, a: &MockUpstream, b: &MockUpstream) -> Gateway {
        let gw = Gateway::start(&config.upstream("a", a, 0).upstream("b", b, 1)).await;
        gw.wait_all_healthy().await;
        gw
    }

    /// Address of the JSON-RPC listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Addresses of every JSON-RPC listener, in `server.listen` order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://ADDR/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `ws://ADDR/`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// POSTs a raw body to the JSON-RPC port; returns (status, body).
    pub async fn post(&self, body: &str) -> (u16, Bytes) {
        self.client
            .post(&self.url(), body.to_string())
            .await
            .unwrap_or_else(|e| panic!("POST {body}: {e}"))
    }

    /// POSTs a raw body and parses the 200 JSON answer.
    pub async fn rpc(&self, body: &str) -> Value {
        let (status, bytes) = self.post(body).await;
        assert_eq!(status, 200, "POST {body}: status {status}, body {bytes:?}");
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("POST {body}: answer is not JSON ({e}): {bytes:?}"))
    }

    /// Calls `method` with `params` (id 1) and returns the whole response object.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        self.rpc(&body.to_string()).await
    }

    /// GETs an admin path; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, Bytes) {
        let url = format!("http://{}{path}", self.admin);
        self.client
            .get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The parsed `/status` document.
    pub async fn status(&self) -> Value {
        let (code, body) = self.admin_get("/status").await;
        assert_eq!(code, 200, "/status answered {code}: {body:?}");
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body:?}"))
    }

    /// The `/status` entry of upstream `name`.
    pub async fn upstream_status(&self, name: &str) -> Value {
        upstream_entry(&self.status().await, name)
            .unwrap_or_else(|| panic!("/status has no upstream {name}"))
    }

    /// Polls `/status` (at most `WAIT`) until `pred` holds; returns that status. Panics with the last one.
    pub async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let status = self.status().await;
            if pred(&status) {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what}; last /status: {status}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until upstream `name` is in `state`.
    pub async fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait_status(&format!("{name} {state}"), |s| {
            upstream_entry(s, name).is_some_and(|u| u["state"] == state)
        })
        .await
    }

    /// Waits until every upstream is healthy.
    pub async fn wait_all_healthy(&self) -> Value {
        self.wait_status("all upstreams healthy", |s| {
            s["upstreams"]
                .as_array()
                .is_some_and(|us| !us.is_empty() && us.iter().all(|u| u["state"] == "healthy"))
        })
        .await
    }

    /// Waits until upstream `name` is the selected one.
    pub async fn wait_selected(&self, name: &str) -> Value {
        self.wait_status(&format!("{name} selected"), |s| {
            upstream_entry(s, name).is_some_and(|u| u["selected"] == true)
        })
        .await
    }

    /// Polls `/readyz` (at most `WAIT`) until it answers `code`.
    pub async fn wait_readyz(&self, code: u16) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (got, body) = self.admin_get("/readyz").await;
            if got == code {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "/readyz stayed {got} ({body:?}), wanted {code}; /status: {}",
                    self.status().await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers shutdown without waiting.
    pub fn trigger_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Triggers shutdown and returns what `Server::run` returned (panics if it takes longer than `WAIT`).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("gateway task present until stop");
        match tokio::time::timeout(WAIT, task).await {
            Ok(joined) => Ok(joined.unwrap_or_else(|e| panic!("Server::run panicked: {e}"))?),
            Err(_) => panic!("Server::run did not return within {WAIT:?} of shutdown"),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `/status` entry of upstream `name`.
pub fn upstream_entry(status: &Value, name: &str) -> Option<Value> {
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
}

/// The `result` of a response object; panics (showing the response) when it is an error.
pub fn result_of(response: &Value) -> Value {
    assert!(
        response.get("error").is_none(),
        "expected a result, got {response}"
    );
    response
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("no result in {response}"))
}

/// The (code, message) of a response's error; panics (showing the response) when it has none.
pub fn error_of(response: &Value) -> (i64, String) {
    let e = response
        .get("error")
        .unwrap_or_else(|| panic!("expected an error, got {response}"));
    let code = e["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("error without integer code: {response}"));
    (code, e["message"].as_str().unwrap_or_default().to_string())
}

/// Address whose `eth_getBalance` tells the upstreams of [`tagged_pair`] apart.
pub const TAGGED_ADDRESS: &str = "0x00000000000000000000000000000000000000aa";

/// Two mocks whose eth_getBalance answers tell them apart: "0xa" and "0xb".
pub async fn tagged_pair() -> (MockUpstream, MockUpstream) {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_result("eth_getBalance", json!("0xa"));
    b.set_result("eth_getBalance", json!("0xb"));
    (a, b)
}

/// Asks `gw` for the balance of [`TAGGED_ADDRESS`]: the answer names the upstream that served.
pub async fn tagged_balance(gw: &Gateway) -> Value {
    gw.call("eth_getBalance", json!([TAGGED_ADDRESS, "latest"]))
        .await
}
