#!/usr/bin/env bash
# Installs what ethgate's end-to-end tests and the demo need, idempotently:
#   - anvil (Foundry's Ethereum node), unless one is found on $ANVIL or PATH, from the npm
#     package @foundry-rs/anvil-linux-amd64 into .cache/npm (binary:
#     .cache/npm/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil);
#   - the JS client drivers' deps (ethers v6) into tests/js/node_modules with `npm ci`.
# Uses only the npm registry (and Debian apt if node/npm are missing). Safe to run repeatedly:
# nothing is downloaded when the pinned versions are already in place.
#
#   scripts/install-test-deps.sh              # anvil + JS deps
#   scripts/install-test-deps.sh --anvil-only # anvil only (the demo)
set -euo pipefail

ANVIL_VERSION="1.7.1"                       # pinned; tests/support/devnet.rs was verified with it
ANVIL_PKG="@foundry-rs/anvil-linux-amd64"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/npm"
ANVIL_BIN="$CACHE/node_modules/$ANVIL_PKG/bin/anvil"
JS_DIR="$ROOT/tests/js"

anvil_only=0
for arg in "$@"; do
  case "$arg" in
    --anvil-only) anvil_only=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install-test-deps: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "install-test-deps: $*" >&2; }

# npm with a few retries (a registry hiccup should not fail CI).
npm_retry() {
  local attempt
  for attempt in 1 2 3; do
    if npm "$@"; then
      return 0
    fi
    log "npm $* failed (attempt $attempt/3)"
    sleep $((attempt * 5))
  done
  return 1
}

ensure_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "node/npm missing: installing Debian's nodejs and npm"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "node and npm are required (Node.js >= 18)"
    exit 1
  fi
}

# --- anvil --------------------------------------------------------------------------------
anvil_ok() { # $1 = path; true if it runs and is the pinned version (any version for $ANVIL/PATH)
  [ -x "$1" ] && "$1" --version >/dev/null 2>&1
}

install_anvil() {
  if [ -n "${ANVIL:-}" ] && anvil_ok "$ANVIL"; then
    log "anvil: using \$ANVIL=$ANVIL ($("$ANVIL" --version | head -n1))"
    return 0
  fi
  if command -v anvil >/dev/null 2>&1 && anvil_ok "$(command -v anvil)"; then
    log "anvil: using $(command -v anvil) from PATH ($(anvil --version | head -n1))"
    return 0
  fi
  if anvil_ok "$ANVIL_BIN" && "$ANVIL_BIN" --version | head -n1 | grep -q "Version: $ANVIL_VERSION"; then
    log "anvil: $ANVIL_VERSION already in .cache/npm"
    return 0
  fi
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) log "anvil: no anvil found and $ANVIL_PKG only fits Linux x86_64; install Foundry's anvil and set ANVIL"; exit 1 ;;
  esac
  ensure_node
  log "anvil: installing $ANVIL_PKG@$ANVIL_VERSION into .cache/npm"
  mkdir -p "$CACHE"
  npm_retry install --prefix "$CACHE" --no-audit --no-fund --no-save --loglevel=error \
    "$ANVIL_PKG@$ANVIL_VERSION"
  if ! anvil_ok "$ANVIL_BIN"; then
    log "anvil: $ANVIL_BIN does not run after the install"
    exit 1
  fi
  log "anvil: $("$ANVIL_BIN" --version | head -n1)"
}

# --- JS client deps -------------------------------------------------------------------------
install_js() {
  ensure_node
  local stamp="$JS_DIR/node_modules/.ethgate-lock.sha256"
  local want
  want="$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$JS_DIR/node_modules/ethers/package.json" ]; then
    log "js: tests/js/node_modules up to date"
    return 0
  fi
  log "js: npm ci in tests/js"
  (cd "$JS_DIR" && npm_retry ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
  log "js: ethers $(node -p "require('$JS_DIR/node_modules/ethers/package.json').version")"
}

install_anvil
if [ "$anvil_only" = 0 ]; then
  install_js
fi
