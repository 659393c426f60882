//! Text primitives under the scanner ([`super::scan`]): where a JSON string stops, eight
//! bytes at a time, and borrowed raw values minted for spans the scanner has checked.

use serde::de::value::{BorrowedStrDeserializer, MapDeserializer};
use serde::Deserialize;
use serde_json::value::RawValue;

/// serde_json's private name for a raw value in its data model; see [`mint`].
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// The index of the first byte in `text` that ends or interrupts a JSON string: a quote, a
/// backslash or a control byte. Eight bytes at a time (serde_json's own trick), as strings
/// are most of what a request body is.
#[inline(always)]
pub(super) fn string_stop(text: &[u8]) -> Option<usize> {
    let mut offset = 0;
    while let Some(chunk) = text.get(offset..offset + 8) {
        if let Some(at) = word_stop(chunk) {
            return Some(offset + at);
        }
        offset += 8;
    }
    if offset == text.len() {
        return None;
    }
    if offset > 0 {
        // The last eight bytes, overlapping bytes already found clean: one more word
        // instead of up to seven bytes one by one.
        let last = text.len() - 8;
        return word_stop(text.get(last..)?).map(|at| last + at);
    }
    text.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
}

/// `json` as a `&RawValue` borrowed from the same text, for a span the cursor has checked.
///
/// serde_json mints borrowed raw values only from its own reader (there is no safe
/// constructor, and this crate forbids `unsafe`); it does so through its data model as a
/// one-entry map keyed by [`RAW_VALUE_TOKEN`], which any deserializer may present. Should a
/// serde_json release rename the token, this answers `None`, the callers fall back to the
/// serde path, and the `minted_raw_values_borrow_the_text` test fails.
pub(super) fn mint(json: &str) -> Option<&RawValue> {
    let entry = (
        BorrowedStrDeserializer::<serde_json::Error>::new(RAW_VALUE_TOKEN),
        BorrowedStrDeserializer::<serde_json::Error>::new(json),
    );
    <&RawValue>::deserialize(MapDeserializer::new(std::iter::once(entry))).ok()
}

/// [`string_stop`] within one eight-byte `chunk` (shorter is never passed).
#[inline(always)]
fn word_stop(chunk: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut word = [0; 8];
    word.copy_from_slice(chunk.get(..8)?);
    let x = u64::from_le_bytes(word);
    let quote = x ^ (ONES * u64::from(b'"'));
    let backslash = x ^ (ONES * u64::from(b'\\'));
    // Each term sets the high bit of a byte that is a quote, a backslash or below 0x20
    // (and, through borrows, possibly of bytes after it): the lowest set bit is exact.
    let found = (quote.wrapping_sub(ONES) & !quote
        | backslash.wrapping_sub(ONES) & !backslash
        | x.wrapping_sub(ONES * 0x20) & !x)
        & HIGH;
    // `trailing_zeros` is below 64, so the byte index fits any usize.
    (found != 0).then(|| (found.trailing_zeros() / 8) as usize)
}
