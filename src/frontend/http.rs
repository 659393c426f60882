//! The HTTP side of the client port: POST carries JSON-RPC; GET answers health checks as
//! geth does, or upgrades to WebSocket; OPTIONS lists the methods; everything else is 405.
//! The wire (heads, bodies, keep-alive) is `server::http1`'s.

use http::StatusCode;

use super::Frontend;
use crate::http1::{Method, RequestHead, Response};

/// What the client port does with a request, decided from its head.
pub enum Route {
    /// Read the body and answer it as JSON-RPC.
    Rpc,
    /// Hand the connection to a WebSocket session.
    Upgrade,
    /// Answer at once, without reading a body.
    Answer(fn() -> Response),
}

/// Where a request goes.
pub fn route(head: &RequestHead) -> Route {
    match head.method {
        Method::Post => Route::Rpc,
        Method::Get if head.websocket.is_some() => Route::Upgrade,
        // A body-less GET is what load balancers send as a health check; geth answers 200.
        Method::Get => Route::Answer(|| Response::empty(StatusCode::OK)),
        Method::Options => Route::Answer(|| Response::empty(StatusCode::NO_CONTENT).allowing()),
        Method::Head | Method::Other => Route::Answer(|| {
            Response::plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").allowing()
        }),
    }
}

/// Answers a JSON-RPC request body.
pub async fn rpc(frontend: &Frontend, body: &[u8]) -> Response {
    match frontend.serve(super::Transport::Http, body).await.body {
        Some(json) => Response::json(json),
        None => Response::empty(StatusCode::OK),
    }
}

/// 408, and the connection closes: the rest of the body may still be on its way.
pub fn body_timed_out() -> Response {
    Response::plain(StatusCode::REQUEST_TIMEOUT, "request body timed out\n").closing()
}

/// 413, and the connection closes: the body is not read.
pub fn too_large() -> Response {
    Response::plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").closing()
}

/// 400 for a body whose framing is broken; the connection closes.
pub fn bad_body() -> Response {
    Response::plain(StatusCode::BAD_REQUEST, "could not read the request body\n").closing()
}
