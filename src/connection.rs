//! One client connection's place in `max_connections` and in the open-connection count: held
//! by the connection task and, after a WebSocket upgrade, by the session, released when the
//! last holder drops it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

/// Open client connections, for /status.
#[derive(Debug, Default)]
pub struct ConnectionCount(AtomicUsize);

impl ConnectionCount {
    /// Current number of open client connections.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One client connection's place in `max_connections` and in the open count; released when
/// the last holder (the connection task, or a WebSocket session after an upgrade) drops it.
#[derive(Debug)]
pub struct ConnectionGuard {
    count: Arc<ConnectionCount>,
    _permit: OwnedSemaphorePermit,
}

impl ConnectionGuard {
    /// Takes one place: `permit` in `max_connections`, one in the open count.
    pub fn new(count: Arc<ConnectionCount>, permit: OwnedSemaphorePermit) -> Self {
        count.0.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            count,
            _permit: permit,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.count.0.fetch_sub(1, Ordering::Relaxed);
    }
}
