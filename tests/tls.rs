//! TLS termination: HTTPS round trips with a real rustls client, refused plaintext and old
//! protocol versions, mutual TLS, and certificate reload while a connection stays open.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;
use support::gateway::Gateway;
use support::http::Http;
use support::mock::MockUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A CA and the PEM files of a certificate it signed.
struct Pki {
    ca_der: CertificateDer<'static>,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        Pki {
            ca_der: ca.der().clone(),
            ca_params,
            ca_key,
        }
    }

    /// Issues a leaf certificate; returns (cert PEM, key PEM, cert DER, key DER).
    fn issue(
        &self,
        names: &[&str],
    ) -> (
        String,
        String,
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
    ) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone(), key_der)
    }

    fn ca_pem(&self) -> String {
        let ca = self.ca_params.self_signed(&self.ca_key).unwrap();
        ca.pem()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        roots
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ethgate-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_server_files(dir: &Path, pki: &Pki) {
    let (cert, key, _, _) = pki.issue(&["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("server.crt"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
}

/// An in-process ethgate with TLS, the config it started from, and its upstream.
struct Running {
    gateway: Gateway,
    toml: String,
    _upstream: MockUpstream,
}

impl Running {
    /// Re-applies the same config, as SIGHUP does: the file is validated (which loads the
    /// certificate files, so a bad one is refused there) and then applied.
    async fn reload(&self) -> Result<Vec<String>, String> {
        let config =
            ethgate::config::Config::from_toml_str(&self.toml).map_err(|e| e.to_string())?;
        let reloaded = self.gateway.reloader().reload(config).await;
        reloaded.map_err(|e| e.to_string())
    }
}

async fn start(dir: &Path, client_ca: Option<&Path>) -> Running {
    let upstream = MockUpstream::start().await;
    upstream.set_head(42);
    let client_ca = client_ca.map_or(String::new(), |p| {
        format!("client_ca = {:?}\n", p.display().to_string())
    });
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = {:?}\nkey = {:?}\n{client_ca}\
         [admin]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"a\"\nhttp = \"{}\"\n",
        dir.join("server.crt").display().to_string(),
        dir.join("server.key").display().to_string(),
        upstream.http_url()
    );
    Running {
        gateway: Gateway::start_toml(&toml).await,
        toml,
        _upstream: upstream,
    }
}

fn client_config(
    roots: RootCertStore,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Opens an HTTPS connection and returns a handle to send requests on it.
async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn block_number(sender: &mut SendRequest<Full<Bytes>>) -> anyhow::Result<Value> {
    let request = hyper::Request::post("/")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":7,"method":"eth_blockNumber"}"#,
        )))?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

async fn https_block_number(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> anyhow::Result<Value> {
    let mut sender = connect(addr, config).await?;
    block_number(&mut sender).await
}

#[tokio::test]
async fn https_round_trip_is_served() {
    let pki = Pki::new();
    let dir = temp_dir("roundtrip");
    write_server_files(&dir, &pki);
    let gw = start(&dir, None).await;
    let answer = https_block_number(gw.gateway.addr(), client_config(pki.roots(), None))
        .await
        .unwrap();
    assert_eq!(answer["result"], "0x2a");
    assert_eq!(answer["id"], 7);
}

#[tokio::test]
async fn plaintext_http_to_the_tls_port_gets_no_http_answer() {
    let pki = Pki::new();
    let dir = temp_dir("plaintext");
    write_server_files(&dir, &pki);
    let gw = start(&dir, None).await;
    let result = Http::per_request()
        .post(
            &format!("http://{}/", gw.gateway.addr()),
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
        )
        .await;
    assert!(
        result.is_err(),
        "plaintext request must not be answered: {result:?}"
    );
    let metrics = Http::per_request()
        .get(&format!("http://{}/metrics", gw.gateway.admin_addr()))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.1).to_string();
    assert!(
        text.contains("ethgate_tls_handshake_failures_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn tls_1_1_client_hello_is_refused() {
    let pki = Pki::new();
    let dir = temp_dir("tls11");
    write_server_files(&dir, &pki);
    let gw = start(&dir, None).await;
    // A minimal TLS 1.1 ClientHello: legacy version 3.2, one CBC suite, no extensions.
    let mut hello = vec![0x03, 0x02];
    hello.extend_from_slice(&[7u8; 32]);
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0xc0, 0x13, 0x01, 0x00]);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let mut tcp = TcpStream::connect(gw.gateway.addr()).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    // The server must end the exchange: an alert then close, or a close. Silence is a failure.
    let closed = tokio::time::timeout(support::WAIT, tcp.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "server neither refused nor closed: {answer:?}"
    );
    assert_ne!(
        answer.first(),
        Some(&0x16),
        "server must not answer with a handshake: {answer:?}"
    );
    if !answer.is_empty() {
        assert_eq!(answer[0], 0x15, "expected an alert record: {answer:?}");
    }
}

#[tokio::test]
async fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let server_pki = Pki::new();
    let client_pki = Pki::new();
    let stranger_pki = Pki::new();
    let dir = temp_dir("mtls");
    write_server_files(&dir, &server_pki);
    std::fs::write(dir.join("clients.pem"), client_pki.ca_pem()).unwrap();
    let gw = start(&dir, Some(&dir.join("clients.pem"))).await;

    let (_, _, cert, key) = client_pki.issue(&["chainlink-1"]);
    let answer = https_block_number(
        gw.gateway.addr(),
        client_config(server_pki.roots(), Some((cert, key))),
    )
    .await;
    assert_eq!(answer.unwrap()["result"], "0x2a");

    let anonymous =
        https_block_number(gw.gateway.addr(), client_config(server_pki.roots(), None)).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate must be refused"
    );

    let (_, _, cert, key) = stranger_pki.issue(&["intruder"]);
    let stranger = https_block_number(
        gw.gateway.addr(),
        client_config(server_pki.roots(), Some((cert, key))),
    )
    .await;
    assert!(
        stranger.is_err(),
        "a certificate from another CA must be refused"
    );
}

#[tokio::test]
async fn certificate_reload_keeps_open_connections_and_refuses_bad_files() {
    let old_pki = Pki::new();
    let new_pki = Pki::new();
    let dir = temp_dir("reload");
    write_server_files(&dir, &old_pki);
    let gw = start(&dir, None).await;
    let mut open = connect(gw.gateway.addr(), client_config(old_pki.roots(), None))
        .await
        .unwrap();
    assert_eq!(block_number(&mut open).await.unwrap()["result"], "0x2a");

    write_server_files(&dir, &new_pki);
    gw.reload().await.expect("valid new pair reloads");
    assert_eq!(
        block_number(&mut open).await.unwrap()["result"],
        "0x2a",
        "open connection survives"
    );
    let fresh = https_block_number(gw.gateway.addr(), client_config(new_pki.roots(), None)).await;
    assert_eq!(
        fresh.unwrap()["result"],
        "0x2a",
        "new connections get the new certificate"
    );
    let stale = https_block_number(gw.gateway.addr(), client_config(old_pki.roots(), None)).await;
    assert!(stale.is_err(), "the old certificate is no longer served");

    std::fs::write(dir.join("server.crt"), "not a certificate").unwrap();
    let error = gw.reload().await.expect_err("garbage must be refused");
    assert!(error.to_string().contains("server.crt"), "{error}");
    let still = https_block_number(gw.gateway.addr(), client_config(new_pki.roots(), None)).await;
    assert_eq!(
        still.unwrap()["result"],
        "0x2a",
        "previous pair stays after a refused reload"
    );
}

#[test]
fn malformed_certificate_at_start_up_names_the_file() {
    let dir = temp_dir("malformed");
    std::fs::write(
        dir.join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.join("server.key"), "").unwrap();
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = {:?}\nkey = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"a\"\nhttp = \"http://127.0.0.1:1\"\n",
        dir.join("server.crt").display().to_string(),
        dir.join("server.key").display().to_string(),
    );
    // `run` loads the config first, and loading reads the files as the server would: the
    // start-up (and `ethgate check`) stops there, naming the key and the file.
    let error = ethgate::config::Config::from_toml_str(&toml).expect_err("must be refused");
    let text = error.to_string();
    assert!(
        text.starts_with("server.tls.cert: ") && text.contains("server.crt"),
        "{text}"
    );
}
