//! Shared test support: each integration test crate uses only part of it.
#![allow(dead_code)]

pub mod chainlink;
pub mod devnet;
pub mod e2e;
pub mod gateway;
pub mod http;
pub mod log_capture;
pub mod mock;
pub mod process;
pub mod prometheus;
pub mod promql;
pub mod raw_http;
pub mod relay;
pub mod rules_yaml;
pub mod tls_relay;
pub mod tools;
pub mod ws_checks;
pub mod ws_client;
pub mod ws_watch;

#[allow(unused_imports)]
pub use http::WAIT;
