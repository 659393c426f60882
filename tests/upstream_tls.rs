//! Upstreams over real TLS: ethgate dials `https://` and `wss://` through a rustls relay in
//! front of the mock upstream, with a private CA (`tls_ca`), client certificates (mTLS), and
//! credentials (headers, URL userinfo, `${VAR}`) that reach the node and appear nowhere else.

mod support;

use serde_json::json;
use support::gateway::{result_of, Gateway};
use support::mock::{header, MockUpstream};
use support::process::TempDir;
use support::tls_relay::{write_file, Ca, TlsRelay};
use support::ws_client::WsClient;

/// A hosted-provider style key in the URL path: must never be shown.
const PATH_KEY: &str = "0123456789abcdef0123456789abcdef";

/// `[server]`/`[health]` settings shared by the tests (fast probes).
const HEAD: &str = "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"2s\"\ndrain_delay = \"0s\"\n\
    subscription_grace = \"5s\"\n\
    [health]\ninterval = \"300ms\"\ntimeout = \"250ms\"\nfailure_threshold = 1\nrecovery_threshold = 1\n\
    [admin]\nlisten = \"127.0.0.1:0\"\n";

/// Asserts that none of `secrets` occurs in `text` (named `what`).
fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} shows a secret {secret:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn https_and_wss_with_private_ca_carry_credentials_and_show_none() {
    std::env::set_var("ETHGATE_TEST_UPSTREAM_TOKEN", "tok-9f8e7d6c5b4a");
    let dir = TempDir::new("ethgate-upstream-tls").expect("temp dir");
    let ca = Ca::new("node-ca");
    let mock = MockUpstream::start().await;
    let relay = TlsRelay::start(mock.addr().port(), &ca.issue("localhost"), None).await;
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"hosted\"\n\
         http = \"https://alice:pa55word@localhost:{port}/v3/{PATH_KEY}\"\n\
         ws = \"wss://alice:pa55word@localhost:{port}/ws/v3/{PATH_KEY}\"\n\
         tls_ca = {ca:?}\nheaders = {{ X-Api-Key = \"${{ETHGATE_TEST_UPSTREAM_TOKEN}}\" }}\n",
        port = relay.port(),
        ca = ca_file.display().to_string(),
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_state("hosted", "healthy").await;

    // A call over HTTPS.
    let answer = gw.call("eth_blockNumber", json!([])).await;
    assert_eq!(result_of(&answer), json!("0x64"));
    // A subscription over WSS, fed through the relay.
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    mock.wait_for_subscriptions("newHeads", 1).await;
    mock.set_head(101);
    mock.emit_new_head(101);
    assert_eq!(client.head_numbers(&id, 1).await, vec![101]);

    // The credentials reached the node on both transports (the relay saw the plaintext).
    let seen = relay.seen().to_ascii_lowercase();
    let basic = "authorization: basic ywxpy2u6cge1nxdvcmq="; // alice:pa55word, lower-cased
    assert!(
        seen.contains(&format!("post /v3/{PATH_KEY} http/1.1")),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("get /ws/v3/{PATH_KEY} http/1.1")),
        "{seen}"
    );
    assert!(
        seen.matches(basic).count() >= 2,
        "basic auth on HTTP and WS:\n{seen}"
    );
    assert!(
        seen.matches("x-api-key: tok-9f8e7d6c5b4a").count() >= 2,
        "{seen}"
    );

    // ... and appear nowhere ethgate shows things.
    let secrets = ["pa55word", "alice", "tok-9f8e7d6c5b4a", PATH_KEY];
    let status = gw.status().await.to_string();
    assert_no_secret("/status", &status, &secrets);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_no_secret("/metrics", &String::from_utf8_lossy(&metrics), &secrets);
}

#[tokio::test]
async fn mtls_to_the_upstream_presents_the_client_certificate() {
    let dir = TempDir::new("ethgate-upstream-mtls").expect("temp dir");
    let (server_ca, client_ca) = (Ca::new("node-ca"), Ca::new("client-ca"));
    let mock = MockUpstream::start().await;
    let relay = TlsRelay::start(
        mock.addr().port(),
        &server_ca.issue("localhost"),
        Some(&client_ca),
    )
    .await;
    let client = client_ca.issue("ethgate");
    let ca_file = write_file(dir.path(), "ca.pem", &server_ca.pem());
    let cert_file = write_file(dir.path(), "client.crt", &client.cert_pem);
    let key_file = write_file(dir.path(), "client.key", &client.key_pem);
    let upstream = |name: &str, with_cert: bool| {
        let mut text = format!(
            "[[upstream]]\nname = \"{name}\"\nhttp = \"https://localhost:{port}\"\n\
             ws = \"wss://localhost:{port}\"\ntls_ca = {ca:?}\n",
            port = relay.port(),
            ca = ca_file.display().to_string()
        );
        if with_cert {
            text += &format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                cert_file.display().to_string(),
                key_file.display().to_string()
            );
        }
        text
    };
    let toml = format!(
        "{HEAD}{}\n{}",
        upstream("with-cert", true),
        upstream("without-cert", false)
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_state("with-cert", "healthy").await;
    let answer = gw.call("eth_chainId", json!([])).await;
    assert_eq!(result_of(&answer), json!("0x1"));
    // The node refuses a client without a certificate: unreachable, and /status says why.
    let status = gw
        .wait_status("without-cert has a reason", |s| {
            support::gateway::upstream_entry(s, "without-cert")
                .is_some_and(|u| u["state"] == "unreachable" && u["reason"].is_string())
        })
        .await;
    let entry = support::gateway::upstream_entry(&status, "without-cert").expect("entry");
    let reason = entry["reason"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        reason.contains("certificate"),
        "reason names the certificate: {reason}"
    );

    // A WS subscription also dials with the client certificate.
    let mut ws = WsClient::connect(&gw.ws_url()).await;
    let id = ws.subscribe(json!(["newHeads"])).await;
    mock.wait_for_subscriptions("newHeads", 1).await;
    mock.set_head(101);
    mock.emit_new_head(101);
    assert_eq!(ws.head_numbers(&id, 1).await, vec![101]);
}

#[tokio::test]
async fn an_expired_certificate_is_unreachable_with_the_reason_and_no_traffic() {
    let dir = TempDir::new("ethgate-upstream-expired").expect("temp dir");
    let ca = Ca::new("node-ca");
    let mock = MockUpstream::start().await;
    let relay = TlsRelay::start(mock.addr().port(), &ca.issue_expired("localhost"), None).await;
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"old\"\nhttp = \"https://localhost:{}\"\ntls_ca = {:?}\n",
        relay.port(),
        ca_file.display().to_string()
    );
    let gw = Gateway::start_toml(&toml).await;
    let status = gw
        .wait_status("old has a reason", |s| {
            support::gateway::upstream_entry(s, "old").is_some_and(|u| u["reason"].is_string())
        })
        .await;
    let entry = support::gateway::upstream_entry(&status, "old").expect("entry");
    assert_eq!(entry["state"], "unreachable");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("certificate expired"), "reason: {reason}");
    assert_eq!(relay.handshakes_ok(), 0, "no request went through");
    assert!(relay.seen().is_empty());
    assert_eq!(mock.total_calls(), 0, "the node saw nothing");
}

#[tokio::test]
async fn failover_from_a_plain_upstream_to_a_tls_one_keeps_subscriptions() {
    let dir = TempDir::new("ethgate-upstream-tls-failover").expect("temp dir");
    let ca = Ca::new("node-ca");
    let (plain, tls) = (MockUpstream::start().await, MockUpstream::start().await);
    plain.set_head(10);
    tls.set_head(10);
    let relay = TlsRelay::start(tls.addr().port(), &ca.issue("localhost"), None).await;
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"own\"\nhttp = \"{}\"\nws = \"{}\"\npriority = 0\n\
         [[upstream]]\nname = \"hosted\"\nhttp = \"https://localhost:{port}\"\n\
         ws = \"wss://localhost:{port}\"\npriority = 1\ntls_ca = {ca:?}\n",
        plain.http_url(),
        plain.ws_url(),
        port = relay.port(),
        ca = ca_file.display().to_string()
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_all_healthy().await;
    plain.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    let id = client.subscribe(json!(["newHeads"])).await;
    plain.emit_new_head(11);
    assert_eq!(client.head_numbers(&id, 1).await, [11]);

    tls.set_head(13);
    plain.refuse().await;
    tls.wait_for_calls("eth_subscribe", 1).await;
    tls.notify("newHeads", header(11));
    tls.emit_new_head(13);
    assert_eq!(
        client.head_numbers(&id, 2).await,
        [12, 13],
        "the same subscription continues from the TLS upstream, gap filled"
    );
    assert!(relay.handshakes_ok() >= 1, "the feed went through TLS");
    let answer = gw.call("eth_blockNumber", json!([])).await;
    assert_eq!(
        result_of(&answer),
        json!("0xd"),
        "calls moved to the TLS upstream"
    );
}

#[tokio::test]
async fn a_reload_re_reads_the_client_certificate_files() {
    let dir = TempDir::new("ethgate-upstream-tls-reload").expect("temp dir");
    let (server_ca, client_ca, other_ca) =
        (Ca::new("node-ca"), Ca::new("client-ca"), Ca::new("other"));
    let mock = MockUpstream::start().await;
    let relay = TlsRelay::start(
        mock.addr().port(),
        &server_ca.issue("localhost"),
        Some(&client_ca),
    )
    .await;
    let ca_file = write_file(dir.path(), "ca.pem", &server_ca.pem());
    let accepted = client_ca.issue("ethgate");
    let cert_file = write_file(dir.path(), "client.crt", &accepted.cert_pem);
    let key_file = write_file(dir.path(), "client.key", &accepted.key_pem);
    let toml = format!(
        "{HEAD}[[upstream]]\nname = \"node\"\nhttp = \"https://localhost:{}\"\n\
         tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        relay.port(),
        ca_file.display().to_string(),
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_state("node", "healthy").await;
    // The same paths now hold a certificate the node does not accept; a reload of the same
    // file re-reads them, and the node refuses ethgate from then on.
    let refused = other_ca.issue("ethgate");
    write_file(dir.path(), "client.crt", &refused.cert_pem);
    write_file(dir.path(), "client.key", &refused.key_pem);
    let config = ethgate::config::Config::from_toml_str(&toml).expect("config");
    let notes = gw.reloader().reload(config).await.expect("reload applied");
    assert!(
        notes.iter().any(|n| n.contains("TLS files re-read")),
        "{notes:?}"
    );
    gw.wait_state("node", "unreachable").await;
}
