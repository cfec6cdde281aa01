#!/usr/bin/env bash
# bench_redis.sh: a benchmark (not a test) of one Redis round trip per HTTP
# request, devexd against Node.js, with Redis's own ceiling beside them.
#
# Side by side in one run, on loopback, against one fresh redis-server:
#   (a) redis-benchmark -t get -n $BENCH_REQUESTS -c $CONNECTIONS -P 1 -q
#       (the ceiling: Redis GET round trips with no HTTP in between)
#   (b) devexd, $THREADS worker threads, access_log=false:
#       GET /get/:key -> one devex.redis GET -> 200 {"value":...}
#   (c) Node.js (tests/bench/node/server.js: node:http + ioredis), node:cluster
#       with $THREADS worker processes: the same endpoint and body
# (b) and (c) with the same wrk command: wrk -t$CLIENT_THREADS -c$CONNECTIONS -d${DURATION}s.
# Prints the three figures and the ratio devexd/node (goal: >= 1.5), writes
# tests/bench/results/redis.json (raw client output: tests/bench/results/redis.log).
#
# It builds nothing. It runs `npm ci` in tests/bench/node when node_modules is
# missing (package-lock.json pins ioredis). Exit status: 0 when every
# measurement ran; the numbers are not judged here.
#
# Environment (defaults in brackets):
#   DEVEXD_BIN      devexd binary, relative to the repository root [build/devexd]
#   LUA_DIR         devexd's Lua directory [<repo>/lua]
#   REDIS_SERVER    redis-server binary [redis-server from PATH]
#   NODE_BIN        node binary [node from PATH]
#   THREADS         devexd worker threads = Node worker processes [2]
#   DURATION        seconds per wrk measurement [10]
#   CONNECTIONS     wrk -c and redis-benchmark -c [64]
#   CLIENT_THREADS  wrk -t [2]
#   BENCH_REQUESTS  redis-benchmark -n [200000]
#   WARMUP          seconds of warm-up load per server [2]
#   ROUNDS          wrk rounds per server; the order alternates [1]
#   RESULTS_DIR     where redis.json and redis.log go [tests/bench/results]
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

DEVEXD_BIN=${DEVEXD_BIN:-build/devexd}
LUA_DIR=${LUA_DIR:-$root/lua}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
NODE_BIN=${NODE_BIN:-node}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
CLIENT_THREADS=${CLIENT_THREADS:-2}
BENCH_REQUESTS=${BENCH_REQUESTS:-200000}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-1}
RESULTS_DIR=${RESULTS_DIR:-$here/results}
GOAL=1.5
NODE_DIR=$here/node
KEY=bench:key
VALUE=bench-value-0123456789

die() { echo "bench_redis: $*" >&2; exit 1; }
log() { echo "bench_redis: $*" >&2; }

for v in THREADS DURATION CONNECTIONS CLIENT_THREADS BENCH_REQUESTS WARMUP ROUNDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((DURATION > 0 && CONNECTIONS > 0 && ROUNDS > 0 && THREADS > 0 && BENCH_REQUESTS > 0)) ||
  die "DURATION, CONNECTIONS, ROUNDS, THREADS and BENCH_REQUESTS must be > 0"
((CONNECTIONS >= CLIENT_THREADS)) || die "CONNECTIONS must be >= CLIENT_THREADS"

# --- tools -------------------------------------------------------------------
missing=()
need() { # need COMMAND APT_PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)")
}
need wrk wrk
need "$REDIS_SERVER" redis-server
need redis-benchmark redis-tools
need redis-cli redis-tools
need "$NODE_BIN" nodejs
need npm npm
need curl curl
need awk mawk
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
[[ -x $DEVEXD_BIN ]] || die "no devexd binary at $DEVEXD_BIN (build it: cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build -j2; or set DEVEXD_BIN)"
[[ -d $LUA_DIR ]] || die "no Lua directory at $LUA_DIR (set LUA_DIR)"
[[ -f $NODE_DIR/package-lock.json ]] || die "no $NODE_DIR/package-lock.json"

if [[ ! -d $NODE_DIR/node_modules/ioredis ]]; then
  log "installing the Node.js baseline's dependencies (npm ci in $NODE_DIR)"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci failed in $NODE_DIR"
fi

# --- temporary directory, servers, cleanup -------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench_redis.XXXXXX")
redis_pid=""
devexd_pid=""
node_pid=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$node_pid"
  stop_pid "$devexd_pid"
  stop_pid "$redis_pid"
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# redis-server: nothing persisted
start_redis "$tmp"
redis-cli -h 127.0.0.1 -p "$redis_port" SET "$KEY" "$VALUE" >/dev/null
expected_body="{\"value\":\"$VALUE\"}"

# devexd with a one-route app
devexd_port=$(free_port "$redis_port")
mkdir -p "$tmp/app"
cat >"$tmp/app/benchredis.lua" <<EOF
-- bench app: GET /get/:key -> one Redis GET
local framework = require("devex.app")
local redis = require("devex.redis")
local app = framework.new()
require("routes.health")(app)
local client
app:get("/get/:key", function(req)
  if client == nil then client = assert(redis.connect("$redis_url")) end
  local v, err = client:call("GET", req.params.key)
  if v == nil then return 503, { error = tostring(err) } end
  return 200, { value = v }
end)
return app
EOF
cat >"$tmp/devexd.conf.lua" <<EOF
return {
  server = { listen = { { host = "127.0.0.1", port = $devexd_port } }, access_log = false },
  lua = { path = { "$tmp/app" }, app = "benchredis" },
}
EOF
"$DEVEXD_BIN" -c "$tmp/devexd.conf.lua" -L "$LUA_DIR" -t "$THREADS" >"$tmp/devexd.log" 2>&1 &
devexd_pid=$!

# Node.js: cluster with THREADS workers (WORKERS=1: one process)
node_port=$(free_port "$redis_port" "$devexd_port")
(cd "$NODE_DIR" && PORT=$node_port REDIS_URL=$redis_url WORKERS=$THREADS exec "$NODE_BIN" server.js) >"$tmp/node.log" 2>&1 &
node_pid=$!

wait_ready() { # wait_ready NAME PID PORT LOGFILE: /get/KEY must answer the expected body
  local name=$1 pid=$2 port=$3 logf=$4 i body code
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "$name exited at startup (log above)"; }
    if body=$(curl -sS --max-time 2 -o "$tmp/body" -w '%{http_code}' "http://127.0.0.1:$port/get/$KEY" 2>/dev/null); then
      code=$body
      body=$(cat "$tmp/body")
      if [[ $code == 200 && $body == "$expected_body" ]]; then return 0; fi
      # 503 while the Redis connection is being made; anything else is wrong
      [[ $code == 503 ]] || die "$name answered /get/$KEY with $code: $body"
    fi
    sleep 0.1
  done
  cat "$logf" >&2
  die "$name did not answer /get/$KEY with $expected_body on port $port within 15 s"
}
wait_ready devexd "$devexd_pid" "$devexd_port" "$tmp/devexd.log"
wait_ready node "$node_pid" "$node_port" "$tmp/node.log"

declare -A port=([devexd]=$devexd_port [node]=$node_port)
declare -A server_pid=([devexd]=$devexd_pid [node]=$node_pid)
declare -A server_log=([devexd]=$tmp/devexd.log [node]=$tmp/node.log)

alive() { # alive SERVER: die with the tail of its log if it has exited
  kill -0 "${server_pid[$1]}" 2>/dev/null && return 0
  tail -n 5 "${server_log[$1]}" >&2
  die "$1 (pid ${server_pid[$1]}) exited during the benchmark; its log ends above"
}
rawlog=$tmp/raw.log
: >"$rawlog"

# --- (a) redis-benchmark ---------------------------------------------------------
log "redis-benchmark -t get -n $BENCH_REQUESTS -c $CONNECTIONS -P 1 -q"
rb_out=$(redis-benchmark -h 127.0.0.1 -p "$redis_port" -t get -n "$BENCH_REQUESTS" -c "$CONNECTIONS" -P 1 -q 2>&1) ||
  { echo "$rb_out" >&2; die "redis-benchmark failed"; }
rb_out=$(tr '\r' '\n' <<<"$rb_out")
printf '### redis-benchmark -t get -n %s -c %s -P 1 -q\n%s\n\n' "$BENCH_REQUESTS" "$CONNECTIONS" "$rb_out" >>"$rawlog"
redis_rps=$(awk '/^GET: [0-9.]+ requests per second/ { v = $2 } END { if (v == "") exit 1; print v }' <<<"$rb_out") ||
  { echo "$rb_out" >&2; die "could not parse redis-benchmark output"; }
redis_p50=$(awk '/^GET: / { for (i = 1; i <= NF; i++) if ($(i) ~ /^p50=/) { sub("p50=", "", $(i)); v = $(i) } } END { print (v == "" ? "null" : v) }' <<<"$rb_out")

# --- (b), (c) wrk ------------------------------------------------------------------
# run_wrk SERVER SECONDS -> prints "REQ_PER_SEC ERRORS P50_MS P99_MS"
run_wrk() {
  local out
  out=$(wrk -t "$CLIENT_THREADS" -c "$CONNECTIONS" -d "${2}s" --latency "http://127.0.0.1:${port[$1]}/get/$KEY" 2>&1) ||
    { echo "$out" >&2; die "wrk against $1 failed"; }
  alive "$1"
  printf '### wrk -t%s -c%s -d%ss %s\n%s\n\n' "$CLIENT_THREADS" "$CONNECTIONS" "$2" "$1" "$out" >>"$rawlog"
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

if ((WARMUP > 0)); then
  log "warming up (${WARMUP}s per server)"
  for s in devexd node; do run_wrk "$s" "$WARMUP" >/dev/null; done
fi

declare -A sum=() errs=() runs=() p50=() p99=()
for s in devexd node; do sum[$s]=0; errs[$s]=0; runs[$s]=""; done
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=(devexd node); else order=(node devexd); fi
  for s in "${order[@]}"; do
    log "round $r/$ROUNDS: wrk -t$CLIENT_THREADS -c$CONNECTIONS -d${DURATION}s -> $s"
    out=$(run_wrk "$s" "$DURATION")
    read -r rps e l50 l99 <<<"$out"
    sum[$s]=$(awk -v a="${sum[$s]}" -v b="$rps" 'BEGIN { printf "%.2f", a + b }')
    errs[$s]=$((errs[$s] + e))
    runs[$s]+="${runs[$s]:+, }$rps"
    p50[$s]=$l50
    p99[$s]=$l99
  done
done

# the value is still there: every request was a real GET of it
[[ $(redis-cli -h 127.0.0.1 -p "$redis_port" GET "$KEY") == "$VALUE" ]] || die "the bench key changed during the run"

# --- report --------------------------------------------------------------------
mean() { awk -v s="$1" -v n="$ROUNDS" 'BEGIN { printf "%.0f", s / n }'; }

devexd_rps=$(mean "${sum[devexd]}")
node_rps=$(mean "${sum[node]}")
redis_rps_int=$(awk -v v="$redis_rps" 'BEGIN { printf "%.0f", v }')
ratio_dn=$(ratio "$devexd_rps" "$node_rps")
ratio_dr=$(ratio "$devexd_rps" "$redis_rps_int")
goal_met=$(awk -v r="$ratio_dn" -v g="$GOAL" 'BEGIN { print (r != "null" && r + 0 >= g) ? "true" : "false" }')

devexd_version=$("$DEVEXD_BIN" --version 2>&1 | head -1 || true)
redis_version=$("$REDIS_SERVER" --version 2>&1 | head -1 || true)
node_version=$("$NODE_BIN" --version 2>&1 | head -1 || true)
ioredis_version=$(cd "$NODE_DIR" && "$NODE_BIN" -p 'require("ioredis/package.json").version' 2>/dev/null || echo unknown)
wrk_version=$(wrk --version 2>&1 | head -1 | awk '{ print $1, $2 }' || true)
git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git_dirty=$(git -C "$root" status --porcelain -- src lua CMakeLists.txt 2>/dev/null | head -1)
[[ -z $git_dirty ]] || git_rev+="+dirty"
errors_total=$((errs[devexd] + errs[node]))

{
  echo
  echo "one Redis GET per HTTP request: devexd ($THREADS threads) vs Node.js (cluster, $THREADS workers), loopback, $(nproc) CPUs shared by everything"
  echo "devexd: $devexd_version ($DEVEXD_BIN, git $git_rev); node $node_version + ioredis $ioredis_version; $redis_version"
  echo "HTTP load: wrk -t$CLIENT_THREADS -c$CONNECTIONS -d${DURATION}s x $ROUNDS round(s) (mean), warm-up ${WARMUP}s"
  echo
  printf '%-58s %12s %10s %10s\n' "measurement" "req/s" "p50 ms" "p99 ms"
  printf '%-58s %12s %10s %10s\n' "(a) redis-benchmark -t get -n $BENCH_REQUESTS -c $CONNECTIONS -P 1 (ceiling)" "$redis_rps_int" "$redis_p50" "-"
  printf '%-58s %12s %10s %10s\n' "(b) devexd GET /get/:key (1 Redis GET)" "$devexd_rps" "${p50[devexd]}" "${p99[devexd]}"
  printf '%-58s %12s %10s %10s\n' "(c) node:http + ioredis GET /get/:key (1 Redis GET)" "$node_rps" "${p50[node]}" "${p99[node]}"
  echo
  echo "devexd/node: $ratio_dn (goal >= $GOAL: $([[ $goal_met == true ]] && echo met || echo NOT met)); devexd/redis-benchmark: $ratio_dr"
  echo "per-round req/s: devexd [${runs[devexd]}] node [${runs[node]}]"
  if ((errors_total > 0)); then
    echo "WARNING: errors or non-2xx responses: devexd ${errs[devexd]}, node ${errs[node]} (see redis.log)"
  fi
} | tee "$tmp/table.txt"

mkdir -p "$RESULTS_DIR"
cat >"$RESULTS_DIR/redis.json" <<EOF
{
  "benchmark": "redis",
  "time": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "host": { "cpus": $(nproc), "kernel": $(json_str "$(uname -r)") },
  "redis": { "version": $(json_str "$redis_version"), "benchmark": "redis-benchmark -t get -n $BENCH_REQUESTS -c $CONNECTIONS -P 1 -q", "rps": $redis_rps_int, "p50_ms": $redis_p50 },
  "devexd": { "binary": $(json_str "$DEVEXD_BIN"), "version": $(json_str "$devexd_version"), "git": $(json_str "$git_rev"), "threads": $THREADS, "access_log": false, "target": "GET /get/:key, one devex.redis GET", "rps": $devexd_rps, "rounds": [${runs[devexd]}], "p50_ms": ${p50[devexd]}, "p99_ms": ${p99[devexd]}, "errors": ${errs[devexd]} },
  "node": { "version": $(json_str "$node_version"), "ioredis": $(json_str "$ioredis_version"), "mode": "node:cluster, $THREADS worker processes", "target": "GET /get/:key, one ioredis GET", "rps": $node_rps, "rounds": [${runs[node]}], "p50_ms": ${p50[node]}, "p99_ms": ${p99[node]}, "errors": ${errs[node]} },
  "load": { "client": $(json_str "$wrk_version"), "connections": $CONNECTIONS, "client_threads": $CLIENT_THREADS, "duration_s": $DURATION, "rounds": $ROUNDS, "warmup_s": $WARMUP },
  "ratio_devexd_node": $ratio_dn,
  "ratio_devexd_redis_benchmark": $ratio_dr,
  "goal_devexd_node": $GOAL,
  "goal_met": $goal_met
}
EOF
{ cat "$tmp/table.txt"; echo; cat "$rawlog"; } >"$RESULTS_DIR/redis.log"
log "wrote $RESULTS_DIR/redis.json and $RESULTS_DIR/redis.log"
