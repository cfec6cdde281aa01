"""The agent's runner images (deploy/docker/runner/Dockerfile; issue #16,
item 6), checked without a container engine (none here) against what they
must agree with:

- the build stage installs every build dependency scripts/deps.sh lists and
  every program CMake's configure requires, copies every file CMakeLists.txt
  includes or installs, and builds with the prefix whose compiled-in Lua
  directory (CMakeLists.txt's DEVEX_LUA_DIR) is where the image copies the
  Lua app;
- the runtime stage installs the Debian package of every shared library the
  built devexd links (its ELF NEEDED entries, resolved by ldd, owned per
  dpkg -S), from the same Debian release as the build stage;
- the pod devexd renders for each default template with
  RUNNER_AGENT_REGISTRY (`devexd workload render`) matches the image: image
  name and build target, uid/gid (USER, useradd) = runAsUser/runAsGroup,
  HOME, workspace directory (WORKDIR, --dir) = the runner's workingDir and
  the workspaces mount, port (--port, EXPOSE, health check) = the
  containerPort and readiness probe, readiness path = the health check's;
  each template's stage has its toolchain (the command of its
  local_command, run at build time); without the variable the original
  images stay the default;
- the image's command itself (ENTRYPOINT after tini, and CMD, with the
  workspace and port moved to a temporary directory and a free port) runs
  the agent, and the HEALTHCHECK command, run as written, passes against it;
  SIGTERM ends it with status 0;
- runner-base played in a fresh Debian 12 root (test_packaging's cached
  debootstrap minbase): its RUN instructions as written (apt-get from the
  Debian archive, the user, /workspaces), the built devexd and the Lua app
  where its COPYs put them; no library of devexd missing there; ENTRYPOINT
  and CMD unchanged as its USER in its WORKDIR with its ENV, in network and
  PID namespaces of their own: the HEALTHCHECK passes, the agent runs as
  devex:devex, owns /workspaces, and SIGTERM (through tini) ends it with 0.

Needs readelf, ldd, dpkg and lua5.4 (the build dependencies); the chroot part
needs root, debootstrap and the Debian archive, like test_packaging.
About 25 s, and 60 s more for the chroot (apt-get in it each time).

Run: python3 tests/integration/test_runner_image.py   (DEVEXD_BIN picks the binary)
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SRC = harness.SOURCE_DIR
DOCKERFILE = os.path.join(SRC, "deploy", "docker", "runner", "Dockerfile")
REGISTRY = "registry.example.com/devex"
# in every Debian base image (libc-bin is Essential); sanitizer runtimes only link into -DDEVEX_SANITIZE builds
BASE_PACKAGES = {"libc6"}
SANITIZER = re.compile(r"^lib(asan|ubsan|lsan|tsan)\d")


def parse_dockerfile(path):
    """The stages: [{name, base, instrs: [(INSTRUCTION, text)]}], continuation lines joined, comments dropped."""
    stages, logical, cur = [], [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.strip().startswith("#"):
                continue
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            if cur.strip():
                logical.append(cur.strip())
            cur = ""
    for line in logical:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            m = re.match(r"^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
            stages.append({"base": m.group(1), "name": m.group(2), "instrs": []})
        else:
            stages[-1]["instrs"].append((instr, rest))
    return stages


def apt_packages(stage):
    """Packages named by `apt-get install` in the stage's RUN instructions."""
    pkgs = set()
    for instr, text in stage["instrs"]:
        if instr != "RUN":
            continue
        for cmd in re.split(r"&&|;", text):
            words = shlex.split(cmd)
            if "apt-get" in words and "install" in words:
                pkgs.update(w for w in words[words.index("install") + 1:] if not w.startswith("-"))
    return pkgs


def exec_form(text):
    return json.loads(text)


class RunnerImageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stages = parse_dockerfile(DOCKERFILE)
        cls.by_name = {s["name"]: s for s in cls.stages if s["name"]}
        with open(os.path.join(SRC, "CMakeLists.txt")) as f:
            cls.cmake = f.read()

    def stage(self, name):
        self.assertIn(name, self.by_name, "no stage named %s in %s" % (name, DOCKERFILE))
        return self.by_name[name]

    def chain(self, name):
        """The stage and the stages it is built FROM, nearest first."""
        out = []
        while name in self.by_name:
            out.append(self.by_name[name])
            name = self.by_name[name]["base"]
        return out

    def last(self, name, instr):
        """The effective value of an instruction (USER, WORKDIR, CMD...) in a stage, following its bases."""
        for s in self.chain(name):
            vals = [t for i, t in s["instrs"] if i == instr]
            if vals:
                return vals[-1]
        return None

    def env(self, name):
        out = {}
        for s in reversed(self.chain(name)):
            for i, t in s["instrs"]:
                if i == "ENV":
                    for w in shlex.split(t):
                        k, _, v = w.partition("=")
                        out[k] = v
        return out

    def catalogue(self):
        """{template: first word of its local_command} from the default policy (lua/policy/templates.lua)."""
        p = subprocess.run(["lua5.4", "-e", 'local t = dofile(%s) for k, v in pairs(t.catalogue) do '
                            'print(k, v.local_command[1]) end' % json.dumps(os.path.join(SRC, "lua", "policy",
                                                                                        "templates.lua"))],
                           capture_output=True, text=True, timeout=30, check=True)
        return dict(line.split("\t") for line in p.stdout.splitlines())

    def render(self, template, **env):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "DEVEXD_", "KUBE_"))}
        e.update(ENVIRONMENT="test", **env)
        p = subprocess.run([harness.DEVEXD_BIN, "-c", os.path.join(SRC, "etc", "devexd.conf.lua"), "-L",
                            harness.LUA_DIR, "workload", "render", "--template", template],
                           capture_output=True, text=True, timeout=30, env=e, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        objs = {o["kind"]: o for o in json.loads(p.stdout)["objects"]}
        pod = objs["Deployment"]["spec"]["template"]["spec"]
        runner = [c for c in pod["containers"] if c["name"] == "runner"][0]
        return pod, runner, objs

    # ---- the build stage ----

    def test_build_stage_builds_what_the_repository_needs(self):
        build = self.stage("build")
        self.assertRegex(build["base"], r"^debian:bookworm(-slim)?$")
        pkgs = apt_packages(build)
        with open(os.path.join(SRC, "scripts", "deps.sh")) as f:
            deps = re.search(r"BUILD_PKGS=\((.*?)\)", f.read(), re.S).group(1).split()
        self.assertTrue(deps)
        self.assertEqual(sorted(set(deps) - pkgs), [], "scripts/deps.sh's build packages missing in the build stage")
        cmake_text = self.cmake
        with open(os.path.join(SRC, "tests", "tests.cmake")) as f:
            cmake_text += f.read()
        for prog in re.findall(r"find_program\(\w+\s+(\S+)\s+REQUIRED\)", cmake_text):
            self.assertIn(prog, pkgs, "configure requires %s" % prog)
        copied = [t.split()[0].rstrip("/") for i, t in build["instrs"] if i == "COPY"]
        for inc in re.findall(r"^include\((tests/\S+)\)", self.cmake, re.M):
            self.assertIn(inc, copied, "CMakeLists.txt includes %s" % inc)
        for d in re.findall(r"^install\(DIRECTORY (\S+?)/ ", self.cmake, re.M):
            self.assertIn(d, copied)
        self.assertIn("src", copied)
        self.assertIn("CMakeLists.txt", copied)
        # the Lua app goes where the binary looks by default: DEVEX_LUA_DIR with the image's prefix
        runs = " ".join(t for i, t in build["instrs"] if i == "RUN")
        prefix = re.search(r"-DCMAKE_INSTALL_PREFIX=(\S+)", runs).group(1)
        self.assertNotIn("DEVEX_SANITIZE=ON", runs)
        lua_dir = re.search(r'set\(DEVEX_LUA_DIR "([^"]+)"', self.cmake).group(1).replace("${CMAKE_INSTALL_PREFIX}",
                                                                                         prefix)
        dest = re.search(r"DESTDIR=(\S+)", runs).group(1)
        base = self.stage("runner-base")
        copies = [t.split() for i, t in base["instrs"] if i == "COPY"]
        self.assertIn(["--from=build", dest + lua_dir, lua_dir], copies)
        self.assertIn(["--from=build", dest + prefix + "/bin/devexd", "/usr/bin/devexd"], copies)

    # ---- the runtime stage ----

    def test_runtime_stage_has_every_library_devexd_links(self):
        base = self.stage("runner-base")
        self.assertEqual(base["base"].split(":")[1].split("-")[0],
                         self.stage("build")["base"].split(":")[1].split("-")[0], "build and run on one Debian release")
        readelf = subprocess.run(["readelf", "-d", harness.DEVEXD_BIN], capture_output=True, text=True, check=True)
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", readelf.stdout)
        self.assertIn("libh2o.so.0.13", needed)
        ldd = subprocess.run(["ldd", harness.DEVEXD_BIN], capture_output=True, text=True, check=True).stdout
        paths = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
        want = set()
        for soname in needed:
            path = paths.get(soname)
            self.assertTrue(path, "ldd did not resolve %s" % soname)
            real = os.path.realpath(path)
            owner = None
            for candidate in (path, real, "/usr" + path, "/usr" + real):
                p = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
                if p.returncode == 0:
                    owner = p.stdout.split(":")[0]
                    break
            self.assertTrue(owner, "no Debian package owns %s" % path)
            if owner not in BASE_PACKAGES and not SANITIZER.match(owner):
                want.add(owner)
        self.assertIn("libwslay1", want)
        self.assertEqual(sorted(want - apt_packages(base)), [], "libraries devexd links missing in runner-base")

    # ---- what the pod expects of the image ----

    def test_pod_and_image_agree(self):
        templates = self.catalogue()
        self.assertEqual(sorted(templates), ["go", "node", "python"])
        for t, command in templates.items():
            name = "runner-" + t
            stage = self.stage(name)
            self.assertIn("runner-base", [s["name"] for s in self.chain(name)], name)
            # the template's toolchain is installed and its command runs at build time
            runs = " ".join(x for i, x in stage["instrs"] if i == "RUN")
            self.assertRegex(runs, r"&&\s*%s (--version|version)\b" % re.escape(command), name)

            pod, runner, objs = self.render(t, RUNNER_AGENT_REGISTRY=REGISTRY)
            info = "%s\n%s" % (name, json.dumps(runner, indent=1))
            self.assertEqual(runner["image"], "%s/devexd-%s:latest" % (REGISTRY, name), info)
            # the user the pod runs as, and its HOME
            sc = pod["securityContext"]
            self.assertEqual(self.last(name, "USER"), "%d:%d" % (sc["runAsUser"], sc["runAsGroup"]), info)
            pod_env = {e["name"]: e.get("value") for e in runner["env"]}
            env = self.env(name)
            self.assertEqual(env.get("HOME"), pod_env["HOME"], info)
            useradd = [x for i, x in self.stage("runner-base")["instrs"] if i == "RUN" and "useradd" in x][0]
            self.assertIn("--uid %d " % sc["runAsUser"], useradd)
            self.assertIn("--gid %d " % sc["runAsGroup"], useradd)
            self.assertIn("--home-dir %s " % pod_env["HOME"], useradd)
            # the workspace: WORKDIR and --dir are the runner's workingDir, where the workspaces volume is mounted
            mounts = {m["name"]: m["mountPath"] for m in runner["volumeMounts"]}
            self.assertEqual(self.last(name, "WORKDIR"), runner["workingDir"], info)
            self.assertEqual(mounts["workspaces"], runner["workingDir"], info)
            entry, cmd = exec_form(self.last(name, "ENTRYPOINT")), exec_form(self.last(name, "CMD"))
            self.assertEqual(entry[-2:], ["/usr/bin/devexd", "runner"], info)
            self.assertEqual(cmd[cmd.index("--dir") + 1], runner["workingDir"], info)
            # the port: the agent's --port, EXPOSE, the health check = the containerPort and readiness probe
            ports = {p["name"]: p["containerPort"] for p in runner["ports"]}
            self.assertEqual(list(ports), ["http"], "the agent serves no gRPC: " + info)
            self.assertEqual(cmd[cmd.index("--port") + 1], str(ports["http"]), info)
            self.assertEqual(pod_env["PORT"], str(ports["http"]), info)
            self.assertIn(str(ports["http"]), self.last(name, "EXPOSE").split(), info)
            probe = runner["readinessProbe"]["httpGet"]
            self.assertEqual(probe["port"], ports["http"], info)
            hc = self.last(name, "HEALTHCHECK")
            url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)\"", hc)
            self.assertEqual((int(url.group(1)), url.group(2)), (ports["http"], probe["path"]), hc)
            svc = [p["port"] for p in objs["Service"]["spec"]["ports"]]
            self.assertEqual(svc, [ports["http"]], info)

    def test_original_images_stay_the_default(self):
        _, runner, _ = self.render("python")
        self.assertEqual(runner["image"], "ghcr.io/parthkapoor-dev/devex/runner-python:latest")
        self.assertEqual(sorted(p["containerPort"] for p in runner["ports"]), [8081, 50051])
        _, runner, _ = self.render("python", RUNNER_AGENT_REGISTRY="")
        self.assertEqual(runner["image"], "ghcr.io/parthkapoor-dev/devex/runner-python:latest")

    # ---- the image's own command and health check ----

    def test_command_serves_and_health_check_passes(self):
        name = "runner-python"
        entry, cmd = exec_form(self.last(name, "ENTRYPOINT")), exec_form(self.last(name, "CMD"))
        self.assertEqual(entry[:2], ["/usr/bin/tini", "--"], "an init reaps the terminals' orphans")
        tmp = tempfile.mkdtemp(prefix="devexd-runner-image-")
        self.addCleanup(shutil.rmtree, tmp, True)
        port = str(harness.free_port())
        workdir = self.last(name, "WORKDIR")
        image_port = cmd[cmd.index("--port") + 1]
        # the binary under test (with this tree's Lua app) in place of the image's, the workspace and port moved
        argv = [harness.DEVEXD_BIN, "-L", harness.LUA_DIR] + entry[3:] + \
            [tmp if a == workdir else port if a == image_port else a for a in cmd]
        env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "CALLBACK_URL", "RUNNER_TOKEN")}
        env.update(self.env(name))
        env["HOME"] = tmp  # the image's home does not exist here
        with open(os.path.join(tmp, "main.py"), "w") as f:
            f.write("print('hi')\n")
        log = open(os.path.join(tmp, "agent.log"), "w+")
        self.addCleanup(log.close)
        proc = subprocess.Popen(argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                preexec_fn=harness._set_pdeathsig)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        hc = exec_form(re.search(r"CMD (\[.*\])$", self.last(name, "HEALTHCHECK")).group(1))
        hc = [a.replace("127.0.0.1:" + image_port, "127.0.0.1:" + port) for a in hc]

        def healthy():
            if proc.poll() is not None:
                log.seek(0)
                self.fail("the image's command exited %s: %s" % (proc.returncode, log.read()))
            return subprocess.run(hc, capture_output=True, timeout=10).returncode == 0
        harness.poll(healthy, "the HEALTHCHECK command", timeout=30)
        with urllib.request.urlopen("http://127.0.0.1:%s/ping" % port, timeout=10) as r:
            self.assertEqual((r.status, json.loads(r.read())), (200, "pong"))
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=30), 0)
        # it served the workspace it was given and left it alone
        self.assertEqual(sorted(os.listdir(tmp)), ["agent.log", "main.py"])


# Runs a command in the chroot, in a private mount namespace (and for the image's command network and PID
# namespaces of its own, the network with only a loopback, so it listens on 8081 and 0.0.0.0 as in a
# container; its RUN instructions need the Debian archive): /proc mounted and the apt archive cache bound there vanish with them.
CHROOT_SH = r'''
set -e
R="$1"; shift
if [ -n "$DEVEXD_OWN_NET" ]; then ip link set lo up; fi
mount -t proc proc "$R/proc"
mount --bind "$DEVEXD_APT_CACHE" "$R/var/cache/apt/archives"
exec chroot "$R" "$@"
'''


def sanitizer_libraries(binary):
    """[(path as ldd shows it, real file)] of the sanitizer runtimes a -DDEVEX_SANITIZE build links (none
    for the image's build)."""
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return [(path, os.path.realpath(path)) for soname, path in re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M)
            if re.match(r"^lib(asan|ubsan|lsan|tsan)\.so", soname)]


class RunnerBaseInChrootTest(unittest.TestCase):
    """The runner-base stage played in a fresh Debian 12 root (test_packaging's
    cached debootstrap minbase): its RUN instructions run as written (apt-get
    from the Debian archive, the user, /workspaces), its COPYs put the built
    devexd and this tree's Lua app where the build stage's would go, then its
    ENTRYPOINT and CMD run unchanged as its USER in its WORKDIR with its ENV,
    and its HEALTHCHECK command, run as the same user, must pass. Needs root
    (chroot, namespaces) like test_packaging; about 30 s with the apt cache."""

    @classmethod
    def setUpClass(cls):
        assert os.geteuid() == 0, "the chroot test needs root (chroot, namespaces)"
        import test_packaging
        cls.tp = test_packaging
        cls.stages = {st["name"]: st for st in parse_dockerfile(DOCKERFILE) if st["name"]}
        tarball = test_packaging.debootstrap_root()
        cls.root = tempfile.mkdtemp(prefix="devexd-runner-image-", dir="/var/tmp")
        cls.addClassCleanup(shutil.rmtree, cls.root, True)
        subprocess.run(["tar", "--numeric-owner", "-C", cls.root, "-xf", tarball], check=True, timeout=300)
        os.chmod(cls.root, 0o755)
        shutil.copy("/etc/resolv.conf", os.path.join(cls.root, "etc", "resolv.conf"))
        cls.apt_cache = os.path.join(test_packaging.CACHE, "apt-archives")
        os.makedirs(os.path.join(cls.apt_cache, "partial"), exist_ok=True)
        # apt's downloads run as root here (the chroot's _apt cannot write the bound cache)
        with open(os.path.join(cls.root, "etc", "apt", "apt.conf.d", "99devexd-test"), "w") as f:
            f.write('APT::Sandbox::User "root";\n')

    @classmethod
    def chroot(cls, *cmd, timeout=600, check=True, own_net=False):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEVEXD_APT_CACHE": cls.apt_cache}
        ns = ["--mount"]
        if own_net:  # and its own processes: ps shows only the image's
            ns += ["--net", "--pid", "--fork"]
            env["DEVEXD_OWN_NET"] = "1"
        return cls.tp.run(["unshare"] + ns + ["--propagation", "private", "sh", "-c", CHROOT_SH, "sh", cls.root]
                          + list(cmd), timeout=timeout, check=check, env=env)

    def test_runner_base_serves_as_its_user(self):
        base = self.stages["runner-base"]
        user = [t for i, t in base["instrs"] if i == "USER"][-1]
        workdir = [t for i, t in base["instrs"] if i == "WORKDIR"][-1]
        env = {}
        for i, t in base["instrs"]:
            if i == "ENV":
                env.update(w.split("=", 1) for w in shlex.split(t))
        t0 = time.monotonic()
        for i, t in base["instrs"]:
            if i == "RUN":
                self.chroot("sh", "-c", t)
            elif i == "COPY":
                src, dest = t.split()[1:]
                self.assertTrue(t.startswith("--from=build "), t)
                if dest.endswith("/lua"):  # the Lua app
                    shutil.copytree(harness.LUA_DIR, self.root + dest)
                else:  # the binary (this build's: its compiled-in Lua directory is not the image's, see below)
                    shutil.copy(harness.DEVEXD_BIN, self.root + dest)
        sys.stderr.write("runner-base's RUN instructions in the chroot: %.0fs\n" % (time.monotonic() - t0))
        extra = sanitizer_libraries(harness.DEVEXD_BIN)
        for path, real in extra:  # a sanitizer build needs its runtimes (the image's Release build does not)
            shutil.copy(real, self.root + path)  # this machine's, the same Debian release
        if extra:
            shutil.copy(os.path.join(SRC, "tests", "lsan.supp"), os.path.join(self.root, "tmp", "lsan.supp"))
            env["LSAN_OPTIONS"] = "suppressions=/tmp/lsan.supp:print_suppressions=0"
        # the image's build compiles /usr/share/devexd/lua in; this binary was built for another prefix
        env["DEVEXD_LUA_DIR"] = [t.split()[2] for i, t in base["instrs"] if i == "COPY" and t.endswith("/lua")][0]
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        uid, gid = user.split(":")
        as_user = ["setpriv", "--reuid=" + uid, "--regid=" + gid, "--clear-groups"]
        command = exec_form([t for i, t in base["instrs"] if i == "ENTRYPOINT"][-1]) + \
            exec_form([t for i, t in base["instrs"] if i == "CMD"][-1])
        health = exec_form(re.search(r"CMD (\[.*\])$", [t for i, t in base["instrs"] if i == "HEALTHCHECK"][-1])
                           .group(1))
        script = "\n".join([
            "cd " + shlex.quote(workdir),
            "missing=$(ldd /usr/bin/devexd | grep 'not found' || true)",
            'echo "MISSING [$missing]"',
            shlex.join(as_user + ["env", "-i"] + ["%s=%s" % kv for kv in sorted(env.items())] + command)
            + " >/tmp/agent.log 2>&1 &",
            "pid=$!",
            "i=0",
            "until " + shlex.join(as_user + health) + " 2>/dev/null; do",
            "  i=$((i+1)); if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then echo NEVER-HEALTHY; cat /tmp/agent.log;"
            " exit 1; fi; sleep 0.1",
            "done",
            'echo "PING $(curl -sS http://127.0.0.1:8081/ping)"',
            'echo "PROCS $(ps -o user=,group=,args= -C devexd)"',
            'echo "OWNER $(stat -c %U:%G .)"',
            "kill -TERM $pid; status=0; wait $pid || status=$?",
            'echo "EXIT $status"',
            "grep -c 'devexd started' /tmp/agent.log | sed 's/^/STARTED /'",
        ])
        with open(os.path.join(self.root, "tmp", "serve.sh"), "w") as f:
            f.write(script + "\n")
        p = self.chroot("sh", "/tmp/serve.sh", timeout=120, check=False, own_net=True)
        out = p.stdout
        self.assertEqual(p.returncode, 0, out)
        self.assertIn("MISSING []", out)
        self.assertIn('PING "pong"', out)
        self.assertRegex(out, r"PROCS devex +devex +/usr/bin/devexd runner --dir /workspaces --port 8081", out)
        self.assertIn("OWNER devex:devex", out)
        self.assertIn("EXIT 0", out)
        self.assertIn("STARTED 1", out)


if __name__ == "__main__":
    harness.main()
