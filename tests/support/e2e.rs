//! What the end-to-end tests need (anvil, Node.js, ethers), and the rule for a missing piece:
//! skip with a clear line on a developer's machine, fail under CI.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::devnet::find_anvil;
use super::gateway::Gateway;

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
