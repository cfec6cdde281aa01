#!/usr/bin/env bash
# run-dev.sh: devexd's whole job on one machine, with no cluster and no cloud
# account (etc/devexd.dev.conf.lua): builds devexd, starts a local
# redis-server (data under $DEVEXD_DATA) unless one answers on REDIS_URL's
# port, syncs the starter templates into the local storage, and serves on
# http://localhost:8080. Open http://localhost:8080/, sign in with any name,
# create a REPL, start it and open it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
# the shipped templates' runners (single-host stand-ins for the runner images)
for p in python3 nodejs golang-go; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends "$p" >/dev/null || true
done
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" >/dev/null

export DEVEXD_DATA="${DEVEXD_DATA:-$PWD/.devexd-data}"
mkdir -p "$DEVEXD_DATA"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "run-dev: starting redis-server (data in $DEVEXD_DATA)"
  redis-server --bind 127.0.0.1 --port 6379 --dir "$DEVEXD_DATA" --daemonize yes \
    --logfile "$DEVEXD_DATA/redis.log" --pidfile "$DEVEXD_DATA/redis.pid"
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done
fi

CONF="${DEVEXD_CONFIG:-etc/devexd.dev.conf.lua}"
./build/devexd --config "$CONF" --lua-dir lua templates sync templates
echo "run-dev: open http://localhost:${PORT:-8080}/ (sign in with any name)"
exec ./build/devexd --config "$CONF" --lua-dir lua "$@"
