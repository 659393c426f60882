//! `server.listen` as written: one address or a list of them.

use serde::Deserialize;

/// `server.listen`: one address, or a list (a node's 8545 and 8546).
pub(in crate::config) enum RawListen {
    One(String),
    Many(Vec<String>),
}

// By hand rather than `#[serde(untagged)]`, whose error ("did not match any variant") would not
// say what the key takes.
impl<'de> Deserialize<'de> for RawListen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawListen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"an address "IP:PORT" or a list of them"#)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawListen, E> {
                Ok(RawListen::One(text.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawListen, A::Error> {
                let mut texts = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    texts.push(text);
                }
                Ok(RawListen::Many(texts))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
