//! A refused client certificate leaves a warning that says why, at the default level, rate
//! limited. (One test in this file: it installs the process's log subscriber.)

mod support;

use std::sync::Arc;

use support::gateway::Gateway;
use support::log_capture::Captured;
use support::mock::MockUpstream;
use support::tls_relay::Ca;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

async fn handshake(addr: std::net::SocketAddr, server_ca: &Ca, client: &Ca) -> bool {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.der()).expect("root");
    let leaf = client.issue("chainlink");
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf.cert], leaf.key)
            .expect("client auth");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
    else {
        return false;
    };
    // TLS 1.3: the server judges the client certificate after the client thinks it is done.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0; 64];
    matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
}

#[tokio::test]
async fn refused_client_certificate_is_warned_about_with_the_reason() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();
    let (server_ca, client_ca, stranger_ca) =
        (Ca::new("server"), Ca::new("clients"), Ca::new("stranger"));
    let dir = std::env::temp_dir().join(format!("ethgate-tls-diag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let leaf = server_ca.issue("localhost");
    std::fs::write(dir.join("server.crt"), leaf.cert_pem).expect("write");
    std::fs::write(dir.join("server.key"), leaf.key_pem).expect("write");
    std::fs::write(dir.join("clients.pem"), client_ca.pem()).expect("write");
    let upstream = MockUpstream::start().await;
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"a\"\nhttp = \"{}\"\n",
        dir.join("server.crt").display().to_string(),
        dir.join("server.key").display().to_string(),
        dir.join("clients.pem").display().to_string(),
        upstream.http_url()
    );
    // Its tracing subscriber stays ours: the gateway only installs one where none is.
    let gw = Gateway::start_toml(&toml).await;
    let addr = gw.addr();

    assert!(
        handshake(addr, &server_ca, &client_ca).await,
        "a client of the CA is served"
    );
    for _ in 0..3 {
        assert!(
            !handshake(addr, &server_ca, &stranger_ca).await,
            "a stranger is refused"
        );
    }
    // The server logs after the client has seen its refusal: wait until it counted all three.
    gw.wait_metrics("three handshake failures counted", |m| {
        m.contains("ethgate_tls_handshake_failures_total 3")
    })
    .await;
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("client TLS handshake failed"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line per period:\n{text}");
    assert!(warnings[0].contains("unknown CA"), "{}", warnings[0]);
}
