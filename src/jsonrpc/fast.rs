//! The hand-written path for the bodies nearly all traffic consists of: request objects and
//! batches of them from clients, batch answers from upstreams. A batch of 100 small calls
//! spent half its CPU in serde_json's reader (member names read as identifiers, every string
//! scanned for escapes); [`Cursor`] does the same job in one tight pass.
//!
//! Each function here either gives exactly the answer of the serde path it sits in front of,
//! or `None`: then the caller runs that serde path, which decides (errors of every kind, names
//! or methods with escapes, repeated members of an answer). The differential tests in
//! `decode_tests` and `answer_tests` hold the two paths to that.

use std::borrow::Cow;

use super::element::{not_an_object, validate, Members, Text};
use super::scan::Cursor;
use super::{Decoded, Incoming, RpcError, UpstreamResponse, BATCH_TOO_LARGE, EMPTY_BATCH};

/// Decodes a request body as [`super::decode`] does, or `None` to leave it to the serde path.
pub(super) fn decode(body: &str, max_batch_len: usize) -> Option<Result<Incoming<'_>, RpcError>> {
    let mut cursor = Cursor::new(body);
    cursor.ws();
    if cursor.eat(b'[') {
        return batch(cursor, max_batch_len, body.len());
    }
    let element = element(&mut cursor)?;
    cursor.at_end().then_some(Ok(Incoming::Single(element)))
}

/// The elements of a batch (the cursor past its `[`), refused past `limit` as the serde path
/// refuses it: once element `limit + 1` has been read whole, whatever follows it.
fn batch(
    mut cursor: Cursor<'_>,
    limit: usize,
    len: usize,
) -> Option<Result<Incoming<'_>, RpcError>> {
    cursor.ws();
    if cursor.eat(b']') {
        return cursor.at_end().then_some(Err(EMPTY_BATCH));
    }
    // A request object is rarely under 40 bytes: room for what the body can hold, within
    // the limit, so a typical batch is decoded into one allocation.
    let mut elements = Vec::with_capacity(limit.min(len / 40 + 1));
    loop {
        let element = element(&mut cursor)?;
        if elements.len() == limit {
            return Some(Err(BATCH_TOO_LARGE));
        }
        elements.push(element);
        cursor.ws();
        match cursor.bump()? {
            b',' => {}
            b']' => break,
            _ => return None,
        }
    }
    cursor.at_end().then_some(Ok(Incoming::Batch(elements)))
}

/// One request element, judged by [`validate`] as the single pass judges it; a value that is
/// not an object is an invalid request without an id.
/// The compact layout is read inline in the caller's loop; any other, called.
#[inline(always)]
fn element<'a>(cursor: &mut Cursor<'a>) -> Option<Decoded<'a>> {
    cursor.ws();
    let start = cursor.mark();
    if let Some(decoded) = compact_request(cursor) {
        return Some(decoded);
    }
    cursor.reset(start);
    any_element(cursor)
}

/// [`element`] in any layout, the cursor at its start.
#[inline(never)]
fn any_element<'a>(cursor: &mut Cursor<'a>) -> Option<Decoded<'a>> {
    if cursor.peek() != Some(b'{') {
        cursor.skip_value()?;
        return Some(not_an_object());
    }
    let mut m = Members::default();
    cursor.object(REQUEST_NAMES, |cursor, name| {
        match name {
            Some(0) => {
                let jsonrpc = text(cursor)?;
                m.repeated |= m.jsonrpc.replace(jsonrpc).is_some();
            }
            Some(1) => {
                let id = cursor.raw()?;
                m.repeated_id |= m.id.replace(id).is_some();
            }
            Some(2) => {
                let method = text(cursor)?;
                m.repeated |= m.method.replace(method).is_some();
            }
            Some(3) => {
                let params = cursor.raw()?;
                m.repeated |= m.params.replace(params).is_some();
            }
            _ => cursor.skip_value()?,
        }
        Some(())
    })?;
    Some(validate(m))
}

/// A request in the layout geth's client (so Chainlink nodes) and web3.js write: compact,
/// `jsonrpc` "2.0", `id`, `method` without escapes, then `params` if any, read with a few word
/// comparisons. `None` at the first difference: the caller then reads the element member by
/// member. Each member comes once here, so [`validate`] judges it as it would any layout.
#[inline(always)]
fn compact_request<'a>(cursor: &mut Cursor<'a>) -> Option<Decoded<'a>> {
    if !cursor.eat_word(b"{\"jsonrpc\":\"2.0\",\"id\":") {
        return None;
    }
    let id = match cursor.small_uint() {
        Some((_, id)) => id,
        None => cursor.raw()?,
    };
    let tail = cursor.mark();
    if !cursor.eat_word(b",\"method\":") {
        return None;
    }
    let method = cursor.plain_str()?;
    let params = if cursor.eat_word(b",\"params\":") {
        Some(cursor.empty_array().map_or_else(|| cursor.raw(), Some)?)
    } else {
        None
    };
    if !cursor.eat(b'}') {
        return None;
    }
    Some(validate(Members {
        jsonrpc: Some(Text::Str(Cow::Borrowed("2.0"))),
        id: Some(id),
        method: Some(Text::Str(Cow::Borrowed(method))),
        params,
        repeated: false,
        repeated_id: false,
        // Written exactly as `encode_request` writes a method without escapes and raw params.
        tail: Some(cursor.since(tail)?),
    }))
}

/// The members of a request ethgate reads, in the order clients write them.
const REQUEST_NAMES: [&[u8]; 4] = [b"\"jsonrpc\"", b"\"id\"", b"\"method\"", b"\"params\""];

/// The members of a response ethgate reads, and `jsonrpc` (skipped, but nearly always there).
const RESPONSE_NAMES: [&[u8]; 4] = [b"\"jsonrpc\"", b"\"id\"", b"\"result\"", b"\"error\""];

/// The version every request and response carries, as written.
const VERSION: &[u8; 5] = b"\"2.0\"";

/// A member that must be a string: borrowed when it has no escapes (one that has is left to
/// serde, which unescapes it), `null`, or any other value.
fn text<'a>(cursor: &mut Cursor<'a>) -> Option<Text<'a>> {
    if cursor.eat_word(VERSION) {
        return Some(Text::Str(Cow::Borrowed("2.0")));
    }
    match cursor.peek()? {
        b'"' => cursor
            .plain_str()
            .map(|text| Text::Str(Cow::Borrowed(text))),
        b'n' => cursor.skip_value().map(|()| Text::Null),
        _ => cursor.skip_value().map(|()| Text::Other),
    }
}

/// The responses of a batch answer in call order (ethgate's ids are `base..base + n`), or
/// `None` unless it is exactly `n` well-formed responses with distinct ids in range: every
/// problem is reported by the serde path, in its words.
pub fn batch_answer(body: &str, base: u64, n: usize) -> Option<Vec<UpstreamResponse<'_>>> {
    let mut cursor = Cursor::new(body);
    cursor.ws();
    if !cursor.eat(b'[') {
        return None;
    }
    // A slot is filled once its response (which has an id, or it had no slot) is in it:
    // the vector is the answer as it stands, no second one collected from it.
    let empty = UpstreamResponse {
        id: None,
        result: None,
        error: None,
    };
    let mut slots = vec![empty; n];
    cursor.ws();
    if !cursor.eat(b']') {
        loop {
            let (answer, id) = response(&mut cursor)?;
            let id = match id {
                Some(id) => id,
                None => answer.numeric_id()?,
            };
            let slot = slots.get_mut(usize::try_from(id.checked_sub(base)?).ok()?)?;
            if slot.id.is_some() {
                return None;
            }
            *slot = answer;
            cursor.ws();
            match cursor.bump()? {
                b',' => {}
                b']' => break,
                _ => return None,
            }
        }
    }
    let complete = slots.iter().all(|slot| slot.id.is_some());
    (cursor.at_end() && complete).then_some(slots)
}

/// A single response, or `None` to leave it to serde.
pub fn single_answer(body: &str) -> Option<UpstreamResponse<'_>> {
    let mut cursor = Cursor::new(body);
    let (answer, _) = response(&mut cursor)?;
    cursor.at_end().then_some(answer)
}

/// A response in the layout geth and most servers write: compact, `jsonrpc` "2.0", `id`, then
/// `result` or `error`; `None` at the first difference (see [`compact_request`]).
#[inline(always)]
fn compact_response<'a>(cursor: &mut Cursor<'a>) -> Option<(UpstreamResponse<'a>, Option<u64>)> {
    if !cursor.eat_word(b"{\"jsonrpc\":\"2.0\",\"id\":") {
        return None;
    }
    let (number, id) = match cursor.small_uint() {
        Some((number, id)) => (Some(number), id),
        None => (None, cursor.raw()?),
    };
    let mut answer = UpstreamResponse {
        id: Some(id),
        result: None,
        error: None,
    };
    if cursor.eat_word(b",\"result\":") {
        answer.result = Some(cursor.raw_value()?);
    } else if cursor.eat_word(b",\"error\":") {
        answer.error = Some(cursor.raw()?);
    } else {
        return None;
    }
    cursor.eat(b'}').then_some((answer, number))
}

/// One response object's `id`, `result` and `error`, raw, other members skipped; with the
/// numeric id when it was read on the way.
/// The compact layout is read inline in the caller's loop; any other, called.
#[inline(always)]
fn response<'a>(cursor: &mut Cursor<'a>) -> Option<(UpstreamResponse<'a>, Option<u64>)> {
    cursor.ws();
    let start = cursor.mark();
    if let Some(answer) = compact_response(cursor) {
        return Some(answer);
    }
    cursor.reset(start);
    any_response(cursor)
}

/// [`response`] in any layout, the cursor at its start.
#[inline(never)]
fn any_response<'a>(cursor: &mut Cursor<'a>) -> Option<(UpstreamResponse<'a>, Option<u64>)> {
    let mut answer = UpstreamResponse {
        id: None,
        result: None,
        error: None,
    };
    cursor.object(RESPONSE_NAMES, |cursor, name| {
        let member = match name {
            Some(0) if cursor.eat_word(VERSION) => return Some(()),
            Some(1) => &mut answer.id,
            Some(2) => &mut answer.result,
            Some(3) => &mut answer.error,
            _ => return cursor.skip_value(),
        };
        // serde's derive refuses a repeated member; that refusal is left to it.
        member.replace(cursor.raw()?).is_none().then_some(())
    })?;
    Some((answer, None))
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod answer_tests;
