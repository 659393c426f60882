//! Prometheus metrics: fixed label sets backed by atomics, so recording on the request path
//! is a couple of relaxed increments with no lock and no allocation.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Method names that get their own label (sorted: looked up by binary search); anything else
/// is `other`.
const KNOWN_METHODS: &[&str] = &[
    "eth_blockNumber",
    "eth_call",
    "eth_chainId",
    "eth_estimateGas",
    "eth_feeHistory",
    "eth_gasPrice",
    "eth_getBalance",
    "eth_getBlockByHash",
    "eth_getBlockByNumber",
    "eth_getBlockReceipts",
    "eth_getBlockTransactionCountByHash",
    "eth_getBlockTransactionCountByNumber",
    "eth_getCode",
    "eth_getFilterChanges",
    "eth_getFilterLogs",
    "eth_getLogs",
    "eth_getProof",
    "eth_getStorageAt",
    "eth_getTransactionByBlockHashAndIndex",
    "eth_getTransactionByBlockNumberAndIndex",
    "eth_getTransactionByHash",
    "eth_getTransactionCount",
    "eth_getTransactionReceipt",
    "eth_getUncleByBlockHashAndIndex",
    "eth_getUncleCountByBlockHash",
    "eth_maxPriorityFeePerGas",
    "eth_newBlockFilter",
    "eth_newFilter",
    "eth_newPendingTransactionFilter",
    "eth_sendRawTransaction",
    "eth_sendTransaction",
    "eth_subscribe",
    "eth_syncing",
    "eth_uninstallFilter",
    "eth_unsubscribe",
    "net_listening",
    "net_peerCount",
    "net_version",
    "web3_clientVersion",
    "web3_sha3",
];

/// Client transports.
pub const TRANSPORTS: [&str; 2] = ["http", "ws"];
/// Outcomes of one client call.
pub const RESULTS: [&str; 5] = ["ok", "rpc_error", "denied", "invalid", "unavailable"];
/// `request`: the selected upstream changed; `subscription`: the feed's source changed;
/// `in_flight`: a call waiting on an upstream that left rotation was moved to another one.
const FAILOVER_KINDS: [&str; 3] = ["request", "subscription", "in_flight"];
/// `sent`: reads also sent to a second upstream after `server.hedge_after`; `won`: of those,
/// the ones the second upstream answered first.
const HEDGE_RESULTS: [&str; 2] = ["sent", "won"];
const DENY_REASONS: [&str; 2] = ["not_allowed", "proxy_header"];
/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Writes the buckets, sum and count of series `name{labels}`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

fn counters(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// Every metric ethgate exports.
pub struct Metrics {
    requests: Box<[AtomicU64]>,
    durations: [Histogram; TRANSPORTS.len()],
    failovers: Box<[AtomicU64]>,
    hedges: Box<[AtomicU64]>,
    denied_connections: Box<[AtomicU64]>,
    tls_handshake_failures: AtomicU64,
    ws_connections: AtomicI64,
    ws_queue_overflows: AtomicU64,
    inflight: AtomicI64,
    subscription_failover_seconds: Histogram,
    gap_filled_blocks: AtomicU64,
    duplicates_dropped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        Metrics {
            requests: counters(TRANSPORTS.len() * (KNOWN_METHODS.len() + 1) * RESULTS.len()),
            durations: Default::default(),
            failovers: counters(FAILOVER_KINDS.len()),
            hedges: counters(HEDGE_RESULTS.len()),
            denied_connections: counters(DENY_REASONS.len()),
            tls_handshake_failures: AtomicU64::new(0),
            ws_connections: AtomicI64::new(0),
            ws_queue_overflows: AtomicU64::new(0),
            inflight: AtomicI64::new(0),
            subscription_failover_seconds: Histogram::default(),
            gap_filled_blocks: AtomicU64::new(0),
            duplicates_dropped: AtomicU64::new(0),
        }
    }

    /// Counts one client call.
    pub fn request(&self, transport: &str, method: &str, result: &str) {
        let t = position(&TRANSPORTS, transport);
        let m = method_index(method);
        let r = position(&RESULTS, result);
        let i = (t * (KNOWN_METHODS.len() + 1) + m) * RESULTS.len() + r;
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the duration of one client request (a whole batch counts once).
    pub fn request_duration(&self, transport: &str, elapsed: Duration) {
        self.durations[position(&TRANSPORTS, transport)].observe(elapsed);
    }

    /// Counts one hedge event: `sent` or `won`.
    pub fn hedge(&self, result: &str) {
        self.hedges[position(&HEDGE_RESULTS, result)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failover of `kind` (`request`, `subscription` or `in_flight`).
    pub fn failover(&self, kind: &str) {
        self.failovers[position(&FAILOVER_KINDS, kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// Failovers of `kind` counted so far.
    #[cfg(test)]
    pub(crate) fn failover_count(&self, kind: &str) -> u64 {
        self.failovers[position(&FAILOVER_KINDS, kind)].load(Ordering::Relaxed)
    }

    /// Counts one connection closed at accept.
    pub fn denied_connection(&self, reason: &str) {
        self.denied_connections[position(&DENY_REASONS, reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed TLS handshake.
    pub fn tls_handshake_failure(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A client WebSocket session started.
    pub fn ws_connection_opened(&self) {
        self.ws_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A client WebSocket session ended.
    pub fn ws_connection_closed(&self) {
        self.ws_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// A client was closed with 1008 because its outgoing queue was full.
    pub fn ws_queue_overflow(&self) {
        self.ws_queue_overflows.fetch_add(1, Ordering::Relaxed);
    }

    /// A client request started (`+1`) or finished (`-1`).
    pub fn inflight(&self, delta: i64) {
        self.inflight.fetch_add(delta, Ordering::Relaxed);
    }

    /// Records how long subscriptions went unserved during a failover.
    pub fn subscription_failover(&self, unserved: Duration) {
        self.subscription_failover_seconds.observe(unserved);
    }

    /// Counts blocks delivered to fill a gap in an upstream's head stream.
    pub fn gap_filled(&self, blocks: u64) {
        self.gap_filled_blocks.fetch_add(blocks, Ordering::Relaxed);
    }

    /// Counts a head or pending transaction dropped as already delivered.
    pub fn duplicate_dropped(&self) {
        self.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders these metrics in the Prometheus text format (the admin port adds the
    /// per-upstream series, which `upstream` renders itself).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.render_requests(&mut out);
        header(
            &mut out,
            "ethgate_failovers_total",
            "counter",
            "Failovers to another upstream.",
        );
        for (kind, c) in FAILOVER_KINDS.iter().zip(self.failovers.iter()) {
            let _ = writeln!(
                out,
                "ethgate_failovers_total{{kind=\"{kind}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "ethgate_hedges_total",
            "counter",
            "Reads also sent to a second upstream after server.hedge_after, and hedges that answered first.",
        );
        for (result, c) in HEDGE_RESULTS.iter().zip(self.hedges.iter()) {
            let _ = writeln!(
                out,
                "ethgate_hedges_total{{result=\"{result}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "ethgate_denied_connections_total",
            "counter",
            "Connections closed at accept.",
        );
        for (reason, c) in DENY_REASONS.iter().zip(self.denied_connections.iter()) {
            let _ = writeln!(
                out,
                "ethgate_denied_connections_total{{reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "ethgate_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
        );
        let failures = self.tls_handshake_failures.load(Ordering::Relaxed);
        let _ = writeln!(out, "ethgate_tls_handshake_failures_total {failures}");
        let plain = [
            (
                "ethgate_inflight_requests",
                "gauge",
                "Client requests being answered.",
                self.inflight.load(Ordering::Relaxed),
            ),
            (
                "ethgate_ws_queue_overflows_total",
                "counter",
                "WebSocket clients closed with 1008 for not reading.",
                self.ws_queue_overflows.load(Ordering::Relaxed) as i64,
            ),
            (
                "ethgate_ws_connections",
                "gauge",
                "Open client WebSocket sessions.",
                self.ws_connections.load(Ordering::Relaxed),
            ),
            (
                "ethgate_gap_filled_blocks_total",
                "counter",
                "Blocks fetched to fill gaps in subscriptions.",
                self.gap_filled_blocks.load(Ordering::Relaxed) as i64,
            ),
            (
                "ethgate_duplicates_dropped_total",
                "counter",
                "Duplicate heads or transactions not delivered.",
                self.duplicates_dropped.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in plain {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let name = "ethgate_subscription_failover_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time subscriptions went unserved in a failover.",
        );
        self.subscription_failover_seconds
            .render(&mut out, name, "");
        out
    }

    fn render_requests(&self, out: &mut String) {
        header(
            out,
            "ethgate_requests_total",
            "counter",
            "Client JSON-RPC calls by outcome.",
        );
        for (t, transport) in TRANSPORTS.iter().enumerate() {
            let methods = KNOWN_METHODS.iter().chain(std::iter::once(&"other"));
            for (m, method) in methods.enumerate() {
                for (r, result) in RESULTS.iter().enumerate() {
                    let i = (t * (KNOWN_METHODS.len() + 1) + m) * RESULTS.len() + r;
                    let value = self.requests[i].load(Ordering::Relaxed);
                    if value > 0 {
                        let _ = writeln!(out, "ethgate_requests_total{{transport=\"{transport}\",method=\"{method}\",result=\"{result}\"}} {value}");
                    }
                }
            }
        }
        header(
            out,
            "ethgate_request_duration_seconds",
            "histogram",
            "Client request latency.",
        );
        for (transport, histogram) in TRANSPORTS.iter().zip(&self.durations) {
            histogram.render(
                out,
                "ethgate_request_duration_seconds",
                &format!("transport=\"{transport}\""),
            );
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines of one metric family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Index of `value` in a fixed label set; unknown values fall on the last entry.
fn position(set: &[&str], value: &str) -> usize {
    set.iter()
        .position(|s| *s == value)
        .unwrap_or(set.len() - 1)
}

fn method_index(method: &str) -> usize {
    // A binary search over the sorted list: cheaper per request than hashing the name.
    KNOWN_METHODS
        .binary_search(&method)
        .unwrap_or(KNOWN_METHODS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_sorted_and_unknown_ones_are_other() {
        assert!(
            KNOWN_METHODS.windows(2).all(|w| w[0] < w[1]),
            "KNOWN_METHODS must stay sorted"
        );
        assert_eq!(KNOWN_METHODS[method_index("eth_call")], "eth_call");
        assert_eq!(method_index("eth_madeUp"), KNOWN_METHODS.len());
    }
}
