//! Carrying health across a config reload: an upstream whose endpoints (and the one its calls
//! use) did not change keeps
//! its facts, state, counters and the sticky selection, so a reload moves no traffic by itself.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Upstreams;

impl Upstreams {
    /// Takes over what `previous` knew about upstreams that kept their name and endpoints,
    /// then evaluates every state at once (a new set starts "started": no start-up round).
    pub fn carry_over(&self, previous: &Upstreams) {
        if self.expected_chain_id.get().is_none() {
            if let Some(id) = previous.chain_id() {
                let _ = self.expected_chain_id.set(id);
            }
        }
        let selected_name = previous.selected().map(|u| u.name().to_string());
        {
            let old_facts = previous.lock_facts();
            let mut facts = self.lock_facts();
            for (index, upstream) in self.list.iter().enumerate() {
                let Some(old) = previous.list.iter().find(|o| {
                    o.config.name == upstream.config.name
                        && o.config.http == upstream.config.http
                        && o.config.ws == upstream.config.ws
                        // Health was judged over the call transport: another is unproven.
                        && o.config.calls == upstream.config.calls
                }) else {
                    continue;
                };
                facts[index] = old_facts[old.index].clone();
                upstream
                    .state
                    .store(old.state.load(Ordering::Acquire), Ordering::Release);
                upstream.head.store(old.head(), Ordering::Relaxed);
                upstream.latency_micros.store(
                    old.latency_micros.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                for (mine, theirs) in upstream.attempts.iter().zip(&old.attempts) {
                    mine.store(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                if selected_name.as_deref() == Some(upstream.name()) {
                    self.selected.store(index, Ordering::Release);
                }
            }
            self.started.store(true, Ordering::Release);
            self.publish(&facts, Instant::now());
        }
    }
}
