//! The "left rotation" signal of one upstream: calls in flight on it wait on this to move
//! away at once when the health model takes it out, instead of waiting for their timeout.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::health::State;
use super::Upstream;

/// Whether an upstream is out of rotation and why, and the calls waiting for it to leave.
///
/// Every call waits on it, so waiting must cost little: one waiter registered and removed on
/// a `Notify`, where a `watch` receiver cost a subscription, a read lock, a random pick among
/// its notifiers and the waiter, per call.
#[derive(Debug)]
pub(super) struct Rotation {
    /// `None` while in rotation, else why not.
    out: Mutex<Option<Arc<str>>>,
    left: Notify,
}

impl Rotation {
    /// Out of rotation for `reason`, until the first evaluation says otherwise.
    pub(super) fn out_for(reason: &str) -> Self {
        Rotation {
            out: Mutex::new(Some(reason.into())),
            left: Notify::new(),
        }
    }

    fn out(&self) -> std::sync::MutexGuard<'_, Option<Arc<str>>> {
        // Only ever replaced whole: a panic elsewhere cannot leave it half written.
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Upstream {
    /// Resolves once this upstream is out of rotation (at once if it already is), with the
    /// reason. A call in flight races its attempt against this, so a node that froze costs the
    /// call the health model's detection time rather than `request_timeout`.
    pub async fn left_rotation(&self) -> Arc<str> {
        loop {
            // Created before the state is read: `notify_waiters` reaches a future from its
            // creation on, so a departure in between still wakes this one.
            let left = pin!(self.rotation.left.notified());
            if let Some(reason) = self.rotation.out().clone() {
                return reason;
            }
            left.await;
        }
    }

    /// Stores a newly evaluated state and returns the previous one; the rotation signal
    /// follows, with `reason` (built only on the way out) telling waiting calls why.
    pub(super) fn set_state(&self, state: State, reason: impl FnOnce() -> String) -> State {
        let previous = State::from_u8(self.state.swap(state as u8, Ordering::AcqRel));
        let healthy = state == State::Healthy;
        // Compared with the signal, not with `previous`: a reload stores carried-over states
        // directly, and the signal must catch up with them here.
        let mut out = self.rotation.out();
        if out.is_none() != healthy {
            *out = (!healthy).then(|| reason().into());
            drop(out);
            if !healthy {
                self.rotation.left.notify_waiters();
            }
        }
        previous
    }
}
