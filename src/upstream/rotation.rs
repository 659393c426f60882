//! The "left rotation" signal of one upstream: calls in flight on it wait on this to move
//! away at once when the health model takes it out, instead of waiting for their timeout.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::health::State;
use super::Upstream;

impl Upstream {
    /// Resolves once this upstream is out of rotation (at once if it already is), with the
    /// reason. A call in flight races its attempt against this, so a node that froze costs the
    /// call the health model's detection time rather than `request_timeout`.
    pub async fn left_rotation(&self) -> Arc<str> {
        let mut rotation = self.rotation.subscribe();
        let reason = match rotation.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            // The sender lives as long as `self`, which this future borrows.
            Err(_) => None,
        };
        reason.unwrap_or_else(|| "upstream removed".into())
    }

    /// Stores a newly evaluated state and returns the previous one; the rotation signal
    /// follows, with `reason` (built only on the way out) telling waiting calls why.
    pub(super) fn set_state(&self, state: State, reason: impl FnOnce() -> String) -> State {
        let previous = State::from_u8(self.state.swap(state as u8, Ordering::AcqRel));
        let healthy = state == State::Healthy;
        // Compared with the signal, not with `previous`: a reload stores carried-over states
        // directly, and the signal must catch up with them here.
        self.rotation.send_if_modified(|out| {
            if out.is_none() == healthy {
                return false;
            }
            *out = (!healthy).then(|| reason().into());
            true
        });
        previous
    }
}
