//! Validation of the raw file into [`Config`]: every value checked, every problem collected
//! with the key it concerns, defaults (from [`super::defaults`]) filled in.

use std::time::Duration;

use super::defaults as default;
use super::raw::{RawAccess, RawConfig, RawHealth, RawLog, RawWatch};
use super::values::{check_log_filter, parse_ether};
use super::*;

mod listen;
mod problems;
mod server;
mod upstream;

pub(super) use problems::Problems;
use upstream::validate_upstreams;

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigErrors> {
        let mut p = Problems::default();
        if self.chain_id == Some(0) {
            p.add("chain_id", "must be a positive integer");
        }
        let server = self.server.validate(&mut p);
        let access = self.access.validate(&mut p);
        let health = self.health.validate(&mut p);
        let upstreams = validate_upstreams(self.upstream, &mut p);
        let admin = AdminConfig {
            listen: p.socket_addr(
                "admin.listen",
                self.admin.listen.as_deref(),
                default::ADMIN_LISTEN,
            ),
        };
        let log = self.log.validate(&mut p);
        let watch = self
            .watch
            .into_iter()
            .enumerate()
            .map(|(i, w)| w.validate(&format!("watch[{i}]"), &mut p))
            .collect();
        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        Ok(Config {
            chain_id: self.chain_id,
            server,
            access,
            health,
            upstreams,
            admin,
            log,
            watch,
        })
    }
}

impl RawAccess {
    fn validate(self, p: &mut Problems) -> AccessConfig {
        let allow = match self.allow {
            Some(allow) => p.nets("access.allow", &allow),
            None => default::ALLOW
                .iter()
                .filter_map(|net| net.parse().ok())
                .collect(),
        };
        let proxy_protocol = self.proxy_protocol.unwrap_or(default::PROXY_PROTOCOL);
        let trusted_proxies = p.nets(
            "access.trusted_proxies",
            &self.trusted_proxies.unwrap_or_default(),
        );
        if proxy_protocol && trusted_proxies.is_empty() {
            p.add(
                "access.proxy_protocol",
                "needs access.trusted_proxies: the header is believed only from them",
            );
        }
        let deny_methods = self
            .deny_methods
            .unwrap_or_else(|| DEFAULT_DENY_METHODS.map(String::from).to_vec());
        for (i, pattern) in deny_methods.iter().enumerate() {
            let stem = pattern.strip_suffix('*').unwrap_or(pattern);
            if stem.is_empty() || stem.contains('*') {
                p.add(
                    &format!("access.deny_methods[{i}]"),
                    format!("{pattern:?} must be a method name or a prefix ending in a single '*'"),
                );
            }
        }
        AccessConfig {
            allow,
            proxy_protocol,
            trusted_proxies,
            deny_methods,
        }
    }
}

impl RawHealth {
    fn validate(self, p: &mut Problems) -> HealthConfig {
        let interval = p.duration(
            "health.interval",
            self.interval.as_deref(),
            default::HEALTH_INTERVAL,
        );
        let timeout = p.duration(
            "health.timeout",
            self.timeout.as_deref(),
            default::HEALTH_TIMEOUT,
        );
        check_probe_timing(interval, timeout, p);
        let failure_threshold = self.failure_threshold.unwrap_or(default::FAILURE_THRESHOLD);
        if failure_threshold == 0 {
            p.add("health.failure_threshold", "must be at least 1");
        }
        let recovery_threshold = self
            .recovery_threshold
            .unwrap_or(default::RECOVERY_THRESHOLD);
        if recovery_threshold == 0 {
            p.add("health.recovery_threshold", "must be at least 1");
        }
        let no_new_heads = p.duration(
            "health.no_new_heads",
            self.no_new_heads.as_deref(),
            default::NO_NEW_HEADS,
        );
        // Zero turns stall detection off (documented); otherwise a probe must fit inside it.
        if !no_new_heads.is_zero() && no_new_heads <= interval {
            p.add(
                "health.no_new_heads",
                format!("must be longer than health.interval ({interval:?})"),
            );
        }
        HealthConfig {
            interval,
            timeout,
            max_lag_blocks: self.max_lag_blocks.unwrap_or(default::MAX_LAG_BLOCKS),
            no_new_heads,
            failure_threshold,
            recovery_threshold,
        }
    }
}

/// `health.interval` and `health.timeout`: a probe must end before the next one is due.
fn check_probe_timing(interval: Duration, timeout: Duration, p: &mut Problems) {
    if interval.is_zero() {
        p.add("health.interval", "must be greater than zero");
    }
    if timeout.is_zero() {
        p.add("health.timeout", "must be greater than zero");
    } else if timeout >= interval && !interval.is_zero() {
        p.add(
            "health.timeout",
            format!("must be shorter than health.interval ({interval:?})"),
        );
    }
}

impl RawLog {
    fn validate(self, p: &mut Problems) -> LogConfig {
        let format = match self.format.as_deref().unwrap_or(default::LOG_FORMAT) {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                p.add(
                    "log.format",
                    format!("{other:?} is not one of \"text\", \"json\""),
                );
                LogFormat::Text
            }
        };
        let level = self.level.unwrap_or_else(|| default::LOG_LEVEL.to_string());
        if let Err(e) = check_log_filter(&level) {
            p.add("log.level", e);
        }
        LogConfig { format, level }
    }
}

impl RawWatch {
    fn validate(self, key: &str, p: &mut Problems) -> WatchConfig {
        let valid_address = self.address.len() == 42
            && self.address.starts_with("0x")
            && self.address[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_address {
            p.add(
                &format!("{key}.address"),
                format!("{:?} is not 0x + 40 hex digits", self.address),
            );
        }
        let min_balance_wei = match self.min_balance.as_deref().map(parse_ether) {
            None => 0,
            Some(Ok(wei)) => wei,
            Some(Err(e)) => {
                p.add(&format!("{key}.min_balance"), e);
                0
            }
        };
        WatchConfig {
            address: self.address.to_ascii_lowercase(),
            min_balance_wei,
            interval: p.positive_duration(
                &format!("{key}.interval"),
                self.interval.as_deref(),
                default::WATCH_INTERVAL,
            ),
        }
    }
}
