//! TLS termination's material: a rustls server config built from the PEM files of
//! `[server.tls]`. It lives with the config, as `upstream_tls` does, so that `ethgate check`
//! refuses files that `run` could not load; `server::tls` keeps the config in force and swaps
//! it on reload.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

use super::TlsConfig;

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

impl TlsError {
    /// The config key the problem concerns, as `ethgate check` names keys.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Pem { key, .. } => key,
            TlsError::Rustls(_) => "server.tls",
        }
    }

    /// The problem, without its key.
    pub fn detail(&self) -> String {
        match self {
            TlsError::Pem { path, reason, .. } => format!("{path}: {reason}"),
            TlsError::Rustls(reason) => reason.clone(),
        }
    }
}

/// The server config for `config`'s certificate chain, key and optional client CA (TLS 1.3
/// and 1.2, ALPN http/1.1).
pub fn build(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
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
