#!/usr/bin/env bash
# tests/k8s/build.sh: builds the Kubernetes control plane the integration tests
# run against (kube-apiserver and kube-controller-manager 1.20.2, from Debian's
# `kubernetes` source package, with Debian's golang-go) and installs etcd.
#
# Prints the directory holding the binaries (the last line of stdout):
#   $DEVEXD_K8S_CACHE/v1.20.2/bin     (default cache: /var/cache/devexd-k8s)
# which is where tests/integration/k8s_harness.py looks by default.
#
# Idempotent: when the binaries are already in the cache (outside the clone) it
# only checks the runtime packages (etcd, openssl) and exits at once. A build
# takes minutes (see tests/k8s/README.md); its output goes to
# $DEVEXD_K8S_CACHE/build.log, whose tail is printed on failure.
#
# Environment:
#   DEVEXD_K8S_CACHE   cache root (default /var/cache/devexd-k8s)
#   DEVEXD_K8S_KEEP    1: keep the extracted source tree after a build
#   DEVEXD_K8S_REBUILD 1: rebuild even if the binaries are cached
#
# Why not `make`: Kubernetes' Makefile runs every code generator over the
# whole tree first; all generated files but one (pkg/generated/openapi) are in
# the release tarball, so the script generates that one with openapi-gen and
# runs a single `go build` for both binaries (they share most packages), in
# GOPATH mode like the Makefile does (Go 1.19's module mode rejects this
# go.mod/vendor pair with "updates to go.mod needed").
set -euo pipefail

K8S_VERSION=1.20.2
# Bump when the recipe below changes what ends up in the binaries.
RECIPE=3
CACHE="${DEVEXD_K8S_CACHE:-/var/cache/devexd-k8s}"
OUT="$CACHE/v$K8S_VERSION"
BIN="$OUT/bin"
STAMP="$OUT/recipe"
LOG="$CACHE/build.log"
RUNTIME_PKGS=(etcd-server openssl)
BUILD_PKGS=(golang-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev xz-utils ca-certificates)

SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "build.sh: needs root (or sudo) for apt-get and $CACHE" >&2; exit 1; }
  SUDO=(sudo)
fi

log() { echo "[k8s-build $(date +%H:%M:%S)] $*" >&2; }

cached() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] &&
    [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE" ] && [ "${DEVEXD_K8S_REBUILD:-0}" != 1 ]
}

missing_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

APT_UPDATED=0
apt_install() {
  local missing
  missing=$(missing_pkgs "$@")
  [ -z "$missing" ] && return 0
  # shellcheck disable=SC2086
  log "apt-get install" $missing
  if [ "$APT_UPDATED" = 0 ]; then
    "${SUDO[@]}" apt-get update -q -o DPkg::Lock::Timeout=300 >>"$LOG" 2>&1 || true
    APT_UPDATED=1
  fi
  # shellcheck disable=SC2086
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends $missing >>"$LOG" 2>&1
}

# deb-src for the release's main component, mirroring the existing deb entry
# (same URI and Signed-By: apt refuses two entries for one source whose
# Signed-By differ). Writes /etc/apt/sources.list.d/devexd-src.list once.
ensure_deb_src() {
  local list=/etc/apt/sources.list.d/devexd-src.list codename line
  [ -f "$list" ] && return 0
  if grep -rqsE '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
    return 0  # someone configured source entries already
  fi
  # shellcheck disable=SC1091
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  line=$(
    {
      # one-line format: deb [options] URI suite components...
      cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v c="$codename" '
          $1 == "deb" {
            opts = ""; i = 2
            if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) { opts = opts $i " "; i++ } opts = opts $i " "; i++ }
            uri = $i; suite = $(i + 1); hasmain = 0
            for (j = i + 2; j <= NF; j++) if ($j == "main") hasmain = 1
            if (suite == c && hasmain) { print "deb-src " opts uri " " c " main"; exit }
          }'
      # deb822 format
      cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk -v c="$codename" '
          function flush() {
            if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " c " ") && (" " comps " ") ~ / main / && enabled != "no" && uri != "") {
              print "deb-src" (signed != "" ? " [signed-by=" signed "]" : "") " " uri " " c " main"; found = 1; exit
            }
            types = suites = comps = uri = signed = enabled = ""
          }
          /^[[:space:]]*$/ { flush(); next }
          /^#/ { next }
          { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "") }
          key == "types" { types = $0 } key == "suites" { suites = $0 } key == "components" { comps = $0 }
          key == "uris" { split($0, u, " "); uri = u[1] } key == "signed-by" { signed = $0 } key == "enabled" { enabled = tolower($0) }
          END { if (!found) flush() }'
    } | awk 'NR == 1'  # not head: an early exit could SIGPIPE the writers (pipefail)
  )
  if [ -z "$line" ]; then
    # the mirror is the one this machine's apt already uses: never a host of our own choosing
    echo "build.sh: no Debian 'deb' source found in /etc/apt to mirror as deb-src" >&2
    exit 1
  fi
  log "adding $list: $line"
  echo "$line" | "${SUDO[@]}" tee "$list" >/dev/null
  APT_UPDATED=0
}

main() {
  if cached; then
    apt_install "${RUNTIME_PKGS[@]}" || { tail -n 40 "$LOG" >&2; exit 1; }
    echo "$BIN"
    return 0
  fi

  "${SUDO[@]}" mkdir -p "$CACHE"
  [ -w "$CACHE" ] || "${SUDO[@]}" chown "$(id -u):$(id -g)" "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9                    # one build at a time (two clones, two build dirs)
  if cached; then            # another run finished it while we waited
    apt_install "${RUNTIME_PKGS[@]}" || { tail -n 40 "$LOG" >&2; exit 1; }
    echo "$BIN"
    return 0
  fi

  : >"$LOG"
  local t0 t1
  t0=$(date +%s)
  log "building kube-apiserver and kube-controller-manager $K8S_VERSION into $BIN (log: $LOG)"
  # A subshell outside any `if`: errexit stays in force inside build().
  local rc=0
  set +e
  (set -e; build) >>"$LOG" 2>&1
  rc=$?
  set -e
  if [ "$rc" != 0 ]; then
    log "build FAILED (exit $rc); last lines of $LOG:"
    tail -n 60 "$LOG" >&2
    exit 1
  fi
  t1=$(date +%s)
  log "built in $((t1 - t0)) s"
  echo "$BIN"
}

build() {
  set -x
  apt_install "${RUNTIME_PKGS[@]}" "${BUILD_PKGS[@]}"
  ensure_deb_src
  if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
    "${SUDO[@]}" apt-get update -q -o DPkg::Lock::Timeout=300
  fi

  local srcdir="$CACHE/src" tree gosrc gopath
  mkdir -p "$srcdir"
  cd "$srcdir"
  # Download once (kept in the cache), extract afresh (a few seconds) so an
  # interrupted earlier build cannot leave a half-patched tree behind.
  if ! ls kubernetes_*.dsc >/dev/null 2>&1; then
    apt-get source --download-only -o APT::Sandbox::User=root kubernetes
  fi
  local dscs=(kubernetes_*.dsc)
  rm -rf "$srcdir/tree"
  dpkg-source --no-check -x "${dscs[0]}" "$srcdir/tree"
  tree="$srcdir/tree"
  grep -q "^Version: .*${K8S_VERSION}" "${dscs[0]}" ||
    { echo "the kubernetes source package is not $K8S_VERSION"; return 1; }

  # reflect2 1.0.1 crashes under Go 1.18+ (map iteration); 1.0.2 from Debian.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r "$r2" "$tree/vendor/github.com/modern-go/reflect2"
  rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod"
  sed -i 's|github.com/modern-go/reflect2 v1.0.1|github.com/modern-go/reflect2 v1.0.2|g' \
    "$tree/go.mod" "$tree/vendor/modules.txt" "$tree/staging/src/k8s.io/apimachinery/go.mod"

  # GOPATH mode, as hack/lib/golang.sh sets it up.
  gopath="$tree/.go"
  mkdir -p "$gopath/src/k8s.io"
  ln -sfn ../../.. "$gopath/src/k8s.io/kubernetes"
  gosrc="$gopath/src/k8s.io/kubernetes"
  export GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS='' GOCACHE="$CACHE/gocache" HOME="${HOME:-/root}"
  go version
  cd "$gosrc"

  # The one generated file missing from the release tarball.
  mkdir -p _out
  go build -o _out/openapi-gen ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) -type f -name '*.go' -print0 |
    xargs -0 grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' |
    sed 's|^\./staging/src|vendor|; s|^\./||; s|/[^/]*$||' |
    grep -vE '^vendor/k8s.io/(code-generator|sample-apiserver)/' | LC_ALL=C sort -u >_out/openapi-dirs
  ./_out/openapi-gen --logtostderr \
    -i "$(sed 's|^|k8s.io/kubernetes/|' _out/openapi-dirs | paste -sd,)" \
    -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r _out/violations.report
  diff _out/violations.report api/api-rules/violation_exceptions.list || echo "warning: API rule violations differ (ignored)"

  local pkg=k8s.io/kubernetes/vendor/k8s.io ld="-s -w" v
  for v in client-go/pkg/version component-base/version; do
    ld="$ld -X $pkg/$v.gitVersion=v$K8S_VERSION -X $pkg/$v.gitMajor=1 -X $pkg/$v.gitMinor=20"
    ld="$ld -X $pkg/$v.gitTreeState=archive -X $pkg/$v.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  rm -rf "$OUT/bin.new"
  mkdir -p "$OUT/bin.new"
  time go build -tags selinux,notest -ldflags "$ld" -o "$OUT/bin.new/" ./cmd/kube-apiserver ./cmd/kube-controller-manager
  "$OUT/bin.new/kube-apiserver" --version
  rm -rf "$BIN"
  mv "$OUT/bin.new" "$BIN"
  echo "$RECIPE" >"$STAMP"
  cd "$CACHE"
  [ "${DEVEXD_K8S_KEEP:-0}" = 1 ] || rm -rf "$tree"
  set +x
}

main "$@"
