"""runtime.pod_informer with a scripted client, inside devexd: its cache (a
pod's REPL and a count of its versions, not the pod), a later waiter of a
REPL that has its pods fetched, and a relist (RESYNC) that drops a pod: its waiter is told
and the cache forgets it; and that the informer's keep (what the API's
answers are decoded into) holds every field its slim() reads, which name the
same fields twice; of pods no waiter of the worker wants only names are
kept, fetched when a waiter comes. The watch path against a real API server is in
test_k8s_shared_watch.py; a relist that drops a pod is hard to provoke there."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

APP = r"""
local app = require("devex.app").new()
require("routes.health")(app)
local pi = require("runtime.pod_informer")
local timer = require("devex.timer")
local dstream = require("devex.stream")
pi.WATCH_TIMEOUT, pi.LINGER = 1, 1

local function pod(name, repl, ready)
  return { kind = "Pod", metadata = { name = name, namespace = "ns", uid = "u-" .. name,
           labels = { ["devex.io/repl"] = repl, app = "x" }, managedFields = { { manager = "kubelet" } } },
           spec = { nodeName = "n1", containers = { { name = "main", image = "img:1", args = { "a" } } } },
           status = { phase = "Running", podIP = "10.0.0.9",
                      conditions = { { type = "Ready", status = ready and "True" or "False" },
                                     { type = "Initialized", status = "True" } },
                      containerStatuses = { { name = "main", image = "img:1", state = { running = { startedAt = "t" } } } } } }
end

-- the list has p-a (not Ready) and p-b; the watch then relists (410 Gone)
-- and finds only p-a, Ready; later watches end empty, later lists have p-a
local relist = dstream.cond()
local fake = { watches = 0, lists = 0 }
function fake:list()
  -- an answer takes a while: both waiters of /check are in by then, and the
  -- handler, resumed by the first pod the list hands out, registers the
  -- seeded waiter below while the informer is still in that list's loop
  timer.sleep(0.01)
  self.lists = self.lists + 1
  if self.lists > 1 then return { items = { pod("p-a", "A", true) }, resourceVersion = "2" } end
  return { items = { pod("p-a", "A", false), pod("p-b", "B", false) }, resourceVersion = "1" }
end
function fake:get(ref)
  self.gets = (self.gets or 0) + 1
  return pod(ref.name, ref.name == "p-a" and "A" or "B", false)
end
-- a watch whose first next() gives what first() returns (when given), and
-- the later ones nothing until the watch's timeout
local function scripted_watch(opts, first)
  return {
    next = function()
      if first then
        local f = first
        first = nil
        return f()
      end
      timer.sleep(opts.timeout)
      return nil, { code = "timeout" }
    end,
    close = function() end,
  }
end
function fake:watch(_, opts)
  self.watches = self.watches + 1
  return scripted_watch(opts, self.watches == 1 and function()
    -- (a flag too: the signal may come before this watch is open)
    if not fake.relist then relist:wait(10) end
    return { type = "RESYNC", items = { pod("p-a", "A", true) } }
  end or nil)
end

local function names(pods)
  local out = require("devex.json").array({})
  for _, p in ipairs(pods) do out[#out + 1] = p.metadata.name end
  table.sort(out)
  return out
end

-- w:next() may wake with nothing (the informer signals every waiter after
-- a list); its callers loop, so does this
local function next_pods(w, secs)
  local deadline = timer.now() + secs
  while true do
    local left = deadline - timer.now()
    if left <= 0 then return {} end
    local ps, err = w:next(left)
    if ps == nil or #ps > 0 then return ps, err end
  end
end

app:get("/check", function()
  local inf = pi.get(fake, "ns", "app=x", "devex.io/repl")
  local wa, wb = inf:waiter("A"), inf:waiter("B")
  local out = {}
  out.a_first = names(next_pods(wa, 5))
  local bp = next_pods(wb, 5)
  out.b_first = names(bp)
  wb.last = bp[1]
  out.cached_as = type(inf.pods["p-b"])
  out.cached_repl = inf.repls["p-b"]
  out.cached_has_managed_fields = wb.last and wb.last.metadata.managedFields ~= nil
  -- a waiter registered now has its REPL's pods fetched (the cache keeps names)
  local seeded = inf:waiter("A", function(labels) return labels.app == "x" end)
  out.seeded_before_poll = names(seeded:take())
  local sp = seeded:poll()
  out.seeded_gets = fake.gets
  out.seeded = names(sp)
  wa:take() -- (the fetched p-a was handed to wa too, as every version is to each waiter of A)
  out.seeded_ip = sp[1] and sp[1].status.podIP
  out.seeded_image = sp[1] and sp[1].spec.containers[1].image
  seeded:close()
  fake.relist = true
  relist:signal()
  local pa = next_pods(wa, 5)
  out.a_after = names(pa)
  local ready
  for _, c in ipairs(pa[1] and pa[1].status.conditions or {}) do
    if c.type == "Ready" then ready = c.status end
  end
  out.a_ready = ready
  local deleted_seen = false
  for _ = 1, 50 do
    if wb.pending and wb.pending["p-b"] == false then deleted_seen = true break end
    timer.sleep(0.05)
  end
  out.b_told_deleted = deleted_seen
  out.b_after = names(wb:take())
  out.b_still_cached = inf.pods["p-b"] ~= nil or inf.repls["p-b"] ~= nil
  wa:close()
  wb:close()
  return 200, out
end)

-- a client whose watches each bring one change and then end at their
-- timeout (as the k8s client's watcher does, it keeps the last version seen
-- in w.rv): the informer must watch on from that version, not list again
local fake2 = { lists = 0, watches = 0, versions = {} }
function fake2:list()
  self.lists = self.lists + 1
  return { items = { pod("q-a", "A", false) }, resourceVersion = "1" }
end
function fake2:watch(_, opts)
  self.watches = self.watches + 1
  self.versions[#self.versions + 1] = opts.resource_version
  local n = self.watches
  local w = { rv = opts.resource_version, sent = false }
  function w.next()
    if not w.sent then
      w.sent = true
      local p = pod("q-a", "A", n >= 2)
      p.metadata.resourceVersion = tostring(10 + n)
      w.rv = p.metadata.resourceVersion
      return { type = "MODIFIED", object = p }
    end
    timer.sleep(opts.timeout)
    return nil, { code = "timeout" }
  end
  function w.close() end
  return w
end
app:get("/rewatch", function()
  local inf = pi.get(fake2, "ns2", "app=x", "devex.io/repl")
  local w = inf:waiter("A")
  local ready
  for _ = 1, 4 do
    for _, p in ipairs(w:next(5) or {}) do
      for _, c in ipairs(p.status.conditions or {}) do
        if c.type == "Ready" then ready = c.status end
      end
    end
  end
  w:close()
  return 200, { lists = fake2.lists, watches = fake2.watches, versions = fake2.versions, ready = ready }
end)

-- pods of a REPL no waiter of this worker wants: only their names are kept;
-- a waiter registered later has them fetched (a failed GET is its error and
-- is tried again; a pod gone meanwhile, 404, is no error), and the bodies go
-- when the REPL's last waiter closes
local fake3 = { gets = 0, get_answers = {} }
function fake3:list()
  return { items = { pod("r-a", "A", false), pod("r-c", "C", true), pod("r-d", "D", true) }, resourceVersion = "1" }
end
function fake3:watch(_, opts)
  return { next = function() timer.sleep(opts.timeout); return nil, { code = "timeout" } end, close = function() end }
end
function fake3:get(ref, opts)
  self.gets = self.gets + 1
  self.last_get = { name = ref.name, kind = ref.kind, keep = opts and opts.keep ~= nil }
  local a = table.remove(self.get_answers, 1)
  if a == "fail" then return nil, { status = 503, message = "unavailable" } end
  if a == "gone" then return nil, { status = 404, message = "not found" } end
  return pod(ref.name, ref.name == "r-c" and "C" or "D", true)
end
app:get("/unwaited", function()
  local inf = pi.get(fake3, "ns3", "app=x", "devex.io/repl")
  local wa = inf:waiter("A")
  local out = { a = names(next_pods(wa, 5)) }
  out.c_body, out.c_repl = inf.pods["r-c"] ~= nil, inf.repls["r-c"]
  out.a_body = inf.pods["r-a"] ~= nil
  fake3.get_answers = { "fail", "ok" }
  local wc = inf:waiter("C")
  local pods, err = wc:next(1)
  out.first_next_error = pods == nil and err and err.status or false
  out.c = names(next_pods(wc, 5) or {})
  out.gets, out.last_get = fake3.gets, fake3.last_get
  out.c_body_while_waited = inf.pods["r-c"] ~= nil
  wc:close()
  out.c_body_after_close, out.c_repl_after_close = inf.pods["r-c"] ~= nil, inf.repls["r-c"]
  fake3.get_answers = { "gone" }
  local wd = inf:waiter("D")
  pods, err = wd:next(0.2)
  out.d_gone = pods and names(pods) or tostring(err)
  wd:close()
  wa:close()
  out.gets_total = fake3.gets
  return 200, out
end)

-- a relist while a later waiter's GET is out: the relisted version is
-- newer, and what the GET brings (older) must not be handed over after it
local fake4 = { lists = 0 }
local kick = dstream.cond()
local function podx(ip)
  local p = pod("r-x", "X", false)
  p.status.podIP = ip
  return p
end
function fake4:list()
  self.lists = self.lists + 1
  return { items = { podx(self.lists == 1 and "10.0.0.1" or "10.0.0.2") }, resourceVersion = tostring(self.lists) }
end
function fake4:watch(_, opts)
  return scripted_watch(opts, self.lists == 1 and function()
    kick:wait(10)
    return nil, { code = "gone", message = "too old" } -- the informer lists again
  end or nil)
end
function fake4:get()
  kick:signal()
  timer.sleep(0.3) -- the relist happens meanwhile
  return podx("10.0.0.1")
end
app:get("/relist-during-fetch", function()
  pi.BACKOFF = 0.05
  local inf = pi.get(fake4, "ns4", "app=x", "devex.io/repl")
  local wa = inf:waiter("X")
  local first = next_pods(wa, 5)
  local wb = inf:waiter("X") -- a second waiter of X: its pod is fetched
  local got = wb:poll()
  local later = wb:take()
  wa:close()
  wb:close()
  local ips = {}
  for _, p in ipairs(got or {}) do ips[#ips + 1] = p.status.podIP end
  for _, p in ipairs(later) do ips[#ips + 1] = p.status.podIP end
  return 200, { first = first[1] and first[1].status.podIP, lists = fake4.lists, handed = ips }
end)

-- a pod with every field slim reads, and more: slim of it decoded with the
-- informer's keep (what the API's answers are decoded into) must be slim of it
-- decoded whole, or a field slim reads is missing from the keep
local function deep_equal(a, b, path, diffs)
  if type(a) ~= type(b) then diffs[#diffs + 1] = path; return end
  if type(a) ~= "table" then
    if a ~= b then diffs[#diffs + 1] = path end
    return
  end
  for k, v in pairs(a) do deep_equal(v, b[k], path .. "." .. tostring(k), diffs) end
  for k in pairs(b) do if a[k] == nil then diffs[#diffs + 1] = path .. "." .. tostring(k) end end
end
app:get("/keep", function()
  local json = require("devex.json")
  local full = json.encode({
    kind = "Pod", apiVersion = "v1",
    metadata = { name = "p-full", namespace = "ns", uid = "u", resourceVersion = "7", deletionTimestamp = "2026-01-01T00:00:00Z",
                 labels = { ["devex.io/repl"] = "R", app = "x" }, annotations = { a = "b" },
                 managedFields = { { manager = "kubelet", fieldsV1 = { f = {} } } } },
    spec = { nodeName = "n1", serviceAccountName = "sa",
             initContainers = { { name = "restore", image = "aws:2", args = { "x" } } },
             containers = { { name = "runner", image = "img:1", ports = { { containerPort = 8081 } } },
                            { name = "side", image = "side:1" }, { name = "done", image = "done:1" } } },
    status = { phase = "Pending", reason = "Evicted", message = "low on memory", podIP = "10.0.0.9", hostIP = "10.1.1.1",
               conditions = { { type = "Ready", status = "False", reason = "ContainersNotReady", message = "m1", lastProbeTime = json.null },
                              { type = "PodScheduled", status = "True", reason = "r2", message = "m2" },
                              { type = "Initialized", status = "True" } },
               initContainerStatuses = { { name = "restore", image = "aws:2", ready = false, restartCount = 3,
                 state = { waiting = { reason = "CrashLoopBackOff", message = "back-off" } },
                 lastState = { terminated = { exitCode = 1, reason = "Error", startedAt = "t" } } } },
               containerStatuses = {
                 { name = "runner", image = "img:1", state = { running = { startedAt = "t" } }, lastState = {}, ready = false },
                 { name = "side", image = "side:1", state = { waiting = { reason = "ErrImagePull", message = "no such image" } } },
                 { name = "done", image = "done:1", state = { terminated = { exitCode = 137, reason = "OOMKilled" } } } } },
  })
  local slim = pi._slim
  local diffs = {}
  deep_equal(slim(json.decode(full)), slim(json.decode(full, pi._POD_KEEP)), "pod", diffs)
  return 200, { diffs = json.array(diffs), slim_has_reason = slim(json.decode(full)).status.reason == "Evicted" }
end)
return app
"""


class PodInformerTest(unittest.TestCase):
    def test_cache_seed_and_a_relist_that_drops_a_pod(self):
        with harness.Devexd(app="informerapp", app_files={"informerapp.lua": APP}, threads=1) as d:
            st, out = d.get_json("/check")
            self.assertEqual(st, 200, out)
            self.assertEqual(out["a_first"], ["p-a"], out)
            self.assertEqual(out["b_first"], ["p-b"], out)
            # handed slimmed; the cache keeps the REPL and a count of versions, not the pod
            self.assertEqual((out["cached_as"], out["cached_repl"]), ("number", "B"), out)
            self.assertFalse(out["cached_has_managed_fields"], out)
            # a later waiter of A has p-a fetched, once, on its first poll
            self.assertEqual(out["seeded_before_poll"], [], out)
            self.assertEqual(out["seeded_gets"], 1, out)
            self.assertEqual((out["seeded"], out["seeded_ip"], out["seeded_image"]), (["p-a"], "10.0.0.9", "img:1"), out)
            # the relist: p-a is Ready now, p-b is gone (its waiter is told, the cache forgets it)
            self.assertEqual((out["a_after"], out["a_ready"]), (["p-a"], "True"), out)
            self.assertTrue(out["b_told_deleted"], out)
            self.assertEqual(out["b_after"], [], out)
            self.assertFalse(out["b_still_cached"], out)

    def test_a_watch_that_times_out_goes_on_from_its_version(self):
        with harness.Devexd(app="informerapp", app_files={"informerapp.lua": APP}, threads=1) as d:
            st, out = d.get_json("/rewatch", timeout=30)
            self.assertEqual(st, 200, out)
            self.assertEqual(out["ready"], "True", out)
            self.assertGreaterEqual(out["watches"], 3, out)
            self.assertEqual(out["lists"], 1, "listed again after a watch's timeout: %s" % out)
            self.assertEqual(out["versions"][:3], ["1", "11", "12"], out)

    def test_a_relist_during_a_fetch_keeps_the_newer_version(self):
        with harness.Devexd(app="informerapp", app_files={"informerapp.lua": APP}, threads=1) as d:
            st, out = d.get_json("/relist-during-fetch", timeout=30)
            self.assertEqual(st, 200, out)
            self.assertEqual((out["first"], out["lists"]), ("10.0.0.1", 2), out)
            # the relist's version (10.0.0.2), not the GET's older one after it
            self.assertEqual(out["handed"], ["10.0.0.2"], out)

    def test_pods_no_waiter_here_wants_are_names_only_and_fetched_when_wanted(self):
        with harness.Devexd(app="informerapp", app_files={"informerapp.lua": APP}, threads=1) as d:
            st, out = d.get_json("/unwaited", timeout=30)
            self.assertEqual(st, 200, out)
            self.assertEqual(out["a"], ["r-a"], out)
            self.assertTrue(out["a_body"], out)
            self.assertEqual((out["c_body"], out["c_repl"]), (False, "C"), out)
            # the first GET failed: next() says so; the next call fetched it
            self.assertEqual(out["first_next_error"], 503, out)
            self.assertEqual(out["c"], ["r-c"], out)
            self.assertEqual(out["gets"], 2, out)
            self.assertEqual(out["last_get"], {"name": "r-c", "kind": "Pod", "keep": True}, out)
            self.assertTrue(out["c_body_while_waited"], out)
            self.assertEqual((out["c_body_after_close"], out["c_repl_after_close"]), (False, "C"), out)
            # a pod gone by the time it is fetched: no pod and no error
            self.assertEqual(out["d_gone"], [], out)
            self.assertEqual(out["gets_total"], 3, out)

    def test_keep_holds_what_slim_reads(self):
        with harness.Devexd(app="informerapp", app_files={"informerapp.lua": APP}, threads=1) as d:
            st, out = d.get_json("/keep")
            self.assertEqual(st, 200, out)
            self.assertTrue(out["slim_has_reason"], out)
            self.assertEqual(out["diffs"], [], "fields slim reads that the informer's keep leaves out: %s" % out["diffs"])


if __name__ == "__main__":
    unittest.main()
