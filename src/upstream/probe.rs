//! The active health probe: one batch of eth_chainId, eth_syncing and eth_blockNumber per
//! `health.interval`, bounded by `health.timeout`. Every [`TAG_ROUNDS`]th round (and the
//! first) the batch also asks for the `safe` and `finalized` blocks: they move once per epoch
//! on Ethereum, so reading them every round would cost two block objects per upstream per
//! interval for nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{HttpPool, SendError, Upstream, Upstreams};
use crate::jsonrpc::UpstreamResponse;

const PROBE_BODY: &str = concat!(
    r#"[{"jsonrpc":"2.0","id":0,"method":"eth_chainId"},"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"eth_syncing"},"#,
    r#"{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}]"#
);

/// The probe batch with the tag blocks added (ids 3 and 4).
const PROBE_WITH_TAGS_BODY: &str = concat!(
    r#"[{"jsonrpc":"2.0","id":0,"method":"eth_chainId"},"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"eth_syncing"},"#,
    r#"{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"},"#,
    r#"{"jsonrpc":"2.0","id":3,"method":"eth_getBlockByNumber","params":["safe",false]},"#,
    r#"{"jsonrpc":"2.0","id":4,"method":"eth_getBlockByNumber","params":["finalized",false]}]"#
);

/// Every how many probe rounds the `safe` and `finalized` blocks are read.
pub const TAG_ROUNDS: u64 = 3;

/// What one successful probe learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// `eth_chainId`.
    pub chain_id: u64,
    /// `eth_syncing` was not `false`.
    pub syncing: bool,
    /// `eth_blockNumber`.
    pub head: u64,
    /// Number of the `safe` block, when asked for and the node knows the tag.
    pub safe: Option<u64>,
    /// Number of the `finalized` block, when asked for and the node knows the tag.
    pub finalized: Option<u64>,
}

/// Why a probe failed; its text is the `reason` `/status` shows for an unreachable upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The batch could not be sent or got no answer.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No answer within `health.timeout`.
    #[error("probe timed out after {0:?}")]
    TimedOut(Duration),
    /// The answer is not a JSON-RPC batch answer (the parser's message).
    #[error("invalid probe answer: {0}")]
    Invalid(String),
    /// The answer lacks the call with this id.
    #[error("probe answer lacks id {0}")]
    MissingId(u64),
    /// The node answered the call with this id with an error.
    #[error("probe call {id} failed: {code} {message}")]
    CallFailed {
        /// Id of the call in the probe batch.
        id: u64,
        /// JSON-RPC error code.
        code: i64,
        /// JSON-RPC error message.
        message: String,
    },
    /// The answer to the call with this id has no result.
    #[error("probe call {0} has no result")]
    NoResult(u64),
    /// A number that is not a `0x` hex quantity, from the named method.
    #[error("{0} is not a hex quantity")]
    NotQuantity(&'static str),
}

/// Which probe batch to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Chain id, syncing and head.
    Plain,
    /// The plain batch plus the `safe` and `finalized` blocks.
    WithTags,
}

impl Batch {
    /// The batch of probe round `round`: the tags every [`TAG_ROUNDS`]th round.
    fn of_round(round: u64) -> Batch {
        if round % TAG_ROUNDS == 0 {
            Batch::WithTags
        } else {
            Batch::Plain
        }
    }

    fn body(self) -> Bytes {
        Bytes::from_static(match self {
            Batch::Plain => PROBE_BODY.as_bytes(),
            Batch::WithTags => PROBE_WITH_TAGS_BODY.as_bytes(),
        })
    }
}

/// Probes `upstream` every `health.interval` until `shutdown`.
pub async fn run(upstreams: Arc<Upstreams>, upstream: Arc<Upstream>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(upstreams.health.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                probe_and_record(&upstreams, &upstream, Batch::of_round(round)).await;
                round = round.wrapping_add(1);
            }
        }
    }
}

/// Runs one probe and feeds its outcome to the health model.
pub async fn probe_and_record(upstreams: &Upstreams, upstream: &Upstream, batch: Batch) {
    let started = Instant::now();
    let limit = upstreams.health.timeout;
    // Over the upstream's call transport: HTTP, or a WebSocket of its own when calls go over
    // one.
    let outcome = match timeout(limit, probe_over(|body| upstream.probe(body), batch)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ProbeError::TimedOut(limit)),
    };
    upstreams.record_probe(upstream, outcome, started.elapsed());
}

/// Sends the plain probe batch to one HTTP endpoint (no timeout: the caller bounds it).
pub async fn probe_endpoint(pool: &HttpPool, uri: &http::Uri) -> Result<Report, ProbeError> {
    probe_over(
        |body| async move { pool.post(uri, &body).await },
        Batch::Plain,
    )
    .await
}

/// Sends a probe batch through any call transport (no timeout: the caller bounds it).
pub async fn probe_over<F, Fut>(post: F, batch: Batch) -> Result<Report, ProbeError>
where
    F: FnOnce(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, SendError>>,
{
    let body = post(batch.body()).await?;
    parse_report(&body)
}

/// Reads the probe batch's answers, in whatever order the node returned them.
pub fn parse_report(body: &[u8]) -> Result<Report, ProbeError> {
    let answers: Vec<UpstreamResponse> =
        serde_json::from_slice(body).map_err(|e| ProbeError::Invalid(e.to_string()))?;
    let result = |id: u64| -> Result<&str, ProbeError> {
        let answer = answers
            .iter()
            .find(|a| a.numeric_id() == Some(id))
            .ok_or(ProbeError::MissingId(id))?;
        if let Some((code, message)) = answer.error_summary() {
            return Err(ProbeError::CallFailed { id, code, message });
        }
        answer
            .result
            .map(|raw| raw.get())
            .ok_or(ProbeError::NoResult(id))
    };
    Ok(Report {
        chain_id: parse_quantity(result(0)?).ok_or(ProbeError::NotQuantity("eth_chainId"))?,
        syncing: result(1)? != "false",
        head: parse_quantity(result(2)?).ok_or(ProbeError::NotQuantity("eth_blockNumber"))?,
        safe: tag_number(&answers, 3),
        finalized: tag_number(&answers, 4),
    })
}

/// The number of the tag block asked for with `id`. A node that does not know a tag
/// (pre-merge chains, some L2s) answers with an error or null: that says nothing about its
/// health, so the tag is just unknown.
fn tag_number(answers: &[UpstreamResponse<'_>], id: u64) -> Option<u64> {
    let answer = answers.iter().find(|a| a.numeric_id() == Some(id))?;
    #[derive(serde::Deserialize)]
    struct Numbered<'a> {
        #[serde(borrow)]
        number: Option<&'a str>,
    }
    let block: Numbered = serde_json::from_str(answer.result?.get()).ok()?;
    u64::from_str_radix(block.number?.strip_prefix("0x")?, 16).ok()
}

/// Parses a JSON string holding a `0x` hex quantity.
pub fn parse_quantity(json: &str) -> Option<u64> {
    let hex = json.strip_prefix("\"0x")?.strip_suffix('"')?;
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_read_in_any_order() {
        let body = br#"[{"jsonrpc":"2.0","id":2,"result":"0x10"},{"jsonrpc":"2.0","id":0,"result":"0x1"},{"jsonrpc":"2.0","id":1,"result":false}]"#;
        assert_eq!(
            parse_report(body),
            Ok(Report {
                chain_id: 1,
                syncing: false,
                head: 16,
                safe: None,
                finalized: None,
            })
        );
    }

    #[test]
    fn tag_blocks_are_read_and_their_errors_do_not_fail_the_probe() {
        let body = br#"[{"id":0,"result":"0x1"},{"id":1,"result":false},{"id":2,"result":"0x40"},
            {"id":3,"result":{"number":"0x20","hash":"0x1"}},{"id":4,"result":{"number":"0x10"}}]"#;
        let report = parse_report(body).unwrap();
        assert_eq!((report.safe, report.finalized), (Some(32), Some(16)));
        let body = br#"[{"id":0,"result":"0x1"},{"id":1,"result":false},{"id":2,"result":"0x40"},
            {"id":3,"error":{"code":-32000,"message":"unknown block"}},{"id":4,"result":null}]"#;
        let report = parse_report(body).unwrap();
        assert_eq!(
            (report.head, report.safe, report.finalized),
            (64, None, None)
        );
    }

    #[test]
    fn tag_blocks_are_asked_for_in_the_tag_batch_only() {
        assert!(PROBE_WITH_TAGS_BODY.contains("\"finalized\""));
        assert!(PROBE_WITH_TAGS_BODY.contains("\"safe\""));
        assert!(!PROBE_BODY.contains("eth_getBlockByNumber"));
        let parsed: serde_json::Value = serde_json::from_str(PROBE_WITH_TAGS_BODY).unwrap();
        assert_eq!(parsed.as_array().map(Vec::len), Some(5));
    }

    #[test]
    fn syncing_object_means_syncing() {
        let body = br#"[{"id":0,"result":"0x5"},{"id":1,"result":{"currentBlock":"0x1"}},{"id":2,"result":"0x1"}]"#;
        assert!(parse_report(body).unwrap().syncing);
    }

    #[test]
    fn errors_and_garbage_fail_the_probe() {
        assert!(parse_report(b"<html>").is_err());
        let body = br#"[{"id":0,"error":{"code":-32601,"message":"nope"}},{"id":1,"result":false},{"id":2,"result":"0x1"}]"#;
        assert_eq!(
            parse_report(body).unwrap_err().to_string(),
            "probe call 0 failed: -32601 nope"
        );
        let body = br#"[{"id":0,"result":"0x1"},{"id":1,"result":false}]"#;
        assert!(parse_report(body).is_err());
    }

    #[test]
    fn probe_errors_read_as_the_status_reason_always_did() {
        let invalid = parse_report(b"<html>").unwrap_err().to_string();
        assert!(invalid.starts_with("invalid probe answer: "), "{invalid}");
        let no_result = br#"[{"id":0,"result":"0x1"},{"id":1},{"id":2,"result":"0x1"}]"#;
        assert_eq!(
            parse_report(no_result).unwrap_err().to_string(),
            "probe call 1 has no result"
        );
        let not_hex = br#"[{"id":0,"result":"0x1"},{"id":1,"result":false},{"id":2,"result":7}]"#;
        assert_eq!(
            parse_report(not_hex).unwrap_err().to_string(),
            "eth_blockNumber is not a hex quantity"
        );
        assert_eq!(
            ProbeError::TimedOut(std::time::Duration::from_secs(2)).to_string(),
            "probe timed out after 2s"
        );
        let refused = ProbeError::from(SendError::NotSent("connection refused".into()));
        assert_eq!(
            refused.to_string(),
            SendError::NotSent("connection refused".into()).to_string()
        );
    }

    #[test]
    fn tag_blocks_are_read_every_few_rounds_starting_with_the_first() {
        let rounds: Vec<Batch> = (0..2 * TAG_ROUNDS).map(Batch::of_round).collect();
        assert_eq!(rounds[0], Batch::WithTags);
        assert_eq!(rounds[TAG_ROUNDS as usize], Batch::WithTags);
        let with_tags = rounds.iter().filter(|b| **b == Batch::WithTags).count();
        assert_eq!(with_tags, 2);
    }

    #[test]
    fn quantities_must_be_hex_strings() {
        assert_eq!(parse_quantity("\"0xff\""), Some(255));
        assert_eq!(parse_quantity("255"), None);
        assert_eq!(parse_quantity("\"ff\""), None);
    }
}
