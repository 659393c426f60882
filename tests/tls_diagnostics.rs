//! A refused client certificate leaves a warning that says why, at the default level, rate
//! limited. (One test in this file: it installs the process's log subscriber.)

mod support;

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::gateway::Gateway;
use support::log_capture::Captured;
use support::mock::MockUpstream;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca { params, key }
    }

    fn pem(&self) -> String {
        self.params
            .self_signed(&self.key)
            .expect("self-signed")
            .pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.params
            .self_signed(&self.key)
            .expect("self-signed")
            .der()
            .clone()
    }

    /// (cert PEM, key PEM, cert DER, key DER) of a leaf for `name`.
    fn issue(
        &self,
        name: &str,
    ) -> (
        String,
        String,
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
    ) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .expect("signed");
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).expect("key DER");
        (cert.pem(), key.serialize_pem(), cert.der().clone(), key_der)
    }
}

async fn handshake(addr: std::net::SocketAddr, server_ca: &Ca, client: &Ca) -> bool {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.der()).expect("root");
    let (_, _, cert, key) = client.issue("chainlink");
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)
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
    let (cert, key, _, _) = server_ca.issue("localhost");
    std::fs::write(dir.join("server.crt"), cert).expect("write");
    std::fs::write(dir.join("server.key"), key).expect("write");
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
