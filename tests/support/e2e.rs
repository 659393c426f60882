//! What the end-to-end tests need (anvil, Node.js, ethers), and the rule for a missing piece:
//! skip with a clear line on a developer's machine, fail under CI.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::devnet::{find_anvil, Devnet};
use super::gateway::Gateway;
use super::http::Http;

/// Whether `CI` is set to something true.
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        ),
        Err(_) => false,
    }
}

/// The JS client drivers' folder.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// What is missing for the end-to-end tests, if anything.
pub fn missing_deps(need_js: bool) -> Option<String> {
    let mut missing = Vec::new();
    if find_anvil().is_none() {
        missing.push("anvil ($ANVIL, PATH or .cache/npm)".to_string());
    }
    if need_js {
        let node_ok = std::process::Command::new("node")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !node_ok {
            missing.push("node (Node.js) on PATH".to_string());
        }
        if !js_dir().join("node_modules/ethers/package.json").is_file() {
            missing.push("ethers in tests/js/node_modules".to_string());
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// True when the test should run; prints a SKIP line, or panics under CI.
pub fn deps_present(test: &str, need_js: bool) -> bool {
    match missing_deps(need_js) {
        None => true,
        Some(m) if under_ci() => panic!(
            "{test}: missing end-to-end test dependencies under CI: {m}; \
             scripts/install-test-deps.sh should have installed them"
        ),
        Some(m) => {
            eprintln!(
                "SKIPPED {test}: missing {m}. Run scripts/install-test-deps.sh \
                 (with CI set, this is a failure instead of a skip)."
            );
            false
        }
    }
}

/// Prints an ethgate child process's output if the test panics while this is alive.
pub struct DumpOnPanic<'a>(pub &'a Gateway);

impl Drop for DumpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- ethgate output (pid {}) -----\n{}\n-----",
                self.0.child().pid(),
                self.0.log()
            );
        }
    }
}

/// Prints its text if the test panics while this is alive.
pub struct PrintOnPanic(pub String);

impl Drop for PrintOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0);
        }
    }
}

/// One `[[upstream]]` per devnet node, named `anvilN` with priority N, HTTP and WS URLs.
pub fn devnet_upstreams(dev: &Devnet) -> String {
    let mut s = String::new();
    for i in 0..dev.len() {
        s.push_str(&format!(
            "\n[[upstream]]\nname = \"anvil{i}\"\nhttp = \"{}\"\nws = \"{}\"\npriority = {i}\n",
            dev.http_url(i),
            dev.ws_url(i)
        ));
    }
    s
}

/// The upstream the subscription feed follows now according to ethgate's text log, if a line
/// says so: the last line about subscriptions that names a new source (`to="NAME"`, or
/// `upstream="NAME"` on a line that is not about losing it). Only a hint: log wording changes,
/// `/status` is the fallback.
pub fn feed_source_hint(log: &str) -> Option<String> {
    let field = |line: &str, key: &str| {
        line.split(key)
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_string)
    };
    log.lines().rev().find_map(|l| {
        if !l.contains("subscription") {
            return None;
        }
        field(l, " to=\"").or_else(|| {
            (!l.contains("lost"))
                .then(|| field(l, " upstream=\""))
                .flatten()
        })
    })
}

/// `node tests/js/SCRIPT ARGS…` with every stdio piped, killed on drop.
pub fn spawn_js(script: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("node")
        .arg(js_dir().join(script))
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node {script}: {e}"))
}

/// Block `n` (without transactions) from the node at `url`; panics when there is none.
pub async fn block_at(
    http: &Http,
    url: &str,
    n: u64,
    timeout: std::time::Duration,
) -> serde_json::Value {
    let params = serde_json::json!([format!("0x{n:x}"), false]);
    http.rpc(url, "eth_getBlockByNumber", params, timeout)
        .await
        .unwrap_or_else(|e| panic!("block {n} from {url}: {e}"))
}
