//! A body of millions of tiny batch elements is refused as "batch too large" after
//! `max_batch_len` of them, at a cost of a few MiB: the process's peak RSS barely moves.
//! (One test in this file: peak RSS is per process.)

mod support;

use support::gateway::{error_of, Gateway, GatewayConfig};
use support::mock::MockUpstream;

/// Peak resident set size of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn batch_of_millions_of_elements_fails_fast_and_costs_little() {
    let a = MockUpstream::start().await;
    let gw = Gateway::start(&GatewayConfig::new().upstream("a", &a, 0)).await;
    gw.wait_all_healthy().await;
    // 5 MB of `[0,0,…]`: about 2.6 million elements, just under max_request_bytes.
    let elements = (5 * 1024 * 1024 - 2) / 2;
    let mut body = String::with_capacity(elements * 2 + 1);
    body.push('[');
    for i in 0..elements {
        body.push_str(if i == 0 { "0" } else { ",0" });
    }
    body.push(']');
    let before = peak_rss_kib();
    let answer = gw.rpc(&body).await;
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert_eq!(error_of(&answer), (-32600, "batch too large".into()));
    // Decoding every element first cost about 190 MiB; the body itself is 5 MiB (plus the
    // client's and hyper's copies).
    assert!(grown_mib < 48, "peak RSS grew by {grown_mib} MiB");
}
