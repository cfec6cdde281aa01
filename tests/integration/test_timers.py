"""devex.timer background jobs: every() and at() run as tasks that can yield,
repeating jobs never overlap themselves, cancel() stops one, a failing job is
logged and the worker keeps serving, and SIGHUP stops the old VM's timers."""

import signal
import unittest

from harness import Devexd, poll



class TimerTest(unittest.TestCase):
    def test_every_at_cancel_and_overlap(self):
        with Devexd(app="timerapp") as d:
            poll(lambda: d.get_json("/state")[1]["ticks"] >= 5, what="5 ticks")
            poll(lambda: d.get_json("/state")[1]["slow_runs"] >= 3, what="3 slow runs")
            st = d.get_json("/state")[1]
            self.assertEqual(st["once"], 1)
            self.assertEqual(st["slow_overlap"], 0, "a repeating job overlapped itself")
            poll(lambda: d.get_json("/state")[1]["cancelled_ticks"] >= 1, what="a tick of the job to cancel")
            status, body = d.request("POST", "/cancel").status, None
            self.assertEqual(status, 200)
            before = d.get_json("/state")[1]["cancelled_ticks"]
            # wait for several ticks of the other job: the cancelled one stays still
            t0 = d.get_json("/state")[1]["ticks"]
            poll(lambda: d.get_json("/state")[1]["ticks"] >= t0 + 5, what="5 more ticks")
            self.assertEqual(d.get_json("/state")[1]["cancelled_ticks"], before)
            self.assertEqual(d.get_json("/state")[1]["once"], 1, "at() ran more than once")

    def test_failing_job_is_logged(self):
        with Devexd(app="timerapp") as d:
            self.assertEqual(d.get("/fail-later").status, 200)
            d.wait_log(lambda e: e.get("msg") == "timer task failed" and "timer boom" in e.get("error", ""),
                       what="timer task failed")
            self.assertEqual(d.get("/healthz").status, 200)

    def test_reload_stops_old_timers(self):
        with Devexd(app="timerapp") as d:
            g1 = d.get_json("/state")[1]["generation"]
            d.wait_log(lambda e: e.get("msg") == "tick" and e.get("generation") == g1, count=2, what="ticks")
            d.signal(signal.SIGHUP)
            g2 = poll(lambda: (lambda g: g if g != g1 else None)(d.get_json("/state")[1]["generation"]),
                      what="the reloaded VM")
            d.wait_log(lambda e: e.get("msg") == "tick" and e.get("generation") == g2, count=3, what="new ticks")
            mark = d.mark()
            d.wait_log(lambda e: e.get("msg") == "tick" and e.get("generation") == g2, count=3,
                       what="more new ticks", since=mark)
            old = [e for e in d.logs()[mark:] if e.get("msg") == "tick" and e.get("generation") == g1]
            self.assertEqual(old, [], "the old VM's timer still ticks after reload")


if __name__ == "__main__":
    unittest.main()
