//! JSON-RPC decoding and the mock's default answers (geth-like, deterministic).

use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;

pub use super::super::http::RpcError;

/// The hash `eth_sendRawTransaction` answers with unless a test overrides it.
pub const TX_HASH: &str = "0x5fe7f977e71dba2ea1a68e21057beebb9be2ac30c6410aa38d4f3fbe41dcffd2";

/// Deterministic block hash of block `n` (the same on every mock, so mocks agree on one chain).
pub fn block_hash(n: u64) -> String {
    let mixed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
    format!(
        "0x{:016x}{:016x}{:016x}{:016x}",
        0xb10c_u64, n, mixed, !mixed
    )
}

/// Deterministic header object of block `n` (geth's header fields).
pub fn header(n: u64) -> Value {
    let parent = match n {
        0 => format!("0x{}", "0".repeat(64)),
        _ => block_hash(n - 1),
    };
    json!({
        "number": hex(n),
        "hash": block_hash(n),
        "parentHash": parent,
        "timestamp": hex(1_700_000_000 + 12 * n),
        "nonce": "0x0000000000000000",
        "sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
        "logsBloom": format!("0x{}", "0".repeat(512)),
        "transactionsRoot": "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421",
        "stateRoot": format!("0x{:064x}", n + 1),
        "receiptsRoot": "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421",
        "miner": "0x0000000000000000000000000000000000000000",
        "difficulty": "0x0",
        "extraData": "0x",
        "gasLimit": "0x1c9c380",
        "gasUsed": "0x0",
        "baseFeePerGas": "0x3b9aca00",
        "mixHash": format!("0x{}", "0".repeat(64)),
    })
}

/// Block object of block `n` as `eth_getBlockByNumber` returns it (no transactions).
pub fn block(n: u64) -> Value {
    let mut b = header(n);
    if let Some(obj) = b.as_object_mut() {
        obj.insert("transactions".into(), json!([]));
        obj.insert("uncles".into(), json!([]));
        obj.insert("size".into(), json!("0x220"));
    }
    b
}

/// `0x`-prefixed lowercase hex quantity.
pub fn hex(n: u64) -> String {
    format!("0x{n:x}")
}

/// One decoded call of a request body.
#[derive(Clone, Debug)]
pub struct Call {
    /// The raw JSON text of the id; `None` for a notification (no id member).
    pub id: Option<String>,
    /// Method name.
    pub method: String,
    /// Parameters (`null` when absent).
    pub params: Value,
}

/// One element of a request body.
pub enum Item {
    /// A well-formed call.
    Call(Call),
    /// Not a JSON-RPC request object; `id` is its raw id when it had one.
    Invalid(Option<String>),
}

/// A decoded request body.
pub enum Body {
    /// Not JSON.
    ParseError,
    /// `[]`.
    EmptyBatch,
    /// A single object.
    Single(Item),
    /// A batch, in order.
    Batch(Vec<Item>),
}

impl Body {
    /// Every well-formed call in the body, in order.
    pub fn calls(&self) -> Vec<&Call> {
        let items: Vec<&Item> = match self {
            Body::Single(item) => vec![item],
            Body::Batch(items) => items.iter().collect(),
            _ => Vec::new(),
        };
        items
            .into_iter()
            .filter_map(|i| match i {
                Item::Call(c) => Some(c),
                Item::Invalid(_) => None,
            })
            .collect()
    }
}

/// Decodes a request body, keeping ids as raw JSON text.
pub fn decode(body: &[u8]) -> Body {
    let Ok(text) = std::str::from_utf8(body) else {
        return Body::ParseError;
    };
    if text.trim_start().starts_with('[') {
        match serde_json::from_str::<Vec<Box<RawValue>>>(text) {
            Ok(items) if items.is_empty() => Body::EmptyBatch,
            Ok(items) => Body::Batch(items.iter().map(|r| decode_item(r)).collect()),
            Err(_) => Body::ParseError,
        }
    } else {
        match serde_json::from_str::<Box<RawValue>>(text) {
            Ok(raw) => Body::Single(decode_item(&raw)),
            Err(_) => Body::ParseError,
        }
    }
}

fn decode_item(raw: &RawValue) -> Item {
    let Ok(members) = serde_json::from_str::<HashMap<String, Box<RawValue>>>(raw.get()) else {
        return Item::Invalid(None);
    };
    let id = members.get("id").map(|r| r.get().to_string());
    let method = members
        .get("method")
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok());
    let Some(method) = method else {
        return Item::Invalid(id);
    };
    let params = members
        .get("params")
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .unwrap_or(Value::Null);
    Item::Call(Call { id, method, params })
}

/// A response object with the raw id (and raw result JSON text) spliced in byte-for-byte.
pub fn response(id: Option<&str>, answer: &Result<String, RpcError>) -> String {
    let id = id.unwrap_or("null");
    match answer {
        Ok(result) => format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#),
        Err(e) => format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{}}}"#, e.to_json()),
    }
}

/// Chain state the default answers read.
pub struct ChainState {
    /// Current head block number.
    pub head: u64,
    /// eth_chainId.
    pub chain_id: u64,
    /// Whether eth_syncing reports progress.
    pub syncing: bool,
    /// The `safe` block number; `None`: the head.
    pub safe: Option<u64>,
    /// The `finalized` block number; `None`: the head.
    pub finalized: Option<u64>,
}

/// geth-like default answer of `method`.
pub fn default_answer(method: &str, params: &Value, chain: &ChainState) -> Result<Value, RpcError> {
    let head = chain.head;
    match method {
        "eth_chainId" => Ok(json!(hex(chain.chain_id))),
        "net_version" => Ok(json!(chain.chain_id.to_string())),
        "net_listening" => Ok(json!(true)),
        "web3_clientVersion" => Ok(json!("ethgate-mock/v1.0.0")),
        "eth_syncing" if chain.syncing => Ok(json!({
            "startingBlock": "0x0",
            "currentBlock": hex(head),
            "highestBlock": hex(head + 1000),
        })),
        "eth_syncing" => Ok(json!(false)),
        "eth_blockNumber" => Ok(json!(hex(head))),
        "eth_getBlockByNumber" => {
            let n = match params.get(0).and_then(Value::as_str) {
                Some("safe") => chain.safe.unwrap_or(head),
                Some("finalized") => chain.finalized.unwrap_or(head),
                _ => block_param(params.get(0), head)?,
            };
            Ok(if n <= head { block(n) } else { Value::Null })
        }
        "eth_getBlockByHash" => {
            let hash = params.get(0).and_then(Value::as_str).unwrap_or_default();
            let n = hash
                .get(18..34)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .filter(|n| *n <= head && block_hash(*n) == hash);
            Ok(n.map(block).unwrap_or(Value::Null))
        }
        "eth_getBalance" => Ok(json!("0xde0b6b3a7640000")),
        "eth_getTransactionCount" => Ok(json!("0x0")),
        "eth_getCode" | "eth_call" => Ok(json!("0x")),
        "eth_estimateGas" => Ok(json!("0x5208")),
        "eth_gasPrice" | "eth_maxPriorityFeePerGas" => Ok(json!("0x3b9aca00")),
        "eth_getLogs" => Ok(json!([])),
        "eth_sendRawTransaction" => Ok(json!(TX_HASH)),
        "eth_subscribe" | "eth_unsubscribe" => {
            Err(RpcError::new(-32601, "notifications not supported"))
        }
        _ => Err(RpcError::new(
            -32601,
            format!("the method {method} does not exist/is not available"),
        )),
    }
}

fn block_param(p: Option<&Value>, head: u64) -> Result<u64, RpcError> {
    match p.and_then(Value::as_str) {
        Some("latest" | "pending" | "safe" | "finalized") | None => Ok(head),
        Some("earliest") => Ok(0),
        Some(h) => h
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                RpcError::new(-32602, "invalid argument 0: hex string without 0x prefix")
            }),
    }
}
