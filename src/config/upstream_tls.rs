//! TLS to upstream nodes: one rustls client config per upstream, verifying against the
//! system's trust store plus the upstream's `tls_ca`, optionally presenting a client
//! certificate (`tls_cert` + `tls_key`). There is deliberately no way to turn verification off.
//! It lives with the config so that a bad file is a config error at load, and `config` stays
//! a leaf that `upstream` builds on.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::UpstreamTls;

/// The system's trust store, read once per process: it is a few hundred files, and every
/// upstream (and every reload) would otherwise read them again.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        // Unreadable files in the store are skipped: the rest still verifies, and an upstream
        // whose issuer is missing fails with "UnknownIssuer", which names the problem.
        for error in &found.errors {
            tracing::debug!(%error, "skipping part of the system trust store");
        }
        found.certs
    })
}

/// Builds the client config for one upstream. Errors name the config key and file.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    // Individual system certificates rustls cannot parse are ignored, as browsers do.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = &tls.ca {
        for cert in read_certs("tls_ca", path)? {
            roots
                .add(cert)
                .map_err(|e| format!("tls_ca {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA: the system trust store is empty and tls_ca is not set".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("tls_cert", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("tls_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("tls_cert/tls_key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("tls_cert and tls_key go together".into()),
    };
    Ok(Arc::new(config))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// A config for upstreams without TLS endpoints: the HTTPS connector needs one, but it is
/// never used for `http://`. Built once.
pub fn plain_only() -> Arc<ClientConfig> {
    static PLAIN: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    PLAIN
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.with_root_certificates(RootCertStore::empty())
                        .with_no_client_auth()
                });
            // The ring provider supports the default versions; this cannot fail.
            Arc::new(config.unwrap_or_else(|e| unreachable!("ring provider: {e}")))
        })
        .clone()
}
