//! WebSocket subscriptions owned by ethgate: ids issued here, one upstream feed shared by
//! every client, and fan-out into each client's bounded queue.
//!
//! The feed ([`feed`]) follows one upstream's newHeads at a time through the canonical
//! [`chain::ChainView`]; the logs of each canonical block are fetched once for every live
//! filter together and matched here, so "every log of a canonical block exactly once" holds
//! across failovers by construction, and no filter can hold back heads or other filters.
//!
//! Layout: [`Hub`] (this file: ids, caps, fan-out), [`session`] (a client's bounded queue),
//! [`filter`] (geth's filter object, validation, matching), [`logs`] (logs of a block per
//! filter, retraction on reorgs), [`chain`] (canonical window), [`select`] (which upstream
//! feeds), [`feed`] (the loop), [`pool`] and [`source`] (the upstreams it reads), [`timings`]
//! (the feed's timings from `[health]`, retimed on reload).

pub mod chain;
pub mod feed;
pub mod filter;
mod kind;
pub mod logs;
pub mod pacing;
pub mod poll;
pub mod pool;
pub mod select;
pub mod session;
pub mod source;
pub mod timings;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde_json::value::RawValue;

use crate::jsonrpc::{code, RpcError};
use filter::LogFilter;
use kind::parse_params;
pub use kind::Kind;
use logs::FilterLogs;
pub use session::{QueueLimits, SessionHandle};

/// How many subscriptions may exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per client connection (`server.max_subscriptions_per_connection`).
    pub per_connection: usize,
    /// In the whole process (`server.max_subscriptions`).
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_connection: 1000,
            total: 100_000,
        }
    }
}

/// One subscription's place under both caps, given back when dropped.
struct Slot {
    session: Arc<SessionHandle>,
    total: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.session.slots.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One client subscription.
struct Subscription {
    kind: Kind,
    session: Arc<SessionHandle>,
    filter_key: Option<Arc<str>>,
    _slot: Slot,
}

/// A subscription accepted but not yet delivering: activated once its subscribe response is
/// queued, so no notification can overtake that response. Dropped unactivated, it gives its
/// place under the caps back.
pub struct PendingSubscription {
    id: Arc<str>,
    kind: Kind,
    filter: Option<LogFilter>,
    slot: Slot,
}

impl PendingSubscription {
    /// The id sent to the client.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// -32005, EIP-1474's "limit exceeded", naming the cap that was hit.
fn limit_exceeded(cap: &str, value: usize) -> RpcError {
    RpcError::new(code::LIMIT_EXCEEDED, "limit exceeded").with_data(format!("{cap} is {value}"))
}

/// Distinct log filters by key, with the number of subscriptions using each.
type FilterTable = HashMap<Arc<str>, (Arc<LogFilter>, usize)>;

/// Every client subscription and the filters they need.
pub struct Hub {
    /// By id; the key is shared with the session's list and with every queued notification.
    subscriptions: DashMap<Arc<str>, Subscription>,
    filters: Mutex<FilterTable>,
    limits: Limits,
    total: Arc<AtomicUsize>,
    /// Active subscriptions per kind (by [`Kind::index`]): the feed and the admin endpoints
    /// ask often, and counting through the map would visit every subscription each time.
    by_kind: [AtomicUsize; 4],
    id_base: u128,
    id_counter: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Hub {
    /// An empty hub enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        let random = RandomState::new();
        let high = random.hash_one(0x5eed_u64) as u128;
        let low = random.hash_one(0xface_u64) as u128;
        Hub {
            subscriptions: DashMap::new(),
            filters: Mutex::new(HashMap::new()),
            limits,
            total: Arc::new(AtomicUsize::new(0)),
            by_kind: Default::default(),
            id_base: (high << 64) | low,
            id_counter: AtomicU64::new(0),
        }
    }

    /// A fresh subscription id: `0x` + 32 hex digits, unpredictable and never reused (a
    /// counter through a bijection of the 128-bit space).
    fn next_id(&self) -> Arc<str> {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed) as u128;
        let mixed = self
            .id_base
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        format!("0x{mixed:032x}").into()
    }

    /// Validates `eth_subscribe` params as geth does and takes a place under the caps; the
    /// subscription starts when activated. Nothing refused here ever reaches the feed.
    pub fn prepare(
        &self,
        params: Option<&RawValue>,
        session: &Arc<SessionHandle>,
    ) -> Result<PendingSubscription, RpcError> {
        let (kind, filter) = parse_params(params)?;
        let slot = self.take_slot(session)?;
        Ok(PendingSubscription {
            id: self.next_id(),
            kind,
            filter,
            slot,
        })
    }

    fn take_slot(&self, session: &Arc<SessionHandle>) -> Result<Slot, RpcError> {
        let Limits {
            per_connection,
            total,
        } = self.limits;
        if session.slots.fetch_add(1, Ordering::AcqRel) >= per_connection {
            session.slots.fetch_sub(1, Ordering::AcqRel);
            return Err(limit_exceeded(
                "max_subscriptions_per_connection",
                per_connection,
            ));
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            session.slots.fetch_sub(1, Ordering::AcqRel);
            return Err(limit_exceeded("max_subscriptions", total));
        }
        Ok(Slot {
            session: session.clone(),
            total: self.total.clone(),
        })
    }

    /// Starts delivering to the session the subscription was prepared for.
    pub fn activate(&self, pending: PendingSubscription) {
        let filter_key = pending.filter.map(|filter| {
            let key: Arc<str> = filter.key().into();
            let mut filters = self.lock_filters();
            filters
                .entry(key.clone())
                .or_insert_with(|| (Arc::new(filter), 0))
                .1 += 1;
            key
        });
        let session = pending.slot.session.clone();
        session.remember(&pending.id);
        self.by_kind[pending.kind.index()].fetch_add(1, Ordering::AcqRel);
        let subscription = Subscription {
            kind: pending.kind,
            session,
            filter_key,
            _slot: pending.slot,
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
                .remove_if(&*id, |_, s| s.session.id() == session.id())
            {
                self.release(&subscription);
            }
        }
    }

    /// Uncounts a removed subscription and frees a filter's state with its last subscriber.
    fn release(&self, subscription: &Subscription) {
        self.by_kind[subscription.kind.index()].fetch_sub(1, Ordering::AcqRel);
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
        self.by_kind[kind.index()].load(Ordering::Acquire)
    }

    /// Number of subscriptions of every kind, the process-wide cap's measure.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Whether any client subscription exists.
    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    /// Sends `result` to every subscription of `kind` (logs: see [`Hub::deliver_block`]).
    /// The result is copied once and shared: each queue holds only two references, and each
    /// client's frame is built when its writer sends it.
    pub fn deliver(&self, kind: Kind, result: &str) {
        let result = Arc::new(result.to_string());
        for entry in self.subscriptions.iter() {
            if entry.kind == kind {
                entry.session.push(entry.key(), &result);
            }
        }
    }

    /// Delivers one block: `header` to newHeads subscribers (when given), then to each logs
    /// subscriber the logs matched to its filter, so a client holding both sees a block's
    /// header before its logs.
    pub fn deliver_block(&self, header: Option<&str>, logs: &[FilterLogs]) {
        if let Some(header) = header {
            self.deliver(Kind::NewHeads, header);
        }
        // Each log is copied once here and then shared by every subscriber of its filter.
        let by_key: HashMap<&str, Vec<Arc<String>>> = logs
            .iter()
            .filter(|(_, logs)| !logs.is_empty())
            .map(|(key, logs)| {
                let shared = logs.iter().map(|l| Arc::new(l.to_string())).collect();
                (key.as_ref(), shared)
            })
            .collect();
        if by_key.is_empty() {
            return;
        }
        for entry in self.subscriptions.iter() {
            let Some(logs) = entry.filter_key.as_deref().and_then(|k| by_key.get(k)) else {
                continue;
            };
            for log in logs {
                if !entry.session.push(entry.key(), log) {
                    break;
                }
            }
        }
    }

    /// Closes the sessions holding a logs subscription under one of `keys` with `code`.
    pub fn close_filter_subscribers(&self, keys: &[Arc<str>], code: u16, reason: &'static str) {
        for entry in self.subscriptions.iter() {
            if entry.filter_key.as_ref().is_some_and(|k| keys.contains(k)) {
                entry.session.close(code, reason);
            }
        }
    }

    /// Closes every session holding a subscription, with `code` (1011 when unserved).
    pub fn close_subscribed_sessions(&self, code: u16, reason: &'static str) {
        for entry in self.subscriptions.iter() {
            entry.session.close(code, reason);
        }
    }

    /// The fullest queue among subscribed sessions (see [`SessionHandle::fill`]).
    pub fn fullest_queue(&self) -> f64 {
        self.subscriptions
            .iter()
            .map(|s| s.session.fill())
            .fold(0.0, f64::max)
    }

    /// Closes, with 1008, subscribed sessions whose queue is fuller than `fill`.
    pub fn close_slow_sessions(&self, fill: f64) -> usize {
        let mut closed = 0;
        for entry in self.subscriptions.iter() {
            if entry.session.fill() > fill && !entry.session.is_closing() {
                entry.session.close(
                    session::CLOSE_POLICY,
                    "client too slow: outgoing queue full",
                );
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests;
