//! What to run, from the environment (see the crate doc).

use std::time::Duration;

/// Default fan-out sizes.
const FANOUT_CLIENTS: [usize; 3] = [100, 1_000, 10_000];
/// File descriptors kept free besides the client sockets.
const FD_MARGIN: usize = 256;

/// What to run, from the environment.
pub struct Plan {
    pub quick: bool,
    pub warmup: Duration,
    pub measure: Duration,
    pub rounds: usize,
    pub fanout: Vec<usize>,
    pub heads: u64,
    pub head_every: Duration,
    /// Clients the fd limit allows in this process (and in ethgate).
    pub fd_soft_limit: Option<usize>,
    pub clients_capped: bool,
    /// `ETHGATE_WS_BENCH_PARTS` (`rr`, `fanout`; both when unset).
    pub parts_rr: bool,
    pub parts_fanout: bool,
}

impl Plan {
    /// The plan the environment asks for.
    pub fn from_env() -> Plan {
        let quick = std::env::var("ETHGATE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut fanout = std::env::var("ETHGATE_WS_BENCH_CLIENTS")
            .ok()
            .map(|v| {
                v.split([' ', ','])
                    .filter_map(|n| n.replace('_', "").parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .collect::<Vec<usize>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| FANOUT_CLIENTS.to_vec());
        fanout.sort_unstable();
        fanout.dedup();
        let parts = std::env::var("ETHGATE_WS_BENCH_PARTS").unwrap_or_default();
        let fd_soft_limit = open_files_soft_limit();
        let mut clients_capped = false;
        if let Some(limit) = fd_soft_limit {
            let max = limit.saturating_sub(FD_MARGIN).max(1);
            for n in &mut fanout {
                if *n > max {
                    *n = max;
                    clients_capped = true;
                }
            }
            fanout.dedup();
        }
        let (warmup, measure, rounds, heads) = if quick {
            (Duration::from_millis(100), Duration::from_millis(500), 1, 4)
        } else {
            (
                Duration::from_millis(500),
                Duration::from_millis(2500),
                2,
                10,
            )
        };
        Plan {
            quick,
            warmup,
            measure,
            rounds,
            fanout,
            heads: env_number("ETHGATE_WS_BENCH_HEADS").unwrap_or(heads).max(1),
            head_every: Duration::from_millis(
                env_number("ETHGATE_WS_BENCH_HEAD_MS").unwrap_or(300),
            ),
            fd_soft_limit,
            clients_capped,
            parts_rr: parts.is_empty() || parts.contains("rr"),
            parts_fanout: parts.is_empty() || parts.contains("fanout"),
        }
    }
}

/// A positive number from the environment.
fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .filter(|&n: &u64| n > 0)
}

/// Soft "Max open files" of this process (the child inherits it).
fn open_files_soft_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
