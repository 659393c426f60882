//! The session's own control frames: the pong to a client's ping, and the close frame that
//! ends a session. Written whole between data frames, never inside one: the session writes
//! one only while no batch is in progress, and takes no batch while one is unwritten.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

const PONG: u8 = 0x8A;
const CLOSE: u8 = 0x88;

/// Longest control payload (RFC 6455 §5.5).
const MAX_PAYLOAD: usize = 125;

/// A control frame to write, and how much of it is written.
#[derive(Default)]
pub(super) struct Control {
    /// The whole frame (unmasked, as a server's); empty when there is none. Pings are rare:
    /// an idle session holds no allocation for this.
    frame: Vec<u8>,
    written: usize,
}

impl Control {
    /// A pong carrying `payload` (a ping's, at most 125 bytes), replacing one not started yet:
    /// a pong may answer several pings (RFC 6455 §5.5.3).
    pub(super) fn pong(&mut self, payload: &[u8]) {
        self.set(PONG, &[payload]);
    }

    /// A close frame with `code` and `reason`, or an empty one.
    pub(super) fn close(&mut self, code: Option<u16>, reason: &str) {
        match code {
            Some(code) => self.set(CLOSE, &[&code.to_be_bytes(), reason.as_bytes()]),
            None => self.set(CLOSE, &[]),
        }
    }

    /// Whether a frame waits to be written (or finished).
    pub(super) fn is_pending(&self) -> bool {
        !self.frame.is_empty()
    }

    fn set(&mut self, opcode: u8, parts: &[&[u8]]) {
        debug_assert_eq!(self.written, 0, "a frame cut short is finished first");
        let len = parts.iter().map(|part| part.len()).sum::<usize>();
        // Only ever a ping's payload or one of ethgate's own short reasons.
        let len = len.min(MAX_PAYLOAD);
        self.frame.clear();
        self.frame.extend_from_slice(&[opcode, len as u8]);
        for part in parts {
            let room = 2 + len - self.frame.len();
            self.frame.extend_from_slice(&part[..part.len().min(room)]);
        }
    }

    /// Writes the rest of the frame to `io`, then flushes it (a TLS stream holds records back
    /// until flushed); frees it once flushed.
    pub(super) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.frame.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.frame[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        ready!(Pin::new(&mut *io).poll_flush(cx))?;
        self.frame = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn written(control: &mut Control) -> Vec<u8> {
        let (mut a, mut b) = tokio::io::duplex(1024);
        poll_fn(|cx| control.poll_write(&mut a, cx)).await.unwrap();
        drop(a);
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut out)
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn a_pong_carries_the_pings_payload_and_the_latest_replaces_one_not_started() {
        let mut control = Control::default();
        control.pong(b"first");
        control.pong(b"second");
        assert_eq!(written(&mut control).await, b"\x8a\x06second");
        assert!(!control.is_pending());
        assert_eq!(control.frame.capacity(), 0, "nothing held once written");
        control.pong(&[7; 125]);
        let frame = written(&mut control).await;
        assert_eq!(&frame[..2], &[0x8a, 125]);
        assert_eq!(&frame[2..], &[7; 125]);
    }

    #[tokio::test]
    async fn a_close_frame_carries_its_code_and_reason_or_nothing() {
        let mut control = Control::default();
        control.close(Some(1001), "server shutting down");
        let mut expected = vec![0x88, 22, 0x03, 0xe9];
        expected.extend_from_slice(b"server shutting down");
        assert_eq!(written(&mut control).await, expected);
        control.close(None, "");
        assert_eq!(written(&mut control).await, [0x88, 0]);
    }
}
