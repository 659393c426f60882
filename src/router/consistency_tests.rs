use std::time::Duration;

use serde_json::value::RawValue;

use super::*;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::probe::Report;

/// Upstreams `a`, `b`, `c` (priority order) probed healthy at the given (head, safe,
/// finalized); max_lag_blocks 5.
fn upstreams(tags: &[(u64, Option<u64>, Option<u64>)]) -> Upstreams {
    let mut toml = String::new();
    for (i, _) in tags.iter().enumerate() {
        toml += &format!(
            "[[upstream]]\nname = \"u{i}\"\nhttp = \"http://127.0.0.1:{}\"\npriority = {i}\n",
            1000 + i
        );
    }
    let config = Config::from_toml_str(&toml).unwrap();
    let set = Upstreams::new(&config, std::sync::Arc::new(Metrics::new()));
    for (i, &(head, safe, finalized)) in tags.iter().enumerate() {
        let report = Report {
            chain_id: 1,
            syncing: false,
            head,
            safe,
            finalized,
        };
        set.record_probe(&set.all()[i], Ok(report), Duration::from_millis(1));
    }
    set
}

/// The names `plan` orders the upstreams at `positions` (configured order) in.
fn order<'s>(plan: &Plan, set: &'s Upstreams, positions: &[usize]) -> Vec<&'s str> {
    let candidates = positions.iter().map(|&i| &set.all()[i]);
    let ordered = plan.order(candidates, set);
    ordered.into_iter().map(|u| u.name()).collect()
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).unwrap()
}

fn call<'a>(method: &'a str, params: Option<&'a RawValue>) -> Call<'a> {
    Call::new(None, method.into(), params)
}

fn answer(text: &str) -> UpstreamResponse<'_> {
    serde_json::from_str(text).unwrap()
}

#[test]
fn after_failover_upstreams_at_the_served_head_come_before_behind_ones() {
    let set = upstreams(&[(97, None, None), (100, None, None), (97, None, None)]);
    let marks = Marks::default();
    marks.observe(Tag::Latest, 100);
    let number = call("eth_blockNumber", None);
    let plan = Plan::new(&[&number], &marks, &set, 5);
    assert_eq!(order(&plan, &set, &[0, 1, 2]), ["u1", "u0", "u2"]);
    // A read that names no tag keeps strict order.
    let chain = call("eth_chainId", None);
    let plan = Plan::new(&[&chain], &marks, &set, 5);
    assert_eq!(order(&plan, &set, &[0, 1, 2]), ["u0", "u1", "u2"]);
    // A block by number at or below the served head prefers upstreams that have it.
    let params = raw(r#"["0x63",false]"#);
    let by_number = call("eth_getBlockByNumber", Some(&params));
    let plan = Plan::new(&[&by_number], &marks, &set, 5);
    assert_eq!(order(&plan, &set, &[0, 1, 2]), ["u1", "u0", "u2"]);
}

#[test]
fn upstreams_whose_finalized_went_back_or_lags_are_not_used_for_tag_reads() {
    let set = upstreams(&[
        (100, None, Some(80)),
        (100, None, Some(90)),
        (100, None, Some(94)),
    ]);
    // u0 reports less than before: went back.
    set.record_probe(
        &set.all()[0],
        Ok(Report {
            chain_id: 1,
            syncing: false,
            head: 100,
            safe: None,
            finalized: Some(70),
        }),
        Duration::from_millis(1),
    );
    assert!(set.all()[0].finalized_went_back());
    let marks = Marks::default();
    marks.observe(Tag::Finalized, 96);
    let params = raw(r#"["finalized",false]"#);
    let finalized = call("eth_getBlockByNumber", Some(&params));
    let plan = Plan::new(&[&finalized], &marks, &set, 5);
    // u1 lags the served finalized by 6 > 5; u2 by 2.
    assert_eq!(order(&plan, &set, &[0, 1, 2]), ["u2"]);
    // Reads without tags still use every upstream.
    let chain = call("eth_chainId", None);
    let plan = Plan::new(&[&chain], &marks, &set, 5);
    assert_eq!(order(&plan, &set, &[0, 1, 2]), ["u0", "u1", "u2"]);
}

#[test]
fn safe_and_finalized_are_pinned_on_upstreams_below_the_mark() {
    let set = upstreams(&[(100, Some(90), Some(80)), (100, Some(95), Some(85))]);
    let marks = Marks::default();
    marks.observe(Tag::Finalized, 85);
    marks.observe(Tag::Safe, 95);
    marks.observe(Tag::Latest, 100);
    let fin = raw(r#"["finalized",false]"#);
    let safe = raw(r#"["0x01","safe"]"#);
    let calls = [
        call("eth_getBlockByNumber", Some(&fin)),
        call("eth_getBalance", Some(&safe)),
        call("eth_blockNumber", None),
    ];
    let refs: Vec<&Call> = calls.iter().collect();
    let plan = Plan::new(&refs, &marks, &set, 50);
    let pins = plan.pins_for(&refs, &set.all()[0]);
    assert_eq!(pins.get(0).map(RawValue::get), Some(r#"["0x55",false]"#));
    assert_eq!(pins.get(1).map(RawValue::get), Some(r#"["0x01","0x5f"]"#));
    assert!(pins.get(2).is_none());
    // At or above the marks: tags go as written.
    let unpinned = plan.pins_for(&refs, &set.all()[1]);
    assert!((0..refs.len()).all(|i| unpinned.get(i).is_none()));
}

#[test]
fn answers_are_judged_against_the_marks() {
    let set = upstreams(&[(100, None, None)]);
    let marks = Marks::default();
    marks.observe(Tag::Latest, 100);
    let latest = raw(r#"["latest",true]"#);
    let old = raw(r#"["0x10",false]"#);
    let hash = raw(&format!("[\"0x{}\",false]", "ab".repeat(32)));
    let calls = [
        call("eth_blockNumber", None),
        call("eth_getBlockByNumber", Some(&latest)),
        call("eth_getBlockByNumber", Some(&old)),
        call("eth_getBlockByHash", Some(&hash)),
        call("eth_call", None),
    ];
    let refs: Vec<&Call> = calls.iter().collect();
    let plan = Plan::new(&refs, &marks, &set, 5);
    let behind = answer(r#"{"id":0,"result":"0x61"}"#);
    assert_eq!(
        plan.judge(0, false, &behind, &marks),
        Verdict::Behind(Tag::Latest)
    );
    let ahead = answer(r#"{"id":0,"result":"0x65"}"#);
    assert!(matches!(
        plan.judge(0, false, &ahead, &marks),
        Verdict::Observed {
            tag: Tag::Latest,
            number: 101,
            block: None
        }
    ));
    let block = answer(r#"{"id":1,"result":{"number":"0x64","hash":"0x1"}}"#);
    match plan.judge(1, false, &block, &marks) {
        Verdict::Observed {
            number: 100,
            block: Some(json),
            ..
        } => {
            assert_eq!(&*json, r#"{"number":"0x64","hash":"0x1"}"#)
        }
        other => panic!("{other:?}"),
    }
    let null = answer(r#"{"id":2,"result":null}"#);
    assert_eq!(plan.judge(2, false, &null, &marks), Verdict::Lacking);
    assert_eq!(plan.judge(3, false, &null, &marks), Verdict::Lacking);
    let missing = answer(r#"{"id":4,"error":{"code":-32000,"message":"header not found"}}"#);
    assert_eq!(plan.judge(4, false, &missing, &marks), Verdict::Lacking);
    let reverted = answer(r#"{"id":4,"error":{"code":3,"message":"execution reverted"}}"#);
    assert_eq!(plan.judge(4, false, &reverted, &marks), Verdict::Fine);
}

#[test]
fn a_null_block_above_the_served_head_is_an_honest_answer() {
    let set = upstreams(&[(100, None, None)]);
    let marks = Marks::default();
    marks.observe(Tag::Latest, 100);
    let future = raw(r#"["0x70",false]"#);
    let c = call("eth_getBlockByNumber", Some(&future));
    let plan = Plan::new(&[&c], &marks, &set, 5);
    // Only numbers at or below the known head are waited for: null above it is honest.
    assert_eq!(order(&plan, &set, &[0]), ["u0"]);
    let null = answer(r#"{"id":0,"result":null}"#);
    assert_eq!(plan.judge(0, false, &null, &marks), Verdict::Fine);
}

#[test]
fn when_every_upstream_is_behind_the_served_value_is_answered() {
    let set = upstreams(&[(97, None, None)]);
    let marks = Marks::default();
    marks.observe(Tag::Latest, 100);
    marks.keep_block(Tag::Latest, false, 100, "{\"number\":\"0x64\"}".into());
    let latest = raw(r#"["latest",false]"#);
    let latest_full = raw(r#"["latest",true]"#);
    let calls = [
        call("eth_blockNumber", None),
        call("eth_getBlockByNumber", Some(&latest)),
        call("eth_getBlockByNumber", Some(&latest_full)),
    ];
    let refs: Vec<&Call> = calls.iter().collect();
    let plan = Plan::new(&refs, &marks, &set, 5);
    let id = raw("7");
    let text = |r: Answer| (String::from_utf8(r.body(&id)).unwrap(), r.is_error);
    assert_eq!(
        text(plan.served_instead(0, Tag::Latest, &marks)),
        (
            r#"{"jsonrpc":"2.0","id":7,"result":"0x64"}"#.to_string(),
            false
        )
    );
    assert_eq!(
        text(plan.served_instead(1, Tag::Latest, &marks)),
        (
            r#"{"jsonrpc":"2.0","id":7,"result":{"number":"0x64"}}"#.to_string(),
            false
        )
    );
    // The full-transactions form was never served: an honest error, not a made-up block.
    let (body, is_error) = text(plan.served_instead(2, Tag::Latest, &marks));
    assert!(is_error);
    assert!(body.contains("-32002") && body.contains("0x64"), "{body}");
}

#[test]
fn observed_values_raise_the_marks_and_keep_the_block() {
    let set = upstreams(&[(100, None, None)]);
    let marks = Marks::default();
    let fin = raw(r#"["finalized",false]"#);
    let c = call("eth_getBlockByNumber", Some(&fin));
    let plan = Plan::new(&[&c], &marks, &set, 5);
    let block = answer(r#"{"id":0,"result":{"number":"0x40"}}"#);
    let verdict = plan.judge(0, false, &block, &marks);
    plan.record(&[verdict], &marks);
    assert_eq!(marks.get(Tag::Finalized), 64);
    assert_eq!(
        marks.block(Tag::Finalized, false, 64).as_deref(),
        Some(r#"{"number":"0x40"}"#)
    );
}

#[test]
fn a_pinned_tag_read_an_upstream_cannot_serve_is_behind_never_null() {
    let set = upstreams(&[(15, Some(14), Some(13))]);
    let marks = Marks::default();
    marks.observe(Tag::Latest, 18);
    marks.observe(Tag::Safe, 17);
    let safe = raw(r#"["safe",false]"#);
    let c = call("eth_getBlockByNumber", Some(&safe));
    let plan = Plan::new(&[&c], &marks, &set, 5);
    let null = answer(r#"{"id":0,"result":null}"#);
    assert_eq!(
        plan.judge(0, true, &null, &marks),
        Verdict::Behind(Tag::Safe)
    );
    let missing = answer(r#"{"id":0,"error":{"code":-32000,"message":"header not found"}}"#);
    assert_eq!(
        plan.judge(0, true, &missing, &marks),
        Verdict::Behind(Tag::Safe)
    );
    // Unpinned, a null tagged block is simply relayed.
    assert_eq!(plan.judge(0, false, &null, &marks), Verdict::Fine);
}

/// A batch's observations raise each tag's mark to its highest number (observed once per
/// tag), and every block worth keeping is kept, whatever the order of the calls.
#[test]
fn a_batch_records_the_highest_number_per_tag_and_each_block() {
    let set = upstreams(&[(100, Some(90), Some(80))]);
    let marks = Marks::default();
    let fin = raw(r#"["finalized",false]"#);
    let (number, block) = (
        call("eth_blockNumber", None),
        call("eth_getBlockByNumber", Some(&fin)),
    );
    let calls = [&number, &block, &number, &number];
    let plan = Plan::new(&calls, &marks, &set, 5);
    let verdicts: Vec<Verdict> = [
        r#"{"id":0,"result":"0x63"}"#,
        r#"{"id":1,"result":{"number":"0x50"}}"#,
        r#"{"id":2,"result":"0x64"}"#,
        r#"{"id":3,"result":"0x62"}"#,
    ]
    .iter()
    .enumerate()
    .map(|(i, text)| plan.judge(i, false, &answer(text), &marks))
    .collect();
    plan.record(&verdicts, &marks);
    assert_eq!(marks.get(Tag::Latest), 100);
    assert_eq!(marks.get(Tag::Finalized), 80);
    assert_eq!(
        marks.block(Tag::Finalized, false, 80).as_deref(),
        Some(r#"{"number":"0x50"}"#)
    );
    // Recording nothing observed leaves the marks as they are.
    plan.record(&[Verdict::Fine, Verdict::Lacking], &marks);
    assert_eq!(marks.snapshot(), [100, 0, 80]);
}

/// The inlined judgement of plain reads and block numbers gives the general one's verdict on
/// every kind of answer.
#[test]
fn the_quick_judgement_agrees_with_the_general_one() {
    let set = upstreams(&[(100, Some(90), Some(80))]);
    let marks = Marks::default();
    marks.observe(Tag::Latest, 50);
    let fin = raw(r#"["finalized",false]"#);
    let by_number = raw(r#"["0x10",false]"#);
    let calls = [
        call("eth_blockNumber", None),
        call("eth_chainId", None),
        call("eth_getBlockByNumber", Some(&fin)),
        call("eth_getBlockByNumber", Some(&by_number)),
    ];
    let calls: Vec<&Call<'_>> = calls.iter().collect();
    let plan = Plan::new(&calls, &marks, &set, 5);
    for text in [
        r#"{"id":0,"result":"0x40"}"#,
        r#"{"id":0,"result":"0x20"}"#,
        r#"{"id":0,"result":"0x"}"#,
        r#"{"id":0,"result":"\u0030x40"}"#,
        r#"{"id":0,"result":64}"#,
        r#"{"id":0,"result":null}"#,
        r#"{"id":0,"result":{"number":"0x40"}}"#,
        r#"{"id":0,"error":{"code":-32000,"message":"header not found"}}"#,
        r#"{"id":0,"error":{"code":-32000,"message":"execution reverted"}}"#,
        r#"{"id":0,"error":null,"result":"0x40"}"#,
        r#"{"id":0}"#,
    ] {
        let response = answer(text);
        for i in 0..calls.len() {
            for pinned in [false, true] {
                assert_eq!(
                    plan.judge(i, pinned, &response, &marks),
                    plan.judge_any(i, pinned, &response, &marks),
                    "call {i} pinned {pinned} on {text}"
                );
            }
        }
    }
}
