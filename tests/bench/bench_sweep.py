#!/usr/bin/env python3
"""The sweep at 1k and 10k REPLs (issue 17.5): for each size in SIZES, Redis
holds that many REPLs in the store's format (tests/integration/
test_sweep_scale.seed: users of 10 REPLs), RUNNING of them with a session
(the local runtime, its runner a live process; none due), and one devexd
(shipped dev config, 2 workers, sweep_interval 1 s) sweeps it. Measured in
the same run:

- the time of one sweep cycle (the report's `ms`, median and max over CYCLES
  runs) and what it read (report.examined, report.sessions_read);
- Redis commands per cycle: INFO commandstats (commands run inside scripts
  included) between two sweep log lines CYCLES runs apart, / CYCLES, with
  the commands that cost most;
- GET /api/repl for a signed-in user with 10 REPLs: wrk -t2 -cCONNECTIONS
  -dDURATION, req/s and p50/p99 (with the per-worker caches, as shipped).

BEFORE_REV=<git revision>: also run every size with the Lua tree of that
revision (e.g. 752114a~1, the sweep from before the indexes, which SCANs
and reads every REPL), same data, same binary; its sweep.lua gets only the
two lines that put the run's time in the report.

Usage: DEVEXD_BIN=build/devexd python3 tests/bench/bench_sweep.py
Knobs (environment): SIZES (1000,10000), RUNNING (1000), CYCLES (8), ROUNDS
(1; the order of the sizes alternates, medians printed at the end),
DURATION (8), CONNECTIONS (32), BEFORE_REV, RESULTS_DIR (tests/bench/results).
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_auth import Browser  # noqa: E402
import test_sweep_scale  # noqa: E402

SIZES = [int(x) for x in os.environ.get("SIZES", "1000,10000").split(",")]
RUNNING = int(os.environ.get("RUNNING", "1000"))
CYCLES = int(os.environ.get("CYCLES", "8"))
ROUNDS = int(os.environ.get("ROUNDS", "1"))
DURATION = int(os.environ.get("DURATION", "8"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
BEFORE_REV = os.environ.get("BEFORE_REV")
RESULTS_DIR = os.environ.get("RESULTS_DIR", os.path.join(HERE, "results"))
DEV_CONF = os.path.join(harness.SOURCE_DIR, "etc", "devexd.dev.conf.lua")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
USER = "sweepbench%05d"


def commandstats(redis):
    """{command: calls} from INFO commandstats."""
    out = {}
    for line in redis.call("INFO", "commandstats").decode().splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def sweeps(d, since=0):
    return [e for e in d.logs()[since:] if e.get("msg") == "sweep"]


def wait_sweeps(d, n, since, timeout=120):
    deadline = time.monotonic() + timeout
    while len(sweeps(d, since)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("fewer than %d sweeps in %ds" % (n, timeout))
        time.sleep(0.02)
    return sweeps(d, since)


def wrk(url, cookie):
    out = subprocess.run(["wrk", "-t2", "-c%d" % CONNECTIONS, "-d%ds" % DURATION, "--latency",
                          "-H", "Cookie: " + cookie, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % p, out)
        v = float(m.group(1))
        return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99), "non_2xx": int(errors.group(1)) if errors else 0}


def measure(redis, size, lua_dir, live_pid, tmp):
    redis.call("FLUSHALL")
    test_sweep_scale.seed(redis, size, RUNNING, 0, live_pid, user_fmt="dev_" + USER)
    policy = os.path.join(tmp, "policy.lua")
    with open(policy, "w") as f:
        f.write("return { cleanup = { sweep_interval = 1, idle_limit = 7200, max_lifetime = %d } }\n"
                % test_sweep_scale.LIFETIME)
    conf = ('local c = dofile(%s)\n'
            'c.server.listen = { { host = "127.0.0.1", port = @PORT@ } }\n'
            'c.public_url = "http://localhost:@PORT@"\n'
            'c.policy = { file = %s }\n'
            'c.server.access_log = false\n'
            'return c\n') % (json.dumps(DEV_CONF), json.dumps(policy))
    env = {"DEVEXD_DATA": os.path.join(tmp, "data"), "REDIS_URL": redis.url(), "ENVIRONMENT": "development"}
    saved = harness.LUA_DIR
    harness.LUA_DIR = lua_dir
    try:
        with Devexd(app=None, threads=2, config_text=conf, env=env) as d:
            wait_sweeps(d, 2, 0)  # past the first run
            # commands between two sweep lines CYCLES runs apart
            mark = len(d.logs())
            wait_sweeps(d, 1, mark)
            before = commandstats(redis)
            mark = len(d.logs())
            runs = wait_sweeps(d, CYCLES, mark)[:CYCLES]
            after = commandstats(redis)
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            delta = {k: v for k, v in delta.items() if v > 0 and k != "info"}
            total = sum(delta.values())
            top = sorted(delta.items(), key=lambda kv: -kv[1])[:6]
            ms = [float(e.get("ms", 0)) for e in runs]
            # GET /api/repl for a user with 10 REPLs
            b = Browser(d)
            r = b.request("POST", "/auth/dev/login", body="user=" + (USER % 7), headers=FORM)
            assert r.status == 302, r.body
            r = b.request("GET", "/api/repl")
            assert r.status == 200 and len(r.json()) == 10, (r.status, r.body[:200])
            listing = wrk("http://127.0.0.1:%d/api/repl" % d.port, b.cookie_header())
            errors = sum(e.get("errors", 0) for e in runs) + sum(e.get("recovered", 0) for e in runs)
    finally:
        harness.LUA_DIR = saved
    return {
        "repls": size, "running": RUNNING, "lua": lua_dir, "cycles": len(runs),
        "cycle_ms_median": statistics.median(ms), "cycle_ms_max": max(ms),
        "examined": max(e.get("examined", 0) for e in runs), "sessions_read": max(e.get("sessions_read", 0) for e in runs),
        "redis_commands_per_cycle": round(total / len(runs), 1),
        "top_commands_per_cycle": {k: round(v / len(runs), 1) for k, v in top},
        "errors": errors, "list": listing,
    }


def before_tree(rev, tmp):
    """The lua/ tree of git revision rev in tmp, its sweep timed as today's."""
    archive = subprocess.run(["git", "-C", harness.SOURCE_DIR, "archive", rev, "lua"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
    path = os.path.join(tmp, "lua", "repl", "sweep.lua")
    with open(path) as f:
        src = f.read()
    a, b = "    local ok, report = xpcall(M.run, debug.traceback)\n", '    log.info("sweep", report)\n'
    assert src.count(a) == 1 and src.count(b) == 1, "the sweep of %s has no place for the timing" % rev
    src = src.replace(a, "    local t0 = timer.now()\n" + a)
    src = src.replace(b, "    report.ms = math.floor((timer.now() - t0) * 1e4 + 0.5) / 10\n" + b)
    with open(path, "w") as f:
        f.write(src)
    return os.path.join(tmp, "lua")


def main():
    os.makedirs(RESULTS_DIR, exist_ok=True)
    variants = [("indexes", harness.LUA_DIR)]
    lua_tmp = tempfile.TemporaryDirectory(prefix="devexd-bench-sweep-lua-")
    if BEFORE_REV:
        variants.append(("before", before_tree(BEFORE_REV, lua_tmp.name)))
    results = []
    runner = subprocess.Popen(["sleep", "3600"], start_new_session=True)  # every session's "runner"
    try:
        with RedisServer() as redis:
            # the order of the sizes alternates between rounds (a busy machine drifts)
            order = [(rnd, size) for rnd in range(ROUNDS) for size in (SIZES if rnd % 2 == 0 else SIZES[::-1])]
            for rnd, size in order:
                for name, lua_dir in variants:
                    with tempfile.TemporaryDirectory(prefix="devexd-bench-sweep-") as tmp:
                        res = measure(redis, size, lua_dir, runner.pid, tmp)
                    res["variant"], res["round"] = name, rnd
                    results.append(res)
                    li = res["list"]
                    print("%-8s %6d REPLs, %d running: cycle %.1f ms (max %.1f), %.1f Redis commands/cycle %s,"
                          " examined %d, sessions read %d, errors %d; GET /api/repl (10 REPLs) %.0f req/s p50 %.2f ms"
                          " p99 %.2f ms non-2xx %d" % (
                              name, size, RUNNING, res["cycle_ms_median"], res["cycle_ms_max"],
                              res["redis_commands_per_cycle"], json.dumps(res["top_commands_per_cycle"]),
                              res["examined"], res["sessions_read"], res["errors"], li["rps"], li["p50_ms"],
                              li["p99_ms"], li["non_2xx"]), flush=True)
        print("medians over %d rounds:" % ROUNDS)
        for name, _ in variants:
            for size in SIZES:
                rs = [x for x in results if x["variant"] == name and x["repls"] == size]
                print("%-8s %6d REPLs: cycle %.1f ms, %.1f Redis commands/cycle, GET /api/repl %.0f req/s p99 %.2f ms" % (
                    name, size, statistics.median(x["cycle_ms_median"] for x in rs),
                    statistics.median(x["redis_commands_per_cycle"] for x in rs),
                    statistics.median(x["list"]["rps"] for x in rs), statistics.median(x["list"]["p99_ms"] for x in rs)))
    finally:
        runner.kill()
        runner.wait()
        lua_tmp.cleanup()
    with open(os.path.join(RESULTS_DIR, "sweep.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
