//! Live reload: under continuous HTTP traffic and an open subscription, add an upstream,
//! remove the selected one and tighten the allowlist — no failed request, no missed head —
//! and a broken file sent with SIGHUP changes nothing.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::gateway::{upstream_entry, Gateway, Ports};
use support::http::{poll_until, Http};
use support::mock::MockUpstream;
use support::ws_client::WsClient;
use support::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

fn toml(upstreams: &[(&str, &MockUpstream, u32)], allow: &str) -> String {
    let mut out = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"2s\"\n\
         [health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\nfailure_threshold = 2\nrecovery_threshold = 1\n\
         [access]\nallow = {allow}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    );
    for (name, mock, priority) in upstreams {
        out += &format!(
            "[[upstream]]\nname = \"{name}\"\nhttp = \"{}\"\nws = \"{}\"\npriority = {priority}\n",
            mock.http_url(),
            mock.ws_url()
        );
    }
    out
}

/// Applies `text` through the in-process reloader, as SIGHUP does with the file.
async fn reload(gw: &Gateway, text: &str) -> Vec<String> {
    let config = ethgate::config::Config::from_toml_str(text).unwrap();
    gw.reloader().reload(config).await.unwrap()
}

/// Sends eth_blockNumber in a loop until `stop`, counting answers with a result and failures.
fn spawn_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = Http::per_request();
        let mut errors = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#;
            match client.post(&format!("http://{addr}/"), body).await {
                Ok((200, answer))
                    if serde_json::from_slice::<Value>(&answer)
                        .is_ok_and(|v| v.get("result").is_some()) =>
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{other:?}"));
                }
            }
        }
        errors
    })
}

async fn bytes_from(source: &str, target: SocketAddr) -> usize {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    let mut stream = socket.connect(target).await.unwrap();
    let _ = stream.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 51\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\"}").await;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("answer or close")
        .unwrap_or(0)
}

#[tokio::test]
async fn reload_under_load_moves_upstreams_and_rules_without_a_failed_request() {
    let (a, b, c) = (
        Arc::new(MockUpstream::start().await),
        Arc::new(MockUpstream::start().await),
        Arc::new(MockUpstream::start().await),
    );
    for m in [&a, &b, &c] {
        m.set_head(100);
    }
    let gw = Gateway::start_toml(&toml(&[("a", &a, 0), ("b", &b, 1)], r#"["127.0.0.0/8"]"#)).await;
    gw.wait_selected("a").await;
    a.wait_for_calls("eth_subscribe", 1).await;

    let mut subscriber = WsClient::connect(&gw.ws_url()).await;
    let sub = subscriber.subscribe(json!(["newHeads"])).await;
    let emitting = Arc::new(AtomicBool::new(true));
    let emitter = {
        let (a, b, c, emitting) = (a.clone(), b.clone(), c.clone(), emitting.clone());
        tokio::spawn(async move {
            let mut n = 101;
            while emitting.load(Ordering::Relaxed) {
                for m in [&a, &b, &c] {
                    m.emit_new_head(n);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            n - 1
        })
    };
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = spawn_load(gw.addr(), stop.clone(), ok.clone(), failed.clone());

    let three = toml(
        &[("a", &a, 0), ("b", &b, 1), ("c", &c, 2)],
        r#"["127.0.0.0/8"]"#,
    );
    let notes = reload(&gw, &three).await;
    assert!(notes.iter().any(|n| n.contains("3 upstreams")), "{notes:?}");
    gw.wait_status("c healthy, a still selected", |s| {
        upstream_entry(s, "c").is_some_and(|u| u["state"] == "healthy")
            && upstream_entry(s, "a").is_some_and(|u| u["selected"] == true)
    })
    .await;

    reload(
        &gw,
        &toml(&[("b", &b, 1), ("c", &c, 2)], r#"["127.0.0.0/8"]"#),
    )
    .await;
    gw.wait_status("b selected, a gone", |s| {
        upstream_entry(s, "a").is_none()
            && upstream_entry(s, "b").is_some_and(|u| u["selected"] == true)
    })
    .await;
    let served_before = b.calls("eth_blockNumber");
    b.wait_until("traffic moved to b", |b| {
        b.calls("eth_blockNumber") > served_before
    })
    .await;

    assert!(
        bytes_from("127.0.0.2", gw.addr()).await > 0,
        "127.0.0.2 allowed before tightening"
    );
    reload(
        &gw,
        &toml(&[("b", &b, 1), ("c", &c, 2)], r#"["127.0.0.1/32"]"#),
    )
    .await;
    assert_eq!(
        bytes_from("127.0.0.2", gw.addr()).await,
        0,
        "127.0.0.2 closed after tightening"
    );
    // The load (from 127.0.0.1) must go on being served under the tightened rules, and run
    // long enough in all for the count below to mean something.
    let ok_before = ok.load(Ordering::Relaxed);
    let served_on = || {
        let served = ok.load(Ordering::Relaxed);
        async move { (served >= ok_before + 10 && served > 50).then_some(()) }
    };
    poll_until(
        "load served after tightening",
        WAIT,
        Duration::from_millis(10),
        served_on,
    )
    .await
    .unwrap();

    stop.store(true, Ordering::Relaxed);
    let errors = load.await.unwrap();
    emitting.store(false, Ordering::Relaxed);
    let last_emitted = emitter.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {errors:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );

    // The subscription kept flowing across the reloads: consecutive numbers, none missing.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|n| *n < last_emitted) {
        seen.extend(subscriber.head_numbers(&sub, 1).await);
    }
    let expected: Vec<u64> = (seen[0]..=last_emitted).collect();
    assert_eq!(seen, expected, "every head once, in order");
}

#[tokio::test]
async fn sighup_applies_a_valid_file_and_refuses_a_broken_one() {
    let a = MockUpstream::start().await;
    a.set_head(7);
    let ports = Ports::free();
    let config = |deny: &str| {
        format!(
            "[server]\nlisten = \"{}\"\n[admin]\nlisten = \"{}\"\n[health]\ninterval = \"100ms\"\ntimeout = \"80ms\"\n\
             [access]\ndeny_methods = [{deny}]\n[[upstream]]\nname = \"a\"\nhttp = \"{}\"\n",
            ports.listen, ports.admin, a.http_url()
        )
    };
    let listen = ports.listen;
    let eg = Gateway::spawn(
        ports,
        &config("\"admin_*\""),
        &["--log-format", "json"],
        WAIT,
    )
    .await
    .unwrap();
    let call = |method: &'static str| async move {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#);
        let (_, answer) = Http::per_request()
            .post(&format!("http://{listen}/"), body)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&answer).unwrap()
    };
    assert_eq!(call("eth_blockNumber").await["result"], "0x7");

    std::fs::write(eg.config_path(), "[server\nthis is not toml").unwrap();
    eg.child().signal(1).unwrap();
    let refused = eg
        .child()
        .output()
        .wait_for_line(|l| l.contains("config reload refused"), WAIT);
    assert!(
        refused.is_some(),
        "no refusal logged:\n{}",
        eg.child().output().last_lines(20)
    );
    assert_eq!(
        call("eth_blockNumber").await["result"],
        "0x7",
        "still serving the old config"
    );

    std::fs::write(eg.config_path(), config("\"eth_blockNumber\"")).unwrap();
    eg.child().signal(1).unwrap();
    let applied = eg
        .child()
        .output()
        .wait_for_line(|l| l.contains("config reloaded"), WAIT);
    assert!(
        applied.is_some(),
        "no reload logged:\n{}",
        eg.child().output().last_lines(20)
    );
    assert_eq!(
        call("eth_blockNumber").await["error"]["message"],
        "method not allowed: eth_blockNumber"
    );
}
