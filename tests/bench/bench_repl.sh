#!/usr/bin/env bash
# bench_repl.sh: a benchmark (not a test) of two REPL routes of the shipped app.
#
# Part 1, side by side in one run, on loopback, against one fresh redis-server,
# the same devexd binary, $THREADS worker threads, access_log=false:
#   (a) GET /api/repl for a user owning $REPLS REPLs (shipped app): the
#       session cookie check (HGETALL + TTL renewal) and the listing
#       (SMEMBERS + HGETALL/EXISTS per REPL) in one Redis script, then, once
#       read, from the worker's caches (lua/services/tracked.lua: kept by
#       Redis's invalidations; no Redis command for a repeated request)
#   (b) GET /get/:key of tests/integration/apps/redisapp.lua (the Redis-GET
#       endpoint bench_redis.sh measures): one Redis GET
#   (c) the Node.js peer of (a), tests/bench/node/list.js (node:http + ioredis,
#       node:cluster with $THREADS processes): the same session script and
#       list script, two round trips per request, the same answer (REPLs and fields)
#   all with: wrk -t$CLIENT_THREADS -c$CONNECTIONS -d${DURATION}s --latency
#   (with the session cookie header; (b) ignores it).
# Part 2: the time from GET /api/repl/session/<id> to its answer with the
#   simulated kubelet making the pod Ready at once: median and p99 over
#   $STARTS starts, $CONCURRENCY at a time (runtime kubernetes against the
#   KubeCluster of tests/integration/k8s_harness.py: kube-apiserver 1.20,
#   controller manager, simulated kubelet), by tests/bench/repl/start_latency.py.
# Prints the figures, writes tests/bench/results/repl.json (raw client output:
# tests/bench/results/repl.log).
#
# It builds nothing. Exit status: 0 when every measurement ran; the numbers are
# not judged here.
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
#   ROUNDS          wrk rounds per endpoint; the order alternates [1]
#   REPLS           REPLs of the benchmark user for part 1 [10]
#   STARTS          session starts measured in part 2 [100] (0 skips part 2)
#   CONCURRENCY     starts in flight at once in part 2 [20]
#   KUBELET_POLL    the simulated kubelet's poll interval, seconds [0.2]
#   RESULTS_DIR     where repl.json and repl.log go [tests/bench/results]
#   NODE_BIN        node binary for (c) [node from PATH]
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
ROUNDS=${ROUNDS:-1}
REPLS=${REPLS:-10}
STARTS=${STARTS:-100}
CONCURRENCY=${CONCURRENCY:-20}
KUBELET_POLL=${KUBELET_POLL:-0.2}
RESULTS_DIR=${RESULTS_DIR:-$here/results}
NODE_BIN=${NODE_BIN:-node}
NODE_DIR=$here/node
KEY=bench:key
VALUE=bench-value-0123456789
USER_NAME=bench

die() { echo "bench_repl: $*" >&2; exit 1; }
log() { echo "bench_repl: $*" >&2; }

for v in THREADS DURATION CONNECTIONS CLIENT_THREADS WARMUP ROUNDS REPLS STARTS CONCURRENCY; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
[[ $KUBELET_POLL =~ ^[0-9]*\.?[0-9]+$ ]] || die "KUBELET_POLL must be a number of seconds"
((DURATION > 0 && CONNECTIONS > 0 && ROUNDS > 0 && THREADS > 0 && REPLS > 0 && CONCURRENCY > 0)) ||
  die "DURATION, CONNECTIONS, ROUNDS, THREADS, REPLS and CONCURRENCY must be > 0"
((CONNECTIONS >= CLIENT_THREADS)) || die "CONNECTIONS must be >= CLIENT_THREADS"

# --- tools -------------------------------------------------------------------
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)"); }
need wrk wrk
need "$REDIS_SERVER" redis-server
need redis-cli redis-tools
need curl curl
need python3 python3
need awk mawk
need "$NODE_BIN" nodejs
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
[[ -x $DEVEXD_BIN ]] || die "no devexd binary at $DEVEXD_BIN (build it: cmake -S . -B build && cmake --build build -j2; or set DEVEXD_BIN)"
[[ -d $LUA_DIR ]] || die "no Lua directory at $LUA_DIR (set LUA_DIR)"
DEVEXD_BIN=$(cd "$(dirname "$DEVEXD_BIN")" && pwd)/$(basename "$DEVEXD_BIN")
if [[ ! -d $NODE_DIR/node_modules/ioredis ]]; then
  log "installing the Node.js peer's dependencies (npm ci in $NODE_DIR)"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci failed in $NODE_DIR"
fi

# --- temporary directory, servers, cleanup -------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench_repl.XXXXXX")
redis_pid=""
repl_pid=""
get_pid=""
node_pid=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$node_pid"
  stop_pid "$get_pid"
  stop_pid "$repl_pid"
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

# (a) devexd, the shipped app: dev sign-in, fs storage, quota raised to $REPLS
repl_port=$(free_port "$redis_port")
mkdir -p "$tmp/bucket" "$tmp/ws"
cat >"$tmp/policy.lua" <<EOF
return { quota = { repls_per_user = $REPLS }, cleanup = { sweep_interval = 3600 } }
EOF
cat >"$tmp/repl.conf.lua" <<EOF
return {
  server = { listen = { { host = "127.0.0.1", port = $repl_port } }, access_log = false },
  environment = "development",
  frontend_url = "http://localhost:3000",
  dev_login = { enabled = true },
  redis = { url = "$redis_url" },
  storage = { driver = "fs", dir = "$tmp/bucket" },
  runtime = { driver = "local", dir = "$tmp/ws" },
  policy = { file = "$tmp/policy.lua" },
}
EOF
"$DEVEXD_BIN" -c "$tmp/repl.conf.lua" -L "$LUA_DIR" templates sync "$root/templates" >"$tmp/sync.log" 2>&1 ||
  { cat "$tmp/sync.log" >&2; die "templates sync failed"; }
"$DEVEXD_BIN" -c "$tmp/repl.conf.lua" -L "$LUA_DIR" -t "$THREADS" >"$tmp/repl.log" 2>&1 &
repl_pid=$!

# (b) devexd, redisapp.lua's GET /get/:key
get_port=$(free_port "$redis_port" "$repl_port")
cat >"$tmp/get.conf.lua" <<EOF
return {
  server = { listen = { { host = "127.0.0.1", port = $get_port } }, access_log = false },
  lua = { path = { "$root/tests/integration/apps" }, app = "redisapp" },
}
EOF
DEVEX_TEST_REDIS_URL=$redis_url "$DEVEXD_BIN" -c "$tmp/get.conf.lua" -L "$LUA_DIR" -t "$THREADS" >"$tmp/get.log" 2>&1 &
get_pid=$!

# (c) the Node.js peer of (a)
node_port=$(free_port "$redis_port" "$repl_port" "$get_port")
(cd "$NODE_DIR" && PORT=$node_port REDIS_URL=$redis_url WORKERS=$THREADS exec "$NODE_BIN" list.js) >"$tmp/node.log" 2>&1 &
node_pid=$!

wait_healthz() { # NAME PID PORT LOG
  local i
  for ((i = 0; i < 150; i++)); do
    kill -0 "$2" 2>/dev/null || { cat "$4" >&2; die "$1 exited at startup (log above)"; }
    [[ $(curl -sS --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$3/healthz" 2>/dev/null) == 200 ]] && return 0
    sleep 0.1
  done
  cat "$4" >&2
  die "$1 did not answer /healthz on port $3"
}
wait_healthz "devexd (shipped app)" "$repl_pid" "$repl_port" "$tmp/repl.log"
wait_healthz "devexd (redisapp)" "$get_pid" "$get_port" "$tmp/get.log"

# sign in, then make the REPLs through the API
cookie=$(curl -sS -D - -o /dev/null -X POST -H 'Content-Type: application/json' -d "{\"user\":\"$USER_NAME\"}" \
  "http://127.0.0.1:$repl_port/auth/dev/login" | awk -F'[:;] *' 'tolower($1) == "set-cookie" && $2 ~ /^devex_session=/ { print $2 }')
[[ -n $cookie ]] || die "the dev sign-in gave no session cookie"
for ((i = 1; i <= REPLS; i++)); do
  code=$(curl -sS -o "$tmp/body" -w '%{http_code}' -X POST -H 'Content-Type: application/json' -H "Cookie: $cookie" \
    -d "{\"template\":\"node\",\"replName\":\"bench $i\"}" "http://127.0.0.1:$repl_port/api/repl/new")
  [[ $code == 201 ]] || die "POST /api/repl/new answered $code: $(cat "$tmp/body")"
done
curl -sS -H "Cookie: $cookie" "http://127.0.0.1:$repl_port/api/repl" >"$tmp/list.json"
listed=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$tmp/list.json")
[[ $listed == "$REPLS" ]] || die "GET /api/repl listed $listed REPLs, expected $REPLS"
list_bytes=$(wc -c <"$tmp/list.json")
[[ $(curl -sS "http://127.0.0.1:$get_port/get/$KEY") == "{\"value\":\"$VALUE\"}" ]] || die "GET /get/$KEY gave the wrong body"
for ((i = 0; i < 150; i++)); do
  kill -0 "$node_pid" 2>/dev/null || { cat "$tmp/node.log" >&2; die "the Node.js peer exited at startup"; }
  [[ $(curl -sS --max-time 2 -o "$tmp/node.json" -w '%{http_code}' -H "Cookie: $cookie" "http://127.0.0.1:$node_port/api/repl" 2>/dev/null) == 200 ]] && break
  sleep 0.1
done
# the same REPLs with the same fields (their order: created_at, equal within a second)
python3 -c 'import json,sys; a,b=(sorted(json.load(open(f)),key=lambda r:r["id"]) for f in sys.argv[1:]); sys.exit(a!=b)' \
  "$tmp/list.json" "$tmp/node.json" ||
  die "the Node.js peer's GET /api/repl differs from devexd's: $(head -c 300 "$tmp/node.json")"

declare -A url=([list]="http://127.0.0.1:$repl_port/api/repl" [get]="http://127.0.0.1:$get_port/get/$KEY"
  [node]="http://127.0.0.1:$node_port/api/repl")
declare -A server_pid=([list]=$repl_pid [get]=$get_pid [node]=$node_pid)
declare -A server_log=([list]=$tmp/repl.log [get]=$tmp/get.log [node]=$tmp/node.log)
rawlog=$tmp/raw.log
: >"$rawlog"

# run_wrk NAME SECONDS -> "REQ_PER_SEC ERRORS P50_MS P99_MS"
run_wrk() {
  local out
  out=$(wrk -t "$CLIENT_THREADS" -c "$CONNECTIONS" -d "${2}s" --latency -H "Cookie: $cookie" "${url[$1]}" 2>&1) ||
    { echo "$out" >&2; die "wrk against $1 failed"; }
  kill -0 "${server_pid[$1]}" 2>/dev/null || { tail -n 5 "${server_log[$1]}" >&2; die "$1's devexd exited during the run"; }
  printf '### wrk -t%s -c%s -d%ss --latency -H "Cookie: devex_session=..." %s\n%s\n\n' "$CLIENT_THREADS" "$CONNECTIONS" "$2" "$1" "$out" >>"$rawlog"
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
  log "warming up (${WARMUP}s per endpoint)"
  for s in list node get; do run_wrk "$s" "$WARMUP" >/dev/null; done
fi
declare -A sum=() errs=() runs=() p50=() p99=()
for s in list node get; do sum[$s]=0; errs[$s]=0; runs[$s]=""; done
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=(list node get); else order=(get node list); fi
  for s in "${order[@]}"; do
    log "round $r/$ROUNDS: wrk -t$CLIENT_THREADS -c$CONNECTIONS -d${DURATION}s --latency -> $s"
    read -r rps e l50 l99 <<<"$(run_wrk "$s" "$DURATION")"
    sum[$s]=$(awk -v a="${sum[$s]}" -v b="$rps" 'BEGIN { printf "%.2f", a + b }')
    errs[$s]=$((errs[$s] + e))
    runs[$s]+="${runs[$s]:+, }$rps"
    p50[$s]=$l50
    p99[$s]=$l99
  done
done
# the listing is still the user's $REPLS REPLs (every request read them)
[[ $(curl -sS -H "Cookie: $cookie" "http://127.0.0.1:$repl_port/api/repl" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') == "$REPLS" ]] ||
  die "the REPL list changed during the run"
stop_pid "$node_pid"; node_pid=""
stop_pid "$get_pid"; get_pid=""
stop_pid "$repl_pid"; repl_pid=""
stop_pid "$redis_pid"; redis_pid=""

mean() { awk -v s="$1" -v n="$ROUNDS" 'BEGIN { printf "%.0f", s / n }'; }
list_rps=$(mean "${sum[list]}")
get_rps=$(mean "${sum[get]}")
node_rps=$(mean "${sum[node]}")
ratio_node=$(awk -v a="$list_rps" -v b="$node_rps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "null" }')
ratio=$(awk -v a="$list_rps" -v b="$get_rps" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "null" }')

# --- part 2: session starts on the KubeCluster ---------------------------------
start_json=null
if ((STARTS > 0)); then
  log "part 2: $STARTS session starts, $CONCURRENCY at a time (KubeCluster start ~20 s)"
  DEVEXD_BIN=$DEVEXD_BIN python3 "$here/repl/start_latency.py" --starts "$STARTS" --concurrency "$CONCURRENCY" \
    --threads "$THREADS" --kubelet-poll "$KUBELET_POLL" >"$tmp/start.json" 2>"$tmp/start.err" ||
    { tail -n 40 "$tmp/start.err" >&2; die "start_latency.py failed"; }
  start_json=$(cat "$tmp/start.json")
  printf '### start_latency.py --starts %s --concurrency %s --threads %s --kubelet-poll %s\n%s\n%s\n\n' \
    "$STARTS" "$CONCURRENCY" "$THREADS" "$KUBELET_POLL" "$(cat "$tmp/start.err")" "$start_json" >>"$rawlog"
fi
sj() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(v[sys.argv[2]] if v else "-")' "$start_json" "$1"; }

# --- report --------------------------------------------------------------------
devexd_version=$("$DEVEXD_BIN" --version 2>&1 | head -1 || true)
redis_version=$("$REDIS_SERVER" --version 2>&1 | head -1 || true)
wrk_version=$(wrk --version 2>&1 | head -1 | awk '{ print $1, $2 }' || true)
git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$root" status --porcelain -- src lua CMakeLists.txt 2>/dev/null | head -1) ]] || git_rev+="+dirty"
{
  echo
  echo "REPL routes, devexd ($THREADS threads, access_log=false), loopback, $(nproc) CPUs shared by everything"
  echo "devexd: $devexd_version ($DEVEXD_BIN, git $git_rev); $redis_version"
  echo "HTTP load: wrk -t$CLIENT_THREADS -c$CONNECTIONS -d${DURATION}s --latency x $ROUNDS round(s) (mean), warm-up ${WARMUP}s"
  echo
  printf '%-62s %10s %9s %9s\n' "measurement" "req/s" "p50 ms" "p99 ms"
  printf '%-62s %10s %9s %9s\n' "(a) GET /api/repl, $REPLS REPLs (cookie check + list, cached)" "$list_rps" "${p50[list]}" "${p99[list]}"
  printf '%-62s %10s %9s %9s\n' "(c) node:http + ioredis GET /api/repl (2 scripts)" "$node_rps" "${p50[node]}" "${p99[node]}"
  printf '%-62s %10s %9s %9s\n' "(b) GET /get/:key, redisapp.lua (1 Redis GET)" "$get_rps" "${p50[get]}" "${p99[get]}"
  echo "(a)/(c) devexd/node: $ratio_node; (a)/(b): $ratio; GET /api/repl body $list_bytes bytes"
  echo "per-round req/s: list [${runs[list]}] node [${runs[node]}] get [${runs[get]}]"
  if ((errs[list] + errs[get] + errs[node] > 0)); then
    echo "WARNING: errors or non-2xx responses: list ${errs[list]}, node ${errs[node]}, get ${errs[get]} (see repl.log)"
  fi
  if [[ $start_json != null ]]; then
    echo
    echo "session start (GET /api/repl/session/<id>, pod Ready at once; simulated kubelet polls every ${KUBELET_POLL}s):"
    echo "  $(sj starts) starts, $(sj concurrency) at a time: median $(sj median_ms) ms, p90 $(sj p90_ms) ms, p99 $(sj p99_ms) ms, max $(sj max_ms) ms; $(sj starts_per_s) starts/s"
    echo "  after the stops: states $(sj states_after_stop), Deployments left $(sj deployments_left)"
  fi
} | tee "$tmp/table.txt"

mkdir -p "$RESULTS_DIR"
cat >"$RESULTS_DIR/repl.json" <<EOF
{
  "benchmark": "repl",
  "time": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "host": { "cpus": $(nproc), "kernel": $(json_str "$(uname -r)") },
  "devexd": { "binary": $(json_str "$DEVEXD_BIN"), "version": $(json_str "$devexd_version"), "git": $(json_str "$git_rev"), "threads": $THREADS, "access_log": false },
  "redis": { "version": $(json_str "$redis_version") },
  "load": { "client": $(json_str "$wrk_version"), "connections": $CONNECTIONS, "client_threads": $CLIENT_THREADS, "duration_s": $DURATION, "rounds": $ROUNDS, "warmup_s": $WARMUP },
  "list": { "target": "GET /api/repl, session cookie, $REPLS REPLs", "repls": $REPLS, "body_bytes": $list_bytes, "rps": $list_rps, "rounds": [${runs[list]}], "p50_ms": ${p50[list]}, "p99_ms": ${p99[list]}, "errors": ${errs[list]} },
  "redis_get": { "target": "GET /get/:key (tests/integration/apps/redisapp.lua), one Redis GET", "rps": $get_rps, "rounds": [${runs[get]}], "p50_ms": ${p50[get]}, "p99_ms": ${p99[get]}, "errors": ${errs[get]} },
  "node_list": { "target": "GET /api/repl, tests/bench/node/list.js (node:cluster, $THREADS processes, ioredis)", "rps": $node_rps, "rounds": [${runs[node]}], "p50_ms": ${p50[node]}, "p99_ms": ${p99[node]}, "errors": ${errs[node]} },
  "ratio_list_get": $ratio,
  "ratio_list_node": $ratio_node,
  "session_start": $start_json
}
EOF
{ cat "$tmp/table.txt"; echo; cat "$rawlog"; } >"$RESULTS_DIR/repl.log"
log "wrote $RESULTS_DIR/repl.json and $RESULTS_DIR/repl.log"
