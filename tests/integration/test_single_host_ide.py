"""The development IDE page (/ide?repl=<id>, lua/routes/dev_ide.html; issue
#16, item 5) in headless Chromium (playwright-core: tests/browser/drive_ide.mjs),
against devexd with the shipped development configuration and templates: a
python session of the local runtime is the workspace agent (`devexd runner`),
the template's main.py the user's program (on APP_PORT):

sign in, create a python REPL and start it on the dashboard, follow its
"open the IDE" link; in the IDE: the template's files in the tree; New file
hello.py, type a program into the editor and save it, change its middle
(saved as a second patch), run it in the terminal and see its output
(non-ASCII and an emoji included); Run (the template's run command in the
terminal) and its page in the app panel (/user-app/), ^C ends it; then
`python3 -m http.server` on another port and the panel on that port
(/user-app/<port>/); a folder made, a file in it typed and saved, renamed,
the folder deleted; Stop, Start again from the same page: the file is there
with the edit and runs again; a save against a file changed from the
terminal behind the editor is refused and the page shows the file as it is.
After the last Stop hello.py is in storage as the editor last showed it.

Also: the page's patch maker (the diff-match-patch text form) on tricky
pairs, applied by the npm diff-match-patch package (tests/runner's lockfile),
gives the new text. Screenshots (ide.png, restarted.png) go to the test's
temp dir and are checked (PNG, not trivial, and the page's text when each was
taken); no console error, no failed request but the app panel's tries before
its server listens.

Chromium, playwright-core and diff-match-patch are installed when missing, as
in test_browser_auth.py; the test fails (it never skips) when that is not
possible.

Run: python3 tests/integration/test_single_host_ide.py   (DEVEXD_BIN picks the binary)
"""

import glob
import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import test_gateway  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_browser_auth import drive_script  # noqa: E402

DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
RUNNER_TESTS = os.path.join(harness.SOURCE_DIR, "tests", "runner")
PNG = b"\x89PNG\r\n\x1a\n"
DRIVE_TIMEOUT = 240
FIRST = 'print("hello from the IDE", 6*7)\n'
SECOND = 'import sys\nprint("hello from the IDE", 6*9, "\u00e9t\u00e9 \u2603 \U0001F600 100%")\nsys.exit(0)\n'
HELLO = "Hello from your Python REPL"
OUTPUT = "hello from the IDE 54 \u00e9t\u00e9 \u2603 \U0001F600 100%"


class IdePageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # the shipped development configuration and templates: a python session is the agent over the
        # workspace, the template's main.py the user's program (on APP_PORT, what /user-app/ reaches)
        cls.tmp = tempfile.mkdtemp(prefix="devexd-ide-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.redis = cls.enterClassContext(RedisServer())
        conf = ('local c = dofile(%s)\n'
                'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
                'c.public_url = "http://localhost:@PORT@"\n'
                'c.frontend_url = c.public_url\n'
                'return c\n') % json.dumps(DEV_CONF)
        # HOME of its own: the terminals' bash reads $HOME/.bashrc, and this machine's user's may do anything
        # (a shell init that waits on a lock held by some other shell kept the prompt away for a minute)
        home = os.path.join(cls.tmp, "home")
        os.mkdir(home)
        env = {"DEVEXD_DATA": os.path.join(cls.tmp, "data"), "REDIS_URL": cls.redis.url(), "ENVIRONMENT": "development",
               "HOME": home}
        cls.d = cls.enterClassContext(Devexd(app=None, threads=2, config_text=conf, env=env))
        cls.addClassCleanup(harness.kill_session_runners, cls.redis)  # before devexd and redis stop
        cls.origin = "http://localhost:%d" % cls.d.port
        cls.d.sync_templates()

    def drive(self, *args):
        harness.npm_ci(RUNNER_TESTS, "diff-match-patch")
        return drive_script(self, "drive_ide.mjs", self.origin, args, self.tmp, DRIVE_TIMEOUT)

    def test_edit_run_app_stop_start(self):
        shots = os.path.join(self.tmp, "shots")
        os.mkdir(shots)
        app_port = str(harness.free_port())
        r = self.drive("Ada", "first", app_port, shots)
        info = "\n" + json.dumps(r, indent=1)
        ada = test_gateway.GatewayTest.sign_in(self, "Ada")
        rid = r["ide_href"][len("/ide?repl="):]
        self.assertRegex(rid, r"^repl-[0-9a-f-]+$", info)
        self.addCleanup(lambda: ada.request("DELETE", "/api/repl/session/" + rid))

        # the IDE page: the REPL named, the template's files in the tree
        self.assertEqual(r["title"], "first (python)", info)
        self.assertEqual(r["tree_first"], ["main.py"], info)

        # every patch the page made applies with the npm package and gives the new text
        for i, c in enumerate(r["patch_checks"]):
            self.assertTrue(c["same"] and c["applied"] and all(c["applied"]), "pair %d: %s%s" % (i, c, info))
        self.assertEqual(r["patch_checks"][0]["patch"], "@@ -0,0 +1,3 @@\n+abc\n", info)
        self.assertEqual(r["patch_checks"][3]["patch"], "@@ -1,7 +1,8 @@\n a%25b \n-c%0Ad\n+ c%0Ae\n", info)

        # saved through the agent, run in its terminal, served to the app panel
        self.assertEqual(r["editor_after_save"], SECOND, info)
        # the terminal has the session's environment: the template's program runs on APP_PORT, on loopback
        self.assertRegex(r["term_env"], r"^env: host=127\.0\.0\.1 port=\d+ run=python3 main\.py$", info)
        self.assertEqual(r["app_default"]["src"], "%s/repl/%s/user-app/" % (self.origin, rid), info)
        self.assertIn(HELLO, r["app_default"]["text"], info)
        self.assertEqual(r["app_port"]["src"], "%s/repl/%s/user-app/%s/" % (self.origin, rid, app_port), info)
        self.assertIn("hello.py", r["app_port"]["text"], info)
        self.assertIn("Directory listing", r["app_port"]["text"], info)

        # folders: a file made inside one, renamed, the folder deleted (the open file closes with it)
        self.assertEqual(r["folder_open"], "pkg\nutil.py", info)
        self.assertEqual(r["renamed"], {"tree": "pkg\nhelpers.py", "path": "pkg/helpers.py"}, info)
        self.assertEqual(r["after_delete"], ["hello.py", "main.py"], info)
        self.assertEqual(r["dialogs"], ["File name (in /)", "Folder name (in /)", "File name (in /pkg)",
                                        "New path", "Delete pkg?"], info)

        # after Stop and Start the edit is there (the local runtime saved and restored it) and runs
        self.assertEqual(r["stopped_tree"], 0, info)
        self.assertEqual(r["tree_restarted"], ["hello.py", "main.py"], info)
        self.assertEqual(r["editor_restarted"], SECOND, info)
        self.assertIn(OUTPUT, r["term_restarted"], info)
        self.assertIn("second=0", r["term_restarted"], info)
        self.assertNotIn("\x1b", r["term_restarted"], info)
        # a save against a file changed behind the editor is refused, said, and the editor shows the file as it is
        self.assertRegex(r["refused"]["msg"], r"^not saved: \S", info)
        self.assertEqual(r["refused"]["editor"], "print(1)\n", info)
        self.assertEqual(r["msg"], "", info)  # cleared by the Stop that followed

        # in storage after the last Stop, as the editor showed it
        saved = glob.glob(os.path.join(self.tmp, "data", "storage", "repl", "*", rid, "hello.py"))
        self.assertEqual(len(saved), 1, info)
        with open(saved[0], encoding="utf-8") as f:
            self.assertEqual(f.read(), SECOND)
        meta = [x for x in ada.get("/api/repl").json() if x["id"] == rid]
        self.assertEqual([x["isActive"] for x in meta], [False], info)

        # the screenshots, and what the page said when each was taken
        shots_taken = {os.path.basename(s["path"]): s for s in r["screenshots"]}
        self.assertEqual(sorted(shots_taken), ["ide.png", "restarted.png"], info)
        for s in shots_taken.values():
            with open(s["path"], "rb") as f:
                self.assertEqual(f.read(8), PNG, s["path"])
            self.assertGreater(os.path.getsize(s["path"]), 5000, s["path"])
            self.assertIn("first (python)", s["text"], info)
            self.assertIn("hello.py", s["text"], info)
            self.assertIn("main.py", s["text"], info)
            self.assertIn(OUTPUT, s["text"], info)
        self.assertIn("saved", shots_taken["ide.png"]["text"], info)
        self.assertIn("KeyboardInterrupt", shots_taken["ide.png"]["text"], info)  # Run, then ^C
        self.assertIn("Serving HTTP on 127.0.0.1 port " + app_port, shots_taken["ide.png"]["text"], info)
        self.assertIn("second=0", shots_taken["restarted.png"]["text"], info)

        # no script error; failed requests only from the app panel before its server listened
        problems = [m for m in r["console"] if m.startswith(("error:", "pageerror:"))
                    and "Failed to load resource" not in m]
        self.assertEqual(problems, [], info)
        app_path = "/repl/%s/user-app/%s/" % (rid, app_port)
        bad = [x for x in r["responses"] if x["status"] >= 400
               and x["path"] not in (app_path, "/repl/%s/user-app/" % rid)]
        self.assertEqual(bad, [], info)


if __name__ == "__main__":
    harness.main()
