use super::*;

fn single(body: &str) -> Result<Call<'_>, RpcError> {
    match decode(body.as_bytes(), 1000) {
        Ok(Incoming::Single(call)) => call.map_err(|rejected| rejected.error),
        other => panic!("expected a single call, got {other:?}"),
    }
}

#[test]
fn ids_of_every_type_are_kept_byte_for_byte() {
    for id in [
        "1",
        "0",
        "-7",
        "123456789012345678901234567890",
        "1.5e3",
        "\"a\\\"b\\u00e9\"",
        "null",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_blockNumber"}}"#);
        let call = single(&body).expect("valid call");
        assert_eq!(call.id.map(RawValue::get), Some(id));
    }
}

#[test]
fn absent_id_is_a_notification() {
    let call = single(r#"{"jsonrpc":"2.0","method":"eth_blockNumber"}"#).expect("valid");
    assert!(call.id.is_none());
}

#[test]
fn garbage_is_a_parse_error_but_json_non_request_is_invalid() {
    assert_eq!(decode(b"{not json", 1000).unwrap_err(), PARSE_ERROR);
    assert_eq!(decode(b"[1,", 1000).unwrap_err(), PARSE_ERROR);
    assert_eq!(single("42").unwrap_err(), INVALID_REQUEST);
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":1}"#).unwrap_err(),
        INVALID_REQUEST
    );
    assert_eq!(
        single(r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#).unwrap_err(),
        INVALID_REQUEST
    );
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#).unwrap_err(),
        INVALID_REQUEST
    );
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":3}"#).unwrap_err(),
        INVALID_REQUEST
    );
}

#[test]
fn batch_elements_are_decoded_independently() {
    let Ok(Incoming::Batch(calls)) =
        decode(br#" [{"jsonrpc":"2.0","id":1,"method":"a"}, 5, {"jsonrpc":"2.0","id":"x","method":"b","params":[1]}]"#, 1000)
    else {
        panic!("expected a batch");
    };
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].as_ref().unwrap().method, "a");
    assert_eq!(calls[1].as_ref().unwrap_err().error, INVALID_REQUEST);
    assert_eq!(calls[2].as_ref().unwrap().params.unwrap().get(), "[1]");
}

#[test]
fn escaped_method_names_are_unescaped() {
    let call = single(r#"{"jsonrpc":"2.0","id":1,"method":"eth_\u0062lockNumber"}"#).unwrap();
    assert_eq!(call.method, "eth_blockNumber");
}

#[test]
fn upstream_request_uses_ethgate_id_and_raw_params() {
    let params = RawValue::from_string("[\"0x1\", false]".into()).unwrap();
    let mut out = Vec::new();
    encode_request(&mut out, 7, "eth_getBlockByNumber", Some(&params));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"jsonrpc":"2.0","id":7,"method":"eth_getBlockByNumber","params":["0x1", false]}"#
    );
}

#[test]
fn upstream_answer_members_are_kept_raw() {
    let upstream: UpstreamResponse =
        serde_json::from_str(r#"{"jsonrpc":"2.0","id":3,"result":{"a" : 1}}"#).unwrap();
    assert_eq!(upstream.numeric_id(), Some(3));
    assert_eq!(upstream.result.map(RawValue::get), Some(r#"{"a" : 1}"#));
}

#[test]
fn upstream_error_is_summarised() {
    let upstream: UpstreamResponse = serde_json::from_str(
        r#"{"jsonrpc":"2.0","id":0,"error":{"code":3,"message":"execution reverted","data":"0x08c379a0"}}"#,
    )
    .unwrap();
    assert_eq!(
        upstream.error_summary(),
        Some((3, "execution reverted".into()))
    );
}

#[test]
fn error_body_defaults_to_null_id_and_escapes_message() {
    let body = error_body(None, &method_not_allowed("admin_\"x"));
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"method not allowed: admin_\"x"}}"#
    );
    let body = error_body(None, &NO_HEALTHY_UPSTREAM.with_data("a: refused".into()));
    assert!(String::from_utf8(body)
        .unwrap()
        .ends_with(r#""data":"a: refused"}}"#));
}

fn rejected_id(body: &str) -> Option<String> {
    match decode(body.as_bytes(), 1000) {
        Ok(Incoming::Single(Err(rejected))) => rejected.id.map(|id| id.get().to_string()),
        other => panic!("expected a rejected single call, got {other:?}"),
    }
}

#[test]
fn invalid_requests_keep_a_readable_id() {
    assert_eq!(
        rejected_id(r#"{"id":7,"method":"eth_chainId"}"#).as_deref(),
        Some("7")
    );
    assert_eq!(
        rejected_id(r#"{"jsonrpc":"2.0","id":"x","method":5}"#).as_deref(),
        Some(r#""x""#)
    );
    assert_eq!(
        rejected_id(r#"{"jsonrpc":"2.0","id":1,"params":2,"method":"m"}"#).as_deref(),
        Some("1")
    );
    // An id of a type ids may not have is not echoed.
    assert_eq!(
        rejected_id(r#"{"jsonrpc":"2.0","id":[1],"method":"m"}"#),
        None
    );
    assert_eq!(rejected_id(r#"{"method":"m"}"#), None);
}

#[test]
fn batch_elements_keep_their_ids_when_invalid() {
    let Ok(Incoming::Batch(items)) = decode(br#"[{"id":3,"method":"a"},{"jsonrpc":"2.0"}]"#, 10)
    else {
        panic!("expected a batch");
    };
    assert_eq!(
        items[0].as_ref().unwrap_err().id.map(RawValue::get),
        Some("3")
    );
    assert!(items[1].as_ref().unwrap_err().id.is_none());
}

#[test]
fn batch_length_is_enforced_while_decoding() {
    let at_limit = format!("[{}]", ["0"; 3].join(","));
    assert!(
        matches!(decode(at_limit.as_bytes(), 3), Ok(Incoming::Batch(items)) if items.len() == 3)
    );
    let over = format!("[{}]", ["0"; 4].join(","));
    assert_eq!(decode(over.as_bytes(), 3).unwrap_err(), BATCH_TOO_LARGE);
    // The elements after the limit are never looked at: not even a syntax error there matters.
    assert_eq!(decode(b"[0,0,0,0,oops", 3).unwrap_err(), BATCH_TOO_LARGE);
    assert_eq!(decode(b"[0,0,oops", 3).unwrap_err(), PARSE_ERROR);
    assert_eq!(decode(b" [ ] ", 3).unwrap_err(), EMPTY_BATCH);
    assert_eq!(decode(b"[0] x", 3).unwrap_err(), PARSE_ERROR);
}

#[test]
fn invalid_utf8_anywhere_is_a_parse_error_and_valid_multibyte_text_is_kept() {
    let single = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_\xff\"}";
    assert_eq!(decode(single, 1000).unwrap_err().code, PARSE_ERROR.code);
    let batch = b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\"},{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"\xc3\x28\"}]";
    assert_eq!(decode(batch, 1000).unwrap_err().code, PARSE_ERROR.code);
    let call =
        single_ok("{\"jsonrpc\":\"2.0\",\"id\":\"é€\",\"method\":\"m\",\"params\":[\"日本\"]}");
    assert_eq!(call.id.map(RawValue::get), Some("\"é€\""));
    assert_eq!(call.params.map(RawValue::get), Some("[\"日本\"]"));
}

fn single_ok(body: &str) -> Call<'_> {
    single(body).expect("valid call")
}

#[test]
fn method_names_borrow_from_the_body_unless_escaped() {
    let plain = single_ok(r#"{"jsonrpc":"2.0","id":1,"method":"eth_call"}"#);
    assert!(matches!(plain.method, Cow::Borrowed("eth_call")));
    let escaped = single_ok(r#"{"jsonrpc":"2.0","id":1,"method":"eth_\u0063all"}"#);
    assert!(matches!(&escaped.method, Cow::Owned(m) if m == "eth_call"));
    // An escaped version string is still "2.0"; a non-string method is invalid.
    assert!(single(r#"{"jsonrpc":"2\u002e0","id":1,"method":"m"}"#).is_ok());
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":1,"method":7}"#)
            .unwrap_err()
            .code,
        INVALID_REQUEST.code
    );
}

#[test]
fn upstream_request_ids_and_method_names_are_written_exactly() {
    for (id, method, expected) in [
        (0, "m", r#"{"jsonrpc":"2.0","id":0,"method":"m"}"#),
        (10, "a b", r#"{"jsonrpc":"2.0","id":10,"method":"a b"}"#),
        (
            u64::MAX,
            "q\"\\\n\u{1}é",
            r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"q\"\\\n\u0001é"}"#,
        ),
        (
            1,
            "é\u{7f}ü",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"é\u{7f}ü\"}",
        ),
        (
            2,
            "eth_getBlockByNumber\"",
            r#"{"jsonrpc":"2.0","id":2,"method":"eth_getBlockByNumber\""}"#,
        ),
    ] {
        let mut out = Vec::new();
        encode_request(&mut out, id, method, None);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        let back: serde_json::Value = serde_json::from_str(expected).unwrap();
        assert_eq!(back["method"], method);
    }
}

/// The direct reading of short ids against the library's parser.
#[test]
fn numeric_ids_read_as_the_library_reads_them() {
    for id in [
        "0",
        "7",
        "007",
        "1234567890123456789",
        "9999999999999999999",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
        "-1",
        "+1",
        "1.0",
        "1e3",
        "\"1\"",
        "null",
    ] {
        // Upstream ids are JSON; text that is not (`007`, `+1`) never reaches this.
        let Ok(raw) = RawValue::from_string(id.to_string()) else {
            continue;
        };
        let answer = UpstreamResponse {
            id: Some(&raw),
            result: None,
            error: None,
        };
        assert_eq!(answer.numeric_id(), id.parse::<u64>().ok(), "{id}");
    }
}
