//! Problems found while validating, each under its key, and the checks many keys share
//! (durations, addresses, CIDR lists, positive counts).

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::super::values::parse_net;
use super::super::{parse_duration, ConfigError};

/// Collects problems while validating, so all of them are reported at once.
#[derive(Default)]
pub(in crate::config) struct Problems(pub(super) Vec<ConfigError>);

impl Problems {
    pub(in crate::config) fn add(&mut self, key: &str, message: impl std::fmt::Display) {
        self.0.push(ConfigError::Invalid {
            key: key.to_string(),
            message: message.to_string(),
        });
    }

    pub(super) fn duration(&mut self, key: &str, value: Option<&str>, default: &str) -> Duration {
        let text = value.unwrap_or(default);
        parse_duration(text).unwrap_or_else(|e| {
            self.add(key, e);
            Duration::ZERO
        })
    }

    /// A duration that must be greater than zero (a zero timeout would refuse everything).
    pub(super) fn positive_duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Duration {
        let duration = self.duration(key, value, default);
        if duration.is_zero() && value.is_some_and(|v| parse_duration(v).is_ok()) {
            self.add(key, "must be greater than zero");
        }
        duration
    }

    pub(super) fn socket_addr(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> SocketAddr {
        let text = value.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.add(key, format!("invalid address {text:?} (expected IP:PORT)"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    pub(super) fn nets(&mut self, key: &str, values: &[String]) -> Vec<IpNet> {
        let mut nets = Vec::with_capacity(values.len());
        for (i, text) in values.iter().enumerate() {
            match parse_net(text) {
                Ok(net) => nets.push(net),
                Err(e) => self.add(&format!("{key}[{i}]"), e),
            }
        }
        nets
    }

    pub(super) fn positive(&mut self, key: &str, value: Option<usize>, default: usize) -> usize {
        let value = value.unwrap_or(default);
        if value == 0 {
            self.add(key, "must be at least 1");
        }
        value
    }
}
