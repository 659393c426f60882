//! The poisonous subscriber: a client of its own that sends a subscribe geth would refuse, or
//! far too many subscriptions, and must get an error for it (and nothing else may change for
//! anybody: the soak's other checks see to that).

use std::time::Duration;

use serde_json::{json, Value};

use super::schedule::Poison;
use crate::support::ws_client::{Frame, WsClient};

/// `server.max_subscriptions_per_connection`'s default (interface.md).
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 1000;
/// How far past the cap the hostile client goes.
const OVER_CAP: usize = 50;
const ANSWER_WAIT: Duration = Duration::from_secs(20);

/// What a poisonous subscribe produced.
pub struct Outcome {
    /// What the client got, in a line.
    pub note: String,
    /// Set when ethgate did not answer as geth (or interface.md) says.
    pub violation: Option<String>,
    /// The hostile socket, kept open while the others are watched; closed by the caller.
    pub socket: WsClient,
}

/// Connects a fresh client to `url` and sends the poison.
pub async fn send(kind: Poison, url: &str) -> Outcome {
    let mut socket = WsClient::connect(url).await;
    let (note, violation) = match kind {
        Poison::FiveTopics => five_topics(&mut socket).await,
        Poison::BadAddress => bad_address(&mut socket).await,
        Poison::ManySubscriptions => many(&mut socket).await,
    };
    Outcome {
        note,
        violation,
        socket,
    }
}

/// The answers to `ids`, skipping notifications; `None` for an id with no answer in time.
async fn answers(socket: &mut WsClient, ids: &[u64]) -> Vec<Option<Value>> {
    let mut got: Vec<Option<Value>> = vec![None; ids.len()];
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match socket.next_within(left).await {
            Some(Frame::Json(v)) => {
                if let Some(k) = ids.iter().position(|id| v["id"] == json!(id)) {
                    got[k] = Some(v);
                }
            }
            Some(Frame::Closed(_)) | None => break,
        }
    }
    got
}

async fn one(socket: &mut WsClient, params: Value) -> Option<Value> {
    socket.call(json!(1), "eth_subscribe", params).await;
    answers(socket, &[1]).await.pop().flatten()
}

async fn five_topics(socket: &mut WsClient) -> (String, Option<String>) {
    let zero = format!("0x{}", "0".repeat(64));
    let filter = json!({"topics": [null, null, null, null, zero]});
    let answer = one(socket, json!(["logs", filter])).await;
    let note = format!("5 topic positions -> {answer:?}");
    // geth refuses it while decoding the filter argument (FilterCriteria.UnmarshalJSON), and
    // its RPC layer reports argument errors as -32602 "invalid argument 1: exceed max topics".
    let ok = answer.as_ref().is_some_and(|a| {
        a["error"]["code"] == json!(-32602)
            && a["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("exceed max topics"))
    });
    let violation = (!ok).then(|| {
        format!("a logs filter with 5 topic positions must get geth's -32602 \"invalid argument 1: exceed max topics\"; got {answer:?}")
    });
    (note, violation)
}

async fn bad_address(socket: &mut WsClient) -> (String, Option<String>) {
    let answer = one(socket, json!(["logs", {"address": "0x1234"}])).await;
    let note = format!("2-byte address -> {answer:?}");
    let ok = answer
        .as_ref()
        .is_some_and(|a| a["error"].is_object() && a.get("result").is_none());
    let violation = (!ok)
        .then(|| format!("a logs filter with a 2-byte address must be refused; got {answer:?}"));
    (note, violation)
}

/// Subscribes `syncing` past the cap, in chunks, then checks the socket still answers calls.
async fn many(socket: &mut WsClient) -> (String, Option<String>) {
    let total = MAX_SUBSCRIPTIONS_PER_CONNECTION + OVER_CAP;
    let (mut accepted, mut refused, mut other) = (0, 0, Vec::new());
    for chunk in (0..total as u64).collect::<Vec<_>>().chunks(100) {
        for id in chunk {
            socket
                .call(json!(id), "eth_subscribe", json!(["syncing"]))
                .await;
        }
        for a in answers(socket, chunk).await {
            match a {
                Some(a) if a["result"].is_string() => accepted += 1,
                Some(a)
                    if a["error"]["code"] == json!(-32005)
                        && a["error"]["message"] == json!("limit exceeded") =>
                {
                    refused += 1
                }
                a => other.push(a),
            }
        }
        if !other.is_empty() {
            break;
        }
    }
    socket.call(json!("alive"), "eth_chainId", json!([])).await;
    let alive = {
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let mut found = None;
        while found.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match socket.next_within(left).await {
                Some(Frame::Json(v)) if v["id"] == json!("alive") => found = Some(v),
                Some(Frame::Json(_)) => {}
                _ => break,
            }
        }
        found.is_some_and(|v| v["result"].is_string())
    };
    let note = format!(
        "{total} syncing subscribes -> {accepted} accepted, {refused} refused with -32005, \
         {} other; socket still answers: {alive}",
        other.len()
    );
    let ok = accepted == MAX_SUBSCRIPTIONS_PER_CONNECTION
        && refused == OVER_CAP
        && other.is_empty()
        && alive;
    let violation = (!ok).then(|| {
        format!(
            "over max_subscriptions_per_connection ({MAX_SUBSCRIPTIONS_PER_CONNECTION}) a subscribe \
             must get -32005 \"limit exceeded\" and the connection must stay: {note}; \
             first other answers: {:?}",
            other.iter().take(3).collect::<Vec<_>>()
        )
    });
    (note, violation)
}
