//! The one ethgate launcher of the tests, in two flavours behind one type:
//!
//! - in-process ([`Gateway::start`]): `Server::bind` + `run` on the test's runtime, with its
//!   reloader at hand; dropping it triggers shutdown;
//! - a child process ([`Gateway::spawn`]): `ethgate run --config FILE`, for signals, exit codes
//!   and log output; dropping it kills the process.
//!
//! Both answer the same questions (URLs, `/status`, waits on a state), over the one HTTP client.

mod config;

pub use config::GatewayConfig;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::http::{Http, WAIT};
use super::mock::MockUpstream;
use super::process::{ChildGuard, TempDir};

/// Listen and admin addresses for one ethgate child process, on free loopback ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The JSON-RPC listener.
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

impl Ports {
    /// Two distinct ports that were free a moment ago.
    pub fn free() -> Ports {
        // Hold both listeners at once so the two ports differ.
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        Ports {
            listen: a.local_addr().expect("addr"),
            admin: b.local_addr().expect("addr"),
        }
    }
}

/// Why a child-process handle was asked of an in-process gateway.
const IN_PROCESS: &str = "this gateway runs in-process: no child process, no config file";
/// Why an in-process handle was asked of a child-process gateway.
const CHILD_PROCESS: &str = "this gateway is a child process: it reloads on SIGHUP";

/// How this ethgate runs.
enum Run {
    InProcess {
        shutdown: CancellationToken,
        /// What `Server::run` returned, as text (the library's error type is its own business).
        task: Option<JoinHandle<Result<(), String>>>,
        reloader: ethgate::reload::Reloader,
    },
    Process {
        child: ChildGuard,
        config_path: PathBuf,
        _dir: TempDir,
    },
}

/// A running ethgate, in-process or as a child process.
pub struct Gateway {
    addrs: Vec<SocketAddr>,
    admin: SocketAddr,
    client: Http,
    run: Run,
}

impl Gateway {
    /// Starts ethgate in-process with `config`; panics with the config problems if it is refused.
    pub async fn start(config: &GatewayConfig) -> Gateway {
        Gateway::start_toml(&config.to_toml()).await
    }

    /// Starts ethgate in-process with a TOML document.
    pub async fn start_toml(toml: &str) -> Gateway {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let config = ethgate::config::Config::from_toml_str(toml)
            .unwrap_or_else(|e| panic!("config refused:\n{e}\n---\n{toml}"));
        let server = ethgate::Server::bind(config).await.expect("ethgate: bind");
        let (addrs, admin) = (server.local_addrs(), server.admin_addr());
        let reloader = server.reloader();
        let shutdown = CancellationToken::new();
        let stopped = shutdown.clone().cancelled_owned();
        let task =
            tokio::spawn(async move { server.run(stopped).await.map_err(|e| e.to_string()) });
        Gateway {
            addrs,
            admin,
            client: Http::per_request(),
            run: Run::InProcess {
                shutdown,
                task: Some(task),
                reloader,
            },
        }
    }

    /// Starts ethgate in-process in front of `a` (priority 0) and `b` (priority 1) and waits until
    /// both are healthy.
    pub async fn start_pair(config: GatewayConfig, a: &MockUpstream, b: &MockUpstream) -> Gateway {
        let gw = Gateway::start(&config.upstream("a", a, 0).upstream("b", b, 1)).await;
        gw.wait_all_healthy().await;
        gw
    }

    /// Writes `config_toml` to a temp dir, starts `ethgate run --config FILE` plus `extra_args`
    /// and waits up to `ready_timeout` until `GET /healthz` on `ports.admin` answers 200.
    /// The TOML must put `server.listen` / `admin.listen` on `ports` (see [`Ports::free`]).
    pub async fn spawn(
        ports: Ports,
        config_toml: &str,
        extra_args: &[&str],
        ready_timeout: Duration,
    ) -> Result<Gateway, String> {
        let dir = TempDir::new("ethgate-test").map_err(|e| format!("temp dir: {e}"))?;
        let config_path = dir.path().join("ethgate.toml");
        std::fs::write(&config_path, config_toml).map_err(|e| format!("write config: {e}"))?;
        let bin = super::process::ethgate_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("run").arg("--config").arg(&config_path);
        cmd.args(extra_args);
        cmd.env_remove("ETHGATE_CONFIG");
        let child = ChildGuard::spawn("ethgate", &mut cmd)
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut gw = Gateway {
            addrs: vec![ports.listen],
            admin: ports.admin,
            // A child may be stopped or killed mid-test: its admin answers quickly or not at all.
            client: Http::per_request_with_timeout(Duration::from_secs(2)),
            run: Run::Process {
                child,
                config_path,
                _dir: dir,
            },
        };
        gw.wait_healthy(ready_timeout).await?;
        Ok(gw)
    }

    /// Polls `/healthz` until it answers 200; fails early if the child process exits.
    async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let url = self.admin_url("/healthz");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child_mut().try_wait() {
                return Err(format!(
                    "ethgate exited ({status}) before /healthz answered; output:\n{}",
                    self.log()
                ));
            }
            let probe = self
                .client
                .request("GET", &url, None, Duration::from_millis(500));
            if let Ok((200, _)) = probe.await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "ethgate /healthz at {url} did not answer 200 within {timeout:?}; output:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- addresses ---------------------------------------------------------------------------

    /// Address of the (first) JSON-RPC listener.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
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
        format!("http://{}/", self.addr())
    }

    /// `ws://ADDR/`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr())
    }

    /// `http://ADMIN{path}`
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    // ---- flavour-specific handles ------------------------------------------------------------

    /// The reloader of an in-process gateway (panics for a child process: send it SIGHUP).
    pub fn reloader(&self) -> &ethgate::reload::Reloader {
        let Run::InProcess { reloader, .. } = &self.run else {
            panic!("{CHILD_PROCESS}")
        };
        reloader
    }

    /// The child process (panics for an in-process gateway).
    pub fn child(&self) -> &ChildGuard {
        let Run::Process { child, .. } = &self.run else {
            panic!("{IN_PROCESS}")
        };
        child
    }

    /// The child process, mutably (panics for an in-process gateway).
    pub fn child_mut(&mut self) -> &mut ChildGuard {
        let Run::Process { child, .. } = &mut self.run else {
            panic!("{IN_PROCESS}")
        };
        child
    }

    /// The config file of a child process (panics for an in-process gateway).
    pub fn config_path(&self) -> &Path {
        let Run::Process { config_path, .. } = &self.run else {
            panic!("{IN_PROCESS}")
        };
        config_path
    }

    /// The kept stdout/stderr of a child process, for failure messages.
    pub fn log(&self) -> String {
        match &self.run {
            Run::Process { child, .. } => child.output().text(),
            Run::InProcess { .. } => "(in-process: the log is in the test's output)".into(),
        }
    }

    // ---- requests ----------------------------------------------------------------------------

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
        let url = self.admin_url(path);
        self.client
            .get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (code, body) = self.admin_get("/metrics").await;
        assert_eq!(code, 200, "/metrics answered {code}: {body:?}");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The parsed `/status` document, or why there is none (for a gateway that may be down).
    pub async fn try_status(&self) -> Result<Value, String> {
        let (code, body) = self.client.get(&self.admin_url("/status")).await?;
        if code != 200 {
            return Err(format!("/status answered HTTP {code}: {body:?}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("/status is not JSON ({e}): {body:?}"))
    }

    /// The parsed `/status` document; panics when there is none.
    pub async fn status(&self) -> Value {
        self.try_status().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `/status` entry of upstream `name`.
    pub async fn upstream_status(&self, name: &str) -> Value {
        upstream_entry(&self.status().await, name)
            .unwrap_or_else(|| panic!("/status has no upstream {name}"))
    }

    /// The name of the upstream `/status` shows as selected, if any.
    pub async fn selected_upstream(&self) -> Result<Option<String>, String> {
        Ok(selected_name(&self.try_status().await?))
    }

    // ---- waits -------------------------------------------------------------------------------

    /// Polls `/status` (at most `WAIT`) until `pred` holds; returns that status. Panics with the last one.
    pub async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let status = poll_until_wait(what, || self.status(), |s| pred(s)).await;
        status.unwrap_or_else(|(e, last)| panic!("{e}; last /status: {last}"))
    }

    /// Polls `/metrics` (at most `WAIT`) until `pred` holds; returns that text. Panics with the last one.
    pub async fn wait_metrics(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let text = poll_until_wait(what, || self.metrics(), |m| pred(m)).await;
        text.unwrap_or_else(|(e, last)| panic!("{e}; last /metrics:\n{last}"))
    }

    /// Polls `/status` (every 50 ms, at most `timeout`, tolerating a gateway that does not answer)
    /// until `check` returns `Some`; panics with the last `/status` at the deadline.
    pub async fn poll_status<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> Option<T>,
    ) -> T {
        let last = std::sync::Mutex::new(Value::Null);
        let found = super::http::poll_until(what, timeout, Duration::from_millis(50), || async {
            let status = self.try_status().await.ok()?;
            let found = check(&status);
            *last.lock().unwrap_or_else(|e| e.into_inner()) = status;
            found
        })
        .await;
        found.unwrap_or_else(|e| {
            let last = last.lock().unwrap_or_else(|e| e.into_inner());
            panic!("{e}; last /status: {last}")
        })
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

    // ---- stopping (in-process) ---------------------------------------------------------------

    /// Triggers shutdown of an in-process gateway without waiting.
    pub fn trigger_shutdown(&self) {
        match &self.run {
            Run::InProcess { shutdown, .. } => shutdown.cancel(),
            Run::Process { .. } => panic!("stop a child-process gateway with a signal"),
        }
    }

    /// Triggers shutdown and returns what `Server::run` returned (panics if it takes longer than `WAIT`).
    pub async fn stop(mut self) -> Result<(), String> {
        self.trigger_shutdown();
        let Run::InProcess { task, .. } = &mut self.run else {
            unreachable!("trigger_shutdown panics for a child process")
        };
        let task = task.take().expect("gateway task present until stop");
        match tokio::time::timeout(WAIT, task).await {
            Ok(joined) => joined.unwrap_or_else(|e| panic!("Server::run panicked: {e}")),
            Err(_) => panic!("Server::run did not return within {WAIT:?} of shutdown"),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A child process is killed by its guard.
        if let Run::InProcess { shutdown, .. } = &self.run {
            shutdown.cancel();
        }
    }
}

/// Fetches every 20 ms (at most `WAIT`) until `done` holds of what `fetch` returned; at the
/// deadline, why together with the last value fetched.
async fn poll_until_wait<T, Fut>(
    what: &str,
    fetch: impl Fn() -> Fut,
    done: impl Fn(&T) -> bool,
) -> Result<T, (String, T)>
where
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = fetch().await;
        if done(&value) {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err((format!("timed out waiting for {what}"), value));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// The name of the upstream a `/status` document shows as selected, if any.
pub fn selected_name(status: &Value) -> Option<String> {
    status["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["selected"] == true)
        .and_then(|u| u["name"].as_str().map(str::to_string))
}

/// The upstream that serves requests and (absent failures) subscriptions: the one `/status`
/// shows as selected, else the healthy one of the highest priority (lowest number), which is
/// what the router and the subscription feed fall back to when no sticky choice exists.
pub fn preferred_name(status: &Value) -> Option<String> {
    if let Some(s) = selected_name(status) {
        return Some(s);
    }
    status["upstreams"]
        .as_array()?
        .iter()
        .filter(|u| u["state"] == "healthy")
        .min_by_key(|u| u["priority"].as_u64().unwrap_or(u64::MAX))
        .and_then(|u| u["name"].as_str().map(str::to_string))
}

/// The state `/status` shows for upstream `name`.
pub fn upstream_state(status: &Value, name: &str) -> Option<String> {
    upstream_entry(status, name).and_then(|u| u["state"].as_str().map(str::to_string))
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
