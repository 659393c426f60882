#!/usr/bin/env bash
# The test command (README): installs the end-to-end test dependencies (anvil, ethers), then
# builds every target and runs the whole test suite: unit, in-process integration and
# end-to-end tests (anvil devnet + ethers clients). Under CI=true (the default here) an
# end-to-end test whose dependencies are missing fails instead of skipping.
#
#   scripts/test.sh [extra args for the test runner, e.g. a test name filter]
#
# Uses cargo-nextest when installed (one process per test, a clear summary), else cargo test.
# Set ETHGATE_TEST_RUNNER=cargo to force `cargo test`; ETHGATE_TEST_TIMEOUT (seconds, default
# 2400) bounds the test run, so a hung test fails the run instead of hanging it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The full test command never silently skips the end-to-end tests.
export CI="${CI:-true}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> installing test dependencies"
bash scripts/install-test-deps.sh

echo "==> building all targets"
# Compiles benches and examples too (so they cannot rot), without running the benches.
cargo test --all-targets --no-run

runner="${ETHGATE_TEST_RUNNER:-auto}"
if [ "$runner" = auto ]; then
  if cargo nextest --version >/dev/null 2>&1; then runner=nextest; else runner=cargo; fi
fi

# A hung test must not eat CI's whole budget: the test run as a whole has a deadline.
TEST_TIMEOUT="${ETHGATE_TEST_TIMEOUT:-2400}"
guard() { timeout --signal=TERM --kill-after=30s "$TEST_TIMEOUT" "$@"; }

status=0
# Doc tests first, so that the suite's summary is the last thing the runner prints.
if [ "$#" -eq 0 ]; then
  echo "==> doc tests"
  guard cargo test --doc || status=$?
fi
if [ "$runner" = nextest ]; then
  echo "==> cargo nextest run"
  # Benches are left out: a harness=false bench is a plain program, not a test list.
  guard cargo nextest run --lib --bins --tests --no-fail-fast "$@" || status=$?
else
  echo "==> cargo test"
  guard cargo test --lib --bins --tests --no-fail-fast "$@" || status=$?
fi
if [ "$status" = 124 ]; then
  echo "==> the test run exceeded ${TEST_TIMEOUT}s and was stopped" >&2
fi
exit "$status"
