#!/usr/bin/env bash
# Instructions per fan-out notification in ethgate, counted by callgrind (robust to other load
# on the machine, unlike the bench's CPU times): the ws bench's fan-out part runs twice under
# callgrind, with 2 and with 12 heads to 1,000 clients; the difference is the cost of 10,000
# notifications (connecting, teardown and start-up cancel out).
#
#   benches/ws/callgrind.sh [ETHGATE_BINARY]    # default target/release/ethgate
#
# Build first: cargo bench --bench ws --no-run. Takes about two minutes. Prints, per
# notification, the whole process (all its threads, whichever scheduler) and the session tasks.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
exe="$(realpath "${1:-target/release/ethgate}")"
bench="$(ls -t target/release/deps/ws-* | grep -v '\.d$' | head -1)"
out="$(mktemp -d /tmp/ethgate-callgrind.XXXXXX)"

for heads in 2 12; do
  ETHGATE_WS_BENCH_EXE="$exe" \
    ETHGATE_WS_BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=$out/h$heads.%p" \
    ETHGATE_WS_BENCH_PARTS=fanout ETHGATE_WS_BENCH_CLIENTS=1000 \
    ETHGATE_WS_BENCH_HEADS=$heads ETHGATE_WS_BENCH_HEAD_MS=1500 \
    "$bench" --bench >"$out/h$heads.out" 2>&1
done

# Inclusive cost of the first function whose line matches $2 in profile $1.
inclusive() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    grep -E "$2" | head -1 | awk '{gsub(",", "", $1); print $1}'
}
h2="$(ls "$out"/h2.[0-9]*)"
h12="$(ls "$out"/h12.[0-9]*)"
for what in "PROGRAM TOTALS|whole process" "src/frontend/ws.rs:<tokio_util::task::task_tracker::TrackedFuture|session tasks"; do
  pattern="${what%%|*}"
  label="${what##*|}"
  a="$(inclusive "$h2" "$pattern")"
  b="$(inclusive "$h12" "$pattern")"
  echo "$label: $(((b - a) / 10000)) instructions per notification"
done
echo "profiles and bench output in $out"
