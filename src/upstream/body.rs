//! A node's answer as its transport read it. A WebSocket text message was checked as UTF-8 by
//! the frame reader, and the type carries that check, so the answer is not checked a second
//! time when it is read as JSON; an HTTP body (or a binary message) is checked there, once.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// An answer's bytes, and its text once known to be UTF-8.
#[derive(Debug, Clone)]
pub enum Body {
    /// Text a WebSocket frame reader already checked.
    Text(Utf8Bytes),
    /// Bytes nobody checked yet.
    Bytes(Bytes),
}

/// What an answer is read from: its bytes (shared, never copied), and its text, checked only
/// where no reader checked it yet.
pub trait AnswerText {
    /// The answer's bytes.
    fn bytes(&self) -> &Bytes;
    /// The answer as text; an error when it is not UTF-8.
    fn text(&self) -> Result<&str, std::str::Utf8Error>;
}

impl AnswerText for Bytes {
    fn bytes(&self) -> &Bytes {
        self
    }

    fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(self)
    }
}

impl AnswerText for Body {
    fn bytes(&self) -> &Bytes {
        match self {
            Body::Text(text) => text.as_ref(),
            Body::Bytes(bytes) => bytes,
        }
    }

    fn text(&self) -> Result<&str, std::str::Utf8Error> {
        match self {
            Body::Text(text) => Ok(text.as_str()),
            Body::Bytes(bytes) => std::str::from_utf8(bytes),
        }
    }
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body::Bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_text_is_read_as_is_and_unchecked_bytes_are_checked() {
        let text = Body::Text(r#"{"id":1,"result":"0x1"}"#.into());
        assert_eq!(text.text(), Ok(r#"{"id":1,"result":"0x1"}"#));
        assert_eq!(&text[..], br#"{"id":1,"result":"0x1"}"#);
        let bytes = Body::from(Bytes::from_static(b"{\"id\":1}"));
        assert_eq!(bytes.text(), Ok("{\"id\":1}"));
        let broken = Body::from(Bytes::from_static(&[b'"', 0xff, b'"']));
        assert!(broken.text().is_err());
        assert_eq!(broken.bytes(), &Bytes::from_static(&[b'"', 0xff, b'"']));
    }
}
