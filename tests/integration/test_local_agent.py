"""Single-host mode with the runner agent (issue #16 item 5): a session of
the local runtime is `devexd runner` over the workspace, reached through
devexd's /repl/<id>/ path; the template's local_command is the user's
program (RUN_COMMAND in the agent's terminals, on PORT = APP_PORT, which
/user-app/ reaches).

- the IDE protocol through the gateway: WebSocket Connection -> Loaded with
  the template's files, a file created and read back, a terminal running
  echo (with the session's environment), the template's run command started
  in the terminal and its answer at /repl/<id>/user-app/;
- the agent calls back over devexd's Unix socket (server.listen
  { socket, only = "/api/runner/" }): its heartbeat reaches devexd while the
  IDE is connected; that socket answers nothing but /api/runner/;
- a session whose endpoint is a Unix socket ("unix:/path", what isolation
  records) is reached through the gateway, HTTP and WebSocket;
- stop ends the agent, its terminals and what runs in them, and saves the
  files; start again: they are back;
- isolated (runtime.isolation, as root with bubblewrap): the agent runs
  under its own uid with its own network, devexd reaches it only at
  unix:<socket> (HTTP, WebSocket, /user-app/ to the program run in its
  terminal) and it calls back only over devexd's socket; stop leaves no
  process of that uid.

Assertions are on what arrives, never on elapsed time; the waits are
generous upper bounds."""

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import DEVEXD_BIN, LUA_DIR, poll  # noqa: E402
from test_gateway import ORIGIN, JSON, standin_devexd  # noqa: E402
from test_auth import Browser  # noqa: E402
from test_proxy import ws_frame, ws_open, ws_read_frame  # noqa: E402

FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# the template's program: answers GET / on $HOST:$PORT with its port
APP_PY = """import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("user program on %s path %s" % (os.environ["PORT"], self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), H).serve_forever()
"""


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class IDE:
    """The IDE page's side of the WebSocket, through devexd's gateway."""

    def __init__(self, test, rid, cookie):
        extra = "Origin: %s\r\nCookie: %s\r\n" % (ORIGIN, cookie)
        self.sock, _, head, self.read = ws_open(test.d.port, "/repl/%s/api/v1/repl/ws" % rid,
                                                "127.0.0.1:%d" % test.d.port, extra)
        test.assertTrue(head.startswith("HTTP/1.1 101"), head)
        self.sock.settimeout(30)
        self.text = ""

    def send(self, event, data):
        self.sock.sendall(ws_frame(1, json.dumps({"event": event, "data": data}).encode(), True))

    def expect(self, event):
        while True:
            f = ws_read_frame(self.read)
            if f is None or f[0] == 8:
                raise AssertionError("the socket closed while waiting for %s" % event)
            msg = json.loads(f[1].decode())
            if msg["event"] == "terminalResponse":
                self.text += msg["data"]
                continue
            if msg["event"] != event:
                raise AssertionError("expected %s, got %r" % (event, msg))
            return msg.get("data")

    def terminal_until(self, needle):
        while needle not in self.text:
            f = ws_read_frame(self.read)
            if f is None or f[0] == 8:
                raise AssertionError("the socket closed waiting for %r in %r" % (needle, self.text[-500:]))
            msg = json.loads(f[1].decode())
            if msg["event"] == "terminalResponse":
                self.text += msg["data"]
        return self.text

    def close(self):
        try:
            self.sock.sendall(ws_frame(8, b"\x03\xe8", True))
        except OSError:
            pass
        self.sock.close()


class LocalAgentTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        standin_devexd(
            cls, "devexd-agent-",
            "return {\n"
            "  templates = { catalogue = { py = { image = 'runner-py', port = 8081,\n"
            "    local_command = { 'python3', 'app.py' } } } },\n"
            "}\n",
            templates=("py",),
            extra_conf='c.server.listen[2] = { socket = os.getenv("DEVEXD_DATA") .. "-cb.sock", only = "/api/runner/" }\n'
                       'c.runtime.agent_env = { RUNNER_HEARTBEAT_INTERVAL = "0.5", RUNNER_SHELL = "/bin/sh" }\n')
        cls.cb_sock = os.path.join(cls.tmp, "data-cb.sock")
        with open(os.path.join(cls.tmp, "templates", "py", "app.py"), "w") as f:
            f.write(APP_PY)
        cls.d.sync_templates(os.path.join(cls.tmp, "templates"))

    # ---- helpers ----

    def sign_in(self, user):
        b = Browser(self.d)
        r = b.request("POST", "/auth/dev/login", body="user=" + user, headers=FORM)
        self.assertEqual(r.status, 302, r.body)
        return b

    def start_repl(self, b, name):
        r = b.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": "py", "replName": name}))
        self.assertEqual(r.status, 201, r.body)
        rid = r.json()["id"]
        self.addCleanup(lambda: self.d.request("DELETE", "/api/repl/session/" + rid, timeout=60,
                                               headers={"Cookie": b.cookie_header(), "Origin": ORIGIN}))
        r = self.d.request("GET", "/api/repl/session/" + rid, headers={"Cookie": b.cookie_header()}, timeout=90)
        self.assertEqual(r.status, 200, r.body)
        return rid

    def session(self, rid):
        flat = self.redis.call("HGETALL", "devex:activeSession:" + rid)
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def state(self, rid):
        v = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if v else None

    def saved(self, rid, user, rel):
        for owner in os.listdir(os.path.join(self.tmp, "data", "storage", "repl")):
            p = os.path.join(self.tmp, "data", "storage", "repl", owner, rid, rel)
            if os.path.exists(p):
                with open(p) as f:
                    return f.read()
        return None

    # ---- tests ----

    def test_ide_terminal_user_app_and_stop(self):
        alice = self.sign_in("alice")
        rid = self.start_repl(alice, "agent-ide")
        sess = self.session(rid)
        agent_pid = int(sess["pid"])
        self.assertTrue(sess["endpoint"].startswith("127.0.0.1:"), sess)
        with open("/proc/%d/cmdline" % agent_pid, "rb") as f:
            argv = f.read().split(b"\0")
        self.assertEqual(argv[1], b"runner", argv)  # the session is the agent
        cookie = alice.cookie_header()
        # readiness and plain HTTP through /repl/<id>/
        r = self.d.request("GET", "/repl/%s/ping" % rid, headers={"Cookie": cookie})
        self.assertEqual((r.status, r.body), (200, b'"pong"\n'))
        # nobody else reaches it
        bob = self.sign_in("bob")
        self.assertEqual(self.d.request("GET", "/repl/%s/ping" % rid, headers={"Cookie": bob.cookie_header()}).status, 404)

        ide = IDE(self, rid, cookie)
        ide.send("Connection", None)
        loaded = ide.expect("Loaded")
        names = sorted(e["name"] for e in loaded["rootContents"])
        self.assertIn("app.py", names)
        self.assertIn("README.md", names)
        ide.send("createFile", {"path": "notes.txt"})
        self.assertFalse((ide.expect("createFileResponse") or {}).get("error"))
        ide.send("fetchContent", {"path": "notes.txt"})
        self.assertEqual(ide.expect("fetchContentResponse")["content"], "")
        ide.send("fetchContent", {"path": "../../../../etc/passwd"})
        self.assertTrue(ide.expect("fetchContentResponse").get("error"))

        ide.send("requestTerminal", None)
        tid = ide.expect("terminalConnected")["sessionId"]
        ide.send("terminalInput", {"sessionId": tid, "data": "echo term-$REPL_ID-$((6*7)) > notes.txt; echo shell=$$; cat notes.txt\n"})
        text = ide.terminal_until("term-%s-42" % rid)
        shell_pid = int(re.search(r"shell=(\d+)", text).group(1))
        self.assertTrue(alive(shell_pid))
        with open(os.path.join(self.tmp, "data", "workspaces", rid, "notes.txt")) as f:
            self.assertEqual(f.read(), "term-%s-42\n" % rid)
        # the template's run command, started in the terminal, is the user's app
        ide.send("terminalInput", {"sessionId": tid, "data": "echo run=[$RUN_COMMAND]; $RUN_COMMAND &\n"})
        ide.terminal_until("run=[python3 app.py]")

        def user_app():
            r = self.d.request("GET", "/repl/%s/user-app/hello?x=1" % rid, headers={"Cookie": cookie})
            return r if r.status == 200 else None
        r = poll(user_app, "the user's program through /user-app/", timeout=60)
        self.assertEqual(r.body.decode(), "user program on %s path /hello?x=1" % sess["app_port"])
        app_pid = int(subprocess.run(["pgrep", "-f", "-s", str(shell_pid), "app.py"], stdout=subprocess.PIPE,
                                     text=True).stdout.split()[0])

        # the agent's heartbeats come over devexd's Unix socket while the IDE is connected
        hb = "/api/runner/%s/heartbeat" % rid
        self.d.wait_log(lambda e: e.get("path") == hb and e.get("status") == 200, timeout=30,
                        what="a heartbeat over the callback socket")

        # stop: files saved, the agent, the terminal and its program gone
        ide.close()
        r = self.d.request("DELETE", "/api/repl/session/" + rid, headers=dict(JSON, Cookie=cookie, Origin=ORIGIN), timeout=60)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.state(rid), "stopped")
        for pid, what in ((agent_pid, "agent"), (shell_pid, "terminal"), (app_pid, "user program")):
            poll(lambda: not alive(pid), "the %s to end" % what, timeout=20)
        self.assertEqual(self.saved(rid, "alice", "notes.txt"), "term-%s-42\n" % rid)
        # the agent's own output (beside the workspace): a sanitizer build reports there
        with open(os.path.join(self.tmp, "data", "workspaces", rid + ".log"), errors="replace") as f:
            self.assertEqual(harness.sanitizer_errors(f.read()), [])
        # start again: the file is back, in a new agent
        r = self.d.request("GET", "/api/repl/session/" + rid, headers={"Cookie": cookie}, timeout=90)
        self.assertEqual(r.status, 200, r.body)
        ide = IDE(self, rid, cookie)
        ide.send("fetchContent", {"path": "notes.txt"})
        self.assertEqual(ide.expect("fetchContentResponse")["content"], "term-%s-42\n" % rid)
        ide.close()

    def test_callback_socket_serves_only_runner_routes(self):
        self.assertTrue(os.path.exists(self.cb_sock))
        for path in ("/ping", "/api/repl", "/auth/dev/login", "/api/runner/../repl", "/api/runner/%2e%2e/repl", "/metrics"):
            c = UnixHTTPConnection(self.cb_sock)
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            self.assertEqual(r.status, 404, (path, body))
            self.assertEqual(json.loads(body)["error"], "not found", path)
            c.close()
        # a runner route: there, but only with the session's token
        c = UnixHTTPConnection(self.cb_sock)
        c.request("POST", "/api/runner/repl-00000000-0000-0000-0000-000000000000/heartbeat", body=b"",
                  headers={"Authorization": "Bearer nope"})
        r = c.getresponse()
        r.read()
        self.assertIn(r.status, (401, 404))
        c.close()

    def test_runner_socket_argument(self):
        env = {"PATH": os.environ["PATH"], "DEVEXD_LUA_DIR": LUA_DIR}
        for bad in ("relative.sock", "/" + "x" * 120):
            p = subprocess.run([DEVEXD_BIN, "runner", "--dir", self.tmp, "--socket", bad], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("--socket must be an absolute path", p.stderr)

    def test_unix_socket_endpoint_through_the_gateway(self):
        alice = self.sign_in("alice")
        rid = self.start_repl(alice, "agent-unix")
        cookie = alice.cookie_header()
        ws = os.path.join(self.tmp, "data", "workspaces", rid)
        sock = os.path.join(self.tmp, "agent-%s.sock" % rid[-6:])
        env = {"PATH": os.environ["PATH"], "DEVEXD_LUA_DIR": LUA_DIR, "RUNNER_SHELL": "/bin/sh"}
        log = open(os.path.join(self.tmp, "unix-agent.log"), "wb")
        p = subprocess.Popen([DEVEXD_BIN, "runner", "--dir", ws, "--socket", sock], env=env, stdout=log, stderr=log,
                             preexec_fn=harness._set_pdeathsig)

        def stop():
            p.terminate()
            p.wait(20)
            log.close()
        self.addCleanup(stop)
        poll(lambda: os.path.exists(sock), "the agent's socket", timeout=30)
        self.assertFalse(p.poll())
        # what the isolated runtime records: the session reached at unix:<path>
        self.redis.call("HSET", "devex:activeSession:" + rid, "endpoint", "unix:" + sock)
        for _ in range(3):  # keep-alive connections of the pool are reused
            r = self.d.request("GET", "/repl/%s/ping" % rid, headers={"Cookie": cookie})
            self.assertEqual((r.status, r.body), (200, b'"pong"\n'))
        ide = IDE(self, rid, cookie)
        ide.send("Connection", None)
        self.assertIn("app.py", [e["name"] for e in ide.expect("Loaded")["rootContents"]])
        ide.send("requestTerminal", None)
        tid = ide.expect("terminalConnected")["sessionId"]
        ide.send("terminalInput", {"sessionId": tid, "data": "echo via-unix-$((40+2))\n"})
        ide.terminal_until("via-unix-42")
        ide.close()
        # a socket nobody listens on: the gateway's JSON 502, not a hang
        self.redis.call("HSET", "devex:activeSession:" + rid, "endpoint", "unix:" + sock + ".gone")
        r = self.d.request("GET", "/repl/%s/ping" % rid, headers={"Cookie": cookie})
        self.assertEqual(r.status, 502, r.body)
        self.assertEqual(r.json()["error"], "bad gateway")


def procs_of_uid(uid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/status" % p) as f:
                    st = f.read()
            except OSError:
                continue
            if "\nUid:\t%d\t" % uid in st and "\nState:\tZ" not in st:
                out.append(int(p))
    return out


@unittest.skipUnless(os.geteuid() == 0 and os.path.exists("/usr/bin/bwrap"),
                     "needs root and bubblewrap: isolated runners switch to their own uids")
class IsolatedAgentTest(LocalAgentTest):
    """The same agent under runtime.isolation (lua/runtime/sandbox.lua): its
    own uid in bubblewrap with its own network, reached by devexd only
    through its Unix socket, calling back only through devexd's."""

    FIRST_UID = 240000 + (os.getpid() % 100) * 4

    @classmethod
    def setUpClass(cls):
        standin_devexd(
            cls, "devexd-agent-iso-",
            "return {\n"
            "  templates = { catalogue = { py = { image = 'runner-py', port = 8081,\n"
            "    local_command = { 'python3', 'app.py' } } } },\n"
            "}\n",
            templates=("py",),
            extra_conf='c.server.listen[2] = { socket = os.getenv("DEVEXD_DATA") .. "-cb.sock", only = "/api/runner/" }\n'
                       'c.runtime.agent_env = { RUNNER_HEARTBEAT_INTERVAL = "0.5", RUNNER_SHELL = "/bin/sh" }\n'
                       'c.runtime.isolation = true\n'
                       'c.runtime.sandbox = { uids = { first = %d, count = 4 }, run_dir = os.getenv("DEVEXD_DATA") .. "/run" }\n'
                       % cls.FIRST_UID)
        os.chmod(cls.tmp, 0o755)
        with open(os.path.join(cls.tmp, "templates", "py", "app.py"), "w") as f:
            f.write(APP_PY)
        cls.d.sync_templates(os.path.join(cls.tmp, "templates"))

    # the tests of the class above read host pids and a loopback endpoint
    test_ide_terminal_user_app_and_stop = None
    test_unix_socket_endpoint_through_the_gateway = None
    test_callback_socket_serves_only_runner_routes = None
    test_runner_socket_argument = None

    def test_isolated_agent(self):
        alice = self.sign_in("alice")
        rid = self.start_repl(alice, "agent-iso")
        sess = self.session(rid)
        self.assertTrue(sess["endpoint"].startswith("unix:/"), sess)
        uid = int(sess["uid"])
        self.assertTrue(procs_of_uid(uid))
        cookie = alice.cookie_header()
        r = self.d.request("GET", "/repl/%s/ping" % rid, headers={"Cookie": cookie})
        self.assertEqual((r.status, r.body), (200, b'"pong"\n'))
        ide = IDE(self, rid, cookie)
        ide.send("Connection", None)
        self.assertIn("app.py", [e["name"] for e in ide.expect("Loaded")["rootContents"]])
        ide.send("requestTerminal", None)
        tid = ide.expect("terminalConnected")["sessionId"]
        ide.send("terminalInput", {"sessionId": tid, "data": "echo uid=$(id -u)-$REPL_ID; $RUN_COMMAND &\n"})
        ide.terminal_until("uid=%d-%s" % (uid, rid))

        def user_app():
            r = self.d.request("GET", "/repl/%s/user-app/x" % rid, headers={"Cookie": cookie})
            return r if r.status == 200 else None
        r = poll(user_app, "the user's program in the sandbox through /user-app/", timeout=60)
        self.assertEqual(r.body.decode(), "user program on %s path /x" % sess["app_port"])
        hb = "/api/runner/%s/heartbeat" % rid
        self.d.wait_log(lambda e: e.get("path") == hb and e.get("status") == 200, timeout=30,
                        what="a heartbeat from the sandbox over the callback socket")
        ide.close()
        r = self.d.request("DELETE", "/api/repl/session/" + rid, headers=dict(JSON, Cookie=cookie, Origin=ORIGIN),
                           timeout=60)
        self.assertEqual(r.status, 200, r.body)
        poll(lambda: not procs_of_uid(uid), "every process of the runner's uid to end", timeout=20)
        self.assertIn("app.py", os.listdir(os.path.join(self.tmp, "data", "storage", "repl", "dev_alice", rid)))


if __name__ == "__main__":
    harness.main()
