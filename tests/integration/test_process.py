"""devex.process: child processes for the local runtime. Spawn/wait with exit
codes, env and cwd reaching the child, free_port with a child serving HTTP on
it, stop() escalating TERM -> KILL after the grace, the process group dying
with the runner, on_exit when the child is killed from outside, spawn errors,
no devexd fd leaking into the child, many short children (ASan-clean in the
sanitizer build), reload and shutdown leaving children alone.

Assertions are on order (sequence numbers, marker files), never on elapsed
wall-clock time; the only timeouts are generous upper bounds."""

import json
import os
import signal
import socket
import sys
import textwrap
import time
import unittest
import urllib.request

from harness import Devexd, in_thread, poll

PY = sys.executable if os.path.isabs(sys.executable) else "/usr/bin/python3"



def gone(pid):
    """The pid is no longer a live process (absent or a zombie nobody reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def post(d, path, body=None):
    r = d.request("POST", path, body=json.dumps(body or {}), headers={"Content-Type": "application/json"},
                  timeout=60)
    assert r.status == 200, (path, r.status, r.body)
    return r.json()


def script(d, name, text):
    path = os.path.join(d.tmp, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def read_when(path, what):
    def ready():
        try:
            with open(path) as f:
                text = f.read()
            return text if text.endswith("\n") else None
        except FileNotFoundError:
            return None
    return poll(ready, what=what)


class ProcessTest(unittest.TestCase):
    def test_exit_code_and_file(self):
        with Devexd(app="processapp") as d:
            out = os.path.join(d.tmp, "written.txt")
            s = script(d, "exit3.py", """
                import sys
                with open(sys.argv[1], "w") as f:
                    f.write("hello from the child\\n")
                sys.exit(3)
            """)
            r = post(d, "/spawn", {"command": PY, "args": [s, out], "wait": True})
            self.assertEqual(r["code"], 3)
            self.assertIsNone(r["signal"])
            self.assertFalse(r["running"])
            with open(out) as f:
                self.assertEqual(f.read(), "hello from the child\n")
            # wait after the exit returns the same status again
            r2 = post(d, "/wait/%d" % r["pid"])
            self.assertEqual((r2["code"], r2["signal"]), (3, None))
            d.wait_log(lambda e: e.get("msg") == "process exited" and e.get("pid") == r["pid"] and e.get("code") == 3,
                       what="process exited log")

    def test_env_and_cwd(self):
        with Devexd(app="processapp", env={"DEVEXD_SECRET_X": "must-not-leak", "LANG": "C.UTF-8"}) as d:
            work = os.path.join(d.tmp, "ws")
            os.mkdir(work)
            env = {"REPL_ID": "r-123", "TEMPLATE": "python", "PORT": "4242", "CALLBACK_URL": "http://127.0.0.1:1/cb"}
            # stdout is relative: opened in the child's cwd
            r = post(d, "/spawn", {"command": "/usr/bin/env", "env": env, "cwd": work, "stdout": "env.out",
                                   "wait": True})
            self.assertEqual(r["code"], 0)
            with open(os.path.join(work, "env.out")) as f:
                got = dict(line.split("=", 1) for line in f.read().splitlines())
            expected = dict(env)
            for k in ("PATH", "HOME", "LANG"):
                if k in os.environ or k == "LANG":
                    expected[k] = {"LANG": "C.UTF-8"}.get(k, os.environ.get(k))
            self.assertEqual(got, expected)
            self.assertNotIn("DEVEXD_SECRET_X", got)

            # inherit_env = false: exactly the given table
            r = post(d, "/spawn", {"command": "/usr/bin/env", "env": {"ONLY": "1"}, "inherit_env": False,
                                   "cwd": work, "stdout": "env2.out", "wait": True})
            self.assertEqual(r["code"], 0)
            with open(os.path.join(work, "env2.out")) as f:
                self.assertEqual(f.read(), "ONLY=1\n")

            # cwd reaches the child; stdout appends
            r = post(d, "/spawn", {"command": "pwd", "args": ["-P"], "cwd": work, "stdout": "env2.out", "wait": True})
            self.assertEqual(r["code"], 0)
            with open(os.path.join(work, "env2.out")) as f:
                self.assertEqual(f.read(), "ONLY=1\n" + os.path.realpath(work) + "\n")

    def test_free_port_and_http_child(self):
        with Devexd(app="processapp") as d:
            port = d.get_json("/free_port")[1]["port"]
            self.assertIsInstance(port, int)
            self.assertGreater(port, 0)
            self.assertNotEqual(port, d.port)
            www = os.path.join(d.tmp, "www")
            os.mkdir(www)
            with open(os.path.join(www, "hello.txt"), "w") as f:
                f.write("served by the runner")
            r = post(d, "/spawn", {"command": PY, "args": ["-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                   "cwd": www, "record": True})
            pid = r["pid"]

            def answer():
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/hello.txt" % port, timeout=2) as resp:
                        return resp.read()
                except OSError:
                    return None
            self.assertEqual(poll(answer, what="the child's HTTP server"), b"served by the runner")
            s = post(d, "/stop/%d" % pid, {"grace": 10})
            self.assertEqual((s["code"], s["signal"]), (128 + signal.SIGTERM, signal.SIGTERM))
            self.assertFalse(s["running"])
            # the on_exit hook ran too
            ex = poll(lambda: [e for e in d.get_json("/exits")[1]["exits"] if e["pid"] == pid], what="on_exit")
            self.assertEqual(ex[0]["signal"], signal.SIGTERM)
            self.assertTrue(gone(pid))

    def test_stop_escalates_to_kill(self):
        with Devexd(app="processapp") as d:
            marker = os.path.join(d.tmp, "term.txt")
            s = script(d, "stubborn.py", """
                import signal, sys, time
                marker = sys.argv[1]
                def on_term(sig, frame):
                    with open(marker, "a") as f:
                        f.write("TERM\\n")
                signal.signal(signal.SIGTERM, on_term)
                with open(marker, "a") as f:
                    f.write("ready\\n")
                while True:
                    time.sleep(0.05)
            """)
            r = post(d, "/spawn", {"command": PY, "args": [s, marker], "record": True})
            pid = r["pid"]
            read_when(marker, "the child to be ready")
            st = post(d, "/stop/%d" % pid, {"grace": 0.5})
            # it got TERM, survived it (wrote the marker), and KILL ended it
            with open(marker) as f:
                self.assertEqual(f.read(), "ready\nTERM\n")
            self.assertEqual((st["code"], st["signal"]), (128 + signal.SIGKILL, signal.SIGKILL))
            self.assertFalse(st["running"])
            self.assertTrue(gone(pid))
            # on_exit ran before stop() returned (it is spawned at the exit, stop resumes after)
            ex = d.get_json("/exits")[1]["exits"]
            self.assertEqual([e["pid"] for e in ex], [pid])
            self.assertLess(st["started"], ex[0]["seq"])
            self.assertLess(ex[0]["seq"], st["finished"])

    def test_wait_timeout_then_kill(self):
        with Devexd(app="processapp") as d:
            r = post(d, "/spawn", {"command": PY, "args": ["-c", "import time; time.sleep(60)"]})
            pid = r["pid"]
            w = post(d, "/wait/%d" % pid, {"timeout": 0.05})
            self.assertEqual(w["error"]["code"], "timeout")
            self.assertTrue(w["running"])
            k = post(d, "/kill/%d" % pid, {"signal": "SIGKILL"})
            self.assertTrue(k["ok"])
            w = post(d, "/wait/%d" % pid)
            self.assertEqual((w["code"], w["signal"]), (137, 9))
            k = post(d, "/kill/%d" % pid, {"signal": "TERM"})
            self.assertEqual(k["error"]["code"], "exited")

    def test_group_dies_with_runner(self):
        with Devexd(app="processapp") as d:
            # 1: the runner ignores TERM, its child does not: TERM to the group, KILL after grace
            # 2: the runner exits on TERM, its child ignores TERM: killed when stop() cleans the group up
            for case, (runner_ignores, grandchild_ignores) in enumerate([(True, False), (False, True)]):
                pidfile = os.path.join(d.tmp, "grandchild%d.pid" % case)
                s = script(d, "runner%d.py" % case, """
                    import os, signal, subprocess, sys, time
                    pidfile, runner_ignores, grandchild_ignores = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
                    code = "import signal, time\\n"
                    if grandchild_ignores:
                        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
                    code += "time.sleep(120)\\n"
                    if runner_ignores:
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    g = subprocess.Popen([sys.executable, "-c", code])
                    time.sleep(0.2)  # let the grandchild install its handler
                    with open(pidfile, "w") as f:
                        f.write("%d\\n" % g.pid)
                    time.sleep(120)
                """)
                r = post(d, "/spawn", {"command": PY, "args": [s, pidfile, "1" if runner_ignores else "0",
                                                                "1" if grandchild_ignores else "0"]})
                pid = r["pid"]
                gpid = int(read_when(pidfile, "the grandchild's pid"))
                self.assertFalse(gone(gpid))
                self.assertEqual(os.getpgid(gpid), pid, "the grandchild is in the runner's group")
                self.assertEqual(os.getsid(pid), pid, "the runner leads its own session")
                st = post(d, "/stop/%d" % pid, {"grace": 1})
                if runner_ignores:
                    self.assertEqual(st["signal"], signal.SIGKILL)
                else:
                    self.assertEqual(st["signal"], signal.SIGTERM)
                poll(lambda: gone(gpid), what="the grandchild to die")
                self.assertFalse(d.get_json("/alive/%d" % gpid)[1]["alive"])

    def test_on_exit_when_killed_from_outside(self):
        with Devexd(app="processapp") as d:
            r = post(d, "/spawn", {"command": PY, "args": ["-c", "import time; time.sleep(60)"], "record": True})
            pid = r["pid"]
            self.assertTrue(d.get_json("/alive/%d" % pid)[1]["alive"])
            self.assertTrue(d.get_json("/running/%d" % pid)[1]["running"])
            os.kill(pid, signal.SIGKILL)
            ex = poll(lambda: d.get_json("/exits")[1]["exits"], what="on_exit to record the exit")
            self.assertEqual(ex, [{"pid": pid, "code": 137, "signal": 9, "seq": 1,
                                   "generation": ex[0]["generation"]}])
            self.assertFalse(d.get_json("/running/%d" % pid)[1]["running"])
            self.assertFalse(d.get_json("/alive/%d" % pid)[1]["alive"])

            # a handle dropped before the exit: on_exit still runs
            r = post(d, "/spawn", {"command": PY, "args": ["-c", "import time; time.sleep(60)"], "record": True})
            pid2 = r["pid"]
            post(d, "/forget/%d" % pid2)
            k = post(d, "/kill_pid", {"pid": pid2, "signal": "TERM"})
            self.assertTrue(k["ok"])
            poll(lambda: [e for e in d.get_json("/exits")[1]["exits"] if e["pid"] == pid2], what="second on_exit")
            k = post(d, "/kill_pid", {"pid": pid2, "signal": "TERM"})
            self.assertEqual(k["error"]["code"], "not_found")

    def test_spawn_errors(self):
        with Devexd(app="processapp") as d:
            r = post(d, "/spawn", {"command": "/nonexistent/bin/runner"})
            self.assertEqual(r["error"]["code"], "spawn")
            self.assertIn("no such file", r["error"]["message"].lower())
            r = post(d, "/spawn", {"command": "devexd-no-such-command-xyz"})
            self.assertEqual(r["error"]["code"], "spawn")
            r = post(d, "/spawn", {"command": "/bin/true", "cwd": "/nonexistent/dir"})
            self.assertEqual(r["error"]["code"], "spawn")
            r = post(d, "/spawn", {"command": "/bin/true", "stdout": "/nonexistent/dir/out.log"})
            self.assertEqual(r["error"]["code"], "spawn")
            self.assertIn("stdout", r["error"]["message"])
            res = post(d, "/bad-args")["results"]
            self.assertTrue(all(not x["ok"] for x in res), res)
            self.assertIn("command must be a string", res[0]["error"])
            self.assertIn("invalid env name", res[2]["error"])
            self.assertIn("pid must be", res[5]["error"])
            self.assertIn("unknown signal", res[6]["error"])
            self.assertEqual(d.get("/healthz").status, 200)

    def test_no_fd_inheritance(self):
        with Devexd(app="processapp") as d:
            out = os.path.join(d.tmp, "fds.json")
            s = script(d, "fds.py", """
                import json, os, sys
                port = int(sys.argv[2])
                fds = {}
                for fd in os.listdir("/proc/self/fd"):
                    try:
                        fds[fd] = os.readlink("/proc/self/fd/" + fd)
                    except OSError:
                        pass
                # the inode of devexd's listening socket on port
                inodes = set()
                for line in open("/proc/net/tcp").read().splitlines()[1:]:
                    f = line.split()
                    if int(f[1].split(":")[1], 16) == port and f[3] == "0A":
                        inodes.add(f[9])
                status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
                with open(sys.argv[1], "w") as f:
                    json.dump({"fds": fds, "listen_inodes": sorted(inodes), "sigblk": status["SigBlk"].strip()}, f)
            """)
            # a request in flight elsewhere keeps a client socket open in devexd too
            conn = d.connection()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            # the app holds a file opened with Lua's io.open (no O_CLOEXEC) during the spawn
            held = os.path.join(d.tmp, "held.txt")
            r = post(d, "/spawn", {"command": PY, "args": [s, out, str(d.port)], "wait": True, "hold_file": held})
            conn.close()
            self.assertEqual(r["code"], 0)
            with open(out) as f:
                got = json.load(f)
            self.assertTrue(got["listen_inodes"], "the test must see devexd's listening socket")
            extra = {fd: link for fd, link in got["fds"].items() if int(fd) > 2 and not link.startswith("/proc/")}
            self.assertEqual(extra, {}, "fds inherited from devexd")
            self.assertNotIn(held, got["fds"].values())
            for fd, link in got["fds"].items():
                self.assertFalse(link.startswith("socket:"), (fd, link))
                for ino in got["listen_inodes"]:
                    self.assertNotEqual(link, "socket:[%s]" % ino)
            self.assertEqual(int(got["sigblk"], 16), 0, "signal mask of the worker leaked into the child")

    def test_many_short_children(self):
        with Devexd(app="processapp") as d:
            for _ in range(2):
                r = post(d, "/many", {"n": 50, "command": "/bin/sh", "args": ["-c", "exit 7"], "record": True})
                self.assertEqual(r["codes"], [7] * 34)
            poll(lambda: len(d.get_json("/exits")[1]["exits"]) == 100, what="100 on_exit records")
            ex = d.get_json("/exits")[1]["exits"]
            self.assertTrue(all(e["code"] == 7 for e in ex))
            self.assertEqual(sorted(e["seq"] for e in ex), list(range(1, 101)))
            # plenty of spawns without handles or hooks
            r = post(d, "/many", {"n": 50, "command": "/bin/true"})
            self.assertEqual(r["codes"], [0] * 34)
            self.assertEqual(d.get("/healthz").status, 200)

    def test_reload_and_shutdown_leave_children(self):
        d = Devexd(app="processapp")
        with d:
            g1 = d.get_json("/generation")[1]["generation"]
            r = post(d, "/spawn", {"command": PY, "args": ["-c", "import time; time.sleep(60)"], "record": True})
            pid = r["pid"]
            d.signal(signal.SIGHUP)
            poll(lambda: d.get_json("/generation")[1]["generation"] != g1, what="the reload")
            self.assertFalse(gone(pid), "a reload must not end a child")
            mark = d.mark()
            os.kill(pid, signal.SIGTERM)
            d.wait_log(lambda e: e.get("msg") == "process exited" and e.get("pid") == pid, what="the exit", since=mark)
            # the old VM is gone: its on_exit did not run, and the new VM has no record
            self.assertEqual(d.get_json("/exits")[1]["exits"], [])
            # a child still running at shutdown is left alone
            r = post(d, "/spawn", {"command": PY, "args": ["-c", "import time; time.sleep(60)"], "record": True})
            survivor = r["pid"]
        try:
            self.assertNotEqual(d.returncode, None)
            self.assertFalse(gone(survivor), "devexd killed its child at shutdown")
        finally:
            try:
                os.killpg(survivor, signal.SIGKILL)
            except ProcessLookupError:
                pass
        poll(lambda: gone(survivor), what="the survivor to die")

    def test_waiter_on_reloaded_vm(self):
        """A request of the old VM waiting on a child is resumed after the
        reload; the old VM's on_exit does not run, and the VM then closes."""
        with Devexd(app="processapp") as d:
            g1 = d.get_json("/generation")[1]["generation"]
            r = post(d, "/spawn", {"command": PY, "args": ["-c", "import time; time.sleep(60)"], "record": True})
            pid = r["pid"]
            mark = d.mark()
            t, res = in_thread(post, d, "/wait/%d" % pid)
            time.sleep(0.3)  # let the wait park (if it has not, the assertion below still holds)
            d.signal(signal.SIGHUP)
            poll(lambda: d.get_json("/generation")[1]["generation"] != g1, what="the reload")
            self.assertNotIn("value", res, "the wait returned before the child exited")
            os.kill(pid, signal.SIGKILL)
            t.join(15)
            self.assertEqual((res["value"]["code"], res["value"]["signal"]), (137, 9))
            d.wait_log(lambda e: e.get("msg") == "process exited" and e.get("pid") == pid, since=mark, what="exit")
            self.assertEqual(d.get_json("/exits")[1]["exits"], [])

    def test_shutdown_while_waiting(self):
        """devexd's drain deadline abandons a task parked in wait() and stop();
        the children stay alive."""
        d = Devexd(app="processapp", shutdown_timeout=0.5)
        with d:
            pids = []
            for i, (path, body) in enumerate((("/wait/%d", {"timeout": 60}), ("/stop/%d", {"grace": 60}))):
                ready = os.path.join(d.tmp, "ready%d" % i)
                s = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                     "open(sys.argv[1], 'w').write('ready\\n'); time.sleep(60)")
                pid = post(d, "/spawn", {"command": PY, "args": ["-c", s, ready], "record": True})["pid"]
                pids.append(pid)
                read_when(ready, "the child to ignore TERM")
                in_thread(post, d, path % pid, body)
            time.sleep(0.3)  # let both requests park
            d.signal(signal.SIGTERM)
            self.assertEqual(d.wait_exit(), 0)
            self.assertTrue([e for e in d.logs() if "shutdown deadline passed with 2 requests" in e.get("msg", "")],
                            "both requests were still parked at the drain deadline")
        try:
            for pid in pids:
                self.assertFalse(gone(pid), "devexd killed its child at shutdown")
        finally:
            for pid in pids:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


if __name__ == "__main__":
    unittest.main(verbosity=2)
