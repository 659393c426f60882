//! Which upstream feeds subscriptions: pure decisions over a snapshot of the upstream set, so
//! the rules are unit-tested without sockets.

use std::sync::Arc;

/// Blocks another upstream must be ahead of the delivered head before the source is left.
pub const FALLEN_BEHIND_BLOCKS: u64 = 2;

/// What the feed knows of one upstream when choosing a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Upstream name (names survive reloads; positions do not).
    pub name: Arc<str>,
    /// Health state, as `/status` shows it.
    pub state: &'static str,
    /// In rotation: healthy by the prober's judgement.
    pub in_rotation: bool,
    /// Can feed subscriptions at all.
    pub can_feed: bool,
    /// Feeds by HTTP polling (no WebSocket endpoint): used only when no WebSocket one can.
    pub polled: bool,
    /// Latest head seen by the prober.
    pub head: u64,
}

impl Candidate {
    fn usable(&self) -> bool {
        self.in_rotation && self.can_feed
    }
}

/// The next source among `candidates` (in priority order), skipping `failed`: the current
/// one first, then the first at or above the delivered head, then the first usable; at each
/// step an upstream with WebSocket before one that must be polled.
pub fn pick<'c>(
    candidates: &'c [Candidate],
    current: Option<&str>,
    failed: &[Arc<str>],
    delivered: u64,
) -> Option<&'c Candidate> {
    let usable = |c: &&Candidate| c.usable() && !failed.contains(&c.name);
    let eligible = candidates.iter().filter(usable);
    let pushed = eligible.clone().filter(|c| !c.polled);
    let polled = eligible.clone().filter(|c| c.polled);
    let by_preference = pushed.chain(polled);
    eligible
        .clone()
        .find(|c| Some(&*c.name) == current)
        .or_else(|| by_preference.clone().find(|c| c.head >= delivered))
        .or_else(|| by_preference.clone().next())
}

/// Whether every upstream that could feed has failed since the last progress: time to back
/// off before trying them all again.
pub fn all_failed(candidates: &[Candidate], failed: &[Arc<str>]) -> bool {
    let mut usable = candidates.iter().filter(|c| c.usable()).peekable();
    usable.peek().is_some() && usable.all(|c| failed.contains(&c.name))
}

/// Why the source named `current` should be left, if it should: removed from the config,
/// out of rotation, or fallen behind another usable upstream by [`FALLEN_BEHIND_BLOCKS`]
/// while it delivers nothing (a source that stopped sending heads while still "healthy"
/// would otherwise hold clients back until its lag crossed `max_lag_blocks`).
pub fn leave_reason(candidates: &[Candidate], current: &str, delivered: u64) -> Option<String> {
    let Some(source) = candidates.iter().find(|c| &*c.name == current) else {
        return Some(format!("{current} was removed from the config"));
    };
    if !source.in_rotation {
        return Some(format!("{current} is {}", source.state));
    }
    let others = || {
        candidates
            .iter()
            .filter(|c| &*c.name != current && c.usable())
    };
    if source.polled {
        if let Some(pushed) = others().find(|c| !c.polled && c.head >= delivered) {
            return Some(format!("{} can feed over WebSocket again", pushed.name));
        }
    }
    let ahead = others().find(|c| c.head >= delivered + FALLEN_BEHIND_BLOCKS);
    match ahead {
        Some(other) if delivered > 0 => Some(format!(
            "{current} fell behind: {} is at {} while {delivered} was delivered",
            other.name, other.head
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, head: u64) -> Candidate {
        Candidate {
            name: name.into(),
            state: "healthy",
            in_rotation: true,
            can_feed: true,
            polled: false,
            head,
        }
    }

    fn names(failed: &[&str]) -> Vec<Arc<str>> {
        failed.iter().map(|&n| Arc::from(n)).collect()
    }

    #[test]
    fn the_current_source_is_kept_while_usable() {
        let set = [up("a", 10), up("b", 10)];
        assert_eq!(&*pick(&set, Some("b"), &[], 10).unwrap().name, "b");
    }

    #[test]
    fn after_a_loss_the_first_upstream_at_the_delivered_head_wins_over_priority() {
        let set = [up("a", 8), up("b", 10), up("c", 12)];
        assert_eq!(&*pick(&set, None, &[], 10).unwrap().name, "b");
        assert_eq!(
            &*pick(&set, None, &[], 20).unwrap().name,
            "a",
            "none is: priority"
        );
    }

    #[test]
    fn failed_out_of_rotation_and_ws_less_upstreams_are_skipped() {
        let mut set = [up("a", 10), up("b", 10), up("c", 10)];
        set[1].in_rotation = false;
        set[2].can_feed = false;
        assert_eq!(pick(&set, None, &names(&["a"]), 0), None);
        assert!(all_failed(&set, &names(&["a"])));
        assert!(!all_failed(&set, &[]));
        set[1].in_rotation = true;
        assert_eq!(&*pick(&set, None, &names(&["a"]), 0).unwrap().name, "b");
    }

    #[test]
    fn nothing_usable_is_not_the_same_as_all_failed() {
        let mut set = [up("a", 10)];
        set[0].in_rotation = false;
        assert!(
            !all_failed(&set, &names(&["a"])),
            "nothing to back off from"
        );
    }

    #[test]
    fn polled_upstreams_serve_only_when_no_websocket_one_can() {
        let mut set = [up("poll", 10), up("ws", 10)];
        set[0].polled = true;
        assert_eq!(
            &*pick(&set, None, &[], 10).unwrap().name,
            "ws",
            "despite priority"
        );
        assert_eq!(
            &*pick(&set, None, &names(&["ws"]), 10).unwrap().name,
            "poll"
        );
        assert_eq!(
            leave_reason(&set, "poll", 10).unwrap(),
            "ws can feed over WebSocket again"
        );
        set[1].head = 9;
        assert_eq!(
            leave_reason(&set, "poll", 10),
            None,
            "not while it is behind"
        );
    }

    #[test]
    fn a_source_is_left_when_removed_out_of_rotation_or_fallen_behind() {
        let mut set = vec![up("a", 10), up("b", 11)];
        assert_eq!(
            leave_reason(&set, "a", 10),
            None,
            "one block ahead is noise"
        );
        set[1].head = 12;
        assert!(leave_reason(&set, "a", 10).unwrap().contains("fell behind"));
        assert_eq!(leave_reason(&set, "a", 0), None, "nothing delivered yet");
        set[1].can_feed = false;
        assert_eq!(
            leave_reason(&set, "a", 10),
            None,
            "only a usable upstream counts"
        );
        set[0].in_rotation = false;
        set[0].state = "stalled";
        assert_eq!(leave_reason(&set, "a", 10).unwrap(), "a is stalled");
        assert!(leave_reason(&set, "gone", 10).unwrap().contains("removed"));
    }
}
