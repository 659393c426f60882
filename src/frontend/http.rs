//! The HTTP side of the client port: POST carries JSON-RPC; GET answers health checks as
//! geth does; everything else is 405.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::Frontend;
use crate::connection::ConnectionGuard;

/// Response type of every client-port handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// Answers one HTTP request on the client port.
/// `connection` is the connection's place in `max_connections`, which a WebSocket session
/// keeps for as long as it lives.
pub async fn handle(
    frontend: Arc<Frontend>,
    request: Request<Incoming>,
    connection: Arc<ConnectionGuard>,
) -> Result<HttpResponse, Infallible> {
    let response = match *request.method() {
        Method::POST => rpc(&frontend, request).await,
        // A body-less GET is what load balancers send as a health check; geth answers 200.
        Method::GET if !is_websocket_upgrade(&request) => plain(StatusCode::OK, ""),
        Method::GET => super::ws::upgrade(frontend, request, connection),
        Method::OPTIONS => {
            let mut response = plain(StatusCode::NO_CONTENT, "");
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            response
        }
        _ => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            response
        }
    };
    Ok(response)
}

async fn rpc(frontend: &Frontend, request: Request<Incoming>) -> HttpResponse {
    let limit = frontend.max_request_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large();
    }
    // hyper's header timeout ends with the head; a body trickling in would otherwise hold
    // the connection's slot for as long as the client likes.
    let collect = Limited::new(request.into_body(), limit).collect();
    let body = match tokio::time::timeout(frontend.body_timeout, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(_)) => return plain(StatusCode::BAD_REQUEST, "could not read the request body\n"),
        Err(_) => return body_timed_out(),
    };
    let answer = frontend.serve(super::Transport::Http, &body).await.body;
    match answer {
        Some(json) => {
            let mut response = Response::new(Full::new(Bytes::from(json)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        None => plain(StatusCode::OK, ""),
    }
}

fn is_websocket_upgrade<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// 408, and `Connection: close` so hyper drops the connection instead of reading on.
fn body_timed_out() -> HttpResponse {
    let mut response = plain(StatusCode::REQUEST_TIMEOUT, "request body timed out\n");
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large() -> HttpResponse {
    plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
}

/// A plain-text response with `status`.
pub fn plain(status: StatusCode, text: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    if !text.is_empty() {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}
