//! Per-upstream series: state, head, lag, attempts by outcome and attempt latency.

use std::fmt::Write;

use super::health::State;
use super::Upstreams;
use crate::metrics::{header, label_enum};

label_enum! {
    /// Outcome of one attempt on an upstream (`result` of `ethgate_upstream_requests_total`).
    pub enum AttemptResult {
        /// A final answer.
        Ok => "ok",
        /// An answer that lacked the data asked for: retried elsewhere.
        MissingData => "missing_data",
        /// An answer below a block already served: retried elsewhere.
        Behind => "behind",
        /// The request never left ethgate.
        NotSent => "not_sent",
        /// Sent, but no answer came back.
        NoAnswer => "no_answer",
        /// An HTTP status other than success.
        HttpError => "http_error",
        /// No answer within `server.request_timeout`.
        Timeout => "timeout",
        /// An answer that is not a JSON-RPC response to what was sent.
        BadAnswer => "bad_answer",
        /// An answer over `server.max_response_bytes`.
        TooLarge => "too_large",
        /// Left unanswered: another attempt answered first, or the upstream left rotation.
        Abandoned => "abandoned",
    }
}

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
        for state in State::ALL {
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
        for (result, value) in AttemptResult::ALL.iter().zip(upstream.attempts()) {
            let name = upstream.name();
            let _ = writeln!(
                out,
                "ethgate_upstream_requests_total{{upstream=\"{name}\",result=\"{result}\"}} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_results_keep_their_exposition_names_in_order() {
        let names = AttemptResult::ALL.map(AttemptResult::as_str).join(",");
        assert_eq!(
            names,
            "ok,missing_data,behind,not_sent,no_answer,http_error,timeout,bad_answer,too_large,abandoned"
        );
        for (i, result) in AttemptResult::ALL.iter().enumerate() {
            assert_eq!(result.index(), i);
        }
    }

    #[test]
    fn every_state_is_in_the_table_once() {
        for (i, state) in State::ALL.iter().enumerate() {
            assert_eq!(State::from_u8(*state as u8), *state);
            assert!(!State::ALL[..i].contains(state), "{state} listed twice");
        }
    }
}
