//! Ids on a multiplexed connection: the first id of an answer (to route it), and for bodies
//! ethgate did not number itself, rewriting ids on the way out and restoring them on the
//! answer. Everything but `id` passes through as raw text.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::super::SendError;

/// One call or answer with its members as raw text: only `id` is touched, so params and
/// results pass through byte for byte.
type Members = HashMap<String, Box<RawValue>>;

/// A caller's ids, in request order.
pub(super) type Original = Vec<Option<Box<RawValue>>>;

/// A request with its ids rewritten to `base..base + len`.
pub(super) struct Rewritten {
    pub(super) text: String,
    pub(super) base: u64,
    pub(super) len: u64,
}

/// Gives every call of `body` an id unique on the connection, drawn from `next_id`.
pub(super) fn rewrite(
    body: &[u8],
    next_id: &AtomicU64,
) -> Result<(Rewritten, Original), SendError> {
    let invalid = |e: serde_json::Error| SendError::NotSent(format!("invalid request: {e}"));
    let batch = is_batch(body);
    let mut calls: Vec<Members> = if batch {
        serde_json::from_slice(body).map_err(invalid)?
    } else {
        vec![serde_json::from_slice(body).map_err(invalid)?]
    };
    if calls.is_empty() {
        return Err(SendError::NotSent("invalid request: empty batch".into()));
    }
    let len = calls.len() as u64;
    let base = next_id.fetch_add(len, Ordering::Relaxed);
    let mut original = Vec::with_capacity(calls.len());
    for (offset, call) in calls.iter_mut().enumerate() {
        let id = RawValue::from_string((base + offset as u64).to_string()).map_err(invalid)?;
        original.push(call.insert("id".to_string(), id));
    }
    let text = if batch {
        serde_json::to_string(&calls)
    } else {
        serde_json::to_string(&calls[0])
    };
    let rewritten = Rewritten {
        text: text.map_err(invalid)?,
        base,
        len,
    };
    Ok((rewritten, original))
}

/// The answer to a rewritten request with the caller's ids put back.
pub(super) fn restore(answer: &[u8], base: u64, original: &Original) -> Result<Bytes, SendError> {
    let broken = |e: serde_json::Error| SendError::NoAnswer(format!("unreadable answer: {e}"));
    let batch = is_batch(answer);
    let mut answers: Vec<Members> = if batch {
        serde_json::from_slice(answer).map_err(broken)?
    } else {
        vec![serde_json::from_slice(answer).map_err(broken)?]
    };
    for answer in &mut answers {
        let restored = numeric(answer.get("id").map(|id| &**id))
            .and_then(|id| id.checked_sub(base))
            .and_then(|offset| original.get(usize::try_from(offset).ok()?))
            .and_then(|id| id.clone());
        if let Some(id) = restored {
            answer.insert("id".to_string(), id);
        }
    }
    let body = if batch {
        serde_json::to_vec(&answers)
    } else {
        serde_json::to_vec(&answers[0])
    };
    body.map(Bytes::from).map_err(broken)
}

/// An answer's `id` alone; every other member is skipped unread.
#[derive(Deserialize)]
struct IdOf<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// How geth, erigon and anvil open a single answer.
const USUAL_OPENING: &[u8] = br#"{"jsonrpc":"2.0","id":"#;

/// The first numeric id of an answer (object or batch array), which places it among the
/// calls waiting on the connection; `None` for notifications and anything unreadable.
///
/// Only routing depends on it: the answer is read in full, and refused if broken, by the
/// call it reaches.
pub(super) fn first_numeric_id(answer: &[u8]) -> Option<u64> {
    if let Some(id) = usual_id(answer) {
        return Some(id);
    }
    if is_batch(answer) {
        let answers: Vec<IdOf> = serde_json::from_slice(answer).ok()?;
        answers.iter().find_map(|answer| numeric(answer.id))
    } else {
        numeric(serde_json::from_slice::<IdOf>(answer).ok()?.id)
    }
}

/// The id of an answer in the usual layout, read without parsing the rest: most answers on a
/// connection that carries every call.
fn usual_id(answer: &[u8]) -> Option<u64> {
    id_then_comma(answer.strip_prefix(USUAL_OPENING)?)
}

/// The id named by the opening bytes of an answer too large to read whole: a single answer or
/// a batch's first, in the usual layout or with `id` first. `None` for any other layout.
pub(super) fn opening_id(opening: &[u8]) -> Option<u64> {
    let mut rest = trim_start(opening);
    if let Some(inner) = rest.strip_prefix(b"[") {
        rest = trim_start(inner);
    }
    usual_id(rest).or_else(|| id_then_comma(rest.strip_prefix(br#"{"id":"#)?))
}

fn trim_start(text: &[u8]) -> &[u8] {
    let start = text.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &text[start..]
}

/// The number `rest` opens with when a `,` follows it.
fn id_then_comma(rest: &[u8]) -> Option<u64> {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // Ours have no leading zero (JSON allows none) and fit in a u64: 19 digits always do.
    let plausible = (1..=19).contains(&digits) && (rest[0] != b'0' || digits == 1);
    if !plausible || rest.get(digits) != Some(&b',') {
        return None;
    }
    // Read in place: this runs on every answer the connection carries.
    Some(
        rest[..digits]
            .iter()
            .fold(0, |id, digit| id * 10 + u64::from(digit - b'0')),
    )
}

fn numeric(id: Option<&RawValue>) -> Option<u64> {
    id?.get().parse().ok()
}

fn is_batch(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}
