//! Configuration: raw TOML structs (unknown keys rejected) validated into a typed [`Config`].
//!
//! Every problem names the key it concerns, and validation collects all problems at once so
//! `ethgate check` can print them together.
//!
//! Layout: this file holds the validated types; `raw` the serde structs as written,
//! `validate` (with `validate/server.rs`, `validate/listen.rs`, `validate/upstream.rs`) the
//! rules, `defaults` the value of every key left out, `error` the problems; `duration`,
//! `values`, `url` and `env` parse single values; [`upstream_tls`] builds an upstream's rustls
//! client config.

mod defaults;
mod duration;
mod env;
mod error;
mod locate;
mod raw;
pub mod server_tls;
pub mod upstream_tls;
mod url;
mod validate;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use defaults::DEFAULT_DENY_METHODS;
pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
pub use locate::Place;
pub use values::check_log_filter;

/// Validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Expected chain id; when `None` the first verified upstream sets it.
    pub chain_id: Option<u64>,
    /// Client-facing listener settings.
    pub server: ServerConfig,
    /// Who may connect and which methods they may call.
    pub access: AccessConfig,
    /// Health-check thresholds.
    pub health: HealthConfig,
    /// Upstream Ethereum clients, in the order written.
    pub upstreams: Vec<UpstreamConfig>,
    /// Admin listener settings.
    pub admin: AdminConfig,
    /// Logging defaults (command-line flags override them).
    pub log: LogConfig,
    /// Addresses whose balance is watched.
    pub watch: Vec<WatchConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Client listen addresses (at least one), each serving HTTP and WebSocket alike.
    pub listen: Vec<SocketAddr>,
    /// Concurrent client connections before accept waits.
    pub max_connections: usize,
    /// Largest request body or WebSocket message.
    pub max_request_bytes: usize,
    /// Longest batch accepted.
    pub max_batch_len: usize,
    /// Messages queued for one WebSocket client before it is closed as too slow (1008).
    pub ws_queue_len: usize,
    /// Bytes of notifications (and, separately, of answers) queued for one WebSocket client.
    pub ws_queue_bytes: usize,
    /// Subscriptions one client connection may hold (over it: -32005 "limit exceeded").
    pub max_subscriptions_per_connection: usize,
    /// Subscriptions the whole process may hold.
    pub max_subscriptions: usize,
    /// Deadline for a whole request head to arrive.
    pub header_timeout: Duration,
    /// Budget of one upstream attempt.
    pub request_timeout: Duration,
    /// When set, a read with no answer after this long is also sent to the next upstream.
    pub hedge_after: Option<Duration>,
    /// How long in-flight requests may run after shutdown starts.
    pub shutdown_grace: Duration,
    /// After SIGTERM: how long the port keeps serving, with `/readyz` at 503, before shutdown.
    pub drain_delay: Duration,
    /// How long a subscription may go unserved before its client is closed.
    pub subscription_grace: Duration,
    /// Deadline for a whole request body to arrive after its head (408 and close).
    pub body_timeout: Duration,
    /// How long a client may accept no bytes of a response or frame before it is disconnected.
    pub write_timeout: Duration,
    /// Largest upstream answer relayed; larger ones are cut off while streaming.
    pub max_response_bytes: usize,
    /// TLS termination, when configured.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// `[access]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    /// Client networks allowed to connect.
    pub allow: Vec<IpNet>,
    /// Whether a PROXY protocol header is expected from trusted proxies.
    pub proxy_protocol: bool,
    /// Load balancers whose client-address claims are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Denied method names and `prefix_*` patterns.
    pub deny_methods: Vec<String>,
}

/// `[health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Probe period per upstream.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Blocks behind the best head tolerated before an upstream is `lagging`.
    pub max_lag_blocks: u64,
    /// Time without a new head, while another upstream advances, before `stalled`.
    pub no_new_heads: Duration,
    /// Consecutive failures that make an upstream `unreachable`.
    pub failure_threshold: u32,
    /// Consecutive successes that bring it back.
    pub recovery_threshold: u32,
}

/// One `[[upstream]]`.
#[derive(Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Unique name used in logs, metrics and /status.
    pub name: String,
    /// JSON-RPC over HTTP endpoint.
    pub http: Option<http::Uri>,
    /// JSON-RPC over WebSocket endpoint.
    pub ws: Option<http::Uri>,
    /// Lower is preferred.
    pub priority: u32,
    /// TLS settings for `https://` and `wss://` endpoints.
    pub tls: UpstreamTls,
    /// Headers sent on every HTTP request and on the WebSocket handshake (URL userinfo
    /// becomes an `Authorization: Basic` entry here). Debug output shows names only.
    pub headers: Credentials,
    /// The endpoint JSON-RPC calls (and probes) go to.
    pub calls: CallTransport,
}

/// Which endpoint of an upstream carries JSON-RPC calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallTransport {
    /// One pooled keep-alive connection per call in flight (`http`).
    #[default]
    Http,
    /// Every call multiplexed over one WebSocket connection (`ws`): fewer connections and
    /// writes coalesced across calls, but the node answers them all on one socket.
    Ws,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URL paths and queries may hold API keys: scheme and host only.
        let shown = |uri: &Option<http::Uri>| {
            uri.as_ref().map(|u| {
                let scheme = u.scheme_str().unwrap_or("");
                let host = u.authority().map_or("", |a| a.as_str());
                format!("{scheme}://{host}")
            })
        };
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("http", &shown(&self.http))
            .field("ws", &shown(&self.ws))
            .field("priority", &self.priority)
            .field("tls", &self.tls)
            .field("headers", &self.headers)
            .field("calls", &self.calls)
            .finish()
    }
}

impl UpstreamConfig {
    /// Whether any endpoint is `https://` or `wss://`.
    pub fn uses_tls(&self) -> bool {
        [&self.http, &self.ws]
            .into_iter()
            .flatten()
            .any(|u| matches!(u.scheme_str(), Some("https" | "wss")))
    }
}

/// Per-upstream TLS files (PEM); verification against the system store is always on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamTls {
    /// Extra CA certificate(s) trusted for this upstream, besides the system store.
    pub ca: Option<PathBuf>,
    /// Client certificate chain for mTLS.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub key: Option<PathBuf>,
}

/// Header names and values for one upstream; the values are secrets.
#[derive(Clone, PartialEq, Default)]
pub struct Credentials(pub Vec<(String, String)>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values are API keys and passwords: never printed.
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}: <redacted>")))
            .finish()
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Admin listen address.
    pub listen: SocketAddr,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Level or `tracing` filter directive.
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[[watch]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// Account address, `0x` + 40 hex digits.
    pub address: String,
    /// Warning threshold in wei.
    pub min_balance_wei: u128,
    /// Poll period.
    pub interval: Duration,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_toml_str(&text)
    }

    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        let raw: raw::RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::syntax(&e, text))?;
        raw.validate()
    }
}

#[cfg(test)]
mod tests;
