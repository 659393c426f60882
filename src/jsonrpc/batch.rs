//! Decoding a batch body element by element in one pass while counting them, so a batch longer
//! than the limit is refused after `limit + 1` elements instead of after decoding all of them.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::element::Element;
use super::{Decoded, RpcError, BATCH_TOO_LARGE, PARSE_ERROR};

/// The decoded elements of a JSON array body, at most `limit` of them.
pub(super) fn elements(body: &str, limit: usize) -> Result<Vec<Decoded<'_>>, RpcError> {
    // A request object is rarely under 40 bytes (`{"jsonrpc":"2.0","id":1,"method":""}`
    // alone is 37): room for the elements the body can hold, within the limit, so a typical
    // batch is decoded into one allocation.
    let expected = limit.min(body.len() / 40 + 1);
    let elements = read_elements::<Element<'_>>(body, limit, expected)?;
    // `Element` wraps `Decoded`: this reuses the vector in place.
    Ok(elements
        .into_iter()
        .map(|Element(element)| element)
        .collect())
}

/// The elements of a JSON array body, each read as `T`, at most `limit` of them, with room
/// for `expected` made at the start.
pub(super) fn read_elements<'de, T: Deserialize<'de>>(
    body: &'de str,
    limit: usize,
    expected: usize,
) -> Result<Vec<T>, RpcError> {
    let too_long = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let seed = Elements {
        limit,
        expected,
        too_long: &too_long,
        element: PhantomData,
    };
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|elements| deserializer.end().map(|()| elements));
    match parsed {
        Ok(elements) => Ok(elements),
        Err(_) if too_long.get() => Err(BATCH_TOO_LARGE),
        Err(_) => Err(PARSE_ERROR),
    }
}

/// Visits the array, stopping with an error at element `limit + 1`; `too_long` tells that
/// stop apart from a syntax error.
struct Elements<'f, T> {
    limit: usize,
    /// Elements to make room for at the start.
    expected: usize,
    too_long: &'f Cell<bool>,
    element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Elements<'_, T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Elements<'_, T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC batch")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The size hint of a JSON array is unknown: start from the guess, grow past it.
        let mut elements = Vec::with_capacity(self.expected);
        while let Some(element) = seq.next_element::<T>()? {
            if elements.len() == self.limit {
                self.too_long.set(true);
                return Err(serde::de::Error::custom("batch too large"));
            }
            elements.push(element);
        }
        Ok(elements)
    }
}
