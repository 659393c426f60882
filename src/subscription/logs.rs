//! The logs of canonical blocks per filter: one block's logs (fetched once for every live
//! filter) matched locally to each filter, and the record of what each recent block
//! delivered, so a block that leaves the chain can be retracted with `"removed": true`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use super::chain::WINDOW;
use super::filter::{LogFields, LogFilter};

/// Logs of one block under one filter key.
pub type FilterLogs = (Arc<str>, Vec<Arc<str>>);

/// Matches the logs of one block (an `eth_getLogs` result) to every filter, in log order.
/// Filters naming addresses are found through an index, so the cost grows with the logs of the
/// block and the filters they concern, not with every filter for every log.
pub fn match_block(
    result: &RawValue,
    filters: &[(Arc<str>, Arc<LogFilter>)],
) -> Result<Vec<FilterLogs>, String> {
    let logs: Vec<&RawValue> =
        serde_json::from_str(result.get()).map_err(|e| format!("not a list of logs: {e}"))?;
    let mut by_address: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut any_address = Vec::new();
    for (i, (_, filter)) in filters.iter().enumerate() {
        if filter.addresses.is_empty() {
            any_address.push(i);
        }
        for address in &filter.addresses {
            by_address.entry(address.as_str()).or_default().push(i);
        }
    }
    let mut matched: Vec<Vec<Arc<str>>> = vec![Vec::new(); filters.len()];
    for raw in logs {
        let fields: LogFields<'_> =
            serde_json::from_str(raw.get()).map_err(|e| format!("not a log: {e}"))?;
        let text: Arc<str> = raw.get().into();
        let address = fields.address.to_ascii_lowercase();
        let named = by_address
            .get(address.as_str())
            .map_or(&[][..], Vec::as_slice);
        for &i in named.iter().chain(&any_address) {
            if filters[i].1.matches(&fields) {
                matched[i].push(text.clone());
            }
        }
    }
    Ok(filters
        .iter()
        .zip(matched)
        .map(|((key, _), logs)| (key.clone(), logs))
        .collect())
}

/// The logs delivered for recent canonical blocks, per filter key.
#[derive(Debug, Default)]
pub struct DeliveredLogs {
    by_block: HashMap<String, Vec<FilterLogs>>,
    order: VecDeque<String>,
}

impl DeliveredLogs {
    /// Records what was delivered for `block_hash` (filters that got nothing are not kept).
    pub fn record(&mut self, block_hash: &str, delivered: &[FilterLogs]) {
        let kept: Vec<FilterLogs> = delivered
            .iter()
            .filter(|(_, logs)| !logs.is_empty())
            .cloned()
            .collect();
        if kept.is_empty() {
            return;
        }
        if !self.by_block.contains_key(block_hash) {
            self.order.push_back(block_hash.to_string());
            while self.order.len() > WINDOW {
                if let Some(old) = self.order.pop_front() {
                    self.by_block.remove(&old);
                }
            }
        }
        self.by_block
            .entry(block_hash.to_string())
            .or_default()
            .extend(kept);
    }

    /// Takes the logs delivered for a block that left the chain, marked `"removed": true`
    /// and newest first, per filter key.
    pub fn retract(&mut self, block_hash: &str) -> Vec<FilterLogs> {
        let Some(delivered) = self.by_block.remove(block_hash) else {
            return vec![];
        };
        self.order.retain(|h| h != block_hash);
        delivered
            .into_iter()
            .map(|(key, logs)| {
                (
                    key,
                    logs.iter().rev().map(|log| mark_removed(log)).collect(),
                )
            })
            .collect()
    }

    /// Forgets what was delivered under filters nobody subscribes to any more.
    pub fn retain_filters(&mut self, live: &HashSet<Arc<str>>) {
        self.by_block.retain(|_, delivered| {
            delivered.retain(|(key, _)| live.contains(key));
            !delivered.is_empty()
        });
        let by_block = &self.by_block;
        self.order.retain(|hash| by_block.contains_key(hash));
    }

    /// Blocks with logs on record.
    pub fn blocks(&self) -> usize {
        self.by_block.len()
    }
}

fn mark_removed(log: &str) -> Arc<str> {
    match serde_json::from_str::<serde_json::Map<String, Value>>(log) {
        Ok(mut fields) => {
            fields.insert("removed".into(), Value::Bool(true));
            Value::Object(fields).to_string().into()
        }
        Err(_) => log.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x00000000000000000000000000000000000000aa";
    const B: &str = "0x00000000000000000000000000000000000000bb";
    const T1: &str = "0x0000000000000000000000000000000000000000000000000000000000000001";

    fn filter(json: &str) -> (Arc<str>, Arc<LogFilter>) {
        let raw = RawValue::from_string(json.to_string()).unwrap();
        let filter = LogFilter::parse(Some(&raw)).unwrap();
        (filter.key().into(), Arc::new(filter))
    }

    fn logs(list: Value) -> Box<RawValue> {
        RawValue::from_string(list.to_string()).unwrap()
    }

    #[test]
    fn one_block_is_matched_to_each_filter_in_log_order() {
        let by_a = filter(&format!(r#"{{"address":"{A}"}}"#));
        let by_topic = filter(&format!(r#"{{"topics":["{T1}"]}}"#));
        let everything = filter("{}");
        let block = logs(serde_json::json!([
            {"address": A, "topics": [T1], "logIndex": "0x0"},
            {"address": B, "topics": [], "logIndex": "0x1"},
            {"address": B.to_uppercase().replace("0X", "0x"), "topics": [T1], "logIndex": "0x2"},
        ]));
        let matched = match_block(
            &block,
            &[by_a.clone(), by_topic.clone(), everything.clone()],
        )
        .unwrap();
        let indexes = |i: usize| -> Vec<String> {
            matched[i]
                .1
                .iter()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["logIndex"]
                        .as_str()
                        .unwrap()
                        .into()
                })
                .collect()
        };
        assert_eq!(matched[0].0, by_a.0);
        assert_eq!(indexes(0), ["0x0"]);
        assert_eq!(indexes(1), ["0x0", "0x2"]);
        assert_eq!(indexes(2), ["0x0", "0x1", "0x2"]);
    }

    #[test]
    fn an_answer_that_is_not_a_list_of_logs_is_an_error() {
        let f = filter("{}");
        assert!(match_block(&logs(serde_json::json!({"a": 1})), std::slice::from_ref(&f)).is_err());
        assert!(match_block(&logs(serde_json::json!([{"topics": []}])), &[f]).is_err());
    }

    #[test]
    fn retracted_logs_are_marked_removed_newest_first() {
        let mut delivered = DeliveredLogs::default();
        let key: Arc<str> = "k".into();
        delivered.record(
            "0xb",
            &[(
                key.clone(),
                vec![
                    r#"{"logIndex":"0x0"}"#.into(),
                    r#"{"logIndex":"0x1"}"#.into(),
                ],
            )],
        );
        let retracted = delivered.retract("0xb");
        assert_eq!(retracted.len(), 1);
        let logs: Vec<Value> = retracted[0]
            .1
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(logs[0]["logIndex"], "0x1");
        assert_eq!(logs[0]["removed"], true);
        assert!(delivered.retract("0xb").is_empty(), "retracted once only");
    }

    #[test]
    fn state_of_a_filter_goes_with_its_last_subscriber() {
        let mut delivered = DeliveredLogs::default();
        let (kept, gone): (Arc<str>, Arc<str>) = ("kept".into(), "gone".into());
        delivered.record("0x1", &[(gone.clone(), vec!["{}".into()])]);
        delivered.record(
            "0x2",
            &[(kept.clone(), vec!["{}".into()]), (gone, vec!["{}".into()])],
        );
        delivered.record("0x3", &[(kept.clone(), vec![])]);
        assert_eq!(delivered.blocks(), 2, "blocks without logs are not kept");
        delivered.retain_filters(&HashSet::from([kept.clone()]));
        assert_eq!(delivered.blocks(), 1);
        let retracted = delivered.retract("0x2");
        assert_eq!(retracted.len(), 1);
        assert_eq!(retracted[0].0, kept);
    }
}
