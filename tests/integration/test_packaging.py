"""Packaging (packaging/, scripts/package.sh): systemd readiness, the unit's
hardening score, the .deb and the .rpm (same files, lintian clean), and the
.deb installed into a fresh Debian 12 root made with debootstrap: apt-get
installs it with its dependencies from the Debian archive, `devexd --check`
passes with the shipped config and compiled-in paths, and devexd (as the
devexd user) answers /healthz on loopback.

Needs root (debootstrap, chroot, mounts in a private mount namespace), the
Debian archive, and the packages debootstrap, rpm, lintian, debhelper
(scripts/deps.sh --test). The minbase root is cached as a tarball in
$DEVEXD_DEBOOTSTRAP_CACHE (default /var/cache/devexd-debootstrap; made by
debootstrap the first time, about 30 s) and every run unpacks a fresh copy;
downloaded .debs are kept in the cache's apt-archives/ between runs.

Environment:
  DEVEXD_PACKAGES_DIR       use the packages found there instead of running scripts/package.sh
  DEVEXD_DEBOOTSTRAP_CACHE  cache directory (default /var/cache/devexd-debootstrap)
  DEVEXD_DEBIAN_MIRROR      mirror for debootstrap (default: the archive in /etc/apt)
"""

import fcntl
import glob
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd  # noqa: E402

SRC = harness.SOURCE_DIR
UNIT = os.path.join(SRC, "packaging", "devexd.service")
CACHE = os.environ.get("DEVEXD_DEBOOTSTRAP_CACHE") or "/var/cache/devexd-debootstrap"
def apt_mirror():
    """The Debian archive this machine's apt uses (first main-archive URI in
    /etc/apt/sources.list or sources.list.d), so debootstrap fetches from
    the same place apt-get does."""
    import glob
    import re as _re
    files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*"))
    for f in files:
        try:
            text = open(f).read()
        except OSError:
            continue
        for m in _re.finditer(r"(?m)^(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text):
            uri = m.group(1)
            if "security" not in uri and uri.startswith("http"):
                return uri.rstrip("/")
    raise AssertionError("no Debian archive found in /etc/apt (needed for debootstrap)")


MIRROR = os.environ.get("DEVEXD_DEBIAN_MIRROR") or apt_mirror()
TARBALL = os.path.join(CACHE, "bookworm-minbase.tar")


def run(cmd, timeout=600, check=True, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s exited with %d:\n%s" % (" ".join(cmd), p.returncode, p.stdout[-6000:]))
    return p


def project_version():
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(r"project\(devexd VERSION ([0-9.]+)", f.read()).group(1)


_packages = {}


def packages():
    """{"deb": path, "rpm": path}, built once per run by scripts/package.sh all."""
    if _packages:
        return _packages
    d = os.environ.get("DEVEXD_PACKAGES_DIR")
    if not d:
        d = tempfile.mkdtemp(prefix="devexd-pkgs-")
        t0 = time.monotonic()
        run(["bash", os.path.join(SRC, "scripts", "package.sh"), "all"], timeout=900,
            env=dict(os.environ, OUT_DIR=d))
        sys.stderr.write("packages built in %.0fs\n" % (time.monotonic() - t0))
    v = project_version()
    debs = glob.glob(os.path.join(d, "devexd_%s_*.deb" % v))
    rpms = glob.glob(os.path.join(d, "devexd-%s-*.rpm" % v))
    assert debs and rpms, "no devexd %s .deb/.rpm in %s" % (v, d)
    _packages.update(deb=debs[0], rpm=rpms[0])
    return _packages


def deb_files(deb):
    """{path: mode string} of the regular files and symlinks in a .deb."""
    out = {}
    for line in run(["dpkg-deb", "-c", deb]).stdout.splitlines():
        parts = line.split()
        mode, path = parts[0], parts[5]
        if not mode.startswith("d"):
            out[path.lstrip(".")] = mode
    return out


def rpm_files(rpm):
    """{path: octal mode} of the non-directory files of an .rpm (rpm -qp --dump)."""
    out = {}
    for line in run(["rpm", "-qp", "--dump", rpm]).stdout.splitlines():
        f = line.split()
        mode = int(f[4], 8)
        if (mode & 0o170000) != 0o040000:
            out[f[0]] = (mode & 0o7777, f[5], f[6])
    return out


def normalize(path):
    """Debian 12 puts units in /lib/systemd/system (usrmerge aliases it to
    /usr/lib), Fedora in /usr/lib; dh_compress and brp-compress gzip man
    pages (Debian's rpmbuild does not)."""
    if path.startswith("/lib/"):
        path = "/usr" + path
    if path.startswith("/usr/share/man/") and path.endswith(".gz"):
        path = path[:-3]
    return path


class NotifyTest(unittest.TestCase):
    """src/notify.c: READY=1 on $NOTIFY_SOCKET once devexd listens, STOPPING=1 at exit."""

    def _check(self, address, env_value):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.bind(address)
            s.settimeout(10)
            with Devexd(app=None, threads=2, env={"NOTIFY_SOCKET": env_value}) as d:
                msg = s.recv(4096).decode()
                self.assertIn("READY=1", msg.split("\n"))
                self.assertIn("MAINPID=%d" % d.proc.pid, msg.split("\n"))
                self.assertEqual(d.request("GET", "/healthz").status, 200)
            self.assertEqual(s.recv(4096).decode(), "STOPPING=1")
        finally:
            s.close()

    def test_abstract_socket(self):
        name = "devexd-notify-test-%d" % os.getpid()
        self._check("\0" + name, "@" + name)

    def test_path_socket(self):
        d = tempfile.mkdtemp(prefix="devexd-notify-")
        try:
            path = os.path.join(d, "notify")
            self._check(path, path)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_no_socket_is_a_noop(self):
        with Devexd(app=None, env={"NOTIFY_SOCKET": ""}) as d:
            self.assertEqual(d.request("GET", "/healthz").status, 200)


class UnitTest(unittest.TestCase):
    def test_unit_settings(self):
        with open(UNIT) as f:
            text = f.read()
        for line in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                     "EnvironmentFile=-/etc/default/devexd", "User=devexd", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=",
                     "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
                     "ProtectKernelTunables=yes", "ProtectControlGroups=yes", "RestrictNamespaces=yes",
                     "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "PrivateDevices=yes",
                     "ProtectClock=yes", "RestrictRealtime=yes", "StateDirectory=devexd"]:
            self.assertIn(line, text.splitlines(), line)

    def test_security_score_is_ok(self):
        p = run(["systemd-analyze", "security", "--offline=true", UNIT], check=False)
        m = re.search(r"Overall exposure level for devexd.service: ([0-9.]+) (\w+)", p.stdout)
        self.assertIsNotNone(m, p.stdout[-3000:])
        sys.stderr.write("systemd-analyze security: %s %s\n" % (m.group(1), m.group(2)))
        self.assertIn(m.group(2), ("OK", "SAFE", "PERFECT"), p.stdout[-3000:])
        self.assertLessEqual(float(m.group(1)), 2.0)


class PackagesTest(unittest.TestCase):
    def test_deb_contents_and_metadata(self):
        deb = packages()["deb"]
        files = deb_files(deb)
        for path in ["/usr/bin/devexd", "/usr/share/devexd/lua/app.lua", "/usr/share/devexd/lua/policy/init.lua",
                     "/usr/share/devexd/templates/python/main.py", "/etc/devexd/devexd.conf.lua",
                     "/etc/devexd/policy.lua", "/etc/default/devexd", "/lib/systemd/system/devexd.service",
                     "/usr/share/man/man8/devexd.8.gz"]:
            self.assertIn(path, files)
        self.assertEqual(files["/etc/default/devexd"], "-rw-r-----")
        self.assertFalse([p for p in files if "node_modules" in p or "/build" in p])
        info = run(["dpkg-deb", "-f", deb, "Depends"]).stdout
        for dep in ("libh2o", "liblua5.4", "libcurl4", "libhiredis", "libyajl2", "libssl3", "libuv1", "adduser"):
            self.assertIn(dep, info)
        with tempfile.TemporaryDirectory() as t:
            run(["dpkg-deb", "-e", deb, t])
            with open(os.path.join(t, "conffiles")) as f:
                conffiles = set(f.read().split())
            self.assertTrue({"/etc/devexd/devexd.conf.lua", "/etc/devexd/policy.lua",
                             "/etc/default/devexd"} <= conffiles, conffiles)
            with open(os.path.join(t, "postinst")) as f:
                postinst = f.read()
            self.assertIn("adduser --system --group", postinst)
            self.assertIn("deb-systemd-helper", postinst)  # dh_installsystemd enables the unit

    def test_lintian(self):
        p = run(["lintian", "--fail-on", "error,warning", packages()["deb"]], check=False)
        self.assertEqual(p.returncode, 0, p.stdout)

    def test_rpm_has_the_same_files(self):
        pk = packages()
        deb = {normalize(p) for p in deb_files(pk["deb"])
               if not p.startswith(("/usr/share/doc/", "/usr/share/lintian/"))}  # Debian's own metadata
        rpm_all = rpm_files(pk["rpm"])
        rpm = {normalize(p) for p in rpm_all}
        self.assertEqual(sorted(deb - rpm), [], "in the .deb only")
        self.assertEqual(sorted(rpm - deb), [], "in the .rpm only")
        self.assertEqual(rpm_all["/etc/default/devexd"], (0o640, "root", "devexd"))
        scripts = run(["rpm", "-qp", "--scripts", pk["rpm"]]).stdout
        for what in ("preinstall", "postinstall", "preuninstall", "postuninstall"):
            self.assertIn(what + " scriptlet", scripts)
        self.assertIn("systemctl --no-reload preset devexd.service", scripts)
        conf = run(["rpm", "-qp", "--configfiles", pk["rpm"]]).stdout.split()
        self.assertEqual(sorted(conf), ["/etc/default/devexd", "/etc/devexd/devexd.conf.lua", "/etc/devexd/policy.lua"])


def debootstrap_root():
    """The cached minbase tarball (made by debootstrap once; a lock keeps
    concurrent runs from making it twice)."""
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(TARBALL):
            assert shutil.which("debootstrap"), "debootstrap is missing: scripts/deps.sh --test installs it"
            work = tempfile.mkdtemp(prefix="root-", dir=CACHE)
            try:
                # mkdtemp makes it 0700, and the tarball's "." entry (the
                # chroot's /) keeps that mode: users other than root could not
                # reach anything in the root
                os.chmod(work, 0o755)
                t0 = time.monotonic()
                run(["debootstrap", "--variant=minbase", "bookworm", work, MIRROR], timeout=1200)
                run(["tar", "--numeric-owner", "-C", work, "-cf", TARBALL + ".tmp", "."])
                os.rename(TARBALL + ".tmp", TARBALL)
                sys.stderr.write("debootstrap: %.0fs (cached in %s)\n" % (time.monotonic() - t0, TARBALL))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return TARBALL


# Runs a command in the chroot, in a private mount namespace: /proc mounted and
# the apt archive cache bound there vanish with the namespace.
CHROOT_SH = r'''
set -e
R="$1"; shift
mount -t proc proc "$R/proc"
mount --bind "$DEVEXD_APT_CACHE" "$R/var/cache/apt/archives"
exec chroot "$R" "$@"
'''


@unittest.skipUnless(os.environ.get("DEVEXD_SKIP_DEBOOTSTRAP") is None, "DEVEXD_SKIP_DEBOOTSTRAP is set")
class Debian12InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        assert os.geteuid() == 0, "the debootstrap test needs root (chroot, mounts)"
        cls.deb = packages()["deb"]
        tarball = debootstrap_root()
        cls.root = tempfile.mkdtemp(prefix="devexd-deb12-", dir="/var/tmp")
        # owners as numbers: the root's own /etc/passwd is what counts in the chroot
        run(["tar", "--numeric-owner", "-C", cls.root, "-xf", tarball])
        # the chroot's / must be 0755 for the devexd user (mkdtemp makes 0700;
        # tar sets the mode of the tarball's "." entry, 0700 in tarballs cached
        # before that was fixed)
        os.chmod(cls.root, 0o755)
        shutil.copy("/etc/resolv.conf", os.path.join(cls.root, "etc", "resolv.conf"))
        cls.apt_cache = os.path.join(CACHE, "apt-archives")
        os.makedirs(os.path.join(cls.apt_cache, "partial"), exist_ok=True)
        # no service starts from maintainer scripts (there is no systemd in the chroot anyway)
        with open(os.path.join(cls.root, "usr", "sbin", "policy-rc.d"), "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(os.path.join(cls.root, "usr", "sbin", "policy-rc.d"), 0o755)
        shutil.copy(cls.deb, os.path.join(cls.root, "tmp"))
        cls.proc = None

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "proc", None) is not None and cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait(10)
        if getattr(cls, "root", None) and not os.environ.get("DEVEXD_KEEP_TMP"):
            shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def chroot(cls, *cmd, timeout=600, check=True, env=None):
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C",
             "DEVEXD_APT_CACHE": cls.apt_cache}
        e.update(env or {})
        return run(["unshare", "--mount", "--propagation", "private", "sh", "-c", CHROOT_SH, "sh", cls.root]
                   + list(cmd), timeout=timeout, check=check, env=e)

    def test_root_is_traversable(self):
        """The chroot's / and the library directories are open to every user
        (devexd runs as the devexd user)."""
        for d in ("", "usr", "usr/lib", "usr/lib/x86_64-linux-gnu", "etc", "tmp"):
            mode = os.stat(os.path.join(self.root, d)).st_mode & 0o7777
            self.assertEqual(mode & 0o005, 0o005, "/%s is %o" % (d, mode))
        self.assertEqual(os.stat(self.root).st_mode & 0o7777, 0o755)

    def test_install_check_and_serve(self):
        t0 = time.monotonic()
        apt = ["-o", "APT::Sandbox::User=root", "-q"]
        self.chroot("apt-get", *apt, "update")
        name = os.path.basename(self.deb)
        self.chroot("apt-get", *apt, "install", "-y", "--no-install-recommends", "/tmp/" + name)
        sys.stderr.write("apt-get install in the chroot: %.0fs\n" % (time.monotonic() - t0))

        # what the package set up
        self.assertIn("devexd:", self.chroot("getent", "passwd", "devexd").stdout)
        st = self.chroot("stat", "-c", "%a %U %G", "/etc/default/devexd").stdout.split()
        self.assertEqual(st, ["640", "root", "devexd"])
        conffiles = self.chroot("cat", "/var/lib/dpkg/info/devexd.conffiles").stdout.split()
        self.assertIn("/etc/devexd/policy.lua", conffiles)

        # the compiled-in defaults: /etc/devexd/devexd.conf.lua and /usr/share/devexd/lua;
        # the shipped config is production, which needs an https PUBLIC_URL
        p = self.chroot("devexd", "--check", check=False)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("PUBLIC_URL", p.stdout)
        p = self.chroot("devexd", "--check", check=False, env={"PUBLIC_URL": "https://devex.example.com"})
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn("/etc/devexd/devexd.conf.lua", p.stdout)

        # serve as the devexd user with the shipped config on a free loopback port
        port = harness.free_port()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEVEXD_APT_CACHE": self.apt_cache,
               "HOST": "127.0.0.1", "PORT": str(port), "DEVEXD_THREADS": "2", "PUBLIC_URL": "https://devex.example.com"}
        log = open(os.path.join(self.root, "tmp", "devexd.log"), "wb")
        type(self).proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", CHROOT_SH, "sh", self.root,
             "setpriv", "--reuid=devexd", "--regid=devexd", "--init-groups", "--", "/usr/bin/devexd"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        log.close()
        deadline = time.monotonic() + 20
        body = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                r = c.getresponse()
                body = (r.status, r.read())
                c.close()
                break
            except OSError:
                time.sleep(0.1)
        with open(os.path.join(self.root, "tmp", "devexd.log"), "rb") as f:
            logtext = f.read().decode("utf-8", "replace")
        self.assertIsNotNone(body, "no answer on /healthz; log:\n" + logtext)
        self.assertEqual(body[0], 200, body)
        self.assertEqual(json.loads(body[1]), {"status": "ok"})
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/version")
        self.assertEqual(json.loads(c.getresponse().read())["version"], project_version())
        c.close()
        # the process (unshare, sh, chroot and setpriv all exec) runs as devexd
        uid = self.chroot("id", "-u", "devexd").stdout.strip()
        with open("/proc/%d/status" % self.proc.pid) as f:
            uids = [l.split()[1:] for l in f if l.startswith("Uid:")][0]
        self.assertEqual(set(uids), {uid})
        with open("/proc/%d/comm" % self.proc.pid) as f:
            self.assertEqual(f.read().strip(), "devexd")
        self.proc.terminate()
        self.assertEqual(self.proc.wait(20), 0, logtext)
        self.assertIn('"devexd started"', logtext)

        # purge works (postrm) and removes the conffiles
        self.chroot("apt-get", *apt, "purge", "-y", "devexd")
        self.assertFalse(os.path.exists(os.path.join(self.root, "etc", "default", "devexd")))
        sys.stderr.write("debootstrap test total: %.0fs\n" % (time.monotonic() - t0))


if __name__ == "__main__":
    harness.main()
