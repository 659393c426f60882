//! The canonical chain as delivered to clients: a window of recent headers, and the rule
//! that turns a new head into the blocks to retract and to deliver (gap fill, reorgs, dedupe).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Headers kept for reorg detection (geth's own reorg limit for notifications is lower).
pub const WINDOW: usize = 256;
/// Longest gap walked block by block; beyond it the view restarts at the new head.
pub const MAX_WALK: usize = 4096;

/// A block header as delivered to newHeads subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Block number.
    pub number: u64,
    /// Block hash, lower-case hex.
    pub hash: String,
    /// Parent hash, lower-case hex.
    pub parent_hash: String,
    /// The header object as JSON (geth's header fields only).
    pub json: Arc<str>,
}

/// The header fields geth puts in a newHeads notification; anything else in a block is
/// dropped when a header is rebuilt from `eth_getBlockBy*`.
const HEADER_FIELDS: &[&str] = &[
    "parentHash",
    "sha3Uncles",
    "miner",
    "stateRoot",
    "transactionsRoot",
    "receiptsRoot",
    "logsBloom",
    "difficulty",
    "number",
    "gasLimit",
    "gasUsed",
    "timestamp",
    "extraData",
    "mixHash",
    "nonce",
    "baseFeePerGas",
    "withdrawalsRoot",
    "blobGasUsed",
    "excessBlobGas",
    "parentBeaconBlockRoot",
    "requestsHash",
    "hash",
];

impl Header {
    /// Parses a header (or a whole block, which is reduced to header fields).
    pub fn parse(json: &RawValue) -> Result<Header, String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Key {
            number: String,
            hash: String,
            parent_hash: String,
        }
        let key: Key =
            serde_json::from_str(json.get()).map_err(|e| format!("not a block header: {e}"))?;
        let number = key
            .number
            .strip_prefix("0x")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .ok_or_else(|| format!("bad block number {:?}", key.number))?;
        Ok(Header {
            number,
            hash: key.hash.to_ascii_lowercase(),
            parent_hash: key.parent_hash.to_ascii_lowercase(),
            json: reduce_to_header(json)?.into(),
        })
    }
}

fn reduce_to_header(json: &RawValue) -> Result<String, String> {
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json.get()).map_err(|e| e.to_string())?;
    if fields.keys().all(|k| HEADER_FIELDS.contains(&k.as_str())) {
        return Ok(json.get().to_string());
    }
    let reduced: serde_json::Map<String, serde_json::Value> = fields
        .into_iter()
        .filter(|(k, _)| HEADER_FIELDS.contains(&k.as_str()))
        .collect();
    Ok(serde_json::Value::Object(reduced).to_string())
}

/// Where missing ancestors come from.
pub trait FetchHeader {
    /// Why a fetch failed.
    type Error;
    /// The header of the block with `hash`.
    fn by_hash(&mut self, hash: &str) -> impl Future<Output = Result<Header, Self::Error>>;
}

/// One step of what clients must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A delivered block left the canonical chain (newest first).
    Removed(Arc<Header>),
    /// A block joins the canonical chain (ascending).
    Added(Arc<Header>),
}

/// What becomes of a head at or below the delivered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behind {
    /// Taken (a reorg): the source is the one that delivered so far, or has passed it.
    Taken,
    /// Ignored: right after a failover, an upstream that is behind delivers nothing until it
    /// passes the delivered head.
    Ignored,
}

/// What integrating a head would do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Retractions then additions, in delivery order.
    pub changes: Vec<Change>,
    /// The head was a duplicate or behind the delivered head: nothing to do.
    pub dropped: bool,
    /// The head could not be linked to the window: the view restarts at it.
    pub restarted: bool,
}

/// Whether a change extends the window or starts it afresh (its head could not be linked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The change follows the headers kept.
    Extend,
    /// The headers kept are dropped first.
    Restart,
}

impl Plan {
    /// How this plan's changes are applied to the window.
    pub fn window(&self) -> Window {
        if self.restarted {
            Window::Restart
        } else {
            Window::Extend
        }
    }
}

/// Recent canonical headers by number.
#[derive(Debug, Default)]
pub struct ChainView {
    window: BTreeMap<u64, Arc<Header>>,
}

impl ChainView {
    /// The last delivered head.
    pub fn last(&self) -> Option<&Arc<Header>> {
        self.window.values().next_back()
    }

    /// Whether a block with this hash was delivered and is still canonical.
    pub fn contains(&self, hash: &str) -> bool {
        self.window.values().any(|h| h.hash == hash)
    }

    /// Works out how `head` changes the canonical chain, fetching missing ancestors by hash.
    /// A head at or below the delivered one is taken as a reorg, or ignored as `behind` says.
    pub async fn plan<F: FetchHeader>(
        &self,
        head: Header,
        behind: Behind,
        fetch: &mut F,
    ) -> Result<Plan, F::Error> {
        let Some(last) = self.last() else {
            return Ok(Plan {
                changes: vec![Change::Added(Arc::new(head))],
                ..Plan::default()
            });
        };
        if self.contains(&head.hash) || (behind == Behind::Ignored && head.number <= last.number) {
            return Ok(Plan {
                dropped: true,
                ..Plan::default()
            });
        }
        let oldest = self.window.keys().next().copied().unwrap_or(0);
        let mut branch = vec![Arc::new(head)];
        while let Some(current) = branch.last() {
            let parent_number = match current.number.checked_sub(1) {
                Some(n) if branch.len() <= MAX_WALK => n,
                _ => return Ok(self.restart(branch)),
            };
            // The branch now covers every delivered height from its lowest block up: the fork
            // lies below the window, so everything delivered is retracted.
            if parent_number < oldest {
                break;
            }
            if self
                .window
                .get(&parent_number)
                .is_some_and(|h| h.hash == current.parent_hash)
            {
                break;
            }
            tracing::debug!(number = parent_number, hash = %current.parent_hash, "fetching ancestor");
            let parent = fetch.by_hash(&current.parent_hash).await?;
            branch.push(Arc::new(parent));
        }
        Ok(self.switch_to(branch))
    }

    /// The plan onto `branch` (newest first; its lowest block's parent is delivered, or below
    /// the window): everything delivered from the lowest block's height up is retracted newest
    /// first, then the branch is added oldest first.
    fn switch_to(&self, branch: Vec<Arc<Header>>) -> Plan {
        let fork = branch.last().map_or(0, |h| h.number);
        let mut changes: Vec<Change> = self
            .window
            .range(fork..)
            .rev()
            .map(|(_, h)| Change::Removed(h.clone()))
            .collect();
        changes.extend(branch.into_iter().rev().map(Change::Added));
        Plan {
            changes,
            ..Plan::default()
        }
    }

    fn restart(&self, branch: Vec<Arc<Header>>) -> Plan {
        let head = branch.into_iter().next();
        Plan {
            changes: head.map(Change::Added).into_iter().collect(),
            restarted: true,
            ..Plan::default()
        }
    }

    /// Applies one change; the window keeps the newest [`WINDOW`] headers.
    pub fn apply(&mut self, change: &Change, window: Window) {
        match change {
            Change::Removed(header) => {
                self.window.remove(&header.number);
            }
            Change::Added(header) => {
                if window == Window::Restart {
                    self.window.clear();
                }
                self.window.split_off(&header.number);
                self.window.insert(header.number, header.clone());
                while self.window.len() > WINDOW {
                    self.window.pop_first();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
