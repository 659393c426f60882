//! An upstream whose certificate is not from the trusted CA: unreachable with a clear reason
//! in /status, in one log line on the transition and in `ethgate check --probe`; no request
//! reaches the node; no secret shows anywhere. (One test in this file: it installs the
//! process's log subscriber.)

mod support;

use support::gateway::{upstream_entry, Gateway};
use support::log_capture::Captured;
use support::mock::MockUpstream;
use support::process::TempDir;
use support::tls_relay::{write_file, Ca, TlsRelay};

const SECRETS: [&str; 3] = [
    "s3cr3t-pw",
    "Bearer-tok-4242",
    "feedfacefeedfacefeedfacefeedface",
];

#[tokio::test]
async fn a_certificate_from_another_ca_is_unreachable_with_the_reason_everywhere() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();
    let dir = TempDir::new("ethgate-upstream-wrong-ca").expect("temp dir");
    let (trusted, stranger) = (Ca::new("trusted"), Ca::new("stranger"));
    let mock = MockUpstream::start().await;
    let relay = TlsRelay::start(mock.addr().port(), &stranger.issue("localhost"), None).await;
    let ca_file = write_file(dir.path(), "ca.pem", &trusted.pem());
    let upstream = format!(
        "[[upstream]]\nname = \"hosted\"\n\
         http = \"https://bob:s3cr3t-pw@localhost:{port}/v2/{key}\"\n\
         ws = \"wss://bob:s3cr3t-pw@localhost:{port}/ws/v2/{key}\"\n\
         tls_ca = {ca:?}\n",
        port = relay.port(),
        key = SECRETS[2],
        ca = ca_file.display().to_string()
    );
    let plain = format!(
        "[[upstream]]\nname = \"own\"\nhttp = \"{}\"\nheaders = {{ Authorization = \"{}\" }}\n",
        mock.http_url(),
        SECRETS[1]
    );
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndrain_delay = \"0s\"\n\
         [health]\ninterval = \"300ms\"\ntimeout = \"250ms\"\nfailure_threshold = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{upstream}\n{plain}"
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_state("own", "healthy").await;
    let status = gw
        .wait_status("hosted has a reason", |s| {
            upstream_entry(s, "hosted").is_some_and(|u| u["reason"].is_string())
        })
        .await;
    let entry = upstream_entry(&status, "hosted").expect("entry");
    assert_eq!(entry["state"], "unreachable");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("UnknownIssuer"), "/status reason: {reason}");
    assert_eq!(
        relay.handshakes_ok(),
        0,
        "no request went through the relay"
    );
    assert!(relay.handshakes_failed() >= 1);

    // `ethgate check --probe` says the same, and exits 1. (Async: the relay runs on this
    // test's runtime and must keep serving while the check dials it.)
    let path = write_file(dir.path(), "ethgate.toml", &toml);
    let (code, check) = support::process::check_probe(&path).await;
    assert_eq!(code, Some(1), "{check}");
    let line = check
        .lines()
        .find(|l| l.starts_with("hosted:"))
        .unwrap_or_else(|| panic!("no line for hosted:\n{check}"));
    assert!(
        line.contains("unreachable") && line.contains("UnknownIssuer"),
        "{line}"
    );
    assert!(
        line.contains("ws=error(") && line.matches("UnknownIssuer").count() == 2,
        "{line}"
    );
    assert!(check.contains("own: ok"), "{check}");

    let (_, metrics) = gw.admin_get("/metrics").await;
    let text = logs.text();
    let transitions: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("upstream unreachable since start") && l.contains("hosted"))
        .collect();
    assert_eq!(transitions.len(), 1, "one line on the transition:\n{text}");
    assert!(
        transitions[0].contains("UnknownIssuer"),
        "{}",
        transitions[0]
    );
    for (what, shown) in [
        ("/status", status.to_string()),
        ("/metrics", String::from_utf8_lossy(&metrics).into_owned()),
        ("check", check.clone()),
        ("logs", text.clone()),
    ] {
        for secret in SECRETS.iter().chain(&["bob"]) {
            assert!(!shown.contains(secret), "{what} shows {secret:?}:\n{shown}");
        }
    }
}
