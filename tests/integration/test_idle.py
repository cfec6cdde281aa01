"""Memory is given back after a burst (src/memtrim.c): once a worker has served
requests and then had a quiet second, it runs a full Lua collection and trims
the allocator, also while requests are parked (a session start waiting for
its pod, a proxied WebSocket): they are quiet too. The collection also
shrinks the stack of a parked request's coroutine that grew deep before it
parked. Observed through the Lua heap size, which nothing else would shrink
while no request allocates."""

import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

IDLE_APP = """
local app = require("devex.app").new()
require("routes.health")(app) -- the harness waits for /healthz
-- about 20 MB of tables that become garbage when the handler returns
app:get("/garbage", function()
  local keep = {}
  for i = 1, 200000 do keep[i] = { i, tostring(i) } end
  return 200, { made = #keep }
end)
app:get("/heap", function() return 200, { kb = collectgarbage("count") } end)
-- about 18 MB of live tables, kept
local live = {}
app:get("/live", function()
  for i = 1, 200000 do live[i] = { i } end
  return 200, { kept = #live }
end)
-- how far the heap grows (KB) before the collector's next collection
app:get("/allowance", function()
  local base = collectgarbage("count")
  local prev, junk = base, nil
  for i = 1, 20000000 do
    junk = { i }
    local now = collectgarbage("count")
    if now < prev then return 200, { live = base, grew = prev - base } end
    prev = now
  end
  return 200, { live = base, grew = -1, junk = junk[1] }
end)
-- a request that stays in flight, quietly (as a start waiting for its pod)
app:get("/park", function()
  require("devex.timer").sleep(60)
  return 200, { parked = true }
end)
-- one whose coroutine first grew a deep stack (as a start's API calls grow
-- it), then parks in a shallow frame (as the start waiting for its pod)
local function deep(n) if n == 0 then return 0 end return 1 + deep(n - 1) end
app:get("/deep-park", function()
  local depth = deep(20000)
  -- the workers' mode (a bad collection can leave the collector in
  -- incremental mode for a while, which would shrink it anyway)
  collectgarbage("generational")
  require("devex.timer").sleep(60)
  return 200, { depth = depth }
end)
return app
"""


def heap_kb(d):
    st, body = d.get_json("/heap")
    assert st == 200, st
    return body["kb"]


class IdleTest(unittest.TestCase):
    def burst_is_collected(self, d):
        base = heap_kb(d)
        st, body = d.get_json("/garbage")
        self.assertEqual((st, body), (200, {"made": 200000}))
        after_burst = heap_kb(d)
        self.assertGreater(after_burst, base + 5000, "the burst should leave garbage behind (%d -> %d KB)"
                           % (base, after_burst))
        deadline = time.monotonic() + 10
        now = after_burst
        while time.monotonic() < deadline:
            time.sleep(0.5)
            # read the size without adding traffic: the check needs a quiet second
            now = heap_kb(d)
            if now < base + 1000:
                break
            time.sleep(2.0)
        self.assertLess(now, base + 1000, "heap stayed at %d KB after the burst (baseline %d KB)" % (now, base))

    def test_heap_collected_after_a_quiet_second(self):
        with harness.Devexd(app="idleapp", app_files={"idleapp.lua": IDLE_APP}, threads=1) as d:
            time.sleep(2.5)  # a quiet second after the start-up requests: the baseline is collected too
            self.burst_is_collected(d)

    def test_heap_collected_while_requests_are_parked(self):
        with harness.Devexd(app="idleapp", app_files={"idleapp.lua": IDLE_APP}, threads=1) as d:
            parked = []
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", d.port))
                s.sendall(b"GET /park HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                parked.append(s)
            try:
                time.sleep(2.5)
                self.burst_is_collected(d)
                for s in parked:  # still in flight: they did not make the quiet second
                    s.setblocking(False)
                    with self.assertRaises(BlockingIOError):
                        s.recv(1, socket.MSG_PEEK)
            finally:
                for s in parked:
                    s.close()

    def test_stack_of_a_parked_request_is_shrunk(self):
        # 20,000 frames deep: about 2 MB of stack and call records, which the
        # generational collector alone never gave back while the request
        # stayed parked (Lua shrinks a coroutine's stack only in an
        # incremental cycle)
        with harness.Devexd(app="idleapp", app_files={"idleapp.lua": IDLE_APP}, threads=1) as d:
            time.sleep(2.5)
            base = heap_kb(d)
            s = socket.create_connection(("127.0.0.1", d.port))
            self.addCleanup(s.close)
            s.sendall(b"GET /deep-park HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            def grown_kb():
                kb = heap_kb(d)
                return kb if kb > base + 1500 else None
            grown = harness.poll(grown_kb, "the deep request's stack (baseline %d KB)" % base, timeout=10, interval=0.2)
            deadline = time.monotonic() + 10
            now = grown
            while time.monotonic() < deadline:
                time.sleep(0.5)
                now = heap_kb(d)
                if now < grown - 1000:
                    break
                time.sleep(2.0)
            self.assertLess(now, grown - 1000, "heap stayed at %d KB with the request parked (grown to %d KB, "
                            "baseline %d KB)" % (now, grown, base))
            s.setblocking(False)  # still parked: it was its stack that went, not the request
            with self.assertRaises(BlockingIOError):
                s.recv(1, socket.MSG_PEEK)

    def test_collection_after_a_quiet_second_keeps_the_usual_allowance(self):
        # the quiet-second collection switches to incremental mode and back
        # (for the stacks, above); the switch alone left the incremental
        # cycle's allowance: the heap doubled before the next collection
        with harness.Devexd(app="idleapp", app_files={"idleapp.lua": IDLE_APP}, threads=1) as d:
            st, body = d.get_json("/live")
            self.assertEqual((st, body), (200, {"kept": 200000}))
            time.sleep(2.5)  # the quiet second's collection
            st, body = d.get_json("/allowance")
            self.assertEqual(st, 200, body)
            self.assertGreater(body["live"], 10000, body)
            self.assertGreater(body["grew"], 0, body)
            self.assertLess(body["grew"], body["live"] / 2, body)

    def background_garbage(self, items):
        """Heap sizes (KB) logged by a timer after another timer made about
        items * 100 bytes of garbage, with no request after it: reading the
        heap over HTTP would itself be the traffic that triggers a
        collection. -> (heap when made, heaps logged in the 5 s after)"""
        app = IDLE_APP.replace("return app\n", """
local timer = require("devex.timer")
local log = require("devex.log")
local ticks = 0
timer.every(0.5, function()
  ticks = ticks + 1
  if ticks < 6 then return end -- after the start-up requests' quiet second
  if ticks == 6 then
    local keep = {}
    for i = 1, %d do keep[i] = { i, tostring(i) } end
    log.info("background garbage made", { kb = math.floor(collectgarbage("count")) })
    return
  end
  log.info("background heap", { kb = math.floor(collectgarbage("count")) })
end)
return app
""" % items)
        with harness.Devexd(app="idleapp", app_files={"idleapp.lua": app}, threads=1) as d:
            made = d.wait_log(lambda e: e.get("msg") == "background garbage made", timeout=10)[-1]
            since = d.mark()
            time.sleep(5)
            heaps = [e["kb"] for e in d.logs()[since:] if e.get("msg") == "background heap"]
            self.assertGreater(len(heaps), 4, heaps)
            return made["kb"], heaps

    def test_garbage_of_background_work_is_collected(self):
        # 20 MB of garbage, as the sweep's first pass over many REPLs made
        made, heaps = self.background_garbage(200000)
        self.assertGreater(made, 10000, made)
        self.assertLess(heaps[-1], made - 10000, "the background task's garbage stayed (heap after it: %s KB)" % heaps)

    def test_smaller_background_garbage_is_collected_too(self):
        # about 1.2 MB on a heap of about 0.7 MB: grown by more than a quarter
        # (parked session starts' notes left 1.4 MB on a 4.2 MB heap)
        made, heaps = self.background_garbage(12000)
        self.assertGreater(made, 1500, made)
        self.assertLess(heaps[-1], made - 800, "the background task's garbage stayed (heap after it: %s KB)" % heaps)


if __name__ == "__main__":
    unittest.main()
