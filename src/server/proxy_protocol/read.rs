//! Taking exactly the PROXY header off a socket, leaving the bytes after it (TLS or HTTP)
//! unread, without polling and without a lost wakeup.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

use super::{parse, Parsed, ProxyError, ProxyHeader, MAX_HEADER_LEN};

/// Reads the PROXY header that must open `stream`, consuming exactly its bytes, within `timeout`.
///
/// A peer that closes early, sends garbage or stays silent gets an error; the caller closes it.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyError> {
    tokio::time::timeout(timeout, read_header_unbounded(stream))
        .await
        .map_err(|_| ProxyError::TimedOut)?
}

async fn read_header_unbounded(stream: &mut TcpStream) -> Result<ProxyHeader, ProxyError> {
    // Waiting for more bytes without spinning: after a peek that shows nothing new, tokio's
    // readiness flag must be cleared so `ready()` waits for the next edge. `try_io` clears it only
    // for the readiness tick observed *before* the closure ran, so bytes that arrive after our
    // peek set a new tick and wake us: no lost wakeup, no sleep-polling. The closure needs a
    // synchronous peek, which tokio does not expose; a duplicate of the socket's descriptor
    // provides it (it shares the non-blocking open file, and is closed when we return).
    let peeker = sync_handle(stream)?;
    let mut buf = vec![0u8; MAX_HEADER_LEN];
    let mut seen = 0;
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let peeked = stream.try_io(Interest::READABLE, || match peeker.peek(&mut buf) {
            Ok(n) if n == seen && n > 0 => Err(io::ErrorKind::WouldBlock.into()),
            other => other,
        });
        match peeked {
            Ok(0) => return Err(ProxyError::Truncated),
            Ok(n) => {
                seen = n;
                let view = buf.get(..n).unwrap_or_default();
                if let Parsed::Complete { header, consumed } = parse(view)? {
                    let exact = buf
                        .get_mut(..consumed)
                        .ok_or(ProxyError::Oversized(consumed))?;
                    stream.read_exact(exact).await?;
                    return Ok(header);
                }
                if n >= MAX_HEADER_LEN {
                    // Unreachable with a correct parser; guards against waiting forever.
                    return Err(ProxyError::Oversized(n));
                }
            }
            // Nothing new. The closed flag survives the clear, so check it or spin until timeout.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready.is_read_closed() {
                    return Err(ProxyError::Truncated);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(unix)]
fn sync_handle(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    use std::os::fd::AsFd;
    Ok(stream.as_fd().try_clone_to_owned()?.into())
}

#[cfg(windows)]
fn sync_handle(stream: &TcpStream) -> io::Result<std::net::TcpStream> {
    use std::os::windows::io::AsSocket;
    Ok(stream.as_socket().try_clone_to_owned()?.into())
}
