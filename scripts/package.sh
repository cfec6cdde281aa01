#!/usr/bin/env bash
# package.sh: builds devexd's packages from this tree (working copy included).
#
#   scripts/package.sh deb    # build-packages/devexd_<version>_amd64.deb, then lintian
#   scripts/package.sh rpm    # build-packages/devexd-<version>-1.x86_64.rpm (Debian's rpmbuild)
#   scripts/package.sh all
#
# deb: copies the tree to a temporary directory, puts packaging/debian in
# place as debian/, installs missing build dependencies with apt-get and runs
# dpkg-buildpackage -b -us -uc. lintian must pass (warnings and errors fail).
# rpm: makes devexd-<version>.tar.gz and runs rpmbuild -bb on
# packaging/rpm/devexd.spec (--nodeps: the build dependencies are Debian's
# -dev packages here, not RPMs). OUT_DIR overrides the output directory.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="$PWD"
OUT_DIR="${OUT_DIR:-$SRC/build-packages}"
what="${1:-deb}"

VERSION="$(sed -n 's/^project(devexd VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)"
[ -n "$VERSION" ] || { echo "package.sh: no version in CMakeLists.txt" >&2; exit 1; }
DEB_VERSION="$(sed -n '1s/^devexd (\([^)]*\)).*/\1/p' packaging/debian/changelog)"
RPM_VERSION="$(sed -n 's/^Version:[[:space:]]*//p' packaging/rpm/devexd.spec)"
if [ "$DEB_VERSION" != "$VERSION" ] || [ "$RPM_VERSION" != "$VERSION" ]; then
  echo "package.sh: version mismatch: CMakeLists.txt $VERSION, debian/changelog $DEB_VERSION, devexd.spec $RPM_VERSION" >&2
  exit 1
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "package.sh: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

WORK="$(mktemp -d /tmp/devexd-package.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT_DIR"

# The tree as git sees it (tracked and untracked files, .gitignore honoured),
# so build directories and node_modules never get into a package.
copy_tree() {
  local dest="$1"
  mkdir -p "$dest"
  if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$SRC" ls-files -z --cached --others --exclude-standard |
      (cd "$SRC" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) |
      tar -C "$SRC" --null -T - -cf - | tar -C "$dest" -xf -
  else
    tar -C "$SRC" --exclude='./build*' --exclude=node_modules --exclude=.git -cf - . | tar -C "$dest" -xf -
  fi
}

build_deb() {
  apt_install build-essential debhelper dpkg-dev fakeroot lintian
  local tree="$WORK/devexd-$VERSION"
  copy_tree "$tree"
  rm -rf "$tree/debian"
  cp -a packaging/debian "$tree/debian"
  if ! (cd "$tree" && dpkg-checkbuilddeps >/dev/null 2>&1); then
    echo "package.sh: installing the build dependencies (apt-get build-dep)"
    $SUDO apt-get update -qq
    (cd "$tree" && DEBIAN_FRONTEND=noninteractive $SUDO apt-get build-dep -y -qq ./ >/dev/null)
  fi
  (cd "$tree" && dpkg-buildpackage -b -us -uc -j"$(nproc)") >"$WORK/deb-build.log" 2>&1 || {
    tail -60 "$WORK/deb-build.log" >&2; echo "package.sh: dpkg-buildpackage failed" >&2; exit 1; }
  local deb="devexd_${VERSION}_$(dpkg --print-architecture).deb"
  cp "$WORK/$deb" "$OUT_DIR/"
  echo "package.sh: $OUT_DIR/$deb"
  # lintian: the .deb and the build's .changes; any warning or error fails
  lintian --fail-on error,warning --display-info "$OUT_DIR/$deb"
  echo "package.sh: lintian passed"
}

build_rpm() {
  apt_install rpm
  local top="$WORK/rpmbuild"
  mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
  copy_tree "$WORK/src/devexd-$VERSION"
  tar -C "$WORK/src" -czf "$top/SOURCES/devexd-$VERSION.tar.gz" "devexd-$VERSION"
  cp packaging/rpm/devexd.spec "$top/SPECS/"
  # On Debian: no RPM database of build dependencies (--nodeps), and no
  # automatic library requirements (they would name Debian's sonames).
  rpmbuild -bb --nodeps --define "_topdir $top" --define "devexd_no_autoreq 1" \
    "$top/SPECS/devexd.spec" >"$WORK/rpm-build.log" 2>&1 || {
    tail -60 "$WORK/rpm-build.log" >&2; echo "package.sh: rpmbuild failed" >&2; exit 1; }
  local rpmf
  rpmf="$(find "$top/RPMS" -name "devexd-$VERSION-*.rpm" ! -name '*debug*' | head -1)"
  cp "$rpmf" "$OUT_DIR/"
  echo "package.sh: $OUT_DIR/$(basename "$rpmf")"
}

case "$what" in
  deb) build_deb ;;
  rpm) build_rpm ;;
  all) build_deb; build_rpm ;;
  *) echo "usage: scripts/package.sh deb|rpm|all" >&2; exit 2 ;;
esac
