//! The queue under a session's outgoing side: a `VecDeque` behind a lock with the writer's
//! waker, in place of a bounded tokio channel.
//!
//! The channel cost every session a block of 32 slots allocated up front (1 KiB of each idle
//! client's memory) and, for every notification fanned out, its semaphore, its block list and
//! its waker on separate cache lines, twice (push and receive) per client. Here a push and a
//! receive each take one uncontended lock on the handle itself, and a queue that never held
//! more than a few messages holds a buffer of a few slots. The bounds stay the handle's
//! business (see `SessionHandle::push`); the queue only refuses what exceeds the bound it is
//! given.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::{lock, Outgoing};

/// Why a message was not queued.
#[derive(Debug)]
pub(super) enum Refused {
    /// The queue holds its bound of messages already.
    Full(Outgoing),
    /// The receiver is gone: the session ended.
    Closed,
}

/// The messages themselves and the waker of the session waiting for them.
#[derive(Default)]
struct State {
    /// The oldest message, kept inline: a fan-out queues one message per client at a time,
    /// which then touches no memory beyond the handle's own.
    first: Option<Outgoing>,
    /// The messages behind `first`, in order.
    rest: VecDeque<Outgoing>,
    waker: Option<Waker>,
    /// A push was refused for lack of room: the next receive reports it, so the refused
    /// answer is told to try again.
    wanted_room: bool,
    closed: bool,
}

impl State {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn pop(&mut self) -> Option<Outgoing> {
        let item = self.first.take()?;
        self.first = self.rest.pop_front();
        Some(item)
    }
}

/// Messages waiting for the session's writer, in order.
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<State>,
    /// The receiver found the queue empty and waits for a wake. Cleared by the receiver when
    /// it is about to look again anyway (see [`Queue::unpark`]), so a message pushed by the
    /// session task itself (an answer of a call it runs) does not make it poll again.
    parked: AtomicBool,
}

impl Queue {
    /// Appends `item` unless the queue holds `bound` messages or more, waking the receiver.
    pub(super) fn push(&self, item: Outgoing, bound: usize) -> Result<(), Refused> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.len() >= bound {
            state.wanted_room = true;
            return Err(Refused::Full(item));
        }
        match state.first {
            None => state.first = Some(item),
            Some(_) => state.rest.push_back(item),
        }
        // Read under the lock: a receiver that parks after this sees the message. The waker
        // stays stored (woken by reference): the receiver's next park need not clone it.
        if self.parked.load(Ordering::Acquire) {
            self.parked.store(false, Ordering::Release);
            if let Some(waker) = &state.waker {
                waker.wake_by_ref();
            }
        }
        Ok(())
    }

    /// Messages queued.
    pub(super) fn len(&self) -> usize {
        lock(&self.state).len()
    }

    /// The next message, or `None` with `cx`'s waker kept for the next push. The flag tells
    /// whether a push was refused for lack of room since the last receive.
    pub(super) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<(Outgoing, bool)> {
        let mut state = lock(&self.state);
        if let Some(item) = state.pop() {
            let wanted_room = std::mem::take(&mut state.wanted_room);
            return Poll::Ready((item, wanted_room));
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        self.parked.store(true, Ordering::Release);
        Poll::Pending
    }

    /// The next message if one is queued, without waiting (see [`Queue::poll_pop`]).
    pub(super) fn try_pop(&self) -> Option<(Outgoing, bool)> {
        let mut state = lock(&self.state);
        let item = state.pop()?;
        Some((item, std::mem::take(&mut state.wanted_room)))
    }

    /// The receiver will look at the queue again before it waits: pushes until then need
    /// not wake it.
    pub(super) fn unpark(&self) {
        self.parked.store(false, Ordering::Release);
    }

    /// The receiver is gone: what is queued is dropped and pushes are refused from now on.
    pub(super) fn close(&self) {
        let items = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.waker = None;
            (state.first.take(), std::mem::take(&mut state.rest))
        };
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Body;
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    fn text(s: &str) -> Outgoing {
        Outgoing {
            body: Body::Text(s.into()),
        }
    }

    fn popped(queue: &Queue) -> Option<String> {
        queue.try_pop().map(|(item, _)| item.into_text())
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn messages_come_out_in_order_and_the_bound_refuses_the_next() {
        let queue = Queue::default();
        assert!(queue.push(text("a"), 2).is_ok());
        assert!(queue.push(text("b"), 2).is_ok());
        match queue.push(text("c"), 2) {
            Err(Refused::Full(back)) => assert_eq!(back.into_text(), "c", "handed back"),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(queue.len(), 2);
        let (first, wanted_room) = queue.try_pop().unwrap();
        assert_eq!(first.into_text(), "a");
        assert!(wanted_room, "the refused push is reported to the receiver");
        assert_eq!(popped(&queue).as_deref(), Some("b"));
        assert!(queue.try_pop().is_none());
    }

    #[test]
    fn order_holds_across_the_inline_slot_and_the_rest() {
        let queue = Queue::default();
        let mut next = 0;
        let mut expected = 0;
        for round in 0..20 {
            // Push a few, pop fewer: the queue's length goes up and down through 0 and 1.
            for _ in 0..(round % 4) + 1 {
                assert!(queue.push(text(&next.to_string()), 64).is_ok());
                next += 1;
            }
            for _ in 0..(round % 3) + 1 {
                match popped(&queue) {
                    Some(got) => {
                        assert_eq!(got, expected.to_string());
                        expected += 1;
                    }
                    None => assert_eq!(expected, next, "empty only when all came out"),
                }
            }
            assert_eq!(queue.len(), next - expected);
        }
        while let Some(got) = popped(&queue) {
            assert_eq!(got, expected.to_string());
            expected += 1;
        }
        assert_eq!(expected, next);
    }

    #[test]
    fn a_parked_receiver_is_woken_once_and_an_unparked_one_not_at_all() {
        let queue = Queue::default();
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(queue.poll_pop(&mut cx).is_pending());
        assert!(queue.push(text("a"), 8).is_ok());
        assert!(queue.push(text("b"), 8).is_ok());
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "one wake for two pushes"
        );
        assert!(queue.poll_pop(&mut cx).is_ready());
        assert!(queue.poll_pop(&mut cx).is_ready());
        assert!(queue.poll_pop(&mut cx).is_pending());
        // The session is about to look again: its own pushes meanwhile wake nobody.
        queue.unpark();
        assert!(queue.push(text("c"), 8).is_ok());
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(popped(&queue).as_deref(), Some("c"));
    }

    #[test]
    fn a_closed_queue_drops_its_messages_and_refuses_more() {
        let queue = Queue::default();
        let result = Arc::new("r".to_string());
        let item = Outgoing {
            body: Body::Notification {
                id: "0x1".into(),
                result: result.clone(),
            },
        };
        assert!(queue.push(item, 8).is_ok());
        queue.close();
        assert_eq!(
            Arc::strong_count(&result),
            1,
            "the queued message was dropped"
        );
        assert!(matches!(queue.push(text("late"), 8), Err(Refused::Closed)));
        assert!(queue.try_pop().is_none());
    }
}
