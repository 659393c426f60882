//! The messages a session's queue holds: their bodies (an answer's text, or a notification's
//! shared parts and the text framing them) and the receipts that give their queue space back
//! once written.

use std::sync::Arc;

/// What a queued message holds: an answer's JSON text, or a notification kept as its two shared
/// parts (the subscription id and the result every subscriber of it gets), so a head fanned out
/// to thousands of clients is stored once and each client's frame is built only when written.
#[derive(Debug)]
pub enum Body {
    /// A whole JSON text, as ethgate rendered it (valid UTF-8 by construction: kept as bytes,
    /// it is never checked again on its way to the socket).
    Text(Vec<u8>),
    /// `eth_subscription` for `id` carrying `result`.
    Notification {
        /// The subscription id.
        id: Arc<str>,
        /// The `result` JSON, shared by every subscriber (a thin pointer keeps a queued
        /// message at 32 bytes, the size of the queue's slots before parts were shared).
        result: Arc<String>,
    },
}

/// A notification's text up to its subscription id.
pub const NOTIFICATION_HEAD: &str =
    r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":""#;
/// A notification's text between its subscription id and its result.
pub const NOTIFICATION_MIDDLE: &str = r#"","result":"#;
/// A notification's text after its result.
pub const NOTIFICATION_TAIL: &str = "}}";

impl Body {
    /// The length of the JSON text, without building it.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Body::Text(text) => text.len(),
            Body::Notification { id, result } => notification_len(id, result),
        }
    }

    /// Whether the text is empty (never, for a notification).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The JSON text, built in one allocation of the exact size (for tests and diagnostics;
    /// the session's writer frames the parts where they are).
    pub fn into_text(self) -> String {
        match self {
            Body::Text(text) => String::from_utf8(text)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into()),
            Body::Notification { id, result } => {
                let mut text = String::with_capacity(notification_len(&id, &result));
                for part in notification_parts(&id, &result) {
                    text.push_str(part);
                }
                text
            }
        }
    }

    /// Appends the JSON text to `out`, without building it on its own first.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Body::Text(text) => out.extend_from_slice(text),
            Body::Notification { id, result } => {
                for part in notification_parts(id, result) {
                    out.extend_from_slice(part.as_bytes());
                }
            }
        }
    }
}

/// The pieces a notification's text is the concatenation of.
fn notification_parts<'a>(id: &'a str, result: &'a str) -> [&'a str; 5] {
    [
        NOTIFICATION_HEAD,
        id,
        NOTIFICATION_MIDDLE,
        result,
        NOTIFICATION_TAIL,
    ]
}

/// Inlined: [`SessionHandle::push`](super::SessionHandle::push) counts every notification fanned out by this length.
#[inline]
pub(super) fn notification_len(id: &str, result: &str) -> usize {
    NOTIFICATION_HEAD.len()
        + id.len()
        + NOTIFICATION_MIDDLE.len()
        + result.len()
        + NOTIFICATION_TAIL.len()
}

/// One queued message: a notification, or (as text) the answer to a call.
#[derive(Debug)]
pub struct Outgoing {
    pub(super) body: Body,
}

impl Outgoing {
    /// What the writer hands back to [`SessionHandle::sent`](super::SessionHandle::sent) once the text is written.
    pub fn receipt(&self) -> Receipt {
        Receipt {
            len: self.body.len(),
            notification: matches!(self.body, Body::Notification { .. }),
        }
    }

    /// The JSON text to write.
    pub fn into_text(self) -> String {
        self.body.into_text()
    }

    /// What the message holds, for a writer that frames its parts itself.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// What the message holds.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// The length of the JSON text.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the JSON text is empty.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Appends the JSON text to `out` (see [`Body::write_to`]).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        self.body.write_to(out)
    }
}

/// The queue space one written message gives back.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub(super) len: usize,
    notification: bool,
}

/// The queue space a batch of messages taken together gives back once written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Receipts {
    pub(super) messages: usize,
    pub(super) notification_bytes: usize,
    pub(super) answer_bytes: usize,
}

impl Receipts {
    /// Adds one message of the batch.
    pub fn add(&mut self, receipt: Receipt) {
        self.messages += 1;
        match receipt.notification {
            true => self.notification_bytes += receipt.len,
            false => self.answer_bytes += receipt.len,
        }
    }

    /// Messages in the batch.
    pub fn messages(&self) -> usize {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_message_stays_as_small_as_a_string() {
        // Each session's queue keeps its ring of slots once grown: a larger message type
        // would cost every idle client memory.
        assert!(std::mem::size_of::<Outgoing>() <= 32);
    }

    #[test]
    fn a_notification_is_built_from_its_shared_parts_with_its_exact_length() {
        let body = Body::Notification {
            id: "0xab".into(),
            result: Arc::new(r#"{"n":1}"#.to_string()),
        };
        let len = body.len();
        let text = body.into_text();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0xab","result":{"n":1}}}"#
        );
        assert_eq!(text.len(), len);
        assert_eq!(text.capacity(), len, "one allocation of the exact size");
    }
}
