#!/usr/bin/env bash
# deps.sh: installs what devexd needs to build, run and test on Debian 12.
# Idempotent: packages already present are not reinstalled.
set -euo pipefail

BUILD_PKGS=(build-essential cmake pkg-config libh2o-dev libuv1-dev liblua5.4-dev lua5.4 libhiredis-dev
  libyajl-dev libcurl4-openssl-dev libssl-dev libexpat1-dev libyaml-dev libmimalloc-dev libwslay-dev)
RUN_PKGS=(redis-server bubblewrap)
TEST_PKGS=(python3 python3-yaml python3-h2 curl nghttp2-client openssl procps iproute2 nodejs h2o chromium prometheus
  debootstrap rpm lintian debhelper systemd clang-14 libclang-rt-14-dev)

want=("${BUILD_PKGS[@]}" "${RUN_PKGS[@]}")
if [ "${1:-}" = "--test" ]; then want+=("${TEST_PKGS[@]}"); fi

missing=()
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's nodejs comes without npm (other builds bundle it); the tests' npm ci needs it
if [ "${1:-}" = "--test" ] && ! command -v npm >/dev/null; then
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
