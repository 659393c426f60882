//! HTTP/1.1 wire pieces shared by the client port's server (`server::http1`) and the upstream
//! client (`upstream::http`): both read bodies the same way.

pub mod chunked;
pub mod headers;
pub mod request;
pub mod response;

pub use request::{BodyLength, HeadError, Method, RequestHead, WebSocketUpgrade};
pub use response::Response;

#[cfg(test)]
mod tests;
