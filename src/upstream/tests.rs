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
