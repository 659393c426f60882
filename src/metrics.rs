//! Prometheus metrics: fixed label sets backed by atomics, so recording on the request path
//! is a couple of relaxed increments with no lock and no allocation. A leaf: the label enums
//! ([`labels`]), the [`Histogram`] and the text format; other modules render their own series
//! with [`header`] and `admin` composes the output.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

mod histogram;
pub mod labels;

pub use histogram::Histogram;
pub(crate) use labels::label_enum;
use labels::{method_index, method_label, METHOD_LABELS};
pub use labels::{CallResult, DenyReason, FailoverKind, HedgeResult, Transport};

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// Every metric ethgate exports.
pub struct Metrics {
    requests: Box<[AtomicU64]>,
    durations: [Histogram; Transport::ALL.len()],
    failovers: [AtomicU64; FailoverKind::ALL.len()],
    hedges: [AtomicU64; HedgeResult::ALL.len()],
    denied_connections: [AtomicU64; DenyReason::ALL.len()],
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

/// The slot of one `ethgate_requests_total` series.
fn request_slot(transport: Transport, method: usize, result: CallResult) -> usize {
    (transport.index() * METHOD_LABELS + method) * CallResult::ALL.len() + result.index()
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let requests = Transport::ALL.len() * METHOD_LABELS * CallResult::ALL.len();
        Metrics {
            requests: (0..requests).map(|_| AtomicU64::new(0)).collect(),
            durations: Default::default(),
            failovers: counters(),
            hedges: counters(),
            denied_connections: counters(),
            tls_handshake_failures: AtomicU64::new(0),
            ws_connections: AtomicI64::new(0),
            ws_queue_overflows: AtomicU64::new(0),
            inflight: AtomicI64::new(0),
            subscription_failover_seconds: Histogram::default(),
            gap_filled_blocks: AtomicU64::new(0),
            duplicates_dropped: AtomicU64::new(0),
        }
    }

    /// Counts one client call (`method` as the client sent it: unknown ones count as `other`).
    pub fn request(&self, transport: Transport, method: &str, result: CallResult) {
        let slot = request_slot(transport, method_index(method), result);
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` client calls of one method with one result: a run of repeats in a batch,
    /// counted with one method lookup instead of one each.
    pub fn requests(&self, transport: Transport, method: &str, result: CallResult, n: u64) {
        if n == 0 {
            return;
        }
        let slot = request_slot(transport, method_index(method), result);
        self.requests[slot].fetch_add(n, Ordering::Relaxed);
    }

    /// Records the duration of one client request (a whole batch counts once).
    pub fn request_duration(&self, transport: Transport, elapsed: Duration) {
        self.durations[transport.index()].observe(elapsed);
    }

    /// Counts one hedge event.
    pub fn hedge(&self, result: HedgeResult) {
        self.hedges[result.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failover of `kind`.
    pub fn failover(&self, kind: FailoverKind) {
        self.failovers[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Failovers of `kind` counted so far.
    pub fn failover_count(&self, kind: FailoverKind) -> u64 {
        self.failovers[kind.index()].load(Ordering::Relaxed)
    }

    /// Counts one connection closed at accept.
    pub fn denied_connection(&self, reason: DenyReason) {
        self.denied_connections[reason.index()].fetch_add(1, Ordering::Relaxed);
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
        labelled(
            &mut out,
            ("ethgate_failovers_total", "Failovers to another upstream."),
            ("kind", &FailoverKind::ALL),
            &self.failovers,
        );
        labelled(
            &mut out,
            (
                "ethgate_hedges_total",
                "Reads also sent to a second upstream after server.hedge_after, and hedges that answered first.",
            ),
            ("result", &HedgeResult::ALL),
            &self.hedges,
        );
        labelled(
            &mut out,
            (
                "ethgate_denied_connections_total",
                "Connections closed at accept.",
            ),
            ("reason", &DenyReason::ALL),
            &self.denied_connections,
        );
        header(
            &mut out,
            "ethgate_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
        );
        let failures = self.tls_handshake_failures.load(Ordering::Relaxed);
        let _ = writeln!(out, "ethgate_tls_handshake_failures_total {failures}");
        self.render_plain(&mut out);
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

    /// The unlabelled gauges and counters.
    fn render_plain(&self, out: &mut String) {
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
            header(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }

    fn render_requests(&self, out: &mut String) {
        header(
            out,
            "ethgate_requests_total",
            "counter",
            "Client JSON-RPC calls by outcome.",
        );
        for transport in Transport::ALL {
            for m in 0..METHOD_LABELS {
                let method = method_label(m);
                for result in CallResult::ALL {
                    let value =
                        self.requests[request_slot(transport, m, result)].load(Ordering::Relaxed);
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
        for (transport, histogram) in Transport::ALL.iter().zip(&self.durations) {
            histogram.render(
                out,
                "ethgate_request_duration_seconds",
                &format!("transport=\"{transport}\""),
            );
        }
    }
}

/// Writes one counter family with one label: `(name, help)`, the label's name with every
/// value (`ALL`), and the counters in the same order.
fn labelled<L: std::fmt::Display>(
    out: &mut String,
    (name, help): (&str, &str),
    (label, values): (&str, &[L]),
    counters: &[AtomicU64],
) {
    header(out, name, "counter", help);
    for (value, counter) in values.iter().zip(counters) {
        let count = counter.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

/// Writes the `# HELP` and `# TYPE` lines of one metric family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_is_counted_under_its_own_series() {
        let metrics = Metrics::new();
        metrics.request(Transport::Ws, "eth_call", CallResult::RpcError);
        metrics.request(Transport::Http, "eth_madeUp", CallResult::Invalid);
        metrics.request(Transport::Http, "eth_madeUp", CallResult::Invalid);
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ethgate_requests_total{"))
            .collect();
        assert_eq!(
            series,
            [
                r#"ethgate_requests_total{transport="http",method="other",result="invalid"} 2"#,
                r#"ethgate_requests_total{transport="ws",method="eth_call",result="rpc_error"} 1"#,
            ]
        );
    }

    #[test]
    fn a_run_of_calls_counts_as_many_single_calls() {
        let (one_by_one, at_once) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            one_by_one.request(Transport::Http, "eth_blockNumber", CallResult::Ok);
        }
        at_once.requests(Transport::Http, "eth_blockNumber", CallResult::Ok, 3);
        at_once.requests(Transport::Http, "eth_call", CallResult::Ok, 0);
        assert_eq!(one_by_one.render(), at_once.render());
        assert!(at_once.render().contains(
            r#"ethgate_requests_total{transport="http",method="eth_blockNumber",result="ok"} 3"#
        ));
    }

    #[test]
    fn labelled_families_render_every_value() {
        let metrics = Metrics::new();
        metrics.failover(FailoverKind::InFlight);
        metrics.hedge(HedgeResult::Won);
        metrics.denied_connection(DenyReason::ProxyHeader);
        let text = metrics.render();
        for line in [
            r#"ethgate_failovers_total{kind="request"} 0"#,
            r#"ethgate_failovers_total{kind="subscription"} 0"#,
            r#"ethgate_failovers_total{kind="in_flight"} 1"#,
            r#"ethgate_hedges_total{result="sent"} 0"#,
            r#"ethgate_hedges_total{result="won"} 1"#,
            r#"ethgate_denied_connections_total{reason="not_allowed"} 0"#,
            r#"ethgate_denied_connections_total{reason="proxy_header"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}");
        }
    }
}
