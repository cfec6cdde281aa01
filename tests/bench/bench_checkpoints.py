#!/usr/bin/env python3
"""Checkpoint and restore of the runner agent (issue #16, performance): the
agent (`devexd runner`) uploading a whole workspace in one checkpoint (POST
/api/v1/checkpoint) and restoring it at start (until /ping answers 200),
through devexd's storage broker and presigned URLs, against `aws s3 sync`
doing the same transfer (up, then down into an empty directory) to the same
S3 server in the same run. Two workspaces: SMALL_FILES small files (1-4 KiB,
in 40 folders) and one BIG_MB MiB file. The S3 server is the tests' s3rver
behind the signature-checking front (tests/s3/server); no other S3
client: without the aws CLI only the agent's numbers are reported.

A benchmark, not a test: numbers are printed and written to
tests/bench/results/checkpoints.json, not judged. The agent's restore time
includes its process start (a few ms) since /ping is what a start waits for.

Usage: DEVEXD_BIN=build/devexd python3 tests/bench/bench_checkpoints.py
Knobs (environment): SMALL_FILES (2000), BIG_MB (200), ROUNDS (2, best kept).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from test_s3 import S3Server, ensure_s3_server  # noqa: E402
from test_checkpoints import Agent, OWNER, RID, TOKEN  # noqa: E402

SMALL_FILES = int(os.environ.get("SMALL_FILES", "2000"))
BIG_MB = int(os.environ.get("BIG_MB", "200"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))


def make_small(root):
    rnd = open("/dev/urandom", "rb")
    for i in range(SMALL_FILES):
        d = os.path.join(root, "pkg%02d" % (i % 40))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "f%05d.txt" % i), "wb") as f:
            f.write(rnd.read(1024 + (i * 37) % 3072))
    rnd.close()


def make_big(root):
    with open(os.path.join(root, "big.bin"), "wb") as f, open("/dev/urandom", "rb") as rnd:
        for _ in range(BIG_MB):
            f.write(rnd.read(1 << 20))


def total_bytes(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def digest(root):
    h = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                h[os.path.relpath(p, root)] = hashlib.md5(fh.read()).hexdigest()
    return h


class Bench:
    def __init__(self):
        ensure_s3_server()
        self.s3 = S3Server().start()
        self.redis = RedisServer().__enter__()
        conf = {"environment": "test", "public_url": "http://127.0.0.1:0",
                "redis": {"url": self.redis.url(), "timeout": 2}, "s3": self.s3.conf()}
        self.d = Devexd(app=None, threads=2, config=conf, max_body=1 << 20).__enter__()
        self.tmp = tempfile.mkdtemp(prefix="devexd-bench-ckpt-")
        cfg = os.path.join(self.tmp, "aws.cfg")
        with open(cfg, "w") as f:
            f.write("[default]\nregion = %s\ns3 =\n    addressing_style = path\n" % self.s3.region)
        # the aws CLI's own credentials: never in the agent's environment (Agent builds its own)
        self.aws_env = {"PATH": os.environ["PATH"], "HOME": self.tmp, "AWS_CONFIG_FILE": cfg,
                        "AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key}
        self.aws = shutil.which("aws")

    def reset(self):
        self.redis.call("FLUSHALL")
        self.redis.call("HSET", "devex:replMeta:" + RID, "id", RID, "user", OWNER, "name", RID,
                        "template", "python", "state", "running", "prefix", "repl/%s/%s/" % (OWNER, RID))
        self.redis.call("HSET", "devex:activeSession:" + RID, "started_at", str(int(time.time())),
                        "token_hash", hashlib.sha256(TOKEN.encode()).hexdigest(), "driver", "local")
        r = self.d.request("POST", "/api/runner/%s/sync" % RID, body=json.dumps({"paths": []}),
                           headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"},
                           timeout=600)
        assert r.status == 200, r.body

    def agent_round(self, src):
        """-> (checkpoint seconds, restore seconds), the restored tree checked."""
        self.reset()
        a = Agent(self.d, 0)
        shutil.rmtree(a.dir)
        shutil.copytree(src, a.dir)
        a.start()
        t0 = time.monotonic()
        s, rep = a.checkpoint()
        up = time.monotonic() - t0
        assert s == 200, rep
        a.cleanup()
        b = Agent(self.d, 0)
        t0 = time.monotonic()
        b.start()
        down = time.monotonic() - t0
        assert digest(b.dir) == digest(src), "restored tree differs"
        b.cleanup()
        return up, down

    def aws_round(self, src):
        prefix = "s3://%s/bench/aws/" % self.s3.bucket
        ep = ["--endpoint-url", self.s3.endpoint, "--only-show-errors"]
        subprocess.run([self.aws, "s3", "rm", "--recursive", prefix] + ep, env=self.aws_env, check=True,
                       capture_output=True, timeout=1800)
        t0 = time.monotonic()
        subprocess.run([self.aws, "s3", "sync", src, prefix] + ep, env=self.aws_env, check=True, timeout=1800)
        up = time.monotonic() - t0
        dst = tempfile.mkdtemp(prefix="aws-down-", dir=self.tmp)
        t0 = time.monotonic()
        subprocess.run([self.aws, "s3", "sync", prefix, dst] + ep, env=self.aws_env, check=True, timeout=1800)
        down = time.monotonic() - t0
        assert digest(dst) == digest(src), "aws download differs"
        shutil.rmtree(dst)
        return up, down

    def run_case(self, name, make):
        src = tempfile.mkdtemp(prefix=name + "-", dir=self.tmp)
        make(src)
        nbytes, nfiles = total_bytes(src), sum(len(fs) for _, _, fs in os.walk(src))
        best = {"agent_checkpoint_s": 1e9, "agent_restore_s": 1e9, "aws_up_s": 1e9, "aws_down_s": 1e9}
        for _ in range(ROUNDS):
            up, down = self.agent_round(src)
            best["agent_checkpoint_s"] = min(best["agent_checkpoint_s"], up)
            best["agent_restore_s"] = min(best["agent_restore_s"], down)
            if self.aws:
                up, down = self.aws_round(src)
                best["aws_up_s"] = min(best["aws_up_s"], up)
                best["aws_down_s"] = min(best["aws_down_s"], down)
        shutil.rmtree(src)
        out = {"files": nfiles, "bytes": nbytes}
        out.update({k: round(v, 3) for k, v in best.items() if v < 1e9})
        if self.aws:
            out["checkpoint_ratio_vs_aws"] = round(best["agent_checkpoint_s"] / best["aws_up_s"], 2)
            out["restore_ratio_vs_aws"] = round(best["agent_restore_s"] / best["aws_down_s"], 2)
        return out

    def close(self):
        harness.stop_class_servers(self, "d", "redis")
        self.s3.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    b = Bench()
    try:
        if not b.aws:
            print("aws CLI not found: agent numbers only")
        res = {"small": b.run_case("small", make_small), "big": b.run_case("big", make_big),
               "baseline": "aws s3 sync (%s)" % (subprocess.run([b.aws, "--version"], capture_output=True,
                                                                  text=True).stdout.strip() if b.aws else "absent"),
               "rounds": ROUNDS, "cpus": os.cpu_count()}
    finally:
        b.close()
    print(json.dumps(res, indent=2))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "checkpoints.json"), "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
