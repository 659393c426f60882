//! WebSocket subscriptions owned by ethgate: ids issued here, one upstream feed shared by
//! every client, and fan-out into each client's bounded queue.
//!
//! The feed ([`feed`]) follows one upstream's newHeads at a time through the canonical
//! [`chain::ChainView`]; logs are fetched per canonical block for each distinct filter, so
//! "every log of a canonical block exactly once" holds across failovers by construction.

pub mod chain;
pub mod feed;
pub mod logs;
pub mod session;
pub mod source;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde_json::value::RawValue;

use crate::jsonrpc::RpcError;
use logs::LogFilter;
pub use session::SessionHandle;

/// Subscription kinds, as named in `eth_subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Block headers.
    NewHeads,
    /// Logs matching a filter.
    Logs,
    /// Hashes of pending transactions.
    NewPendingTransactions,
    /// Sync status changes.
    Syncing,
}

impl Kind {
    /// Every kind, for gauges.
    pub const ALL: [Kind; 4] = [
        Kind::NewHeads,
        Kind::Logs,
        Kind::NewPendingTransactions,
        Kind::Syncing,
    ];

    /// The `eth_subscribe` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NewHeads => "newHeads",
            Kind::Logs => "logs",
            Kind::NewPendingTransactions => "newPendingTransactions",
            Kind::Syncing => "syncing",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One client subscription.
struct Subscription {
    kind: Kind,
    session: Arc<SessionHandle>,
    filter_key: Option<Arc<str>>,
}

/// A subscription accepted but not yet delivering: activated once its subscribe response is
/// queued, so no notification can overtake that response.
pub struct PendingSubscription {
    id: String,
    kind: Kind,
    filter: Option<LogFilter>,
}

impl PendingSubscription {
    /// The id sent to the client.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Distinct log filters by key, with the number of subscriptions using each.
type FilterTable = HashMap<Arc<str>, (Arc<LogFilter>, usize)>;

/// Every client subscription and the filters they need.
pub struct Hub {
    subscriptions: DashMap<String, Subscription>,
    filters: Mutex<FilterTable>,
    id_base: u128,
    id_counter: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        let random = RandomState::new();
        let high = random.hash_one(0x5eed_u64) as u128;
        let low = random.hash_one(0xface_u64) as u128;
        Hub {
            subscriptions: DashMap::new(),
            filters: Mutex::new(HashMap::new()),
            id_base: (high << 64) | low,
            id_counter: AtomicU64::new(0),
        }
    }

    /// A fresh subscription id: `0x` + 32 hex digits, unpredictable and never reused (a
    /// counter through a bijection of the 128-bit space).
    fn next_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed) as u128;
        let mixed = self
            .id_base
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        format!("0x{mixed:032x}")
    }

    /// Validates `eth_subscribe` params; the subscription starts when activated.
    pub fn prepare(&self, params: Option<&RawValue>) -> Result<PendingSubscription, RpcError> {
        let invalid = |detail: String| RpcError {
            code: -32602,
            message: "invalid params".into(),
            data: Some(detail),
        };
        let raw = params.ok_or_else(|| invalid("missing subscription kind".into()))?;
        let list: Vec<&RawValue> = serde_json::from_str(raw.get())
            .map_err(|_| invalid("params must be an array".into()))?;
        let name: String = list
            .first()
            .and_then(|k| serde_json::from_str(k.get()).ok())
            .ok_or_else(|| invalid("missing subscription kind".into()))?;
        let kind = Kind::parse(&name).ok_or_else(|| RpcError {
            code: -32601,
            message: format!("no \"{name}\" subscription in eth namespace").into(),
            data: None,
        })?;
        let filter = match kind {
            Kind::Logs => Some(LogFilter::parse(list.get(1).copied()).map_err(invalid)?),
            _ => None,
        };
        Ok(PendingSubscription {
            id: self.next_id(),
            kind,
            filter,
        })
    }

    /// Starts delivering to `session`.
    pub fn activate(&self, pending: PendingSubscription, session: &Arc<SessionHandle>) {
        let filter_key = pending.filter.map(|filter| {
            let key: Arc<str> = filter.key().into();
            let mut filters = self.lock_filters();
            filters
                .entry(key.clone())
                .or_insert_with(|| (Arc::new(filter), 0))
                .1 += 1;
            key
        });
        session.remember(&pending.id);
        let subscription = Subscription {
            kind: pending.kind,
            session: session.clone(),
            filter_key,
        };
        self.subscriptions.insert(pending.id, subscription);
    }

    /// Ends a subscription of `session`; false when it has no such subscription.
    pub fn unsubscribe(&self, session: u64, id: &str) -> bool {
        let removed = self
            .subscriptions
            .remove_if(id, |_, s| s.session.id() == session);
        match removed {
            Some((_, subscription)) => {
                subscription.session.forget(id);
                self.release(&subscription);
                true
            }
            None => false,
        }
    }

    /// Ends every subscription of a session that went away (only its own ids are touched,
    /// so many sessions closing at once cost linear time).
    pub fn drop_session(&self, session: &SessionHandle) {
        for id in session.take_subscriptions() {
            if let Some((_, subscription)) = self
                .subscriptions
                .remove_if(&id, |_, s| s.session.id() == session.id())
            {
                self.release(&subscription);
            }
        }
    }

    fn release(&self, subscription: &Subscription) {
        let Some(key) = &subscription.filter_key else {
            return;
        };
        let mut filters = self.lock_filters();
        if let Some(entry) = filters.get_mut(key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                filters.remove(key);
            }
        }
    }

    fn lock_filters(&self) -> std::sync::MutexGuard<'_, FilterTable> {
        // The map stays consistent under any panic: every update is a single insert/remove.
        self.filters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Distinct log filters in use.
    pub fn active_filters(&self) -> Vec<(Arc<str>, Arc<LogFilter>)> {
        self.lock_filters()
            .iter()
            .map(|(k, (f, _))| (k.clone(), f.clone()))
            .collect()
    }

    /// Number of subscriptions of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.subscriptions.iter().filter(|s| s.kind == kind).count()
    }

    /// Whether any client subscription exists.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    /// Sends `result` to every subscription of `kind` (and `filter_key` for logs).
    pub fn deliver(&self, kind: Kind, filter_key: Option<&str>, result: &str) {
        for entry in self.subscriptions.iter() {
            let subscription = entry.value();
            if subscription.kind != kind || subscription.filter_key.as_deref() != filter_key {
                continue;
            }
            let text = format!(
                r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"{}","result":{result}}}}}"#,
                entry.key()
            );
            subscription.session.push(text);
        }
    }

    /// Closes every session holding a subscription, with `code` (1011 when unserved).
    pub fn close_subscribed_sessions(&self, code: u16, reason: &'static str) {
        for entry in self.subscriptions.iter() {
            entry.session.close(code, reason);
        }
    }
}

#[cfg(test)]
mod tests;
