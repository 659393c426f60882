//! TLS termination: a rustls server config built from PEM files, swappable at run time so
//! certificates can be renewed (SIGHUP) without touching established connections.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// Why TLS material could not be loaded; every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds no usable item.
    #[error("{key} {path}: {reason}")]
    Pem {
        /// Config key of the file.
        key: &'static str,
        /// File path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. key does not match the certificate).
    #[error("server.tls: {0}")]
    Rustls(String),
}

/// The current TLS settings, replaced whole on reload.
pub struct Tls {
    current: ArcSwap<ServerConfig>,
}

impl Tls {
    /// Loads certificate, key and optional client CA.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Tls {
            current: ArcSwap::from_pointee(build(config)?),
        })
    }

    /// Reads the files named by `config` (the same or new paths); on error the previous
    /// material stays in use.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        self.current.store(Arc::new(build(config)?));
        Ok(())
    }

    /// An acceptor for the material in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

fn build(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("server.tls.cert", &config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsError::Pem {
        key: "server.tls.key",
        path: config.key.display().to_string(),
        reason: format!("no PKCS#8, PKCS#1 or SEC1 private key: {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("server.tls.client_ca", path)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    key: "server.tls.client_ca",
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server_config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("certificate and key do not work together: {e}")))?;
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server_config)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Pem {
        key,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(error("no certificate found".into()));
    }
    Ok(certs)
}
