//! What the feed shows operators (`/status`): its source and the age of the last head.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the feed shows operators: its source and the age of the last delivered head.
#[derive(Debug, Default)]
pub struct FeedStatus(Mutex<StatusInner>);

#[derive(Debug, Default, Clone)]
pub(super) struct StatusInner {
    pub(super) source: Option<Arc<str>>,
    pub(super) head: Option<u64>,
    pub(super) head_at: Option<std::time::Instant>,
}

/// A copy of [`FeedStatus`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedSnapshot {
    /// The upstream feeding now, if any.
    pub source: Option<Arc<str>>,
    /// The last delivered head.
    pub head: Option<u64>,
    /// Time since that head was delivered.
    pub head_age: Option<Duration>,
}

impl FeedStatus {
    /// The status now.
    pub fn snapshot(&self) -> FeedSnapshot {
        let inner = self.lock().clone();
        FeedSnapshot {
            source: inner.source,
            head: inner.head,
            head_age: inner.head_at.map(|at| at.elapsed()),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        // Fields are overwritten whole: still valid after a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
