"""The development dashboard's start progress, failed start and stop
countdown (issue #18, item 5), in headless Chromium (playwright-core:
tests/browser/drive_dash.mjs), against a development devexd on the local
runtime with two stand-in templates (test_gateway.standin_devexd):

- `slow`: the runner stand-in behind a one-second sleep. One start through
  the API first gives the template a start history, so the dashboard's start
  shows a phase with an ETA ("about N s left") on its progress line, then
  "ready" and the "open" link;
- `broken`: a command that exits at once; Start shows the plain sentence
  (the `crashed` message), not the technical error;
- a running REPL shows the countdown to its idle stop (idle_limit 120 s) and
  a "Keep working" button; clicking it postpones the stop
  (/api/repl/<id>/activity before and after).

Screenshots (progress.png, running.png, failed.png) go to the test's temp
dir and are checked (PNG, not trivial); no console error but the expected
ones. Chromium and playwright-core are installed when missing, as in
test_browser_auth.py; the test fails (it never skips) when that is not
possible.

Run: python3 tests/integration/test_single_host_dashboard.py   (DEVEXD_BIN picks the binary)
"""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import test_gateway  # noqa: E402
from test_browser_auth import drive_script  # noqa: E402
from test_gateway import STANDIN  # noqa: E402

JSON = {"Content-Type": "application/json"}
PNG = b"\x89PNG\r\n\x1a\n"
DRIVE_TIMEOUT = 150
CRASHED = "Your workspace started but then stopped working. Try again; if it keeps happening, tell your administrator."


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        test_gateway.standin_devexd(
            cls, "devexd-dashboard-",
            "return {\n"
            "  templates = { catalogue = {\n"
            "    slow = { image = 'runner-slow', port = 8081,\n"
            "      agent = false, local_command = { 'sh', '-c', 'sleep 1; exec python3 %s --host 127.0.0.1 --port \"$PORT\"' } },\n"
            "    broken = { image = 'runner-broken', port = 8081, agent = false, local_command = { 'sh', '-c', 'exit 3' } },\n"
            "  } },\n"
            "  cleanup = { idle_limit = 120, warning_lead = 30, keepalive_max = 5, sweep_interval = 1,\n"
            "              activity_interval = 1 },\n"
            "}\n" % STANDIN,
            templates=("slow", "broken"), extra_conf="c.frontend_url = c.public_url\n")
        cls.origin = "http://localhost:%d" % cls.d.port

    def drive(self, *args):
        return drive_script(self, "drive_dash.mjs", self.origin, args, self.tmp, DRIVE_TIMEOUT)

    def test_progress_failure_countdown_keepalive(self):
        # one start of `slow` through the API first: the template's start history gives the ETA
        b = test_gateway.GatewayTest.sign_in(self, "warm")
        r = b.request("POST", "/api/repl/new", headers=JSON, body=json.dumps({"template": "slow", "replName": "warm"}))
        self.assertEqual(r.status, 201, r.body)
        warm = r.json()["id"]
        r = b.request("GET", "/api/repl/session/" + warm)
        self.assertEqual(r.status, 200, r.body)
        r = b.request("DELETE", "/api/repl/session/" + warm, headers=JSON)
        self.assertEqual(r.status, 200, r.body)

        shots = os.path.join(self.tmp, "shots")
        os.mkdir(shots)
        r = self.drive("Ada", "slow", "broken", shots)
        info = "\n" + json.dumps(r, indent=1)
        ada = test_gateway.GatewayTest.sign_in(self, "Ada")
        for rid in r["ids"].values():
            self.addCleanup(lambda rid=rid: ada.request("DELETE", "/api/repl/session/" + rid, headers=JSON))
        rid = r["ids"]["slowone"]

        # the progress line: a phase with an ETA while it starts, then ready and the open link
        self.assertTrue(r["progress_shown"]["visible"], info)
        self.assertRegex(r["progress_shown"]["phase"],
                         r"^(restoring|starting): about \d+ s left \(at most \d+ s\)$", info)
        value, top = r["progress_shown"]["bar"]
        self.assertTrue(0 < value < top, info)
        texts = r["phase_texts"]
        self.assertEqual(texts[0], "starting (no estimate yet)", info)
        self.assertTrue(any(t.startswith("starting: about ") for t in texts), info)
        self.assertEqual(texts[-1], "ready", info)
        self.assertEqual(r["phase_final"], "ready", info)

        # the running REPL: the countdown to its idle stop and the keep-working button
        run = r["running"]
        self.assertEqual(run["text"], "slowone (slow) running", info)
        self.assertRegex(run["stop"], r"^stops in (1:59|2:00|1:5\d) \(if idle\)$", info)
        self.assertEqual(run["buttons"], ["Keep working", "Open", "Stop", "Delete"], info)
        before, after = r["activity_before"], r["activity_after"]
        self.assertEqual((before["running"], before["stopReason"], before["idleLimit"]), (True, "idle", 120), info)
        self.assertEqual(r["keepalive_status"], 200, info)
        self.assertGreaterEqual(after["stopAt"], before["stopAt"] + 2, info)
        self.assertEqual((after["lastSignal"], after["keepalivesUsed"]), ("keepalive", 1), info)
        self.assertRegex(r["running_after"]["stop"], r"^stops in (1:5\d|2:00) \(if idle\)$", info)

        # the failed start: the plain sentence, no progress bar left behind
        self.assertEqual(r["failed_msg"], CRASHED, info)
        self.assertFalse(r["failed_progress_visible"], info)

        # the screenshots, and no script error (the failed start's answer is an error status)
        self.assertEqual(sorted(os.path.basename(p) for p in r["screenshots"]),
                         ["failed.png", "progress.png", "running.png"], info)
        for p in r["screenshots"]:
            with open(p, "rb") as f:
                self.assertEqual(f.read(8), PNG, p)
            self.assertGreater(os.path.getsize(p), 3000, p)
        problems = [m for m in r["console"] if m.startswith(("error:", "pageerror:"))
                    and "Failed to load resource" not in m
                    and not m.startswith("error: Pattern attribute value ")]
        self.assertEqual(problems, [], info)
        bad = [x for x in r["responses"] if x["status"] >= 400
               and x["path"] != "/api/repl/session/" + r["ids"]["brokenone"]]
        self.assertEqual(bad, [], info)


if __name__ == "__main__":
    harness.main()
