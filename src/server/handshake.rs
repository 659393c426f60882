//! Why a client's TLS handshake failed, in words an operator can act on, and a rate limit so a
//! port scanner or a misconfigured fleet cannot flood the log with them.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_rustls::rustls::{self, CertificateError};

/// The cause of a failed handshake worth a warning: rustls refused something the client sent
/// (its certificate above all). Plain I/O endings (EOF, reset, timeout) say nothing an operator
/// can fix and give `None`.
pub fn explain(error: &io::Error) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(cert) => {
            format!("client certificate {}", certificate(cert))
        }
        rustls::Error::NoCertificatesPresented => {
            "client sent no certificate (server.tls.client_ca requires one)".into()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("not a TLS client or a broken handshake ({tls}); is it speaking plain HTTP?")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("client aborted the handshake with alert {alert:?} (does it trust server.tls.cert?)")
        }
        other => other.to_string(),
    })
}

fn certificate(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => {
            "is not signed by a CA in server.tls.client_ca (unknown CA)".into()
        }
        // webpki finds issuers by name: a certificate from another CA of the same name fails
        // on its signature.
        CertificateError::BadSignature => {
            "is not signed by a CA in server.tls.client_ca (bad signature: another CA with the same name?)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("has expired ({error})")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("is not valid yet ({error}); check the clocks")
        }
        CertificateError::BadEncoding => "is malformed (bad DER)".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "is not valid for client authentication (extendedKeyUsage lacks clientAuth)".into()
        }
        CertificateError::Revoked => "is revoked".into(),
        // webpki reports a v1 certificate (no extensions, as `openssl x509 -req` makes
        // without -extfile) only through its error's name.
        CertificateError::Other(other) if format!("{other:?}").contains("UnsupportedCertVersion") => {
            "is an X.509 v1 certificate; a v3 certificate with extensions is required (see the README's mTLS recipe)".into()
        }
        other => format!("was refused: {other}"),
    }
}

/// Lets one line through per `every`, counting what it held back in between.
pub struct RateLimit {
    every: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(error: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn certificate_problems_are_named() {
        let unknown = explain(&io(CertificateError::UnknownIssuer.into())).expect("explained");
        assert!(unknown.contains("unknown CA"), "{unknown}");
        let expired = explain(&io(CertificateError::Expired.into())).expect("explained");
        assert!(expired.contains("expired"), "{expired}");
        let none = explain(&io(rustls::Error::NoCertificatesPresented)).expect("explained");
        assert!(none.contains("no certificate"), "{none}");
    }

    #[test]
    fn plain_io_endings_are_not_warned_about() {
        assert_eq!(
            explain(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            None
        );
        assert_eq!(
            explain(&io::Error::from(io::ErrorKind::ConnectionReset)),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_lets_one_line_through_per_period_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_secs(10));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limit.allow(), Some(2));
    }
}
