//! The calls one multiplexed connection carries: those waiting for their answer, and those
//! that gave up (timed out, moved elsewhere) whose answer may still come. Answers are placed
//! by their ids; when the connection ends, every waiting call hears why.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::super::super::{Body, SendError};
use super::super::ids::first_numeric_id;

/// Calls that gave up are remembered until their answer comes, at most this many (the oldest
/// is forgotten first): while one is outstanding, an answer nobody can place may be its.
const MAX_ABANDONED: usize = 1024;

/// One request waiting for its answer: its ids on the connection are `base..base + len`.
pub(in super::super) struct Waiting {
    pub(in super::super) len: u64,
    pub(in super::super) answer: oneshot::Sender<Result<Body, SendError>>,
}

#[derive(Default)]
struct Calls {
    waiting: BTreeMap<u64, Waiting>,
    /// `base → len` of calls that gave up before their answer came.
    abandoned: BTreeMap<u64, u64>,
}

impl Calls {
    /// Whether exactly one call waits and no answer of another may still come: then an answer
    /// that names no call, or breaks the connection, is that call's.
    fn alone(&self) -> bool {
        self.waiting.len() == 1 && self.abandoned.is_empty()
    }

    /// Where the answer whose first numeric id is `id` goes.
    fn place(&mut self, id: Option<u64>) -> Placed {
        let Some(id) = id else {
            return match self.alone() {
                true => self
                    .waiting
                    .pop_first()
                    .map_or(Placed::Nowhere, |(_, waiting)| Placed::To(waiting)),
                false => Placed::Nowhere,
            };
        };
        if let Some(base) = holding(&self.waiting, id, |w| w.len) {
            return self
                .waiting
                .remove(&base)
                .map_or(Placed::Nowhere, Placed::To);
        }
        match holding(&self.abandoned, id, |&len| len) {
            Some(base) => {
                self.abandoned.remove(&base);
                Placed::Late
            }
            None => Placed::Nowhere,
        }
    }
}

/// The base of the entry whose ids include `id`.
fn holding<T>(map: &BTreeMap<u64, T>, id: u64, len: impl Fn(&T) -> u64) -> Option<u64> {
    let (&base, entry) = map.range(..=id).next_back()?;
    (id < base + len(entry).max(1)).then_some(base)
}

enum Placed {
    To(Waiting),
    /// The answer of a call that gave up.
    Late,
    Nowhere,
}

/// Why a connection ended, as its waiting calls will hear it.
pub(in super::super) enum Reason {
    /// An answer over `max_response_bytes` that names no call while several wait.
    TooLarge(usize),
    Other(String),
}

/// The calls of one connection, shared by the calls and the connection's task.
#[derive(Clone, Default)]
pub(in super::super) struct Pending(Arc<Mutex<Calls>>);

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Calls> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a call under `base`; when the returned guard drops before its answer came,
    /// the call is remembered as abandoned.
    pub(in super::super) fn wait(&self, base: u64, waiting: Waiting) -> WaitGuard<'_> {
        self.lock().waiting.insert(base, waiting);
        WaitGuard(self, base)
    }

    /// Hands an answer (object or batch array) to the call whose ids it carries. An answer
    /// without a usable id goes to the only call waiting, whose caller judges it; with more
    /// than one, nobody can tell whose it is. The answers of calls that gave up are dropped.
    pub(in super::super) fn deliver(&self, answer: Body, upstream: &str) {
        // Read before the lock: an answer in an unusual layout is parsed to find its id.
        let id = first_numeric_id(&answer);
        let placed = self.lock().place(id);
        match placed {
            Placed::To(waiting) => {
                let _ = waiting.answer.send(Ok(answer));
            }
            Placed::Late => {}
            Placed::Nowhere => {
                let shown = String::from_utf8_lossy(&answer[..answer.len().min(200)]);
                tracing::warn!(
                    upstream,
                    answer = %shown,
                    "an answer on the upstream WebSocket matches no call: dropped"
                );
            }
        }
    }

    /// Fails the call an answer over `limit` (skipped unread) belongs to, placed by the id
    /// its opening names, or, without one, charged to the lone call waiting. `false` when
    /// nobody can tell whose it was: the connection must go, as with [`Reason::TooLarge`].
    pub(in super::super) fn reject(&self, id: Option<u64>, limit: usize, upstream: &str) -> bool {
        let mut calls = self.lock();
        if id.is_none() && !calls.alone() {
            return false;
        }
        let placed = calls.place(id);
        drop(calls);
        match placed {
            Placed::To(waiting) => {
                let _ = waiting.answer.send(Err(SendError::TooLarge(limit)));
            }
            Placed::Late => {}
            Placed::Nowhere => tracing::warn!(
                upstream,
                id,
                "an answer over {limit} bytes on the upstream WebSocket matches no call: dropped"
            ),
        }
        true
    }

    /// Fails every call still waiting. An over-large answer is charged to the call it belongs
    /// to when that call is alone; the others sharing the connection were only caught in it.
    pub(in super::super) fn fail_all(&self, reason: &Reason) {
        let calls = std::mem::take(&mut *self.lock());
        let alone = calls.alone();
        for waiting in calls.waiting.into_values() {
            let error = match reason {
                Reason::TooLarge(limit) if alone => SendError::TooLarge(*limit),
                Reason::TooLarge(limit) => SendError::Collateral(format!(
                    "upstream WebSocket dropped for an answer over {limit} bytes"
                )),
                Reason::Other(reason) => {
                    SendError::NoAnswer(format!("upstream WebSocket {reason}"))
                }
            };
            let _ = waiting.answer.send(Err(error));
        }
    }

    fn forget(&self, base: u64) {
        let mut calls = self.lock();
        if let Some(waiting) = calls.waiting.remove(&base) {
            calls.abandoned.insert(base, waiting.len);
            if calls.abandoned.len() > MAX_ABANDONED {
                calls.abandoned.pop_first();
            }
        }
    }
}

/// Forgets a call however it ends; one that ends before its answer is remembered as abandoned.
pub(in super::super) struct WaitGuard<'a>(&'a Pending, u64);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(pending: &Pending, base: u64, len: u64) -> (WaitGuard<'_>, Receiver) {
        let (answer, answered) = oneshot::channel();
        (pending.wait(base, Waiting { len, answer }), answered)
    }

    type Receiver = oneshot::Receiver<Result<Body, SendError>>;

    fn answer(id: &str) -> Body {
        Body::Text(format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x1"}}"#).into())
    }

    #[test]
    fn answers_are_placed_by_id_and_late_ones_are_dropped() {
        let pending = Pending::default();
        let (a, mut a_rx) = waiting(&pending, 10, 2);
        let (_b, mut b_rx) = waiting(&pending, 12, 1);
        pending.deliver(answer("11"), "u");
        assert!(a_rx
            .try_recv()
            .expect("placed by a batch member's id")
            .is_ok());
        drop(a);
        // A call that gave up: its answer is dropped, not given to another.
        let (c, mut c_rx) = waiting(&pending, 20, 1);
        drop(c);
        pending.deliver(answer("20"), "u");
        assert!(c_rx.try_recv().is_err());
        assert!(b_rx.try_recv().is_err());
        assert!(
            pending.lock().abandoned.is_empty(),
            "the late answer cleared its marker"
        );
    }

    #[test]
    fn an_answer_without_an_id_goes_to_the_lone_call_only() {
        let pending = Pending::default();
        let (_a, mut a_rx) = waiting(&pending, 1, 1);
        let (b, mut b_rx) = waiting(&pending, 2, 1);
        pending.deliver(answer("null"), "u");
        assert!(a_rx.try_recv().is_err() && b_rx.try_recv().is_err());
        drop(b);
        // b gave up but its answer may still come: still nobody's.
        pending.deliver(answer("null"), "u");
        assert!(a_rx.try_recv().is_err());
        pending.deliver(answer("2"), "u");
        pending.deliver(answer("null"), "u");
        assert!(a_rx.try_recv().expect("the lone call's").is_ok());
    }

    #[test]
    fn an_over_large_answer_is_charged_to_a_lone_call_only() {
        let pending = Pending::default();
        let (_a, mut a_rx) = waiting(&pending, 1, 1);
        pending.fail_all(&Reason::TooLarge(64));
        assert!(matches!(a_rx.try_recv(), Ok(Err(SendError::TooLarge(64)))));

        // A call that timed out may be the one whose answer is too large.
        let pending = Pending::default();
        let (gave_up, _) = waiting(&pending, 1, 1);
        drop(gave_up);
        let (_b, mut b_rx) = waiting(&pending, 2, 1);
        pending.fail_all(&Reason::TooLarge(64));
        assert!(matches!(b_rx.try_recv(), Ok(Err(SendError::Collateral(_)))));
    }

    #[test]
    fn a_skipped_answer_fails_the_call_it_names_or_else_a_lone_one() {
        let pending = Pending::default();
        let (_a, mut a_rx) = waiting(&pending, 10, 2);
        let (_b, mut b_rx) = waiting(&pending, 12, 1);
        assert!(
            pending.reject(Some(11), 64, "u"),
            "named: the connection goes on"
        );
        assert!(matches!(a_rx.try_recv(), Ok(Err(SendError::TooLarge(64)))));
        assert!(b_rx.try_recv().is_err(), "the other call still waits");
        // Nobody named while another answer may be due: nobody can tell.
        let (c, _) = waiting(&pending, 20, 1);
        drop(c);
        assert!(!pending.reject(None, 64, "u"));
        assert!(b_rx.try_recv().is_err());
        // A late answer of a call that gave up is dropped; then b is alone.
        assert!(pending.reject(Some(20), 64, "u"));
        assert!(pending.reject(None, 64, "u"));
        assert!(matches!(b_rx.try_recv(), Ok(Err(SendError::TooLarge(64)))));
        // Naming nobody waiting: dropped, the connection goes on.
        assert!(pending.reject(Some(99), 64, "u"));
    }

    #[test]
    fn abandoned_calls_are_remembered_up_to_a_bound() {
        let pending = Pending::default();
        for base in 0..(MAX_ABANDONED as u64 + 10) {
            drop(waiting(&pending, base, 1));
        }
        let calls = pending.lock();
        assert_eq!(calls.abandoned.len(), MAX_ABANDONED);
        assert_eq!(
            calls.abandoned.keys().next(),
            Some(&10),
            "the oldest went first"
        );
    }
}
