//! The session's writer: queued messages framed by hand and written straight to the socket,
//! several in one write when more than one is queued.
//!
//! Through tungstenite each message was turned into a `String`, then a frame, then copied into
//! tungstenite's write buffer, which then kept the size of the largest message ever sent for
//! the life of the client. A server frame is unmasked (RFC 6455 §5.1): a header, then the
//! payload. So the writer appends header and JSON of every message it takes straight into one
//! buffer, from the notification's shared parts, and frees the buffer once it is written.
//!
//! tungstenite still reads, and while reading it writes control frames of its own (a pong, the
//! reply to a close). Those are never cut into one of these frames: the session polls the
//! reader only between batches, and flushes tungstenite's own buffer before a batch's first
//! byte whenever the reader ran since the last batch (see `write_batch` in the parent).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use crate::subscription::session::{Outgoing, Receipts, SessionHandle};

/// Bytes one write takes from the queue at most, so a long backlog goes out in pieces of a
/// bounded size (the message that crosses the bound still joins; a larger one goes alone).
const BATCH_BYTES: usize = 64 * 1024;

/// First header byte of a text message in one frame: FIN, opcode 1.
const FIN_TEXT: u8 = 0x81;

/// Longest frame header: 2 bytes and a 64-bit length, no mask.
const MAX_HEADER: usize = 10;

/// Largest framing buffer a thread keeps for the next batch; one grown past this by a large
/// answer is freed instead.
const SPARE_MAX: usize = 2 * BATCH_BYTES;

thread_local! {
    /// Each thread's framing buffer for the next batch. A batch borrows it and hands it back
    /// once written, which nearly every batch is at once: fanning a head out to thousands of
    /// clients then allocates no buffer at all, and an idle client holds none.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Appends the header of an unmasked, final text frame carrying `len` payload bytes.
pub fn text_header(len: usize, out: &mut Vec<u8>) {
    out.push(FIN_TEXT);
    if len <= 125 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Messages taken from the queue together, framed into one buffer, and how far it is written.
#[derive(Default)]
pub struct Batch {
    bytes: Vec<u8>,
    written: usize,
    /// Queue space the batch gives back; empty once given back.
    receipts: Receipts,
}

impl Batch {
    /// Frames `first` and what is queued behind it already, up to [`BATCH_BYTES`]; the
    /// messages past the first stay counted against the queue's bound until written.
    pub fn take(
        &mut self,
        first: Outgoing,
        queue: &mut mpsc::Receiver<Outgoing>,
        handle: &SessionHandle,
    ) {
        // A batch cut short keeps its own buffer; this one was handed back when written.
        self.bytes = SPARE.with(Cell::take);
        self.bytes.clear();
        self.written = 0;
        self.frame(first);
        while self.bytes.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(next) => self.frame(next),
                Err(_) => break,
            }
        }
        handle.taken(&self.receipts);
    }

    fn frame(&mut self, message: Outgoing) {
        self.bytes.reserve(message.len() + MAX_HEADER);
        text_header(message.len(), &mut self.bytes);
        message.write_to(&mut self.bytes);
        self.receipts.add(message.receipt());
    }

    /// Whether bytes of the batch remain to be written.
    pub fn unwritten(&self) -> bool {
        self.written < self.bytes.len()
    }

    /// Writes the rest of the batch to `io`, then flushes it (a TLS stream holds records
    /// back until flushed); the buffer is freed once all of it is written.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.unwritten() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Written: the buffer goes back to the thread for the next batch of any session.
        let mut spare = std::mem::take(&mut self.bytes);
        self.written = 0;
        if spare.capacity() <= SPARE_MAX {
            spare.clear();
            SPARE.with(|cell| cell.set(spare));
        }
        Pin::new(io).poll_flush(cx)
    }

    /// Gives the batch's queue space back to `handle`, once written or when the session ends
    /// (the unwritten rest stays, to be finished before a close frame).
    pub fn release(&mut self, handle: &SessionHandle) {
        let receipts = std::mem::take(&mut self.receipts);
        if receipts.messages() > 0 {
            handle.sent_all(receipts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::session::{QueueLimits, CLOSE_POLICY};
    use std::sync::Arc;

    fn header(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        text_header(len, &mut out);
        out
    }

    #[test]
    fn headers_have_the_exact_bytes_of_each_length_class() {
        assert_eq!(header(0), [0x81, 0]);
        assert_eq!(header(125), [0x81, 125]);
        assert_eq!(header(126), [0x81, 126, 0, 126]);
        assert_eq!(header(65_535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(header(65_536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            header(0x0123_4567_89ab),
            [0x81, 127, 0, 0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab]
        );
    }

    /// A session whose queue holds `messages` at most, and plenty of bytes.
    fn session(messages: usize) -> (Arc<SessionHandle>, mpsc::Receiver<Outgoing>) {
        let limits = QueueLimits {
            messages,
            bytes: 1 << 24,
        };
        let (handle, queue) = SessionHandle::new(limits);
        (Arc::new(handle), queue)
    }

    fn push(handle: &SessionHandle, result: &str) -> bool {
        handle.push(&"0x9".into(), &Arc::new(result.to_string()))
    }

    fn notification(result: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"0x9","result":{result}}}}}"#
        )
    }

    /// Parses unmasked text frames back out of `bytes`.
    fn frames(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0x81);
            let (len, at) = match bytes[1] {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            out.push(String::from_utf8(bytes[at..at + len].to_vec()).unwrap());
            bytes = &bytes[at + len..];
        }
        out
    }

    async fn written(batch: &mut Batch) -> Vec<u8> {
        let mut out = Vec::new();
        std::future::poll_fn(|cx| batch.poll_write(&mut out, cx))
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn each_length_class_is_framed_exactly() {
        for result_len in [10, 200, 70_000] {
            let (handle, mut queue) = session(4);
            let result = format!("\"{}\"", "x".repeat(result_len));
            assert!(push(&handle, &result));
            let mut batch = Batch::default();
            batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
            let text = notification(&result);
            let mut expected = header(text.len());
            expected.extend_from_slice(text.as_bytes());
            assert_eq!(written(&mut batch).await, expected);
        }
    }

    #[tokio::test]
    async fn queued_messages_go_out_in_one_write_in_order() {
        let (handle, mut queue) = session(8);
        assert!(push(&handle, "1") && push(&handle, "2"));
        let answer = "a".repeat(300);
        assert!(handle.push_answer(answer.clone()).await);
        assert!(push(&handle, "3"));
        let mut batch = Batch::default();
        batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
        assert!(queue.try_recv().is_err(), "all four taken at once");
        let expected = [
            notification("1"),
            notification("2"),
            answer,
            notification("3"),
        ];
        assert_eq!(frames(&written(&mut batch).await), expected);
    }

    #[tokio::test]
    async fn a_batch_stops_taking_past_its_byte_bound() {
        let (handle, mut queue) = session(64);
        let big = format!("\"{}\"", "y".repeat(BATCH_BYTES / 3));
        for _ in 0..5 {
            assert!(push(&handle, &big));
        }
        let mut batch = Batch::default();
        batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
        // Two stay under the bound, the third crosses it and joins; the rest wait.
        assert_eq!(frames(&written(&mut batch).await).len(), 3);
        assert!(queue.try_recv().is_ok() && queue.try_recv().is_ok());
        assert!(queue.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_batch_held_by_the_writer_still_counts_against_the_message_bound() {
        let (handle, mut queue) = session(3);
        assert!(push(&handle, "1") && push(&handle, "2") && push(&handle, "3"));
        let mut batch = Batch::default();
        batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
        // The queue is empty, but the writer holds three unwritten messages: as before
        // batching (one message in the writer, the rest queued), one more fits, not two.
        assert!(push(&handle, "4"));
        assert!(!push(&handle, "5"), "over the message bound");
        assert_eq!(handle.close_reason().map(|r| r.0), Some(CLOSE_POLICY));
    }

    #[tokio::test]
    async fn written_batches_give_their_room_back() {
        let (handle, mut queue) = session(2);
        let mut batch = Batch::default();
        for round in 0..3 {
            assert!(push(&handle, "1") && push(&handle, "2"), "round {round}");
            batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
            assert_eq!(frames(&written(&mut batch).await).len(), 2);
            batch.release(&handle);
            assert_eq!(handle.fill(), 0.0);
        }
        assert!(handle.close_reason().is_none());
    }

    #[tokio::test]
    async fn a_written_batch_hands_its_buffer_back_and_keeps_none() {
        let (handle, mut queue) = session(4);
        let mut batch = Batch::default();
        assert!(push(&handle, "1"));
        batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
        let first = batch.bytes.as_ptr();
        written(&mut batch).await;
        assert_eq!(batch.bytes.capacity(), 0, "an idle session holds no buffer");
        assert!(push(&handle, "2"));
        batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
        assert_eq!(batch.bytes.as_ptr(), first, "the thread's buffer is reused");
        assert_eq!(frames(&written(&mut batch).await), [notification("2")]);
        // A buffer grown past SPARE_MAX by one large message is not kept.
        let huge = format!("\"{}\"", "z".repeat(SPARE_MAX));
        assert!(push(&handle, &huge));
        batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
        written(&mut batch).await;
        assert_eq!(SPARE.with(Cell::take).capacity(), 0);
    }

    #[tokio::test]
    async fn a_partly_written_batch_resumes_where_it_stopped() {
        let (handle, mut queue) = session(4);
        assert!(push(&handle, "\"abc\"") && push(&handle, "\"def\""));
        let mut batch = Batch::default();
        batch.take(queue.recv().await.unwrap(), &mut queue, &handle);
        // A peer that takes 7 bytes per write.
        let (mut near, mut far) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut far, &mut all)
                .await
                .unwrap();
            all
        });
        std::future::poll_fn(|cx| batch.poll_write(&mut near, cx))
            .await
            .unwrap();
        assert!(!batch.unwritten());
        drop(near);
        let expected = [notification("\"abc\""), notification("\"def\"")];
        assert_eq!(frames(&reader.await.unwrap()), expected);
    }
}
