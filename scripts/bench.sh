#!/usr/bin/env bash
# Out-of-process proxy comparison (docs: shared/design/benchmarks.md): wrk against
#   direct   : nginx (one worker) returning fixed JSON-RPC answers
#   HAProxy  : HAProxy 2.x, http mode, keep-alive both sides, in front of that nginx
#   ethgate  : ethgate (release build, --workers 1) in front of that nginx
#   and, unless TLS=0, the same over TLS (keep-alive: wrk reuses its connections, so this is
#   the cost of TLS records, not of handshakes), with a self-signed P-256 certificate for
#   127.0.0.1 made here by openssl:
#   haproxy_tls : a second HAProxy frontend, `bind ... ssl crt combined.pem`, same backend
#   ethgate_tls : a second ethgate with [server.tls], same binary and backend
#   and, with ETHGATE_BIN_ALT, another ethgate binary for an A/B of two builds:
#   ethgate_alt : ETHGATE_BIN_ALT (plain HTTP, same config) in front of that nginx
# Backend and proxies are pinned to CPU 0, `wrk -t1` to CPU 1. Each configuration is measured
# RUNS times for DURATION seconds at each concurrency in CONNS, runs interleaved (direct,
# HAProxy, ethgate, HAProxy TLS, ethgate TLS, then the reverse order on the next run, ...)
# so drift hits all alike; then batches of BATCHES calls at BATCH_CONNS clients (plain HTTP
# targets only: direct, HAProxy, ethgate, ethgate_alt).
# Proxy CPU per request comes from /proc/PID/stat utime+stime. On a shared machine compare
# CPU µs per request, not req/s.
#
# Usage:  bash scripts/bench.sh
# Env:    DURATION=10 RUNS=2 CONNS="1 16 64" BATCHES="1 10 100" BATCH_CONNS=16
#         BATCH_DURATION=5 (BATCHES="" skips batches)   QUICK=1 (2 s, 1 run: a smoke test)
#         TLS=0 (skip the TLS targets)   ONLY="ethgate ethgate_alt" (measure only these targets)
#         ETHGATE_BIN=path (skip `cargo build --release`)   KEEP_WORK=1 (keep logs/configs)
#         ETHGATE_BIN_ALT=path ALT_LABEL=text (second binary, e.g. a build without a change)
#         NO_INSTALL=1 (never apt-get)   BACKEND_CPU=0 LOADGEN_CPU=1
# Needs:  wrk, nginx (and HAProxy for its line), openssl for TLS: wrk/nginx/HAProxy installed
#         with apt-get when missing and root. Default run: about 7 minutes (5 with TLS=0).
#         All traffic stays on 127.0.0.1; every process started here is stopped on exit.
#
# Why nginx can serve both wrk and ethgate's health probe: ethgate POSTs its probe batch
# (eth_chainId, eth_syncing, eth_blockNumber) and forwarded calls to the same upstream URL,
# so a path cannot tell them apart. nginx does not read the body for `return`, but it sees
# Content-Length: the probe batch and each forwarded batch (ethgate re-encodes them with ids
# 0..n-1, byte-identical to the bodies wrk sends here) have distinct lengths, so a `map` on
# $http_content_length picks the matching answer; everything else gets the fixed single
# answer {"jsonrpc":"2.0","id":1,"result":"0x1234"}. (ethgate does not compare the id of a
# single answer with the id it sent, so id 1 for its id 0 is accepted; batch answers carry
# the right ids.)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ "${QUICK:-0}" != 0 ]]; then
    DURATION=${DURATION:-2}
    RUNS=${RUNS:-1}
    BATCH_DURATION=${BATCH_DURATION:-2}
fi
DURATION=${DURATION:-10}
RUNS=${RUNS:-2}
CONNS=${CONNS:-"1 16 64"}
BATCHES=${BATCHES-"1 10 100"}
BATCH_CONNS=${BATCH_CONNS:-16}
BATCH_DURATION=${BATCH_DURATION:-5}
BACKEND_CPU=${BACKEND_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
TLS=${TLS:-1}
ONLY=${ONLY:-}

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '[bench] error: %s\n' "$*" >&2
    exit 1
}

# ------------------------------------------------------------------------------ tools
have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]; }
tool() { if command -v "$1" >/dev/null 2>&1; then command -v "$1"; else echo "/usr/sbin/$1"; fi; }

missing=()
for t in wrk haproxy nginx; do have "$t" || missing+=("$t"); done
if ((${#missing[@]})); then
    if [[ "${NO_INSTALL:-0}" == 0 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing wrk haproxy nginx (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq wrk haproxy nginx >&2
    else
        log "missing: ${missing[*]} (install with: apt-get install -y wrk haproxy nginx)"
    fi
fi
have wrk || die "wrk is required"
have nginx || die "nginx is required (the fixed backend)"
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v curl >/dev/null || die "curl is required"
HAVE_HAPROXY=0
if have haproxy; then HAVE_HAPROXY=1; else log "HAProxy not installed: its line is skipped"; fi
if [[ "$TLS" != 0 ]] && ! command -v openssl >/dev/null; then
    log "openssl not installed: the TLS lines are skipped"
    TLS=0
fi
NGINX=$(tool nginx)
HAPROXY=$(tool haproxy)
CPUS=$(nproc)
((CPUS >= 2)) || log "only $CPUS CPU: pinning puts load generator and proxy on the same core"
if ((CPUS < 2)); then LOADGEN_CPU=$BACKEND_CPU; fi
CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------------------------ lifecycle
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ethgate-bench.XXXXXX")
PIDS=()
OK=0
stop_pids() {
    local pid i
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
cleanup() {
    trap - EXIT INT TERM
    # Newest first: wrk, then proxies, then nginx's workers and master.
    local reversed=() i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do reversed+=("${PIDS[i]}"); done
    if ((${#reversed[@]})); then stop_pids "${reversed[@]}"; fi
    if [[ "${KEEP_WORK:-0}" != 0 || $OK == 0 ]]; then
        log "logs and configs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------ ethgate binary
REV=""
if [[ -n "${ETHGATE_BIN:-}" ]]; then
    [[ -x "$ETHGATE_BIN" ]] || die "ETHGATE_BIN=$ETHGATE_BIN is not executable"
    REV="ETHGATE_BIN=$ETHGATE_BIN"
else
    log "building ethgate (cargo build --release --bin ethgate)"
    # In the background so that an interrupt reaches the trap (and stops cargo) at once.
    cargo build --release --bin ethgate >&2 &
    PIDS+=("$!")
    wait "$!" || die "cargo build failed"
    unset 'PIDS[${#PIDS[@]}-1]'
    ETHGATE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ethgate"
fi
if [[ -n "${ETHGATE_BIN_ALT:-}" ]]; then
    [[ -x "$ETHGATE_BIN_ALT" ]] || die "ETHGATE_BIN_ALT=$ETHGATE_BIN_ALT is not executable"
fi
# What was built: the commit, "+dirty" when the crate's sources differ from it (a given
# ETHGATE_BIN is named by its path: this checkout says nothing about how it was built).
if [[ -z "$REV" ]]; then
    REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then REV+="+dirty"; fi
fi

# Starts "$@" in the background, logging to $WORK/NAME.log; sets PID.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
}

used_ports() { ss -Htln 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u; }
pick_ports() { # N: N distinct free ports, one per line
    # Outside the ephemeral range, so no outgoing connection (ours or another program's) can
    # hold one of them between this pick and the bind.
    local used picked=" " port lo=32768 hi=60999 base=20000 span=12000
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    if ((lo - 10000 >= 2000)); then
        base=10000 span=$((lo - 10000))
    elif ((65535 - hi >= 2000)); then
        base=$((hi + 1)) span=$((65535 - hi))
    fi
    used=$(used_ports)
    while (($(wc -w <<<"$picked") < $1)); do
        port=$((base + RANDOM % span))
        if ! grep -qx "$port" <<<"$used" && [[ "$picked" != *" $port "* ]]; then picked+="$port "; fi
    done
    tr ' ' '\n' <<<"$picked" | grep .
}

# curl options for every check: the bench's CA (its self-signed certificate) when TLS is on,
# so https checks verify the certificate for 127.0.0.1 (plain http ignores them).
CURL_OPTS=()
wait_http() { # URL: until it answers 2xx, up to 10 s
    local i
    for i in $(seq 100); do
        curl -fsS "${CURL_OPTS[@]}" -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

cpu_ticks() { # PIDs: summed utime+stime
    local total=0 pid t
    for pid in "$@"; do
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}

# ------------------------------------------------------------------------------ bodies
single_request='{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
single_answer='{"jsonrpc":"2.0","id":1,"result":"0x1234"}'
batch_request() { # N: ids 0..N-1, exactly as ethgate re-encodes a forwarded batch
    local n=$1 i out="["
    for ((i = 0; i < n; i++)); do
        if ((i)); then out+=","; fi
        out+="{\"jsonrpc\":\"2.0\",\"id\":$i,\"method\":\"eth_blockNumber\",\"params\":[]}"
    done
    printf '%s]' "$out"
}
batch_answer() {
    local n=$1 i out="["
    for ((i = 0; i < n; i++)); do
        if ((i)); then out+=","; fi
        out+="{\"jsonrpc\":\"2.0\",\"id\":$i,\"result\":\"0x1234\"}"
    done
    printf '%s]' "$out"
}
# ethgate's probe, read from the source so the answer follows it; the fallback is its text
# at the time this script was written.
probe_request=$(perl -0777 -ne 'if (/const PROBE_BODY: &str = concat!\((.*?)\);/s) { my $b = $1; my $s = ""; while ($b =~ /r#"(.*?)"#/sg) { $s .= $1 } print $s }' src/upstream/probe.rs 2>/dev/null || true)
if [[ -z "$probe_request" ]]; then
    probe_request='[{"jsonrpc":"2.0","id":0,"method":"eth_chainId"},{"jsonrpc":"2.0","id":1,"method":"eth_syncing"},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}]'
fi
probe_answer='[{"jsonrpc":"2.0","id":0,"result":"0x1"},{"jsonrpc":"2.0","id":1,"result":false},{"jsonrpc":"2.0","id":2,"result":"0x1234"}]'

# Content-Length -> answer. nginx's config parser caps one token near 4 KiB, so long answers
# are split over several map variables that `return` concatenates.
CHUNK=3000
declare -A answer_by_len=()
add_answer() { # REQUEST ANSWER
    local len=${#1}
    if [[ -n "${answer_by_len[$len]:-}" && "${answer_by_len[$len]}" != "$2" ]]; then
        die "two request bodies of $len bytes need different answers; change BATCHES"
    fi
    answer_by_len[$len]=$2
}
((${#single_request} != ${#probe_request})) || die "probe and single request have one length"
add_answer "$probe_request" "$probe_answer"
for n in $BATCHES; do add_answer "$(batch_request "$n")" "$(batch_answer "$n")"; done
[[ -z "${answer_by_len[${#single_request}]:-}" ]] || die "a batch has the single request's length"
pieces=1
for len in "${!answer_by_len[@]}"; do
    a=${answer_by_len[$len]}
    p=$(((${#a} + CHUNK - 1) / CHUNK))
    if ((p > pieces)); then pieces=$p; fi
done

# ------------------------------------------------------------------------------ configs
read -r NGINX_PORT HAPROXY_PORT ETHGATE_PORT ADMIN_PORT HAPROXY_TLS_PORT ETHGATE_TLS_PORT ADMIN_TLS_PORT \
    ALT_PORT ALT_ADMIN_PORT <<<"$(pick_ports 9 | tr '\n' ' ')"
if [[ "$TLS" != 0 ]]; then
    # Self-signed P-256 certificate for 127.0.0.1; the key is PKCS#8 PEM (openssl 3 default).
    mkdir -p "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
        -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" >"$WORK/tls/openssl.log" 2>&1 ||
        die "openssl could not make the certificate: $(cat "$WORK/tls/openssl.log")"
    cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/combined.pem"
    CURL_OPTS=(--cacert "$WORK/tls/cert.pem")
fi
mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
{
    cat <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    map_hash_bucket_size 128;
EOF
    for ((p = 0; p < pieces; p++)); do
        echo "    map \$http_content_length \$rpc_$p {"
        if ((p == 0)); then echo "        default '$single_answer';"; else echo "        default '';"; fi
        for len in "${!answer_by_len[@]}"; do
            a=${answer_by_len[$len]}
            echo "        $len '${a:p*CHUNK:CHUNK}';"
        done
        echo "    }"
    done
    printf '    server {\n        listen 127.0.0.1:%s backlog=4096;\n' "$NGINX_PORT"
    printf '        default_type application/json;\n        location / {\n            return 200 "'
    # shellcheck disable=SC2016 # nginx variables, not shell ones
    for ((p = 0; p < pieces; p++)); do printf '$rpc_%s' "$p"; done
    printf '";\n        }\n    }\n}\n'
} >"$WORK/nginx/nginx.conf"

cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
    pidfile $WORK/haproxy.pid
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend nginx
backend nginx
    server nginx1 127.0.0.1:$NGINX_PORT
EOF
if [[ "$TLS" != 0 ]]; then
    # Same process, second frontend: TLS terminated here, plain keep-alive to the same backend.
    cat >>"$WORK/haproxy.cfg" <<EOF
frontend bench_tls
    bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $WORK/tls/combined.pem alpn http/1.1
    default_backend nginx
EOF
fi

ethgate_config() { # PORT ADMIN_PORT [tls]: an ethgate config in front of nginx
    printf '[server]\nlisten = "127.0.0.1:%s"\nshutdown_grace = "1s"\n\n' "$1"
    if [[ -n "${3:-}" ]]; then
        printf '[server.tls]\ncert = "%s"\nkey = "%s"\n\n' "$WORK/tls/cert.pem" "$WORK/tls/key.pem"
    fi
    printf '[admin]\nlisten = "127.0.0.1:%s"\n\n[log]\nlevel = "warn"\n\n' "$2"
    printf '[[upstream]]\nname = "nginx"\nhttp = "http://127.0.0.1:%s/"\n' "$NGINX_PORT"
}
ethgate_config "$ETHGATE_PORT" "$ADMIN_PORT" >"$WORK/ethgate.toml"
if [[ "$TLS" != 0 ]]; then ethgate_config "$ETHGATE_TLS_PORT" "$ADMIN_TLS_PORT" tls >"$WORK/ethgate_tls.toml"; fi
if [[ -n "${ETHGATE_BIN_ALT:-}" ]]; then ethgate_config "$ALT_PORT" "$ALT_ADMIN_PORT" >"$WORK/ethgate_alt.toml"; fi

post_lua() { # FILE BODY
    cat >"$1" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$2]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %.1f %.1f %.1f %.1f %.1f\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
EOF
}
post_lua "$WORK/single.lua" "$single_request"
for n in $BATCHES; do post_lua "$WORK/batch$n.lua" "$(batch_request "$n")"; done

# ------------------------------------------------------------------------------ start
"$NGINX" -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" >"$WORK/nginx-t.log" 2>&1 ||
    die "nginx rejected its config: $(cat "$WORK/nginx-t.log")"
start nginx taskset -c "$BACKEND_CPU" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
    -e "$WORK/nginx/logs/error.log" -g 'daemon off;'
NGINX_PID=$PID
sleep 0.3
wait_http "http://127.0.0.1:$NGINX_PORT/" || die "nginx did not start: $(cat "$WORK/nginx.log" "$WORK/nginx/logs/error.log")"
NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
for pid in $(pgrep -P "$NGINX_PID"); do PIDS+=("$pid"); done

if ((HAVE_HAPROXY)); then
    start haproxy taskset -c "$BACKEND_CPU" "$HAPROXY" -db -f "$WORK/haproxy.cfg"
    HAPROXY_PID=$PID
    wait_http "http://127.0.0.1:$HAPROXY_PORT/" || die "HAProxy did not start: $(cat "$WORK/haproxy.log")"
fi

start_ethgate() { # NAME BIN ADMIN_PORT: runs BIN with $WORK/NAME.toml; sets PID
    start "$1" taskset -c "$BACKEND_CPU" "$2" run --config "$WORK/$1.toml" --workers 1 --log-level warn
    wait_http "http://127.0.0.1:$3/readyz" ||
        die "$1 never became ready (probe answer refused?): $(tail -5 "$WORK/$1.log"; curl -s "http://127.0.0.1:$3/status")"
}
declare -A ADMIN=([ethgate]=$ADMIN_PORT)
start_ethgate ethgate "$ETHGATE_BIN" "$ADMIN_PORT"
ETHGATE_PID=$PID
if [[ "$TLS" != 0 ]]; then
    start_ethgate ethgate_tls "$ETHGATE_BIN" "$ADMIN_TLS_PORT"
    ETHGATE_TLS_PID=$PID
    ADMIN[ethgate_tls]=$ADMIN_TLS_PORT
fi
if [[ -n "${ETHGATE_BIN_ALT:-}" ]]; then
    start_ethgate ethgate_alt "$ETHGATE_BIN_ALT" "$ALT_ADMIN_PORT"
    ETHGATE_ALT_PID=$PID
    ADMIN[ethgate_alt]=$ALT_ADMIN_PORT
fi

declare -A URL=([direct]="http://127.0.0.1:$NGINX_PORT/" [haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
    [ethgate]="http://127.0.0.1:$ETHGATE_PORT/" [haproxy_tls]="https://127.0.0.1:$HAPROXY_TLS_PORT/"
    [ethgate_tls]="https://127.0.0.1:$ETHGATE_TLS_PORT/" [ethgate_alt]="http://127.0.0.1:$ALT_PORT/")
available="direct"
if ((HAVE_HAPROXY)); then available+=" haproxy"; fi
available+=" ethgate"
if [[ "$TLS" != 0 ]]; then
    if ((HAVE_HAPROXY)); then available+=" haproxy_tls"; fi
    available+=" ethgate_tls"
fi
if [[ -n "${ETHGATE_BIN_ALT:-}" ]]; then available+=" ethgate_alt"; fi
TARGETS=""
for target in $available; do
    if [[ -z "$ONLY" || " $ONLY " == *" $target "* ]]; then TARGETS+="${TARGETS:+ }$target"; fi
done
for target in $ONLY; do
    [[ " $available " == *" $target "* ]] || die "ONLY: $target is not one of: $available"
done
[[ -n "$TARGETS" ]] || die "no target to measure"
# Batches over plain HTTP only (TLS lines are single calls, to keep the run bounded).
BATCH_TARGETS=""
for target in $TARGETS; do
    if [[ "$target" != *_tls ]]; then BATCH_TARGETS+="${BATCH_TARGETS:+ }$target"; fi
done

# Every target must give a JSON-RPC result (with the right ids for batches) before timing;
# over https curl also verifies the certificate for 127.0.0.1 against the bench's CA.
for target in $TARGETS; do
    answer=$(curl -fsS "${CURL_OPTS[@]}" --max-time 2 -H 'Content-Type: application/json' --data-binary "$single_request" "${URL[$target]}") ||
        die "$target: single request failed"
    jq -e '.result == "0x1234" and .id == 1' >/dev/null <<<"$answer" || die "$target: bad single answer: $answer"
    for n in $BATCHES; do
        answer=$(curl -fsS "${CURL_OPTS[@]}" --max-time 2 -H 'Content-Type: application/json' --data-binary "$(batch_request "$n")" "${URL[$target]}") ||
            die "$target: batch of $n failed"
        jq -e --argjson n "$n" 'type == "array" and length == $n and ([.[].id] | sort) == [range($n)] and all(.[]; .result == "0x1234")' \
            >/dev/null <<<"$answer" || die "$target: bad answer to a batch of $n: ${answer:0:300}"
    done
done

# ------------------------------------------------------------------------------ measure
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
proxy_pids() {
    case $1 in
    haproxy | haproxy_tls) echo "$HAPROXY_PID" ;;
    ethgate) echo "$ETHGATE_PID" ;;
    ethgate_tls) echo "$ETHGATE_TLS_PID" ;;
    ethgate_alt) echo "$ETHGATE_ALT_PID" ;;
    *) echo "" ;;
    esac
}
measure() { # TARGET CONNS BATCH RUN DURATION LUA
    local target=$1 conns=$2 batch=$3 run=$4 duration=$5 lua=$6 p0 b0 p1 b1 line
    local proxies
    proxies=$(proxy_pids "$target")
    # shellcheck disable=SC2086
    p0=$(cpu_ticks $proxies)
    # shellcheck disable=SC2086
    b0=$(cpu_ticks $NGINX_PIDS)
    start wrk taskset -c "$LOADGEN_CPU" wrk -t1 -c"$conns" -d"${duration}s" --timeout 5s -s "$lua" "${URL[$target]}"
    wait "$PID" || die "wrk failed: $(cat "$WORK/wrk.log")"
    unset 'PIDS[${#PIDS[@]}-1]'
    # shellcheck disable=SC2086
    p1=$(cpu_ticks $proxies)
    # shellcheck disable=SC2086
    b1=$(cpu_ticks $NGINX_PIDS)
    line=$(grep '^RESULT ' "$WORK/wrk.log") || die "no result from wrk: $(cat "$WORK/wrk.log")"
    # target conns batch run requests duration_us errors p50 p90 p99 p999 max proxy_ticks backend_ticks
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$conns" "$batch" "$run" \
        "$(echo "${line#RESULT }" | tr ' ' '\t')" "$((p1 - p0))" "$((b1 - b0))" >>"$RESULTS"
    awk -F'\t' -v tck="$CLK_TCK" 'END {
        rps = $5 / ($6 / 1e6)
        printf "[bench] %-11s c=%-3s batch=%-3s run %s: %8.0f req/s  p50 %7.1f  p99 %8.1f µs  err %s  proxy %.1f µs/req\n",
            $1, $2, ($3 == 0 ? "-" : $3), $4, rps, $8, $10, $7, ($13 * 1e6 / tck) / ($5 > 0 ? $5 : 1)
    }' "$RESULTS" >&2
}

{
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$WORK/env.txt"
single_runs=$((RUNS * $(wc -w <<<"$CONNS") * $(wc -w <<<"$TARGETS")))
batch_runs=$((RUNS * $(wc -w <<<"$BATCHES") * $(wc -w <<<"$BATCH_TARGETS")))
log "measuring: $single_runs runs x ${DURATION}s + $batch_runs batch runs x ${BATCH_DURATION}s"
in_order() { # RUN TARGET...: the targets, reversed on even runs so that drift within a run
    # does not always favour the same target
    local run=$1 out=() t
    shift
    if ((run % 2)); then out=("$@"); else for t in "$@"; do out=("$t" "${out[@]}"); done; fi
    echo "${out[@]}"
}
for run in $(seq "$RUNS"); do
    for c in $CONNS; do
        # shellcheck disable=SC2086
        for target in $(in_order "$run" $TARGETS); do measure "$target" "$c" 0 "$run" "$DURATION" "$WORK/single.lua"; done
    done
done
for run in $(seq "$RUNS"); do
    for n in $BATCHES; do
        # shellcheck disable=SC2086
        for target in $(in_order "$run" $BATCH_TARGETS); do
            measure "$target" "$BATCH_CONNS" "$n" "$run" "$BATCH_DURATION" "$WORK/batch$n.lua"
        done
    done
done

# What each ethgate counted (its own metrics; 0 from a build that does not record them).
counted=""
for target in ethgate ethgate_tls ethgate_alt; do
    [[ -n "${ADMIN[$target]:-}" ]] || continue
    cnt=$(curl -fsS "http://127.0.0.1:${ADMIN[$target]}/metrics" |
        awk '/^ethgate_requests_total/ { s += $NF; if (!/result="ok"/) bad += $NF } END { printf "%d calls, %d of them not ok", s, bad }')
    counted+="${counted:+; }$target counted $cnt"
done
TLS_INFO=""
for target in haproxy_tls ethgate_tls; do
    [[ " $TARGETS " == *" $target "* ]] || continue
    # The protocol and cipher wrk's OpenSSL ends up with (curl uses the same defaults here).
    t=$(curl -sv "${CURL_OPTS[@]}" --max-time 2 -o /dev/null -H 'Content-Type: application/json' \
        --data-binary "$single_request" "${URL[$target]}" 2>&1 | sed -n 's/^\* SSL connection using //p' | head -1)
    TLS_INFO+="${TLS_INFO:+; }$target: ${t:-?}"
done

# ------------------------------------------------------------------------------ report
echo
echo "ethgate proxy benchmark (scripts/bench.sh)"
echo "machine: $CPUS CPUs, $(uname -r); $(cat "$WORK/env.txt"), at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "versions: $("$NGINX" -v 2>&1 | sed 's/.*version: //'), $("$HAPROXY" -v 2>/dev/null | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'), $("$ETHGATE_BIN" --version) @ $REV"
echo "layout: nginx (1 worker) + proxy on CPU $BACKEND_CPU, wrk -t1 on CPU $LOADGEN_CPU; ${RUNS} run(s) x ${DURATION} s per point (batches ${BATCH_DURATION} s); ranges are min–max over runs"
echo "request: $single_request"
echo "$counted"
if [[ -n "$TLS_INFO" ]]; then echo "TLS (self-signed P-256, keep-alive): $TLS_INFO"; fi
if [[ " $TARGETS " == *" ethgate_alt "* ]]; then
    echo "ethgate_alt: $ETHGATE_BIN_ALT${ALT_LABEL:+ ($ALT_LABEL)}; ethgate: $ETHGATE_BIN"
fi
awk -F'\t' -v tck="$CLK_TCK" -v conns="$CONNS" -v batches="$BATCHES" -v bconns="$BATCH_CONNS" -v targets="$TARGETS" \
    -v alt_label="${ALT_LABEL:-}" '
function rng(a, b, fmt,    x, y) { x = sprintf(fmt, a); y = sprintf(fmt, b); return (x == y) ? x : x "–" y }
function kfmt(x) { return x >= 10000 ? sprintf("%.1fk", x / 1000) : sprintf("%.0f", x) }
function krng(a, b) { return (kfmt(a) == kfmt(b)) ? kfmt(a) : kfmt(a) "–" kfmt(b) }
function add(key, v) {
    if (!(key in n)) { lo[key] = v; hi[key] = v; sum[key] = 0 }
    if (v < lo[key]) lo[key] = v
    if (v > hi[key]) hi[key] = v
    sum[key] += v; n[key]++
}
function mean(key) { return (key in n) ? sum[key] / n[key] : 0 }
function cell(key, fmt) { return (key in n) ? rng(lo[key], hi[key], fmt) : "-" }
function kcell(key) { return (key in n) ? krng(lo[key], hi[key]) : "-" }
function ratio(a, b) { return (b > 0 && a > 0) ? sprintf("%.2f", a / b) : "-" }
function has(t) { return index(" " targets " ", " " t " ") > 0 }
function goal(label, e, h, limit,    r) { # one row of the goals table: ratio e/h against limit
    r = (h > 0) ? e / h : -1
    printf "| %s | %.1f | %.1f | %s | ≤ %.1f× | %s |\n", label, e, h, (r < 0 ? "-" : sprintf("%.2f", r)), limit,
        (r < 0 ? "-" : (r <= limit ? "yes" : "no"))
}
function paired(label, e, h, per,    r, line, wins, runs) { # per-run values side by side: run r of each target ran back to back
    line = ""; wins = 0; runs = 0
    for (r = 1; r <= maxrun; r++) {
        if (!((e SUBSEP r) in per) || !((h SUBSEP r) in per)) continue
        line = line sprintf(" %.0f/%.0f", per[e SUBSEP r], per[h SUBSEP r]); runs++
        if (per[e SUBSEP r] <= per[h SUBSEP r]) wins++
    }
    if (runs > 0) printf "%s per run, ethgate/HAProxy:%s; ethgate at or below in %d of %d runs\n", label, line, wins, runs
}
function cmp(c, a, b, label,    ka, kb) { # ratio row a/b at concurrency c, Δ CPU = a − b
    ka = a SUBSEP c SUBSEP 0; kb = b SUBSEP c SUBSEP 0
    if (!((ka SUBSEP "rps") in n) || !((kb SUBSEP "rps") in n)) return
    printf "| %s | %s | %s | %s | %s | %s | %+.1f |\n", c, label, ratio(mean(ka SUBSEP "rps"), mean(kb SUBSEP "rps")),
        ratio(mean(ka SUBSEP "p50"), mean(kb SUBSEP "p50")), ratio(mean(ka SUBSEP "p99"), mean(kb SUBSEP "p99")),
        ratio(mean(ka SUBSEP "pcpu"), mean(kb SUBSEP "pcpu")), mean(ka SUBSEP "pcpu") - mean(kb SUBSEP "pcpu")
}
{
    t = $1; c = $2; b = $3; reqs = $5; secs = $6 / 1e6
    k = t SUBSEP c SUBSEP b
    add(k SUBSEP "rps", reqs / secs)
    add(k SUBSEP "p50", $8); add(k SUBSEP "p99", $10); add(k SUBSEP "p999", $11)
    add(k SUBSEP "err", $7)
    if (reqs > 0) {
        add(k SUBSEP "pcpu", $13 * 1e6 / tck / reqs)
        pc[k SUBSEP $4] = $13 * 1e6 / tck / reqs; if ($4 > maxrun) maxrun = $4
        p99r[k SUBSEP $4] = $10
        add(k SUBSEP "bcpu", $14 * 1e6 / tck / reqs)
    }
    raw[++rows] = sprintf("| %-11s | %3s | %5s | %s | %9.0f | %7.1f | %7.1f | %7.1f | %8.1f | %8.1f | %3s | %s | %5.1f |",
        t, c, (b == 0 ? "-" : b), $4, reqs / secs, $8, $9, $10, $11, $12, $7,
        (t == "direct" ? "     -" : sprintf("%6.1f", $13 * 1e6 / tck / reqs)), $14 * 1e6 / tck / reqs)
}
END {
    nt = split(targets, T, " "); nc = split(conns, C, " "); nb = split(batches, B, " ")
    name["direct"] = "direct to nginx"; name["haproxy"] = "through HAProxy"; name["ethgate"] = "through ethgate"
    name["haproxy_tls"] = "through HAProxy, TLS"; name["ethgate_tls"] = "through ethgate, TLS"
    name["ethgate_alt"] = "through ethgate_alt"
    short["haproxy"] = "HAProxy"; short["ethgate"] = "ethgate"; short["haproxy_tls"] = "HAProxy TLS"
    short["ethgate_tls"] = "ethgate TLS"; short["ethgate_alt"] = "ethgate_alt"
    print ""
    print "every run (latency µs from wrk; cpu = µs of CPU per request from /proc/PID/stat)"
    print "| target      |   c | batch | run |     req/s |     p50 |     p90 |     p99 |    p99.9 |      max | err | proxy cpu | nginx cpu |"
    print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= rows; i++) print raw[i]

    # Single calls: the benchmarks.md table.
    hdr = "| target |"; sep = "|---|"
    for (j = 1; j <= nc; j++) {
        if (C[j] == 1) { hdr = hdr " c=1 p50 µs | c=1 p99 µs |"; sep = sep "---|---|" }
        else { hdr = hdr " c=" C[j] " req/s | c=" C[j] " p99 µs |"; sep = sep "---|---|" }
    }
    hdr = hdr " proxy CPU µs/req (c=" C[nc > 1 ? 2 : 1] ") | nginx CPU µs/req (c=" C[nc > 1 ? 2 : 1] ") |"; sep = sep "---|---|"
    cc = C[nc > 1 ? 2 : 1]
    print ""
    print "single calls (eth_blockNumber)"
    print hdr; print sep
    for (i = 1; i <= nt; i++) {
        t = T[i]; line = "| " name[t] " |"
        for (j = 1; j <= nc; j++) {
            k = t SUBSEP C[j] SUBSEP 0
            if (C[j] == 1) line = line " " cell(k SUBSEP "p50", "%.0f") " | " cell(k SUBSEP "p99", "%.0f") " |"
            else line = line " " kcell(k SUBSEP "rps") " | " cell(k SUBSEP "p99", "%.0f") " |"
        }
        k = t SUBSEP cc SUBSEP 0
        line = line " " (t == "direct" ? "—" : cell(k SUBSEP "pcpu", "%.1f")) " | " cell(k SUBSEP "bcpu", "%.1f") " |"
        print line
    }
    if (index(" " targets " ", " haproxy ")) {
        line = "| ratio ethgate/HAProxy (means) |"
        for (j = 1; j <= nc; j++) {
            e = "ethgate" SUBSEP C[j] SUBSEP 0; h = "haproxy" SUBSEP C[j] SUBSEP 0
            if (C[j] == 1) line = line " " ratio(mean(e SUBSEP "p50"), mean(h SUBSEP "p50")) " | " ratio(mean(e SUBSEP "p99"), mean(h SUBSEP "p99")) " |"
            else line = line " " ratio(mean(e SUBSEP "rps"), mean(h SUBSEP "rps")) " | " ratio(mean(e SUBSEP "p99"), mean(h SUBSEP "p99")) " |"
        }
        e = "ethgate" SUBSEP cc SUBSEP 0; h = "haproxy" SUBSEP cc SUBSEP 0
        line = line " " ratio(mean(e SUBSEP "pcpu"), mean(h SUBSEP "pcpu")) " | " ratio(mean(e SUBSEP "bcpu"), mean(h SUBSEP "bcpu")) " |"
        print line
    }
    print ""
    print "added over direct (means of runs), and proxy CPU µs/req at every concurrency"
    hdr = "| proxy | c=1 added p50 µs | c=1 added p99 µs |"; sep = "|---|---|---|"
    for (j = 1; j <= nc; j++) { hdr = hdr " CPU µs/req c=" C[j] " |"; sep = sep "---|" }
    print hdr; print sep
    for (i = 1; i <= nt; i++) {
        t = T[i]; if (t == "direct") continue
        k = t SUBSEP 1 SUBSEP 0; d = "direct" SUBSEP 1 SUBSEP 0
        line = sprintf("| %s | %s | %s |", short[t],
            (k SUBSEP "p50" in n) ? sprintf("%+.0f", mean(k SUBSEP "p50") - mean(d SUBSEP "p50")) : "-",
            (k SUBSEP "p99" in n) ? sprintf("%+.0f", mean(k SUBSEP "p99") - mean(d SUBSEP "p99")) : "-")
        for (j = 1; j <= nc; j++) line = line " " cell(t SUBSEP C[j] SUBSEP 0 SUBSEP "pcpu", "%.1f") " |"
        print line
    }
    if (index(" " targets " ", " haproxy ")) {
        line = sprintf("| ratio ethgate/HAProxy | %s | %s |",
            ratio(mean("ethgate" SUBSEP 1 SUBSEP 0 SUBSEP "p50") - mean("direct" SUBSEP 1 SUBSEP 0 SUBSEP "p50"),
                  mean("haproxy" SUBSEP 1 SUBSEP 0 SUBSEP "p50") - mean("direct" SUBSEP 1 SUBSEP 0 SUBSEP "p50")),
            ratio(mean("ethgate" SUBSEP 1 SUBSEP 0 SUBSEP "p99") - mean("direct" SUBSEP 1 SUBSEP 0 SUBSEP "p99"),
                  mean("haproxy" SUBSEP 1 SUBSEP 0 SUBSEP "p99") - mean("direct" SUBSEP 1 SUBSEP 0 SUBSEP "p99")))
        for (j = 1; j <= nc; j++)
            line = line " " ratio(mean("ethgate" SUBSEP C[j] SUBSEP 0 SUBSEP "pcpu"), mean("haproxy" SUBSEP C[j] SUBSEP 0 SUBSEP "pcpu")) " |"
        print line
    }

    # TLS keep-alive: ethgate plain vs TLS vs HAProxy TLS at every concurrency.
    if (has("ethgate_tls") || has("haproxy_tls")) {
        print ""
        print "TLS keep-alive cost, single calls (wrk reuses connections: TLS records, no handshakes); ratios and Δ from means of runs"
        print "| c | target | req/s | p50 µs | p99 µs | proxy CPU µs/req | Δ CPU µs/req |"
        print "|---|---|---|---|---|---|---|"
        for (j = 1; j <= nc; j++) {
            c = C[j]
            for (i = 1; i <= 4; i++) {
                t = (i == 1 ? "ethgate" : i == 2 ? "ethgate_tls" : i == 3 ? "haproxy" : "haproxy_tls")
                k = t SUBSEP c SUBSEP 0
                if (!((k SUBSEP "rps") in n)) continue
                printf "| %s | %s | %s | %s | %s | %s | |\n", c, short[t], kcell(k SUBSEP "rps"), cell(k SUBSEP "p50", "%.0f"),
                    cell(k SUBSEP "p99", "%.0f"), cell(k SUBSEP "pcpu", "%.1f")
            }
            cmp(c, "ethgate_tls", "ethgate", "ratio ethgate TLS/plain")
            cmp(c, "ethgate_tls", "haproxy_tls", "ratio ethgate-TLS/HAProxy-TLS")
            cmp(c, "haproxy_tls", "haproxy", "ratio HAProxy TLS/plain")
        }
    }

    # A/B of two ethgate binaries: CPU per request, paired run by run.
    if (has("ethgate_alt") && has("ethgate")) {
        print ""
        print "ethgate_alt" (alt_label != "" ? " (" alt_label ")" : "") " vs ethgate, single calls, same layout, runs interleaved"
        print "| c | ethgate CPU µs/req | ethgate_alt CPU µs/req | alt − ethgate µs/req (means) | per-run pairs alt − ethgate | ratio alt/ethgate | ethgate req/s | ethgate_alt req/s |"
        print "|---|---|---|---|---|---|---|---|"
        for (j = 1; j <= nc; j++) {
            c = C[j]; e = "ethgate" SUBSEP c SUBSEP 0; a = "ethgate_alt" SUBSEP c SUBSEP 0
            if (!((a SUBSEP "pcpu") in n) || !((e SUBSEP "pcpu") in n)) continue
            pairs = ""
            for (r = 1; r <= maxrun; r++) {
                if ((e SUBSEP r) in pc && (a SUBSEP r) in pc) pairs = pairs (pairs == "" ? "" : " ") sprintf("%+.2f", pc[a SUBSEP r] - pc[e SUBSEP r])
            }
            printf "| %s | %s | %s | %+.2f | %s | %s | %s | %s |\n", c, cell(e SUBSEP "pcpu", "%.2f"), cell(a SUBSEP "pcpu", "%.2f"),
                mean(a SUBSEP "pcpu") - mean(e SUBSEP "pcpu"), pairs, ratio(mean(a SUBSEP "pcpu"), mean(e SUBSEP "pcpu")),
                kcell(e SUBSEP "rps"), kcell(a SUBSEP "rps")
        }
    }

    if (nb > 0) {
        print ""
        print "batches of eth_blockNumber at c=" bconns " (CPU per batch)"
        print "| batch | target | batches/s | calls/s | p50 µs | p99 µs | proxy CPU µs/batch | nginx CPU µs/batch | ratio ethgate/HAProxy (batches/s, p99, CPU) |"
        print "|---|---|---|---|---|---|---|---|---|"
        for (j = 1; j <= nb; j++) {
            for (i = 1; i <= nt; i++) {
                t = T[i]; k = t SUBSEP bconns SUBSEP B[j]
                if (!((k SUBSEP "rps") in n)) continue
                r = ""
                if (t == "ethgate" && index(" " targets " ", " haproxy ")) {
                    h = "haproxy" SUBSEP bconns SUBSEP B[j]
                    r = ratio(mean(k SUBSEP "rps"), mean(h SUBSEP "rps")) ", " ratio(mean(k SUBSEP "p99"), mean(h SUBSEP "p99")) ", " ratio(mean(k SUBSEP "pcpu"), mean(h SUBSEP "pcpu"))
                }
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", B[j], t, kcell(k SUBSEP "rps"),
                    kfmt(mean(k SUBSEP "rps") * B[j]), cell(k SUBSEP "p50", "%.0f"), cell(k SUBSEP "p99", "%.0f"),
                    (t == "direct" ? "—" : cell(k SUBSEP "pcpu", "%.1f")), cell(k SUBSEP "bcpu", "%.1f"), r
            }
        }
    }
    if (index(" " targets " ", " haproxy ") && index(" " targets " ", " ethgate ")) {
        print ""
        print "goals (issue 12): ratio ethgate/HAProxy from means of runs; met when at or below the goal"
        print "| goal | ethgate | HAProxy | ratio | goal | met |"
        print "|---|---|---|---|---|---|"
        e = "ethgate" SUBSEP cc SUBSEP 0; h = "haproxy" SUBSEP cc SUBSEP 0
        goal("proxy CPU µs/req, c=" cc, mean(e SUBSEP "pcpu"), mean(h SUBSEP "pcpu"), 1.0)
        goal("p99 µs, c=" cc, mean(e SUBSEP "p99"), mean(h SUBSEP "p99"), 1.0)
        d = "direct" SUBSEP 1 SUBSEP 0
        if ((d SUBSEP "p50") in n)
            goal("added p50 µs over direct, c=1", mean("ethgate" SUBSEP 1 SUBSEP 0 SUBSEP "p50") - mean(d SUBSEP "p50"),
                mean("haproxy" SUBSEP 1 SUBSEP 0 SUBSEP "p50") - mean(d SUBSEP "p50"), 1.0)
        for (j = 1; j <= nb; j++) if (B[j] == 100)
            goal("proxy CPU µs per batch of 100, c=" bconns, mean("ethgate" SUBSEP bconns SUBSEP 100 SUBSEP "pcpu"),
                mean("haproxy" SUBSEP bconns SUBSEP 100 SUBSEP "pcpu"), 2.0)
        if (has("ethgate_tls") && has("haproxy_tls"))
            goal("CPU µs/req TLS adds, c=" cc, mean("ethgate_tls" SUBSEP cc SUBSEP 0 SUBSEP "pcpu") - mean(e SUBSEP "pcpu"),
                mean("haproxy_tls" SUBSEP cc SUBSEP 0 SUBSEP "pcpu") - mean(h SUBSEP "pcpu"), 1.0)
        # A p99 is a 1% tail on a CPU that proxy and nginx share: one stalled run moves a mean of
        # two, so show every pair too.
        print ""
        paired("p99 µs, c=" cc, e, h, p99r)
    }
    errs = 0
    for (key in n) { split(key, parts, SUBSEP); if (parts[4] == "err") errs += sum[key] }
    print ""
    if (errs > 0) print "WARNING: wrk counted " errs " errors (connect/read/write/status/timeout); see every-run table"
    else print "wrk errors: 0"
}' "$RESULTS"
OK=1
