use super::*;

fn filter(json: &str) -> Result<LogFilter, FilterError> {
    let raw = RawValue::from_string(json.to_string()).unwrap();
    LogFilter::parse(Some(&raw))
}

fn log(address: &str, topics: &[&str]) -> String {
    serde_json::json!({"address": address, "topics": topics, "data": "0x"}).to_string()
}

fn matches(f: &LogFilter, log: &str) -> bool {
    f.matches(&serde_json::from_str(log).unwrap())
}

const A: &str = "0x00000000000000000000000000000000000000aa";
const B: &str = "0x00000000000000000000000000000000000000bb";
const T1: &str = "0x0000000000000000000000000000000000000000000000000000000000000001";
const T2: &str = "0x0000000000000000000000000000000000000000000000000000000000000002";

fn address_n(n: usize) -> String {
    format!("0x{n:040x}")
}

#[test]
fn address_string_and_array_normalise_alike() {
    let one = filter(&format!(
        r#"{{"address":"{}"}}"#,
        A.to_uppercase().replace("0X", "0x")
    ))
    .unwrap();
    let list = filter(&format!(
        r#"{{"address":["{A}","{A}"],"fromBlock":"0x0","toBlock":"latest"}}"#
    ))
    .unwrap();
    assert_eq!(one.key(), list.key());
}

#[test]
fn topics_keep_positions_wildcards_and_or_lists() {
    let f = filter(&format!(
        r#"{{"topics":[null,["{T2}","{T1}"],"{T1}",null]}}"#
    ))
    .unwrap();
    assert_eq!(
        f.topics,
        vec![
            None,
            Some(vec![T1.into(), T2.into()]),
            Some(vec![T1.into()])
        ]
    );
    let wildcard_in_list = filter(&format!(r#"{{"topics":[["{T1}",null]]}}"#)).unwrap();
    assert!(wildcard_in_list.topics.is_empty());
}

#[test]
fn malformed_filters_are_refused_as_invalid_argument() {
    for bad in [
        r#"{"address":"0x12"}"#,
        r#"{"address":[7]}"#,
        r#"{"address":{}}"#,
        r#"{"topics":"0x1"}"#,
        r#"{"topics":[5]}"#,
        r#"{"topics":[["0x01"]]}"#,
        "[]",
    ] {
        let error = filter(bad).expect_err(bad);
        assert!(matches!(error, FilterError::Invalid(_)), "{bad}: {error:?}");
        let rpc = error.to_rpc();
        assert_eq!(rpc.code, -32602, "{bad}");
        assert!(
            rpc.message.starts_with("invalid argument 1: "),
            "{bad}: {}",
            rpc.message
        );
    }
}

#[test]
fn five_topic_positions_get_geths_exceed_max_topics() {
    let zero = format!("0x{:064x}", 0);
    let error = filter(&format!(r#"{{"topics":[null,null,null,null,"{zero}"]}}"#)).unwrap_err();
    assert_eq!(error, FilterError::TooManyTopics);
    let rpc = error.to_rpc();
    assert_eq!(
        (rpc.code, rpc.message.as_ref()),
        (-32602, "invalid argument 1: exceed max topics")
    );
    // Four positions are fine.
    assert!(filter(&format!(r#"{{"topics":[null,null,null,"{zero}"]}}"#)).is_ok());
}

#[test]
fn more_than_1000_alternatives_or_addresses_are_refused() {
    let topics: Vec<String> = (0..=MAX_TOPIC_ALTERNATIVES)
        .map(|n| format!("0x{n:064x}"))
        .collect();
    let json = serde_json::json!({ "topics": [topics] }).to_string();
    assert_eq!(filter(&json).unwrap_err(), FilterError::TooManyTopics);
    let json = serde_json::json!({ "topics": [&topics[..MAX_TOPIC_ALTERNATIVES]] }).to_string();
    assert!(filter(&json).is_ok());

    let addresses: Vec<String> = (0..=MAX_ADDRESSES).map(address_n).collect();
    let json = serde_json::json!({ "address": addresses }).to_string();
    let error = filter(&json).unwrap_err();
    assert_eq!(error, FilterError::TooManyAddresses);
    assert_eq!(error.to_rpc().code, -32000);
    assert_eq!(error.to_rpc().message, "exceed max addresses");
    let json = serde_json::json!({ "address": &addresses[..MAX_ADDRESSES] }).to_string();
    assert!(filter(&json).is_ok());
}

#[test]
fn matching_follows_geths_positional_rule() {
    let f = filter(&format!(
        r#"{{"address":["{A}"],"topics":[null,["{T1}","{T2}"]]}}"#
    ))
    .unwrap();
    assert!(matches(&f, &log(A, &[T2, T1])));
    assert!(matches(
        &f,
        &log(&A.to_uppercase().replace("0X", "0x"), &[T2, T2])
    ));
    assert!(!matches(&f, &log(B, &[T2, T1])), "other address");
    assert!(
        !matches(&f, &log(A, &[T1])),
        "too few topics for position 1"
    );
    let fourth = format!("0x{:064x}", 3);
    assert!(!matches(&f, &log(A, &[T1, &fourth])), "not an alternative");
    assert!(matches(&LogFilter::everything(), &log(B, &[])));
}

#[test]
fn merged_query_unions_addresses_or_fetches_the_whole_block() {
    let a = Arc::new(filter(&format!(r#"{{"address":"{A}"}}"#)).unwrap());
    let b = Arc::new(filter(&format!(r#"{{"address":["{B}","{A}"],"topics":["{T1}"]}}"#)).unwrap());
    let merged: Value = serde_json::from_str(&merged_query([&a, &b], "0xh")).unwrap();
    assert_eq!(
        merged,
        serde_json::json!([{"blockHash": "0xh", "address": [A, B]}])
    );

    let any = Arc::new(LogFilter::everything());
    let merged: Value = serde_json::from_str(&merged_query([&a, &any], "0xh")).unwrap();
    assert_eq!(merged, serde_json::json!([{"blockHash": "0xh"}]));

    let wide: Vec<Arc<LogFilter>> = (0..2)
        .map(|part| {
            let addresses: Vec<String> = (0..MAX_ADDRESSES)
                .map(|n| address_n(part * MAX_ADDRESSES + n))
                .collect();
            Arc::new(filter(&serde_json::json!({ "address": addresses }).to_string()).unwrap())
        })
        .collect();
    let merged: Value = serde_json::from_str(&merged_query(&wide, "0xh")).unwrap();
    assert_eq!(
        merged,
        serde_json::json!([{"blockHash": "0xh"}]),
        "over geth's cap: whole block"
    );
}
