//! The session's writer: queued messages framed by hand and written straight to the socket,
//! several in one write when more than one is queued.
//!
//! Through tungstenite each message was turned into a `String`, then a frame, then copied into
//! tungstenite's write buffer, which then kept the size of the largest message ever sent for
//! the life of the client. A server frame is unmasked (RFC 6455 §5.1): a header, then the
//! payload. So the writer appends each message's header and the text around its large part
//! into one buffer, and hands the socket the large parts where they are, in one vectored write:
//! a head fanned out to thousands of clients is never copied per client (profiling showed the
//! copy of its ~1.6 KB header text to be the largest part of framing), and a large answer is
//! never copied at all. Small messages are copied whole; cheaper than another piece.
//!
//! The session's control frames (a pong, the close) are written by `control.rs`, only while no
//! batch is in progress: never inside one of these frames.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

use super::single::Single;
use crate::subscription::session::{
    Body, Outgoing, Receipts, Receiver, SessionHandle, NOTIFICATION_HEAD, NOTIFICATION_MIDDLE,
    NOTIFICATION_TAIL,
};

/// Bytes one write takes from the queue at most, so a long backlog goes out in pieces of a
/// bounded size (the message that crosses the bound still joins; a larger one goes alone).
const BATCH_BYTES: usize = 64 * 1024;

/// A result or answer at least this long is written from where it is rather than copied.
const PIECE_MIN: usize = 256;

/// Pieces handed to one vectored write at most (the kernel's limit is 1,024).
const MAX_SLICES: usize = 64;

/// First header byte of a text message in one frame: FIN, opcode 1.
const FIN_TEXT: u8 = 0x81;

/// Longest frame header: 2 bytes and a 64-bit length, no mask.
pub(super) const MAX_HEADER: usize = 10;

/// Largest framing buffer a thread keeps for the next batch; one grown past this by a large
/// answer is freed instead.
const SPARE_MAX: usize = 2 * BATCH_BYTES;

/// A batch's buffers, lent by the thread between batches.
#[derive(Default)]
struct Buffers {
    bytes: Vec<u8>,
    parts: Vec<Part>,
}

thread_local! {
    /// Each thread's buffers for the next batch. A batch borrows them and hands them back
    /// once written, which nearly every batch is at once: fanning a head out to thousands of
    /// clients then allocates nothing, and an idle client holds no buffer.
    static SPARE: Cell<Buffers> = Cell::new(Buffers::default());
}

/// Appends the header of an unmasked, final text frame carrying `len` payload bytes.
pub fn text_header(len: usize, out: &mut Vec<u8>) {
    let (header, used) = header_bytes(len);
    out.extend_from_slice(&header[..used]);
}

/// The header of an unmasked, final text frame carrying `len` payload bytes, and its length.
pub(super) fn header_bytes(len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut header = [0; MAX_HEADER];
    header[0] = FIN_TEXT;
    if len <= 125 {
        header[1] = len as u8;
        (header, 2)
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..].copy_from_slice(&(len as u64).to_be_bytes());
        (header, MAX_HEADER)
    }
}

/// One piece of a batch, in writing order.
enum Part {
    /// A range of the batch's own buffer.
    Own(Range<usize>),
    /// A notification result shared with every subscriber.
    Shared(Arc<String>),
    /// An answer, written from its own allocation.
    Answer(Vec<u8>),
}

/// Messages taken from the queue together, framed into pieces, and how far they are written.
#[derive(Default)]
pub struct Batch {
    /// A notification alone, written without the buffers below.
    single: Option<Single>,
    /// Frame headers and the text around the large pieces.
    bytes: Vec<u8>,
    parts: Vec<Part>,
    /// The part being written and the bytes of it written already.
    at: (usize, usize),
    /// Payload and header bytes in the batch.
    len: usize,
    /// Queue space the batch gives back; empty once given back.
    receipts: Receipts,
}

impl Batch {
    /// Frames `first` and what is queued behind it already, up to [`BATCH_BYTES`]; the
    /// messages past the first stay counted against the queue's bound until written.
    /// `vectored`: whether the socket writes several pieces at once (else all is copied).
    pub fn take(
        &mut self,
        first: Outgoing,
        queue: &mut Receiver,
        handle: &SessionHandle,
        vectored: bool,
    ) {
        // Alone in the queue: written without a buffer (see `Single`).
        if vectored && queue.is_empty() && Single::fits(first.body()) {
            self.receipts.add(first.receipt());
            self.single = Some(Single::new(first.into_body()));
        } else {
            self.take_many(first, queue, vectored);
        }
        handle.taken(&self.receipts);
    }

    /// [`Batch::take`] into the batch's own buffer and pieces.
    fn take_many(&mut self, first: Outgoing, queue: &mut Receiver, vectored: bool) {
        // A batch cut short keeps its own buffers; these were handed back when written.
        let Buffers { bytes, parts } = SPARE.with(Cell::take);
        (self.bytes, self.parts) = (bytes, parts);
        self.bytes.clear();
        self.parts.clear();
        self.at = (0, 0);
        self.len = 0;
        let piece_min = if vectored { PIECE_MIN } else { usize::MAX };
        self.frame(first, piece_min);
        while self.len < BATCH_BYTES {
            match queue.try_recv() {
                Some(next) => self.frame(next, piece_min),
                None => break,
            }
        }
        self.own_up_to_end();
    }

    fn frame(&mut self, message: Outgoing, piece_min: usize) {
        let len = message.len();
        self.receipts.add(message.receipt());
        self.len += len + MAX_HEADER;
        self.bytes.reserve(MAX_HEADER + len.min(piece_min));
        text_header(len, &mut self.bytes);
        match message.into_body() {
            Body::Notification { id, result } => {
                for part in [NOTIFICATION_HEAD, &*id, NOTIFICATION_MIDDLE] {
                    self.bytes.extend_from_slice(part.as_bytes());
                }
                match result.len() >= piece_min {
                    true => self.piece(Part::Shared(result)),
                    false => self.bytes.extend_from_slice(result.as_bytes()),
                }
                self.bytes.extend_from_slice(NOTIFICATION_TAIL.as_bytes());
            }
            Body::Text(text) if text.len() >= piece_min => self.piece(Part::Answer(text)),
            Body::Text(text) => self.bytes.extend_from_slice(&text),
        }
    }

    /// Ends the current run of own bytes, then adds `piece` after it.
    fn piece(&mut self, piece: Part) {
        self.own_up_to_end();
        self.parts.push(piece);
    }

    /// Adds the own bytes not in a part yet as one.
    fn own_up_to_end(&mut self) {
        let start = self
            .parts
            .iter()
            .rev()
            .find_map(|part| match part {
                Part::Own(range) => Some(range.end),
                _ => None,
            })
            .unwrap_or(0);
        if start < self.bytes.len() {
            self.parts.push(Part::Own(start..self.bytes.len()));
        }
    }

    fn part_bytes<'a>(&'a self, part: &'a Part) -> &'a [u8] {
        match part {
            Part::Own(range) => &self.bytes[range.clone()],
            Part::Shared(text) => text.as_bytes(),
            Part::Answer(text) => text,
        }
    }

    /// Whether bytes of the batch remain to be written.
    pub fn unwritten(&self) -> bool {
        self.single.is_some() || self.at.0 < self.parts.len()
    }

    /// The next pieces to write, from where writing stands.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let (first, offset) = self.at;
        let mut n = 0;
        for part in self.parts[first..].iter().take(MAX_SLICES) {
            let skip = if n == 0 { offset } else { 0 };
            out[n] = IoSlice::new(&self.part_bytes(part)[skip..]);
            n += 1;
        }
        n
    }

    /// Moves the writing position `n` bytes on.
    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.unwritten() {
            let (part, offset) = self.at;
            let left = self.part_bytes(&self.parts[part]).len() - offset;
            if n < left {
                self.at.1 += n;
                return;
            }
            n -= left;
            self.at = (part + 1, 0);
        }
    }

    /// Writes the rest of the batch to `io`, then flushes it (a TLS stream holds records
    /// back until flushed); the buffers are handed back once all of it is written.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(single) = &mut self.single {
            ready!(single.poll_write(io, cx))?;
            self.single = None;
        }
        while self.unwritten() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = self.slices(&mut slices);
            let written = Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]);
            let n = ready!(written)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        self.hand_back();
        Pin::new(io).poll_flush(cx)
    }

    /// Written: the buffers go back to the thread for the next batch of any session, and the
    /// shared pieces are let go at once.
    fn hand_back(&mut self) {
        if self.bytes.capacity() == 0 && self.parts.capacity() == 0 {
            // Handed back already (this is a flush polled again): keep the thread's spare.
            return;
        }
        let mut spare = Buffers {
            bytes: std::mem::take(&mut self.bytes),
            parts: std::mem::take(&mut self.parts),
        };
        self.at = (0, 0);
        spare.parts.clear();
        if spare.bytes.capacity() <= SPARE_MAX {
            spare.bytes.clear();
            SPARE.with(|cell| cell.set(spare));
        }
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
    fn session(messages: usize) -> (Arc<SessionHandle>, Receiver) {
        let limits = QueueLimits {
            messages,
            bytes: 1 << 24,
        };
        SessionHandle::new(limits)
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
            batch.take(queue.recv().await, &mut queue, &handle, true);
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
        assert!(handle.push_answer(answer.clone().into_bytes()).await);
        assert!(push(&handle, "3"));
        let mut batch = Batch::default();
        batch.take(queue.recv().await, &mut queue, &handle, true);
        assert!(queue.try_recv().is_none(), "all four taken at once");
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
        batch.take(queue.recv().await, &mut queue, &handle, true);
        // Two stay under the bound, the third crosses it and joins; the rest wait.
        assert_eq!(frames(&written(&mut batch).await).len(), 3);
        assert!(queue.try_recv().is_some() && queue.try_recv().is_some());
        assert!(queue.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_batch_held_by_the_writer_still_counts_against_the_message_bound() {
        let (handle, mut queue) = session(3);
        assert!(push(&handle, "1") && push(&handle, "2") && push(&handle, "3"));
        let mut batch = Batch::default();
        batch.take(queue.recv().await, &mut queue, &handle, true);
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
            batch.take(queue.recv().await, &mut queue, &handle, true);
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
        // Not vectored: a lone message too is framed into the buffer.
        assert!(push(&handle, "1"));
        batch.take(queue.recv().await, &mut queue, &handle, false);
        assert!(batch.bytes.capacity() > 0);
        let first = batch.bytes.as_ptr();
        written(&mut batch).await;
        assert_eq!(batch.bytes.capacity(), 0, "an idle session holds no buffer");
        assert!(push(&handle, "2"));
        batch.take(queue.recv().await, &mut queue, &handle, false);
        assert_eq!(batch.bytes.as_ptr(), first, "the thread's buffer is reused");
        assert_eq!(frames(&written(&mut batch).await), [notification("2")]);
        // A buffer grown past SPARE_MAX by one large message copied whole is not kept.
        let huge = format!("\"{}\"", "z".repeat(SPARE_MAX));
        assert!(push(&handle, &huge));
        batch.take(queue.recv().await, &mut queue, &handle, false);
        written(&mut batch).await;
        assert_eq!(SPARE.with(Cell::take).bytes.capacity(), 0);
    }

    /// A socket that takes at most `step` bytes per write, across pieces.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        writes: usize,
    }

    /// What `batch` writes to a socket that takes `step` bytes per write, and in how many.
    async fn trickled(batch: &mut Batch, step: usize) -> Trickle {
        let mut socket = Trickle {
            out: Vec::new(),
            step,
            writes: 0,
        };
        std::future::poll_fn(|cx| batch.poll_write(&mut socket, cx))
            .await
            .unwrap();
        socket
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.step - n);
                self.out.extend_from_slice(&buf[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_large_result_is_written_from_where_it_is_not_copied() {
        let (handle, mut queue) = session(8);
        let result = Arc::new(format!("\"{}\"", "h".repeat(PIECE_MIN)));
        let answer = "a".repeat(PIECE_MIN);
        assert!(handle.push(&"0x9".into(), &result) && push(&handle, "1"));
        assert!(handle.push_answer(answer.clone().into_bytes()).await);
        let mut batch = Batch::default();
        batch.take(queue.recv().await, &mut queue, &handle, true);
        assert_eq!(
            Arc::strong_count(&result),
            2,
            "the queue's reference, not a copy"
        );
        let own = batch.bytes.len();
        assert!(
            own < 3 * 128,
            "only headers and the text around pieces: {own} bytes"
        );
        let expected = [notification(&result), notification("1"), answer];
        let socket = trickled(&mut batch, usize::MAX).await;
        assert_eq!(socket.writes, 1, "one vectored write for the batch");
        assert_eq!(frames(&socket.out), expected);
        assert_eq!(Arc::strong_count(&result), 1, "let go once written");
    }

    #[tokio::test]
    async fn a_lone_notification_is_written_without_any_buffer() {
        let (handle, mut queue) = session(8);
        let result = Arc::new(format!("\"{}\"", "s".repeat(PIECE_MIN)));
        assert!(handle.push(&"0x9".into(), &result));
        let mut batch = Batch::default();
        batch.take(queue.recv().await, &mut queue, &handle, true);
        assert!(batch.single.is_some() && batch.unwritten());
        assert_eq!(batch.bytes.capacity(), 0, "no buffer borrowed");
        assert_eq!(
            Arc::strong_count(&result),
            2,
            "the queue's reference, not a copy"
        );
        let socket = trickled(&mut batch, usize::MAX).await;
        assert_eq!(socket.writes, 1);
        assert_eq!(frames(&socket.out), [notification(&result)]);
        assert!(!batch.unwritten());
        assert_eq!(Arc::strong_count(&result), 1, "let go once written");
        batch.release(&handle);
        assert_eq!(handle.fill(), 0.0, "its room given back");
    }

    #[tokio::test]
    async fn a_lone_answer_is_written_from_its_own_string() {
        for len in [3, 300, 70_000] {
            let (handle, mut queue) = session(8);
            let answer = "a".repeat(len);
            assert!(handle.push_answer(answer.clone().into_bytes()).await);
            let mut batch = Batch::default();
            batch.take(queue.recv().await, &mut queue, &handle, true);
            assert!(batch.single.is_some());
            assert_eq!(batch.bytes.capacity(), 0, "no buffer borrowed");
            for step in [1, 5, usize::MAX] {
                let mut copy = Batch::default();
                assert!(handle.push_answer(answer.clone().into_bytes()).await);
                copy.take(queue.recv().await, &mut queue, &handle, true);
                let socket = trickled(&mut copy, step).await;
                let mut expected = header(len);
                expected.extend_from_slice(answer.as_bytes());
                assert_eq!(socket.out, expected, "{len} bytes, {step} per write");
                copy.release(&handle);
            }
        }
    }

    #[tokio::test]
    async fn pieces_written_a_few_bytes_at_a_time_come_out_whole_and_in_order() {
        let result = format!("\"{}\"", "r".repeat(PIECE_MIN + 3));
        for (step, alone) in [1, 7, 130, 300]
            .into_iter()
            .flat_map(|s| [(s, false), (s, true)])
        {
            let (handle, mut queue) = session(8);
            assert!(push(&handle, &result));
            if !alone {
                assert!(push(&handle, "2") && push(&handle, &result));
            }
            let mut batch = Batch::default();
            batch.take(queue.recv().await, &mut queue, &handle, true);
            assert_eq!(batch.single.is_some(), alone);
            let socket = trickled(&mut batch, step).await;
            let expected = match alone {
                true => vec![notification(&result)],
                false => vec![
                    notification(&result),
                    notification("2"),
                    notification(&result),
                ],
            };
            assert_eq!(frames(&socket.out), expected, "{step} bytes per write");
        }
    }

    #[tokio::test]
    async fn a_socket_without_vectored_writes_gets_the_same_bytes_copied() {
        let result = format!("\"{}\"", "c".repeat(PIECE_MIN * 2));
        let mut outs = Vec::new();
        for vectored in [true, false] {
            let (handle, mut queue) = session(8);
            assert!(push(&handle, &result) && push(&handle, "3"));
            let mut batch = Batch::default();
            batch.take(queue.recv().await, &mut queue, &handle, vectored);
            if !vectored {
                assert_eq!(batch.parts.len(), 1, "one piece: all copied");
            }
            outs.push(written(&mut batch).await);
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(frames(&outs[0]), [notification(&result), notification("3")]);
    }

    #[tokio::test]
    async fn a_partly_written_batch_resumes_where_it_stopped() {
        let (handle, mut queue) = session(4);
        assert!(push(&handle, "\"abc\"") && push(&handle, "\"def\""));
        let mut batch = Batch::default();
        batch.take(queue.recv().await, &mut queue, &handle, true);
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
