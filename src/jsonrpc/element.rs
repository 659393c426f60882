//! One request object decoded in a single pass: serde_json visits its members once, keeps `id`
//! and `params` as borrowed raw spans, reads `jsonrpc` and `method` as text (borrowed unless
//! escaped) and skips the rest, so a batch element costs one scan of its bytes (it used to cost
//! two: once captured whole as a raw element, then parsed again as a request).
//!
//! Every element that is JSON but not a valid call becomes a [`Rejected`] carrying the id it
//! held, exactly as the exact decoder ([`super::exact`]) judges it: a member of the wrong type
//! or a repeated member makes the element invalid; the id goes back only when it is present
//! once and of a type an id may be (string, number, null). What this pass cannot read (a member
//! name or method with a lone surrogate escape, a number out of range where text belongs) fails
//! the whole body here, and [`super::decode`] then hands the body to the exact decoder.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{Call, Decoded, Rejected, INVALID_REQUEST};

/// A decoded element; a newtype because `Decoded` is a foreign `Result`.
pub(super) struct Element<'a>(pub(super) Decoded<'a>);

impl<'de> Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ElementVisitor).map(Element)
    }
}

/// The members of a request object that ethgate reads.
#[derive(Clone, Copy)]
enum Key {
    Jsonrpc,
    Id,
    Method,
    Params,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            // Called with the unescaped name, so `"meth\u006fd"` is `method` as before.
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(match name {
                    "jsonrpc" => Key::Jsonrpc,
                    "id" => Key::Id,
                    "method" => Key::Method,
                    "params" => Key::Params,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The four members as written, each `None` when absent; a repeated member is remembered.
#[derive(Default)]
pub(super) struct Members<'a> {
    pub(super) jsonrpc: Option<Text<'a>>,
    pub(super) id: Option<&'a RawValue>,
    pub(super) method: Option<Text<'a>>,
    pub(super) params: Option<&'a RawValue>,
    /// A member other than `id` appeared twice.
    pub(super) repeated: bool,
    /// `id` appeared twice: the element is invalid and its id unusable.
    pub(super) repeated_id: bool,
    /// The text after the id, when the scanner read the compact layout (see `Call::tail`).
    pub(super) tail: Option<&'a [u8]>,
}

struct ElementVisitor;

/// A JSON value that is not an object: invalid, with no id to answer under.
pub(super) fn not_an_object<'a>() -> Decoded<'a> {
    Err(Rejected::without_id(INVALID_REQUEST))
}

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Decoded<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC request")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Decoded<'de>, A::Error> {
        let mut m = Members::default();
        while let Some(key) = map.next_key::<Key>()? {
            let repeated = match key {
                Key::Jsonrpc => m.jsonrpc.replace(map.next_value()?).is_some(),
                Key::Method => m.method.replace(map.next_value()?).is_some(),
                Key::Id => {
                    m.repeated_id |= m.id.replace(map.next_value()?).is_some();
                    false
                }
                Key::Params => m.params.replace(map.next_value()?).is_some(),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    false
                }
            };
            m.repeated |= repeated;
        }
        Ok(validate(m))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Decoded<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_an_object())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Decoded<'de>, E> {
        Ok(not_an_object())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Decoded<'de>, E> {
        Ok(not_an_object())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Decoded<'de>, E> {
        Ok(not_an_object())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Decoded<'de>, E> {
        Ok(not_an_object())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Decoded<'de>, E> {
        Ok(not_an_object())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Decoded<'de>, E> {
        Ok(not_an_object())
    }
}

/// Judges the members of one object (see the module doc for the rules).
#[inline(always)]
pub(super) fn validate(m: Members<'_>) -> Decoded<'_> {
    if m.repeated_id || m.id.is_some_and(|id| !id_type_ok(id)) {
        return Err(Rejected::without_id(INVALID_REQUEST));
    }
    let invalid = || {
        Err(Rejected {
            id: m.id,
            error: INVALID_REQUEST,
        })
    };
    if m.repeated {
        return invalid();
    }
    let (Some(Text::Str(jsonrpc)), Some(Text::Str(method))) = (m.jsonrpc, m.method) else {
        // Absent, `null` or not a string.
        return invalid();
    };
    if jsonrpc != "2.0" {
        return invalid();
    }
    if method.is_empty() {
        return invalid();
    }
    if let Some(params) = m.params {
        if !matches!(params.get().as_bytes().first(), Some(b'[' | b'{' | b'n')) {
            return invalid();
        }
    }
    let call = Call::new(m.id, method, m.params);
    Ok(match m.tail {
        Some(tail) => call.with_tail(tail),
        None => call,
    })
}

/// Whether `id` is of a type JSON-RPC allows for an id: string, number or null.
pub(super) fn id_type_ok(id: &RawValue) -> bool {
    matches!(
        id.get().as_bytes().first(),
        Some(b'"' | b'-' | b'0'..=b'9' | b'n')
    )
}

/// A member that must be a string, read straight from the body (borrowed unless it holds
/// escapes); `null` and other types are told apart rather than failing the element.
pub(super) enum Text<'a> {
    /// A string.
    Str(Cow<'a, str>),
    /// `null`: as good as absent.
    Null,
    /// Any other type: the element is invalid.
    Other,
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Borrowed(text)))
    }

    // Called for text with escapes, unescaped into a scratch buffer: kept as a copy.
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Owned(text.to_owned())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Text<'de>, E> {
        Ok(Text::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text::Other)
    }
}
