#!/usr/bin/env python3
"""Bookkeeping for tests/bench/bench_gateway.sh (Python 3 stdlib only).

  report.py sample OUT ROUND LOAD TARGET BEFORE AFTER
      OUT: wsbench's JSON line; BEFORE / AFTER: "key=value ..." snapshots the
      script took around the client's run (see the script). Prints OUT with
      round, load, target and CPU shares added, one JSON line.

  report.py summary RUNS_JSONL META_JSON RESULT_JSON TABLE_TXT
      Means over the rounds, gateway/direct ratios and the latency the gateway
      adds; prints the table (also written to TABLE_TXT) and writes
      RESULT_JSON. Exit status 1 when a client reported errors.
"""

import json
import statistics
import sys
import time


def snapshot(text):
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in text.split())}


def sample(out, rnd, load, target, before, after):
    v = json.loads(out)
    b, a = snapshot(before), snapshot(after)
    wall = a["wall"] - b["wall"]
    hz, ncpu = a["hz"], a["ncpu"]
    busy = a["machine_total"] - b["machine_total"]
    idle = a["machine_idle"] - b["machine_idle"]
    v.update(
        round=int(rnd), load=load, target=target,
        # CPU time over the client's whole run (warm-up included), % of one CPU
        runner_cpu_pct=round(100 * (a["runner_ticks"] - b["runner_ticks"]) / hz / wall, 1),
        devexd_cpu_pct=round(100 * (a["devexd_ticks"] - b["devexd_ticks"]) / hz / wall, 1),
        # time devexd's threads were runnable but waited for a CPU
        devexd_queue_pct=round(100 * (a["devexd_wait_ns"] - b["devexd_wait_ns"]) / 1e9 / wall, 1),
        client_cpu_pct=round(100 * v["client_cpu_s"] / v["duration_s"], 1),
        # every process on the machine
        machine_cpu_pct=round(100 * ncpu * (busy - idle) / busy, 1) if busy else 0.0,
    )
    print(json.dumps(v))


KEYS = ("rt_per_s", "mb_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "runner_cpu_pct",
        "devexd_cpu_pct", "devexd_queue_pct", "client_cpu_pct", "machine_cpu_pct")


def summary(runs_path, meta_path, result_path, table_path):
    runs = [json.loads(line) for line in open(runs_path) if line.strip()]
    meta = json.load(open(meta_path))
    loads = [name for name in meta["loads"] if any(x["load"] == name for x in runs)]

    def of(load, target):
        return [x for x in runs if x["load"] == load and x["target"] == target]

    res = {}
    for load in loads:
        res[load] = {"connections": meta["loads"][load]["connections"], "size": meta["loads"][load]["size"]}
        for t in ("direct", "gateway"):
            xs = of(load, t)
            res[load][t] = {k: round(statistics.mean(x[k] for x in xs), 3) for k in KEYS}
            res[load][t]["rounds_rt_per_s"] = [x["rt_per_s"] for x in xs]
            res[load][t]["rounds_p99_ms"] = [x["p99_ms"] for x in xs]
            res[load][t]["errors"] = sum(x["errors"] for x in xs)
        d, g = res[load]["direct"], res[load]["gateway"]
        res[load]["ratio"] = round(g["rt_per_s"] / d["rt_per_s"], 3) if d["rt_per_s"] else None
        res[load]["added_p50_ms"] = round(g["p50_ms"] - d["p50_ms"], 3)
        res[load]["added_p99_ms"] = round(g["p99_ms"] - d["p99_ms"], 3)

    ncpu = meta["cpus"]
    lines = [
        "",
        "devexd runner gateway vs the same runner reached directly; loopback, %d CPUs shared by everything" % ncpu,
        "devexd: %s (%s, git %s), %d worker threads; runner: tests/integration/runner_standin.py (Python, a thread per connection)"
        % (meta["devexd_version"], meta["devexd_bin"], meta["git"], meta["threads"]),
        "client: tests/bench/gateway/wsbench.c (C, 1 thread, epoll), closed loop (1 message in flight per connection),"
        " %gs warm-up + %gs per measurement x %d round(s) (mean)" % (meta["warmup_s"], meta["duration_s"], meta["rounds"]),
        "CPUs busy before the load (other processes; want ~0): %d%%" % meta["busy_before_pct"],
        "",
        "%-46s %10s %10s %9s" % ("", "direct", "gateway", "gw/direct"),
    ]
    for load in loads:
        x = res[load]
        d, g = x["direct"], x["gateway"]
        head = "%s (%d conns x %d B)" % (load, x["connections"], x["size"])
        if load == "bulk":
            lines.append("%-46s %10.1f %10.1f %9.3f" % (head + ": MB/s echoed", d["mb_per_s"], g["mb_per_s"], x["ratio"]))
        else:
            lines.append("%-46s %10.0f %10.0f %9.3f" % (head + ": round trips/s", d["rt_per_s"], g["rt_per_s"], x["ratio"]))
        lines.append("%-46s %10.3f %10.3f %+9.3f" % ("  p50 ms (gateway adds)", d["p50_ms"], g["p50_ms"], x["added_p50_ms"]))
        lines.append("%-46s %10.3f %10.3f %+9.3f" % ("  p99 ms (gateway adds)", d["p99_ms"], g["p99_ms"], x["added_p99_ms"]))
    lines += ["", "CPU, %% of one CPU: runner / devexd (+ devexd waiting for a CPU) / client / whole machine (of %d%%)" % (100 * ncpu)]
    for load in loads:
        for t in ("direct", "gateway"):
            x = res[load][t]
            lines.append("  %-5s %-8s %5.0f / %5.0f (+%3.0f) / %5.0f / %5.0f" % (
                load, t, x["runner_cpu_pct"], x["devexd_cpu_pct"], x["devexd_queue_pct"], x["client_cpu_pct"], x["machine_cpu_pct"]))
    if "bulk" in res:
        lines.append("bulk throughput gateway/direct goal >= 0.8: %s" % ("met" if (res["bulk"]["ratio"] or 0) >= 0.8 else "NOT MET"))
    if meta["rounds"] > 1:
        for load in loads:
            lines.append("per round rt/s, %s: direct %s gateway %s" % (
                load, res[load]["direct"]["rounds_rt_per_s"], res[load]["gateway"]["rounds_rt_per_s"]))
    errors = sum(x["errors"] for x in runs)
    if errors:
        lines.append("WARNING: %d client errors (see gateway.log)" % errors)
    text = "\n".join(lines) + "\n"
    with open(table_path, "w") as f:
        f.write(text)
    sys.stdout.write(text)
    doc = {"benchmark": "gateway", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    doc.update(meta)
    doc["results"] = res
    doc["runs"] = runs
    with open(result_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return 1 if errors else 0


def main():
    if len(sys.argv) == 8 and sys.argv[1] == "sample":
        sample(*sys.argv[2:])
        return 0
    if len(sys.argv) == 6 and sys.argv[1] == "summary":
        return summary(*sys.argv[2:])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
