//! `ethgate check --probe`: one line per upstream, exit 1 if any is unreachable, its WebSocket
//! endpoint included (an upstream whose `ws` refuses the handshake cannot serve subscriptions,
//! so the check must not print `ok` for it), or on the wrong chain.

mod support;

use support::mock::MockUpstream;
use support::process::{self, free_addr, TempDir};

/// Runs `ethgate check --probe` on `toml`; its exit code and standard output.
async fn check_probe(toml: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("check-probe").expect("temp dir");
    let path = dir.path().join("ethgate.toml");
    std::fs::write(&path, toml).expect("write config");
    process::check_probe(&path).await
}

fn upstream(name: &str, http: &str, ws: &str) -> String {
    format!("[[upstream]]\nname = \"{name}\"\nhttp = \"{http}\"\nws = \"{ws}\"\n")
}

/// The line of upstream `name`.
fn line_of<'a>(out: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}: ");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
}

#[tokio::test]
async fn a_refused_websocket_handshake_fails_the_probe() {
    let good = MockUpstream::start().await;
    let half = MockUpstream::start().await;
    // Nothing listens there: the handshake is refused while `half` answers over HTTP.
    let refused = format!("ws://{}", free_addr());
    let toml = upstream("good", &good.http_url(), &good.ws_url())
        + &upstream("half", &half.http_url(), &refused);
    let (code, out) = check_probe(&toml).await;
    assert_eq!(code, Some(1), "{out}");
    let line = line_of(&out, "half");
    assert!(line.starts_with("half: ws_unreachable chain_id="), "{line}");
    assert!(line.contains(" ws=error("), "{line}");
    assert!(
        !out.lines().any(|l| l.starts_with("half: ok")),
        "half printed ok:\n{out}"
    );
    assert!(half.calls("eth_chainId") >= 1, "half was probed over HTTP");
    // The other upstream is still judged on its own.
    let line = line_of(&out, "good");
    assert!(line.starts_with("good: ok chain_id="), "{line}");
    assert!(line.ends_with(" ws=ok"), "{line}");
}

#[tokio::test]
async fn every_endpoint_answering_passes_the_probe() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let toml =
        upstream("a", &a.http_url(), &a.ws_url()) + &upstream("b", &b.http_url(), &b.ws_url());
    let (code, out) = check_probe(&toml).await;
    assert_eq!(code, Some(0), "{out}");
    for name in ["a", "b"] {
        let line = line_of(&out, name);
        assert!(line.starts_with(&format!("{name}: ok chain_id=")), "{line}");
        assert!(line.ends_with(" ws=ok"), "{line}");
    }
}
