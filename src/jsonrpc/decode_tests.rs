//! The single-pass decoder against the two-pass one it replaced, kept here as the reference:
//! on every input both must give the same verdict, the same ids byte for byte, the same
//! methods and params. Inputs: hand-written edge cases (odd ids, whitespace, escapes, nested
//! params, repeated members, error items, truncations) and the fuzz seed corpus.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::*;

/// The former decoder, verbatim in behaviour: each element captured raw, then parsed again.
mod reference {
    use std::cell::Cell;
    use std::fmt;

    use serde::de::{DeserializeSeed, SeqAccess, Visitor};

    use super::*;

    #[derive(Deserialize)]
    struct WireRequest<'a> {
        #[serde(default, borrow, deserialize_with = "text")]
        jsonrpc: Option<Cow<'a, str>>,
        #[serde(default, borrow, deserialize_with = "present")]
        id: Option<&'a RawValue>,
        #[serde(default, borrow, deserialize_with = "text")]
        method: Option<Cow<'a, str>>,
        #[serde(default, borrow, deserialize_with = "present")]
        params: Option<&'a RawValue>,
    }

    #[derive(Deserialize)]
    struct WireId<'a> {
        #[serde(default, borrow, deserialize_with = "present")]
        id: Option<&'a RawValue>,
    }

    fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
        #[derive(Deserialize)]
        struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
        Option::<Text>::deserialize(d).map(|text| text.map(|Text(text)| text))
    }

    fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }

    pub fn decode(body: &[u8], max_batch_len: usize) -> Result<Incoming<'_>, RpcError> {
        let body = std::str::from_utf8(body).map_err(|_| PARSE_ERROR)?;
        let first = body.bytes().find(|b| !b.is_ascii_whitespace());
        if first == Some(b'[') {
            let elements = raw_elements(body, max_batch_len)?;
            if elements.is_empty() {
                return Err(EMPTY_BATCH);
            }
            return Ok(Incoming::Batch(
                elements.into_iter().map(|raw| call(raw.get())).collect(),
            ));
        }
        match serde_json::from_str::<WireRequest>(body) {
            Ok(wire) => Ok(Incoming::Single(validate(wire))),
            Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() => {
                Ok(Incoming::Single(Err(Rejected {
                    id: readable_id(body),
                    error: INVALID_REQUEST,
                })))
            }
            Err(_) => Err(PARSE_ERROR),
        }
    }

    fn raw_elements(body: &str, limit: usize) -> Result<Vec<&RawValue>, RpcError> {
        let too_long = Cell::new(false);
        let mut deserializer = serde_json::Deserializer::from_str(body);
        let seed = Elements {
            limit,
            too_long: &too_long,
        };
        let parsed = seed
            .deserialize(&mut deserializer)
            .and_then(|elements| deserializer.end().map(|()| elements));
        match parsed {
            Ok(elements) => Ok(elements),
            Err(_) if too_long.get() => Err(BATCH_TOO_LARGE),
            Err(_) => Err(PARSE_ERROR),
        }
    }

    struct Elements<'f> {
        limit: usize,
        too_long: &'f Cell<bool>,
    }

    impl<'de> DeserializeSeed<'de> for Elements<'_> {
        type Value = Vec<&'de RawValue>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Elements<'_> {
        type Value = Vec<&'de RawValue>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON-RPC batch")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut elements = Vec::new();
            while let Some(element) = seq.next_element::<&'de RawValue>()? {
                if elements.len() == self.limit {
                    self.too_long.set(true);
                    return Err(serde::de::Error::custom("batch too large"));
                }
                elements.push(element);
            }
            Ok(elements)
        }
    }

    fn call(element: &str) -> Decoded<'_> {
        match serde_json::from_str::<WireRequest>(element) {
            Ok(wire) => validate(wire),
            Err(_) => Err(Rejected {
                id: readable_id(element),
                error: INVALID_REQUEST,
            }),
        }
    }

    fn readable_id(object: &str) -> Option<&RawValue> {
        serde_json::from_str::<WireId>(object)
            .ok()
            .and_then(|wire| wire.id)
            .filter(|id| element::id_type_ok(id))
    }

    fn validate(wire: WireRequest<'_>) -> Decoded<'_> {
        let id = wire.id.filter(|id| element::id_type_ok(id));
        let invalid = Rejected {
            id,
            error: INVALID_REQUEST,
        };
        if wire.id.is_some() && id.is_none() {
            return Err(Rejected::without_id(INVALID_REQUEST));
        }
        if wire.jsonrpc.as_deref() != Some("2.0") {
            return Err(invalid);
        }
        let Some(method) = wire.method.filter(|m| !m.is_empty()) else {
            return Err(invalid);
        };
        if let Some(params) = wire.params {
            if !matches!(params.get().as_bytes().first(), Some(b'[' | b'{' | b'n')) {
                return Err(invalid);
            }
        }
        Ok(Call {
            id: wire.id,
            method,
            params: wire.params,
        })
    }
}

/// A decoded element as comparable text.
fn describe(decoded: &Decoded<'_>) -> String {
    match decoded {
        Ok(call) => format!(
            "call id={:?} method={:?} params={:?}",
            call.id.map(RawValue::get),
            call.method,
            call.params.map(RawValue::get)
        ),
        Err(rejected) => format!(
            "rejected id={:?} error={:?}",
            rejected.id.map(RawValue::get),
            rejected.error
        ),
    }
}

fn describe_all(result: &Result<Incoming<'_>, RpcError>) -> String {
    match result {
        Err(error) => format!("error {error:?}"),
        Ok(Incoming::Single(decoded)) => format!("single {}", describe(decoded)),
        Ok(Incoming::Batch(items)) => {
            let items: Vec<String> = items.iter().map(describe).collect();
            format!("batch [{}]", items.join(" | "))
        }
    }
}

fn agree_with_limit(body: &[u8], limit: usize) {
    let new = describe_all(&decode(body, limit));
    let old = describe_all(&reference::decode(body, limit));
    assert_eq!(new, old, "on {:?}", String::from_utf8_lossy(body));
}

/// Asserts that both decoders agree on `body`, alone and as an element of a batch.
fn agree(body: &[u8]) {
    let limit = 4;
    let new = describe_all(&decode(body, limit));
    let old = describe_all(&reference::decode(body, limit));
    assert_eq!(new, old, "on {:?}", String::from_utf8_lossy(body));
    let mut batch = b"[ ".to_vec();
    batch.extend_from_slice(body);
    batch.extend_from_slice(b" ,\n{\"jsonrpc\":\"2.0\",\"method\":\"x\"}]");
    let new = describe_all(&decode(&batch, limit));
    let old = describe_all(&reference::decode(&batch, limit));
    assert_eq!(new, old, "on {:?}", String::from_utf8_lossy(&batch));
}

/// Request objects and other values, valid and not, that a client could send.
const CASES: &[&str] = &[
    r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#,
    r#"  {  "jsonrpc" : "2.0" , "id" : 1 , "method" : "eth_blockNumber" }  "#,
    r#"{"method":"eth_call","params":[{"to":"0x1","data":"0x"},"latest"],"id":"a\"b","jsonrpc":"2.0"}"#,
    r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":-0.5e-3,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":"\u00e9\ud83d\ude00","method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":true,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":[1],"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":{"a":1},"method":"m"}"#,
    r#"{"jsonrpc":"2.0","method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":[1,{"b":[null,"]"]}]}}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":null}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":3}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"eth_\u0062lockNumber"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"a\\b\"c\/d\n"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"bad \ud800 surrogate"}"#,
    r#"{"jsonrpc":"2\u002e0","id":1,"method":"m"}"#,
    r#"{"jsonrpc":"2.0 ","id":1,"method":"m"}"#,
    r#"{"jsonrpc":2.0,"id":1,"method":"m"}"#,
    r#"{"jsonrpc":null,"id":1,"method":"m"}"#,
    r#"{"id":1,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":null}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":["m"]}"#,
    r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","method":"n"}"#,
    r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[],"params":[]}"#,
    r#"{"jsonrpc":"2.0","id":"x","method":"m","other":{"deep":[1,2,{"k":"\u0000"}]},"other":1}"#,
    r#"{"jsonrpc":"2.0","\u0069d":5,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","ID":5,"method":"m"}"#,
    r#"{}"#,
    r#"[]"#,
    r#"[1,2]"#,
    r#"["2.0"]"#,
    r#"[{"jsonrpc":"2.0","id":1,"method":"m"}]"#,
    r#"42"#,
    r#"-1.5"#,
    r#""text""#,
    r#"true"#,
    r#"null"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m"} x"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m""#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m\u12"}"#,
    r#"{"jsonrpc":"2.0","id":01,"method":"m"}"#,
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\tn\"}",
    r#"{"jsonrpc":"2.0","id":1,"method":"m",}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[1,]}"#,
    r#"{"jsonrpc":"2.0","id":1 "method":"m"}"#,
    "",
    "   ",
];

#[test]
fn single_pass_decoder_agrees_with_the_reference_on_edge_cases() {
    for case in CASES {
        agree(case.as_bytes());
    }
}

#[test]
fn single_pass_decoder_agrees_on_every_truncation() {
    let full = br#"[{"jsonrpc":"2.0","id":"a\"]","method":"eth_getLogs","params":[{"topics":[["0x1",null]]}]},7,{"id":[],"jsonrpc":"2.0","method":"m"},{"jsonrpc":"2.0","method":"n"}]"#;
    for end in 0..=full.len() {
        agree(&full[..end]);
    }
}

#[test]
fn single_pass_decoder_agrees_on_the_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/jsonrpc_request");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let bytes = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
        agree(&bytes);
        seen += 1;
    }
    assert!(seen > 0, "empty corpus at {}", dir.display());
}

#[test]
fn batch_limit_counts_elements_of_any_validity() {
    let body = br#"[1, {"jsonrpc":"2.0","id":1,"method":"m"}, "x", {"id":2}]"#;
    let Ok(Incoming::Batch(items)) = decode(body, 4) else {
        panic!("four elements fit a limit of four");
    };
    assert_eq!(items.len(), 4);
    assert_eq!(decode(body, 3).unwrap_err(), BATCH_TOO_LARGE);
    let past_limit = br#"[1, 2, 3, 4, {"#;
    assert_eq!(decode(past_limit, 3).unwrap_err(), BATCH_TOO_LARGE);
    agree_with_limit(past_limit, 3);
}

#[test]
fn duplicate_ids_across_elements_are_each_kept() {
    let body = br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","id":1,"method":"b"}]"#;
    let Ok(Incoming::Batch(items)) = decode(body, 10) else {
        panic!("expected a batch");
    };
    let ids: Vec<_> = items
        .iter()
        .map(|item| item.as_ref().ok().and_then(|c| c.id).map(RawValue::get))
        .collect();
    assert_eq!(ids, [Some("1"), Some("1")]);
}

#[test]
fn plain_method_names_borrow_and_escaped_ones_are_owned() {
    let body = br#"[{"jsonrpc":"2.0","id":1,"method":"eth_call"},{"jsonrpc":"2.0","id":2,"method":"eth_c\u0061ll"}]"#;
    let Ok(Incoming::Batch(items)) = decode(body, 10) else {
        panic!("expected a batch");
    };
    let methods: Vec<&Cow<str>> = items.iter().map(|i| &i.as_ref().unwrap().method).collect();
    assert!(matches!(methods[0], Cow::Borrowed("eth_call")));
    assert!(matches!(methods[1], Cow::Owned(m) if m == "eth_call"));
}

/// The one deliberate difference from the reference: serde's derived struct decoder also took
/// a JSON array as the members in order, so `["2.0",1,"m",[]]` inside a batch was served as a
/// call. JSON-RPC 2.0 requests are objects (geth refuses the array too): now it is invalid.
#[test]
fn array_shaped_elements_are_invalid_requests() {
    let body = br#"[["2.0",1,"eth_blockNumber",[]]]"#;
    let Ok(Incoming::Batch(items)) = decode(body, 10) else {
        panic!("expected a batch");
    };
    let rejected = items[0].as_ref().expect_err("an array is not a request");
    assert!(rejected.id.is_none());
    assert_eq!(rejected.error, INVALID_REQUEST);
    let Ok(Incoming::Batch(old)) = reference::decode(body, 10) else {
        panic!("expected a batch");
    };
    assert!(old[0].is_ok(), "the reference took the array as a call");
}
