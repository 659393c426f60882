//! `[server]`: its TLS files, its request timeout and the hedge delay that must fit inside it,
//! its listen addresses, its counts and sizes, and its other deadlines. Problems are reported
//! in that order.

use std::time::Duration;

use super::super::defaults as default;
use super::super::raw::{RawServer, RawTls};
use super::super::server_tls;
use super::super::{parse_duration, ServerConfig, TlsConfig};
use super::listen::validate_listen;
use super::Problems;

/// The counts and sizes of `[server]`, each at least 1.
struct Limits {
    max_connections: usize,
    max_request_bytes: usize,
    max_batch_len: usize,
    ws_queue_len: usize,
    ws_queue_bytes: usize,
    max_subscriptions_per_connection: usize,
    max_subscriptions: usize,
}

/// The deadlines and graces of `[server]` other than `request_timeout` (checked earlier, with
/// `hedge_after`, which depends on it).
struct Timeouts {
    header: Duration,
    shutdown_grace: Duration,
    drain_delay: Duration,
    subscription_grace: Duration,
    body: Duration,
    write: Duration,
}

impl RawServer {
    pub(super) fn validate(mut self, p: &mut Problems) -> ServerConfig {
        let tls = self.tls.take().and_then(|tls| validate_tls(tls, p));
        let request_timeout = validate_request_timeout(self.request_timeout.as_deref(), p);
        let hedge_after = validate_hedge_after(self.hedge_after.as_deref(), request_timeout, p);
        let listen = validate_listen(self.listen.take(), p);
        let limits = self.limits(p);
        let timeouts = self.timeouts(p);
        let max_response_bytes = p.positive(
            "server.max_response_bytes",
            self.max_response_bytes,
            default::MAX_RESPONSE_BYTES,
        );
        ServerConfig {
            listen,
            max_connections: limits.max_connections,
            max_request_bytes: limits.max_request_bytes,
            max_batch_len: limits.max_batch_len,
            ws_queue_len: limits.ws_queue_len,
            ws_queue_bytes: limits.ws_queue_bytes,
            max_subscriptions_per_connection: limits.max_subscriptions_per_connection,
            max_subscriptions: limits.max_subscriptions,
            header_timeout: timeouts.header,
            request_timeout,
            hedge_after,
            shutdown_grace: timeouts.shutdown_grace,
            drain_delay: timeouts.drain_delay,
            subscription_grace: timeouts.subscription_grace,
            body_timeout: timeouts.body,
            write_timeout: timeouts.write,
            max_response_bytes,
            tls,
        }
    }

    fn limits(&self, p: &mut Problems) -> Limits {
        Limits {
            max_connections: p.positive(
                "server.max_connections",
                self.max_connections,
                default::MAX_CONNECTIONS,
            ),
            max_request_bytes: p.positive(
                "server.max_request_bytes",
                self.max_request_bytes,
                default::MAX_REQUEST_BYTES,
            ),
            max_batch_len: p.positive(
                "server.max_batch_len",
                self.max_batch_len,
                default::MAX_BATCH_LEN,
            ),
            ws_queue_len: p.positive(
                "server.ws_queue_len",
                self.ws_queue_len,
                default::WS_QUEUE_LEN,
            ),
            ws_queue_bytes: p.positive(
                "server.ws_queue_bytes",
                self.ws_queue_bytes,
                default::WS_QUEUE_BYTES,
            ),
            max_subscriptions_per_connection: p.positive(
                "server.max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
                default::MAX_SUBSCRIPTIONS_PER_CONNECTION,
            ),
            max_subscriptions: p.positive(
                "server.max_subscriptions",
                self.max_subscriptions,
                default::MAX_SUBSCRIPTIONS,
            ),
        }
    }

    fn timeouts(&self, p: &mut Problems) -> Timeouts {
        Timeouts {
            // It also bounds TLS handshakes and PROXY headers: zero would refuse every client.
            header: p.positive_duration(
                "server.header_timeout",
                self.header_timeout.as_deref(),
                default::HEADER_TIMEOUT,
            ),
            shutdown_grace: p.duration(
                "server.shutdown_grace",
                self.shutdown_grace.as_deref(),
                default::SHUTDOWN_GRACE,
            ),
            // Zero is allowed: no delay, shutdown starts at once.
            drain_delay: p.duration(
                "server.drain_delay",
                self.drain_delay.as_deref(),
                default::DRAIN_DELAY,
            ),
            // Zero would close every subscriber on any momentary loss of the source.
            subscription_grace: p.positive_duration(
                "server.subscription_grace",
                self.subscription_grace.as_deref(),
                default::SUBSCRIPTION_GRACE,
            ),
            body: p.positive_duration(
                "server.body_timeout",
                self.body_timeout.as_deref(),
                default::BODY_TIMEOUT,
            ),
            write: p.positive_duration(
                "server.write_timeout",
                self.write_timeout.as_deref(),
                default::WRITE_TIMEOUT,
            ),
        }
    }
}

/// `[server.tls]`: present means both files are required, and they (with `client_ca`) must
/// load as `run` would load them: `check` must not pass files the server then refuses.
fn validate_tls(tls: RawTls, p: &mut Problems) -> Option<TlsConfig> {
    match (tls.cert, tls.key) {
        (Some(cert), Some(key)) => {
            let config = TlsConfig {
                cert,
                key,
                client_ca: tls.client_ca,
            };
            match server_tls::build(&config) {
                Ok(_) => Some(config),
                Err(e) => {
                    p.add(e.key(), e.detail());
                    None
                }
            }
        }
        (None, _) => {
            p.add("server.tls.cert", "required when [server.tls] is present");
            None
        }
        (_, None) => {
            p.add("server.tls.key", "required when [server.tls] is present");
            None
        }
    }
}

/// `server.request_timeout`: zero would fail every upstream attempt at once.
fn validate_request_timeout(value: Option<&str>, p: &mut Problems) -> Duration {
    let request_timeout = p.duration("server.request_timeout", value, default::REQUEST_TIMEOUT);
    if request_timeout.is_zero() {
        p.add("server.request_timeout", "must be greater than zero");
    }
    request_timeout
}

/// `server.hedge_after`: absent means off. Zero is refused rather than read as "off" (it
/// would otherwise mean "send every read twice"), and so is a delay that `request_timeout`
/// would end first.
fn validate_hedge_after(
    value: Option<&str>,
    request_timeout: Duration,
    p: &mut Problems,
) -> Option<Duration> {
    let text = value?;
    let key = "server.hedge_after";
    let delay = parse_duration(text).map_err(|e| p.add(key, e)).ok()?;
    if delay.is_zero() {
        p.add(
            key,
            "must be greater than zero (leave it out to turn hedging off)",
        );
        return None;
    }
    if !request_timeout.is_zero() && delay >= request_timeout {
        p.add(key, "must be shorter than server.request_timeout");
        return None;
    }
    Some(delay)
}
