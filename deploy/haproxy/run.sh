#!/usr/bin/env bash
# Runnable example: two ethgate replicas behind HAProxy (TCP mode, PROXY protocol v2, /readyz
# health checks) on a two-node local anvil devnet. The same haproxy.cfg is what the scale-out
# test (tests/scale_out.rs) runs.
#
#   deploy/haproxy/run.sh          # Ctrl-C stops everything it started
#
# Needs haproxy (apt-get install haproxy) and anvil (scripts/install-test-deps.sh --anvil-only).
# Ports: clients 127.0.0.1:8545 (HAProxy); replicas 8551/8552, admin 9551/9552; devnet 8600-8601.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

say() { echo "haproxy-example: $*"; }
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { say "haproxy is not installed" >&2; exit 1; }
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"

bash scripts/install-test-deps.sh --anvil-only
cargo build --bin ethgate --example devnet
# Wherever cargo puts its builds (CARGO_TARGET_DIR, build.target-dir).
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="${TARGET_DIR:-$ROOT/target}/debug"
LOGS="${TARGET_DIR:-$ROOT/target}/haproxy-example"
mkdir -p "$LOGS"

PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$BIN/examples/devnet" --nodes 2 --block-time 1s --base-port 8600 > "$LOGS/devnet.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do grep -q '^devnet ready' "$LOGS/devnet.log" && break; sleep 0.1; done
grep -q '^devnet ready' "$LOGS/devnet.log" || { say "devnet did not start" >&2; cat "$LOGS/devnet.log" >&2; exit 1; }

declare -A REPLICA_PID
for r in a b; do
  "$BIN/ethgate" run --config "$HERE/ethgate-$r.toml" > "$LOGS/ethgate-$r.log" 2>&1 &
  PIDS+=($!); REPLICA_PID[$r]=$!
done

HAPROXY_BIND=127.0.0.1:8545 ETHGATE_A=127.0.0.1:8551 ETHGATE_B=127.0.0.1:8552 \
  ETHGATE_A_ADMIN_PORT=9551 ETHGATE_B_ADMIN_PORT=9552 \
  "$HAPROXY" -db -f "$HERE/haproxy.cfg" > "$LOGS/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")

cat <<EOT

 HAProxy on 127.0.0.1:8545 -> ethgate a (127.0.0.1:8551) and b (127.0.0.1:8552)

 A call (allowed: the replicas see 127.0.0.1 through the PROXY header):
   curl -s -H 'content-type: application/json' \\
     --data '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}' http://127.0.0.1:8545
 The same from 127.0.0.2 is refused by ethgate (connection closed), through the same HAProxy:
   curl --interface 127.0.0.2 ... http://127.0.0.1:8545
 Drain replica a (HAProxy marks it DOWN within ~2 s; it keeps serving for drain_delay = 5s):
   kill -TERM ${REPLICA_PID[a]}
 and start it again (HAProxy puts it back once /readyz answers 200):
   $BIN/ethgate run --config $HERE/ethgate-a.toml
 Logs: $LOGS/{haproxy,ethgate-a,ethgate-b,devnet}.log
 Ctrl-C stops everything.

EOT
wait "$HAPROXY_PID" || true
say "HAProxy exited; stopping"
