#!/usr/bin/env bash
# The long chaos soak: the same test as the default suite's `chaos_soak_keeps_every_subscriber_exact`
# (tests/soak.rs), with a long seeded schedule, and its figures: events survived, heads and
# logs checked, subscription failover times (p50/p99/max).
#
#   scripts/soak.sh [EVENTS [SEED]]      # defaults: SOAK_EVENTS or 200; SOAK_SEED or from the clock
#
# Other knobs (environment): SOAK_POISON=0 leaves the poisonous subscribes out; SOAK_SKIP=reorg,lag
# leaves other event kinds out (for bisecting); SOAK_BLOCK_MS (default 500); SOAK_ETHGATE_LOG
# (ethgate's --log-level). The full test output goes to target/soak-SEED.out; on failure
# ethgate's kept log is saved to target/soak-ethgate-SEED.log. Exit status: the test's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

EVENTS="${1:-${SOAK_EVENTS:-200}}"
SEED="${2:-${SOAK_SEED:-$(( $(date +%s) % 1000000 ))}}"
case "$EVENTS$SEED" in
  *[!0-9]*) echo "soak: EVENTS and SEED must be numbers" >&2; exit 2 ;;
esac
export CI="${CI:-true}"   # missing anvil/ethers is a failure here, not a skip
export SOAK_EVENTS="$EVENTS" SOAK_SEED="$SEED"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> installing test dependencies"
bash scripts/install-test-deps.sh
echo "==> building"
cargo test --test soak --no-run
out="target/soak-$SEED.out"
echo "==> soak: $EVENTS events, seed $SEED (reproduce: scripts/soak.sh $EVENTS $SEED); output: $out"
status=0
# Generous bound: ~2 s per event plus revives on a loaded box; a hung run must still end.
timeout --signal=TERM --kill-after=30s "$(( 600 + EVENTS * 20 ))" \
  cargo test --test soak chaos_soak_keeps_every_subscriber_exact -- --nocapture >"$out" 2>&1 || status=$?
grep -E '^soak event' "$out" | tail -n 5 || true
echo
if grep -q '^SOAK FIGURES' "$out"; then
  grep -E '^SOAK' "$out"
fi
if [ "$status" != 0 ]; then
  echo
  echo "==> soak FAILED (exit $status):"
  grep -E 'SOAK FAILED' -A 30 "$out" | sed -n '1,60p' || tail -n 40 "$out"
fi
exit "$status"
