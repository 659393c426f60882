//! What a client subscribes to: the kinds `eth_subscribe` names, and its params read as geth
//! reads them.

use serde_json::value::RawValue;

use super::filter::LogFilter;
use crate::jsonrpc::{code, RpcError};

/// Subscription kinds, as named in `eth_subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Block headers.
    NewHeads,
    /// Logs matching a filter.
    Logs,
    /// Hashes of pending transactions.
    NewPendingTransactions,
    /// Sync status changes.
    Syncing,
}

impl Kind {
    /// Every kind, for gauges.
    pub const ALL: [Kind; 4] = [
        Kind::NewHeads,
        Kind::Logs,
        Kind::NewPendingTransactions,
        Kind::Syncing,
    ];

    /// The kind's place in [`Kind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `eth_subscribe` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NewHeads => "newHeads",
            Kind::Logs => "logs",
            Kind::NewPendingTransactions => "newPendingTransactions",
            Kind::Syncing => "syncing",
        }
    }

    pub(super) fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The kind and, for logs, the filter of `eth_subscribe` params, refused as geth refuses them.
pub(super) fn parse_params(
    params: Option<&RawValue>,
) -> Result<(Kind, Option<LogFilter>), RpcError> {
    let invalid = |detail: &str| RpcError {
        code: code::INVALID_PARAMS,
        message: "invalid params".into(),
        data: Some(detail.into()),
    };
    let raw = params.ok_or_else(|| invalid("missing subscription kind"))?;
    let list: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| invalid("params must be an array"))?;
    let name: String = list
        .first()
        .and_then(|k| serde_json::from_str(k.get()).ok())
        .ok_or_else(|| invalid("missing subscription kind"))?;
    let kind = Kind::parse(&name).ok_or_else(|| RpcError {
        code: code::METHOD_NOT_FOUND,
        message: format!("no \"{name}\" subscription in eth namespace").into(),
        data: None,
    })?;
    let filter = match kind {
        Kind::Logs => Some(LogFilter::parse(list.get(1).copied()).map_err(|e| e.to_rpc())?),
        _ => None,
    };
    Ok((kind, filter))
}
