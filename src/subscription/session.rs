//! The hub's view of a client WebSocket session: its ordered outgoing queue, bounded in
//! messages and in bytes, its subscription count, and a way to close it with a code.
//!
//! Two kinds of message share the queue, each with its own byte budget. Notifications come
//! from the feed, which must never wait for one client: a notification that does not fit
//! closes the client with 1008. Answers to the client's own calls wait for room instead, so a
//! client that pipelines calls is slowed down (its reader pauses) rather than closed, and its
//! large answers never count against its notifications.
//!
//! The messages themselves and their receipts are in `message`; the queue holding them in
//! `queue`.

mod message;
mod queue;

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use message::{
    Body, Outgoing, Receipt, Receipts, NOTIFICATION_HEAD, NOTIFICATION_MIDDLE, NOTIFICATION_TAIL,
};
use queue::{Queue, Refused};

/// Close code for a client whose queue overflowed.
pub const CLOSE_POLICY: u16 = 1008;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Limits of one session's outgoing queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages queued at most.
    pub messages: usize,
    /// Bytes of notifications queued at most, and separately of answers (a single larger
    /// answer still passes once no other answer is queued).
    pub bytes: usize,
}

/// Handle to one client session's outgoing side.
pub struct SessionHandle {
    id: u64,
    queue: Queue,
    limits: QueueLimits,
    notification_bytes: AtomicUsize,
    answer_bytes: AtomicUsize,
    /// Signalled by the writer each time it has sent an answer while one waits for room, or
    /// taken a message from a queue an answer found full.
    room: Notify,
    /// Answers waiting for room (most never do: the writer then skips the signal's lock).
    answers_waiting: AtomicUsize,
    /// Set with the first close: checked on every answer, cheaper than the token's lock.
    closing_now: AtomicBool,
    /// Messages the writer has taken from the queue as one batch, past the first, and not
    /// written yet: they still count against the message bound (the queue alone would let
    /// that many more in while a slow client holds the batch).
    held: AtomicUsize,
    closing: CancellationToken,
    close_reason: Mutex<Option<(u16, &'static str)>>,
    /// Ids of this session's subscriptions, so ending the session touches only those.
    subscriptions: Mutex<Vec<Arc<str>>>,
    /// Subscriptions held or being set up, against `max_subscriptions_per_connection`.
    pub(super) slots: AtomicUsize,
}

impl SessionHandle {
    /// A handle and the receiving end of its queue.
    pub fn new(limits: QueueLimits) -> (Arc<SessionHandle>, Receiver) {
        let handle = Arc::new(SessionHandle {
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            queue: Queue::default(),
            limits,
            notification_bytes: AtomicUsize::new(0),
            answer_bytes: AtomicUsize::new(0),
            room: Notify::new(),
            answers_waiting: AtomicUsize::new(0),
            closing_now: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            closing: CancellationToken::new(),
            close_reason: Mutex::new(None),
            subscriptions: Mutex::new(Vec::new()),
            slots: AtomicUsize::new(0),
        });
        let receiver = Receiver {
            handle: handle.clone(),
        };
        (handle, receiver)
    }

    /// Unique session number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a notification of `result` for subscription `id`; one that does not fit closes
    /// the session with 1008 rather than being dropped.
    pub fn push(&self, id: &Arc<str>, result: &Arc<String>) -> bool {
        let body = Body::Notification {
            id: id.clone(),
            result: result.clone(),
        };
        let len = body.len();
        let queued = self.notification_bytes.fetch_add(len, Ordering::AcqRel);
        if queued + len > self.limits.bytes {
            self.notification_bytes.fetch_sub(len, Ordering::AcqRel);
            self.close(CLOSE_POLICY, "client too slow: outgoing queue full");
            return false;
        }
        // The batch the writer holds still counts against the message bound.
        let bound = self
            .limits
            .messages
            .max(1)
            .saturating_sub(self.held.load(Ordering::Acquire));
        match self.queue.push(Outgoing { body }, bound) {
            Ok(()) => true,
            Err(refused) => {
                self.notification_bytes.fetch_sub(len, Ordering::AcqRel);
                if let Refused::Full(_) = refused {
                    self.close(CLOSE_POLICY, "client too slow: outgoing queue full");
                }
                false
            }
        }
    }

    /// Queues the answer to one of the client's calls, waiting for room; false when the
    /// session closes first.
    pub async fn push_answer(&self, text: Vec<u8>) -> bool {
        let len = text.len();
        let mut outgoing = Outgoing {
            body: Body::Text(text),
        };
        loop {
            outgoing = match self.try_push_answer(outgoing, len) {
                Ok(queued) => return queued,
                Err(back) => back,
            };
            // No room: registered (and counted as waiting) before looking again, so room
            // made meanwhile is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let _waiting = Waiting::enter(&self.answers_waiting);
            outgoing = match self.try_push_answer(outgoing, len) {
                Ok(queued) => return queued,
                Err(back) => back,
            };
            tokio::select! {
                _ = room => {}
                _ = self.closing.cancelled() => return false,
            }
        }
    }

    /// Queues an answer if there is room: `Ok(false)` when the session is closing, the answer
    /// handed back when it must wait.
    fn try_push_answer(&self, outgoing: Outgoing, len: usize) -> Result<bool, Outgoing> {
        if self.is_closing() {
            return Ok(false);
        }
        let queued = self.answer_bytes.load(Ordering::SeqCst);
        if queued != 0 && queued + len > self.limits.bytes {
            return Err(outgoing);
        }
        // Counted before it is queued: the writer may write it and give it back at once.
        self.answer_bytes.fetch_add(len, Ordering::AcqRel);
        let pushed = self.queue.push(outgoing, self.limits.messages.max(1));
        if pushed.is_err() {
            self.answer_bytes.fetch_sub(len, Ordering::AcqRel);
        }
        match pushed {
            Ok(()) => Ok(true),
            Err(Refused::Closed) => Ok(false),
            Err(Refused::Full(back)) => Err(back),
        }
    }

    /// Called by the writer once a message has left the queue and gone to the socket.
    pub fn sent(&self, receipt: Receipt) {
        let mut receipts = Receipts::default();
        receipts.add(receipt);
        self.sent_all(receipts);
    }

    /// Called by the writer when it takes a batch of messages from the queue to write them
    /// together: all but the first still count against the message bound until written.
    pub fn taken(&self, receipts: &Receipts) {
        let held = receipts.messages.saturating_sub(1);
        if held > 0 {
            self.held.store(held, Ordering::Release);
        }
    }

    /// Called by the writer once a batch (see [`SessionHandle::taken`]) has gone to the socket.
    pub fn sent_all(&self, receipts: Receipts) {
        if receipts.messages > 1 {
            self.held.store(0, Ordering::Release);
        }
        if receipts.notification_bytes > 0 {
            self.notification_bytes
                .fetch_sub(receipts.notification_bytes, Ordering::AcqRel);
        }
        // Only answers wait for room, and only for answer bytes: written notifications
        // wake nobody (notify_waiters takes a lock).
        if receipts.answer_bytes > 0 {
            // SeqCst with the waiter's count then look (see `Waiting`): one of the two sees
            // the other, so no waiter misses this room.
            self.answer_bytes
                .fetch_sub(receipts.answer_bytes, Ordering::SeqCst);
            if self.answers_waiting.load(Ordering::SeqCst) > 0 {
                self.room.notify_waiters();
            }
        }
    }

    /// How full the queue is for notifications: the larger of its message (batch held by the
    /// writer included) and notification byte fractions (0.0–1.0).
    pub fn fill(&self) -> f64 {
        let messages = self.queue.len() + self.held.load(Ordering::Acquire);
        let by_messages = messages as f64 / self.limits.messages.max(1) as f64;
        let by_bytes =
            self.notification_bytes.load(Ordering::Acquire) as f64 / self.limits.bytes as f64;
        by_messages.max(by_bytes)
    }

    pub(super) fn remember(&self, id: &Arc<str>) {
        lock(&self.subscriptions).push(id.clone());
    }

    pub(super) fn forget(&self, id: &str) {
        lock(&self.subscriptions).retain(|known| &**known != id);
    }

    pub(super) fn take_subscriptions(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *lock(&self.subscriptions))
    }

    /// Asks the session to close with `code`; the first reason given wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut slot = lock(&self.close_reason);
        slot.get_or_insert((code, reason));
        self.closing_now.store(true, Ordering::Release);
        self.closing.cancel();
    }

    /// Completes when someone asked the session to close.
    pub async fn closed(&self) {
        self.closing.cancelled().await
    }

    /// Whether someone asked the session to close.
    pub fn is_closing(&self) -> bool {
        self.closing_now.load(Ordering::Acquire)
    }

    /// The code and reason the session was asked to close with.
    pub fn close_reason(&self) -> Option<(u16, &'static str)> {
        *lock(&self.close_reason)
    }
}

/// One answer counted among those waiting for room while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Counts one more waiter. SeqCst, then the waiter looks at the room again: either it
    /// sees the room the writer made, or the writer (which gives room back, then looks at
    /// this count) sees it and signals.
    fn enter(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The receiving end of a session's queue, held by its writer; dropping it ends the queue.
pub struct Receiver {
    handle: Arc<SessionHandle>,
}

impl Receiver {
    /// The next message, or pending until one is pushed.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Outgoing> {
        self.handle
            .queue
            .poll_pop(cx)
            .map(|(item, wanted_room)| self.taken(item, wanted_room))
    }

    /// Waits for the next message.
    pub async fn recv(&mut self) -> Outgoing {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let (item, wanted_room) = self.handle.queue.try_pop()?;
        Some(self.taken(item, wanted_room))
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.handle.queue.len() == 0
    }

    /// The session task is about to look at the queue again before it waits, so messages
    /// it pushes itself until then need not wake it.
    pub fn unpark(&self) {
        self.handle.queue.unpark();
    }

    fn taken(&self, item: Outgoing, wanted_room: bool) -> Outgoing {
        if wanted_room {
            // An answer found the queue full and waits for a free place.
            self.handle.room.notify_waiters();
        }
        item
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.handle.queue.close();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each guarded value is replaced or edited in one step: still valid after a panic.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::message::notification_len;
    use super::*;
    use std::time::Duration;

    fn session(messages: usize, bytes: usize) -> (Arc<SessionHandle>, Receiver) {
        SessionHandle::new(QueueLimits { messages, bytes })
    }

    /// Queues a notification whose result is `result`.
    fn push(s: &SessionHandle, result: &str) -> bool {
        s.push(&"0x1".into(), &Arc::new(result.to_string()))
    }

    /// The queued length of a notification whose result is `result`.
    fn len_of(result: &str) -> usize {
        notification_len("0x1", result)
    }

    #[test]
    fn notification_bytes_count_the_built_frame_length() {
        let (s, mut queue) = session(100, 2 * len_of("1"));
        assert!(push(&s, "1") && push(&s, "1"));
        assert!(!push(&s, "1"), "a third frame exceeds the byte bound");
        assert_eq!(s.close_reason().map(|r| r.0), Some(CLOSE_POLICY));
        let first = queue.try_recv().unwrap();
        assert_eq!(first.receipt().len, len_of("1"));
        assert_eq!(first.into_text().len(), len_of("1"));
    }

    #[test]
    fn a_notification_over_the_message_bound_closes_with_1008() {
        let (s, _queue) = session(2, 1 << 20);
        assert!(push(&s, "a") && push(&s, "b"));
        assert!(!push(&s, "c"));
        assert_eq!(s.close_reason().map(|r| r.0), Some(CLOSE_POLICY));
    }

    #[test]
    fn a_notification_over_the_byte_bound_closes_with_1008() {
        let (s, _queue) = session(100, len_of("12345678") + 2);
        assert!(push(&s, "12345678"));
        assert!(!push(&s, "123"));
        assert_eq!(s.close_reason().map(|r| r.0), Some(CLOSE_POLICY));
        assert!(s.fill() >= 0.8);
    }

    #[tokio::test]
    async fn answers_wait_for_room_instead_of_closing() {
        // Room for exactly one notification, and for the first answer but not the second.
        let bound = len_of("note");
        let (s, mut queue) = session(100, bound);
        assert!(s.push_answer("a".repeat(bound - 2).into()).await);
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.push_answer("answer".into()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no room yet: the answer waits");
        assert!(push(&s, "note"), "answers never crowd out notifications");
        let first = queue.recv().await;
        s.sent(first.receipt());
        assert!(waiting.await.unwrap());
        assert!(queue.recv().await.into_text().contains(r#""result":note}"#));
        assert_eq!(queue.recv().await.into_text(), "answer");
        assert!(
            s.close_reason().is_none(),
            "never closed for its own answers"
        );
    }

    #[tokio::test]
    async fn an_answer_larger_than_the_byte_bound_passes_an_empty_queue() {
        let (s, mut queue) = session(4, 4);
        assert!(s.push_answer("a long answer".into()).await);
        assert_eq!(queue.recv().await.into_text(), "a long answer");
    }

    #[tokio::test]
    async fn an_answer_waits_for_a_free_place_when_the_queue_holds_its_bound() {
        let (s, mut queue) = session(2, 1 << 20);
        assert!(push(&s, "a") && push(&s, "b"));
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.push_answer("answer".into()).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !waiting.is_finished(),
            "two messages queued: the answer waits"
        );
        assert!(queue.recv().await.into_text().contains(r#""result":a}"#));
        assert!(waiting.await.unwrap(), "queued once the writer took one");
        assert!(queue.recv().await.into_text().contains(r#""result":b}"#));
        assert_eq!(queue.recv().await.into_text(), "answer");
        assert!(s.close_reason().is_none());
    }

    #[tokio::test]
    async fn nothing_is_queued_once_the_writer_is_gone() {
        let (s, queue) = session(4, 1 << 20);
        drop(queue);
        assert!(!push(&s, "late"));
        assert!(
            s.close_reason().is_none(),
            "a session already gone is not 1008"
        );
        assert_eq!(s.fill(), 0.0, "its bytes are not counted");
        assert!(!s.push_answer("late".into()).await);
    }

    #[tokio::test]
    async fn a_waiting_answer_gives_up_when_the_session_closes() {
        let (s, _queue) = session(1, 1 << 20);
        assert!(push(&s, "x"));
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.push_answer("y".into()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.close(1001, "bye");
        assert!(!waiting.await.unwrap());
    }
}
