#!/usr/bin/env bash
# bench_http.sh: a benchmark (not a test) of devexd against Debian's h2o.
#
# Side by side in one run, on loopback, with the same number of server threads:
#   devexd  GET /healthz  (Lua router, middleware, handler; its body
#                          {"status":"ok"} is a json.frozen value, 15 bytes)
#   h2o     GET /healthz  (static file with the same 15-byte body)
# and, over HTTP/2 only, devexd GET /version, whose handler builds a table
# that is JSON-encoded per request (the cost of encoding, side by side).
# over HTTP/1.1 keep-alive (wrk) and HTTP/2 cleartext prior knowledge (h2load),
# plus the resident memory (VmRSS) of devexd after startup and after the load.
# Besides req/s it reports each server's own CPU time per request (utime+stime
# from /proc/PID/stat over the measurement / requests served), which depends
# much less than req/s on how the 2 CPUs are shared with the load generator.
#
# It installs nothing and builds nothing. Prints a table and writes
# tests/bench/results/http.json (raw client output: tests/bench/results/http.log).
# Exit status: 0 when every measurement ran; the numbers are not judged here.
#
# Environment (defaults in brackets):
#   DEVEXD_BIN   devexd binary, relative to the repository root [build/devexd]
#   LUA_DIR      devexd's Lua app [<repo>/lua]
#   H2O_BIN      h2o binary [h2o from PATH]
#   THREADS      worker threads of each server [2]
#   DURATION     seconds per wrk / h2load measurement [10]
#   CONNECTIONS  client connections [64]
#   CLIENT_THREADS  wrk -t / h2load -t [2]
#   STREAMS      h2load -m, concurrent streams per connection [10]
#   H2_REQUESTS  h2load -n, only if the installed h2load has no -D [200000]
#   WARMUP       seconds of warm-up load per server and protocol, not counted [2]
#   ROUNDS       measurement rounds; the order of the servers alternates [2]
#   RESULTS_DIR  where http.json and http.log go [tests/bench/results]
#   DEVEXD_SERVER_EXTRA  Lua fields added to devexd's server settings, e.g.
#                'request_id_header = "always"' []
set -euo pipefail
# shellcheck source=tests/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

DEVEXD_BIN=${DEVEXD_BIN:-build/devexd}
LUA_DIR=${LUA_DIR:-$root/lua}
H2O_BIN=${H2O_BIN:-h2o}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
CLIENT_THREADS=${CLIENT_THREADS:-2}
STREAMS=${STREAMS:-10}
H2_REQUESTS=${H2_REQUESTS:-200000}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
RESULTS_DIR=${RESULTS_DIR:-$here/results}
DEVEXD_SERVER_EXTRA=${DEVEXD_SERVER_EXTRA:-}
RSS_GOAL_KB=$((20 * 1024))

die() { echo "bench_http: $*" >&2; exit 1; }
log() { echo "bench_http: $*" >&2; }

for v in THREADS DURATION CONNECTIONS CLIENT_THREADS STREAMS H2_REQUESTS WARMUP ROUNDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((DURATION > 0 && CONNECTIONS > 0 && ROUNDS > 0 && THREADS > 0)) || die "DURATION, CONNECTIONS, ROUNDS and THREADS must be > 0"
((CONNECTIONS >= CLIENT_THREADS)) || die "CONNECTIONS must be >= CLIENT_THREADS"

# --- tools -------------------------------------------------------------------
missing=()
need() { # need COMMAND APT_PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$1 (apt-get install $2)")
}
need wrk wrk
need h2load nghttp2-client
need "$H2O_BIN" h2o
need curl curl
need awk mawk
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
[[ -x $DEVEXD_BIN ]] || die "no devexd binary at $DEVEXD_BIN (build it: cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build -j2; or set DEVEXD_BIN)"
[[ -d $LUA_DIR ]] || die "no Lua app directory at $LUA_DIR (set LUA_DIR)"
[[ -r /proc/self/status ]] || die "needs Linux /proc to read VmRSS"

# versions now: others may rebuild the binary while the benchmark runs
devexd_version=$("$DEVEXD_BIN" --version 2>&1 | head -1 || true)
devexd_sha=$(sha256sum "$DEVEXD_BIN" | cut -c1-12)
h2o_version=$("$H2O_BIN" --version 2>&1 | head -1 || true)
wrk_version=$(wrk --version 2>&1 | head -1 | awk '{ print $1, $2 }' || true)
h2load_version=$(h2load --version 2>&1 | head -1 || true)
git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git_dirty=$(git -C "$root" status --porcelain -- src lua CMakeLists.txt 2>/dev/null | head -1)
[[ -z $git_dirty ]] || git_rev+="+dirty"

h2load_has_duration=0
h2load_help=$(h2load --help 2>&1 || true) # not piped into grep -q: SIGPIPE + pipefail
if grep -q -- '--duration' <<<"$h2load_help"; then h2load_has_duration=1; fi
h2_mode="-m $STREAMS -D ${DURATION}s"
((h2load_has_duration)) || h2_mode="-m $STREAMS -n $H2_REQUESTS"

# --- temporary directory, servers, cleanup -------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench_http.XXXXXX")
devexd_pid=""
h2o_pid=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$devexd_pid"
  stop_pid "$h2o_pid"
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_ready() { # wait_ready NAME PID PORT SERVER_HEADER_PREFIX LOGFILE
  local name=$1 pid=$2 port=$3 want=$4 logf=$5 i hdrs body
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "$name exited at startup (log above)"; }
    if body=$(curl -sS --max-time 2 -D "$tmp/hdrs" "http://127.0.0.1:$port/healthz" 2>/dev/null); then
      hdrs=$(tr -d '\r' <"$tmp/hdrs")
      grep -qi "^server: $want" <<<"$hdrs" || die "port $port answered, but not $name (Server header: $(grep -i '^server:' <<<"$hdrs"))"
      grep -q '^HTTP/1.1 200' <<<"$hdrs" || die "$name answered /healthz with: $(head -1 <<<"$hdrs")"
      [[ $body == '{"status":"ok"}' ]] || die "$name /healthz body is '$body', expected {\"status\":\"ok\"}"
      # HTTP/2 prior knowledge must work too
      [[ $(curl -sS --max-time 2 --http2-prior-knowledge -o /dev/null -w '%{http_version}' "http://127.0.0.1:$port/healthz") == 2 ]] ||
        die "$name does not speak HTTP/2 with prior knowledge on port $port"
      return 0
    fi
    sleep 0.1
  done
  cat "$logf" >&2
  die "$name did not answer on port $port within 10 s"
}

vm_kb() { # vm_kb PID FIELD -> kB
  awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print "null" }' "/proc/$1/status"
}

# devexd
devexd_port=$(free_port)
cat >"$tmp/devexd.conf.lua" <<EOF
return { server = { listen = { { host = "127.0.0.1", port = $devexd_port } }, access_log = false,
  ${DEVEXD_SERVER_EXTRA} } }
EOF
"$DEVEXD_BIN" -c "$tmp/devexd.conf.lua" -L "$LUA_DIR" -t "$THREADS" >"$tmp/devexd.log" 2>&1 &
devexd_pid=$!

# h2o: a static file with the same body as devexd's /healthz
mkdir -p "$tmp/docroot"
printf '%s' '{"status":"ok"}' >"$tmp/docroot/healthz.json"
h2o_port=$(free_port "$devexd_port")
{
  # Run as root, h2o switches to "nobody" unless told otherwise, and nobody
  # cannot read the 0700 temporary directory: keep the caller's user.
  if [[ $(id -u) == 0 ]]; then echo "user: $(id -un)"; fi
  cat <<EOF
listen:
  host: 127.0.0.1
  port: $h2o_port
num-threads: $THREADS
# no access-log directive: h2o writes no access log
hosts:
  default:
    paths:
      /healthz:
        file.file: $tmp/docroot/healthz.json
EOF
} >"$tmp/h2o.conf"
"$H2O_BIN" -t -c "$tmp/h2o.conf" >"$tmp/h2o.log" 2>&1 || { cat "$tmp/h2o.log" >&2; die "h2o rejected its configuration"; }
"$H2O_BIN" -m worker -c "$tmp/h2o.conf" >"$tmp/h2o.log" 2>&1 &
h2o_pid=$!

wait_ready devexd "$devexd_pid" "$devexd_port" devexd "$tmp/devexd.log"
wait_ready h2o "$h2o_pid" "$h2o_port" h2o/ "$tmp/h2o.log"

# idle memory after startup (one request served per protocol, nothing else)
sleep 1
rss_start_devexd=$(vm_kb "$devexd_pid" VmRSS)
anon_start_devexd=$(vm_kb "$devexd_pid" RssAnon)
file_start_devexd=$(vm_kb "$devexd_pid" RssFile)
rss_start_h2o=$(vm_kb "$h2o_pid" VmRSS)
threads_devexd=$(vm_kb "$devexd_pid" Threads)
threads_h2o=$(vm_kb "$h2o_pid" Threads)

# "devexd_v" is devexd again, asked for /version
declare -A port=([devexd]=$devexd_port [h2o]=$h2o_port [devexd_v]=$devexd_port)
declare -A server_pid=([devexd]=$devexd_pid [h2o]=$h2o_pid [devexd_v]=$devexd_pid)
declare -A server_log=([devexd]=$tmp/devexd.log [h2o]=$tmp/h2o.log [devexd_v]=$tmp/devexd.log)
declare -A target=([devexd]=/healthz [h2o]=/healthz [devexd_v]=/version)

alive() { # alive SERVER: die with the tail of its log if it has exited
  kill -0 "${server_pid[$1]}" 2>/dev/null && return 0
  tail -n 5 "${server_log[$1]}" >&2
  die "$1 (pid ${server_pid[$1]}) exited during the benchmark; its log ends above (a SIGTERM there came from outside this script)"
}
# devexd listens with SO_REUSEPORT, so another process of the same user can
# bind the same port later and take part of the load: check the owners.
exclusive() { # exclusive SERVER
  command -v ss >/dev/null 2>&1 || return 0
  local owners
  owners=$(ss -Hltnp "sport = :${port[$1]}" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' ' || true)
  [[ -z $owners || $owners == "${server_pid[$1]} " ]] ||
    die "port ${port[$1]} of $1 (pid ${server_pid[$1]}) is also listened on by pid(s) ${owners}: the load would be shared"
}
exclusive devexd
exclusive h2o
rawlog=$tmp/raw.log
: >"$rawlog"

# --- load ----------------------------------------------------------------------
clk_tck=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of a process (all its threads), in clock ticks
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) } # fields after "comm)": field 3 (state) is $1 here
  awk '{ print $12 + $13 }' <<<"$stat"
}
# server CPU time per request, microseconds
cpu_us() { awk -v t="$1" -v hz="$clk_tck" -v n="$2" 'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / hz / n; else print "null" }'; }

# run_wrk SERVER SECONDS -> prints "REQ_PER_SEC ERRORS CPU_US_PER_REQUEST"
run_wrk() {
  local out t0 t1
  t0=$(cpu_ticks "${server_pid[$1]}")
  out=$(wrk -t "$CLIENT_THREADS" -c "$CONNECTIONS" -d "${2}s" --latency "http://127.0.0.1:${port[$1]}${target[$1]}" 2>&1) ||
    { echo "$out" >&2; die "wrk against $1 failed"; }
  alive "$1"
  t1=$(cpu_ticks "${server_pid[$1]}")
  printf '### wrk %s -t %s -c %s -d %ss\n%s\n\n' "$1" "$CLIENT_THREADS" "$CONNECTIONS" "$2" "$out" >>"$rawlog"
  awk -v ticks=$((t1 - t0)) -v hz="$clk_tck" '
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { n = $1 }
    /Socket errors:/ { gsub(",", ""); errs += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { errs += $5 }
    END { if (rps == "" || n == "") exit 1; printf "%s %d %.2f\n", rps, errs, ticks * 1e6 / hz / n }' <<<"$out" ||
    { echo "$out" >&2; die "could not parse wrk output for $1"; }
}

# run_h2load SERVER SECONDS -> prints "REQ_PER_SEC ERRORS CPU_US_PER_REQUEST"
run_h2load() {
  local out t0 t1 args=(-c "$CONNECTIONS" -m "$STREAMS" -t "$CLIENT_THREADS")
  if ((h2load_has_duration)); then args+=(-D "$2"); else args+=(-n "$H2_REQUESTS"); fi
  t0=$(cpu_ticks "${server_pid[$1]}")
  out=$(h2load "${args[@]}" "http://127.0.0.1:${port[$1]}${target[$1]}" 2>&1) ||
    { echo "$out" >&2; die "h2load against $1 failed"; }
  alive "$1"
  t1=$(cpu_ticks "${server_pid[$1]}")
  printf '### h2load %s %s\n%s\n\n' "$1" "${args[*]}" "$out" >>"$rawlog"
  grep -q '^Application protocol: h2c' <<<"$out" || { echo "$out" >&2; die "h2load did not use h2c against $1"; }
  awk -v ticks=$((t1 - t0)) -v hz="$clk_tck" '
    /^finished in/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^req\/s/) rps = $(i - 1) }
    /^requests:/ { n = $2; for (i = 1; i <= NF; i++) if ($(i) ~ /^(failed|errored|timeout)/) errs += $(i - 1) }
    /^status codes:/ { errs += $5 + $7 + $9 } # 3xx, 4xx, 5xx
    END { if (rps == "" || n == "" || n == 0) exit 1; printf "%s %d %.2f\n", rps, errs, ticks * 1e6 / hz / n }' <<<"$out" ||
    { echo "$out" >&2; die "could not parse h2load output for $1"; }
}

# share of the CPUs busy over one second (all processes), in percent
cpu_busy() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[1] - x[1]; i = y[2] - x[2];
    printf "%.0f", (t > 0 ? 100 * (t - i) / t : 0) }'
}
busy_before=$(cpu_busy)
((busy_before < 15)) || log "WARNING: the CPUs are ${busy_before}% busy before the load: other processes will skew the numbers"

if ((WARMUP > 0)); then
  log "warming up (${WARMUP}s per server and protocol)"
  for s in devexd h2o; do
    run_wrk "$s" "$WARMUP" >/dev/null
    if ((h2load_has_duration)); then run_h2load "$s" "$WARMUP" >/dev/null; fi
  done
fi

declare -A sum=() errs=() runs=() cpu=()
for k in h1_devexd h1_h2o h2_devexd h2_h2o h2_devexd_v; do sum[$k]=0; errs[$k]=0; runs[$k]=""; cpu[$k]=0; done

measure() { # measure PROTO SERVER
  local k=$1_$2 out rps e c
  if [[ $1 == h1 ]]; then
    log "round $r/$ROUNDS: HTTP/1.1 wrk -> $2 (${DURATION}s)"
    out=$(run_wrk "$2" "$DURATION")
  else
    log "round $r/$ROUNDS: HTTP/2 h2load -> $2 ($h2_mode)"
    out=$(run_h2load "$2" "$DURATION")
  fi
  read -r rps e c <<<"$out"
  sum[$k]=$(awk -v a="${sum[$k]}" -v b="$rps" 'BEGIN { printf "%.2f", a + b }')
  cpu[$k]=$(awk -v a="${cpu[$k]}" -v b="$c" 'BEGIN { printf "%.4f", a + b }')
  errs[$k]=$((errs[$k] + e))
  runs[$k]+="${runs[$k]:+, }$rps"
}

for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then first=devexd second=h2o; else first=h2o second=devexd; fi
  measure h1 "$first"; measure h1 "$second"
  measure h2 "$second"; measure h2 "$first"
  measure h2 devexd_v
done
busy_after=$(cpu_busy)

# idle memory after the load (clients have disconnected)
sleep 2
alive devexd
alive h2o
exclusive devexd
exclusive h2o
rss_after_devexd=$(vm_kb "$devexd_pid" VmRSS)
anon_after_devexd=$(vm_kb "$devexd_pid" RssAnon)
file_after_devexd=$(vm_kb "$devexd_pid" RssFile)
hwm_devexd=$(vm_kb "$devexd_pid" VmHWM)
rss_after_h2o=$(vm_kb "$h2o_pid" VmRSS)
hwm_h2o=$(vm_kb "$h2o_pid" VmHWM)

# --- report --------------------------------------------------------------------
mean() { awk -v s="$1" -v n="$ROUNDS" -v d="${2:-0}" 'BEGIN { printf "%.*f", d, s / n }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

h1_d=$(mean "${sum[h1_devexd]}"); h1_h=$(mean "${sum[h1_h2o]}")
h2_d=$(mean "${sum[h2_devexd]}"); h2_h=$(mean "${sum[h2_h2o]}")
h2_v=$(mean "${sum[h2_devexd_v]}"); h2_cv=$(mean "${cpu[h2_devexd_v]}" 2); h2_vratio=$(ratio "$h2_v" "$h2_h")
h1_ratio=$(ratio "$h1_d" "$h1_h"); h2_ratio=$(ratio "$h2_d" "$h2_h")
h1_cd=$(mean "${cpu[h1_devexd]}" 2); h1_ch=$(mean "${cpu[h1_h2o]}" 2)
h2_cd=$(mean "${cpu[h2_devexd]}" 2); h2_ch=$(mean "${cpu[h2_h2o]}" 2)
h1_cratio=$(ratio "$h1_cd" "$h1_ch"); h2_cratio=$(ratio "$h2_cd" "$h2_ch")
rss_ok=true
((rss_start_devexd <= RSS_GOAL_KB && rss_after_devexd <= RSS_GOAL_KB)) || rss_ok=false

errors_total=$((errs[h1_devexd] + errs[h1_h2o] + errs[h2_devexd] + errs[h2_h2o] + errs[h2_devexd_v]))

{
  echo
  echo "devexd GET /healthz (Lua) vs h2o static file, $THREADS server threads each, loopback, $(nproc) CPUs shared with the clients"
  echo "devexd: $devexd_version ($DEVEXD_BIN sha256 $devexd_sha, source tree $git_rev); h2o: $h2o_version"
  echo "load: $CONNECTIONS connections, $CLIENT_THREADS client threads, ${DURATION}s x $ROUNDS rounds (mean), warm-up ${WARMUP}s; h2load $h2_mode"
  echo "CPUs busy before / after the load (other processes; want ~0): ${busy_before}% / ${busy_after}%"
  echo
  printf '%-26s %13s %13s %11s   %15s %12s %11s\n' "throughput" "devexd req/s" "h2o req/s" "devexd/h2o" "server CPU/req:" "devexd us" "h2o us"
  printf '%-26s %13s %13s %11s   %15s %12s %11s\n' "HTTP/1.1 keep-alive (wrk)" "$h1_d" "$h1_h" "$h1_ratio" "" "$h1_cd" "$h1_ch"
  printf '%-26s %13s %13s %11s   %15s %12s %11s\n' "HTTP/2 h2c (h2load)" "$h2_d" "$h2_h" "$h2_ratio" "" "$h2_cd" "$h2_ch"
  printf '%-26s %13s %13s %11s   %15s %12s %11s\n' "HTTP/2, devexd /version" "$h2_v" "$h2_h" "$h2_vratio" "" "$h2_cv" "$h2_ch"
  echo "(/version: a table JSON-encoded per request; /healthz: a json.frozen body)"
  [[ -z $DEVEXD_SERVER_EXTRA ]] || echo "devexd server settings added: $DEVEXD_SERVER_EXTRA"
  echo
  printf '%-26s %13s %13s\n' "VmRSS (idle)" "devexd" "h2o"
  printf '%-26s %10s MB %10s MB\n' "after startup" "$(mb "$rss_start_devexd")" "$(mb "$rss_start_h2o")"
  printf '%-26s %10s MB %10s MB\n' "after the load" "$(mb "$rss_after_devexd")" "$(mb "$rss_after_h2o")"
  printf '%-26s %10s MB %10s MB\n' "peak (VmHWM)" "$(mb "$hwm_devexd")" "$(mb "$hwm_h2o")"
  echo "devexd RssAnon + RssFile: $(mb "$anon_start_devexd") + $(mb "$file_start_devexd") MB after startup, $(mb "$anon_after_devexd") + $(mb "$file_after_devexd") MB after the load"
  echo "devexd idle VmRSS goal <= 20 MB ($THREADS workers): $([[ $rss_ok == true ]] && echo met || echo NOT MET)"
  echo
  echo "per round req/s: h1 devexd [${runs[h1_devexd]}] h2o [${runs[h1_h2o]}]"
  echo "                 h2 devexd [${runs[h2_devexd]}] h2o [${runs[h2_h2o]}] devexd /version [${runs[h2_devexd_v]}]"
  if ((errors_total > 0)); then
    echo "WARNING: errors or non-2xx responses: h1 devexd ${errs[h1_devexd]}, h1 h2o ${errs[h1_h2o]}, h2 devexd ${errs[h2_devexd]}, h2 h2o ${errs[h2_h2o]}, h2 devexd /version ${errs[h2_devexd_v]} (see http.log)"
  fi
} | tee "$tmp/table.txt"

mkdir -p "$RESULTS_DIR"
cat >"$RESULTS_DIR/http.json" <<EOF
{
  "benchmark": "http",
  "time": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "host": { "cpus": $(nproc), "kernel": $(json_str "$(uname -r)"), "cpu_busy_before_pct": $busy_before, "cpu_busy_after_pct": $busy_after },
  "devexd": { "binary": $(json_str "$DEVEXD_BIN"), "version": $(json_str "$devexd_version"), "git": $(json_str "$git_rev"), "sha256": $(json_str "$devexd_sha"), "threads": $THREADS, "os_threads": $threads_devexd, "target": "GET /healthz (Lua router, json.frozen body); GET /version (table encoded per request)", "server_extra": $(json_str "$DEVEXD_SERVER_EXTRA") },
  "h2o": { "binary": $(json_str "$(command -v "$H2O_BIN")"), "version": $(json_str "$h2o_version"), "threads": $THREADS, "os_threads": $threads_h2o, "target": "GET /healthz (file.file, same 15-byte body)" },
  "clients": { "wrk": $(json_str "$wrk_version"), "h2load": $(json_str "$h2load_version") },
  "load": { "connections": $CONNECTIONS, "client_threads": $CLIENT_THREADS, "duration_s": $DURATION, "rounds": $ROUNDS, "warmup_s": $WARMUP, "h2_streams": $STREAMS, "h2load_args": $(json_str "$h2_mode") },
  "http1": {
    "client": "wrk",
    "devexd_rps": $h1_d, "h2o_rps": $h1_h, "ratio": $h1_ratio,
    "devexd_cpu_us_per_req": $h1_cd, "h2o_cpu_us_per_req": $h1_ch, "cpu_ratio": $h1_cratio,
    "devexd_rounds": [${runs[h1_devexd]}], "h2o_rounds": [${runs[h1_h2o]}],
    "devexd_errors": ${errs[h1_devexd]}, "h2o_errors": ${errs[h1_h2o]}
  },
  "http2": {
    "client": "h2load",
    "devexd_rps": $h2_d, "h2o_rps": $h2_h, "ratio": $h2_ratio,
    "devexd_cpu_us_per_req": $h2_cd, "h2o_cpu_us_per_req": $h2_ch, "cpu_ratio": $h2_cratio,
    "devexd_rounds": [${runs[h2_devexd]}], "h2o_rounds": [${runs[h2_h2o]}],
    "devexd_errors": ${errs[h2_devexd]}, "h2o_errors": ${errs[h2_h2o]},
    "devexd_version_rps": $h2_v, "devexd_version_ratio": $h2_vratio, "devexd_version_cpu_us_per_req": $h2_cv,
    "devexd_version_rounds": [${runs[h2_devexd_v]}], "devexd_version_errors": ${errs[h2_devexd_v]}
  },
  "rss_kb": {
    "devexd_start": $rss_start_devexd, "devexd_after_load": $rss_after_devexd, "devexd_peak": $hwm_devexd,
    "devexd_start_anon": $anon_start_devexd, "devexd_start_file": $file_start_devexd,
    "devexd_after_load_anon": $anon_after_devexd, "devexd_after_load_file": $file_after_devexd,
    "h2o_start": $rss_start_h2o, "h2o_after_load": $rss_after_h2o, "h2o_peak": $hwm_h2o,
    "devexd_goal": $RSS_GOAL_KB, "devexd_goal_met": $rss_ok
  }
}
EOF
{ cat "$tmp/table.txt"; echo; cat "$rawlog"; } >"$RESULTS_DIR/http.log"
log "wrote $RESULTS_DIR/http.json and $RESULTS_DIR/http.log"
