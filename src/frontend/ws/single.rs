//! A message alone in its batch, nearly every batch of a fan-out and of a client that waits
//! for each answer: written with no buffer at all. Its frame header (and a notification's text
//! before its result) is rebuilt on the stack for each write attempt, and goes out in one
//! vectored write with the message's own text (a notification's shared result and tail, or
//! the answer's bytes) where it is.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

use super::batch::{header_bytes, MAX_HEADER};
use crate::subscription::session::{
    Body, NOTIFICATION_HEAD, NOTIFICATION_MIDDLE, NOTIFICATION_TAIL,
};

/// Longest frame start (header and the text before the result) built on the stack; a
/// subscription id is 34 characters, so every notification of ethgate's fits.
const PREFIX_MAX: usize = 128;

/// One message, framed as it is written.
pub struct Single {
    body: Body,
    /// Bytes of the frame written.
    written: usize,
}

impl Single {
    /// Whether `body` can be written this way (a notification's frame start must fit
    /// [`PREFIX_MAX`]).
    pub fn fits(body: &Body) -> bool {
        match body {
            Body::Notification { id, .. } => {
                MAX_HEADER + NOTIFICATION_HEAD.len() + id.len() + NOTIFICATION_MIDDLE.len()
                    <= PREFIX_MAX
            }
            Body::Text(_) => true,
        }
    }

    /// `body`, nothing of it written yet.
    pub fn new(body: Body) -> Single {
        Single { body, written: 0 }
    }

    /// Writes the rest of the frame to `io`.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let (header, header_len) = header_bytes(self.body.len());
        let mut prefix = [0; PREFIX_MAX];
        let mut end = 0;
        let mut put = |part: &[u8]| {
            prefix[end..end + part.len()].copy_from_slice(part);
            end += part.len();
        };
        put(&header[..header_len]);
        let (text, tail) = match &self.body {
            Body::Notification { id, result } => {
                put(NOTIFICATION_HEAD.as_bytes());
                put(id.as_bytes());
                put(NOTIFICATION_MIDDLE.as_bytes());
                (result.as_bytes(), NOTIFICATION_TAIL.as_bytes())
            }
            Body::Text(text) => (&text[..], &[][..]),
        };
        let pieces = [&prefix[..end], text, tail];
        loop {
            let mut slices = [IoSlice::new(&[]); 3];
            let (mut count, mut skip) = (0, self.written);
            for piece in pieces {
                if skip >= piece.len() {
                    skip -= piece.len();
                    continue;
                }
                slices[count] = IoSlice::new(&piece[skip..]);
                (count, skip) = (count + 1, 0);
            }
            if count == 0 {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
    }
}
