//! A TLS-terminating relay in front of one plain upstream port (a mock or anvil), with a
//! throwaway PKI: ethgate dials `https://localhost:PORT` / `wss://localhost:PORT`, the relay
//! does the TLS (optionally demanding a client certificate) and forwards the plaintext. It
//! keeps what clients sent after the handshake, so tests can assert headers arrived.
//!
//! Only loopback: listens on `127.0.0.1:0`, forwards to `127.0.0.1:PORT`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// Plaintext kept per relay: enough for many request heads, bounded.
const KEEP_BYTES: usize = 1 << 20;

/// A throwaway certificate authority.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

/// A leaf certificate and its key, as PEM and DER.
pub struct Leaf {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Key PEM.
    pub key_pem: String,
    /// Certificate DER.
    pub cert: CertificateDer<'static>,
    /// Key DER.
    pub key: PrivateKeyDer<'static>,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca { params, key }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> String {
        self.params
            .self_signed(&self.key)
            .expect("self-signed")
            .pem()
    }

    /// The CA certificate as DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.params
            .self_signed(&self.key)
            .expect("self-signed")
            .der()
            .clone()
    }

    /// A leaf for `name`, valid now.
    pub fn issue(&self, name: &str) -> Leaf {
        self.issue_with(name, |_| {})
    }

    /// A leaf for `name` that expired in 2021.
    pub fn issue_expired(&self, name: &str) -> Leaf {
        self.issue_with(name, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        edit(&mut params);
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .expect("signed");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).expect("key DER"),
        }
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    path
}

/// A running relay; stops when dropped.
pub struct TlsRelay {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    target: u16,
    /// Plaintext received from clients after their handshake, up to [`KEEP_BYTES`].
    seen: Mutex<Vec<u8>>,
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
}

impl TlsRelay {
    /// Serves `leaf` on `127.0.0.1:0`, forwarding to `127.0.0.1:target`; with `client_ca`,
    /// only clients holding a certificate from it get through.
    pub async fn start(target: u16, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsRelay {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der()).expect("client CA");
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
            .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let port = listener.local_addr().expect("relay addr").port();
        let shared = Arc::new(Shared {
            target,
            seen: Mutex::new(Vec::new()),
            handshakes_ok: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        TlsRelay { port, shared, task }
    }

    /// The relay's port (dial it as `localhost`, the name in the certificate).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything clients sent after their handshakes, lossily decoded.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.shared.seen.lock().expect("seen")).into_owned()
    }

    /// Handshakes that completed.
    pub fn handshakes_ok(&self) -> u64 {
        self.shared.handshakes_ok.load(Ordering::Relaxed)
    }

    /// Handshakes that failed (wrong CA, expired, missing client certificate).
    pub fn handshakes_failed(&self) -> u64 {
        self.shared.handshakes_failed.load(Ordering::Relaxed)
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        connections.spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            // TLS 1.3: a refused client certificate shows only on the first read; that read
            // fails below and the connection ends without traffic.
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", shared.target)).await else {
                return;
            };
            pipe(tls, upstream, &shared).await;
        });
    }
}

async fn pipe(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    upstream: TcpStream,
    shared: &Shared,
) {
    let (mut client_read, mut client_write) = tokio::io::split(tls);
    let (mut node_read, mut node_write) = upstream.into_split();
    let inbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut counted = false;
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !counted {
                counted = true;
                shared.handshakes_ok.fetch_add(1, Ordering::Relaxed);
            }
            {
                let mut seen = shared.seen.lock().expect("seen");
                let room = KEEP_BYTES.saturating_sub(seen.len()).min(n);
                seen.extend_from_slice(&buf[..room]);
            }
            if node_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = node_write.shutdown().await;
    };
    let outbound = async {
        let _ = tokio::io::copy(&mut node_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(inbound, outbound);
}
