use std::sync::Arc;

use serde_json::value::RawValue;

use super::*;

fn params(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).unwrap()
}

fn session() -> (Arc<SessionHandle>, tokio::sync::mpsc::Receiver<String>) {
    let (handle, queue) = SessionHandle::new(8);
    (Arc::new(handle), queue)
}

const FILTER: &str = r#"["logs",{"address":"0x00000000000000000000000000000000000000aa"}]"#;

#[test]
fn ids_are_32_hex_digits_and_unique() {
    let hub = Hub::new();
    let ids: std::collections::HashSet<String> = (0..1000)
        .map(|_| {
            hub.prepare(Some(&params(r#"["newHeads"]"#)))
                .unwrap()
                .id()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1000);
    for id in &ids {
        assert_eq!(id.len(), 34);
        assert!(id.starts_with("0x") && id[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}

#[test]
fn unknown_kinds_and_bad_params_are_refused_like_geth() {
    let hub = Hub::new();
    let unknown = hub.prepare(Some(&params(r#"["blocks"]"#))).err().unwrap();
    assert_eq!(unknown.code, -32601);
    assert_eq!(
        unknown.message,
        "no \"blocks\" subscription in eth namespace"
    );
    assert_eq!(hub.prepare(None).err().unwrap().code, -32602);
    assert_eq!(
        hub.prepare(Some(&params(r#"["logs",{"topics":7}]"#)))
            .err()
            .unwrap()
            .code,
        -32602
    );
}

#[test]
fn nothing_is_delivered_before_activation_and_after_unsubscribe() {
    let hub = Hub::new();
    let (s, mut queue) = session();
    let pending = hub.prepare(Some(&params(r#"["newHeads"]"#))).unwrap();
    let id = pending.id().to_string();
    hub.deliver(Kind::NewHeads, None, "{}");
    assert!(queue.try_recv().is_err(), "not yet active");
    hub.activate(pending, &s);
    hub.deliver(Kind::NewHeads, None, r#"{"n":1}"#);
    let text = queue.try_recv().unwrap();
    assert!(
        text.contains(&id) && text.contains(r#""result":{"n":1}"#),
        "{text}"
    );
    assert!(hub.unsubscribe(s.id(), &id));
    assert!(
        !hub.unsubscribe(s.id(), &id),
        "second unsubscribe finds nothing"
    );
    hub.deliver(Kind::NewHeads, None, "{}");
    assert!(queue.try_recv().is_err());
}

#[test]
fn sessions_cannot_unsubscribe_each_other() {
    let hub = Hub::new();
    let (a, _qa) = session();
    let (b, _qb) = session();
    let pending = hub.prepare(Some(&params(r#"["newHeads"]"#))).unwrap();
    let id = pending.id().to_string();
    hub.activate(pending, &a);
    assert!(!hub.unsubscribe(b.id(), &id));
    assert_eq!(hub.count(Kind::NewHeads), 1);
}

#[test]
fn identical_filters_share_one_entry_released_with_the_last_subscriber() {
    let hub = Hub::new();
    let (a, _qa) = session();
    let (b, _qb) = session();
    for s in [&a, &b] {
        let pending = hub.prepare(Some(&params(FILTER))).unwrap();
        hub.activate(pending, s);
    }
    assert_eq!(hub.active_filters().len(), 1);
    hub.drop_session(&a);
    assert_eq!(hub.active_filters().len(), 1);
    hub.drop_session(&b);
    assert!(hub.active_filters().is_empty());
    assert!(hub.is_empty());
}

#[test]
fn logs_go_only_to_subscribers_of_that_filter() {
    let hub = Hub::new();
    let (s, mut queue) = session();
    let pending = hub.prepare(Some(&params(FILTER))).unwrap();
    hub.activate(pending, &s);
    let (key, _) = hub.active_filters().pop().unwrap();
    hub.deliver(Kind::Logs, Some("other"), "1");
    assert!(queue.try_recv().is_err());
    hub.deliver(Kind::Logs, Some(&key), "2");
    assert!(queue.try_recv().unwrap().ends_with(r#""result":2}}"#));
}

#[test]
fn a_full_queue_closes_the_session_with_1008() {
    let (s, _queue) = session();
    for _ in 0..8 {
        assert!(s.push("x".into()));
    }
    assert!(!s.push("x".into()));
    assert_eq!(s.close_reason().map(|r| r.0), Some(1008));
}
