//! Block delivery from the followed source: each head planned against the chain view
//! (gap fill from ancestors, dedupe, reorg), each new block's logs fetched once for every
//! live filter (elsewhere when the source cannot), and the result fanned out; pending
//! transactions deduplicated.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::super::chain::{Behind, Change, FetchHeader, Header, Plan};
use super::super::filter::{merged_query, LogFilter};
use super::super::logs::{self, FilterLogs};
use super::super::pool::{Connection, SourcePool};
use super::super::source::SourceError;
use super::super::Kind;
use super::Feed;
use crate::policy;

/// Pending transaction hashes remembered for dedupe.
const PENDING_TX_MEMORY: usize = 10_000;
/// During a gap fill, a client whose queue is fuller than this gets a moment to read.
const ROOM_FILL: f64 = 0.5;
/// How long a gap fill waits for clients to read before it closes the ones that did not.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// How one head from the source was taken.
pub(super) enum HeadOutcome {
    /// Something new reached clients.
    Delivered,
    /// Already delivered, or behind the delivered head: the source is alive all the same.
    Dropped,
    /// Not a header at all.
    Unusable,
}

impl<P: SourcePool> Feed<P> {
    /// Integrates one head.
    pub(super) async fn on_head(
        &mut self,
        source: &mut P::Connection,
        raw: &RawValue,
        behind: Behind,
    ) -> Result<HeadOutcome, SourceError> {
        let head = match Header::parse(raw) {
            Ok(head) => head,
            Err(error) => {
                tracing::debug!(%error, "unusable newHeads notification ignored");
                return Ok(HeadOutcome::Unusable);
            }
        };
        let timeout = self.settings.request_timeout;
        tracing::debug!(number = head.number, hash = %head.hash, ?behind, "head from source");
        let mut fetch = HeaderFetch { source, timeout };
        let plan = self.view.plan(head, behind, &mut fetch).await?;
        if plan.dropped {
            self.metrics.duplicate_dropped();
            return Ok(HeadOutcome::Dropped);
        }
        self.deliver(source, plan).await?;
        Ok(HeadOutcome::Delivered)
    }

    async fn deliver(&mut self, source: &mut P::Connection, plan: Plan) -> Result<(), SourceError> {
        let added = plan
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Added(_)))
            .count();
        let reorg = added < plan.changes.len();
        if !reorg && !plan.restarted && added > 1 {
            self.metrics.gap_filled(added as u64 - 1);
        }
        if plan.restarted {
            tracing::warn!("new head does not link to the delivered chain: restarting from it");
        }
        tracing::debug!(
            changes = plan.changes.len(),
            restarted = plan.restarted,
            "delivering"
        );
        let filters = self.live_filters();
        for change in &plan.changes {
            match change {
                Change::Removed(header) => {
                    let removed = self.delivered_logs.retract(&header.hash);
                    self.hub.deliver_block(None, &removed);
                }
                Change::Added(header) => {
                    let logs = self.block_logs(source, header, &filters).await?;
                    self.hub.deliver_block(Some(&header.json), &logs);
                    self.delivered_logs.record(&header.hash, &logs);
                    self.pool.delivered(header.number);
                    let mut status = self.status.lock();
                    status.head = Some(header.number);
                    status.head_at = Some(std::time::Instant::now());
                }
            }
            self.view.apply(change, plan.window());
            if plan.changes.len() > 1 {
                self.make_room().await;
            }
        }
        Ok(())
    }

    /// The live filters; what was delivered under filters nobody holds any more is forgotten.
    fn live_filters(&mut self) -> Vec<(Arc<str>, Arc<LogFilter>)> {
        let filters = self.hub.active_filters();
        let keys: HashSet<Arc<str>> = filters.iter().map(|(k, _)| k.clone()).collect();
        if keys != self.live_filters {
            self.delivered_logs.retain_filters(&keys);
            self.live_filters = keys;
        }
        filters
    }

    /// The logs of one block for every filter, from one `eth_getLogs`: the source first, any
    /// other upstream if the source cannot answer it. When nobody can, the block is delivered
    /// without logs and only the logs subscribers are closed (1011), so they backfill.
    async fn block_logs(
        &mut self,
        source: &mut P::Connection,
        header: &Header,
        filters: &[(Arc<str>, Arc<LogFilter>)],
    ) -> Result<Vec<FilterLogs>, SourceError> {
        if filters.is_empty() {
            return Ok(Vec::new());
        }
        let params = merged_query(filters.iter().map(|(_, f)| f), &header.hash);
        let limit = self.timings.now().logs_timeout;
        let from_source = match source.request("eth_getLogs", &params, limit).await {
            Err(lost @ (SourceError::Lost(_) | SourceError::Silent(_))) => return Err(lost),
            Err(error) => Err(error.to_string()),
            Ok(result) => logs::match_block(&result, filters),
        };
        let first_error = match from_source {
            Ok(matched) => return Ok(matched),
            Err(error) => error,
        };
        // The source no longer knowing a block it just announced means the block was reorged
        // out under us: if nobody else has it either, the head is stale, not the filters.
        let source_lacks_block = policy::is_missing_data(&first_error);
        let skip = self.current.as_deref().unwrap_or("");
        let elsewhere = match self.pool.logs_elsewhere(skip, &params, limit).await {
            Ok(result) => logs::match_block(&result, filters),
            Err(error) => Err(error),
        };
        match elsewhere {
            Ok(matched) => Ok(matched),
            Err(_) if source_lacks_block => Err(SourceError::Rpc {
                method: "eth_getLogs".into(),
                error: format!(
                    "block {} is known to no upstream any more: reorged out",
                    header.hash
                ),
            }),
            Err(error) => {
                let keys: Vec<Arc<str>> = filters.iter().map(|(k, _)| k.clone()).collect();
                if let Some(suppressed) = self.logs_warnings.allow() {
                    let named: Vec<&str> = keys.iter().take(3).map(|k| &**k).collect();
                    tracing::warn!(block = header.number, filters = ?named, count = keys.len(), source = %first_error, elsewhere = %error, suppressed, "logs of a block unavailable: closing its logs subscribers");
                }
                self.hub
                    .close_filter_subscribers(&keys, 1011, "logs unavailable");
                Ok(Vec::new())
            }
        }
    }

    /// During a gap fill, gives clients whose queue filled up a moment to read, then closes
    /// those that did not (they are not reading; the others must not wait for them).
    async fn make_room(&self) {
        if self.hub.fullest_queue() <= ROOM_FILL {
            return;
        }
        let deadline = Instant::now() + ROOM_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if self.hub.fullest_queue() <= ROOM_FILL {
                return;
            }
        }
        let closed = self.hub.close_slow_sessions(ROOM_FILL);
        tracing::warn!(closed, "closed clients that did not read during a gap fill");
    }

    pub(super) fn on_pending_tx(&mut self, raw: &RawValue) {
        let hash = raw.get().to_ascii_lowercase();
        let (seen, order) = &mut self.seen_pending;
        if !seen.insert(hash.clone()) {
            self.metrics.duplicate_dropped();
            return;
        }
        order.push_back(hash);
        if order.len() > PENDING_TX_MEMORY {
            if let Some(old) = order.pop_front() {
                seen.remove(&old);
            }
        }
        self.hub.deliver(Kind::NewPendingTransactions, raw.get());
    }
}

/// Fetches ancestors from the current source.
struct HeaderFetch<'a, C> {
    source: &'a mut C,
    timeout: Duration,
}

impl<C: Connection> FetchHeader for HeaderFetch<'_, C> {
    type Error = SourceError;

    async fn by_hash(&mut self, hash: &str) -> Result<Header, SourceError> {
        let params = format!(r#"["{hash}",false]"#);
        let block = self
            .source
            .request("eth_getBlockByHash", &params, self.timeout)
            .await?;
        if block.get() == "null" {
            return Err(SourceError::Rpc {
                method: "eth_getBlockByHash".into(),
                error: format!("{hash} unknown"),
            });
        }
        Header::parse(&block).map_err(|error| SourceError::Rpc {
            method: "eth_getBlockByHash".into(),
            error,
        })
    }
}
