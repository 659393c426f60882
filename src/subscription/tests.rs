use std::sync::Arc;

use serde_json::value::RawValue;

use super::session::Receiver;
use super::*;

fn params(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).unwrap()
}

fn session() -> (Arc<SessionHandle>, Receiver) {
    SessionHandle::new(QueueLimits {
        messages: 8,
        bytes: 1 << 20,
    })
}

fn subscribe(hub: &Hub, s: &Arc<SessionHandle>, json: &str) -> Result<String, RpcError> {
    let pending = hub.prepare(Some(&params(json)), s)?;
    let id = pending.id().to_string();
    hub.activate(pending);
    Ok(id)
}

const FILTER: &str = r#"["logs",{"address":"0x00000000000000000000000000000000000000aa"}]"#;

#[test]
fn ids_are_32_hex_digits_and_unique() {
    let hub = Hub::new(Limits {
        per_connection: 1000,
        total: 1000,
    });
    let (s, _q) = session();
    let ids: std::collections::HashSet<String> = (0..1000)
        .map(|_| {
            hub.prepare(Some(&params(r#"["newHeads"]"#)), &s)
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
    let hub = Hub::default();
    let (s, _q) = session();
    let unknown = hub
        .prepare(Some(&params(r#"["blocks"]"#)), &s)
        .err()
        .unwrap();
    assert_eq!(unknown.code, -32601);
    assert_eq!(
        unknown.message,
        "no \"blocks\" subscription in eth namespace"
    );
    assert_eq!(hub.prepare(None, &s).err().unwrap().code, -32602);
    let bad_filter = hub.prepare(Some(&params(r#"["logs",{"topics":7}]"#)), &s);
    assert_eq!(bad_filter.err().unwrap().code, -32602);
    let five = format!(
        r#"["logs",{{"topics":[null,null,null,null,"0x{:064x}"]}}]"#,
        0
    );
    let error = hub.prepare(Some(&params(&five)), &s).err().unwrap();
    assert_eq!(error.message, "invalid argument 1: exceed max topics");
    assert!(
        hub.active_filters().is_empty(),
        "a refused filter never reaches the feed"
    );
    assert_eq!(
        hub.total(),
        0,
        "a refused subscribe takes no place under the caps"
    );
}

#[test]
fn nothing_is_delivered_before_activation_and_after_unsubscribe() {
    let hub = Hub::default();
    let (s, mut queue) = session();
    let pending = hub.prepare(Some(&params(r#"["newHeads"]"#)), &s).unwrap();
    let id = pending.id().to_string();
    hub.deliver_block(Some("{}"), &[]);
    assert!(queue.try_recv().is_none(), "not yet active");
    hub.activate(pending);
    hub.deliver_block(Some(r#"{"n":1}"#), &[]);
    let text = queue.try_recv().unwrap().into_text();
    assert!(
        text.contains(&id) && text.contains(r#""result":{"n":1}"#),
        "{text}"
    );
    assert!(hub.unsubscribe(s.id(), &id));
    assert!(
        !hub.unsubscribe(s.id(), &id),
        "second unsubscribe finds nothing"
    );
    hub.deliver_block(Some("{}"), &[]);
    assert!(queue.try_recv().is_none());
}

#[test]
fn sessions_cannot_unsubscribe_each_other() {
    let hub = Hub::default();
    let (a, _qa) = session();
    let (b, _qb) = session();
    let id = subscribe(&hub, &a, r#"["newHeads"]"#).unwrap();
    assert!(!hub.unsubscribe(b.id(), &id));
    assert_eq!(hub.count(Kind::NewHeads), 1);
}

#[test]
fn identical_filters_share_one_entry_released_with_the_last_subscriber() {
    let hub = Hub::default();
    let (a, _qa) = session();
    let (b, _qb) = session();
    for s in [&a, &b] {
        subscribe(&hub, s, FILTER).unwrap();
    }
    assert_eq!(hub.active_filters().len(), 1);
    hub.drop_session(&a);
    assert_eq!(hub.active_filters().len(), 1);
    hub.drop_session(&b);
    assert!(hub.active_filters().is_empty());
    assert!(hub.is_empty());
    assert_eq!(hub.total(), 0);
}

#[test]
fn logs_go_only_to_subscribers_of_that_filter() {
    let hub = Hub::default();
    let (s, mut queue) = session();
    subscribe(&hub, &s, FILTER).unwrap();
    let (key, _) = hub.active_filters().pop().unwrap();
    hub.deliver_block(None, &[("other".into(), vec!["1".into()])]);
    assert!(queue.try_recv().is_none());
    hub.deliver_block(None, &[(key, vec!["2".into(), "3".into()])]);
    assert!(queue
        .try_recv()
        .unwrap()
        .into_text()
        .ends_with(r#""result":2}}"#));
    assert!(queue
        .try_recv()
        .unwrap()
        .into_text()
        .ends_with(r#""result":3}}"#));
}

#[test]
fn the_per_connection_cap_answers_limit_exceeded_and_keeps_the_rest() {
    let hub = Hub::new(Limits {
        per_connection: 2,
        total: 100,
    });
    let (s, mut queue) = session();
    let (other, _q) = session();
    let first = subscribe(&hub, &s, r#"["newHeads"]"#).unwrap();
    subscribe(&hub, &s, FILTER).unwrap();
    let error = subscribe(&hub, &s, r#"["newHeads"]"#).unwrap_err();
    assert_eq!(
        (error.code, error.message.as_ref()),
        (-32005, "limit exceeded")
    );
    assert!(error
        .data
        .unwrap()
        .contains("max_subscriptions_per_connection"));
    assert!(
        subscribe(&hub, &other, r#"["newHeads"]"#).is_ok(),
        "other connections unaffected"
    );
    hub.deliver_block(Some("{}"), &[]);
    assert!(
        queue.try_recv().unwrap().into_text().contains(&first),
        "existing ones still deliver"
    );
    assert!(hub.unsubscribe(s.id(), &first));
    assert!(
        subscribe(&hub, &s, r#"["newHeads"]"#).is_ok(),
        "the place came back"
    );
}

#[test]
fn pending_subscriptions_count_and_give_their_place_back_when_dropped() {
    let hub = Hub::new(Limits {
        per_connection: 1,
        total: 100,
    });
    let (s, _q) = session();
    let pending = hub.prepare(Some(&params(r#"["newHeads"]"#)), &s).unwrap();
    assert_eq!(
        hub.prepare(Some(&params(r#"["syncing"]"#)), &s)
            .err()
            .unwrap()
            .code,
        -32005
    );
    drop(pending);
    assert!(hub.prepare(Some(&params(r#"["syncing"]"#)), &s).is_ok());
}

#[test]
fn the_process_wide_cap_holds_across_connections() {
    let hub = Hub::new(Limits {
        per_connection: 10,
        total: 3,
    });
    let sessions: Vec<_> = (0..4).map(|_| session()).collect();
    for (s, _) in &sessions[..3] {
        subscribe(&hub, s, r#"["newHeads"]"#).unwrap();
    }
    let error = subscribe(&hub, &sessions[3].0, r#"["newHeads"]"#).unwrap_err();
    assert_eq!(error.code, -32005);
    assert!(error.data.unwrap().contains("max_subscriptions is 3"));
    hub.drop_session(&sessions[0].0);
    assert!(subscribe(&hub, &sessions[3].0, r#"["newHeads"]"#).is_ok());
}

#[test]
fn a_full_queue_closes_the_session_with_1008() {
    let (s, _queue) = session();
    for _ in 0..8 {
        assert!(s.push(&"0x1".into(), &Arc::new("x".to_string())));
    }
    assert!(!s.push(&"0x1".into(), &Arc::new("x".to_string())));
    assert_eq!(s.close_reason().map(|r| r.0), Some(1008));
}

#[test]
fn closing_a_filters_subscribers_spares_everyone_else() {
    let hub = Hub::default();
    let (logs_client, _a) = session();
    let (heads_client, _b) = session();
    subscribe(&hub, &logs_client, FILTER).unwrap();
    subscribe(&hub, &heads_client, r#"["newHeads"]"#).unwrap();
    let keys: Vec<Arc<str>> = hub.active_filters().into_iter().map(|(k, _)| k).collect();
    hub.close_filter_subscribers(&keys, 1011, "logs unavailable");
    assert_eq!(logs_client.close_reason().map(|r| r.0), Some(1011));
    assert!(heads_client.close_reason().is_none());
}

#[test]
fn counts_per_kind_follow_activation_unsubscribe_and_session_end() {
    let hub = Hub::default();
    let (a, _qa) = session();
    let (b, _qb) = session();
    let heads = subscribe(&hub, &a, r#"["newHeads"]"#).unwrap();
    subscribe(&hub, &a, r#"["newHeads"]"#).unwrap();
    subscribe(&hub, &a, r#"["newPendingTransactions"]"#).unwrap();
    subscribe(&hub, &b, FILTER).unwrap();
    // Prepared but never activated: not counted.
    let pending = hub.prepare(Some(&params(r#"["syncing"]"#)), &b).unwrap();
    let counts = |hub: &Hub| Kind::ALL.map(|kind| hub.count(kind));
    assert_eq!(counts(&hub), [2, 1, 1, 0]);
    drop(pending);
    assert!(hub.unsubscribe(a.id(), &heads));
    assert!(
        !hub.unsubscribe(a.id(), &heads),
        "gone already: counted once"
    );
    assert_eq!(counts(&hub), [1, 1, 1, 0]);
    hub.drop_session(&a);
    assert_eq!(counts(&hub), [0, 1, 0, 0]);
    hub.drop_session(&b);
    assert_eq!(counts(&hub), [0, 0, 0, 0]);
    assert_eq!(hub.total(), 0);
}
