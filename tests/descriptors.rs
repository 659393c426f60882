//! At start ethgate raises the soft open-file limit to the hard one, and warns when
//! `max_connections` and the upstreams may need more. (One test in this file: it lowers this
//! process's limits for good.)

mod support;

use rlimit::Resource;
use support::gateway::{Gateway, GatewayConfig};
use support::log_capture::Captured;
use support::mock::MockUpstream;

#[tokio::test]
async fn soft_limit_is_raised_to_the_hard_one_and_a_shortfall_is_warned_about() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let (_, hard) = Resource::NOFILE.get().expect("getrlimit");
    let hard = hard.min(512);
    Resource::NOFILE.set(128, hard).expect("lower the limits");

    let a = MockUpstream::start().await;
    let cfg = GatewayConfig::new()
        .server("max_connections", "10000")
        .upstream("a", &a, 0);
    let gw = Gateway::start(&cfg).await;
    gw.wait_all_healthy().await;

    assert_eq!(Resource::NOFILE.get().expect("getrlimit"), (hard, hard));
    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("open-file limit"))
        .unwrap_or_else(|| panic!("no open-file warning in:\n{text}"));
    assert!(warning.contains(&format!("limit={hard}")), "{warning}");
    assert!(warning.contains("max_connections=10000"), "{warning}");
}
