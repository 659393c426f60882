//! The hand-written scanner (`fast`) and the single-pass decoder against the exact two-pass
//! one (`exact`, the former decoder): on every input each must give the same verdict, the
//! same ids byte for byte, the same methods and params (or, the scanner, decline the body). Inputs: hand-written edge cases (odd ids, whitespace, escapes, nested
//! params, repeated members, error items, truncations) and the fuzz seed corpus.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::*;

/// A decoded element as comparable text, a call with the request ethgate forwards for it
/// (as it stands, and with its params pinned), so the scanner's copy of the client's text
/// after the id is held to what the exact decoder's call encodes to.
fn describe(decoded: &Decoded<'_>) -> String {
    match decoded {
        Ok(call) => format!(
            "call id={:?} method={:?} params={:?} forwarded={} pinned={}",
            call.id.map(RawValue::get),
            call.method,
            call.params.map(RawValue::get),
            forwarded(call, None),
            forwarded(
                call,
                Some(&RawValue::from_string("[\"0x1\"]".into()).unwrap())
            ),
        ),
        Err(rejected) => format!(
            "rejected id={:?} error={:?}",
            rejected.id.map(RawValue::get),
            rejected.error
        ),
    }
}

/// What [`encode_call`] writes for `call` as ethgate's call 7.
fn forwarded(call: &Call<'_>, pin: Option<&RawValue>) -> String {
    let mut out = Vec::new();
    encode_call(&mut out, 7, call, pin);
    String::from_utf8(out).expect("JSON text")
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

/// Asserts that `decode` answers `body` as the exact decoder does, and so does the single
/// pass whenever it does not refuse the body.
fn agree_with_limit(body: &[u8], limit: usize) {
    let exact = describe_all(&exact::decode(body, limit));
    let text = String::from_utf8_lossy(body);
    assert_eq!(describe_all(&decode(body, limit)), exact, "on {text:?}");
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    let fast = single_pass(body, limit);
    if fast.as_ref().err() != Some(&PARSE_ERROR) {
        assert_eq!(describe_all(&fast), exact, "single pass on {text:?}");
    }
    match super::fast::decode(body, limit) {
        Some(scanned) => assert_eq!(describe_all(&scanned), exact, "scanner on {text:?}"),
        // The scanner leaves to serde only what it must: JSON errors and escapes (in names,
        // `jsonrpc`, `method`), so it cannot quietly stop serving ordinary bodies.
        None => assert!(
            exact == format!("error {PARSE_ERROR:?}") || body.contains('\\'),
            "scanner declined {text:?}"
        ),
    }
}

/// Asserts that both decoders agree on `body`, alone and as an element of a batch, under a
/// batch limit it fits and one it passes (refused once the element past it is read whole).
fn agree(body: &[u8]) {
    agree_with_limit(body, 4);
    agree_with_limit(body, 1);
    let mut batch = b"[ ".to_vec();
    batch.extend_from_slice(body);
    batch.extend_from_slice(b" ,\n{\"jsonrpc\":\"2.0\",\"method\":\"x\"}]");
    agree_with_limit(&batch, 4);
    agree_with_limit(&batch, 1);
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
    r#"{"jsonrpc":"2.0","id":1,"method":1e400}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":-123456789012345678901234567890}"#,
    r#"{"jsonrpc":{"v":["2.0",{}]},"id":1,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":true}"#,
    r#"{"jsonrpc":"2.0","id":1e400,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","method":"n"}"#,
    r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[],"params":[]}"#,
    r#"{"jsonrpc":"2.0","id":"x","method":"m","other":{"deep":[1,2,{"k":"\u0000"}]},"other":1}"#,
    r#"{"jsonrpc":"2.0","\u0069d":5,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","ID":5,"method":"m"}"#,
    r#"{"\ud800":1,"jsonrpc":"2.0","id":1,"method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","x\udc00y":2}"#,
    "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"k\u{1}\":2}",
    r#"{"jsonrpc":"2.0","id":"\ud800","method":"m"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":["\udfff"]}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","id":2}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","jsonrpc":"2.0"}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[],"x":1}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{}}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m" ,"params":[]}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"","params":[]}"#,
    r#"{"jsonrpc":"2.0","id":true,"method":"m","params":[]}"#,
    r#"{"jsonrpc":"2.0","id":1,"method":"m","params":1}"#,
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

/// serde's derived struct decoder would read a JSON array as the members in order, so the
/// former decoder served `["2.0",1,"m",[]]` inside a batch as a call. JSON-RPC 2.0 requests
/// are objects (geth refuses the array too): both paths answer it as an invalid request.
#[test]
fn array_shaped_elements_are_invalid_requests() {
    let body = br#"[["2.0",1,"eth_blockNumber",[]]]"#;
    for decoded in [decode(body, 10), exact::decode(body, 10)] {
        let Ok(Incoming::Batch(items)) = decoded else {
            panic!("expected a batch");
        };
        let rejected = items[0].as_ref().expect_err("an array is not a request");
        assert!(rejected.id.is_none());
        assert_eq!(rejected.error, INVALID_REQUEST);
    }
}

/// A member name with a lone surrogate escape: the single pass refuses the body, and the exact
/// decoder answers the element as an invalid request, as ethgate always did.
#[test]
fn a_member_name_the_single_pass_refuses_is_decoded_exactly() {
    let body = br#"[{"\ud800":1,"jsonrpc":"2.0","id":1,"method":"m"},{"jsonrpc":"2.0","id":2,"method":"m"}]"#;
    let text = std::str::from_utf8(body).unwrap();
    assert_eq!(single_pass(text, 10).unwrap_err(), PARSE_ERROR);
    assert!(super::fast::decode(text, 10).is_none());
    let Ok(Incoming::Batch(items)) = decode(body, 10) else {
        panic!("expected a batch");
    };
    assert_eq!(
        items.iter().map(describe).collect::<Vec<_>>(),
        [
            format!("rejected id=None error={INVALID_REQUEST:?}"),
            concat!(
                r#"call id=Some("2") method="m" params=None"#,
                r#" forwarded={"jsonrpc":"2.0","id":7,"method":"m"}"#,
                r#" pinned={"jsonrpc":"2.0","id":7,"method":"m","params":["0x1"]}"#
            )
            .to_string(),
        ]
    );
}

/// Bodies one edit away from a valid batch (a byte replaced, inserted or removed, from the
/// characters that matter to JSON), with a fixed seed so a failure is reproducible.
#[test]
fn single_pass_decoder_agrees_on_edited_batches() {
    let seed = br#"[{"jsonrpc":"2.0","id":"a\"\u00e9","method":"eth_call","params":[{"to":"0x1"},"latest"]}, {"id":-1.5e2,"method":"m","jsonrpc":"2.0"},null]"#;
    for body in crate::jsonrpc::edits::edited(seed, 0x9E37_79B9_7F4A_7C15, 4000) {
        agree(&body);
    }
}

/// The layouts clients send (geth's client and web3.js: `jsonrpc, id, method, params`;
/// ethers: `method, params, id, jsonrpc`; pretty-printed) are all read by the scanner, not
/// left to the slower serde path, and read as the exact decoder reads them.
#[test]
fn the_scanner_reads_the_layouts_clients_send() {
    let geth: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"eth_blockNumber","params":[]}}"#))
        .collect();
    let ethers = r#"[{"method":"eth_call","params":[{"to":"0x5fbdb2315678afecb367f032d93f642f64180aa3","data":"0x06fdde03"},"latest"],"id":42,"jsonrpc":"2.0"},{"method":"eth_chainId","params":[],"id":43,"jsonrpc":"2.0"}]"#;
    let pretty = "[\n  {\n    \"jsonrpc\": \"2.0\",\n    \"id\": \"a-1\",\n    \"method\": \"eth_getBalance\",\n    \"params\": [\"0x0000000000000000000000000000000000000000\", \"latest\"]\n  }\n]\n";
    for body in [
        format!("[{}]", geth.join(",")),
        ethers.to_string(),
        pretty.to_string(),
    ] {
        let scanned = super::fast::decode(&body, 1000).expect("the scanner reads this layout");
        assert_eq!(
            describe_all(&scanned),
            describe_all(&exact::decode(body.as_bytes(), 1000))
        );
        let Ok(Incoming::Batch(items)) = scanned else {
            panic!("a batch");
        };
        assert!(items.iter().all(Result::is_ok), "every call is valid");
    }
}

/// A call in the compact layout is forwarded as a copy of the client's text after its id,
/// under ethgate's id, byte for byte what `encode_request` writes; a pin, or a layout that
/// is not the compact one, is encoded member by member.
#[test]
fn compact_calls_are_forwarded_from_the_clients_text() {
    let body = r#"[{"jsonrpc":"2.0","id":"a","method":"eth_getBalance","params":["0x01","latest"]},{"jsonrpc":"2.0","id":18446744073709551615,"method":"eth_chainId"},{"method":"m","id":2,"jsonrpc":"2.0"}]"#;
    let Some(Ok(Incoming::Batch(items))) = super::fast::decode(body, 10) else {
        panic!("the scanner reads this batch");
    };
    let calls: Vec<&Call<'_>> = items.iter().map(|i| i.as_ref().unwrap()).collect();
    assert_eq!(
        calls.iter().map(|c| c.tail.is_some()).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(
        forwarded(calls[0], None),
        r#"{"jsonrpc":"2.0","id":7,"method":"eth_getBalance","params":["0x01","latest"]}"#
    );
    assert_eq!(
        forwarded(calls[1], None),
        r#"{"jsonrpc":"2.0","id":7,"method":"eth_chainId"}"#
    );
    let pin = RawValue::from_string(r#"["0x01","0x5"]"#.into()).unwrap();
    assert_eq!(
        forwarded(calls[0], Some(&pin)),
        r#"{"jsonrpc":"2.0","id":7,"method":"eth_getBalance","params":["0x01","0x5"]}"#
    );
    // Into a buffer without room to spare and into one with room (written differently).
    for id in [0, 9, 10, 99, 12345, u64::MAX] {
        for room in [0, 256] {
            let mut tail = Vec::with_capacity(room);
            tail.extend_from_slice(b"[");
            encode_call(&mut tail, id, calls[1], None);
            let mut exact = b"[".to_vec();
            encode_request(&mut exact, id, "eth_chainId", None);
            assert_eq!(tail, exact, "id {id}, room {room}");
        }
    }
}
