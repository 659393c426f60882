//! External tools some tests need (haproxy, promtool, hadolint, kubernetes-validate,
//! systemd-analyze), all installed by scripts/install-test-deps.sh, and the rule for a missing
//! one: skip with a clear line on a developer's machine, fail under CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::e2e::under_ci;

/// The project's Python tools venv (hadolint, kubernetes-validate).
pub fn venv_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin")
}

/// `name` from PATH, /usr/sbin (not on every user's PATH) or the project's venv, if it runs.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.push(venv_bin());
    let found = dirs
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())?;
    let runs = Command::new(&found)
        .arg(if name == "haproxy" { "-v" } else { "--version" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    runs.then_some(found)
}

/// The tool when present; otherwise a SKIP line and `None`, or a panic under CI.
pub fn require_tool(test: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = find_tool(name) {
        return Some(path);
    }
    if under_ci() {
        panic!(
            "{test}: `{name}` is missing under CI; scripts/install-test-deps.sh should have \
             installed it"
        );
    }
    eprintln!(
        "SKIPPED {test}: `{name}` not found (PATH, /usr/sbin, .cache/venv/bin). Run \
         scripts/install-test-deps.sh (with CI set, this is a failure instead of a skip)."
    );
    None
}
