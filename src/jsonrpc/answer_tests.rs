//! The answer scanner ([`batch_answer`], [`single_answer`]) against serde's reading of the
//! same answers: where the scanner answers, serde reads the same responses with the same raw
//! spans (the same bytes of the body, not equal copies); where serde reads a plain answer
//! (objects, names without escapes, ids `0..n` once each), the scanner must answer too.

use serde_json::value::RawValue;

use super::*;

/// A response as comparable text, each member's address in the body included.
fn describe(answer: &UpstreamResponse<'_>, body: &str) -> String {
    let at = |raw: Option<&RawValue>| {
        raw.map(|raw| {
            let offset = raw.get().as_ptr() as usize - body.as_ptr() as usize;
            format!("{offset}:{}", raw.get())
        })
    };
    format!(
        "id={:?} result={:?} error={:?}",
        at(answer.id),
        at(answer.result),
        at(answer.error)
    )
}

/// serde's answer: the responses in id order when they are exactly ids `0..n`.
fn reference(body: &str, n: usize) -> Option<Vec<String>> {
    let answers: Vec<UpstreamResponse<'_>> = serde_json::from_str(body).ok()?;
    let mut slots: Vec<Option<String>> = vec![None; n];
    for answer in &answers {
        let slot = slots.get_mut(usize::try_from(answer.numeric_id()?).ok()?)?;
        if slot.replace(describe(answer, body)).is_some() {
            return None;
        }
    }
    slots.into_iter().collect()
}

/// Whether the scanner may leave a body serde reads: a response that is not an object (serde's
/// derive reads an array as the members in order) or a name with an escape.
fn unusual(body: &str) -> bool {
    let values: Vec<serde_json::Value> = serde_json::from_str(body).unwrap_or_default();
    body.contains('\\') || values.iter().any(|value| !value.is_object())
}

fn agree(body: &str, n: usize) {
    let scanned = batch_answer(body, 0, n).map(|answers| {
        answers
            .iter()
            .map(|a| describe(a, body))
            .collect::<Vec<_>>()
    });
    let expected = reference(body, n);
    match scanned {
        Some(scanned) => assert_eq!(Some(scanned), expected, "batch of {n} on {body:?}"),
        None => assert!(
            expected.is_none() || unusual(body),
            "scanner declined {body:?}"
        ),
    }
    let single = single_answer(body).map(|a| describe(&a, body));
    let expected = serde_json::from_str::<UpstreamResponse<'_>>(body)
        .ok()
        .map(|a| describe(&a, body));
    match single {
        Some(single) => assert_eq!(Some(single), expected, "single on {body:?}"),
        None => assert!(
            expected.is_none() || body.contains('\\') || body.trim_start().starts_with('['),
            "scanner declined single {body:?}"
        ),
    }
}

const ANSWERS: &[(&str, usize)] = &[
    (r#"[{"jsonrpc":"2.0","id":0,"result":"0x1"}]"#, 1),
    (
        r#"[{"jsonrpc":"2.0","id":1,"result":false},{"id":0,"result":null,"jsonrpc":"2.0"}]"#,
        2,
    ),
    (
        r#" [ { "id" : 0 , "error" : {"code":-32000,"message":"x\"y"} } ] "#,
        1,
    ),
    (
        r#"[{"id":0,"result":{"a":[1,{"b":"]}"}]},"extra":[[]]}]"#,
        1,
    ),
    (r#"[{"id":0,"result":"0x1","error":null}]"#, 1),
    (r#"[{"id":0,"result":"\u00e9\ud800"}]"#, 1),
    (r#"[{"id":0,"result":1},{"id":0,"result":2}]"#, 2),
    (r#"[{"id":0,"result":1},{"id":2,"result":2}]"#, 2),
    (r#"[{"id":0,"result":1}]"#, 2),
    (r#"[{"id":"0","result":1}]"#, 1),
    (r#"[{"id":0.0,"result":1}]"#, 1),
    (r#"[{"id":-1,"result":1}]"#, 1),
    (r#"[{"id":18446744073709551616,"result":1}]"#, 1),
    (r#"[{"id":null,"result":1}]"#, 1),
    (r#"[{"result":1}]"#, 1),
    (r#"[{"id":0,"id":0,"result":1}]"#, 1),
    (r#"[{"id":0,"result":1,"result":2}]"#, 1),
    (r#"[{"id":0,"error":1,"error":2}]"#, 1),
    (r#"[{"id":0,"x":1,"x":2,"result":3}]"#, 1),
    (r#"[{"i\u0064":0,"result":1}]"#, 1),
    (r#"[[0,"0x1",null]]"#, 1),
    (r#"[{"id":0,"result":1},]"#, 1),
    (r#"[{"id":0,"result":1}] x"#, 1),
    (r#"[{"id":0,"result":1}"#, 1),
    (r#"[{"id":0,"result":01}]"#, 1),
    ("[{\"id\":0,\"result\":\"a\u{1}\"}]", 1),
    (r#"[{"jsonrpc":"2.0","id":0,"result":1,"result":2}]"#, 1),
    (
        r#"[{"jsonrpc":"2.0","id":0,"error":{"code":1},"result":null}]"#,
        1,
    ),
    (
        r#"[{"jsonrpc":"2.0","id":0,"result":"0x1","jsonrpc":"2.0"}]"#,
        1,
    ),
    (r#"[{"jsonrpc":"2.0","id":0,"id":0,"result":1}]"#, 1),
    (r#"[{"jsonrpc":"2.0","id":0}]"#, 1),
    (r#"[{"jsonrpc":"2.0","id":0,"result":1 }]"#, 1),
    (r#"[{"jsonrpc":"1.0","id":0,"result":1}]"#, 1),
    (r#"[]"#, 0),
    (r#"[]"#, 1),
    (r#"{"jsonrpc":"2.0","id":0,"result":"0x1"}"#, 1),
    (r#"{"id":0,"error":{"code":-32000,"message":"m"}}"#, 1),
    (r#"{"id":0,"result":1,"result":2}"#, 1),
    (r#"{"id":0,"result":1} {"#, 1),
    (r#"null"#, 1),
    (r#""#, 1),
];

#[test]
fn answer_scanner_agrees_with_serde_on_edge_cases() {
    for (body, n) in ANSWERS {
        agree(body, *n);
    }
}

#[test]
fn answer_scanner_agrees_on_every_truncation() {
    let full = r#"[{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"execution reverted","data":"0x08c379a0"}}, {"id":0,"result":[{"logIndex":"0x0","topics":["0x1",null]}]},{"jsonrpc":"2.0","result":"\u0030x1","id":2}]"#;
    for end in 0..=full.len() {
        agree(&full[..end], 3);
    }
}

/// Answers one or two edits away from a valid batch answer, with a fixed seed.
#[test]
fn answer_scanner_agrees_on_edited_answers() {
    let seed = r#"[{"jsonrpc":"2.0","id":1,"result":{"hash":"0xab","txs":[]}},{"id":0,"error":{"code":-32000,"message":"a\"b"}},{"jsonrpc":"2.0","id":2,"result":null}]"#;
    for body in crate::jsonrpc::edits::edited(seed.as_bytes(), 0x2545_F491_4F6C_DD1D, 4000) {
        let body = String::from_utf8(body).expect("the alphabet is ASCII");
        agree(&body, 3);
    }
}

/// The scanner reads a bench-sized answer itself, in call order whatever the order sent.
#[test]
fn answer_scanner_reads_a_large_batch_in_call_order() {
    let parts: Vec<String> = (0..100)
        .rev()
        .map(|id| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x{id:x}"}}"#))
        .collect();
    let body = format!("[{}]", parts.join(","));
    let answers = batch_answer(&body, 0, 100).expect("a plain answer is scanned");
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.numeric_id(), Some(i as u64));
        assert_eq!(
            answer.result.map(RawValue::get),
            Some(format!("\"0x{i:x}\"").as_str())
        );
    }
    agree(&body, 100);
}

/// The answers of the `upstream_answer` fuzz corpus, each for as many calls as its request
/// holds.
#[test]
fn answer_scanner_agrees_on_the_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/upstream_answer");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let bytes = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
        let Some(split) = bytes.iter().position(|&b| b == 0) else {
            continue;
        };
        let calls = match crate::jsonrpc::decode(&bytes[..split], 1000) {
            Ok(Incoming::Batch(items)) => items.len(),
            _ => 1,
        };
        if let Ok(answer) = std::str::from_utf8(&bytes[split + 1..]) {
            agree(answer, calls);
            seen += 1;
        }
    }
    assert!(seen > 0, "empty corpus at {}", dir.display());
}
