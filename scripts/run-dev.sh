#!/usr/bin/env bash
# run-dev.sh: builds devexd and serves it on http://localhost:8080 with the
# development configuration, starting a local redis-server (data under
# .devexd-data/) when none is listening on REDIS_URL's port.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" >/dev/null

DATA="${DEVEXD_DATA:-$PWD/.devexd-data}"
mkdir -p "$DATA"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "run-dev: starting redis-server (data in $DATA)"
  redis-server --bind 127.0.0.1 --port 6379 --dir "$DATA" --daemonize yes --logfile "$DATA/redis.log" \
    --pidfile "$DATA/redis.pid"
fi

export ENVIRONMENT="${ENVIRONMENT:-development}"
export HOST="${HOST:-127.0.0.1}"
exec ./build/devexd --config "${DEVEXD_CONFIG:-etc/devexd.conf.lua}" --lua-dir lua "$@"
