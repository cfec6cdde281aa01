# lib.sh: helpers the benchmark scripts share (sourced, not run).

# stop_pid PID: TERM, wait up to 5 s, then KILL
stop_pid() {
  local pid=$1 i
  [[ -n $pid ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

# port_in_use PORT: 0 if something accepts on 127.0.0.1:PORT
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port [PORT...]: a loopback port nobody listens on, other than the
# PORTs given (chosen earlier but perhaps not listened on yet); the caller
# defines die
free_port() {
  local p i x taken
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    taken=0
    for x in "$@"; do [[ $p != "$x" ]] || taken=1; done
    ((taken == 0)) || continue
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  die "found no free loopback port"
}

# start_redis DIR: $REDIS_SERVER on a free loopback port, nothing persisted,
# its files and redis.log in DIR; waits for PING and sets redis_port,
# redis_pid (for stop_pid) and redis_url
start_redis() {
  local dir=$1 i
  redis_port=$(free_port)
  "$REDIS_SERVER" --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize no --logfile "" >"$dir/redis.log" 2>&1 &
  redis_pid=$!
  for ((i = 0; i < 100; i++)); do
    kill -0 "$redis_pid" 2>/dev/null || { cat "$dir/redis.log" >&2; die "redis-server exited at startup"; }
    [[ $(redis-cli -h 127.0.0.1 -p "$redis_port" PING 2>/dev/null) == PONG ]] && break
    sleep 0.1
  done
  [[ $(redis-cli -h 127.0.0.1 -p "$redis_port" PING 2>/dev/null) == PONG ]] || die "redis-server did not answer PING on port $redis_port"
  redis_url="redis://127.0.0.1:$redis_port"
}

# ratio A B: A/B with 3 decimals, "null" when B is 0
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "null" }'; }

# json_str TEXT: TEXT as a JSON string literal
json_str() { printf '"%s"' "$(sed 's/\\/\\\\/g; s/"/\\"/g' <<<"$1")"; }
