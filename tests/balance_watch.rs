//! Balance watch against a real anvil node: one address above its minimum, one below, in
//! `/status` and `/metrics`.

mod support;

use serde_json::Value;
use support::devnet::{Devnet, DEV_ADDRESS};
use support::e2e::deps_present;
use support::gateway::Gateway;

#[tokio::test]
async fn watched_balances_are_reported_above_and_below_their_minimum() {
    if !deps_present(
        "watched_balances_are_reported_above_and_below_their_minimum",
        false,
    ) {
        return;
    }
    let devnet = Devnet::start(1).await.expect("anvil");
    // anvil funds its dev accounts with 10,000 ether each.
    let second = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
         [[upstream]]\nname = \"anvil\"\nhttp = \"{}\"\n\
         [[watch]]\naddress = \"{DEV_ADDRESS}\"\nmin_balance = \"20000\"\ninterval = \"200ms\"\n\
         [[watch]]\naddress = \"{second}\"\nmin_balance = \"0.5\"\ninterval = \"200ms\"\n",
        devnet.http_url(0)
    );
    let gw = Gateway::start_toml(&toml).await;
    let status = gw
        .wait_status("both balances known", |s| {
            s["balances"]
                .as_array()
                .is_some_and(|b| b.len() == 2 && b.iter().all(|w| w["balance_ether"].is_number()))
        })
        .await;
    let by_address = |address: &str| -> Value {
        status["balances"]
            .as_array()
            .and_then(|b| {
                b.iter()
                    .find(|w| w["address"] == address.to_ascii_lowercase())
                    .cloned()
            })
            .unwrap_or_else(|| panic!("{address} not in {status}"))
    };
    let low = by_address(DEV_ADDRESS);
    assert_eq!(low["below_min"], true, "{low}");
    assert_eq!(low["min_balance_ether"], 20000.0);
    let high = by_address(second);
    assert_eq!(high["below_min"], false, "{high}");
    assert_eq!(high["balance_ether"], 10000.0);
    let (_, metrics) = gw.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics);
    let line = format!(
        "ethgate_account_balance_ether{{address=\"{}\"}} 10000",
        second.to_ascii_lowercase()
    );
    assert!(
        text.lines().any(|l| l == line),
        "{line} missing from:\n{text}"
    );
}
