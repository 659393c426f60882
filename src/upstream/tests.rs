use std::sync::Arc;
use std::time::Duration;

use super::*;

fn upstream() -> Upstream {
    let config = UpstreamConfig {
        name: "a".into(),
        http: None,
        ws: None,
        priority: 0,
        tls: Default::default(),
        headers: Default::default(),
        calls: Default::default(),
    };
    let pool = HttpPool::for_upstream(Duration::from_secs(1), 1 << 20, &config);
    Upstream::new(0, config, pool, Duration::from_secs(1))
}

/// Whether `left_rotation` resolves within a (paused-clock) moment, and with what.
async fn left_now(upstream: &Upstream) -> Option<String> {
    tokio::time::timeout(Duration::from_millis(1), upstream.left_rotation())
        .await
        .ok()
        .map(|reason| reason.to_string())
}

#[tokio::test(start_paused = true)]
async fn an_upstream_never_probed_is_out_of_rotation_at_once() {
    assert_eq!(
        left_now(&upstream()).await.as_deref(),
        Some("not probed yet")
    );
}

#[tokio::test(start_paused = true)]
async fn left_rotation_waits_while_healthy_and_fires_on_the_way_out() {
    let u = Arc::new(upstream());
    u.set_state(State::Healthy, || {
        unreachable!("no reason built on the way in")
    });
    assert_eq!(
        left_now(&u).await,
        None,
        "healthy: nothing to move away from"
    );
    let waiting = tokio::spawn({
        let u = u.clone();
        async move { u.left_rotation().await.to_string() }
    });
    tokio::task::yield_now().await;
    assert_eq!(
        u.set_state(State::Unreachable, || "unreachable: probe timed out".into()),
        State::Healthy
    );
    let reason = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("a waiting call is told at once")
        .expect("task");
    assert_eq!(reason, "unreachable: probe timed out");
}

#[tokio::test(start_paused = true)]
async fn any_state_but_healthy_counts_as_out_and_the_reason_is_kept_until_back() {
    let u = upstream();
    u.set_state(State::Healthy, String::new);
    u.set_state(State::Lagging, || "lagging".into());
    // A second out-of-rotation state keeps the first reason: nothing new to tell.
    u.set_state(State::Stalled, || "stalled".into());
    assert_eq!(left_now(&u).await.as_deref(), Some("lagging"));
    u.set_state(State::Healthy, String::new);
    assert_eq!(left_now(&u).await, None);
}

mod set {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::config::Config;
    use crate::metrics::{FailoverKind, Metrics};
    use crate::upstream::probe::{ProbeError, Report};
    use crate::upstream::{Failover, HealthObserve, Transition, Upstream, Upstreams};

    /// Writes down every event the set reports.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl HealthObserve for Recorder {
        fn failover(&self, f: &Failover<'_>) {
            let line = format!(
                "failover {} -> {}: {}",
                f.from.name(),
                f.to.name(),
                f.reason
            );
            self.0.lock().unwrap().push(line);
        }

        fn transition(&self, t: &Transition<'_>) {
            let line = format!("{} {} -> {}", t.upstream.name(), t.from, t.to);
            self.0.lock().unwrap().push(line);
        }
    }

    /// Upstreams `u0` (preferred), `u1`, `u2`, leaving rotation on the first failure and
    /// back on the first success, past the start-up round.
    fn set(observer: Arc<dyn HealthObserve>) -> Upstreams {
        let mut toml = String::from("[health]\nfailure_threshold = 1\nrecovery_threshold = 1\n");
        for i in 0..3 {
            toml += &format!(
                "[[upstream]]\nname = \"u{i}\"\nhttp = \"http://127.0.0.1:{}\"\npriority = {i}\n",
                1000 + i
            );
        }
        let set = Upstreams::new(&Config::from_toml_str(&toml).unwrap(), observer);
        set.started
            .store(true, std::sync::atomic::Ordering::Release);
        set
    }

    /// A healthy probe answer at head 10 on chain 1.
    fn healthy() -> Report {
        Report {
            chain_id: 1,
            syncing: false,
            head: 10,
            safe: None,
            finalized: None,
        }
    }

    fn ok(set: &Upstreams, i: usize) {
        set.record_probe(&set.all()[i], Ok(healthy()), Duration::from_millis(1));
    }

    fn fail(set: &Upstreams, i: usize) {
        let error = ProbeError::TimedOut(Duration::from_secs(1));
        set.record_probe(&set.all()[i], Err(error), Duration::from_secs(1));
    }

    fn names<'a>(upstreams: impl Iterator<Item = &'a Arc<Upstream>>) -> Vec<&'a str> {
        upstreams.map(|u| u.name()).collect()
    }

    #[test]
    fn transitions_and_failovers_reach_the_observer_once_each() {
        let recorder = Arc::new(Recorder::default());
        let set = set(recorder.clone());
        ok(&set, 0);
        ok(&set, 1);
        // The first choice is no failover.
        assert_eq!(
            recorder.take(),
            ["u0 unreachable -> healthy", "u1 unreachable -> healthy"]
        );
        ok(&set, 0);
        ok(&set, 1);
        assert!(
            recorder.take().is_empty(),
            "a probe that changes nothing is no event"
        );
        fail(&set, 0);
        assert_eq!(
            recorder.take(),
            [
                "u0 healthy -> unreachable",
                "failover u0 -> u1: u0 is unreachable"
            ]
        );
        // u0 back: a transition, but the sticky choice stays (no flapping).
        ok(&set, 0);
        assert_eq!(recorder.take(), ["u0 unreachable -> healthy"]);
        assert_eq!(set.selected().map(|u| u.name()), Some("u1"));
    }

    #[test]
    fn the_metrics_count_request_failovers_as_an_observer() {
        let metrics = Arc::new(Metrics::new());
        let set = set(metrics.clone());
        ok(&set, 0);
        ok(&set, 1);
        assert_eq!(metrics.failover_count(FailoverKind::Request), 0);
        fail(&set, 0);
        assert_eq!(metrics.failover_count(FailoverKind::Request), 1);
        assert_eq!(metrics.failover_count(FailoverKind::InFlight), 0);
    }

    #[test]
    fn candidates_put_the_sticky_choice_first_then_priority_and_take_only_the_accepted() {
        let set = set(Arc::new(Metrics::new()));
        assert!(set.candidates(Upstream::in_rotation).next().is_none());
        for i in 0..3 {
            ok(&set, i);
        }
        assert_eq!(
            names(set.candidates(Upstream::in_rotation)),
            ["u0", "u1", "u2"]
        );
        fail(&set, 0);
        ok(&set, 0);
        // u1 took over and stays first while u0, preferred, is back.
        assert_eq!(
            names(set.candidates(Upstream::in_rotation)),
            ["u1", "u0", "u2"]
        );
        assert_eq!(names(set.candidates(|u| u.name() != "u0")), ["u1", "u2"]);
        fail(&set, 2);
        assert_eq!(names(set.candidates(Upstream::in_rotation)), ["u1", "u0"]);
        assert_eq!(names(set.candidates(|_| true)), ["u1", "u0", "u2"]);
        assert_eq!(names(set.by_priority()), ["u0", "u1", "u2"]);
    }

    #[test]
    fn an_upstream_of_another_set_is_not_recorded() {
        let mine = set(Arc::new(Metrics::new()));
        let other = set(Arc::new(Metrics::new()));
        let stranger = &other.all()[0];
        mine.record_probe(stranger, Ok(healthy()), Duration::from_millis(1));
        assert!(
            !mine.any_in_rotation(),
            "its slot's upstream was not probed"
        );
        mine.record_passive_failure(stranger, "refused");
        fail(&other, 0);
        assert_eq!(mine.unreachable_reason(stranger), None);
        assert_eq!(
            other.unreachable_reason(stranger).as_deref(),
            Some("probe timed out after 1s")
        );
        assert_eq!(
            mine.unreachable_reason(&mine.all()[0]),
            None,
            "no probe yet"
        );
    }

    #[test]
    fn a_reload_keeps_health_only_where_the_call_transport_is_unchanged() {
        let toml = |calls: &str| {
            format!(
                "[[upstream]]\nname = \"u\"\nhttp = \"http://127.0.0.1:1000\"\n\
                 ws = \"ws://127.0.0.1:1001\"\ncalls = \"{calls}\"\n"
            )
        };
        let metrics = || Arc::new(crate::metrics::Metrics::new());
        let old = Upstreams::new(&Config::from_toml_str(&toml("http")).unwrap(), metrics());
        old.started
            .store(true, std::sync::atomic::Ordering::Release);
        for _ in 0..2 {
            ok(&old, 0);
        }
        assert!(old.all()[0].in_rotation());
        let same = Upstreams::new(&Config::from_toml_str(&toml("http")).unwrap(), metrics());
        same.carry_over(&old);
        assert!(
            same.all()[0].in_rotation(),
            "unchanged: health carried over"
        );
        let moved = Upstreams::new(&Config::from_toml_str(&toml("ws")).unwrap(), metrics());
        moved.carry_over(&old);
        assert!(
            !moved.all()[0].in_rotation(),
            "calls moved to the WebSocket: not in rotation before a probe over it"
        );
    }
}
