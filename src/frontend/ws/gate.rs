//! The client's stream behind a [`Gate`]: the session task wakes for every outgoing message,
//! and re-polling the stream each time costs more than the message itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};

pub(super) use crate::gate::Gate;

/// The client's stream behind a [`Gate`]: re-polling it for every outgoing message would make
/// tungstenite zero its whole read buffer and try a read each time, which profiling showed to
/// be most of a fan-out's cost. Also notes when the stream ran, because tungstenite may then
/// have written (or half written) a control frame of its own.
#[derive(Default)]
pub(super) struct ReadGate {
    gate: Gate,
    polled: AtomicBool,
}

impl ReadGate {
    pub(super) fn poll_next<S: Stream + Unpin>(
        &self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        self.gate.poll(cx, |cx| {
            self.polled.store(true, Ordering::Relaxed);
            stream.poll_next_unpin(cx)
        })
    }

    /// Whether the stream was polled since the last call.
    pub(super) fn take_polled(&self) -> bool {
        self.polled.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// A stream that counts its polls and is pending until `ready` frames are let through.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: usize,
        waker: Option<std::task::Waker>,
    }

    impl Stream for Counted {
        type Item = u32;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<u32>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready > 0 {
                self.ready -= 1;
                return Poll::Ready(Some(7));
            }
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn the_stream_is_polled_again_only_after_a_frame_or_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut stream = Counted {
            polls: polls.clone(),
            ready: 1,
            waker: None,
        };
        let gate = ReadGate::default();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert_eq!(gate.poll_next(&mut stream, &mut cx), Poll::Ready(Some(7)));
        // After a frame the next call polls again (more may be buffered): now pending.
        assert!(gate.poll_next(&mut stream, &mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        assert!(
            gate.take_polled(),
            "the stream ran: tungstenite may have written"
        );
        // Woken for other reasons (an outgoing message): the stream is left alone.
        for _ in 0..5 {
            assert!(gate.poll_next(&mut stream, &mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 2, "no poll without a wake");
        assert!(!gate.take_polled(), "not polled since: no flush needed");
        // The stream's own waker fires: the next call polls it and gets the frame.
        stream.ready = 1;
        stream.waker.take().expect("registered").wake();
        assert_eq!(gate.poll_next(&mut stream, &mut cx), Poll::Ready(Some(7)));
        assert_eq!(polls.load(Ordering::Relaxed), 3);
    }
}
