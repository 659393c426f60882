//! Opening a WebSocket to an upstream: `ws://` or `wss://` (verified like HTTPS, with the
//! upstream's CA and client certificate), with the upstream's headers on the handshake.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::http::sensitive_headers;
use crate::config::UpstreamConfig;

/// An open upstream WebSocket.
pub type UpstreamSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Dials `upstream.ws` within `connect_timeout`. The host name is resolved again on every
/// dial (tokio-tungstenite connects by name), so a reconnect follows a DNS change. Errors
/// never include the URL (its path may hold an API key).
pub async fn dial_ws(
    upstream: &UpstreamConfig,
    connect_timeout: Duration,
) -> Result<UpstreamSocket, String> {
    dial_ws_with(upstream, connect_timeout, None).await
}

/// [`dial_ws`] with WebSocket limits (message size) of the caller's choice.
pub async fn dial_ws_with(
    upstream: &UpstreamConfig,
    connect_timeout: Duration,
    ws_config: Option<WebSocketConfig>,
) -> Result<UpstreamSocket, String> {
    let (uri, request) = handshake_request(upstream)?;
    let connector = if uri.scheme_str() == Some("wss") {
        // Read per dial rather than once: a renewed client certificate is picked up on the
        // next reconnect, and reconnects are rare.
        Connector::Rustls(crate::config::upstream_tls::client_config(&upstream.tls)?)
    } else {
        Connector::Plain
    };
    let dial =
        tokio_tungstenite::connect_async_tls_with_config(request, ws_config, true, Some(connector));
    match tokio::time::timeout(connect_timeout, dial).await {
        Err(_) => Err(format!("timed out after {connect_timeout:?}")),
        Ok(Err(error)) => Err(describe(&error)),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

/// The upstream's `ws` URL and the handshake request for it, carrying the upstream's headers
/// (credentials among them, marked sensitive). Shared by the feed's dial and the call mux's.
pub(super) fn handshake_request(
    upstream: &UpstreamConfig,
) -> Result<
    (
        &http::Uri,
        tokio_tungstenite::tungstenite::handshake::client::Request,
    ),
    String,
> {
    let uri = upstream.ws.as_ref().ok_or("no ws endpoint")?;
    let mut request = uri
        .clone()
        .into_client_request()
        .map_err(|e| format!("invalid ws request: {e}"))?;
    for (name, value) in sensitive_headers(&upstream.headers) {
        request.headers_mut().insert(name, value);
    }
    Ok((uri, request))
}

/// A handshake error as text, with its sources (the TLS reason sits in a source).
fn describe(error: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::error::UrlError;
    use tokio_tungstenite::tungstenite::Error;
    match error {
        // The response may echo request details; the status is what matters.
        Error::Http(response) => format!("handshake refused: HTTP {}", response.status()),
        // One URL error variant quotes the whole URL (path keys included): never shown.
        Error::Url(UrlError::UnableToConnect(_)) => "unable to connect".to_string(),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(inner) = source {
                // tungstenite's messages often repeat their source already.
                let inner_text = inner.to_string();
                if !text.contains(&inner_text) {
                    text.push_str(": ");
                    text.push_str(&inner_text);
                }
                source = inner.source();
            }
            text
        }
    }
}
