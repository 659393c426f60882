//! Per-upstream series: state, head, lag, attempts by outcome and attempt latency.

use std::fmt::Write;

use super::health::State;
use super::{Upstreams, ATTEMPT_RESULTS};
use crate::metrics::header;

const STATES: [State; 6] = [
    State::Healthy,
    State::Lagging,
    State::Syncing,
    State::Stalled,
    State::Unreachable,
    State::WrongChain,
];

/// Up, state, head and lag of every upstream, and the latency of attempts on it.
pub fn render(out: &mut String, upstreams: &Upstreams) {
    header(
        out,
        "ethgate_upstream_up",
        "gauge",
        "1 when the upstream is in rotation.",
    );
    for u in upstreams.all() {
        let _ = writeln!(
            out,
            "ethgate_upstream_up{{upstream=\"{}\"}} {}",
            u.name(),
            u8::from(u.in_rotation())
        );
    }
    header(
        out,
        "ethgate_upstream_head",
        "gauge",
        "Last head block number reported.",
    );
    for u in upstreams.all() {
        let _ = writeln!(
            out,
            "ethgate_upstream_head{{upstream=\"{}\"}} {}",
            u.name(),
            u.head()
        );
    }
    render_tag_blocks(out, upstreams);
    header(
        out,
        "ethgate_upstream_lag_blocks",
        "gauge",
        "Blocks behind the best upstream head.",
    );
    for u in upstreams.all() {
        let _ = writeln!(
            out,
            "ethgate_upstream_lag_blocks{{upstream=\"{}\"}} {}",
            u.name(),
            upstreams.lag(u)
        );
    }
    render_states(out, upstreams);
    render_latency(out, upstreams);
}

/// `ethgate_upstream_safe_block` and `ethgate_upstream_finalized_block`: the last probed
/// numbers; an upstream that never reported a tag has no series (0 would read as a real
/// block and trip lag alerts).
fn render_tag_blocks(out: &mut String, upstreams: &Upstreams) {
    type Tagged = fn(&super::Upstream) -> Option<u64>;
    let series: [(&str, &str, Tagged); 2] = [
        (
            "ethgate_upstream_safe_block",
            "Last safe block number probed.",
            |u| u.safe(),
        ),
        (
            "ethgate_upstream_finalized_block",
            "Last finalized block number probed.",
            |u| u.finalized(),
        ),
    ];
    for (name, help, value) in series {
        header(out, name, "gauge", help);
        for u in upstreams.all() {
            if let Some(n) = value(u) {
                let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {n}", u.name());
            }
        }
    }
}

/// `ethgate_upstream_state{upstream,state}`: 1 for the state each upstream is in.
fn render_states(out: &mut String, upstreams: &Upstreams) {
    header(
        out,
        "ethgate_upstream_state",
        "gauge",
        "1 for the state each upstream is in.",
    );
    for u in upstreams.all() {
        for state in STATES {
            let on = u8::from(u.state() == state);
            let _ = writeln!(
                out,
                "ethgate_upstream_state{{upstream=\"{}\",state=\"{state}\"}} {on}",
                u.name()
            );
        }
    }
}

/// `ethgate_upstream_request_duration_seconds{upstream}`: every attempt, whatever its outcome.
fn render_latency(out: &mut String, upstreams: &Upstreams) {
    let name = "ethgate_upstream_request_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Duration of attempts on each upstream.",
    );
    for u in upstreams.all() {
        u.latency_histogram()
            .render(out, name, &format!("upstream=\"{}\"", u.name()));
    }
}

/// Attempts on each upstream by outcome.
pub fn render_requests(out: &mut String, upstreams: &Upstreams) {
    header(
        out,
        "ethgate_upstream_requests_total",
        "counter",
        "Attempts on each upstream by outcome.",
    );
    for upstream in upstreams.all() {
        for (result, value) in ATTEMPT_RESULTS.iter().zip(upstream.attempts()) {
            let name = upstream.name();
            let _ = writeln!(
                out,
                "ethgate_upstream_requests_total{{upstream=\"{name}\",result=\"{result}\"}} {value}"
            );
        }
    }
}
