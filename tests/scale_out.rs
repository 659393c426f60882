//! Scale-out behind a real load balancer: two ethgate replicas (the binary) on a lockstep
//! anvil devnet, behind HAProxy in TCP mode with `send-proxy-v2` and `/readyz` health checks,
//! configured by `deploy/haproxy/haproxy.cfg` itself (addresses from the environment).
//!
//! - Clients are judged by their real address: through the same balancer, 127.0.0.2 is served
//!   and 127.0.0.1 is refused (by ethgate, counted as `not_allowed`).
//! - HTTP load through HAProxy sees no failed call while one replica is restarted with SIGTERM
//!   (drain: `/readyz` 503, HAProxy takes it out, the port closes only after `drain_delay`).
//! - WebSocket subscribers on the stopped replica get close 1001, reconnect through HAProxy
//!   and go on receiving heads.
//!
//! Needs anvil and haproxy (`scripts/install-test-deps.sh`); without them the test prints why
//! and passes, unless `CI` is set.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use support::devnet::Devnet;
use support::e2e::deps_present;
use support::gateway::{Gateway, Ports};
use support::http::{http_get, poll_until};
use support::process::{free_addr, ChildGuard};
use support::raw_http::{connect_from, RawHttp};
use support::tools::require_tool;

/// Allowed client address (the only one in `access.allow`).
const CLIENT: [u8; 4] = [127, 0, 0, 2];
/// Refused client address: also HAProxy's address as the replicas see it (trusted proxy).
const STRANGER: [u8; 4] = [127, 0, 0, 1];
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#;
const WAIT: Duration = Duration::from_secs(20);
const BLOCK_TIME: Duration = Duration::from_millis(500);
/// Far longer than HAProxy needs to see the 503 (fastinter 200ms, fall 2).
const DRAIN_DELAY: &str = "3s";
const SUBSCRIBERS: usize = 4;
const LOAD_WORKERS: usize = 4;

fn replica_config(ports: &Ports, dev: &Devnet) -> String {
    let mut upstreams = String::new();
    for i in 0..dev.len() {
        upstreams += &format!(
            "\n[[upstream]]\nname = \"anvil{i}\"\nhttp = \"{}\"\nws = \"{}\"\npriority = {i}\n",
            dev.http_url(i),
            dev.ws_url(i)
        );
    }
    format!(
        r#"chain_id = {chain}

[server]
listen = "{listen}"
drain_delay = "{DRAIN_DELAY}"
shutdown_grace = "5s"

[access]
allow = ["127.0.0.2/32"]
proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]

[health]
interval = "300ms"
timeout = "250ms"

[admin]
listen = "{admin}"
{upstreams}"#,
        chain = dev.chain_id(),
        listen = ports.listen,
        admin = ports.admin,
    )
}

/// HAProxy with the example config, the addresses given through its environment.
fn start_haproxy(haproxy: &Path, bind: SocketAddr, a: &Ports, b: &Ports) -> ChildGuard {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg");
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db")
        .arg("-f")
        .arg(&config)
        .env("HAPROXY_BIND", bind.to_string())
        .env("ETHGATE_A", a.listen.to_string())
        .env("ETHGATE_B", b.listen.to_string())
        .env("ETHGATE_A_ADMIN_PORT", a.admin.port().to_string())
        .env("ETHGATE_B_ADMIN_PORT", b.admin.port().to_string());
    ChildGuard::spawn("haproxy", &mut cmd).expect("spawn haproxy")
}

/// Sum of the samples of `metric` (any labels) on a replica's `/metrics`.
async fn metric_sum(admin: SocketAddr, metric: &str) -> u64 {
    let url = format!("http://{admin}/metrics");
    let (code, body) = http_get(&url, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn open_connections(admin: SocketAddr) -> u64 {
    let url = format!("http://{admin}/status");
    let (_, body) = http_get(&url, Duration::from_secs(2))
        .await
        .unwrap_or_default();
    serde_json::from_str::<Value>(&body).map_or(0, |v| v["connections"].as_u64().unwrap_or(0))
}

/// One JSON-RPC call from `source` through `lb` on a fresh connection: the result, or `None`
/// when the connection was closed without an answer.
async fn call_from(source: [u8; 4], lb: SocketAddr) -> Option<Value> {
    let mut conn = RawHttp::connect_from(source, lb).await.ok()?;
    let answer = conn.post(CALL).await?;
    let value: Value = serde_json::from_str(&answer.body).ok()?;
    Some(value["result"].clone())
}

#[derive(Default)]
struct LoadReport {
    ok: u64,
    failures: Vec<String>,
}

/// Keep-alive HTTP clients calling through `lb` until `stop`; a connection the server asks to
/// close is replaced by a new one, as any HTTP client does.
async fn load_worker(lb: SocketAddr, stop: Arc<AtomicBool>, report: Arc<Mutex<LoadReport>>) {
    let mut conn: Option<RawHttp> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match RawHttp::connect_from(CLIENT, lb).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    report
                        .lock()
                        .unwrap()
                        .failures
                        .push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let answer = conn.as_mut().expect("connected").post(CALL).await;
        let outcome = match &answer {
            None => Err("connection closed without an answer".to_string()),
            Some(a) if a.status != 200 => Err(format!("HTTP {}: {}", a.status, a.body)),
            Some(a) => match serde_json::from_str::<Value>(&a.body) {
                Ok(v) if v["result"].is_string() => Ok(()),
                _ => Err(format!("not a result: {}", a.body)),
            },
        };
        match outcome {
            Ok(()) => report.lock().unwrap().ok += 1,
            Err(e) => report.lock().unwrap().failures.push(e),
        }
        if answer.is_none_or(|a| a.asks_to_close()) {
            conn = None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug, Default)]
struct Subscriber {
    /// Close codes received (None: the socket ended without a close frame).
    closes: Vec<Option<u16>>,
    /// Head numbers received, per connection.
    heads: Vec<Vec<u64>>,
}

/// A newHeads subscriber through `lb` that reconnects and resubscribes whenever it is
/// closed, until it has seen a head at or above `target` (once set).
async fn subscriber(lb: SocketAddr, target: Arc<AtomicU64>, report: Arc<Mutex<Subscriber>>) {
    loop {
        let stream = connect_from(CLIENT, lb)
            .await
            .expect("connect through HAProxy");
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{lb}/"), stream)
            .await
            .expect("WebSocket handshake through HAProxy");
        let subscribe =
            json!({"jsonrpc":"2.0","id":"sub","method":"eth_subscribe","params":["newHeads"]});
        ws.send(Message::text(subscribe.to_string()))
            .await
            .expect("subscribe");
        report.lock().unwrap().heads.push(Vec::new());
        let close = loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    if v["id"] == "sub" {
                        assert!(v["result"].is_string(), "subscribe failed: {v}");
                        continue;
                    }
                    let hex = v["params"]["result"]["number"]
                        .as_str()
                        .expect("head number");
                    let n = u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex");
                    report
                        .lock()
                        .unwrap()
                        .heads
                        .last_mut()
                        .expect("one list")
                        .push(n);
                    let goal = target.load(Ordering::Relaxed);
                    if goal > 0 && n >= goal {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        };
        report.lock().unwrap().closes.push(close);
    }
}

/// What to show when the test fails.
fn dump(proxy: &ChildGuard, a: &Gateway) -> String {
    format!(
        "haproxy:\n{}\nreplica a:\n{}",
        proxy.output().text(),
        a.log()
    )
}

async fn start_replica(ports: Ports, config: &str) -> Gateway {
    Gateway::spawn(ports, config, &[], WAIT)
        .await
        .unwrap_or_else(|e| panic!("ethgate replica did not start: {e}"))
}

async fn wait_ready(admin: SocketAddr) {
    let url = format!("http://{admin}/readyz");
    poll_until("replica ready", WAIT, Duration::from_millis(50), || async {
        matches!(http_get(&url, Duration::from_secs(1)).await, Ok((200, _))).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_haproxy_drain_without_failed_calls() {
    const TEST: &str = "replicas_behind_haproxy_drain_without_failed_calls";
    if !deps_present(TEST, false) {
        return;
    }
    let Some(haproxy) = require_tool(TEST, "haproxy") else {
        return;
    };
    let dev = Arc::new(Devnet::start(2).await.expect("start devnet"));
    let miner = dev.spawn_miner(BLOCK_TIME);
    let (pa, pb) = (Ports::free(), Ports::free());
    let (config_a, config_b) = (replica_config(&pa, &dev), replica_config(&pb, &dev));
    let mut a = start_replica(pa, &config_a).await;
    let b = start_replica(pb, &config_b).await;
    wait_ready(pa.admin).await;
    wait_ready(pb.admin).await;
    let lb = free_addr();
    let proxy = start_haproxy(&haproxy, lb, &pa, &pb);

    // 1. Real client addresses through the one balancer: 127.0.0.2 served, 127.0.0.1 refused.
    poll_until(
        "HAProxy serving",
        WAIT,
        Duration::from_millis(50),
        || async { call_from(CLIENT, lb).await.filter(Value::is_string) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dump(&proxy, &a)));
    let denied_before = metric_sum(
        pa.admin,
        "ethgate_denied_connections_total{reason=\"not_allowed\"}",
    )
    .await
        + metric_sum(
            pb.admin,
            "ethgate_denied_connections_total{reason=\"not_allowed\"}",
        )
        .await;
    for _ in 0..4 {
        let served = call_from(CLIENT, lb).await;
        assert!(
            served.as_ref().is_some_and(Value::is_string),
            "127.0.0.2: {served:?}"
        );
        assert_eq!(
            call_from(STRANGER, lb).await,
            None,
            "127.0.0.1 must be refused"
        );
    }
    let denied_after = metric_sum(
        pa.admin,
        "ethgate_denied_connections_total{reason=\"not_allowed\"}",
    )
    .await
        + metric_sum(
            pb.admin,
            "ethgate_denied_connections_total{reason=\"not_allowed\"}",
        )
        .await;
    assert_eq!(
        denied_after - denied_before,
        4,
        "refused by ethgate, judged on the PROXY address"
    );
    // Both replicas serve (HAProxy spreads the connections).
    assert!(
        metric_sum(pa.admin, "ethgate_requests_total{").await > 0,
        "a unused"
    );
    assert!(
        metric_sum(pb.admin, "ethgate_requests_total{").await > 0,
        "b unused"
    );

    // 2. Subscribers, spread over both replicas by leastconn.
    let target = Arc::new(AtomicU64::new(0));
    let subs: Vec<Arc<Mutex<Subscriber>>> = (0..SUBSCRIBERS).map(|_| Arc::default()).collect();
    let mut sub_tasks = Vec::new();
    for report in &subs {
        sub_tasks.push(tokio::spawn(subscriber(lb, target.clone(), report.clone())));
        // One at a time, so leastconn sees each connection before placing the next.
        poll_until(
            "subscriber connected",
            WAIT,
            Duration::from_millis(20),
            || async {
                report
                    .lock()
                    .unwrap()
                    .heads
                    .first()
                    .is_some_and(|h| !h.is_empty())
                    .then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dump(&proxy, &a)));
    }
    let on_a = open_connections(pa.admin).await;
    assert!(
        on_a >= 1 && open_connections(pb.admin).await >= 1,
        "subscribers on both replicas"
    );

    // 3. HTTP load through HAProxy, then restart replica a with SIGTERM.
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(LoadReport::default()));
    let workers: Vec<_> = (0..LOAD_WORKERS)
        .map(|_| tokio::spawn(load_worker(lb, stop.clone(), load.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.child().signal(15).expect("kill -TERM replica a");
    let status = tokio::task::block_in_place(|| a.child_mut().wait_timeout(WAIT));
    let Some(status) = status else {
        panic!("replica a did not exit\n{}", dump(&proxy, &a));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "clean exit after the drain\n{}",
        dump(&proxy, &a)
    );
    drop(a);
    let a = start_replica(pa, &config_a).await;
    wait_ready(pa.admin).await;
    // The restarted replica is put back into rotation by HAProxy and serves new connections
    // (the load's keep-alive connections stay where they are, as they would in production).
    poll_until(
        "restarted replica serving",
        WAIT,
        Duration::from_millis(100),
        || async {
            call_from(CLIENT, lb).await;
            (metric_sum(pa.admin, "ethgate_requests_total{").await > 0).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.output().text()));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("load worker");
    }

    // 4. Subscribers finish once they see a head past the restart.
    target.store(dev.height().await + 2, Ordering::Relaxed);
    for task in sub_tasks {
        tokio::time::timeout(WAIT, task)
            .await
            .unwrap_or_else(|_| panic!("a subscriber saw no new head\n{}", dump(&proxy, &a)))
            .expect("subscriber task");
    }
    drop(miner);

    let load = load.lock().unwrap();
    assert!(
        load.failures.is_empty(),
        "{} failed calls of {}: {:?}\n{}",
        load.failures.len(),
        load.ok + load.failures.len() as u64,
        &load.failures[..load.failures.len().min(5)],
        dump(&proxy, &a)
    );
    assert!(load.ok > 20, "only {} calls made", load.ok);
    let mut moved = 0;
    for report in &subs {
        let report = report.lock().unwrap();
        assert!(
            report.closes.iter().all(|c| *c == Some(1001)),
            "only 1001 (going away) closes: {report:?}"
        );
        assert_eq!(report.heads.len(), report.closes.len() + 1, "{report:?}");
        if let [.., before, after] = &report.heads[..] {
            moved += 1;
            let last = before.last().copied().unwrap_or(0);
            assert!(
                after.last().is_some_and(|&n| n > last),
                "heads continue after reconnecting: {report:?}"
            );
        }
    }
    assert!(
        moved >= 1,
        "the subscribers on replica a were closed with 1001 and reconnected"
    );
    eprintln!(
        "scale-out: {} calls, 0 failed; {moved} of {SUBSCRIBERS} subscribers moved",
        load.ok
    );
    drop((a, b, proxy));
}
