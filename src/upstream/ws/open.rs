//! Opening the multiplexed connection: TCP, TLS for `wss://` (verified like HTTPS, with the
//! upstream's CA and client certificate), and the WebSocket handshake with the upstream's
//! headers. Done here rather than by tokio-tungstenite because the connection's task reads
//! the socket itself and must own it whole, including any frame that came with the
//! handshake's answer.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::handshake::client::generate_request;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::MaybeTlsStream;

use super::super::dial::handshake_request;
use crate::config::UpstreamConfig;

/// An open upstream WebSocket, past its handshake.
pub(super) type Stream = MaybeTlsStream<TcpStream>;

/// Longest handshake answer read: a node's is a few hundred bytes.
const MAX_HANDSHAKE_ANSWER: usize = 16 * 1024;

/// Opens `upstream.ws` within `connect_timeout`: the stream, and whatever the node sent after
/// its handshake answer (the first frames, if any). The host name is resolved again on every
/// dial, so a reconnect follows a DNS change. Errors never include the URL (its path may hold
/// an API key).
pub(super) async fn open(
    upstream: &UpstreamConfig,
    connect_timeout: Duration,
) -> Result<(Stream, BytesMut), String> {
    match tokio::time::timeout(connect_timeout, open_now(upstream)).await {
        Err(_) => Err(format!("timed out after {connect_timeout:?}")),
        Ok(opened) => opened,
    }
}

async fn open_now(upstream: &UpstreamConfig) -> Result<(Stream, BytesMut), String> {
    let (uri, request) = handshake_request(upstream)?;
    let (request, key) =
        generate_request(request).map_err(|e| format!("invalid ws request: {e}"))?;
    let host = uri.host().ok_or("invalid ws request: no host")?;
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect(format!("{host}:{port}"))
        .await
        .map_err(|e| format!("IO error: {e}"))?;
    // Requests are written whole, several at once: Nagle would only delay them.
    tcp.set_nodelay(true)
        .map_err(|e| format!("IO error: {e}"))?;
    let mut stream = if tls {
        // Read per dial rather than once: a renewed client certificate is picked up on the
        // next reconnect, and reconnects are rare.
        let config = crate::config::upstream_tls::client_config(&upstream.tls)?;
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| format!("invalid ws request: {e}"))?
            .to_owned();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS error: {e}"))?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    let io = |e: std::io::Error| format!("IO error: {e}");
    stream.write_all(&request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut answer = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut answer).await.map_err(io)? == 0 {
            return Err("closed during the handshake".into());
        }
        if let Some(size) = accepted(&answer, &key)? {
            answer.advance(size);
            return Ok((stream, answer));
        }
        if answer.len() > MAX_HANDSHAKE_ANSWER {
            return Err("handshake answer too long".into());
        }
    }
}

/// The size of the node's handshake answer at the start of `answer` once it is complete and
/// accepts the upgrade requested with `key`; `None` while incomplete.
fn accepted(answer: &[u8], key: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let size = match response.parse(answer) {
        Ok(httparse::Status::Complete(size)) => size,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid handshake answer: {e}")),
    };
    let status = response.code.unwrap_or(0);
    if status != 101 {
        // The answer may echo request details; the status is what matters.
        return Err(format!("handshake refused: HTTP {status}"));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let upgrade = header("Upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = header("Connection").is_some_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !upgrade || !connection {
        return Err("handshake answer does not upgrade to WebSocket".into());
    }
    if header("Sec-WebSocket-Accept").as_deref() != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return Err("handshake answer has the wrong Sec-WebSocket-Accept".into());
    }
    // Nothing was asked for: an extension (compression) or subprotocol would change the frames.
    if header("Sec-WebSocket-Extensions").is_some() || header("Sec-WebSocket-Protocol").is_some() {
        return Err("handshake answer names an extension or protocol not asked for".into());
    }
    Ok(Some(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &str, extra: &str, accept: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn a_handshake_answer_is_accepted_only_when_it_upgrades_with_the_right_key() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        // RFC 6455's own example key and accept value.
        let good = answer(
            "101 Switching Protocols",
            "",
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        );
        let with_frame = format!("{good}\u{81}\u{1}x");
        assert_eq!(accepted(with_frame.as_bytes(), key), Ok(Some(good.len())));
        assert_eq!(accepted(&good.as_bytes()[..20], key), Ok(None), "partial");
        let refused = answer("403 Forbidden", "", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            accepted(refused.as_bytes(), key),
            Err("handshake refused: HTTP 403".into())
        );
        let wrong = answer("101 Switching Protocols", "", "AAAA");
        assert!(accepted(wrong.as_bytes(), key).is_err());
        let compressed = answer(
            "101 Switching Protocols",
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        );
        assert!(accepted(compressed.as_bytes(), key).is_err());
        assert!(accepted(b"garbage\r\n\r\n", key).is_err());
    }
}
