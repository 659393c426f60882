//! File descriptors: the soft `RLIMIT_NOFILE` is raised to the hard limit at start, and a
//! configuration that could need more than that is warned about. When descriptors run out,
//! accepts fail and upstream connects fail; neither must come as a surprise.

use crate::config::Config;

/// Descriptors outside the per-connection count: listeners, log output, DNS, the runtime.
const RESERVE: u64 = 64;

/// Descriptors per upstream besides pooled request connections: its subscription WebSocket
/// and a probe connection.
const PER_UPSTREAM: u64 = 2;

/// Descriptors `config` needs at least: every client connection, the upstreams' own
/// connections, the admin port's cap and a reserve. Pooled upstream connections come on top,
/// one per concurrent upstream call, which the README asks operators to leave room for.
pub fn needed(config: &Config) -> u64 {
    let clients = config.server.max_connections as u64;
    let upstreams = config.upstreams.len() as u64;
    clients + upstreams * PER_UPSTREAM + crate::admin::MAX_CONNECTIONS as u64 + RESERVE
}

/// Raises the soft limit to the hard one and warns when `config` could need more; returns the
/// soft limit in force.
pub fn raise_and_check(config: &Config) -> Option<u64> {
    let before = rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft);
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "could not raise the open-file limit");
            before?
        }
    };
    if before.is_some_and(|b| b < limit) {
        tracing::info!(
            from = before,
            to = limit,
            "raised the open-file limit (RLIMIT_NOFILE)"
        );
    }
    if let Some(warning) = shortfall(needed(config), limit) {
        tracing::warn!(
            limit,
            needed = needed(config),
            max_connections = config.server.max_connections,
            "{warning}"
        );
    }
    Some(limit)
}

/// The warning when `needed` descriptors exceed `limit`.
fn shortfall(needed: u64, limit: u64) -> Option<String> {
    (needed > limit).then(|| {
        format!(
            "open-file limit {limit} is below the {needed} that server.max_connections and the \
             upstreams may need; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower \
             server.max_connections"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [server]
        max_connections = 10000
        [[upstream]]
        name = "a"
        http = "http://127.0.0.1:8545"
        [[upstream]]
        name = "b"
        http = "http://127.0.0.1:8546"
    "#;

    #[test]
    fn needs_count_clients_upstreams_admin_and_a_reserve() {
        let config = Config::from_toml_str(CONFIG).expect("valid");
        let admin = crate::admin::MAX_CONNECTIONS as u64;
        assert_eq!(needed(&config), 10_000 + 2 * PER_UPSTREAM + admin + RESERVE);
    }

    #[test]
    fn shortfall_is_reported_only_when_needs_exceed_the_limit() {
        assert!(shortfall(20_132, 1024).is_some_and(|w| w.contains("1024")));
        assert_eq!(shortfall(1000, 1024), None);
        assert_eq!(shortfall(1024, 1024), None);
    }
}
