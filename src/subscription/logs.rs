//! Log subscriptions: geth's filter object normalised into a key shared by identical
//! subscriptions, and the record of which logs each canonical block delivered, so a block
//! that leaves the chain can be retracted with `"removed": true`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use super::chain::WINDOW;

/// A normalised logs filter: addresses and positional topics, lower-case, sorted, deduplicated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogFilter {
    /// Matching contract addresses; empty matches every address.
    pub addresses: Vec<String>,
    /// Per position: `None` matches anything, `Some(list)` any of the list.
    pub topics: Vec<Option<Vec<String>>>,
}

impl LogFilter {
    /// Parses geth's filter object (`address` string or array, positional `topics` with `null`
    /// wildcards and OR-arrays). Block ranges are ignored: a subscription is always live.
    pub fn parse(filter: Option<&RawValue>) -> Result<LogFilter, String> {
        let value: Value = match filter {
            None => Value::Null,
            Some(raw) => serde_json::from_str(raw.get()).map_err(|e| e.to_string())?,
        };
        let object = match &value {
            Value::Null => {
                return Ok(LogFilter {
                    addresses: vec![],
                    topics: vec![],
                })
            }
            Value::Object(object) => object,
            _ => return Err("logs filter must be an object".into()),
        };
        let addresses = match object.get("address") {
            None | Some(Value::Null) => vec![],
            Some(Value::String(a)) => vec![hex_of_len(a, 20, "address")?],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| {
                    a.as_str()
                        .ok_or("address must be a string".to_string())
                        .and_then(|a| hex_of_len(a, 20, "address"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("address must be a string or an array".into()),
        };
        let topics = match object.get("topics") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(positions)) => positions
                .iter()
                .map(topic_position)
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("topics must be an array".into()),
        };
        Ok(LogFilter {
            addresses: sorted(addresses),
            topics: trim_wildcards(topics),
        })
    }

    /// A key equal for equivalent filters.
    pub fn key(&self) -> String {
        serde_json::json!({"address": self.addresses, "topics": self.topics}).to_string()
    }

    /// `eth_getLogs` params for the logs of one block.
    pub fn params_for_block(&self, block_hash: &str) -> String {
        serde_json::json!([{"blockHash": block_hash, "address": self.addresses, "topics": self.topics}]).to_string()
    }
}

fn topic_position(position: &Value) -> Result<Option<Vec<String>>, String> {
    match position {
        Value::Null => Ok(None),
        Value::String(topic) => Ok(Some(vec![hex_of_len(topic, 32, "topic")?])),
        Value::Array(options) => {
            // As in geth, a null inside an OR-list makes the whole position a wildcard.
            if options.iter().any(Value::is_null) {
                return Ok(None);
            }
            let topics = options
                .iter()
                .map(|t| {
                    t.as_str()
                        .ok_or("topic must be a string".to_string())
                        .and_then(|t| hex_of_len(t, 32, "topic"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(sorted(topics)))
        }
        _ => Err("topics entries must be null, a string or an array".into()),
    }
}

fn hex_of_len(text: &str, bytes: usize, what: &str) -> Result<String, String> {
    let valid = text.len() == 2 + 2 * bytes
        && (text.starts_with("0x") || text.starts_with("0X"))
        && text[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if valid {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!("invalid {what} {text:?}"))
    }
}

fn sorted(mut list: Vec<String>) -> Vec<String> {
    list.sort();
    list.dedup();
    list
}

fn trim_wildcards(mut topics: Vec<Option<Vec<String>>>) -> Vec<Option<Vec<String>>> {
    while topics.last().is_some_and(Option::is_none) {
        topics.pop();
    }
    topics
}

/// Logs of one block delivered under one filter key.
pub type FilterLogs = (Arc<str>, Vec<Arc<str>>);

/// The logs delivered for recent canonical blocks, per filter key.
#[derive(Debug, Default)]
pub struct DeliveredLogs {
    by_block: HashMap<String, Vec<FilterLogs>>,
    order: VecDeque<String>,
}

impl DeliveredLogs {
    /// Records what was delivered for `block_hash` under `filter_key`.
    pub fn record(&mut self, block_hash: &str, filter_key: Arc<str>, logs: Vec<Arc<str>>) {
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
            .push((filter_key, logs));
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

    fn filter(json: &str) -> Result<LogFilter, String> {
        let raw = RawValue::from_string(json.to_string()).unwrap();
        LogFilter::parse(Some(&raw))
    }

    const A: &str = "0x00000000000000000000000000000000000000aa";
    const T1: &str = "0x0000000000000000000000000000000000000000000000000000000000000001";
    const T2: &str = "0x0000000000000000000000000000000000000000000000000000000000000002";

    #[test]
    fn address_string_and_array_normalise_alike() {
        let one = filter(&format!(
            r#"{{"address":"{}"}}"#,
            A.to_uppercase().replace("0X", "0x")
        ))
        .unwrap();
        let list = filter(&format!(
            r#"{{"address":["{A}","{A}"],"fromBlock":"0x0","toBlock":"latest"}}"#
        ))
        .unwrap();
        assert_eq!(one.key(), list.key());
    }

    #[test]
    fn topics_keep_positions_wildcards_and_or_lists() {
        let f = filter(&format!(
            r#"{{"topics":[null,["{T2}","{T1}"],"{T1}",null]}}"#
        ))
        .unwrap();
        assert_eq!(
            f.topics,
            vec![
                None,
                Some(vec![T1.into(), T2.into()]),
                Some(vec![T1.into()])
            ]
        );
        let wildcard_in_list = filter(&format!(r#"{{"topics":[["{T1}",null]]}}"#)).unwrap();
        assert!(wildcard_in_list.topics.is_empty());
    }

    #[test]
    fn malformed_filters_are_refused() {
        assert!(filter(r#"{"address":"0x12"}"#).is_err());
        assert!(filter(r#"{"topics":"0x1"}"#).is_err());
        assert!(filter(r#"{"topics":[5]}"#).is_err());
        assert!(filter("[]").is_err());
    }

    #[test]
    fn retracted_logs_are_marked_removed_newest_first() {
        let mut delivered = DeliveredLogs::default();
        let key: Arc<str> = "k".into();
        delivered.record(
            "0xb",
            key.clone(),
            vec![
                r#"{"logIndex":"0x0"}"#.into(),
                r#"{"logIndex":"0x1"}"#.into(),
            ],
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
}
