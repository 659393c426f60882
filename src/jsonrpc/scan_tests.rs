//! [`Cursor::skip_value`] and [`Cursor::raw`] against serde_json's own reading of a raw value:
//! the same values accepted, with the same span, and the same refused.

use serde_json::value::RawValue;

use super::*;

/// Asserts that the cursor reads `text` as one value exactly when serde_json does.
fn agree(text: &str) {
    let serde = serde_json::from_str::<&RawValue>(text)
        .ok()
        .map(RawValue::get);
    let mut cursor = Cursor::new(text);
    cursor.ws();
    let scanned = cursor.raw().filter(|_| cursor.at_end()).map(RawValue::get);
    assert_eq!(scanned, serde, "on {text:?}");
}

const VALUES: &[&str] = &[
    "0",
    "-0",
    "7",
    "-12.5e+3",
    "1E9",
    "0.0e-0",
    "123456789012345678901234567890",
    "1e400",
    "01",
    "-",
    "1.",
    ".5",
    "1e",
    "1e+",
    "+1",
    "0x10",
    "1 2",
    "null",
    "nul",
    "nulls",
    "true",
    "false",
    "True",
    r#""""#,
    r#""a\"b\\c\/d\b\f\n\r\t""#,
    r#""\u00e9\uD83D\ude00""#,
    r#""\ud800 lone surrogates pass as serde ignores them \udfff""#,
    r#""\u12""#,
    r#""\u12g4""#,
    r#""\x""#,
    "\"tab\there\"",
    "\"nul\u{0}\"",
    "\"é ünïcødé 😀\"",
    r#""unterminated"#,
    "[]",
    "[ ]",
    "{}",
    "{ }",
    "[1,2,[3,[4,{}]],{\"a\":[null]}]",
    r#"{"a":1,"b":{"c":[true,false,null,"]}"]},"a":2}"#,
    r#"{"a\u0062":1,"\"":2}"#,
    "[1,]",
    "[,1]",
    "[1 2]",
    "{\"a\" 1}",
    "{\"a\":}",
    "{\"a\":1,}",
    "{1:2}",
    "{\"a\":1]",
    "[1}",
    "[[[]]",
    "[]]",
    " \t\r\n[ \t\r\n1 \t\r\n, \t\r\n{ \"k\" \n: \n\"v\" } ] \n",
    "\u{c}[]",
    "[]\u{c}",
    "",
];

#[test]
fn values_are_read_as_serde_json_reads_them() {
    for value in VALUES {
        agree(value);
    }
}

#[test]
fn values_agree_on_every_truncation_and_single_edit() {
    let full = r#"{"a":[1,-2.5e3,"x\"\u00e9",{"b":null,"c":[true,false]}],"d":{}}"#;
    for end in 0..=full.len() {
        if let Some(prefix) = full.get(..end) {
            agree(prefix);
        }
    }
    let alphabet = b"{}[],:\"\\ u0123456789.eE+-abcdefnrtlsx\t\n\x01";
    for at in 0..full.len() {
        for &byte in alphabet {
            let mut edited = full.as_bytes().to_vec();
            edited[at] = byte;
            if let Ok(edited) = String::from_utf8(edited) {
                agree(&edited);
            }
        }
    }
}

/// Nesting up to the cursor's limit is read; deeper text is left to serde (which reads it).
#[test]
fn nesting_past_the_limit_is_left_to_serde() {
    let depth = MAX_DEPTH as usize;
    let within = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    agree(&within);
    let deeper = format!("[{within}]");
    assert!(Cursor::new(&deeper).raw().is_none());
    assert!(serde_json::from_str::<&RawValue>(&deeper).is_ok());
}

/// The fast paths rest on minting: a mint that stopped working would silently send every
/// body down the slower serde path.
#[test]
fn minted_raw_values_borrow_the_text() {
    let text = String::from(r#"{"a":[1,2]}"#);
    let raw = mint(&text).expect("serde_json accepts a minted raw value");
    assert_eq!(raw.get(), text);
    assert!(std::ptr::eq(raw.get(), text.as_str()));
}

#[test]
fn plain_strings_borrow_and_strings_with_escapes_are_declined() {
    let mut cursor = Cursor::new(r#""eth_call" rest"#);
    assert_eq!(cursor.plain_str(), Some("eth_call"));
    assert_eq!(cursor.peek(), Some(b' '));
    for declined in [r#""a\nb""#, "\"a\u{1}b\"", r#""open"#, "name"] {
        assert_eq!(Cursor::new(declined).plain_str(), None, "{declined:?}");
    }
}

/// The word-at-a-time search against the plain one, on every placement of the bytes that
/// matter (and their neighbours: 0x1f/0x20, 0x7f/0x80, 0xff) and on random text.
#[test]
fn string_stop_finds_the_first_quote_backslash_or_control_byte() {
    let plain = |text: &[u8]| {
        text.iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    };
    let bytes = [
        b'"', b'\\', 0, 0x1f, 0x20, 0x21, b'!', 0x7f, 0x80, 0xff, b'a',
    ];
    for len in 0..20 {
        for at in 0..len {
            for &first in &bytes {
                for &second in &bytes {
                    let mut text = vec![b'x'; len];
                    text[at] = first;
                    if at + 1 < len {
                        text[at + 1] = second;
                    }
                    assert_eq!(string_stop(&text), plain(&text), "on {text:?}");
                }
            }
        }
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..20_000 {
        let text: Vec<u8> = (0..round % 30)
            .map(|_| {
                // xorshift64; mostly printable bytes so that stops come late.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let byte = (state >> 24) as u8;
                if state % 9 == 0 {
                    byte
                } else {
                    byte | 0x40
                }
            })
            .collect();
        assert_eq!(string_stop(&text), plain(&text), "on {text:?}");
    }
}

/// The shortcuts for small integers and `[]` read what [`Cursor::raw`] reads, or leave the
/// cursor where it was.
#[test]
fn shortcuts_read_what_raw_reads_or_nothing() {
    for text in [
        "0",
        "7",
        "7,",
        "42}",
        "01",
        "0.5",
        "12.5",
        "1e3",
        "1E3",
        "-1",
        "1234567890123456789",
        "12345678901234567890",
        "18446744073709551615",
        "99999999999999999999",
        "",
        "x",
        "[]",
        "[],",
        "[ ]",
        "[1]",
        "[",
        "\"1\"",
    ] {
        let raw = Cursor::new(text).raw().map(RawValue::get);
        let mut cursor = Cursor::new(text);
        match cursor.small_uint() {
            Some((n, uint)) => {
                assert_eq!(Some(uint.get()), raw, "{text:?}");
                assert_eq!(Some(n), uint.get().parse().ok(), "{text:?}");
            }
            None => assert_eq!(cursor.mark(), 0, "{text:?}"),
        }
        let mut cursor = Cursor::new(text);
        match cursor.empty_array() {
            Some(empty) => assert_eq!((Some(empty.get()), empty.get()), (raw, "[]")),
            None => assert_eq!(cursor.mark(), 0, "{text:?}"),
        }
    }
    assert!(Cursor::new("7").small_uint().is_some());
    assert!(Cursor::new("[]").empty_array().is_some());
}
