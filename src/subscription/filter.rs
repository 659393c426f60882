//! Log filters of `eth_subscribe("logs", …)`: geth's filter object validated as geth does,
//! normalised into a key shared by identical subscriptions, matched locally against the logs
//! of a block, and merged into one `eth_getLogs` query per block for every live filter.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::jsonrpc::{code, RpcError};

/// Topic positions a log can have (LOG0..LOG4), as geth's `maxTopics`.
pub const MAX_TOPIC_POSITIONS: usize = 4;
/// Alternatives in one topic position, as geth's `maxSubTopics`.
pub const MAX_TOPIC_ALTERNATIVES: usize = 1000;
/// Addresses in one filter, as geth's `maxAddresses`; also the most a merged query names.
pub const MAX_ADDRESSES: usize = 1000;

/// Why a filter was refused; rendered with the code and wording geth uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not geth's filter shape (bad hex, wrong types).
    #[error("{0}")]
    Invalid(String),
    /// More than four topic positions, or more than 1000 alternatives in one.
    #[error("exceed max topics")]
    TooManyTopics,
    /// More than 1000 addresses.
    #[error("exceed max addresses")]
    TooManyAddresses,
}

impl FilterError {
    /// The JSON-RPC error geth answers `eth_subscribe` with: argument decoding errors are
    /// -32602 "invalid argument 1: …"; the address cap is checked later, as a plain -32000.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            FilterError::TooManyAddresses => {
                RpcError::new(code::SERVER_ERROR, "exceed max addresses")
            }
            other => RpcError {
                code: code::INVALID_PARAMS,
                message: format!("invalid argument 1: {other}").into(),
                data: None,
            },
        }
    }
}

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
    /// wildcards and OR-arrays), with geth's limits. Block ranges are ignored: a subscription
    /// is always live.
    pub fn parse(filter: Option<&RawValue>) -> Result<LogFilter, FilterError> {
        let invalid = |e: String| FilterError::Invalid(e);
        let value: Value = match filter {
            None => Value::Null,
            Some(raw) => serde_json::from_str(raw.get()).map_err(|e| invalid(e.to_string()))?,
        };
        let object = match &value {
            Value::Null => return Ok(LogFilter::everything()),
            Value::Object(object) => object,
            _ => return Err(invalid("logs filter must be an object".into())),
        };
        let addresses = match object.get("address") {
            None | Some(Value::Null) => vec![],
            Some(Value::String(a)) => vec![hex_of_len(a, 20, "address")?],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| match a.as_str() {
                    Some(a) => hex_of_len(a, 20, "address"),
                    None => Err(invalid("non-string address".into())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("invalid addresses in query".into())),
        };
        let topics = match object.get("topics") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(positions)) if positions.len() > MAX_TOPIC_POSITIONS => {
                return Err(FilterError::TooManyTopics)
            }
            Some(Value::Array(positions)) => positions
                .iter()
                .map(topic_position)
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("topics must be an array".into())),
        };
        if addresses.len() > MAX_ADDRESSES {
            return Err(FilterError::TooManyAddresses);
        }
        Ok(LogFilter {
            addresses: sorted(addresses),
            topics: trim_wildcards(topics),
        })
    }

    /// The filter that matches every log.
    pub fn everything() -> LogFilter {
        LogFilter {
            addresses: vec![],
            topics: vec![],
        }
    }

    /// A key equal for equivalent filters.
    pub fn key(&self) -> String {
        serde_json::json!({"address": self.addresses, "topics": self.topics}).to_string()
    }

    /// Whether `log` matches, by geth's rule: address in the list (if any), and for every
    /// constrained position the log has that topic and it is one of the alternatives.
    pub fn matches(&self, log: &LogFields<'_>) -> bool {
        let address_ok = self.addresses.is_empty()
            || self
                .addresses
                .binary_search(&log.address.to_ascii_lowercase())
                .is_ok();
        address_ok
            && self.topics.iter().enumerate().all(|(i, position)| {
                let Some(alternatives) = position else {
                    return true;
                };
                log.topics.get(i).is_some_and(|topic| {
                    alternatives
                        .binary_search(&topic.to_ascii_lowercase())
                        .is_ok()
                })
            })
    }
}

/// The fields of a log that filters look at.
#[derive(Debug, Deserialize)]
pub struct LogFields<'a> {
    /// Emitting contract.
    #[serde(borrow)]
    pub address: std::borrow::Cow<'a, str>,
    /// Indexed topics.
    #[serde(default, borrow)]
    pub topics: Vec<std::borrow::Cow<'a, str>>,
}

/// `eth_getLogs` params fetching, in one call, every log of `block_hash` that any of
/// `filters` could match: the union of their addresses, or every log of the block when some
/// filter names no address or the union would exceed what a node accepts.
pub fn merged_query<'f>(
    filters: impl IntoIterator<Item = &'f Arc<LogFilter>>,
    block_hash: &str,
) -> String {
    let mut union = BTreeSet::new();
    let mut unfiltered = false;
    for filter in filters {
        unfiltered |= filter.addresses.is_empty();
        union.extend(filter.addresses.iter().map(String::as_str));
    }
    if unfiltered || union.len() > MAX_ADDRESSES {
        serde_json::json!([{ "blockHash": block_hash }]).to_string()
    } else {
        serde_json::json!([{ "blockHash": block_hash, "address": union }]).to_string()
    }
}

fn topic_position(position: &Value) -> Result<Option<Vec<String>>, FilterError> {
    match position {
        Value::Null => Ok(None),
        Value::String(topic) => Ok(Some(vec![hex_of_len(topic, 32, "topic")?])),
        Value::Array(options) if options.len() > MAX_TOPIC_ALTERNATIVES => {
            Err(FilterError::TooManyTopics)
        }
        Value::Array(options) => {
            // As in geth, a null inside an OR-list makes the whole position a wildcard.
            if options.iter().any(Value::is_null) {
                return Ok(None);
            }
            let topics = options
                .iter()
                .map(|t| match t.as_str() {
                    Some(t) => hex_of_len(t, 32, "topic"),
                    None => Err(FilterError::Invalid("invalid topic(s)".into())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(sorted(topics)))
        }
        _ => Err(FilterError::Invalid("invalid topic(s)".into())),
    }
}

fn hex_of_len(text: &str, bytes: usize, what: &str) -> Result<String, FilterError> {
    let valid = text.len() == 2 + 2 * bytes
        && (text.starts_with("0x") || text.starts_with("0X"))
        && text[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if valid {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(FilterError::Invalid(format!(
            "invalid {what} {text:?}: want 0x and {} hex digits",
            2 * bytes
        )))
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

#[cfg(test)]
mod tests;
