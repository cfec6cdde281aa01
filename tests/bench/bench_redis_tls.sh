#!/usr/bin/env bash
# bench_redis_tls.sh: a benchmark (not a test) of what TLS to Redis costs
# devexd (rediss://, the bridge of src/redis_tls.c) against plain TCP.
#
# One redis-server on loopback with both a plain port and a TLS port
# (certificates made here with openssl: a CA and a server certificate for
# 127.0.0.1), and five devexd processes ($THREADS worker threads each,
# access_log=false), the same binary:
#   list-plain / list-nocache / list-tls: the shipped app, GET /api/repl for
#       a user owning $REPLS REPLs (session check + listing). list-plain
#       serves repeated requests from the worker caches (kept by Redis's
#       invalidations, lua/services/tracked.lua); their invalidation
#       connection has no TLS, so with rediss:// the caches are off, and
#       list-nocache (redis.cache = false, plain TCP) is the like-for-like
#       peer of list-tls
#   get-plain / get-tls: tests/integration/apps/redisapp.lua, GET /get/:key,
#       one Redis GET per request: every request crosses the bridge
# each with: wrk -t$CLIENT_THREADS -c$CONNECTIONS -d${DURATION}s --latency,
# rounds alternating the order. Prints req/s, p50/p99 and the ratios TLS/plain,
# writes tests/bench/results/redis_tls.json (raw wrk output: redis_tls.log).
#
# It builds nothing. Exit status: 0 when every measurement ran; the numbers
# are not judged here.
#
# Environment (defaults in brackets):
#   DEVEXD_BIN      devexd binary, relative to the repository root [build/devexd]
#   LUA_DIR         devexd's Lua directory [<repo>/lua]
#   REDIS_SERVER    redis-server binary [redis-server from PATH]
#   THREADS         devexd worker threads [2]
#   DURATION        seconds per wrk measurement [10]
#   CONNECTIONS     wrk -c [64]
#   CLIENT_THREADS  wrk -t [2]
#   WARMUP          seconds of warm-up load per endpoint [2]
#   ROUNDS          wrk rounds per endpoint [2]
#   REPLS           REPLs of the benchmark user [10]
#   RESULTS_DIR     where redis_tls.json and redis_tls.log go [tests/bench/results]
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

DEVEXD_BIN=${DEVEXD_BIN:-build/devexd}
LUA_DIR=${LUA_DIR:-$root/lua}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
CLIENT_THREADS=${CLIENT_THREADS:-2}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
REPLS=${REPLS:-10}
RESULTS_DIR=${RESULTS_DIR:-$here/results}
KEY=bench:key
VALUE=bench-value-0123456789

die() { echo "bench_redis_tls: $*" >&2; exit 1; }
log() { echo "bench_redis_tls: $*" >&2; }

for v in THREADS DURATION CONNECTIONS CLIENT_THREADS WARMUP ROUNDS REPLS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((DURATION > 0 && CONNECTIONS > 0 && ROUNDS > 0 && THREADS > 0 && REPLS > 0)) ||
  die "DURATION, CONNECTIONS, ROUNDS, THREADS and REPLS must be > 0"
((CONNECTIONS >= CLIENT_THREADS)) || die "CONNECTIONS must be >= CLIENT_THREADS"
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)"); }
need wrk wrk
need "$REDIS_SERVER" redis-server
need redis-cli redis-tools
need openssl openssl
need curl curl
need python3 python3
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
[[ -x $DEVEXD_BIN ]] || die "no devexd binary at $DEVEXD_BIN (set DEVEXD_BIN)"
DEVEXD_BIN=$(cd "$(dirname "$DEVEXD_BIN")" && pwd)/$(basename "$DEVEXD_BIN")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench_redis_tls.XXXXXX")
redis_pid=""
declare -A pid=()
cleanup() {
  local rc=$? s
  trap - EXIT INT TERM
  for s in "${!pid[@]}"; do stop_pid "${pid[$s]}"; done
  stop_pid "$redis_pid"
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- certificates and redis-server (plain port and TLS port) -------------------
ossl() { openssl "$@" >/dev/null 2>>"$tmp/openssl.log" || { cat "$tmp/openssl.log" >&2; die "openssl $1 failed"; }; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$tmp/ca.key" -out "$tmp/ca.crt" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
  -keyout "$tmp/redis.key" -out "$tmp/redis.csr"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$tmp/redis.ext"
ossl x509 -req -in "$tmp/redis.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial -days 2 \
  -extfile "$tmp/redis.ext" -out "$tmp/redis.crt"
redis_port=$(free_port)
tls_port=$(free_port "$redis_port")
"$REDIS_SERVER" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" --daemonize no --logfile "" \
  --tls-port "$tls_port" --tls-cert-file "$tmp/redis.crt" --tls-key-file "$tmp/redis.key" \
  --tls-ca-cert-file "$tmp/ca.crt" --tls-auth-clients no >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for ((i = 0; i < 100; i++)); do
  [[ $(redis-cli -h 127.0.0.1 -p "$redis_port" PING 2>/dev/null) == PONG ]] && break
  kill -0 "$redis_pid" 2>/dev/null || { cat "$tmp/redis.log" >&2; die "redis-server exited at startup"; }
  sleep 0.1
done
redis-cli -h 127.0.0.1 -p "$redis_port" SET "$KEY" "$VALUE" >/dev/null || die "redis-server did not start"
declare -A rurl=([plain]="redis://127.0.0.1:$redis_port/0" [tls]="rediss://127.0.0.1:$tls_port/0")

# --- the five devexd -------------------------------------------------------------
mkdir -p "$tmp/bucket" "$tmp/ws"
cat >"$tmp/policy.lua" <<EOF2
return { quota = { repls_per_user = $REPLS }, cleanup = { sweep_interval = 3600 } }
EOF2
declare -A port=()
taken=("$redis_port" "$tls_port")
for mode in plain nocache tls; do
  ca_line=""
  [[ $mode == tls ]] && ca_line="ca_file = \"$tmp/ca.crt\","
  [[ $mode == nocache ]] && ca_line="cache = false,"
  u=${rurl[$mode]:-${rurl[plain]}}
  port[list-$mode]=$(free_port "${taken[@]}"); taken+=("${port[list-$mode]}")
  cat >"$tmp/list-$mode.conf.lua" <<EOF2
return {
  server = { listen = { { host = "127.0.0.1", port = ${port[list-$mode]} } }, access_log = false },
  environment = "development",
  frontend_url = "http://localhost:3000",
  dev_login = { enabled = true },
  redis = { url = "$u", $ca_line },
  storage = { driver = "fs", dir = "$tmp/bucket" },
  runtime = { driver = "local", dir = "$tmp/ws" },
  policy = { file = "$tmp/policy.lua" },
}
EOF2
  "$DEVEXD_BIN" -c "$tmp/list-$mode.conf.lua" -L "$LUA_DIR" -t "$THREADS" >"$tmp/list-$mode.log" 2>&1 &
  pid[list-$mode]=$!
  [[ $mode != nocache ]] || continue
  port[get-$mode]=$(free_port "${taken[@]}"); taken+=("${port[get-$mode]}")
  cat >"$tmp/get-$mode.conf.lua" <<EOF2
return {
  server = { listen = { { host = "127.0.0.1", port = ${port[get-$mode]} } }, access_log = false },
  lua = { path = { "$root/tests/integration/apps" }, app = "redisapp" },
}
EOF2
  DEVEX_TEST_REDIS_URL=${rurl[$mode]} DEVEX_TEST_REDIS_CA=$tmp/ca.crt \
    "$DEVEXD_BIN" -c "$tmp/get-$mode.conf.lua" -L "$LUA_DIR" -t "$THREADS" >"$tmp/get-$mode.log" 2>&1 &
  pid[get-$mode]=$!
done
"$DEVEXD_BIN" -c "$tmp/list-plain.conf.lua" -L "$LUA_DIR" templates sync "$root/templates" >"$tmp/sync.log" 2>&1 ||
  { cat "$tmp/sync.log" >&2; die "templates sync failed"; }
for s in "${!pid[@]}"; do
  for ((i = 0; i < 150; i++)); do
    kill -0 "${pid[$s]}" 2>/dev/null || { cat "$tmp/$s.log" >&2; die "$s exited at startup"; }
    [[ $(curl -sS --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$s]}/healthz" 2>/dev/null) == 200 ]] && break
    sleep 0.1
  done
done

# sign in on each shipped-app devexd (the same user), make the REPLs once
declare -A cookie=()
for mode in plain nocache tls; do
  cookie[$mode]=$(curl -sS -D - -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"user":"bench"}' \
    "http://127.0.0.1:${port[list-$mode]}/auth/dev/login" | awk -F'[:;] *' 'tolower($1) == "set-cookie" && $2 ~ /^devex_session=/ { print $2 }')
  [[ -n ${cookie[$mode]} ]] || die "the dev sign-in ($mode) gave no session cookie: $(tail -n 3 "$tmp/list-$mode.log")"
done
for ((i = 1; i <= REPLS; i++)); do
  code=$(curl -sS -o "$tmp/body" -w '%{http_code}' -X POST -H 'Content-Type: application/json' -H "Cookie: ${cookie[plain]}" \
    -d "{\"template\":\"node\",\"replName\":\"bench $i\"}" "http://127.0.0.1:${port[list-plain]}/api/repl/new")
  [[ $code == 201 ]] || die "POST /api/repl/new answered $code: $(cat "$tmp/body")"
done
for mode in plain nocache tls; do
  n=$(curl -sS -H "Cookie: ${cookie[$mode]}" "http://127.0.0.1:${port[list-$mode]}/api/repl" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo "?")
  [[ $n == "$REPLS" ]] || die "GET /api/repl ($mode) listed $n REPLs, expected $REPLS"
  [[ $mode == nocache || $(curl -sS "http://127.0.0.1:${port[get-$mode]}/get/$KEY") == "{\"value\":\"$VALUE\"}" ]] ||
    die "GET /get/$KEY ($mode) gave the wrong body"
done
# devexd's connections on the TLS port are really there
tls_clients=$(redis-cli -h 127.0.0.1 -p "$redis_port" CLIENT LIST | grep -c "laddr=127.0.0.1:$tls_port " || true)
((tls_clients > 0)) || die "no client on Redis's TLS port"

rawlog=$tmp/raw.log
: >"$rawlog"
# run_wrk NAME SECONDS -> "REQ_PER_SEC ERRORS P50_MS P99_MS"
run_wrk() {
  local out mode=${1#*-} url
  url="http://127.0.0.1:${port[$1]}/api/repl"
  [[ $1 == get-* ]] && url="http://127.0.0.1:${port[$1]}/get/$KEY"
  out=$(wrk -t "$CLIENT_THREADS" -c "$CONNECTIONS" -d "${2}s" --latency -H "Cookie: ${cookie[$mode]}" "$url" 2>&1) ||
    { echo "$out" >&2; die "wrk against $1 failed"; }
  kill -0 "${pid[$1]}" 2>/dev/null || { tail -n 5 "$tmp/$1.log" >&2; die "$1 exited during the run"; }
  printf '### wrk -t%s -c%s -d%ss --latency %s (%s)\n%s\n\n' "$CLIENT_THREADS" "$CONNECTIONS" "$2" "$1" "$url" "$out" >>"$rawlog"
  awk '
    function ms(s) { if (s ~ /us$/) return s / 1000; if (s ~ /ms$/) return s + 0; if (s ~ /s$/) return s * 1000; return s }
    /^Requests\/sec:/ { rps = $2 }
    /Socket errors:/ { gsub(",", ""); errs += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { errs += $5 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { if (rps == "") exit 1; printf "%s %d %s %s\n", rps, errs, (p50 == "" ? "null" : p50), (p99 == "" ? "null" : p99) }' <<<"$out" ||
    { echo "$out" >&2; die "could not parse wrk output for $1"; }
}
names=(list-plain list-nocache list-tls get-plain get-tls)
if ((WARMUP > 0)); then
  log "warming up (${WARMUP}s per endpoint)"
  for s in "${names[@]}"; do run_wrk "$s" "$WARMUP" >/dev/null; done
fi
declare -A sum=() errs=() runs=() p50=() p99=()
for s in "${names[@]}"; do sum[$s]=0; errs[$s]=0; runs[$s]=""; done
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=("${names[@]}"); else order=(get-tls get-plain list-tls list-nocache list-plain); fi
  for s in "${order[@]}"; do
    log "round $r/$ROUNDS: $s"
    read -r rps e l50 l99 <<<"$(run_wrk "$s" "$DURATION")"
    sum[$s]=$(awk -v a="${sum[$s]}" -v b="$rps" 'BEGIN { printf "%.2f", a + b }')
    errs[$s]=$((errs[$s] + e))
    runs[$s]+="${runs[$s]:+, }$rps"
    p50[$s]=$l50
    p99[$s]=$l99
  done
done
mean() { awk -v s="$1" -v n="$ROUNDS" 'BEGIN { printf "%.0f", s / n }'; }
declare -A rps=()
for s in "${names[@]}"; do rps[$s]=$(mean "${sum[$s]}"); done
ratio_list=$(ratio "${rps[list-tls]}" "${rps[list-nocache]}")
ratio_list_cached=$(ratio "${rps[list-tls]}" "${rps[list-plain]}")
ratio_get=$(ratio "${rps[get-tls]}" "${rps[get-plain]}")

devexd_version=$("$DEVEXD_BIN" --version 2>&1 | head -1 || true)
redis_version=$("$REDIS_SERVER" --version 2>&1 | head -1 || true)
git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
{
  echo
  echo "Redis over TLS vs plain TCP, devexd ($THREADS threads, access_log=false), loopback, $(nproc) CPUs shared by everything"
  echo "devexd: $devexd_version (git $git_rev); $redis_version"
  echo "HTTP load: wrk -t$CLIENT_THREADS -c$CONNECTIONS -d${DURATION}s --latency x $ROUNDS round(s) (mean), warm-up ${WARMUP}s"
  echo
  printf '%-60s %10s %9s %9s\n' "measurement" "req/s" "p50 ms" "p99 ms"
  for s in "${names[@]}"; do
    case $s in
      list-*) what="GET /api/repl, $REPLS REPLs (shipped app)" ;;
      get-*) what="GET /get/:key (1 Redis GET)" ;;
    esac
    case $s in
      *-plain) how="plain" ;;
      *-nocache) how="plain, caches off" ;;
      *) how="TLS" ;;
    esac
    [[ $s != list-plain ]] || how="plain, caches on"
    printf '%-60s %10s %9s %9s\n' "$what, $how" "${rps[$s]}" "${p50[$s]}" "${p99[$s]}"
  done
  echo "TLS/plain: GET /api/repl $ratio_list (both without caches; $ratio_list_cached against plain with them), GET /get/:key $ratio_get"
  echo "per-round req/s: $(for s in "${names[@]}"; do printf '%s [%s] ' "$s" "${runs[$s]}"; done)"
  tot=0; for s in "${names[@]}"; do tot=$((tot + errs[$s])); done
  ((tot == 0)) || echo "WARNING: $tot errors or non-2xx responses (see redis_tls.log)"
} | tee "$tmp/table.txt"

mkdir -p "$RESULTS_DIR"
{
  echo "{"
  echo "  \"benchmark\": \"redis_tls\", \"time\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"cpus\": $(nproc),"
  echo "  \"devexd\": { \"version\": $(json_str "$devexd_version"), \"git\": $(json_str "$git_rev"), \"threads\": $THREADS },"
  echo "  \"redis\": $(json_str "$redis_version"),"
  echo "  \"load\": { \"connections\": $CONNECTIONS, \"client_threads\": $CLIENT_THREADS, \"duration_s\": $DURATION, \"rounds\": $ROUNDS },"
  for s in "${names[@]}"; do
    echo "  \"$s\": { \"rps\": ${rps[$s]}, \"rounds\": [${runs[$s]}], \"p50_ms\": ${p50[$s]}, \"p99_ms\": ${p99[$s]}, \"errors\": ${errs[$s]} },"
  done
  echo "  \"ratio_tls_plain_list\": $ratio_list,"
  echo "  \"ratio_tls_plain_cached_list\": $ratio_list_cached,"
  echo "  \"ratio_tls_plain_get\": $ratio_get"
  echo "}"
} >"$RESULTS_DIR/redis_tls.json"
{ cat "$tmp/table.txt"; echo; cat "$rawlog"; } >"$RESULTS_DIR/redis_tls.log"
log "wrote $RESULTS_DIR/redis_tls.json and $RESULTS_DIR/redis_tls.log"
