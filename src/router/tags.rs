//! Which block a call asks about: a tag (`latest`, `safe`, `finalized`), a number or a hash.
//! Pure functions over the call's params; the router uses them to keep reads monotonic
//! (tags), to retry reads a lagging node cannot serve (numbers, hashes) and to pin a tag to
//! the number already served.

use serde_json::value::RawValue;
use serde_json::Value;

/// A block tag whose value ethgate keeps monotonic; `pending` is read as `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `latest` (and `pending`).
    Latest = 0,
    /// `safe`.
    Safe = 1,
    /// `finalized`.
    Finalized = 2,
}

impl Tag {
    /// Every tag, in index order.
    pub const ALL: [Tag; 3] = [Tag::Latest, Tag::Safe, Tag::Finalized];

    /// The tag's name as written in JSON-RPC.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Latest => "latest",
            Tag::Safe => "safe",
            Tag::Finalized => "finalized",
        }
    }

    fn parse(text: &str) -> Option<Tag> {
        match text {
            "latest" | "pending" => Some(Tag::Latest),
            "safe" => Some(Tag::Safe),
            "finalized" => Some(Tag::Finalized),
            _ => None,
        }
    }
}

/// What the router must know about one call to keep reads consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// `eth_blockNumber`: the answer is the latest block number.
    BlockNumber,
    /// `eth_getBlockByNumber` with a tag: the answer carries the block's number.
    BlockByTag {
        /// The tag asked for.
        tag: Tag,
        /// Whether full transaction objects were asked for (the second param).
        full: bool,
    },
    /// A tag in another method's block parameter: the answer does not say which block.
    Tagged(Tag),
    /// A block by number: a `null` answer means "this node lacks it" when the number is at
    /// or below the served head.
    ByNumber(u64),
    /// A block by hash: a `null` answer means "this node lacks it".
    ByHash,
    /// Nothing block-related ethgate checks.
    Plain,
}

/// Position of the block parameter of methods that take one, and whether a `null` answer
/// means "no such block" (so another node may have it).
const BLOCK_PARAM: &[(&str, usize, bool)] = &[
    ("eth_call", 1, false),
    ("eth_estimateGas", 1, false),
    ("eth_feeHistory", 1, false),
    ("eth_getBalance", 1, false),
    ("eth_getBlockByHash", 0, true),
    ("eth_getBlockByNumber", 0, true),
    ("eth_getBlockReceipts", 0, true),
    ("eth_getBlockTransactionCountByHash", 0, true),
    ("eth_getBlockTransactionCountByNumber", 0, true),
    ("eth_getCode", 1, false),
    ("eth_getProof", 2, false),
    ("eth_getStorageAt", 2, false),
    ("eth_getTransactionByBlockHashAndIndex", 0, false),
    ("eth_getTransactionByBlockNumberAndIndex", 0, false),
    ("eth_getTransactionCount", 1, false),
    ("eth_getUncleCountByBlockHash", 0, true),
    ("eth_getUncleCountByBlockNumber", 0, true),
];

/// Methods whose absent block parameter means `latest` (geth's default).
const DEFAULTS_TO_LATEST: &[&str] = &["eth_call", "eth_estimateGas"];

/// Classifies one call.
#[inline]
pub fn classify(method: &str, params: Option<&RawValue>) -> Use {
    // Every call of a request is classified: the common answers need no params read and
    // stay inline, the rest (a parse of the params) is called.
    if method == "eth_blockNumber" {
        return Use::BlockNumber;
    }
    if method == "eth_getLogs" {
        return classify_filter(params);
    }
    match BLOCK_PARAM.iter().find(|(m, ..)| *m == method) {
        Some(&(_, position, null_means_missing)) => {
            classify_block_param(method, params, position, null_means_missing)
        }
        None => Use::Plain,
    }
}

/// [`classify`] for a method whose param at `position` names a block.
fn classify_block_param(
    method: &str,
    params: Option<&RawValue>,
    position: usize,
    null_means_missing: bool,
) -> Use {
    let list: Vec<Value> = params
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or_default();
    let block = match list.get(position) {
        Some(value) => BlockRef::of(value),
        None if DEFAULTS_TO_LATEST.contains(&method) => BlockRef::Tag(Tag::Latest),
        None => BlockRef::Other,
    };
    match block {
        BlockRef::Tag(tag) if method == "eth_getBlockByNumber" => Use::BlockByTag {
            tag,
            full: list.get(1).and_then(Value::as_bool).unwrap_or(false),
        },
        BlockRef::Tag(tag) => Use::Tagged(tag),
        BlockRef::Number(n) if null_means_missing => Use::ByNumber(n),
        BlockRef::Hash if null_means_missing => Use::ByHash,
        _ => Use::Plain,
    }
}

/// `eth_getLogs`: a `blockHash` filter, or the highest tag of the range (absent means latest).
fn classify_filter(params: Option<&RawValue>) -> Use {
    let filter: Option<Value> = params
        .and_then(|p| serde_json::from_str::<Vec<Value>>(p.get()).ok())
        .and_then(|list| list.into_iter().next());
    let Some(filter) = filter.filter(Value::is_object) else {
        return Use::Plain;
    };
    if filter.get("blockHash").is_some() {
        return Use::Plain;
    }
    let tag_of = |key: &str| match filter.get(key) {
        None | Some(Value::Null) => Some(Tag::Latest),
        Some(value) => match BlockRef::of(value) {
            BlockRef::Tag(tag) => Some(tag),
            _ => None,
        },
    };
    // latest is the most demanding tag: a node at the latest mark has every safe block too.
    match [tag_of("toBlock"), tag_of("fromBlock")]
        .into_iter()
        .flatten()
        .min_by_key(|t| *t as u8)
    {
        Some(tag) => Use::Tagged(tag),
        None => Use::Plain,
    }
}

enum BlockRef {
    Tag(Tag),
    Number(u64),
    Hash,
    Other,
}

impl BlockRef {
    /// A block parameter: a tag, a hex number, a 32-byte hash, or an EIP-1898 object.
    fn of(value: &Value) -> BlockRef {
        match value {
            Value::String(text) if text.len() == 66 && text.starts_with("0x") => BlockRef::Hash,
            Value::String(text) => match Tag::parse(text) {
                Some(tag) => BlockRef::Tag(tag),
                None => parse_hex(text).map_or(BlockRef::Other, BlockRef::Number),
            },
            Value::Object(object) if object.contains_key("blockHash") => BlockRef::Hash,
            Value::Object(object) => object
                .get("blockNumber")
                .map_or(BlockRef::Other, BlockRef::of),
            _ => BlockRef::Other,
        }
    }
}

fn parse_hex(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x")?;
    // Up to 16 hex digits cannot overflow: read directly, as every `eth_blockNumber` answer
    // is read here; anything else (longer, a sign) takes the library's parser, which decides.
    if digits.is_empty() || digits.len() > 16 || digits.starts_with('+') {
        return u64::from_str_radix(digits, 16).ok();
    }
    short_hex(digits.as_bytes())
}

/// 1 to 16 hex digits read directly; `None` for anything else.
#[inline(always)]
fn short_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &digit| {
        let value = HEX[usize::from(digit)];
        (value < 16).then_some(n << 4 | u64::from(value))
    })
}

/// The value of each hex digit by byte, 16 or more for a byte that is not one: a load per
/// digit instead of three range tests.
const HEX: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// The `number` of a block object answer (`None` for `null` or anything else).
pub fn block_number(result: &RawValue) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Numbered<'a> {
        #[serde(borrow)]
        number: Option<&'a str>,
    }
    let block: Numbered = serde_json::from_str(result.get()).ok()?;
    parse_hex(block.number?)
}

/// A hex quantity answer such as `eth_blockNumber`'s.
#[inline]
pub fn quantity(result: &RawValue) -> Option<u64> {
    let raw = result.get();
    // `"0x` and up to 16 hex digits: nearly every answer read here, read inline.
    if let [b'"', b'0', b'x', digits @ .., b'"'] = raw.as_bytes() {
        if let Some(number) = short_hex(digits) {
            return Some(number);
        }
    }
    // A raw value that opens with a quote is a whole JSON string; without a backslash its
    // text is what lies between the quotes, so the common answer skips a parser round. Hex
    // digits hold no backslash: the text is tried first, the backslash looked for only if
    // it is not a quantity.
    let text = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => match parse_hex(inner) {
            Some(number) => return Some(number),
            None if !inner.contains('\\') => return None,
            None => serde_json::from_str::<&str>(raw).ok()?,
        },
        None => serde_json::from_str::<&str>(raw).ok()?,
    };
    parse_hex(text)
}

/// `params` with every block parameter written as `tag` replaced by block `number`, or `None`
/// when nothing needed replacing. Finalized and safe blocks do not change, so the pinned call
/// asks for exactly the block already served under the tag.
pub fn pin(
    method: &str,
    params: Option<&RawValue>,
    tag: Tag,
    number: u64,
) -> Option<Box<RawValue>> {
    let mut list: Vec<Value> = serde_json::from_str(params?.get()).ok()?;
    let pinned = Value::String(format!("0x{number:x}"));
    let replace = |slot: &mut Value| -> bool {
        let is_tag = slot.as_str().and_then(Tag::parse) == Some(tag);
        if is_tag {
            *slot = pinned.clone();
        }
        is_tag
    };
    let mut changed = false;
    if method == "eth_getLogs" {
        if let Some(Value::Object(filter)) = list.first_mut() {
            for key in ["fromBlock", "toBlock"] {
                if let Some(slot) = filter.get_mut(key) {
                    changed |= replace(slot);
                }
            }
        }
    } else if let Some(&(_, position, _)) = BLOCK_PARAM.iter().find(|(m, ..)| *m == method) {
        if let Some(slot) = list.get_mut(position) {
            changed = match slot {
                Value::Object(object) => object.get_mut("blockNumber").is_some_and(replace),
                other => replace(other),
            };
        }
    }
    if !changed {
        return None;
    }
    serde_json::value::to_raw_value(&list).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct reading of short quantities against the library's parser.
    #[test]
    fn hex_quantities_read_as_the_library_reads_them() {
        for digits in [
            "",
            "0",
            "00",
            "1234",
            "abcdef",
            "ABCDEF",
            "fFfF",
            "ffffffffffffffff",
            "0ffffffffffffffff",
            "10000000000000000",
            "000000000000000001",
            "+1",
            "+",
            "-1",
            "1g",
            "g",
            " 1",
            "1 ",
            "é",
            "0x1",
            "12_34",
        ] {
            let expected = u64::from_str_radix(digits, 16).ok();
            assert_eq!(parse_hex(&format!("0x{digits}")), expected, "0x{digits}");
        }
        assert_eq!(parse_hex("1234"), None);
        assert_eq!(parse_hex("0X12"), None);
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    fn of(method: &str, params: &str) -> Use {
        classify(method, Some(&raw(params)))
    }

    #[test]
    fn block_number_and_tagged_blocks_are_recognised() {
        assert_eq!(classify("eth_blockNumber", None), Use::BlockNumber);
        assert_eq!(
            of("eth_getBlockByNumber", r#"["finalized",true]"#),
            Use::BlockByTag {
                tag: Tag::Finalized,
                full: true
            }
        );
        assert_eq!(
            of("eth_getBlockByNumber", r#"["pending"]"#),
            Use::BlockByTag {
                tag: Tag::Latest,
                full: false
            }
        );
        assert_eq!(
            of("eth_getBlockByNumber", r#"["0x10",false]"#),
            Use::ByNumber(16)
        );
        assert_eq!(
            of("eth_getBlockByNumber", r#"["earliest",false]"#),
            Use::Plain
        );
    }

    #[test]
    fn tags_in_other_methods_follow_their_parameter_position() {
        let address = r#""0x0000000000000000000000000000000000000001""#;
        assert_eq!(
            of("eth_getBalance", &format!("[{address},\"safe\"]")),
            Use::Tagged(Tag::Safe)
        );
        assert_eq!(
            of(
                "eth_getStorageAt",
                &format!("[{address},\"0x0\",\"finalized\"]")
            ),
            Use::Tagged(Tag::Finalized)
        );
        assert_eq!(
            of("eth_call", r#"[{"to":"0x00"}]"#),
            Use::Tagged(Tag::Latest)
        );
        assert_eq!(of("eth_getBalance", &format!("[{address}]")), Use::Plain);
        assert_eq!(
            of("eth_call", r#"[{},{"blockNumber":"finalized"}]"#),
            Use::Tagged(Tag::Finalized)
        );
        assert_eq!(
            of("eth_getBlockTransactionCountByNumber", r#"["safe"]"#),
            Use::Tagged(Tag::Safe)
        );
        assert_eq!(of("eth_chainId", "[]"), Use::Plain);
    }

    #[test]
    fn hashes_and_numbers_where_null_means_missing() {
        let hash = format!("\"0x{}\"", "ab".repeat(32));
        assert_eq!(
            of("eth_getBlockByHash", &format!("[{hash},false]")),
            Use::ByHash
        );
        assert_eq!(
            of("eth_getBlockReceipts", &format!("[{hash}]")),
            Use::ByHash
        );
        assert_eq!(
            of("eth_getBlockTransactionCountByNumber", r#"["0x5"]"#),
            Use::ByNumber(5)
        );
        // A null balance is not a missing block: numbers there are plain reads.
        assert_eq!(of("eth_getBalance", r#"["0x01","0x5"]"#), Use::Plain);
    }

    #[test]
    fn log_filters_use_their_most_demanding_tag() {
        assert_eq!(of("eth_getLogs", "[{}]"), Use::Tagged(Tag::Latest));
        assert_eq!(
            of(
                "eth_getLogs",
                r#"[{"fromBlock":"0x1","toBlock":"finalized"}]"#
            ),
            Use::Tagged(Tag::Finalized)
        );
        assert_eq!(
            of(
                "eth_getLogs",
                r#"[{"fromBlock":"safe","toBlock":"latest"}]"#
            ),
            Use::Tagged(Tag::Latest)
        );
        assert_eq!(
            of("eth_getLogs", r#"[{"fromBlock":"0x1","toBlock":"0x2"}]"#),
            Use::Plain
        );
        let hash = format!("\"0x{}\"", "cd".repeat(32));
        assert_eq!(
            of("eth_getLogs", &format!("[{{\"blockHash\":{hash}}}]")),
            Use::Plain
        );
    }

    #[test]
    fn garbage_params_are_plain_not_a_panic() {
        assert_eq!(of("eth_getBlockByNumber", r#"{"a":1}"#), Use::Plain);
        assert_eq!(of("eth_getLogs", r#"["x"]"#), Use::Plain);
        assert_eq!(of("eth_getBalance", "[1,2,3]"), Use::Plain);
        assert_eq!(classify("eth_getBlockByNumber", None), Use::Plain);
    }

    #[test]
    fn pinning_replaces_only_the_named_tag() {
        let pinned = pin(
            "eth_getBlockByNumber",
            Some(&raw(r#"["finalized",false]"#)),
            Tag::Finalized,
            255,
        )
        .unwrap();
        assert_eq!(pinned.get(), r#"["0xff",false]"#);
        let logs = pin(
            "eth_getLogs",
            Some(&raw(
                r#"[{"fromBlock":"safe","toBlock":"latest","address":"0x1"}]"#,
            )),
            Tag::Safe,
            16,
        )
        .unwrap();
        let value: Value = serde_json::from_str(logs.get()).unwrap();
        assert_eq!(value[0]["fromBlock"], "0x10");
        assert_eq!(value[0]["toBlock"], "latest");
        assert_eq!(value[0]["address"], "0x1");
        let eip1898 = pin(
            "eth_call",
            Some(&raw(r#"[{},{"blockNumber":"safe"}]"#)),
            Tag::Safe,
            1,
        )
        .unwrap();
        assert_eq!(eip1898.get(), r#"[{},{"blockNumber":"0x1"}]"#);
        assert!(pin(
            "eth_getBalance",
            Some(&raw(r#"["0x1","latest"]"#)),
            Tag::Safe,
            1
        )
        .is_none());
    }

    /// Quantity answers, read inline or not, as the library's reading of the string and
    /// [`parse_hex`] read them.
    #[test]
    fn quantities_read_as_the_string_they_hold() {
        for text in [
            r#""0x1234""#,
            r#""0x0""#,
            r#""0x""#,
            r#""0xffffffffffffffff""#,
            r#""0x10000000000000000""#,
            r#""0x0000000000000000001""#,
            r#""0xABCdef""#,
            r#""0x12g4""#,
            r#""0X12""#,
            r#""0x+1""#,
            r#""0x-1""#,
            r#""0x 1""#,
            r#""0x1\u0030""#,
            r#""\u0030x10""#,
            r#""""#,
            r#""0xé""#,
            "\"0x1\"",
            "16",
            "null",
            "[\"0x1\"]",
        ] {
            let expected = serde_json::from_str::<&str>(text).ok().and_then(parse_hex);
            assert_eq!(quantity(&raw(text)), expected, "{text}");
        }
    }

    #[test]
    fn answers_yield_block_numbers() {
        assert_eq!(
            block_number(&raw(r#"{"number":"0x1f","hash":"0x"}"#)),
            Some(31)
        );
        assert_eq!(block_number(&raw("null")), None);
        assert_eq!(quantity(&raw(r#""0x10""#)), Some(16));
        assert_eq!(quantity(&raw("16")), None);
        // Escaped text cannot be borrowed and never was read; plain text is read between the quotes.
        assert_eq!(quantity(&raw(r#""\u0030x10""#)), None);
        assert_eq!(quantity(&raw(r#""0x""#)), None);
        assert_eq!(quantity(&raw(r#""""#)), None);
    }
}
