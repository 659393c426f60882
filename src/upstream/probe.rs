//! The active health probe: one batch of eth_chainId, eth_syncing and eth_blockNumber per
//! `health.interval`, bounded by `health.timeout`. Every [`TAG_ROUNDS`]th round (and the
//! first) the batch also asks for the `safe` and `finalized` blocks: they move once per epoch
//! on Ethereum, so reading them every round would cost two block objects per upstream per
//! interval for nothing.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Upstreams;
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

/// Probes upstream `index` every `health.interval` until `shutdown`.
pub async fn run(upstreams: Arc<Upstreams>, index: usize, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(upstreams.health.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                probe_and_record(&upstreams, index, round % TAG_ROUNDS == 0).await;
                round = round.wrapping_add(1);
            }
        }
    }
}

/// Runs one probe (with the tag blocks when `with_tags`) and feeds its outcome to the
/// health model.
pub async fn probe_and_record(upstreams: &Upstreams, index: usize, with_tags: bool) {
    let upstream = &upstreams.list[index];
    let started = Instant::now();
    // Over the upstream's call transport: HTTP, or its WebSocket when it has only `ws`.
    let outcome = match timeout(upstreams.health.timeout, probe(upstream, with_tags)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "probe timed out after {:?}",
            upstreams.health.timeout
        )),
    };
    upstreams.record_probe(index, outcome, started.elapsed());
}

async fn probe(upstream: &super::Upstream, with_tags: bool) -> Result<Report, String> {
    let body = if with_tags {
        PROBE_WITH_TAGS_BODY
    } else {
        PROBE_BODY
    };
    let answer = upstream
        .post(Bytes::from_static(body.as_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    parse_report(&answer)
}

/// Sends the probe batch to one HTTP endpoint (no timeout: the caller bounds it).
pub async fn probe_endpoint(pool: &super::HttpPool, uri: &http::Uri) -> Result<Report, String> {
    let body = pool
        .post(uri, Bytes::from_static(PROBE_BODY.as_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    parse_report(&body)
}

/// Sends the probe batch through any call transport (no timeout: the caller bounds it).
pub async fn probe_over<F, Fut>(post: F) -> Result<Report, String>
where
    F: FnOnce(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, super::SendError>>,
{
    let body = post(Bytes::from_static(PROBE_BODY.as_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    parse_report(&body)
}

/// Reads the probe batch's answers, in whatever order the node returned them.
pub fn parse_report(body: &[u8]) -> Result<Report, String> {
    let answers: Vec<UpstreamResponse> =
        serde_json::from_slice(body).map_err(|e| format!("invalid probe answer: {e}"))?;
    let result = |id: u64| -> Result<&str, String> {
        let answer = answers
            .iter()
            .find(|a| a.numeric_id() == Some(id))
            .ok_or_else(|| format!("probe answer lacks id {id}"))?;
        if let Some((code, message)) = answer.error_summary() {
            return Err(format!("probe call {id} failed: {code} {message}"));
        }
        answer
            .result
            .map(|raw| raw.get())
            .ok_or_else(|| format!("probe call {id} has no result"))
    };
    // A node that does not know a tag (pre-merge chains, some L2s) answers with an error or
    // null: that says nothing about its health, so the tag is just unknown.
    let tag = |id: u64| -> Option<u64> {
        let answer = answers.iter().find(|a| a.numeric_id() == Some(id))?;
        #[derive(serde::Deserialize)]
        struct Numbered<'a> {
            #[serde(borrow)]
            number: Option<&'a str>,
        }
        let block: Numbered = serde_json::from_str(answer.result?.get()).ok()?;
        u64::from_str_radix(block.number?.strip_prefix("0x")?, 16).ok()
    };
    Ok(Report {
        chain_id: parse_quantity(result(0)?).ok_or("eth_chainId is not a hex quantity")?,
        syncing: result(1)? != "false",
        head: parse_quantity(result(2)?).ok_or("eth_blockNumber is not a hex quantity")?,
        safe: tag(3),
        finalized: tag(4),
    })
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
        assert!(parse_report(body).unwrap_err().contains("nope"));
        let body = br#"[{"id":0,"result":"0x1"},{"id":1,"result":false}]"#;
        assert!(parse_report(body).is_err());
    }

    #[test]
    fn quantities_must_be_hex_strings() {
        assert_eq!(parse_quantity("\"0xff\""), Some(255));
        assert_eq!(parse_quantity("255"), None);
        assert_eq!(parse_quantity("\"ff\""), None);
    }
}
