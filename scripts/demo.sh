#!/usr/bin/env bash
# The demo (README): a 3-node local devnet on one chain with ethgate in front; kill a node and
# watch ethgate fail over.
#
#   scripts/demo.sh [--release] [--no-build] [--for SECONDS]
#
#   --release      build and run release binaries (slower first build)
#   --no-build     use the binaries already built (skip cargo build)
#   --for SECONDS  stop by itself after SECONDS (default: run until Ctrl-C)
#
# It installs anvil if needed (scripts/install-test-deps.sh --anvil-only), builds ethgate and
# examples/devnet, starts the devnet (anvil on 127.0.0.1:8600-8602, one block per second) and
# ethgate with config/demo.toml (JSON-RPC over HTTP and WebSocket on 127.0.0.1:8545 and :8546,
# like a node's two ports; admin on 127.0.0.1:9545), prints how to use it, then a status line
# every 2 s. Ctrl-C stops everything it started. Binaries are taken from cargo's target
# directory wherever it is (CARGO_TARGET_DIR, .cargo/config.toml): cargo metadata tells.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PROFILE=debug
CARGO_PROFILE_ARGS=()
RUN_FOR=0
BUILD=1
while [ "$#" -gt 0 ]; do
  case "$1" in
    --release) PROFILE=release; CARGO_PROFILE_ARGS=(--release); shift ;;
    --no-build) BUILD=0; shift ;;
    --for) RUN_FOR="${2:?--for needs a number of seconds}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "demo: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

CONFIG="config/demo.toml"
LISTEN="127.0.0.1:8545"
LISTEN_WS="127.0.0.1:8546"           # config/demo.toml lists both; each serves HTTP and WS
ADMIN="127.0.0.1:9545"
BASE_PORT=8600
NODES=3

# Where cargo puts its builds: CARGO_TARGET_DIR, build.target-dir, or ./target. Asked of cargo
# itself, so every way of moving it is honoured.
target_dir() {
  local dir
  dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  if [ -z "$dir" ]; then
    dir="${CARGO_TARGET_DIR:-target}"
  fi
  case "$dir" in /*) ;; *) dir="$ROOT/$dir" ;; esac
  echo "$dir"
}
TARGET_DIR="$(target_dir)"
LOGDIR="$TARGET_DIR/demo"
DEVNET_LOG="$LOGDIR/devnet.log"
ETHGATE_LOG="$LOGDIR/ethgate.log"

DEVNET_PID=""
ETHGATE_PID=""

say() { echo "demo: $*"; }

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  echo
  say "stopping"
  for pid in "$ETHGATE_PID" "$DEVNET_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  # Bounded wait for a clean exit (the devnet kills its anvil nodes), then force.
  local i
  for i in $(seq 1 50); do
    local alive=0
    for pid in "$ETHGATE_PID" "$DEVNET_PID"; do
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "$ETHGATE_PID" "$DEVNET_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # anvil nodes whose devnet parent was force-killed
  if [ -f "$DEVNET_LOG" ]; then
    for pid in $(sed -n 's/^node [0-9]*: .* pid \([0-9]*\)$/\1/p' "$DEVNET_LOG"); do
      if kill -0 "$pid" 2>/dev/null && grep -qa anvil "/proc/$pid/cmdline" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  fi
  say "logs are in $LOGDIR"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for port in "${LISTEN##*:}" "${LISTEN_WS##*:}" "${ADMIN##*:}" $(seq "$BASE_PORT" $((BASE_PORT + NODES - 1))); do
  if port_in_use "$port"; then
    say "127.0.0.1:$port is already in use (another demo running?); stop it first" >&2
    exit 1
  fi
done

say "installing anvil if needed"
bash scripts/install-test-deps.sh --anvil-only

BIN_DIR="$TARGET_DIR/$PROFILE"
if [ "$BUILD" = 1 ]; then
  say "building ethgate and examples/devnet ($PROFILE)"
  cargo build "${CARGO_PROFILE_ARGS[@]}" --bin ethgate --example devnet
fi
for bin in "$BIN_DIR/ethgate" "$BIN_DIR/examples/devnet"; do
  if [ ! -x "$bin" ]; then
    say "$bin is missing; run without --no-build" >&2
    exit 1
  fi
done

mkdir -p "$LOGDIR"
: > "$DEVNET_LOG"
: > "$ETHGATE_LOG"

say "starting the devnet: $NODES anvil nodes, one block per second"
"$BIN_DIR/examples/devnet" --nodes "$NODES" --block-time 1s --base-port "$BASE_PORT" \
  > "$DEVNET_LOG" 2>&1 &
DEVNET_PID=$!

# Wait (bounded) for the devnet to print its nodes.
for _ in $(seq 1 300); do
  grep -q '^devnet ready' "$DEVNET_LOG" && break
  if ! kill -0 "$DEVNET_PID" 2>/dev/null; then
    say "the devnet exited:" >&2; cat "$DEVNET_LOG" >&2; exit 1
  fi
  sleep 0.1
done
if ! grep -q '^devnet ready' "$DEVNET_LOG"; then
  say "the devnet did not start within 30 s:" >&2; cat "$DEVNET_LOG" >&2; exit 1
fi

declare -A NODE_PID
while read -r idx pid; do
  NODE_PID[$idx]=$pid
done < <(sed -n 's/^node \([0-9]*\): .* pid \([0-9]*\)$/\1 \2/p' "$DEVNET_LOG")

say "starting ethgate on $LISTEN and $LISTEN_WS (admin $ADMIN) with $CONFIG"
"$BIN_DIR/ethgate" run --config "$CONFIG" > "$ETHGATE_LOG" 2>&1 &
ETHGATE_PID=$!

http_get() { # URL -> body on stdout; fails on connection errors
  curl -fsS --max-time 2 "$1" 2>/dev/null
}

ready=0
for _ in $(seq 1 300); do
  if ! kill -0 "$ETHGATE_PID" 2>/dev/null; then
    say "ethgate exited:" >&2; cat "$ETHGATE_LOG" >&2; exit 1
  fi
  if http_get "http://$ADMIN/readyz" >/dev/null; then ready=1; break; fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  say "ethgate did not become ready within 30 s:" >&2; tail -n 30 "$ETHGATE_LOG" >&2; exit 1
fi

# Formats /status as one line; prints the selected upstream's name when asked to.
status_tool() { # MODE(line|selected) < status.json
  if command -v node >/dev/null 2>&1; then
    node -e '
      let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
        let st; try { st = JSON.parse(s); } catch { console.log("(bad /status)"); return; }
        const ups = st.upstreams || [];
        if (process.argv[1] === "selected") {
          const sel = ups.find(u => u.selected); console.log(sel ? sel.name : ""); return;
        }
        console.log(ups.map(u => `${u.name}${u.selected ? "*" : ""} ${u.state} head ${u.head}`).join(" | "));
      });' "$1"
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
try: st = json.load(sys.stdin)
except Exception: print("(bad /status)"); sys.exit()
ups = st.get("upstreams", [])
if sys.argv[1] == "selected":
    print(next((u["name"] for u in ups if u.get("selected")), ""))
else:
    print(" | ".join(f"{u[\"name\"]}{\"*\" if u.get(\"selected\") else \"\"} {u[\"state\"]} head {u[\"head\"]}" for u in ups))
' "$1"
  else
    cat
  fi
}

SELECTED="$(http_get "http://$ADMIN/status" | status_tool selected || true)"
SEL_IDX="${SELECTED#anvil}"

cat <<EOT

================================================================================
 ethgate demo is running
================================================================================
 devnet nodes (one chain, identical block hashes, a block per second):
$(for i in $(seq 0 $((NODES - 1))); do echo "   anvil$i  http://127.0.0.1:$((BASE_PORT + i))  pid ${NODE_PID[$i]:-?}"; done)

 ethgate:  JSON-RPC  http://$LISTEN   ws://$LISTEN_WS   (each port serves both, like
                     a node's 8545 and 8546: point a Chainlink node's ETH_HTTP_URL and ETH_URL here)
           admin     http://$ADMIN/status  /metrics  /healthz  /readyz

 Point a client at ethgate, e.g.:
   curl -s -H 'content-type: application/json' \\
     --data '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}' http://$LISTEN
   curl -s -H 'content-type: application/json' \\
     --data '{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","latest"]}' http://$LISTEN

 Watch the upstreams (in another shell):
   while sleep 1; do curl -s http://$ADMIN/status; echo; done

 Selected upstream now: ${SELECTED:-?}. To watch a failover, kill it:
   kill ${NODE_PID[$SEL_IDX]:-PID}
 (the devnet keeps mining the other nodes; ethgate marks ${SELECTED:-it} unreachable and
  selects the next one by priority, without failing client requests)

 Logs: $DEVNET_LOG
       $ETHGATE_LOG
 Ctrl-C stops ethgate, the devnet and its nodes.
================================================================================

EOT

start=$SECONDS
while :; do
  if ! kill -0 "$ETHGATE_PID" 2>/dev/null; then
    say "ethgate exited; last log lines:" >&2; tail -n 20 "$ETHGATE_LOG" >&2; exit 1
  fi
  if ! kill -0 "$DEVNET_PID" 2>/dev/null; then
    say "the devnet exited; last lines:" >&2; tail -n 20 "$DEVNET_LOG" >&2; exit 1
  fi
  block="$(grep '^block' "$DEVNET_LOG" | tail -n 1 | awk '{print $2}')"
  line="$(http_get "http://$ADMIN/status" | status_tool line || echo "(admin not answering)")"
  echo "$(date +%T) block ${block:-?} | $line"
  if [ "$RUN_FOR" -gt 0 ] && [ $((SECONDS - start)) -ge "$RUN_FOR" ]; then
    break
  fi
  sleep 2
done
