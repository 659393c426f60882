//! The TOML file as written: serde structs with every key optional and unknown keys refused.
//! What a value means, and whether it is allowed, is decided in [`super::validate`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

mod listen;

pub(super) use listen::RawListen;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) chain_id: Option<u64>,
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) access: RawAccess,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) upstream: Vec<RawUpstream>,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) watch: Vec<RawWatch>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<RawListen>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_request_bytes: Option<usize>,
    pub(super) max_batch_len: Option<usize>,
    pub(super) header_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) hedge_after: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) drain_delay: Option<String>,
    pub(super) subscription_grace: Option<String>,
    pub(super) ws_queue_len: Option<usize>,
    pub(super) ws_queue_bytes: Option<usize>,
    pub(super) max_subscriptions_per_connection: Option<usize>,
    pub(super) max_subscriptions: Option<usize>,
    pub(super) body_timeout: Option<String>,
    pub(super) write_timeout: Option<String>,
    pub(super) max_response_bytes: Option<usize>,
    pub(super) tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) client_ca: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    pub(super) allow: Option<Vec<String>>,
    pub(super) proxy_protocol: Option<bool>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) deny_methods: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) max_lag_blocks: Option<u64>,
    pub(super) no_new_heads: Option<String>,
    pub(super) failure_threshold: Option<u32>,
    pub(super) recovery_threshold: Option<u32>,
}

/// One `[[upstream]]`: endpoints, TLS files and credentials, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: String,
    pub(super) http: Option<String>,
    pub(super) ws: Option<String>,
    #[serde(default)]
    pub(super) priority: u32,
    pub(super) tls_ca: Option<PathBuf>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    pub(super) calls: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    pub(super) address: String,
    pub(super) min_balance: Option<String>,
    pub(super) interval: Option<String>,
}
