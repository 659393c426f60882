//! TLS termination: the rustls server config in force (built by `config::server_tls`),
//! swappable at run time so certificates can be renewed (SIGHUP) without touching established
//! connections.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::rustls::ServerConfig;

use crate::config::server_tls::build;
pub use crate::config::server_tls::TlsError;
use crate::config::TlsConfig;

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
