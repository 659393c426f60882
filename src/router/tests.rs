use crate::jsonrpc::UpstreamResponse;
use bytes::Bytes;
use serde_json::value::RawValue;

use super::*;

fn call<'a>(id: Option<&'a RawValue>, method: &'a str) -> Call<'a> {
    Call::new(id, method.into(), None)
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).unwrap()
}

#[test]
fn only_writes_that_never_left_are_retried() {
    let not_sent = AttemptError::Send(SendError::NotSent("refused".into()));
    let no_answer = AttemptError::Send(SendError::NoAnswer("reset".into()));
    let timeout = AttemptError::Timeout(Duration::from_secs(1));
    let status = AttemptError::Send(SendError::Status(503));
    let bad = AttemptError::BadAnswer("html".into());
    for error in [&not_sent, &no_answer, &timeout, &status, &bad] {
        assert!(error.retryable(Calls::ReadOnly), "reads retry on {error}");
    }
    assert!(not_sent.retryable(Calls::WithWrite));
    for error in [&no_answer, &timeout, &status, &bad] {
        assert!(
            !error.retryable(Calls::WithWrite),
            "writes must not retry on {error}"
        );
    }
}

#[test]
fn only_evidence_about_the_node_counts_against_health() {
    assert!(AttemptError::Send(SendError::NotSent("x".into())).counts_against_health());
    assert!(AttemptError::Send(SendError::NoAnswer("x".into())).counts_against_health());
    // A slow or heavy call is the caller's problem; the probes judge a node that hangs.
    assert!(!AttemptError::Timeout(Duration::from_secs(1)).counts_against_health());
    assert!(!AttemptError::Send(SendError::TooLarge(10)).counts_against_health());
    assert!(!AttemptError::Send(SendError::Local("EMFILE".into())).counts_against_health());
    assert!(!AttemptError::Send(SendError::Status(429)).counts_against_health());
    assert!(!AttemptError::BadAnswer("x".into()).counts_against_health());
}

#[test]
fn too_large_answers_are_not_retried_and_local_failures_are() {
    assert!(!AttemptError::Send(SendError::TooLarge(10)).retryable(Calls::ReadOnly));
    assert!(AttemptError::Send(SendError::Local("EMFILE".into())).retryable(Calls::WithWrite));
}

#[test]
fn batch_is_encoded_with_sequential_ids() {
    let params = raw("[1]");
    let id_a = raw("\"a\"");
    let a = call(Some(&id_a), "eth_a");
    let mut b = call(None, "eth_b");
    b.params = Some(&params);
    let body = encode(&[&a, &b], &Pins::default(), Framing::Batch, 0);
    assert_eq!(
        &body[..],
        br#"[{"jsonrpc":"2.0","id":0,"method":"eth_a"},{"jsonrpc":"2.0","id":1,"method":"eth_b","params":[1]}]"#
    );
}

#[test]
fn reversed_batch_answer_is_restored_to_request_order_with_client_ids() {
    let id_a = raw("123456789012345678901234567890");
    let id_b = raw("\"b\"");
    let a = call(Some(&id_a), "eth_a");
    let b = call(Some(&id_b), "eth_b");
    let answer =
        br#"[{"jsonrpc":"2.0","id":1,"result":"B"},{"jsonrpc":"2.0","id":0,"result":"A"}]"#;
    let bodies: Vec<String> = splice(answer, &[&a, &b], Framing::Batch)
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.unwrap().body).unwrap())
        .collect();
    assert_eq!(
        bodies[0],
        r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"result":"A"}"#
    );
    assert_eq!(bodies[1], r#"{"jsonrpc":"2.0","id":"b","result":"B"}"#);
}

#[test]
fn notification_gets_no_reply_and_incomplete_batch_is_a_bad_answer() {
    let id = raw("1");
    let a = call(Some(&id), "eth_a");
    let n = call(None, "eth_n");
    let answer = br#"[{"id":0,"result":"A"},{"id":1,"result":null}]"#;
    let fine = |_: usize, _: &UpstreamResponse<'_>| Verdict::Fine;
    let attempted = render(
        &Bytes::from_static(answer),
        0,
        &[&a, &n],
        Framing::Batch,
        fine,
    )
    .unwrap();
    assert!(attempted.rendered[1].is_none());
    assert!(render(
        &Bytes::from_static(br#"[{"id":0,"result":"A"}]"#),
        0,
        &[&a, &n],
        Framing::Batch,
        fine
    )
    .is_err());
    assert!(render(
        &Bytes::from_static(b"<html>502</html>"),
        0,
        &[&a],
        Framing::Single,
        fine
    )
    .is_err());
    assert!(render(
        &Bytes::from_static(br#"{"id":0}"#),
        0,
        &[&a],
        Framing::Single,
        fine
    )
    .is_err());
}

#[test]
fn a_batch_answer_is_placed_by_its_ids_counted_from_the_base() {
    let (one, two) = (raw("\"a\""), raw("\"b\""));
    let (a, b) = (call(Some(&one), "eth_a"), call(Some(&two), "eth_b"));
    let fine = |_: usize, _: &UpstreamResponse<'_>| Verdict::Fine;
    let answer = Bytes::from_static(br#"[{"id":42,"result":"B"},{"id":41,"result":"A"}]"#);
    let attempted = render(&answer, 41, &[&a, &b], Framing::Batch, fine).unwrap();
    let bodies: Vec<_> = attempted
        .rendered
        .iter()
        .map(|r| String::from_utf8(r.as_ref().unwrap().body(&one)).unwrap())
        .collect();
    assert!(bodies[0].contains(r#""result":"A""#), "{bodies:?}");
    assert!(bodies[1].contains(r#""result":"B""#), "{bodies:?}");
    // Ids below the base or past its end were not sent.
    let below = Bytes::from_static(br#"[{"id":0,"result":"A"},{"id":42,"result":"B"}]"#);
    assert!(render(&below, 41, &[&a, &b], Framing::Batch, fine).is_err());
    let past = Bytes::from_static(br#"[{"id":41,"result":"A"},{"id":43,"result":"B"}]"#);
    assert!(render(&past, 41, &[&a, &b], Framing::Batch, fine).is_err());
}

#[test]
fn verdicts_are_collected_per_call_and_errors_flagged() {
    let id = raw("1");
    let a = call(Some(&id), "eth_call");
    let missing = br#"{"id":0,"error":{"code":-32000,"message":"header not found"}}"#;
    let attempted = render(
        &Bytes::from_static(missing),
        0,
        &[&a],
        Framing::Single,
        |_, r| match r.error_summary() {
            Some(_) => Verdict::Lacking,
            None => Verdict::Fine,
        },
    )
    .unwrap();
    assert!(attempted.wants_retry());
    assert_eq!(attempted.retry_label(), AttemptResult::MissingData);
    assert!(attempted.rendered[0].as_ref().unwrap().is_error);
    let ok = br#"{"id":0,"result":"0x1"}"#;
    let attempted = render(
        &Bytes::from_static(ok),
        0,
        &[&a],
        Framing::Single,
        |_, _| Verdict::Behind(tags::Tag::Latest),
    )
    .unwrap();
    assert_eq!(attempted.retry_label(), AttemptResult::Behind);
    assert!(!attempted.rendered[0].as_ref().unwrap().is_error);
}

#[test]
fn pinned_params_replace_the_clients_in_the_encoded_body() {
    let params = raw(r#"["finalized",false]"#);
    let mut a = call(None, "eth_getBlockByNumber");
    a.params = Some(&params);
    let mut pins = Pins::default();
    pins.set(0, 1, raw(r#"["0x10",false]"#));
    let body = encode(&[&a], &pins, Framing::Single, 0);
    assert_eq!(
        &body[..],
        br#"{"jsonrpc":"2.0","id":0,"method":"eth_getBlockByNumber","params":["0x10",false]}"#
    );
}

#[test]
fn an_answer_that_is_not_utf8_is_a_bad_answer() {
    let id = raw("1");
    let c = call(Some(&id), "eth_blockNumber");
    let error = splice(
        b"{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":\"\xff\"}",
        &[&c],
        Framing::Single,
    )
    .expect_err("refused");
    assert!(error.starts_with("not a JSON-RPC answer"), "{error}");
}

/// The response for `answer` (framed as a single call) under the client id `id`.
fn relayed(id: &str, answer: &[u8]) -> Reply {
    let id = raw(id);
    let c = call(Some(&id), "eth_call");
    let mut rendered = splice(answer, &[&c], Framing::Single).expect("spliced");
    rendered.pop().flatten().expect("a reply")
}

#[test]
fn relayed_answer_carries_client_id_and_upstream_bytes() {
    let reply = relayed(
        "123456789012345678901234567890",
        br#"{"jsonrpc":"2.0","id":3,"result":{"a" : 1}}"#,
    );
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"result":{"a" : 1}}"#
    );
    assert!(!reply.is_error);
}

#[test]
fn relayed_error_is_unchanged_and_a_null_error_is_no_error() {
    let reply = relayed(
        r#""q""#,
        br#"{"jsonrpc":"2.0","id":0,"error":{"code":3,"message":"execution reverted","data":"0x08c379a0"}}"#,
    );
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        r#"{"jsonrpc":"2.0","id":"q","error":{"code":3,"message":"execution reverted","data":"0x08c379a0"}}"#
    );
    assert!(reply.is_error);
    let reply = relayed("1", br#"{"id":0,"error":null,"result":[1, 2]}"#);
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        r#"{"jsonrpc":"2.0","id":1,"result":[1, 2]}"#
    );
    assert!(!reply.is_error);
    let reply = relayed("1", br#"{"id":0,"error":null}"#);
    assert_eq!(
        String::from_utf8(reply.body).unwrap(),
        r#"{"jsonrpc":"2.0","id":1,"result":null}"#
    );
}

#[test]
fn answers_made_by_ethgate_render_like_error_bodies() {
    let id = raw(r#"["odd"]"#);
    let error = jsonrpc::NO_HEALTHY_UPSTREAM.with_data("a \"detail\"".into());
    assert_eq!(
        Answer::error(&error).body(&id),
        jsonrpc::error_body(Some(&id), &error)
    );
    assert_eq!(
        Answer::result("\"0x10\"").body(&id),
        br#"{"jsonrpc":"2.0","id":["odd"],"result":"0x10"}"#.to_vec()
    );
}

#[test]
fn batch_answers_with_unknown_repeated_or_missing_ids_are_bad_answers() {
    let (one, two) = (raw("1"), raw("2"));
    let (a, b) = (call(Some(&one), "eth_a"), call(Some(&two), "eth_b"));
    let splice_batch = |answer: &[u8]| splice(answer, &[&a, &b], Framing::Batch);
    let refused = |answer: &[u8]| splice_batch(answer).expect_err("refused");
    for (answer, reason) in [
        (
            &br#"[{"id":0,"result":1},{"id":0,"result":2}]"#[..],
            "batch answer repeats an id",
        ),
        (
            br#"[{"id":0,"result":1},{"id":2,"result":2}]"#,
            "batch answer carries an id that was not sent",
        ),
        (
            br#"[{"id":0,"result":1},{"id":"1","result":2}]"#,
            "batch answer carries an id that was not sent",
        ),
        (
            br#"[{"id":0,"result":1},{"id":-1,"result":2}]"#,
            "batch answer carries an id that was not sent",
        ),
        (
            br#"[{"id":0,"result":1},{"result":2}]"#,
            "batch answer carries an id that was not sent",
        ),
        (br#"[{"id":1,"result":2}]"#, "batch answer lacks id 0"),
    ] {
        assert_eq!(
            refused(answer),
            reason,
            "{}",
            String::from_utf8_lossy(answer)
        );
    }
    for answer in [
        &br#"{"id":0,"result":1}"#[..],
        br#"[{"id":0,"result":1},{"id":1,"result":2}] x"#,
        br#"[{"id":0,"result":1},{"id":1,"result":2}"#,
        br#"[{"id":0,"result":1},{"id":1,"result":2},]"#,
    ] {
        let reason = refused(answer);
        assert!(
            reason.starts_with("not a JSON-RPC batch answer"),
            "{reason}"
        );
    }
    let spaced = b" [ {\"result\" : 2 , \"id\" : 1 } ,\n{ \"id\":0, \"result\":1} ] ";
    let replies = splice_batch(spaced).expect("whitespace is fine");
    let bodies: Vec<_> = replies
        .into_iter()
        .map(|r| String::from_utf8(r.unwrap().body).unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            r#"{"jsonrpc":"2.0","id":1,"result":1}"#,
            r#"{"jsonrpc":"2.0","id":2,"result":2}"#
        ]
    );
}

/// Every call in flight holds its read's future, and a WebSocket session moves each one into
/// its call set: a hedge's attempt is boxed, so the future holds one attempt, not two.
#[test]
fn a_read_future_holds_one_attempt_inline() {
    let config = crate::config::Config::from_toml_str(
        "[[upstream]]\nname = \"a\"\nhttp = \"http://127.0.0.1:1\"\nws = \"ws://127.0.0.1:1\"\n",
    )
    .unwrap();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let upstreams = std::sync::Arc::new(Upstreams::new(&config, metrics.clone()));
    let router = Router::new(upstreams.clone(), Duration::from_secs(1), metrics);
    let attempt = std::mem::size_of_val(&upstreams.all()[0].call(1, |_| Vec::new()));
    let calls: Vec<&Call<'_>> = Vec::new();
    let read = std::mem::size_of_val(&router.forward(&calls, Framing::Single));
    assert!(
        read < 2 * attempt + 1024,
        "a read's future ({read} bytes) must not hold two attempts ({attempt} bytes each)"
    );
}
