//! A byte cursor over JSON text for the hot paths (batch requests and batch answers), in place
//! of serde_json's general-purpose reader: member names and short strings are found by one
//! tight loop, values that are only relayed are checked and skipped without building anything.
//!
//! It is a *recogniser of the common case*, never a second authority: every method answers
//! `None` as soon as the text is anything it does not fully handle (an escape in a member name
//! or method, nesting deeper than [`MAX_DEPTH`], any syntax error), and the caller then gives
//! the whole body to the serde_json path, which decides. Where it answers, it accepts exactly
//! what serde_json accepts for a value it ignores (`ignore_value`: JSON's grammar, escapes
//! checked for form only, no depth limit), which the differential tests pin.
//!
//! This file holds the cursor and its readers of the common case (names, short strings, small
//! ids, raw spans); `skip` the skipping of a whole value by serde's grammar.

use serde::de::value::{BorrowedStrDeserializer, MapDeserializer};
use serde::Deserialize;
use serde_json::value::RawValue;

mod skip;

/// Containers open at once that [`Cursor::skip_value`] follows; deeper text is left to serde.
pub(super) const MAX_DEPTH: u32 = 128;

/// serde_json's private name for a raw value in its data model; see [`mint`].
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// A position in JSON text.
pub(super) struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub(super) fn new(text: &'a str) -> Self {
        Cursor { text, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The position, to come back to with [`Cursor::reset`].
    pub(super) fn mark(&self) -> usize {
        self.pos
    }

    /// The text from `start` to `end`, `None` unless both are character boundaries (every
    /// caller's are, at ASCII bytes). Written with `split_at_checked`, which inlines, where
    /// `str::get` with a range was a call per span.
    #[inline(always)]
    fn span(&self, start: usize, end: usize) -> Option<&'a str> {
        let (head, _) = self.text.split_at_checked(end)?;
        let (_, span) = head.split_at_checked(start)?;
        Some(span)
    }

    /// The bytes from a position from [`Cursor::mark`] to the cursor.
    pub(super) fn since(&self, mark: usize) -> Option<&'a [u8]> {
        self.bytes().get(mark..self.pos)
    }

    /// Goes back to a position from [`Cursor::mark`].
    pub(super) fn reset(&mut self, mark: usize) {
        self.pos = mark;
    }

    /// Skips JSON whitespace (the four bytes serde_json skips, nothing else).
    #[inline(always)]
    pub(super) fn ws(&mut self) {
        // Compact JSON has none: one comparison decides that.
        if self.bytes().get(self.pos).is_some_and(|&b| b <= b' ') {
            self.skip_ws();
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes().get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte, not consumed.
    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// The next byte, consumed.
    pub(super) fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    /// Consumes `byte` if it comes next.
    pub(super) fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        self.pos += usize::from(next);
        next
    }

    /// Whether only whitespace is left.
    pub(super) fn at_end(&mut self) -> bool {
        self.ws();
        self.pos == self.text.len()
    }

    /// A string without escapes, borrowed, at the cursor; `None` for anything else (an escape
    /// needs unescaping, which is serde's job).
    #[inline(always)]
    pub(super) fn plain_str(&mut self) -> Option<&'a str> {
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.pos + 1;
        let end = start + string_stop(self.bytes().get(start..)?)?;
        if self.bytes().get(end) != Some(&b'"') {
            return None;
        }
        self.pos = end + 1;
        // Both ends are at an ASCII quote, so both are character boundaries.
        self.span(start, end)
    }

    /// A non-negative integer of up to 19 digits at the cursor (every id ethgate sends, most
    /// ids clients send), with its raw span; `None`, the cursor unmoved, for any other value.
    #[inline(always)]
    pub(super) fn small_uint(&mut self) -> Option<(u64, &'a RawValue)> {
        let rest = self.bytes().get(self.pos..)?;
        // Read and summed in one pass; 19 digits cannot overflow a u64, a 20th declines.
        let mut n: u64 = 0;
        let mut len = 0;
        while let Some(&digit @ b'0'..=b'9') = rest.get(len) {
            if len == 19 {
                return None;
            }
            n = n * 10 + u64::from(digit - b'0');
            len += 1;
        }
        // A leading zero must stand alone, and a fraction or exponent makes another number.
        let valid = len > 0
            && (rest.first() != Some(&b'0') || len == 1)
            && !matches!(rest.get(len), Some(b'.' | b'e' | b'E'));
        if !valid {
            return None;
        }
        let raw = mint(self.span(self.pos, self.pos + len)?)?;
        self.pos += len;
        Some((n, raw))
    }

    /// `[]` at the cursor (the params of most reads), raw; `None`, the cursor unmoved, for
    /// anything else.
    #[inline(always)]
    pub(super) fn empty_array(&mut self) -> Option<&'a RawValue> {
        let end = self.pos + 2;
        if self.bytes().get(self.pos..end) != Some(b"[]") {
            return None;
        }
        let raw = mint(self.span(self.pos, end)?)?;
        self.pos = end;
        Some(raw)
    }

    /// The value at the cursor as a raw span of the text, checked as serde_json checks it.
    pub(super) fn raw(&mut self) -> Option<&'a RawValue> {
        let start = self.pos;
        // Most relayed values are strings without escapes (quantities, hashes): one scan
        // to the closing quote; anything else is read by the general skip.
        if !self.skip_plain_str() {
            self.skip_value()?;
        }
        mint(self.span(start, self.pos)?)
    }

    /// [`Cursor::raw`] with its common case, a plain string, inlined into the caller: for the
    /// one value each response carries.
    #[inline(always)]
    pub(super) fn raw_value(&mut self) -> Option<&'a RawValue> {
        let start = self.pos;
        if self.skip_plain_str() {
            return mint(self.span(start, self.pos)?);
        }
        self.raw()
    }

    /// Skips a string without escapes or control bytes at the cursor; `false`, the cursor
    /// unmoved, for anything else.
    #[inline(always)]
    fn skip_plain_str(&mut self) -> bool {
        if self.peek() != Some(b'"') {
            return false;
        }
        let start = self.pos + 1;
        let Some(stop) = self.bytes().get(start..).and_then(string_stop) else {
            return false;
        };
        let end = start + stop;
        if self.bytes().get(end) != Some(&b'"') {
            return false;
        }
        self.pos = end + 1;
        true
    }

    /// Reads an object, calling `member` for each member (the cursor then at the value, which
    /// `member` must consume) with the index of its name in `names` (each in quotes, as it is
    /// written without escapes), `None` for any other name. A name with escapes is left to
    /// serde.
    #[inline(always)]
    pub(super) fn object<const N: usize>(
        &mut self,
        names: [&[u8]; N],
        mut member: impl FnMut(&mut Self, Option<usize>) -> Option<()>,
    ) -> Option<()> {
        self.ws();
        if !self.eat(b'{') {
            return None;
        }
        self.ws();
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            self.ws();
            let name = self.known_name(&names);
            if name.is_none() {
                self.plain_str()?;
            }
            self.ws();
            if !self.eat(b':') {
                return None;
            }
            self.ws();
            member(self, name)?;
            self.ws();
            match self.bump()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Which of `names` (quoted) is written at the cursor, consumed. Inlined into each
    /// caller with its constant names, so each comparison is a load or two, not a `memcmp`.
    #[inline(always)]
    fn known_name(&mut self, names: &[&[u8]]) -> Option<usize> {
        let rest = self.bytes().get(self.pos..)?;
        for (i, name) in names.iter().enumerate() {
            if rest.get(..name.len()) == Some(name) {
                self.pos += name.len();
                return Some(i);
            }
        }
        None
    }

    /// Consumes `word` if it is written at the cursor (a literal value, say `"2.0"`). Its
    /// length is a constant in every caller, so the comparison is a few word loads, not a
    /// `memcmp` call.
    #[inline(always)]
    pub(super) fn eat_word<const N: usize>(&mut self, word: &[u8; N]) -> bool {
        let next = self.bytes().get(self.pos..self.pos + N) == Some(&word[..]);
        if next {
            self.pos += N;
        }
        next
    }
}

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

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
