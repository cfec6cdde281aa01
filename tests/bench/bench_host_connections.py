#!/usr/bin/env python3
"""What devex.http's max_host_connections costs in time (the k8s client's
requests use it: kube.max_connections, 4). N requests sent at once by the
handler tasks of one devexd worker to an HTTPS (HTTP/2) endpoint of a devexd
that answers each after DELAY seconds; H2O allows 100 streams at once on a
connection, so past 100 requests libcurl either opens more connections (no
cap) or keeps the requests waiting for a stream on the capped ones. Printed,
one JSON line per run, side by side: the cap (none, 2, 4), whether the
client's connections were new (cold: the first run of each cap) and the
seconds until every answer was in.

    DEVEXD_BIN=build/devexd python3 tests/bench/bench_host_connections.py
    (N=1000 DELAY=0.2 ROUNDS=2 by default)
"""

import json
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402

N = int(os.environ.get("N", "1000"))
DELAY = float(os.environ.get("DELAY", "0.2"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))

APP = r"""
local app = require("devex.app").new()
require("routes.health")(app)
local http = require("devex.http")
local tasks = require("devex.tasks")
local timer = require("devex.timer")
app:get("/slow", function() timer.sleep(tonumber(DELAY)) return 200, "ok" end)
app:get("/burst", function(req)
  local q = req.query
  local items = {}
  for i = 1, tonumber(q.n) do items[i] = i end
  local t0 = timer.now()
  local res = tasks.map(items, function()
    local r, e = http.request{ url = q.url, ca_file = q.ca, timeout = 120,
                               max_host_connections = tonumber(q.cap) }
    return r and r.status or tostring(e)
  end, { concurrency = #items })
  local ok = 0
  for _, r in ipairs(res) do if r == 200 then ok = ok + 1 end end
  return 200, { seconds = timer.now() - t0, ok = ok }
end)
return app
""".replace("tonumber(DELAY)", repr(DELAY))


def main():
    with harness.Devexd(app="hostconns", app_files={"hostconns.lua": APP}, threads=2, tls=True) as d:
        url = urllib.parse.quote("https://localhost:%d/slow" % d.tls_port, safe="")
        ca = urllib.parse.quote(d.cert, safe="")
        seen = set()
        for _ in range(ROUNDS):
            for cap in (None, 2, 4):
                q = "/burst?n=%d&url=%s&ca=%s" % (N, url, ca) + ("&cap=%d" % cap if cap else "")
                st, b = d.get_json(q, timeout=600)
                assert st == 200 and b["ok"] == N, b
                print(json.dumps({"requests": N, "delay_s": DELAY, "max_host_connections": cap,
                                  "cold": cap not in seen, "seconds": round(b["seconds"], 3)}), flush=True)
                seen.add(cap)


if __name__ == "__main__":
    main()
