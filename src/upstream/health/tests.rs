use std::time::Duration;

use super::*;

fn config() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        max_lag_blocks: 5,
        no_new_heads: Duration::from_secs(60),
        failure_threshold: 3,
        recovery_threshold: 2,
    }
}

fn healthy_at(head: u64, now: Instant) -> Facts {
    let mut facts = Facts::new(now);
    facts.reachable.record(true, &config());
    facts.chain = Some((1, true));
    facts.observe_head(head, now);
    facts
}

fn state_of(me: usize, all: &[Facts], now: Instant) -> State {
    let refs: Vec<&Facts> = all.iter().collect();
    evaluate(
        &all[me],
        &refs,
        ChainSummary::of(all.iter()),
        &config(),
        now,
    )
}

#[test]
fn first_result_decides_then_thresholds_apply() {
    let cfg = config();
    let mut t = Threshold::default();
    assert_eq!(t.record(true, &cfg), Some(true));
    assert_eq!(t.record(false, &cfg), None);
    assert_eq!(t.record(false, &cfg), None);
    assert_eq!(t.record(false, &cfg), Some(false));
    assert_eq!(t.record(true, &cfg), None);
    assert_eq!(t.record(true, &cfg), Some(true));
}

#[test]
fn a_success_resets_the_failure_count() {
    let cfg = config();
    let mut t = Threshold::default();
    t.record(true, &cfg);
    t.record(false, &cfg);
    t.record(false, &cfg);
    t.record(true, &cfg);
    assert_eq!(t.record(false, &cfg), None);
    assert!(t.is_up());
}

#[test]
fn unprobed_or_failing_upstream_is_unreachable() {
    let now = Instant::now();
    assert_eq!(state_of(0, &[Facts::new(now)], now), State::Unreachable);
    let mut facts = healthy_at(10, now);
    facts.reachable.record(false, &config());
    facts.reachable.record(false, &config());
    facts.reachable.record(false, &config());
    assert_eq!(state_of(0, &[facts], now), State::Unreachable);
}

#[test]
fn wrong_chain_and_syncing_leave_rotation() {
    let now = Instant::now();
    let mut wrong = healthy_at(10, now);
    wrong.chain = Some((5, false));
    assert_eq!(state_of(0, &[wrong], now), State::WrongChain);
    let mut syncing = healthy_at(10, now);
    syncing.syncing = true;
    assert_eq!(state_of(0, &[syncing], now), State::Syncing);
}

#[test]
fn lagging_upstream_leaves_rotation_beyond_max_lag_only() {
    let now = Instant::now();
    let all = [
        healthy_at(100, now),
        healthy_at(95, now),
        healthy_at(94, now),
    ];
    assert_eq!(state_of(0, &all, now), State::Healthy);
    assert_eq!(state_of(1, &all, now), State::Healthy);
    assert_eq!(state_of(2, &all, now), State::Lagging);
}

#[test]
fn wrong_chain_head_does_not_make_others_lag() {
    let now = Instant::now();
    let mut wrong = healthy_at(1_000, now);
    wrong.chain = Some((5, false));
    let all = [healthy_at(100, now), wrong];
    assert_eq!(state_of(0, &all, now), State::Healthy);
}

#[test]
fn stalled_when_frozen_while_another_advances() {
    let start = Instant::now();
    let later = start + Duration::from_secs(61);
    let frozen = healthy_at(100, start);
    let advancing = healthy_at(101, later);
    assert_eq!(
        state_of(0, &[frozen.clone(), advancing], later),
        State::Stalled
    );
    // Nobody else advancing: a quiet chain is not a stalled node.
    let also_frozen = healthy_at(100, start);
    assert_eq!(state_of(0, &[frozen, also_frozen], later), State::Healthy);
}

#[test]
fn a_new_head_clears_stalled() {
    let start = Instant::now();
    let later = start + Duration::from_secs(61);
    let mut frozen = healthy_at(100, start);
    frozen.observe_head(101, later);
    assert_eq!(
        state_of(0, &[frozen, healthy_at(101, later)], later),
        State::Healthy
    );
}
