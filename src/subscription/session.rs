//! The hub's view of a client WebSocket session: its ordered, bounded outgoing queue and a
//! way to close it with a code.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Close code for a client whose queue overflowed.
pub const CLOSE_POLICY: u16 = 1008;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Handle to one client session's outgoing side.
pub struct SessionHandle {
    id: u64,
    queue: mpsc::Sender<String>,
    closing: CancellationToken,
    close_reason: Mutex<Option<(u16, &'static str)>>,
    /// Ids of this session's subscriptions, so ending the session touches only those.
    subscriptions: Mutex<Vec<String>>,
}

impl SessionHandle {
    /// A handle and the receiving end of its queue of `capacity` messages.
    pub fn new(capacity: usize) -> (SessionHandle, mpsc::Receiver<String>) {
        let (queue, receiver) = mpsc::channel(capacity);
        let handle = SessionHandle {
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            queue,
            closing: CancellationToken::new(),
            close_reason: Mutex::new(None),
            subscriptions: Mutex::new(Vec::new()),
        };
        (handle, receiver)
    }

    /// Unique session number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a text message; a full queue closes the session with 1008 rather than drop it.
    pub fn push(&self, text: String) -> bool {
        match self.queue.try_send(text) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CLOSE_POLICY, "client too slow: outgoing queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(super) fn remember(&self, id: &str) {
        lock(&self.subscriptions).push(id.to_string());
    }

    pub(super) fn forget(&self, id: &str) {
        lock(&self.subscriptions).retain(|known| known != id);
    }

    pub(super) fn take_subscriptions(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.subscriptions))
    }

    /// Asks the session to close with `code`; the first reason given wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut slot = lock(&self.close_reason);
        slot.get_or_insert((code, reason));
        self.closing.cancel();
    }

    /// Completes when someone asked the session to close.
    pub async fn closed(&self) {
        self.closing.cancelled().await
    }

    /// The code and reason the session was asked to close with.
    pub fn close_reason(&self) -> Option<(u16, &'static str)> {
        *lock(&self.close_reason)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each guarded value is replaced or edited in one step: still valid after a panic.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
