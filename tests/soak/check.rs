//! The end-of-run checks on one client's notification stream (socket order), against the
//! devnet's canonical record:
//!
//! * heads: each extends the delivered chain by one, or replaces its top from some height up
//!   (a reorg: the new branch from the fork point); each links to the block below it; no block
//!   hash twice; at the end the delivered chain is the canonical one, up to the final height;
//! * logs, per subscription: a log arrives after its block's header and while that block is
//!   on the delivered chain; in (block, index) order; never twice; a retraction
//!   (`removed: true`) only for a log delivered before, of a block the heads stream later
//!   replaced; at the end what stands is exactly the canonical logs matching the filter.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::clients::Seen;

/// A log as the devnet's canonical chain has it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId {
    pub n: u64,
    pub i: u64,
    pub hash: String,
    pub tx: String,
}

/// What one client's stream held.
#[derive(Debug, Default, Clone)]
pub struct StreamReport {
    pub first: u64,
    pub last: u64,
    pub heads: usize,
    /// Delivered blocks later replaced by a reorg: (number, hash).
    pub replaced: Vec<(u64, String)>,
    /// Canonical logs checked, over all subscriptions.
    pub logs: usize,
    pub retracted: usize,
}

/// Checks `seen` (one client's stream). `expected` holds, per logs subscription name, the
/// canonical logs of blocks `from..=to`; `canonical` the canonical hash of every block.
pub fn check_stream(
    seen: &[Seen],
    canonical: &BTreeMap<u64, String>,
    expected: &BTreeMap<String, Vec<LogId>>,
    from: u64,
    to: u64,
) -> Result<StreamReport, Vec<String>> {
    let mut errors = Vec::new();
    let mut rep = StreamReport::default();
    let mut chain: BTreeMap<u64, String> = BTreeMap::new();
    let mut hashes = HashSet::new();
    let mut live: HashMap<&str, BTreeMap<(u64, u64), LogId>> = HashMap::new();
    let mut retracted_blocks: Vec<(usize, String)> = Vec::new();
    for (k, s) in seen.iter().enumerate() {
        match s {
            Seen::Head {
                n, hash, parent, ..
            } => {
                rep.heads += 1;
                if let Err(e) = on_head(&mut chain, &mut rep, canonical, *n, hash, parent) {
                    errors.push(format!("head #{k}: {e}"));
                }
                if !hashes.insert(hash.clone()) {
                    errors.push(format!("head #{k}: block {n} {hash} delivered twice"));
                }
            }
            Seen::Log {
                sub,
                n,
                hash,
                tx,
                i,
                removed,
                ..
            } => {
                let id = LogId {
                    n: *n,
                    i: *i,
                    hash: hash.clone(),
                    tx: tx.clone(),
                };
                let logs = live.entry(sub.as_str()).or_default();
                if *removed {
                    if logs.get(&(*n, *i)) != Some(&id) {
                        errors.push(format!(
                            "#{k} {sub}: retraction of a log not delivered (or retracted twice): {id:?}"
                        ));
                    }
                    logs.remove(&(*n, *i));
                    rep.retracted += 1;
                    retracted_blocks.push((k, hash.clone()));
                    continue;
                }
                if chain.get(n) != Some(hash) {
                    errors.push(format!(
                        "#{k} {sub}: log {id:?} of a block not on the delivered chain ({:?})",
                        chain.get(n)
                    ));
                }
                if let Some((last, _)) = logs.last_key_value() {
                    if *last >= (*n, *i) {
                        errors.push(format!(
                            "#{k} {sub}: log {id:?} out of order or twice (after {last:?})"
                        ));
                    }
                }
                logs.insert((*n, *i), id);
            }
            Seen::Unknown(sid) => errors.push(format!(
                "#{k}: notification for a subscription never made: {sid}"
            )),
        }
    }
    let replaced: HashSet<&String> = rep.replaced.iter().map(|r| &r.1).collect();
    for (k, h) in &retracted_blocks {
        if !replaced.contains(h) {
            errors.push(format!(
                "#{k}: a log of block {h} was retracted but the block was never replaced"
            ));
        }
    }
    match chain.last_key_value() {
        None => errors.push("no newHeads notification at all".into()),
        Some((&last, _)) => {
            rep.last = last;
            if last != to {
                errors.push(format!("the last head is {last}, the devnet ended at {to}"));
            }
            if rep.first > from {
                errors.push(format!(
                    "the first head {} is after the first block with events {from}",
                    rep.first
                ));
            }
            for n in rep.first..=last {
                if chain.get(&n) != canonical.get(&n) {
                    errors.push(format!(
                        "block {n}: the client ended with {:?}, canonical is {:?}",
                        chain.get(&n),
                        canonical.get(&n)
                    ));
                }
            }
        }
    }
    for (sub, want) in expected {
        let got: Vec<&LogId> = live
            .get(sub.as_str())
            .map(|m| m.values().collect())
            .unwrap_or_default();
        let want: Vec<&LogId> = want.iter().collect();
        rep.logs += want.len();
        if got != want {
            let g: HashSet<&LogId> = got.iter().copied().collect();
            let w: HashSet<&LogId> = want.iter().copied().collect();
            let mut missing: Vec<_> = w.difference(&g).collect();
            let mut extra: Vec<_> = g.difference(&w).collect();
            missing.sort();
            extra.sort();
            errors.push(format!(
                "{sub}: {} canonical logs expected, {} standing; missing {missing:?}; \
                 not canonical (never retracted) {extra:?}",
                want.len(),
                got.len()
            ));
        }
    }
    for sub in live.keys() {
        if !expected.contains_key(*sub) {
            errors.push(format!("logs for an unknown subscription {sub}"));
        }
    }
    if errors.is_empty() {
        Ok(rep)
    } else {
        Err(errors)
    }
}

fn on_head(
    chain: &mut BTreeMap<u64, String>,
    rep: &mut StreamReport,
    canonical: &BTreeMap<u64, String>,
    n: u64,
    hash: &str,
    parent: &str,
) -> Result<(), String> {
    let Some((&tip, _)) = chain.last_key_value() else {
        rep.first = n;
        chain.insert(n, hash.to_string());
        return Ok(());
    };
    if n > tip + 1 {
        return Err(format!("gap: block {n} right after block {tip}"));
    }
    if chain.get(&n).map(String::as_str) == Some(hash) {
        return Err(format!("block {n} {hash} delivered twice"));
    }
    if n <= rep.first {
        // A reorg whose fork lies below the block this client joined at: the new branch
        // grows from a block the client never saw, which must then be canonical.
        let joined_on_a_branch = canonical.get(&rep.first) != chain.get(&rep.first);
        if !joined_on_a_branch || canonical.get(&(n - 1)).map(String::as_str) != Some(parent) {
            return Err(format!(
                "block {n} at or below the first delivered {} does not grow from the canonical chain",
                rep.first
            ));
        }
        rep.replaced.extend(chain.split_off(&n));
        rep.first = n;
        chain.insert(n, hash.to_string());
        return Ok(());
    }
    let below = chain.get(&(n - 1)).or_else(|| canonical.get(&(n - 1)));
    if below.map(String::as_str) != Some(parent) {
        return Err(format!(
            "block {n} {hash} has parent {parent}, the delivered block below is {below:?}"
        ));
    }
    if n <= tip {
        rep.replaced.extend(chain.split_off(&n));
    }
    chain.insert(n, hash.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(n: u64, hash: &str, parent: &str) -> Seen {
        Seen::Head {
            n,
            hash: hash.into(),
            parent: parent.into(),
            t: 0,
        }
    }

    fn log(n: u64, hash: &str, tx: &str, removed: bool) -> Seen {
        Seen::Log {
            sub: "f".into(),
            n,
            hash: hash.into(),
            tx: tx.into(),
            i: 0,
            removed,
            t: 0,
        }
    }

    fn id(n: u64, hash: &str, tx: &str) -> LogId {
        LogId {
            n,
            i: 0,
            hash: hash.into(),
            tx: tx.into(),
        }
    }

    fn canonical() -> BTreeMap<u64, String> {
        [(4, "a4"), (5, "a5"), (6, "a6"), (7, "a7")]
            .into_iter()
            .map(|(n, h)| (n, h.to_string()))
            .collect()
    }

    /// A one-block reorg: block 6 replaced, its log retracted and mined again in block 7.
    fn good() -> Vec<Seen> {
        vec![
            head(5, "a5", "a4"),
            head(6, "b6", "a5"),
            log(6, "b6", "t1", false),
            log(6, "b6", "t1", true),
            head(6, "a6", "a5"),
            head(7, "a7", "a6"),
            log(7, "a7", "t1", false),
        ]
    }

    fn expected() -> BTreeMap<String, Vec<LogId>> {
        BTreeMap::from([("f".to_string(), vec![id(7, "a7", "t1")])])
    }

    #[test]
    fn a_retracted_reorg_passes() {
        let rep = check_stream(&good(), &canonical(), &expected(), 6, 7).expect("valid stream");
        assert_eq!((rep.first, rep.last, rep.heads), (5, 7, 4));
        assert_eq!(rep.replaced, vec![(6, "b6".to_string())]);
        assert_eq!((rep.logs, rep.retracted), (1, 1));
    }

    #[test]
    fn a_reorg_below_the_block_a_client_joined_at_passes_only_from_a_branch() {
        // Joined on branch block b5; the reorg forks at a4, below it.
        let joined_on_branch = vec![
            head(5, "b5", "a4"),
            head(5, "a5", "a4"),
            head(6, "a6", "a5"),
            head(7, "a7", "a6"),
            log(7, "a7", "t1", false),
        ];
        let rep = check_stream(&joined_on_branch, &canonical(), &expected(), 6, 7)
            .expect("a reorg replacing the first block");
        assert_eq!(rep.replaced, vec![(5, "b5".to_string())]);
        // Joined on the canonical chain: going back below it is a fault, even canonically.
        let mut went_back = good();
        went_back.insert(1, head(5, "a5", "a4"));
        assert!(check_stream(&went_back, &canonical(), &expected(), 6, 7).is_err());
        let mut older = good();
        older.insert(1, head(4, "a4", "a3"));
        assert!(check_stream(&older, &canonical(), &expected(), 6, 7).is_err());
    }

    #[test]
    fn each_kind_of_fault_is_caught() {
        let c = canonical();
        let e = expected();
        let bad = |mutate: &dyn Fn(&mut Vec<Seen>)| {
            let mut s = good();
            mutate(&mut s);
            check_stream(&s, &c, &e, 6, 7).is_err()
        };
        assert!(
            bad(&|s| {
                s.remove(3);
            }),
            "an orphaned log left standing"
        );
        assert!(
            bad(&|s| {
                s.remove(6);
            }),
            "a canonical log missing"
        );
        assert!(bad(&|s| s.push(log(7, "a7", "t1", false))), "a log twice");
        assert!(
            bad(&|s| {
                s.remove(5);
            }),
            "the last head missing"
        );
        assert!(bad(&|s| s.insert(5, head(7, "a7", "a6"))), "a head twice");
        assert!(
            bad(&|s| {
                s.remove(4);
            }),
            "a gap / off-chain end"
        );
        assert!(bad(&|s| s.swap(1, 2)), "a log before its header");
        assert!(
            bad(&|s| s.push(Seen::Unknown("0x1".into()))),
            "an unknown id"
        );
        assert!(
            bad(&|s| s.insert(2, log(6, "b6", "t0", true))),
            "a retraction of a log never delivered"
        );
        // A log of an earlier block after a later one (same subscription): out of order.
        let c2: BTreeMap<u64, String> = [(4, "a4"), (5, "a5"), (6, "a6")]
            .into_iter()
            .map(|(n, h)| (n, h.to_string()))
            .collect();
        let s = vec![
            head(5, "a5", "a4"),
            head(6, "a6", "a5"),
            log(6, "a6", "t2", false),
            log(5, "a5", "t1", false),
        ];
        let e2 = BTreeMap::from([("f".to_string(), vec![id(5, "a5", "t1"), id(6, "a6", "t2")])]);
        assert!(check_stream(&s, &c2, &e2, 5, 6).is_err(), "out of order");
    }
}
