//! What the feed shows operators: its source and the age of the last head (`/status`), and
//! when a new source counts as serving (the failover metric and log lines).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::super::pool::SourcePool;
use super::{Feed, Following};
use crate::metrics::FailoverKind;

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

impl<P: SourcePool> Feed<P> {
    /// The source counts as serving once it passed a rotation check or gave a head: only
    /// then does the unserved time end (a source that connects and fails at once does not
    /// reset `subscription_grace`).
    pub(super) fn establish(&mut self, following: &mut Following) {
        if std::mem::replace(&mut following.established, true) {
            return;
        }
        let unserved = self.unserved_since.take().map(|since| since.elapsed());
        let subscribed = !self.hub.is_empty();
        if following.failover && subscribed {
            self.metrics.failover(FailoverKind::Subscription);
            self.metrics
                .subscription_failover(unserved.unwrap_or_default());
        }
        let duration_ms = unserved.unwrap_or_default().as_millis() as u64;
        if following.failover {
            let from = following.previous.as_deref().unwrap_or("");
            tracing::warn!(
                from,
                to = &*following.name,
                duration_ms,
                subscriptions = subscribed,
                "subscription failover"
            );
        } else if unserved.is_some() {
            tracing::info!(
                upstream = &*following.name,
                duration_ms,
                "subscription source back"
            );
        }
    }
}
