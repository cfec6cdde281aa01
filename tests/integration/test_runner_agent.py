"""devexd runner, the workspace agent (issue #16 parts 1 and 2), as a real
process against a temporary workspace, spoken to as the IDE page speaks:
every event of the runner protocol with its exact payload, paths escaping the
workspace, malformed messages (the connection stays), terminals on real PTYs
(echo, stty size after a resize, a program reading stdin, closeTerminal and a
closed socket killing the processes, the per-workspace limit), updateContent
with patches made by the npm diff-match-patch package, /user-app/ proxied,
and heartbeats and the idle self-stop reaching a fake CALLBACK_URL.

Assertions are on what arrives, never on elapsed time; the waits are generous
upper bounds."""

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import harness
from harness import DEVEXD_BIN, LUA_DIR, SOURCE_DIR, free_port, poll, sanitizer_errors
from test_proxy import ws_frame, ws_open, ws_read_frame

RUNNER_TESTS = os.path.join(SOURCE_DIR, "tests", "runner")



def read_file(path):
    with open(path) as f:
        return f.read()


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Agent:
    """`devexd runner --dir DIR --port PORT` as a process."""

    def __init__(self, env=None):
        self.dir = tempfile.mkdtemp(prefix="devexd-ws-")
        self.outside = tempfile.mkdtemp(prefix="devexd-outside-")
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.update({"DEVEXD_LUA_DIR": LUA_DIR, "LOG_LEVEL": "debug", "RUNNER_SHELL": "/bin/bash",
                         "HOME": self.dir, "PS1": "$ "})
        for k in ("REPL_ID", "RUNNER_TOKEN", "CALLBACK_URL", "PORT", "HOST"):
            self.env.pop(k, None)
        self.env.update(env or {})
        self.log_path = os.path.join(self.outside, "agent.log")

    def start(self):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([DEVEXD_BIN, "runner", "--dir", self.dir, "--port", str(self.port),
                                      "--host", "127.0.0.1"], env=self.env, stdout=self.log, stderr=self.log,
                                     preexec_fn=harness._set_pdeathsig)
        def up():
            if self.proc.poll() is not None:
                raise AssertionError("the agent exited: " + self.logtext())
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/ping" % self.port, timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        poll(up, "the agent's /ping", timeout=30)
        return self

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the agent did not stop on SIGTERM")
        self.log.close()
        text = self.logtext()
        errs = sanitizer_errors(text)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.outside, ignore_errors=True)
        if errs or self.proc.returncode != 0:
            raise AssertionError("agent exit %s, sanitizer: %s\n%s" % (self.proc.returncode, errs, text[-6000:]))

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def write(self, rel, text):
        p = self.path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)

    def read(self, rel):
        with open(self.path(rel), encoding="utf-8") as f:
            return f.read()


class Client:
    """The IDE page's side of the WebSocket."""

    def __init__(self, agent):
        self.sock, _, head, self.read = ws_open(agent.port, "/api/v1/repl/ws", "127.0.0.1:%d" % agent.port)
        assert head.startswith("HTTP/1.1 101"), head
        self.sock.settimeout(20)
        self.output = {}  # terminal output seen while waiting for other events

    def send(self, event, data=None, omit_data=False):
        msg = {"event": event} if omit_data else {"event": event, "data": data}
        self.raw(json.dumps(msg).encode())

    def raw(self, payload, opcode=1):
        self.sock.sendall(ws_frame(opcode, payload, True))

    def recv(self):
        f = ws_read_frame(self.read)
        if f is None:
            raise AssertionError("connection closed")
        op, payload = f
        if op == 8:
            raise AssertionError("close frame: %r" % payload)
        msg = json.loads(payload.decode("utf-8"))
        return msg["event"], msg.get("data")

    def expect(self, event):
        """The next message that is not terminal output; it must be `event`."""
        while True:
            ev, data = self.recv()
            if ev == "terminalResponse":
                self.output.setdefault("any", []).append(data)
                continue
            if ev != event:
                raise AssertionError("expected %s, got %s %r" % (event, ev, data))
            return data

    def ask(self, event, data):
        self.send(event, data)
        return self.expect(event + "Response")

    def terminal_until(self, pred, what):
        """Collects terminalResponse text until pred(text) holds."""
        text = "".join(self.output.pop("any", []))
        others = []
        while not pred(text):
            try:
                ev, data = self.recv()
            except (TimeoutError, socket.timeout) as e:
                # what the terminal said meanwhile, to tell a lost message from a wrong answer
                raise AssertionError("no terminal output for %s within %ss (%s); output so far: %r; other events: %r"
                                     % (what, self.sock.gettimeout(), e, text[-2000:], others[-10:])) from e
            if ev == "terminalResponse":
                self.assert_str(data)
                text += data
            else:
                others.append((ev, data))
        return text

    @staticmethod
    def assert_str(data):
        if not isinstance(data, str):
            raise AssertionError("terminalResponse data must be a string, got %r" % (data,))

    def close(self):
        try:
            self.sock.sendall(ws_frame(8, b"\x03\xe8", True))
        except OSError:
            pass
        self.sock.close()


class FileEvents(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.agent = Agent().start()

    @classmethod
    def tearDownClass(cls):
        cls.agent.stop()

    def setUp(self):
        a = self.agent
        for name in os.listdir(a.dir):
            p = a.path(name)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        a.write("main.py", "print('hi')\n")
        a.write("src/app.js", "console.log(1)\n")
        os.makedirs(a.path("empty"))
        self.c = Client(a)

    def tearDown(self):
        self.c.close()

    def test_ping(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/ping" % self.agent.port) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(json.loads(r.read()), "pong")

    def test_connection_loaded(self):
        self.c.send("Connection", omit_data=True)
        self.assertEqual(self.c.expect("Loaded"), {"rootContents": [
            {"name": "empty", "isDir": True}, {"name": "main.py", "isDir": False}, {"name": "src", "isDir": True}]})

    def test_fetch(self):
        self.assertEqual(self.c.ask("fetchDir", {"Dir": "src"}),
                         {"contents": [{"name": "app.js", "isDir": False}], "path": "src"})
        self.assertEqual(self.c.ask("fetchDir", {"Dir": "empty"}), {"contents": [], "path": "empty"})
        self.assertEqual(self.c.ask("fetchContent", {"path": "src/app.js"}),
                         {"content": "console.log(1)\n", "path": "src/app.js"})
        self.assertEqual(self.c.ask("fetchContent", {"path": "/main.py"}), {"content": "print('hi')\n", "path": "/main.py"})
        r = self.c.ask("fetchContent", {"path": "nope.txt"})
        self.assertEqual(r["path"], "nope.txt")
        self.assertIn("no such file", r["error"])
        self.assertIn("is a folder", self.c.ask("fetchContent", {"path": "src"})["error"])
        self.assertIn("not a folder", self.c.ask("fetchDir", {"Dir": "main.py"})["error"])
        self.assertIn("must be a string", self.c.ask("fetchContent", {"path": 3})["error"])

    def test_create(self):
        # the IDE page creates top-level entries as "/<name>"
        self.assertEqual(self.c.ask("createFile", {"path": "/new.txt"}), {"success": True, "path": "/new.txt"})
        self.assertEqual(self.agent.read("new.txt"), "")
        self.assertEqual(self.c.ask("createFile", {"path": "src/deep/er/x.js"}), {"success": True, "path": "src/deep/er/x.js"})
        self.assertTrue(os.path.isfile(self.agent.path("src/deep/er/x.js")))
        r = self.c.ask("createFile", {"path": "main.py"})
        self.assertEqual(r["path"], "main.py")
        self.assertIn("already exists", r["error"])
        self.assertEqual(self.agent.read("main.py"), "print('hi')\n")
        self.assertEqual(self.c.ask("createFolder", {"path": "/lib/sub"}), {"success": True, "path": "/lib/sub"})
        self.assertTrue(os.path.isdir(self.agent.path("lib/sub")))
        self.assertEqual(self.c.ask("createFolder", {"path": "lib"}), {"success": True, "path": "lib"})
        self.assertIn("not a folder", self.c.ask("createFolder", {"path": "main.py/x"})["error"])

    def test_delete_rename(self):
        self.assertEqual(self.c.ask("delete", {"path": "src"}), {"success": True, "path": "src"})
        self.assertFalse(os.path.exists(self.agent.path("src")))
        self.assertIn("no such file", self.c.ask("delete", {"path": "src"})["error"])
        self.assertIn("cannot be deleted", self.c.ask("delete", {"path": ""})["error"])
        self.assertIn("cannot be deleted", self.c.ask("delete", {"path": "/"})["error"])
        self.assertTrue(os.path.isdir(self.agent.dir))
        self.assertEqual(self.c.ask("rename", {"oldPath": "main.py", "newPath": "/app.py"}),
                         {"success": True, "oldPath": "main.py", "newPath": "/app.py"})
        self.assertEqual(self.agent.read("app.py"), "print('hi')\n")
        self.agent.write("b.txt", "b")
        r = self.c.ask("rename", {"oldPath": "app.py", "newPath": "b.txt"})
        self.assertEqual((r["oldPath"], r["newPath"]), ("app.py", "b.txt"))
        self.assertIn("already exists", r["error"])
        self.assertEqual(self.agent.read("b.txt"), "b")

    def test_copy_cut_paste(self):
        self.assertEqual(self.c.ask("copy", {"sourcePath": "main.py", "targetPath": "copy.py"}),
                         {"success": True, "sourcePath": "main.py", "targetPath": "copy.py"})
        self.assertEqual(self.agent.read("copy.py"), "print('hi')\n")
        # a folder target: into it
        self.assertEqual(self.c.ask("copy", {"sourcePath": "src", "targetPath": "empty"}),
                         {"success": True, "sourcePath": "src", "targetPath": "empty"})
        self.assertEqual(self.agent.read("empty/src/app.js"), "console.log(1)\n")
        self.assertIn("itself", self.c.ask("copy", {"sourcePath": "empty", "targetPath": "empty/src"})["error"])
        self.assertIn("already exists", self.c.ask("copy", {"sourcePath": "main.py", "targetPath": "copy.py"})["error"])
        # cut + paste moves
        self.assertEqual(self.c.ask("paste", {"targetPath": "empty"}),
                         {"targetPath": "empty", "error": "nothing to paste"})
        self.assertEqual(self.c.ask("cut", {"sourcePath": "copy.py"}), {"success": True, "sourcePath": "copy.py"})
        self.assertTrue(os.path.exists(self.agent.path("copy.py")))
        self.assertEqual(self.c.ask("paste", {"targetPath": "src"}), {"success": True, "targetPath": "src"})
        self.assertFalse(os.path.exists(self.agent.path("copy.py")))
        self.assertEqual(self.agent.read("src/copy.py"), "print('hi')\n")
        self.assertIn("nothing to paste", self.c.ask("paste", {"targetPath": "src"})["error"])
        self.assertIn("no such file", self.c.ask("cut", {"sourcePath": "gone"})["error"])
        # copy without a target: the clipboard, pasted as a copy (again and again)
        self.assertEqual(self.c.ask("copy", {"sourcePath": "main.py"}), {"success": True, "sourcePath": "main.py"})
        self.assertEqual(self.c.ask("paste", {"targetPath": "empty"}), {"success": True, "targetPath": "empty"})
        self.assertEqual(self.c.ask("paste", {"targetPath": "lib.py"}), {"success": True, "targetPath": "lib.py"})
        self.assertEqual(self.agent.read("empty/main.py"), "print('hi')\n")
        self.assertEqual(self.agent.read("main.py"), "print('hi')\n")

    def test_path_escapes(self):
        a, c = self.agent, self.c
        with open(os.path.join(a.outside, "secret.txt"), "w") as f:
            f.write("SECRET")
        os.symlink(os.path.join(a.outside, "secret.txt"), a.path("link.txt"))
        os.symlink(a.outside, a.path("outdir"))
        os.symlink("main.py", a.path("inside-link.py"))
        for path in ("../../../../etc/passwd", "../" + os.path.basename(a.outside) + "/secret.txt", "src/../../x"):
            r = c.ask("fetchContent", {"path": path})
            self.assertNotIn("content", r, path)
            self.assertIn("refused", r["error"])
            self.assertEqual(r["path"], path)
        r = c.ask("fetchContent", {"path": "/etc/passwd"})
        self.assertNotIn("content", r)
        self.assertIn("error", r)
        self.assertIn("refused", c.ask("fetchContent", {"path": "//etc/passwd"})["error"])
        for path in ("link.txt", "outdir/secret.txt"):
            r = c.ask("fetchContent", {"path": path})
            self.assertNotIn("content", r, path)
            self.assertIn("outside the workspace", r["error"])
        self.assertIn("outside the workspace", c.ask("fetchDir", {"Dir": "outdir"})["error"])
        self.assertIn("outside the workspace", c.ask("createFile", {"path": "outdir/new.txt"})["error"])
        self.assertIn("outside the workspace", c.ask("updateContent", {"path": "link.txt", "patch": "@@ -1,6 +1,1 @@\n-SECRET\n+x\n"})["error"])
        self.assertIn("outside the workspace", c.ask("copy", {"sourcePath": "link.txt", "targetPath": "stolen.txt"})["error"])
        self.assertIn("outside the workspace", c.ask("rename", {"oldPath": "main.py", "newPath": "outdir/main.py"})["error"])
        self.assertIn("refused", c.ask("rename", {"oldPath": "main.py", "newPath": "../main.py"})["error"])
        self.assertIn("refused", c.ask("delete", {"path": "../" + os.path.basename(a.outside)})["error"])
        self.assertFalse(os.path.exists(os.path.join(a.outside, "new.txt")))
        self.assertTrue(os.path.exists(os.path.join(a.outside, "secret.txt")))
        self.assertTrue(os.path.exists(a.path("main.py")))
        # a link inside the workspace works; deleting a link removes the link only
        self.assertEqual(c.ask("fetchContent", {"path": "inside-link.py"})["content"], "print('hi')\n")
        self.assertEqual(c.ask("delete", {"path": "outdir"}), {"success": True, "path": "outdir"})
        self.assertTrue(os.path.exists(os.path.join(a.outside, "secret.txt")))
        # the tree shows the links as files (never followed outside)
        c.send("Connection")
        names = {e["name"]: e["isDir"] for e in c.expect("Loaded")["rootContents"]}
        self.assertEqual(names["link.txt"], False)
        # and the connection is still fine
        self.assertEqual(c.ask("fetchContent", {"path": "main.py"})["content"], "print('hi')\n")

    def test_malformed_messages(self):
        c = self.c
        c.raw(b"this is not JSON")
        self.assertIn("not a JSON object", c.expect("error")["message"])
        c.raw(b"[1,2]")
        self.assertIn("not a JSON object", c.expect("error")["message"])
        c.raw(b'{"data": {}}')
        self.assertIn("no event", c.expect("error")["message"])
        c.send("noSuchEvent", {})
        self.assertIn("unknown event", c.expect("error")["message"])
        c.raw(b"\xff\xfe binary", opcode=2)
        self.assertIn("not a JSON object", c.expect("error")["message"])
        c.send("fetchContent", None)
        self.assertIn("must be a string", c.expect("fetchContentResponse")["error"])
        self.assertEqual(c.ask("fetchContent", {"path": "main.py"})["content"], "print('hi')\n")

    def test_binary_file_shown_as_text(self):
        with open(self.agent.path("bin.dat"), "wb") as f:
            f.write(b"ok\xff\xfeend")
        self.assertEqual(self.c.ask("fetchContent", {"path": "bin.dat"})["content"], "ok\ufffd\ufffdend")


class Patches(unittest.TestCase):
    """updateContent with patches made by the npm diff-match-patch package,
    the way the IDE page's editor makes them."""

    @classmethod
    def setUpClass(cls):
        harness.npm_ci(RUNNER_TESTS, "diff-match-patch")
        cls.agent = Agent().start()

    @classmethod
    def tearDownClass(cls):
        cls.agent.stop()

    def patches(self, pairs):
        r = subprocess.run(["node", os.path.join(RUNNER_TESTS, "make_patches.js")], input=json.dumps(pairs),
                           capture_output=True, text=True, timeout=60, check=True)
        return json.loads(r.stdout)

    def test_sequence_of_edits(self):
        versions = [
            "def main():\n    print('hello')\n\nmain()\n",
            "def main():\n    print('hello, world')\n\nmain()\n",
            "import sys\n\ndef main():\n    print('hello, world')\n    return 0\n\nsys.exit(main())\n",
            "import sys\n\ndef main():\n    print('héllo, wörld ✓ 🚀')\n    return 0\n\nsys.exit(main())\n",
            "# 100% done? a+b=c & d; /path?q=1#frag\nimport sys\n\ndef main():\n    print('🚀 héllo 🚀, wörld ✓')\n    return 0\n\nsys.exit(main())\n",
            "".join("line %d: %s\n" % (i, "x" * (i % 7)) for i in range(200)),
            "".join("line %d: %s\n" % (i, "y" * (i % 5) if i % 17 == 0 else "x" * (i % 7)) for i in range(200)) + "tail\n",
            "",
            "new start 😀\n",
        ]
        a = self.agent
        a.write("prog.py", versions[0])
        c = Client(a)
        pairs = list(zip(versions, versions[1:]))
        for (before, after), patch in zip(pairs, self.patches(pairs)):
            r = c.ask("updateContent", {"path": "prog.py", "patch": patch})
            self.assertEqual(r, {"success": True, "path": "prog.py"}, patch)
            self.assertEqual(a.read("prog.py"), after)
        c.close()

    def test_patch_that_does_not_apply(self):
        a = self.agent
        a.write("f.txt", "alpha beta gamma\n")
        c = Client(a)
        [patch] = self.patches([["completely different text here\n", "completely other text here\n"]])
        r = c.ask("updateContent", {"path": "f.txt", "patch": patch})
        self.assertEqual(r["path"], "f.txt")
        self.assertIn("does not apply", r["error"])
        self.assertEqual(a.read("f.txt"), "alpha beta gamma\n")
        r = c.ask("updateContent", {"path": "f.txt", "patch": "this is not a patch"})
        self.assertIn("invalid patch", r["error"])
        r = c.ask("updateContent", {"path": "f.txt", "patch": "@@ -1,3 +1,3 @@\n-al%ZZ\n"})
        self.assertIn("invalid patch", r["error"])
        self.assertIn("no such file", c.ask("updateContent", {"path": "missing.txt", "patch": patch})["error"])
        self.assertEqual(a.read("f.txt"), "alpha beta gamma\n")
        # a patch made against an older copy whose context moved a little still lands (exact context nearby)
        a.write("g.txt", "0123456789\nkeep this line\nend\n")
        [patch] = self.patches([["keep this line\nend\n", "keep that line\nend\n"]])
        self.assertEqual(c.ask("updateContent", {"path": "g.txt", "patch": patch}), {"success": True, "path": "g.txt"})
        self.assertEqual(a.read("g.txt"), "0123456789\nkeep that line\nend\n")
        c.close()


class Terminals(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.agent = Agent({"RUNNER_MAX_TERMINALS": "2"}).start()

    @classmethod
    def tearDownClass(cls):
        cls.agent.stop()

    def open_terminal(self, c):
        c.send("requestTerminal", {"sessionId": None})
        sid = c.expect("terminalConnected")["sessionId"]
        self.assertRegex(sid, r"^[0-9a-f]{32}$")
        return sid

    def type(self, c, sid, text):
        c.send("terminalInput", {"sessionId": sid, "data": text})

    def test_echo_resize_stdin(self):
        c = Client(self.agent)
        sid = self.open_terminal(c)
        self.type(c, sid, "echo hel''lo\n")
        c.terminal_until(lambda t: "hello\r\n" in t, "hello")  # the typed line shows hel''lo
        c.send("terminalResize", {"sessionId": sid, "cols": 101, "rows": 33})
        self.type(c, sid, "stty size\n")
        c.terminal_until(lambda t: "33 101" in t, "stty size")
        self.type(c, sid, "read x; echo got:$x\n")
        time.sleep(0.2)
        self.type(c, sid, "abc\n")
        c.terminal_until(lambda t: "got:abc" in t, "the line read")
        self.type(c, sid, "exit\n")
        self.assertEqual(c.expect("terminalClosed"), {"sessionId": sid})
        c.close()

    def wait_pid(self, name):
        path = self.agent.path(name)
        return int(poll(lambda: os.path.exists(path) and read_file(path).strip(), name, timeout=15))

    def test_close_terminal_kills_processes(self):
        c = Client(self.agent)
        sid = self.open_terminal(c)
        # a background job (its own process group) and a foreground one
        self.type(c, sid, "sh -c 'echo $$ > bg.pid; exec sleep 1000' &\n")
        self.type(c, sid, "sh -c 'echo $$ > fg.pid; exec sleep 1001'\n")
        bg, fg = self.wait_pid("bg.pid"), self.wait_pid("fg.pid")
        self.assertTrue(alive(bg) and alive(fg))
        c.send("closeTerminal", {"sessionId": sid})
        self.assertEqual(c.expect("terminalClosed"), {"sessionId": sid})
        poll(lambda: not alive(bg) and not alive(fg), "the terminal's processes to die", timeout=15)
        c.send("terminalInput", {"sessionId": sid, "data": "x"})
        self.assertIn("no such terminal", c.expect("terminalError")["error"])
        c.close()
        for f in ("bg.pid", "fg.pid"):
            os.unlink(self.agent.path(f))

    def test_socket_close_kills_terminals_and_limit(self):
        c = Client(self.agent)
        sid1 = self.open_terminal(c)
        self.open_terminal(c)
        c.send("requestTerminal", None)
        self.assertIn("limit", c.expect("terminalError")["error"])
        # another connection shares the workspace's limit
        c2 = Client(self.agent)
        c2.send("requestTerminal", None)
        self.assertIn("limit", c2.expect("terminalError")["error"])
        self.type(c, sid1, "sh -c 'echo $$ > s.pid; exec sleep 1002'\n")
        pid = self.wait_pid("s.pid")
        c.close()
        poll(lambda: not alive(pid), "the terminal's process to die with its socket", timeout=15)
        os.unlink(self.agent.path("s.pid"))
        # the terminals are gone: the limit lets two more open
        sid = poll(lambda: self._try_open(c2), "a terminal after the others closed", timeout=15)
        self.assertRegex(sid, r"^[0-9a-f]{32}$")
        c2.close()

    def _try_open(self, c):
        c.send("requestTerminal", None)
        while True:
            ev, data = c.recv()
            if ev == "terminalConnected":
                return data["sessionId"]
            if ev == "terminalError":
                return None

    def test_agent_stop_kills_terminals(self):
        agent = Agent().start()
        try:
            c = Client(agent)
            sid = self.open_terminal(c)
            self.type(c, sid, "sh -c 'echo $$ > t.pid; exec sleep 1003'\n")
            path = agent.path("t.pid")
            pid = int(poll(lambda: os.path.exists(path) and read_file(path).strip(), "t.pid", timeout=15))
        finally:
            c.sock.close()
            agent.stop()
        poll(lambda: not alive(pid), "the terminal's process to die with the agent", timeout=15)


class UserApp(unittest.TestCase):
    def test_proxy(self):
        seen = []

        class App(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                seen.append(self.path)
                body = b"user app " + self.path.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
        port = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        agent = Agent({"APP_PORT": str(port)}).start()
        try:
            base = "http://127.0.0.1:%d" % agent.port
            with urllib.request.urlopen(base + "/user-app/%d/hello?x=1" % port) as r:
                self.assertEqual(r.read(), b"user app /hello?x=1")
            with urllib.request.urlopen(base + "/user-app/page") as r:
                self.assertEqual(r.read(), b"user app /page")
            with self.assertRaises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + "/user-app/%d/x" % agent.port)
            self.assertEqual(e.exception.code, 400)
        finally:
            agent.stop()
            srv.shutdown()
            srv.server_close()


class Callbacks(unittest.TestCase):
    """Heartbeats while a client is connected; the self-stop after the idle limit."""

    def test_heartbeats_and_self_stop(self):
        calls = []

        class Devexd(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                calls.append((time.monotonic(), self.command, self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_POST = do_DELETE = answer

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Devexd)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        url = "http://127.0.0.1:%d/api/runner/r1" % srv.server_address[1]
        agent = Agent({"REPL_ID": "r1", "RUNNER_TOKEN": "tok-123", "CALLBACK_URL": url,
                       "RUNNER_HEARTBEAT_INTERVAL": "0.2", "RUNNER_IDLE_LIMIT": "1.5",
                       # only heartbeats here: the restore and checkpoints are test_checkpoints'
                       "RESTORE": "0", "CHECKPOINT_INTERVAL": "0"}).start()
        try:
            c = Client(agent)
            poll(lambda: sum(1 for x in calls if x[1] == "POST") >= 3, "three heartbeats", timeout=20)
            # connected for longer than the idle limit: no self-stop
            time.sleep(2.0)
            self.assertEqual([x for x in calls if x[1] == "DELETE"], [])
            for _, method, path, auth in calls:
                self.assertEqual((method, path, auth), ("POST", "/api/runner/r1/heartbeat", "Bearer tok-123"))
            c.close()
            closed = time.monotonic()
            poll(lambda: any(x[1] == "DELETE" for x in calls), "the self-stop call", timeout=20)
            stop = [x for x in calls if x[1] == "DELETE"][0]
            self.assertEqual(stop[2:], ("/api/runner/r1", "Bearer tok-123"))
            self.assertGreaterEqual(stop[0] - closed, 1.0)  # not before the idle limit (1.5 s, checked every 0.2 s)
            # asked once, not again and again
            time.sleep(1.0)
            self.assertEqual(len([x for x in calls if x[1] == "DELETE"]), 1)
            self.assertNotIn("tok-123", agent.logtext())
        finally:
            agent.stop()
            srv.shutdown()
            srv.server_close()

    def test_terminal_environment_has_no_token(self):
        agent = Agent({"REPL_ID": "r2", "RUNNER_TOKEN": "tok-secret", "CALLBACK_URL": "http://127.0.0.1:9/api/runner/r2",
                       "RUNNER_IDLE_LIMIT": "3600", "RESTORE": "0", "CHECKPOINT_INTERVAL": "0"}).start()
        try:
            c = Client(agent)
            c.send("requestTerminal", None)
            sid = c.expect("terminalConnected")["sessionId"]
            c.send("terminalInput", {"sessionId": sid, "data": "echo TOKEN=[$RUNNER_TOKEN] REPL=[$REPL_ID]\n"})
            text = c.terminal_until(lambda t: "REPL=[r2]" in t.replace("$REPL_ID", ""), "the environment")
            self.assertIn("TOKEN=[]", text)
            c.close()
        finally:
            agent.stop()


class CommandLine(unittest.TestCase):
    def test_bad_arguments(self):
        env = dict(os.environ, DEVEXD_LUA_DIR=LUA_DIR)
        for args, msg in ((["runner"], "--dir"), (["runner", "--dir", "/nonexistent-dir"], "not a directory"),
                          (["runner", "--dir", "/tmp", "--port", "x"], "port"),
                          (["runner", "--dir", "/tmp", "--bogus"], "unknown argument")):
            r = subprocess.run([DEVEXD_BIN] + args, env=env, capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(msg, r.stderr)
        r = subprocess.run([DEVEXD_BIN, "runner", "--dir", "/tmp", "--port", "1"], capture_output=True, text=True,
                           timeout=30, env=dict(env, RUNNER_IDLE_LIMIT="abc"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("RUNNER_IDLE_LIMIT", r.stderr)


if __name__ == "__main__":
    harness.main()
