#!/usr/bin/env bash
# bench_gateway.sh: a benchmark (not a test) of devexd's runner gateway
# (lua/routes/gateway.lua; WebSockets tunnelled by H2O's proxy, watched by
# src/tunnel_watch.c) against the same runner reached directly.
#
# One run, on loopback, one fresh redis-server, one devexd (the development
# config etc/devexd.dev.conf.lua with runner = { domain = "runner.devex.test",
# exposure = "gateway" }), one REPL of a template "standin" whose single-host
# runner is tests/integration/runner_standin.py (a threaded Python WebSocket
# echo server at /api/v1/repl/ws). The same client, tests/bench/gateway/wsbench.c
# (C, one thread, epoll), measures against two targets:
#   direct   ws://<the session's endpoint, from Redis>/api/v1/repl/ws
#   gateway  ws://<devexd>/<replId>/api/v1/repl/ws, Host: runner.devex.test,
#            the owner's session cookie, Origin: the frontend URL
# three loads, each a closed loop (one message in flight per connection, each
# echo checked byte for byte), one measurement per load and target:
#   echo  $ECHO_CONNECTIONS connections, $ECHO_SIZE-byte messages (keystrokes, terminal
#         output): round trips per second, p50 / p99 per round trip
#   mid   $MID_CONNECTIONS connections, $MID_SIZE-byte messages (a paste, a file chunk):
#         the same figures; a message that devexd writes to the runner in more
#         than one piece shows there what the tunnel's TCP settings cost
#   bulk  $BULK_CONNECTIONS connections, $BULK_SIZE-byte messages: payload MB/s (one
#         way, 1 MB = 10^6 bytes; the wire carries it both ways), p50 / p99
#         per message
# and reports gateway/direct for each, the latency the gateway adds, and the
# CPU share (100% = one CPU) of the runner, devexd (and how long its threads
# waited for a CPU), the client and the whole machine during each measurement.
# The stand-in is the same process for both targets: it bounds both, and the
# ratio is what the gateway costs against it.
#
# It builds nothing but the client (tests/bench/gateway/wsbench.c, compiled
# into the temporary directory with $CC). Prints a table (tests/bench/gateway/
# report.py) and writes tests/bench/results/gateway.json (raw client output:
# gateway.log). Exit status: 0 when every measurement ran and every echo came
# back intact; the numbers are not judged here. Everything listens on
# 127.0.0.1; the REPL's session is stopped and all processes end on exit.
#
# Environment (defaults in brackets):
#   DEVEXD_BIN        devexd binary, relative to the repository root [build/devexd]
#   LUA_DIR           devexd's Lua directory [<repo>/lua]
#   REDIS_SERVER      redis-server binary [redis-server from PATH]
#   CC                C compiler for the client [cc]
#   THREADS           devexd worker threads [2]
#   DURATION          seconds per measurement [10]
#   WARMUP            seconds of load before each measurement, not counted [2]
#   ROUNDS            rounds; the order direct/gateway alternates [1]
#   LOADS             which loads, in order ["echo mid bulk"]
#   ECHO_CONNECTIONS  connections of the echo load [8]
#   ECHO_SIZE         bytes per echo message [64]
#   MID_CONNECTIONS   connections of the mid load [2]
#   MID_SIZE          bytes per mid message [16000]
#   BULK_CONNECTIONS  connections of the bulk load [2]
#   BULK_SIZE         bytes per bulk message [1000000]
#   RESULTS_DIR       where gateway.json and gateway.log go [tests/bench/results]
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

DEVEXD_BIN=${DEVEXD_BIN:-build/devexd}
LUA_DIR=${LUA_DIR:-$root/lua}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
CC=${CC:-cc}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-1}
ECHO_CONNECTIONS=${ECHO_CONNECTIONS:-8}
ECHO_SIZE=${ECHO_SIZE:-64}
MID_CONNECTIONS=${MID_CONNECTIONS:-2}
MID_SIZE=${MID_SIZE:-16000}
BULK_CONNECTIONS=${BULK_CONNECTIONS:-2}
BULK_SIZE=${BULK_SIZE:-1000000}
LOADS=${LOADS:-echo mid bulk}
RESULTS_DIR=${RESULTS_DIR:-$here/results}
RUNNER_DOMAIN=runner.devex.test
FRONTEND=http://app.devex.test
USER_NAME=bench

die() { echo "bench_gateway: $*" >&2; exit 1; }
log() { echo "bench_gateway: $*" >&2; }

for v in THREADS DURATION WARMUP ROUNDS ECHO_CONNECTIONS ECHO_SIZE MID_CONNECTIONS MID_SIZE BULK_CONNECTIONS BULK_SIZE; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((DURATION > 0 && ROUNDS > 0 && THREADS > 0 && ECHO_CONNECTIONS > 0 && ECHO_SIZE > 0 && MID_CONNECTIONS > 0 && MID_SIZE > 0 && BULK_CONNECTIONS > 0 && BULK_SIZE > 0)) ||
  die "DURATION, ROUNDS, THREADS and the connection counts and sizes must be > 0"
((BULK_SIZE <= 64 * 1000 * 1000 && MID_SIZE <= 64 * 1000 * 1000 && ECHO_SIZE <= 64 * 1000 * 1000)) || die "a message size is above the stand-in's 64 MB limit"
for load in $LOADS; do [[ $load == echo || $load == mid || $load == bulk ]] || die "LOADS: unknown load '$load' (echo, mid, bulk)"; done

# --- tools -------------------------------------------------------------------
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)"); }
need "$REDIS_SERVER" redis-server
need redis-cli redis-tools
need curl curl
need python3 python3
need "$CC" gcc
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
[[ -x $DEVEXD_BIN ]] || die "no devexd binary at $DEVEXD_BIN (build it: cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2; or set DEVEXD_BIN)"
[[ -d $LUA_DIR ]] || die "no Lua directory at $LUA_DIR (set LUA_DIR)"
DEVEXD_BIN=$(cd "$(dirname "$DEVEXD_BIN")" && pwd)/$(basename "$DEVEXD_BIN")

# --- temporary directory, servers, cleanup -------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench_gateway.XXXXXX")
redis_pid=""
devexd_pid=""
runner_pgid=""
repl_id=""
cookie=""
devexd_port=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # stop the session the way the API does (its runner is detached from devexd)
  if [[ -n $repl_id && -n $devexd_pid ]] && kill -0 "$devexd_pid" 2>/dev/null; then
    curl -sS --max-time 10 -o /dev/null -X DELETE -H "Cookie: $cookie" \
      "http://127.0.0.1:$devexd_port/api/repl/session/$repl_id" 2>/dev/null || true
  fi
  stop_pid "$devexd_pid"
  # the runner's process group, if the stop did not end it
  if [[ -n $runner_pgid ]] && kill -0 -- "-$runner_pgid" 2>/dev/null; then
    kill -TERM -- "-$runner_pgid" 2>/dev/null || true
    sleep 0.5
    kill -KILL -- "-$runner_pgid" 2>/dev/null || true
  fi
  stop_pid "$redis_pid"
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# the client
"$CC" -O2 -Wall -o "$tmp/wsbench" "$here/gateway/wsbench.c" 2>"$tmp/cc.log" ||
  { cat "$tmp/cc.log" >&2; die "could not compile tests/bench/gateway/wsbench.c"; }

start_redis "$tmp"

# devexd: the development config, the runner domain in gateway exposure, a
# policy whose template "standin" runs the runner stand-in as the local runner
devexd_port=$(free_port "$redis_port")
mkdir -p "$tmp/templates/standin"
echo "stand-in workspace" >"$tmp/templates/standin/README.md"
cat >"$tmp/policy.lua" <<EOF
return {
  templates = { catalogue = { standin = { image = 'runner-standin', port = 8081,
    local_command = { 'sh', '-c', 'exec python3 $root/tests/integration/runner_standin.py --host 127.0.0.1 --port "\$PORT"' } } } },
  cleanup = { idle_limit = 3600, sweep_interval = 3600 },
}
EOF
cat >"$tmp/devexd.conf.lua" <<EOF
local c = dofile("$root/etc/devexd.dev.conf.lua")
c.server.listen = { { host = "127.0.0.1", port = $devexd_port } }
c.server.access_log = false
c.public_url = "http://localhost:$devexd_port"
c.frontend_url = "$FRONTEND"
c.runner = { domain = "$RUNNER_DOMAIN", exposure = "gateway", scheme = "http" }
c.policy = { file = "$tmp/policy.lua" }
return c
EOF
export DEVEXD_DATA=$tmp/data REDIS_URL=$redis_url ENVIRONMENT=development
"$DEVEXD_BIN" -c "$tmp/devexd.conf.lua" -L "$LUA_DIR" templates sync "$tmp/templates" >"$tmp/sync.log" 2>&1 ||
  { cat "$tmp/sync.log" >&2; die "templates sync failed"; }
"$DEVEXD_BIN" -c "$tmp/devexd.conf.lua" -L "$LUA_DIR" -t "$THREADS" >"$tmp/devexd.log" 2>&1 &
devexd_pid=$!
for ((i = 0; i < 150; i++)); do
  kill -0 "$devexd_pid" 2>/dev/null || { cat "$tmp/devexd.log" >&2; die "devexd exited at startup (log above)"; }
  [[ $(curl -sS --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$devexd_port/healthz" 2>/dev/null) == 200 ]] && break
  sleep 0.1
done
((i < 150)) || { cat "$tmp/devexd.log" >&2; die "devexd did not answer /healthz on port $devexd_port"; }

# sign in, make a REPL of the stand-in template, start its session
api() { # api METHOD PATH [DATA [CONTENT_TYPE]] -> body in $tmp/body, prints the status
  local args=(-sS --max-time 60 -o "$tmp/body" -w '%{http_code}' -X "$1")
  [[ -z $cookie ]] || args+=(-H "Cookie: $cookie")
  [[ -z ${3:-} ]] || args+=(-H "Content-Type: ${4:-application/json}" --data-binary "$3")
  curl "${args[@]}" "http://127.0.0.1:$devexd_port$2"
}
cookie=$(curl -sS -D - -o /dev/null -X POST --data "user=$USER_NAME" "http://127.0.0.1:$devexd_port/auth/dev/login" |
  awk -F'[:;] *' 'tolower($1) == "set-cookie" && $2 ~ /^devex_session=/ { print $2 }')
[[ -n $cookie ]] || die "the dev sign-in gave no session cookie"
code=$(api POST /api/repl/new '{"template":"standin","replName":"gateway bench"}')
[[ $code == 201 ]] || die "POST /api/repl/new answered $code: $(cat "$tmp/body")"
repl_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$tmp/body")
code=$(api GET "/api/repl/session/$repl_id")
[[ $code == 200 ]] || { tail -n 20 "$tmp/devexd.log" >&2; die "GET /api/repl/session/$repl_id answered $code: $(cat "$tmp/body")"; }
rcli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }
endpoint=$(rcli HGET "devex:activeSession:$repl_id" endpoint)
runner_pgid=$(rcli HGET "devex:activeSession:$repl_id" pid)
[[ $endpoint =~ ^([0-9.]+):([0-9]+)$ ]] || die "the session's endpoint in Redis is '$endpoint', expected ADDRESS:PORT"
runner_addr=${BASH_REMATCH[1]}
runner_port=${BASH_REMATCH[2]}
runner_pid=$(curl -sS --max-time 5 "http://$endpoint/_standin/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])') ||
  die "the runner at $endpoint did not answer /_standin/info"
[[ $(curl -sS --max-time 5 -H "Host: $RUNNER_DOMAIN" -H "Cookie: $cookie" "http://127.0.0.1:$devexd_port/$repl_id/ping") == '{"message":"pong"}' ]] ||
  die "GET /$repl_id/ping through the gateway did not reach the runner"
log "REPL $repl_id runs its stand-in runner (pid $runner_pid) at $endpoint; devexd (pid $devexd_pid) on port $devexd_port"

ws_path=/api/v1/repl/ws
declare -A client_args=(
  [direct]="-a $runner_addr -p $runner_port -u $ws_path"
  [gateway]="-a 127.0.0.1 -p $devexd_port -u /$repl_id$ws_path"
)
declare -A load_args=(
  [echo]="-c $ECHO_CONNECTIONS -s $ECHO_SIZE"
  [mid]="-c $MID_CONNECTIONS -s $MID_SIZE"
  [bulk]="-c $BULK_CONNECTIONS -s $BULK_SIZE"
)

clk_tck=$(getconf CLK_TCK)
ncpu=$(nproc)
cpu_ticks() { # utime + stime of a process (all its threads, live and exited), in clock ticks
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  awk '{ print $12 + $13 }' <<<"$stat"
}
# what report.py sample compares before and after a client run; the run-queue
# wait is summed over devexd's threads (they stay; a runner's do not)
snapshot() {
  printf 'wall=%s hz=%s ncpu=%s devexd_ticks=%s runner_ticks=%s ' "$(date +%s.%N)" "$clk_tck" "$ncpu" \
    "$(cpu_ticks "$devexd_pid")" "$(cpu_ticks "$runner_pid")"
  cat /proc/"$devexd_pid"/task/*/schedstat 2>/dev/null | awk '{ q += $2 } END { printf "devexd_wait_ns=%d ", q }'
  awk '/^cpu / { printf "machine_total=%d machine_idle=%d\n", $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat
}
alive() {
  kill -0 "$devexd_pid" 2>/dev/null || { tail -n 5 "$tmp/devexd.log" >&2; die "devexd exited during the benchmark (log above)"; }
  kill -0 "$runner_pid" 2>/dev/null || die "the runner stand-in (pid $runner_pid) exited during the benchmark"
}

# measure ROUND LOAD TARGET: one client run; appends a JSON line to $tmp/runs.jsonl
rawlog=$tmp/raw.log
: >"$rawlog"
: >"$tmp/runs.jsonl"
measure() {
  local r=$1 load=$2 target=$3 out before after args
  # shellcheck disable=SC2206
  args=(${client_args[$target]} ${load_args[$load]} -d "$DURATION" -w "$WARMUP")
  if [[ $target == gateway ]]; then
    args+=(-H "Host: $RUNNER_DOMAIN" -H "Cookie: $cookie" -H "Origin: $FRONTEND")
  fi
  log "round $r/$ROUNDS: $load -> $target (${WARMUP}s + ${DURATION}s)"
  before=$(snapshot)
  out=$("$tmp/wsbench" "${args[@]}" 2>"$tmp/client.err") ||
    { cat "$tmp/client.err" >&2; echo "$out" >&2; die "wsbench failed ($load -> $target)"; }
  after=$(snapshot)
  alive
  printf '### round %s %s -> %s: wsbench %s\n%s\n%s\n\n' "$r" "$load" "$target" \
    "${args[*]/devex_session=*/devex_session=...}" "$(cat "$tmp/client.err")" "$out" >>"$rawlog"
  python3 "$here/gateway/report.py" sample "$out" "$r" "$load" "$target" "$before" "$after" >>"$tmp/runs.jsonl"
}

busy_before=$(python3 -c '
import time
def t():
    f = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return sum(f), f[3] + f[4]
a = t(); time.sleep(1); b = t()
print(round(100 * (1 - (b[1] - a[1]) / max(1, b[0] - a[0]))))')
((busy_before < 15)) || log "WARNING: the CPUs are ${busy_before}% busy before the load: other processes will skew the numbers"

for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=(direct gateway); else order=(gateway direct); fi
  for load in $LOADS; do
    for target in "${order[@]}"; do measure "$r" "$load" "$target"; done
  done
done

# the session is still the same, still running
[[ $(rcli HGET "devex:activeSession:$repl_id" endpoint) == "$endpoint" ]] || die "the session's endpoint changed during the run"

# --- report --------------------------------------------------------------------
devexd_version=$("$DEVEXD_BIN" --version 2>&1 | head -1 || true)
git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$root" status --porcelain -- src lua CMakeLists.txt 2>/dev/null | head -1) ]] || git_rev+="+dirty"
cat >"$tmp/meta.json" <<EOF
{
  "cpus": $ncpu, "kernel": $(json_str "$(uname -r)"), "busy_before_pct": $busy_before,
  "devexd_bin": $(json_str "$DEVEXD_BIN"), "devexd_version": $(json_str "$devexd_version"), "git": $(json_str "$git_rev"),
  "threads": $THREADS, "duration_s": $DURATION, "warmup_s": $WARMUP, "rounds": $ROUNDS,
  "loads": {
    "echo": { "connections": $ECHO_CONNECTIONS, "size": $ECHO_SIZE },
    "mid": { "connections": $MID_CONNECTIONS, "size": $MID_SIZE },
    "bulk": { "connections": $BULK_CONNECTIONS, "size": $BULK_SIZE }
  }
}
EOF
mkdir -p "$RESULTS_DIR"
rc=0
python3 "$here/gateway/report.py" summary "$tmp/runs.jsonl" "$tmp/meta.json" "$RESULTS_DIR/gateway.json" "$tmp/table.txt" || rc=$?
{ cat "$tmp/table.txt"; echo; cat "$rawlog"; } >"$RESULTS_DIR/gateway.log"
log "wrote $RESULTS_DIR/gateway.json and $RESULTS_DIR/gateway.log"
((rc == 0)) || exit "$rc" # (client errors: see the table)
