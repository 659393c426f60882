//! A subscription source for upstreams without WebSocket: newHeads by polling
//! `eth_getBlockByNumber("latest", false)` over HTTP, other requests as plain HTTP calls. The
//! chain view then treats its heads like any others (gap fill, reorgs, logs exactly once), so an
//! HTTP-only fallback keeps subscriptions alive, with up to one poll period of extra latency.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::source::{Notification, SourceError};
use crate::jsonrpc::UpstreamResponse;
use crate::upstream::http::HttpPool;

/// The subscription id this source gives its synthetic newHeads subscription.
const HEADS_ID: &str = "poll:newHeads";

/// One HTTP-only upstream, polled for its latest block.
pub struct Polling {
    pool: HttpPool,
    uri: http::Uri,
    every: Duration,
    timeout: Duration,
    /// When the last poll went out; the next is due one period later.
    last_poll: Option<Instant>,
    heads_wanted: bool,
    last_hash: Option<String>,
}

impl Polling {
    /// Polls `uri` every `every`; a poll that gets no answer within `timeout` loses the source.
    pub fn new(pool: HttpPool, uri: http::Uri, every: Duration, timeout: Duration) -> Self {
        Polling {
            pool,
            uri,
            every,
            timeout,
            last_poll: None,
            heads_wanted: false,
            last_hash: None,
        }
    }

    /// One JSON-RPC call over HTTP; transport trouble means the source is lost.
    pub async fn call(
        &self,
        method: &str,
        params: &str,
        limit: Duration,
    ) -> Result<Box<RawValue>, SourceError> {
        let body = Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#
        ));
        let answer = tokio::time::timeout(limit, self.pool.post(&self.uri, &body))
            .await
            .map_err(|_| SourceError::Timeout(method.into()))?
            .map_err(|e| SourceError::Lost(e.to_string()))?;
        answer_result(method, &answer)
    }

    /// From now on, polls every `every` (the next poll is due `every` after the last one,
    /// so a shorter period applies at once) and gives a poll up after `timeout`.
    pub fn retime(&mut self, every: Duration, timeout: Duration) {
        self.every = every;
        self.timeout = timeout;
    }

    /// When the next poll is due: at once for the first one.
    fn next_poll(&self) -> Instant {
        self.last_poll
            .map_or_else(Instant::now, |last| last + self.every)
    }

    /// `eth_subscribe` is answered here: newHeads by polling, nothing else.
    pub fn subscribe(&mut self, params: &str) -> Result<Box<RawValue>, SourceError> {
        let kinds: Vec<String> = serde_json::from_str(params).unwrap_or_default();
        match kinds.first().map(String::as_str) {
            Some("newHeads") => {
                self.heads_wanted = true;
                let id = format!("\"{HEADS_ID}\"");
                RawValue::from_string(id).map_err(|e| SourceError::Lost(e.to_string()))
            }
            _ => Err(SourceError::Rpc {
                method: "eth_subscribe".into(),
                error: "only newHeads is available from an HTTP-only upstream".into(),
            }),
        }
    }

    /// The next new latest block, as a newHeads notification. Cancel-safe: the poll
    /// schedule lives in `self`, not in the future.
    pub async fn next_head(&mut self) -> Result<Notification, SourceError> {
        if !self.heads_wanted {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep_until(self.next_poll()).await;
            self.last_poll = Some(Instant::now());
            let latest = r#"["latest",false]"#;
            let block = match self
                .call("eth_getBlockByNumber", latest, self.timeout)
                .await
            {
                Err(SourceError::Timeout(_)) => return Err(SourceError::Silent(self.timeout)),
                other => other?,
            };
            let hash = block_hash(&block);
            if hash.is_some() && hash != self.last_hash {
                self.last_hash = hash;
                return Ok(Notification {
                    subscription: HEADS_ID.into(),
                    result: block,
                });
            }
        }
    }
}

fn block_hash(block: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Hash {
        hash: String,
    }
    serde_json::from_str::<Hash>(block.get())
        .ok()
        .map(|h| h.hash.to_ascii_lowercase())
}

/// The `result` of one answer, or the upstream's error.
pub(super) fn answer_result(method: &str, answer: &[u8]) -> Result<Box<RawValue>, SourceError> {
    let rpc = |error: String| SourceError::Rpc {
        method: method.into(),
        error,
    };
    let answer: UpstreamResponse<'_> =
        serde_json::from_slice(answer).map_err(|e| rpc(format!("not a JSON-RPC answer: {e}")))?;
    match (answer.result, answer.error) {
        (_, Some(error)) => Err(rpc(error.get().to_string())),
        (Some(result), None) => Ok(result.to_owned()),
        (None, None) => Err(rpc("no result".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polling(every: Duration) -> Polling {
        let pool = HttpPool::new(
            Duration::from_secs(1),
            1 << 20,
            crate::config::upstream_tls::plain_only(),
            &crate::config::Credentials::default(),
        );
        let uri = "http://127.0.0.1:9/".parse().unwrap();
        Polling::new(pool, uri, every, Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn a_retime_reschedules_the_next_poll_from_the_last_one() {
        let mut polling = polling(Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(polling.next_poll(), start, "the first poll is at once");
        polling.last_poll = Some(start);
        assert_eq!(polling.next_poll(), start + Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(1)).await;
        polling.retime(Duration::from_millis(300), Duration::from_secs(2));
        assert_eq!(
            polling.next_poll(),
            start + Duration::from_millis(300),
            "already due: polled at once rather than 29 s later"
        );
        assert_eq!(
            polling.timeout,
            Duration::from_secs(2),
            "a poll's new budget"
        );
    }
}
