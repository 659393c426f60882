//! Balance watch: polls `eth_getBalance` of configured addresses through the router and warns
//! once each time a balance crosses below its minimum.

use std::fmt::Write;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::WatchConfig;
use crate::jsonrpc::Call;
use crate::router::{Framing, Router};

const WEI_PER_ETHER: f64 = 1e18;

/// One watched address and its last known balance.
pub struct Watched {
    /// What to watch and how often.
    pub config: WatchConfig,
    balance_wei: Mutex<Option<u128>>,
}

impl Watched {
    /// Last known balance in wei.
    pub fn balance_wei(&self) -> Option<u128> {
        *self.balance_wei.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new balance; returns `Some(below)` when it crossed the minimum (or is the
    /// first reading and below it).
    fn record(&self, wei: u128) -> Option<bool> {
        let mut slot = self.balance_wei.lock().unwrap_or_else(|p| p.into_inner());
        let min = self.config.min_balance_wei;
        let was_below = slot.map(|old| old < min);
        *slot = Some(wei);
        let below = wei < min;
        (was_below != Some(below) && (below || was_below.is_some())).then_some(below)
    }
}

/// Every watched address.
#[derive(Default)]
pub struct Balances(pub Vec<Arc<Watched>>);

impl Balances {
    /// Watches every configured address (nothing polled until spawned).
    pub fn new(configs: &[WatchConfig]) -> Self {
        Balances(
            configs
                .iter()
                .map(|config| {
                    Arc::new(Watched {
                        config: config.clone(),
                        balance_wei: Mutex::new(None),
                    })
                })
                .collect(),
        )
    }

    /// Starts one polling task per address.
    pub fn spawn(
        &self,
        router: &Arc<Router>,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: &CancellationToken,
    ) {
        for watched in &self.0 {
            tracker.spawn(poll(watched.clone(), router.clone(), shutdown.clone()));
        }
    }

    /// `ethgate_account_balance_ether` and `ethgate_account_min_balance_ether`.
    pub fn render(&self, out: &mut String) {
        crate::metrics::header(
            out,
            "ethgate_account_balance_ether",
            "gauge",
            "Balance of a watched address.",
        );
        for watched in &self.0 {
            if let Some(wei) = watched.balance_wei() {
                let address = &watched.config.address;
                let ether = wei as f64 / WEI_PER_ETHER;
                let _ = writeln!(
                    out,
                    "ethgate_account_balance_ether{{address=\"{address}\"}} {ether}"
                );
            }
        }
        let name = "ethgate_account_min_balance_ether";
        crate::metrics::header(
            out,
            name,
            "gauge",
            "Configured minimum balance of a watched address.",
        );
        for watched in &self.0 {
            let min = watched.config.min_balance_wei as f64 / WEI_PER_ETHER;
            let _ = writeln!(
                out,
                "{name}{{address=\"{}\"}} {min}",
                watched.config.address
            );
        }
    }

    /// The `/status` entries.
    pub fn status(&self) -> Vec<serde_json::Value> {
        self.0
            .iter()
            .map(|w| {
                let wei = w.balance_wei();
                serde_json::json!({
                    "address": w.config.address,
                    "balance_ether": wei.map(|wei| wei as f64 / WEI_PER_ETHER),
                    "min_balance_ether": w.config.min_balance_wei as f64 / WEI_PER_ETHER,
                    "below_min": wei.map(|wei| wei < w.config.min_balance_wei),
                })
            })
            .collect()
    }
}

async fn poll(watched: Arc<Watched>, router: Arc<Router>, shutdown: CancellationToken) {
    let params = format!("[\"{}\",\"latest\"]", watched.config.address);
    let Ok(params) = RawValue::from_string(params) else {
        return;
    };
    let mut ticker = tokio::time::interval(watched.config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match fetch_balance(&router, &params).await {
            Ok(wei) => report(&watched, wei),
            Err(error) => {
                tracing::debug!(address = %watched.config.address, %error, "balance poll failed")
            }
        }
    }
}

async fn fetch_balance(router: &Router, params: &RawValue) -> Result<u128, String> {
    let id = RawValue::from_string("1".into()).map_err(|e| e.to_string())?;
    let call = Call::new(Some(&id), "eth_getBalance".into(), Some(params));
    let replies = router
        .forward(&[&call], Framing::Single)
        .await
        .map_err(|e| e.message.to_string())?;
    let reply = replies.into_iter().flatten().next().ok_or("no reply")?;
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(&reply.body(&id)).map_err(|e| e.to_string())?;
    let hex = answer.result.ok_or("eth_getBalance returned an error")?;
    let digits = hex
        .strip_prefix("0x")
        .ok_or("balance is not a hex quantity")?;
    u128::from_str_radix(digits, 16).map_err(|e| e.to_string())
}

fn report(watched: &Watched, wei: u128) {
    let address = &watched.config.address;
    let ether = wei as f64 / WEI_PER_ETHER;
    let min_ether = watched.config.min_balance_wei as f64 / WEI_PER_ETHER;
    match watched.record(wei) {
        Some(true) => tracing::warn!(
            address,
            balance_ether = ether,
            min_balance_ether = min_ether,
            "balance below minimum"
        ),
        Some(false) => tracing::info!(
            address,
            balance_ether = ether,
            min_balance_ether = min_ether,
            "balance back above minimum"
        ),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn watched(min: u128) -> Watched {
        Watched {
            config: WatchConfig {
                address: "0x00".into(),
                min_balance_wei: min,
                interval: Duration::from_secs(60),
            },
            balance_wei: Mutex::new(None),
        }
    }

    #[test]
    fn warns_once_per_crossing() {
        let w = watched(100);
        assert_eq!(w.record(50), Some(true), "first reading below warns");
        assert_eq!(w.record(40), None, "still below: no repeat");
        assert_eq!(w.record(150), Some(false), "recovery is reported");
        assert_eq!(w.record(160), None);
        assert_eq!(w.record(99), Some(true));
    }

    #[test]
    fn first_reading_above_is_quiet() {
        assert_eq!(watched(100).record(500), None);
    }
}
