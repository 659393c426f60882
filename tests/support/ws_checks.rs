//! Checkers of what a subscribed client saw against the devnet's canonical chain: newHeads with
//! no gap and no repeat except reorg replacements, and every canonical event exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::ws_watch::{SeenHead, SeenLog, Summary};

/// What the newHeads stream looked like.
#[derive(Debug)]
pub struct HeadsReport {
    /// First delivered block number.
    pub first: u64,
    /// Last delivered block number.
    pub last: u64,
    /// Delivered blocks later replaced by a reorg: (number, hash).
    pub replaced: Vec<(u64, String)>,
}

/// Replays the delivered heads: each must extend the chain delivered so far by one block, or
/// replace its top from some height up (a reorg, new branch from the fork point). No hash
/// twice, no gap. At the end the chain must be the devnet's canonical chain from the first
/// delivered number to the last.
pub fn check_heads(heads: &[SeenHead], canonical: &BTreeMap<u64, String>) -> HeadsReport {
    assert!(!heads.is_empty(), "no newHeads notification arrived");
    let mut hashes = HashSet::new();
    for h in heads {
        assert!(
            hashes.insert(h.hash.to_lowercase()),
            "block hash {} (number {}) delivered twice",
            h.hash,
            h.n
        );
    }
    let first = heads[0].n;
    let mut chain: BTreeMap<u64, String> = BTreeMap::new();
    let mut replaced = Vec::new();
    for (i, h) in heads.iter().enumerate() {
        let hash = h.hash.to_lowercase();
        let parent = h.parent.to_lowercase();
        let Some((&tip, _)) = chain.last_key_value() else {
            chain.insert(h.n, hash);
            continue;
        };
        assert!(
            h.n <= tip + 1,
            "gap: head #{i} is block {} right after block {tip}",
            h.n
        );
        assert!(
            h.n >= first,
            "head #{i} (block {}) below the first delivered block {first}",
            h.n
        );
        // Its parent: the delivered block below it, or (below the first one) the canonical one.
        let below = chain
            .get(&(h.n - 1))
            .or_else(|| canonical.get(&(h.n - 1)))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            parent,
            below,
            "head #{i} (block {} {hash}) does not link to the delivered block {} below it",
            h.n,
            h.n - 1
        );
        if h.n <= tip {
            replaced.extend(chain.split_off(&h.n));
        }
        chain.insert(h.n, hash);
    }
    let last = *chain.keys().next_back().expect("non-empty");
    for n in first..=last {
        assert_eq!(
            chain.get(&n).map(String::as_str),
            canonical.get(&n).map(String::as_str),
            "block {n}: the hash the client ended with is not the canonical one"
        );
    }
    HeadsReport {
        first,
        last,
        replaced,
    }
}

/// Counts of the events check.
#[derive(Debug)]
pub struct EventsReport {
    /// Canonical logs.
    pub canonical: usize,
    /// Logs delivered (not retracted).
    pub delivered: usize,
    /// Logs retracted with `removed: true`.
    pub retracted: usize,
}

/// Every canonical log delivered exactly once; every delivered log of a block that left the
/// chain retracted with `removed: true`; nothing else delivered.
pub fn check_events(
    summary: &Summary,
    heads: &HeadsReport,
    canonical_logs: &[SeenLog],
    canonical_blocks: &BTreeMap<u64, String>,
) -> EventsReport {
    let key = |l: &SeenLog| (l.block_hash.to_lowercase(), l.index);
    // ethers handed every non-removed raw notification to the listener, in order.
    let raw_live: Vec<_> = summary
        .raw_logs
        .iter()
        .filter(|l| !l.removed)
        .map(key)
        .collect();
    let ethers: Vec<_> = summary.logs.iter().map(key).collect();
    assert_eq!(
        ethers, raw_live,
        "the ethers listener's logs differ from the logs notifications on the socket"
    );
    let delivered_heads: HashSet<String> = summary
        .heads
        .iter()
        .map(|h| h.hash.to_lowercase())
        .collect();
    let replaced: HashSet<String> = heads.replaced.iter().map(|r| r.1.clone()).collect();
    let mut live: HashMap<(String, u64), &SeenLog> = HashMap::new();
    let mut retracted = 0;
    for l in &summary.raw_logs {
        let k = key(l);
        assert!(
            delivered_heads.contains(&k.0),
            "log {k:?} of block {} whose header was never delivered",
            l.n
        );
        if l.removed {
            assert!(
                live.remove(&k).is_some(),
                "removed log {k:?} (tx {}) was not delivered before (or retracted twice)",
                l.tx
            );
            assert!(
                replaced.contains(&k.0),
                "log {k:?} retracted but its block {} was never replaced on the newHeads stream",
                l.n
            );
            retracted += 1;
        } else {
            assert!(
                live.insert(k.clone(), l).is_none(),
                "log {k:?} (tx {}, block {}) delivered twice",
                l.tx,
                l.n
            );
        }
    }
    // What stands now must be exactly the canonical logs.
    let want: HashMap<(String, u64), &SeenLog> =
        canonical_logs.iter().map(|l| (key(l), l)).collect();
    let mut missing: Vec<_> = want
        .iter()
        .filter(|(k, _)| !live.contains_key(*k))
        .map(|(k, l)| format!("block {} {k:?} tx {}", l.n, l.tx))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {} canonical events never reached the client (first/last head {}..{}): {missing:#?}",
        missing.len(),
        want.len(),
        heads.first,
        heads.last
    );
    let mut extra: Vec<_> = live
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .map(|(k, l)| {
            format!(
                "block {} {k:?} tx {} (canonical hash of {}: {:?})",
                l.n,
                l.tx,
                l.n,
                canonical_blocks.get(&l.n)
            )
        })
        .collect();
    extra.sort();
    assert!(
        extra.is_empty(),
        "the client holds events that are not on the canonical chain (not retracted): {extra:#?}"
    );
    for (k, l) in &want {
        assert_eq!(
            live[k].tx.to_lowercase(),
            l.tx.to_lowercase(),
            "event {k:?}: tx differs"
        );
    }
    EventsReport {
        canonical: want.len(),
        delivered: summary.raw_logs.len() - retracted,
        retracted,
    }
}
