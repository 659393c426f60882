//! The soak's schedule: a seeded list of fault events, planned against a model of how many
//! nodes are live, dead or lagging, so that at least one node is always live and every
//! event is applicable when its turn comes. The kinds, order and parameters of the events are
//! a function of the seed alone; which node "the feed source" is gets looked up at run time.

/// splitmix64: tiny, seedable, good enough to draw a schedule (no dependency needed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Which node an event hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The node feeding the subscriptions (if it is live; else a live node picked by `r`).
    Source(u64),
    /// A live node picked by `r` among the live ones.
    Any(u64),
}

/// A hostile or broken subscribe from a separate client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poison {
    /// A logs filter with 5 topic positions: geth refuses it with "exceed max topics".
    FiveTopics,
    /// A logs filter whose address is 2 bytes long.
    BadAddress,
    /// More subscriptions on one socket than `max_subscriptions_per_connection` allows.
    ManySubscriptions,
}

/// One event of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// SIGKILL a live node.
    Kill(Target),
    /// Restart a dead node (picked by `r` among the dead) and catch it up.
    Revive(u64),
    /// Stop mining a live node: it falls behind.
    Lag(Target),
    /// Catch up a lagging node (picked by `r` among them).
    CatchUp(u64),
    /// The feeding node builds a branch of `depth` blocks of its own, then is reorged back.
    Reorg { depth: u64 },
    /// Cut the upstream WebSocket of a node (via its relay), refusing reconnects for a while.
    DropWs { target: Target, refuse_ms: u64 },
    /// A poisonous subscribe from a client of its own.
    Poison(Poison),
    /// Nothing but blocks.
    Quiet { blocks: u64 },
}

impl Step {
    /// Short name of the event's kind (for figures).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Kill(_) => "kill",
            Step::Revive(_) => "revive",
            Step::Lag(_) => "lag",
            Step::CatchUp(_) => "catch_up",
            Step::Reorg { .. } => "reorg",
            Step::DropWs { .. } => "drop_ws",
            Step::Poison(_) => "poison",
            Step::Quiet { .. } => "quiet",
        }
    }
}

/// Kinds every schedule must contain (each at least once).
const REQUIRED: [&str; 7] = [
    "kill", "revive", "lag", "catch_up", "reorg", "drop_ws", "poison",
];

/// How many nodes are in which state, as the schedule expects it.
#[derive(Debug, Clone, Copy)]
struct Model {
    live: u64,
    dead: u64,
    lagging: u64,
}

/// A schedule of `events` steps for `nodes` nodes (at least 2), without the kinds named in
/// `skip` (see [`Step::kind`]; for bisecting a failure). Every other required kind appears at
/// least once when `events` leaves room for it: plans are redrawn (from the same seed's
/// stream) until they do.
pub fn plan(seed: u64, events: usize, nodes: u64, skip: &[String]) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let required: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|k| !skip.iter().any(|s| s == k))
        .collect();
    let mut best = Vec::new();
    for _ in 0..200 {
        let steps = draw(&mut rng, events, nodes.max(2), skip);
        let complete = required
            .iter()
            .all(|k| steps.iter().any(|s| s.kind() == *k));
        if complete || events < required.len() + 2 {
            return steps;
        }
        best = steps;
    }
    best
}

fn draw(rng: &mut Rng, events: usize, nodes: u64, skip: &[String]) -> Vec<Step> {
    let mut m = Model {
        live: nodes,
        dead: 0,
        lagging: 0,
    };
    let mut steps = Vec::with_capacity(events);
    while steps.len() < events {
        let mut options: Vec<(u64, Step)> = Vec::new();
        let target = |rng: &mut Rng, source_percent| {
            let r = rng.next_u64();
            if rng.chance(source_percent) {
                Target::Source(r)
            } else {
                Target::Any(r)
            }
        };
        if m.live >= 2 {
            options.push((3, Step::Kill(target(rng, 50))));
            options.push((3, Step::Lag(target(rng, 50))));
            options.push((
                3,
                Step::Reorg {
                    depth: 1 + rng.below(5),
                },
            ));
        }
        if m.dead >= 1 {
            options.push((
                if m.live == 1 { 6 } else { 3 },
                Step::Revive(rng.next_u64()),
            ));
        }
        if m.lagging >= 1 {
            options.push((
                if m.live == 1 { 6 } else { 3 },
                Step::CatchUp(rng.next_u64()),
            ));
        }
        let refuse_ms = 500 * rng.below(7);
        options.push((
            3,
            Step::DropWs {
                target: target(rng, 70),
                refuse_ms,
            },
        ));
        {
            let kind = match rng.below(3) {
                0 => Poison::FiveTopics,
                1 => Poison::BadAddress,
                _ => Poison::ManySubscriptions,
            };
            options.push((2, Step::Poison(kind)));
        }
        options.push((
            1,
            Step::Quiet {
                blocks: 1 + rng.below(3),
            },
        ));
        options.retain(|(_, s)| !skip.iter().any(|k| k == s.kind()));
        let total: u64 = options.iter().map(|o| o.0).sum();
        let mut pick = rng.below(total);
        let step = options
            .iter()
            .find(|(w, _)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|o| o.1)
            .unwrap_or(Step::Quiet { blocks: 1 });
        match step {
            Step::Kill(_) => (m.live, m.dead) = (m.live - 1, m.dead + 1),
            Step::Lag(_) => (m.live, m.lagging) = (m.live - 1, m.lagging + 1),
            Step::Revive(_) => (m.live, m.dead) = (m.live + 1, m.dead - 1),
            Step::CatchUp(_) => (m.live, m.lagging) = (m.live + 1, m.lagging - 1),
            _ => {}
        }
        steps.push(step);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_always_one_live_node() {
        for seed in 0..200u64 {
            let a = plan(seed, 60, 3, &[]);
            assert_eq!(a, plan(seed, 60, 3, &[]), "seed {seed}");
            assert_eq!(a.len(), 60);
            let (mut live, mut dead, mut lagging) = (3i64, 0i64, 0i64);
            for s in &a {
                match s {
                    Step::Kill(_) => (live, dead) = (live - 1, dead + 1),
                    Step::Lag(_) => (live, lagging) = (live - 1, lagging + 1),
                    Step::Revive(_) => (live, dead) = (live + 1, dead - 1),
                    Step::CatchUp(_) => (live, lagging) = (live + 1, lagging - 1),
                    Step::Reorg { depth } => assert!((1..=5).contains(depth) && live >= 2),
                    _ => {}
                }
                assert!(live >= 1 && dead >= 0 && lagging >= 0, "seed {seed}: {a:?}");
            }
            for k in REQUIRED {
                assert!(a.iter().any(|s| s.kind() == k), "seed {seed} lacks {k}");
            }
        }
        assert_ne!(plan(1, 30, 3, &[]), plan(2, 30, 3, &[]));
    }

    #[test]
    fn skipped_kinds_are_never_planned() {
        let skip = vec!["poison".to_string(), "reorg".to_string()];
        for seed in 0..50u64 {
            let p = plan(seed, 40, 3, &skip);
            assert!(p
                .iter()
                .all(|s| !matches!(s, Step::Poison(_) | Step::Reorg { .. })));
            assert!(p.iter().any(|s| s.kind() == "kill"), "seed {seed}");
        }
    }
}
