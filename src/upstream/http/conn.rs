//! One kept-alive connection to an upstream: TCP, or TLS over TCP for `https://`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// Keepalive probes on upstream sockets, so a node that vanished without a FIN or RST is
/// noticed by the kernel rather than by the next call's timeout.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Where and how to connect: the endpoint's host, port and TLS settings.
#[derive(Clone)]
pub(super) struct Endpoint {
    /// Host as it is resolved and verified (IPv6 without brackets).
    pub host: Arc<str>,
    pub port: u16,
    /// `Some` for `https://`.
    pub tls: Option<Arc<ClientConfig>>,
}

impl Endpoint {
    /// The endpoint of `uri`, `None` when it has no host or an unsupported scheme.
    pub fn of(uri: &http::Uri, tls: &Arc<ClientConfig>) -> Option<Endpoint> {
        let (tls, default_port) = match uri.scheme_str()? {
            "http" => (None, 80),
            "https" => (Some(tls.clone()), 443),
            _ => return None,
        };
        let host = uri.host()?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Some(Endpoint {
            host: host.into(),
            port: uri.port_u16().unwrap_or(default_port),
            tls,
        })
    }
}

/// A plain or TLS connection.
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Resolves the host again (a node that moved is found on the next connect), connects
    /// within `timeout` and, for TLS, completes the handshake within the same budget.
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        let connect = async {
            let tcp = TcpStream::connect((&*endpoint.host, endpoint.port)).await?;
            tcp.set_nodelay(true)?;
            let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
            // Only early detection of dead peers is lost if this fails.
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            let Some(tls) = &endpoint.tls else {
                return Ok(Stream::Plain(tcp));
            };
            let name = ServerName::try_from(endpoint.host.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = TlsConnector::from(tls.clone()).connect(name, tcp).await?;
            Ok(Stream::Tls(Box::new(tls)))
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {timeout:?}"),
                ))
            })
    }

    /// Whether an idle connection can carry another request: the peer has not closed it and
    /// sent nothing unasked. Costs no system call unless the socket became readable, which an
    /// idle keep-alive connection only does when the peer closes it (or misbehaves).
    pub fn is_reusable(&self) -> bool {
        let tcp = match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        };
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, parts),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, parts),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
