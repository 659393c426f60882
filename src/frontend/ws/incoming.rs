//! The client's side of a session: its frames read straight from the socket by ethgate's own
//! RFC 6455 reader (see `src/websocket.rs`) into a buffer that is never zeroed.
//!
//! Each worker thread keeps one spare read buffer, and a session borrows it only for as long
//! as a read and the frames it brought take: an idle client holds no read buffer at all, and
//! a message read leaves as a slice of the thread's buffer (no copy). Bytes still unread when
//! the session waits (the start of a frame whose rest has not come, or frames held back while
//! its calls are full) are copied into a buffer of their own size: a client that sends half a
//! frame and stalls holds what it sent, not a read buffer.

use std::cell::Cell;
use std::future::Future;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::gate::Gate;
use crate::websocket::{Event, FrameError, Peer, Reader};

/// Largest read buffer a thread keeps between reads; one grown past this by a large frame is
/// freed instead (once the messages cut from it are).
const SPARE_MAX: usize = 64 * 1024;

thread_local! {
    /// Each thread's read buffer, lent to the session reading at the moment.
    static SPARE: Cell<BytesMut> = Cell::new(BytesMut::new());
}

/// Why a client's frames end.
#[derive(Debug)]
pub(super) enum End {
    /// The client broke a rule of RFC 6455.
    Frame(FrameError),
    /// The socket closed or failed.
    Gone,
}

/// The reading side of one session.
pub(super) struct Incoming {
    frames: Reader,
    /// Polls the socket only when it woke the task or the last poll brought an event: the
    /// session task wakes for every outgoing message, and a read attempt each time costs more
    /// than the message itself.
    gate: Gate,
    /// Whether the buffer in `frames` is the thread's (given back before the session waits).
    lent: bool,
}

impl Incoming {
    /// The reader of a client's messages up to `max` bytes; `read_ahead` holds bytes that
    /// came with the upgrade request (frames too).
    pub(super) fn new(max: usize, read_ahead: Vec<u8>) -> Incoming {
        let start = match read_ahead.is_empty() {
            true => BytesMut::new(),
            false => BytesMut::from(&read_ahead[..]),
        };
        Incoming {
            frames: Reader::new(Peer::Client, max, start),
            gate: Gate::default(),
            lent: false,
        }
    }

    /// The client's next event: a message, a ping, a close, a message over the limit.
    pub(super) fn poll_next<T>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Event, End>>
    where
        T: AsyncRead + Unpin,
    {
        let Incoming { frames, gate, lent } = self;
        gate.poll(cx, |cx| loop {
            match frames.next() {
                Ok(Some(event)) => return Poll::Ready(Ok(event)),
                Ok(None) => {}
                Err(error) => return Poll::Ready(Err(End::Frame(error))),
            }
            if frames.buffered() == 0 && !*lent {
                let mut buf = SPARE.with(Cell::take);
                frames.swap_buffer(&mut buf);
                // The session's own buffer, now empty (one it read a frame's rest into).
                offer(buf);
                *lent = true;
            }
            let (buf, _) = frames.space();
            // Into the buffer's spare room: neither TCP nor TLS zeroes it first.
            match std::pin::pin!(io.read_buf(buf)).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Gone)),
                Poll::Ready(Ok(_)) => {}
            }
        })
    }

    /// Gives the thread's buffer back, the bytes still unread in it kept in a copy of their
    /// own size; the session calls this before it waits.
    pub(super) fn release(&mut self) {
        if !self.lent {
            return;
        }
        self.lent = false;
        let mut ours = BytesMut::new();
        self.frames.swap_buffer(&mut ours);
        if !ours.is_empty() {
            let mut unread = BytesMut::from(&ours[..]);
            ours.clear();
            self.frames.swap_buffer(&mut unread);
        }
        offer(ours);
    }
}

/// Offers an empty read buffer to the thread: the roomier of it and the thread's spare stays,
/// none over [`SPARE_MAX`]; the other is freed once the messages cut from it are.
fn offer(buf: BytesMut) {
    if buf.capacity() > SPARE_MAX {
        return;
    }
    SPARE.with(|spare| {
        let theirs = spare.take();
        spare.set(match buf.capacity() >= theirs.capacity() {
            true => buf,
            false => theirs,
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    /// A client text frame carrying `payload`, masked.
    fn masked(payload: &[u8]) -> Vec<u8> {
        crate::websocket::tests::frame(0x81, payload)
    }

    fn spare_capacity() -> usize {
        SPARE.with(|spare| {
            let buf = spare.take();
            let capacity = buf.capacity();
            spare.set(buf);
            capacity
        })
    }

    #[test]
    fn an_idle_session_holds_no_read_buffer_and_one_holding_half_a_frame_keeps_only_its_bytes() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut incoming = Incoming::new(1024, Vec::new());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut frames = masked(b"one");
        frames.extend_from_slice(&masked(b"two")[..3]);
        runtime.block_on(client.write_all(&frames)).expect("write");
        let Poll::Ready(Ok(Event::Text(one))) = incoming.poll_next(&mut server, &mut cx) else {
            panic!("the first message");
        };
        assert_eq!(one.as_str(), "one");
        assert!(incoming.poll_next(&mut server, &mut cx).is_pending());
        incoming.release();
        // Half a frame: its 3 bytes are kept, in a buffer of their own size; the thread's
        // read buffer goes back (a client that stalls mid-frame holds what it sent).
        assert_eq!(
            incoming.frames.held(),
            3,
            "half a frame: only its bytes stay"
        );
        assert!(
            spare_capacity() > 0,
            "the read buffer is the thread's again"
        );
        runtime
            .block_on(client.write_all(&masked(b"two")[3..]))
            .expect("write");
        let Poll::Ready(Ok(Event::Text(two))) = incoming.poll_next(&mut server, &mut cx) else {
            panic!("the second message");
        };
        assert_eq!(two.as_str(), "two");
        assert!(incoming.poll_next(&mut server, &mut cx).is_pending());
        incoming.release();
        assert_eq!(incoming.frames.held(), 0, "idle: no buffer of its own");
        assert!(
            spare_capacity() > 0,
            "the thread keeps it for the next read"
        );
        // The next read borrows the thread's buffer rather than allocating one.
        let before = spare_capacity();
        runtime
            .block_on(client.write_all(&masked(b"three")))
            .expect("write");
        let Poll::Ready(Ok(Event::Text(three))) = incoming.poll_next(&mut server, &mut cx) else {
            panic!("the third message");
        };
        assert_eq!(three.as_str(), "three");
        assert_eq!(spare_capacity(), 0, "lent");
        incoming.release();
        assert!(
            spare_capacity() > 0 && spare_capacity() <= before,
            "given back"
        );
        drop(client);
        assert!(matches!(
            incoming.poll_next(&mut server, &mut cx),
            Poll::Ready(Err(End::Gone))
        ));
    }

    /// The next message, the buffer given back as the session does before it waits.
    async fn read(incoming: &mut Incoming, server: &mut tokio::io::DuplexStream) -> Bytes {
        std::future::poll_fn(|cx| {
            let event = incoming.poll_next(server, cx);
            incoming.release();
            event.map(|event| match event {
                Ok(Event::Text(message)) => message.into(),
                other => panic!("{other:?}"),
            })
        })
        .await
    }

    #[tokio::test]
    async fn a_buffer_grown_by_a_large_frame_is_not_kept_by_the_thread() {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut incoming = Incoming::new(1 << 20, Vec::new());
        let large = vec![b'a'; 300_000];
        client.write_all(&masked(&large)).await.expect("write");
        let message = read(&mut incoming, &mut server).await;
        assert_eq!(message.len(), large.len());
        drop(message);
        // Once the large message is gone, its buffer is whole again: not kept for the thread.
        client.write_all(&masked(b"small")).await.expect("write");
        assert_eq!(&read(&mut incoming, &mut server).await[..], b"small");
        assert_eq!(incoming.frames.held(), 0);
        assert!(spare_capacity() <= SPARE_MAX, "{}", spare_capacity());
    }

    /// A socket that counts its reads and has nothing to read.
    struct Counted(usize);

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.0 += 1;
            Poll::Pending
        }
    }

    #[test]
    fn the_socket_is_read_again_only_after_its_own_wake_or_an_event() {
        let mut socket = Counted(0);
        let mut incoming = Incoming::new(1024, masked(b"early"));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let Poll::Ready(Ok(Event::Text(early))) = incoming.poll_next(&mut socket, &mut cx) else {
            panic!("the frame sent with the upgrade request");
        };
        assert_eq!((early.as_str(), socket.0), ("early", 0), "no read needed");
        // After an event the next call reads (more may have come): nothing yet.
        assert!(incoming.poll_next(&mut socket, &mut cx).is_pending());
        assert_eq!(socket.0, 1);
        // Woken for other reasons (an outgoing message each time): the socket is left alone.
        for _ in 0..5 {
            assert!(incoming.poll_next(&mut socket, &mut cx).is_pending());
        }
        assert_eq!(socket.0, 1, "no read without the socket's own wake");
    }
}
