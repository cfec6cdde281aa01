#!/usr/bin/env bash
# run-dev.sh: devexd's whole job on one machine, with no cluster and no cloud
# account (etc/devexd.dev.conf.lua): builds devexd, starts a local
# redis-server (data under $DEVEXD_DATA) unless one answers on REDIS_URL's
# port, syncs the starter templates into the local storage, and serves on
# http://localhost:8080. Open http://localhost:8080/, sign in with any name,
# create a REPL, start it and open it.
#
# Ctrl-C or SIGTERM stop devexd gracefully (SIGHUP reloads its Lua app), then
# the redis-server this script started, if it started one; a redis-server
# that was already running is left alone.
#
# Environment: DEVEXD_DATA (default .devexd-data), REDIS_URL (default
# redis://127.0.0.1:6379/0), PORT (8080), DEVEXD_CONFIG, and DEVEXD_BIN: serve
# with that devexd binary instead of installing the dependencies and building
# build/devexd.
set -euo pipefail
cd "$(dirname "$0")/.."

redis_pid=""
stop_redis() {
  [ -n "$redis_pid" ] || return 0
  trap '' INT TERM HUP # a second Ctrl-C does not leave it behind
  echo "run-dev: stopping the redis-server it started (pid $redis_pid)"
  kill -TERM "$redis_pid" 2>/dev/null || true
  # SIGTERM saves the data first; redis-server does not exit when that fails
  for _ in $(seq 100); do
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$redis_pid" 2>/dev/null; then
    echo "run-dev: redis-server did not exit within 10 s (see $DEVEXD_DATA/redis.log): killing it" >&2
    kill -KILL "$redis_pid" 2>/dev/null || true
  fi
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=""
}
trap stop_redis EXIT
# bash leaves on these without running the EXIT trap unless they are trapped
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${DEVEXD_BIN:-}" ]; then
  bash scripts/deps.sh
  # the shipped templates' runners (single-host stand-ins for the runner images)
  for p in python3 nodejs golang-go; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends "$p" >/dev/null || true
  done
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j "$(nproc)" >/dev/null
  DEVEXD_BIN=./build/devexd
fi

export DEVEXD_DATA="${DEVEXD_DATA:-$PWD/.devexd-data}"
mkdir -p "$DEVEXD_DATA"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
# a local redis-server is started only for a loopback REDIS_URL without
# credentials, on its port, when nothing answers there
if [[ $REDIS_URL =~ ^redis://(127\.0\.0\.1|localhost)(:([0-9]+))?(/[0-9]*)?$ ]]; then
  redis_port="${BASH_REMATCH[3]:-6379}"
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; then
    echo "run-dev: starting redis-server on 127.0.0.1:$redis_port (data in $DEVEXD_DATA)"
    # in a session of its own: a Ctrl-C in the terminal reaches devexd, and
    # redis-server is stopped after devexd has finished (see stop_redis)
    setsid redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$DEVEXD_DATA" --daemonize no \
      --logfile "$DEVEXD_DATA/redis.log" --pidfile "$DEVEXD_DATA/redis.pid" </dev/null &
    redis_pid=$!
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
      kill -0 "$redis_pid" 2>/dev/null || { echo "run-dev: redis-server failed (see $DEVEXD_DATA/redis.log)" >&2; exit 1; }
      sleep 0.1
    done
  fi
fi

CONF="${DEVEXD_CONFIG:-etc/devexd.dev.conf.lua}"
"$DEVEXD_BIN" --config "$CONF" --lua-dir lua templates sync templates
echo "run-dev: open http://localhost:${PORT:-8080}/ (sign in with any name)"

# devexd runs as a child (not exec'd) so that the redis-server is stopped once
# it exits; the signals that stop or reload it are passed on to it. A Ctrl-C
# reaches devexd twice (from the terminal and from here): the first one
# stops it, the second changes nothing.
# The traps are set before devexd starts: a SIGHUP that came between the two
# would otherwise end this script (bash's default), not reload devexd. One
# that arrives before devexd_pid is known is passed on right after.
devexd_pid=""
pending=""
for sig in INT TERM HUP; do
  trap 'if [ -n "$devexd_pid" ]; then kill -'"$sig"' "$devexd_pid" 2>/dev/null || true; else pending='"$sig"'; fi' "$sig"
done
"$DEVEXD_BIN" --config "$CONF" --lua-dir lua "$@" &
devexd_pid=$!
if [ -n "$pending" ]; then kill -"$pending" "$devexd_pid" 2>/dev/null || true; fi
# wait returns early when a trapped signal arrives: wait again until devexd
# has exited, then once more for its exit status
while kill -0 "$devexd_pid" 2>/dev/null; do
  wait "$devexd_pid" || true
done
status=0
wait "$devexd_pid" || status=$?
exit "$status"
