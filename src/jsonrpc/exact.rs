//! The exact decoder: each batch element captured raw, then parsed again as a request. It
//! defines what ethgate accepts; [`super::element`]'s single pass gives the same answer on
//! every body it can parse and is tried first, and a body it refuses is decoded here. They part
//! only where the single pass is stricter about members than a valid request may be: a member
//! name with a lone surrogate escape makes the element invalid (here) rather than the body
//! unparseable (there), so such rare bodies take this path.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::batch;
use super::element::id_type_ok;
use super::{
    Call, Decoded, Incoming, Rejected, RpcError, EMPTY_BATCH, INVALID_REQUEST, PARSE_ERROR,
};

/// A request object as serde's derive reads it.
#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default, borrow, deserialize_with = "text")]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "text")]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    params: Option<&'a RawValue>,
}

/// Only the id of an object whose other members do not fit a request (e.g. a numeric method).
#[derive(Deserialize)]
struct WireId<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

/// A string borrowed from the body unless it holds escapes.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<Text>::deserialize(d).map(|text| text.map(|Text(text)| text))
}

/// Keeps a present `null` as `Some(raw "null")`; only an absent key is `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Decodes a request body exactly (see the module doc); same contract as [`super::decode`].
pub(super) fn decode(body: &[u8], max_batch_len: usize) -> Result<Incoming<'_>, RpcError> {
    let body = std::str::from_utf8(body).map_err(|_| PARSE_ERROR)?;
    let first = body.bytes().find(|b| !b.is_ascii_whitespace());
    if first == Some(b'[') {
        let elements = batch::read_elements::<&RawValue>(body, max_batch_len, 0)?;
        if elements.is_empty() {
            return Err(EMPTY_BATCH);
        }
        return Ok(Incoming::Batch(
            elements.into_iter().map(|raw| call(raw.get())).collect(),
        ));
    }
    match serde_json::from_str::<WireRequest>(body) {
        Ok(wire) => Ok(Incoming::Single(validate(wire))),
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() => {
            Ok(Incoming::Single(Err(Rejected {
                id: readable_id(body),
                error: INVALID_REQUEST,
            })))
        }
        Err(_) => Err(PARSE_ERROR),
    }
}

/// One raw element as a call, or rejected with the id it carries.
fn call(element: &str) -> Decoded<'_> {
    // An array is never a request, though serde's derive would read one as the members in
    // order (the single pass refuses it too).
    if element.starts_with('[') {
        return Err(Rejected::without_id(INVALID_REQUEST));
    }
    match serde_json::from_str::<WireRequest>(element) {
        Ok(wire) => validate(wire),
        Err(_) => Err(Rejected {
            id: readable_id(element),
            error: INVALID_REQUEST,
        }),
    }
}

/// The id of a JSON object that is not a valid request, when it is of a type an id may be.
fn readable_id(object: &str) -> Option<&RawValue> {
    serde_json::from_str::<WireId>(object)
        .ok()
        .and_then(|wire| wire.id)
        .filter(|id| id_type_ok(id))
}

/// Judges a request object that decoded.
fn validate(wire: WireRequest<'_>) -> Decoded<'_> {
    let id = wire.id.filter(|id| id_type_ok(id));
    let invalid = Rejected {
        id,
        error: INVALID_REQUEST,
    };
    if wire.id.is_some() && id.is_none() {
        return Err(Rejected::without_id(INVALID_REQUEST));
    }
    if wire.jsonrpc.as_deref() != Some("2.0") {
        return Err(invalid);
    }
    let Some(method) = wire.method.filter(|m| !m.is_empty()) else {
        return Err(invalid);
    };
    if let Some(params) = wire.params {
        if !matches!(params.get().as_bytes().first(), Some(b'[' | b'{' | b'n')) {
            return Err(invalid);
        }
    }
    Ok(Call::new(wire.id, method, wire.params))
}
