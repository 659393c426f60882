//! The active health probe: one batch of eth_chainId, eth_syncing and eth_blockNumber per
//! `health.interval`, bounded by `health.timeout`.

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

/// What one successful probe learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// `eth_chainId`.
    pub chain_id: u64,
    /// `eth_syncing` was not `false`.
    pub syncing: bool,
    /// `eth_blockNumber`.
    pub head: u64,
}

/// Probes upstream `index` every `health.interval` until `shutdown`.
pub async fn run(upstreams: Arc<Upstreams>, index: usize, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(upstreams.health.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => probe_and_record(&upstreams, index).await,
        }
    }
}

/// Runs one probe and feeds its outcome to the health model.
pub async fn probe_and_record(upstreams: &Upstreams, index: usize) {
    let upstream = &upstreams.list[index];
    let started = Instant::now();
    let outcome = match &upstream.config.http {
        Some(uri) => match timeout(upstreams.health.timeout, probe(upstreams, uri)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "probe timed out after {:?}",
                upstreams.health.timeout
            )),
        },
        None => Err("no http endpoint to probe".to_string()),
    };
    upstreams.record_probe(index, outcome, started.elapsed());
}

async fn probe(upstreams: &Upstreams, uri: &http::Uri) -> Result<Report, String> {
    probe_endpoint(&upstreams.pool, uri).await
}

/// Sends the probe batch to one HTTP endpoint (no timeout: the caller bounds it).
pub async fn probe_endpoint(pool: &super::HttpPool, uri: &http::Uri) -> Result<Report, String> {
    let body = pool
        .post(uri, Bytes::from_static(PROBE_BODY.as_bytes()))
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
    Ok(Report {
        chain_id: parse_quantity(result(0)?).ok_or("eth_chainId is not a hex quantity")?,
        syncing: result(1)? != "false",
        head: parse_quantity(result(2)?).ok_or("eth_blockNumber is not a hex quantity")?,
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
                head: 16
            })
        );
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
