//! The value of every key left out of the file, in one place (README's config table and
//! `config/ethgate.toml` document the same numbers). Durations are written as in the file, so a
//! default goes through the same parser as a configured value.

use std::net::SocketAddr;

/// `server.listen`: every interface, the port Ethereum clients use.
pub(super) const LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8545);
/// `server.max_connections`.
pub(super) const MAX_CONNECTIONS: usize = 10_000;
/// `server.max_request_bytes`: 5 MiB.
pub(super) const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
/// `server.max_batch_len`.
pub(super) const MAX_BATCH_LEN: usize = 1000;
/// `server.ws_queue_len`.
pub(super) const WS_QUEUE_LEN: usize = 4096;
/// `server.ws_queue_bytes`: 16 MiB.
pub(super) const WS_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// `server.max_subscriptions_per_connection`.
pub(super) const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 1000;
/// `server.max_subscriptions`.
pub(super) const MAX_SUBSCRIPTIONS: usize = 100_000;
/// `server.max_response_bytes`: 128 MiB.
pub(super) const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;
/// `server.header_timeout`.
pub(super) const HEADER_TIMEOUT: &str = "10s";
/// `server.request_timeout`.
pub(super) const REQUEST_TIMEOUT: &str = "30s";
/// `server.shutdown_grace`.
pub(super) const SHUTDOWN_GRACE: &str = "15s";
/// `server.drain_delay`.
pub(super) const DRAIN_DELAY: &str = "5s";
/// `server.subscription_grace`.
pub(super) const SUBSCRIPTION_GRACE: &str = "30s";
/// `server.body_timeout`.
pub(super) const BODY_TIMEOUT: &str = "30s";
/// `server.write_timeout`.
pub(super) const WRITE_TIMEOUT: &str = "30s";

/// `access.allow`: loopback only, so a fresh install is not an open relay.
pub(super) const ALLOW: [&str; 2] = ["127.0.0.0/8", "::1/128"];
/// `access.proxy_protocol`.
pub(super) const PROXY_PROTOCOL: bool = false;
/// The deny list used when `access.deny_methods` is not set.
pub const DEFAULT_DENY_METHODS: [&str; 6] = [
    "admin_*",
    "personal_*",
    "debug_*",
    "miner_*",
    "txpool_*",
    "engine_*",
];

/// `health.interval`.
pub(super) const HEALTH_INTERVAL: &str = "2s";
/// `health.timeout`.
pub(super) const HEALTH_TIMEOUT: &str = "1s";
/// `health.max_lag_blocks`.
pub(super) const MAX_LAG_BLOCKS: u64 = 5;
/// `health.no_new_heads`.
pub(super) const NO_NEW_HEADS: &str = "60s";
/// `health.failure_threshold`.
pub(super) const FAILURE_THRESHOLD: u32 = 3;
/// `health.recovery_threshold`.
pub(super) const RECOVERY_THRESHOLD: u32 = 2;

/// `admin.listen`: loopback, so metrics and status are not exposed by accident.
pub(super) const ADMIN_LISTEN: &str = "127.0.0.1:9545";
/// `log.format`.
pub(super) const LOG_FORMAT: &str = "text";
/// `log.level`.
pub(super) const LOG_LEVEL: &str = "info";
/// `watch[].interval`.
pub(super) const WATCH_INTERVAL: &str = "1m";
