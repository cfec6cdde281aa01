"""Integration tests of the storage API (lua/storage: drivers "s3" and "fs")
and devex.s3 (src/s3.c).

The s3 driver runs against a real S3 server on loopback: s3rver (npm, pinned
in tests/s3/server/package-lock.json) behind tests/s3/server/server.js, a
front that verifies every request's SigV4 signature with the AWS SDK's own
signer (@smithy/signature-v4) and Content-MD5, as S3 does, and can inject
errors for the retry tests. The same suite (StorageSuite) runs against the
fs driver (a local directory as the bucket).

Run: python3 tests/integration/test_s3.py   (DEVEXD_BIN picks the binary;
runs `npm ci` in tests/s3/server when its node_modules is missing)
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

S3_SERVER_DIR = os.path.join(harness.SOURCE_DIR, "tests", "s3", "server")
NODE = shutil.which("node")


def ensure_s3_server():
    """Installs the test S3 server (npm ci) when missing or stale; fails, never skips."""
    harness.npm_ci(S3_SERVER_DIR, "s3rver")


class S3Server:
    """s3rver behind the signature-checking front, on a free loopback port."""

    def __init__(self, access_key="AKIDEXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                 bucket="devex-test", region="us-east-1"):
        self.access_key, self.secret_key, self.bucket, self.region = access_key, secret_key, bucket, region
        self.tmp = tempfile.mkdtemp(prefix="devexd-s3-")
        self.proc = None
        self.port = None

    def start(self):
        """Starts the server on a free port; after stop(), again on the same
        port with the same data directory (the bucket's objects survive)."""
        again = self.port is not None
        self.log = open(os.path.join(self.tmp, "server.log"), "ab" if again else "wb")
        self.proc = subprocess.Popen(
            [NODE, "--openssl-legacy-provider", os.path.join(S3_SERVER_DIR, "server.js"),
             "--port", str(self.port if again else 0), "--dir", os.path.join(self.tmp, "data"),
             "--access-key", self.access_key, "--secret-key", self.secret_key, "--bucket", self.bucket,
             "--region", self.region],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log, preexec_fn=harness._set_pdeathsig)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            if again:
                raise AssertionError("S3 test server did not start again on port %d: %r\n%s"
                                     % (self.port, line, self.raw_log()[-3000:]))
            self.close()
            raise AssertionError("S3 test server did not start: %r" % line)
        self.port = int(line.split()[1])
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    def stop(self):
        """Stops the process only (the data directory is kept)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def close(self):
        self.stop()
        if os.environ.get("DEVEXD_KEEP_TMP"):
            sys.stderr.write("S3 server files kept in %s\n" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def raw_log(self):
        try:
            with open(os.path.join(self.tmp, "server.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def conf(self, **over):
        c = {"endpoint": self.endpoint, "region": self.region, "bucket": self.bucket,
             "access_key": self.access_key, "secret_key": self.secret_key, "backoff": 0.01}
        c.update(over)
        return c

    def _front(self, path, method="GET"):
        req = urllib.request.Request(self.endpoint + path, method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read()
            return json.loads(body) if body else None

    def stats(self):
        return self._front("/__front/stats")

    def fail(self, count, status=503, code="SlowDown"):
        self._front("/__front/fail?count=%d&status=%d&code=%s" % (count, status, code), method="POST")


def md5(s):
    return hashlib.md5(s.encode()).hexdigest()


SPECIAL_KEYS = [
    "plain.txt",
    "with space.txt",
    "unicode/été 日本語 ✓.txt",
    "plus+sign.txt",
    "equals=sign.txt",
    "tilde~.txt",
    "percent%20literal%.txt",
    "amp&and?q#hash.txt",
    "quotes'\"<tag>.txt",
    "parens (1) [2] {3} $!@*,;:.txt",
    "dir with space/sub+dir/file=1.txt",
    ".hidden/.dotfile",
]


class StorageSuite:
    """The tests both drivers must pass; subclasses set cls.d (Devexd)."""

    d = None

    def op(self, op, *args, conf=None):
        body = {"op": op, "args": list(args)}
        if conf is not None:
            body["conf"] = conf
        r = self.d.request("POST", "/op", body=json.dumps(body), headers={"Content-Type": "application/json"},
                           timeout=120)
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    def ok(self, op, *args, **kw):
        r = self.op(op, *args, **kw)
        self.assertTrue(r["ok"], "%s%r failed: %r" % (op, args, r))
        return r

    def post(self, path, body):
        r = self.d.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"},
                           timeout=300)
        self.assertEqual(r.status, 200, r.body)
        return r.json()

    def keys(self, prefix, **opts):
        r = self.ok("list", prefix, opts) if opts else self.ok("list", prefix)
        return [o["key"] for o in r["objects"]]

    def test_head_bucket(self):
        self.assertTrue(self.ok("head_bucket")["result"])

    def test_put_get_head_delete(self):
        r = self.ok("put", "crud/hello.txt", "hello world", {"content_type": "text/plain"})
        self.assertEqual(r["result"]["etag"], md5("hello world"))
        g = self.ok("get", "crud/hello.txt")
        self.assertEqual(g["body"], "hello world")
        self.assertEqual(g["info"]["etag"], md5("hello world"))
        h = self.ok("head", "crud/hello.txt")
        self.assertEqual(h["result"]["size"], 11)
        self.assertEqual(h["result"]["etag"], md5("hello world"))
        self.ok("put", "crud/hello.txt", "v2")
        self.assertEqual(self.ok("get", "crud/hello.txt")["body"], "v2")
        self.ok("put", "crud/empty", "")
        self.assertEqual(self.ok("get", "crud/empty")["body"], "")
        self.ok("delete", "crud/hello.txt")
        g = self.op("get", "crud/hello.txt")
        self.assertFalse(g["ok"])
        self.assertEqual(g["err"]["code"], "NoSuchKey")
        self.assertEqual(g["err"]["status"], 404)
        h = self.op("head", "crud/hello.txt")
        self.assertEqual((h["err"]["code"], h["err"]["status"]), ("NoSuchKey", 404))
        self.ok("delete", "crud/hello.txt")  # deleting a missing key succeeds, as on S3
        self.ok("delete", "crud/empty")
        self.assertEqual(self.keys("crud/"), [])

    def test_put_file(self):
        path = os.path.join(self.tmpdir, "upload.bin")
        with open(path, "w") as f:
            f.write("from a file\n")
        self.ok("put_file", "file/upload.bin", path)
        self.assertEqual(self.ok("get", "file/upload.bin")["body"], "from a file\n")
        # streamed in pieces: 3 MB crosses several, byte-identical (etag = MD5)
        big = os.urandom(3 * 1024 * 1024 + 17)
        with open(path, "wb") as f:
            f.write(big)
        r = self.ok("put_file", "file/upload.bin", path, {"max_bytes": len(big)})
        self.assertEqual(r["result"]["etag"], hashlib.md5(big).hexdigest())
        self.assertEqual(self.ok("head", "file/upload.bin")["result"]["size"], len(big))
        # max_bytes: a larger file is refused and the stored copy stays
        r = self.op("put_file", "file/upload.bin", path, {"max_bytes": len(big) - 1})
        self.assertFalse(r["ok"])
        self.assertEqual(r["err"]["code"], "TooLarge")
        self.assertEqual(self.ok("head", "file/upload.bin")["result"]["size"], len(big))
        self.ok("delete", "file/upload.bin")

    def test_special_keys(self):
        keys = ["special/" + k for k in SPECIAL_KEYS]
        for k in keys:
            self.ok("put", k, "body of " + k)
        self.assertEqual(self.keys("special/"), sorted(keys, key=lambda s: s.encode()))
        for k in keys:
            self.assertEqual(self.ok("get", k)["body"], "body of " + k)
            self.assertEqual(self.ok("head", k)["result"]["etag"], md5("body of " + k))
        r = self.ok("copy_prefix", "special/", "special-copy/", {"concurrency": 4})
        self.assertEqual(r["result"]["copied"], len(keys))
        self.assertEqual(r["result"]["failures"], [])
        copies = ["special-copy/" + k for k in SPECIAL_KEYS]
        self.assertEqual(self.keys("special-copy/"), sorted(copies, key=lambda s: s.encode()))
        for k in copies:
            self.assertEqual(self.ok("get", k)["body"], "body of special/" + k[len("special-copy/"):])
        r = self.ok("delete_many", keys + copies)
        self.assertEqual(r["result"]["deleted"], 2 * len(keys))
        self.assertEqual(r["result"]["failures"], [])
        self.assertEqual(self.keys("special/"), [])
        self.assertEqual(self.keys("special-copy/"), [])

    def test_list_delimiter(self):
        for k in ["delim/a.txt", "delim/b/1", "delim/b/2", "delim/c d/3", "delimx/no"]:
            self.ok("put", k, "x")
        r = self.ok("list", "delim/", {"delimiter": "/"})
        self.assertEqual([o["key"] for o in r["objects"]], ["delim/a.txt"])
        self.assertEqual(r["prefixes"], ["delim/b/", "delim/c d/"])
        self.assertEqual(self.keys("delim"), ["delim/a.txt", "delim/b/1", "delim/b/2", "delim/c d/3", "delimx/no"])
        self.assertEqual(self.ok("delete_prefix", "delim")["result"]["deleted"], 5)

    def test_pagination_2500(self):
        r = self.post("/bulk_put", {"prefix": "big/obj-", "n": 2500, "concurrency": 32})
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["put"], 2500)
        l = self.ok("list", "big/")
        keys = [o["key"] for o in l["objects"]]
        self.assertEqual(keys, ["big/obj-%05d" % i for i in range(1, 2501)])
        d = self.ok("delete_prefix", "big/")
        self.assertEqual(d["result"]["deleted"], 2500)
        self.assertEqual(d["result"]["failures"], [])
        self.assertEqual(self.keys("big/"), [])

    def test_copy_and_delete_prefix(self):
        r = self.post("/bulk_put", {"prefix": "templates/t1/f", "n": 40, "concurrency": 8})
        self.assertTrue(r["ok"], r)
        c = self.ok("copy_prefix", "templates/t1/", "repl/alice/r1/", {"concurrency": 16})
        self.assertEqual(c["result"], {"copied": 40, "failures": []})
        src = self.ok("list", "templates/t1/")["objects"]
        dst = self.ok("list", "repl/alice/r1/")["objects"]
        self.assertEqual([o["key"][len("templates/t1/"):] for o in src], [o["key"][len("repl/alice/r1/"):] for o in dst])
        self.assertEqual([o["etag"] for o in src], [o["etag"] for o in dst])
        d = self.ok("delete_prefix", "repl/alice/r1/")
        self.assertEqual(d["result"], {"deleted": 40, "failures": []})
        self.assertEqual(self.keys("repl/alice/r1/"), [])
        self.assertEqual(len(self.keys("templates/t1/")), 40)
        self.ok("delete_prefix", "templates/t1/")

    def test_copy_prefix_reports_every_failure(self):
        # destination keys over 1024 bytes fail, each one reported
        self.ok("put", "cpf/short", "a")
        self.ok("put", "cpf/" + "x" * 225, "b")
        self.ok("put", "cpf/" + "y" * 225, "c")
        # 808 bytes, every segment a valid file name (s3rver adds a 15-byte suffix)
        dst = ("d" * 100 + "/") * 8
        r = self.ok("copy_prefix", "cpf/", dst)
        self.assertEqual(r["result"]["copied"], 1)
        failed = sorted(f["key"] for f in r["result"]["failures"])
        self.assertEqual(failed, ["cpf/" + "x" * 225, "cpf/" + "y" * 225])
        for f in r["result"]["failures"]:
            self.assertEqual(f["error"]["code"], "invalid_key")
        self.ok("delete_prefix", dst)
        self.ok("delete_prefix", "cpf/")

    def test_copy_missing(self):
        r = self.op("copy", "nope/missing", "nope/dst")
        self.assertFalse(r["ok"])
        self.assertEqual(r["err"]["code"], "NoSuchKey")
        self.assertEqual(r["err"]["status"], 404)

    def test_invalid_keys(self):
        bad = ["", "/abs", "a/../b", "a/./b", "a//b", "..", "trailing/", "x" * 1025, "nul\x00byte", "ctl\x01"]
        r = self.post("/check_key", {"keys": bad + ["a b+c=d~e%f/été"]})
        self.assertEqual(r["results"][-1], "ok")
        for k, res in zip(bad, r["results"]):
            self.assertNotEqual(res, "ok", k)
        g = self.op("put", "a/../escape", "x")
        self.assertEqual(g["err"]["code"], "invalid_key")
        self.assertEqual(self.op("delete_prefix", "")["err"]["code"], "invalid_key")

    def test_sync_twice(self):
        tdir = os.path.join(self.tmpdir, "tpl-src")
        shutil.rmtree(tdir, ignore_errors=True)
        shutil.copytree(os.path.join(harness.SOURCE_DIR, "templates"), tdir)
        with open(os.path.join(tdir, "python", "extra file.txt"), "w") as f:
            f.write("temporary\n")
        files = []
        for root, _, names in os.walk(tdir):
            for n in names:
                files.append("templates/" + os.path.relpath(os.path.join(root, n), tdir))
        files.sort()
        dry = self.post("/sync", {"dir": tdir, "dry_run": True})
        self.assertTrue(dry["ok"], dry)
        self.assertEqual(sorted(dry["uploaded"]), files)
        self.assertEqual(self.keys("templates/"), [])  # dry run wrote nothing
        first = self.post("/sync", {"dir": tdir})
        self.assertTrue(first["ok"], first)
        self.assertEqual(sorted(first["uploaded"]), files)
        self.assertEqual((first["deleted"], first["failures"]), ([], []))
        second = self.post("/sync", {"dir": tdir})
        self.assertEqual(second["uploaded"], [])
        self.assertEqual(sorted(second["skipped"]), files)
        # a changed file and a deleted file
        with open(os.path.join(tdir, "node", "index.js"), "a") as f:
            f.write("// changed\n")
        os.unlink(os.path.join(tdir, "python", "extra file.txt"))
        third = self.post("/sync", {"dir": tdir})
        self.assertEqual(third["uploaded"], ["templates/node/index.js"])
        self.assertEqual(third["deleted"], ["templates/python/extra file.txt"])
        self.assertEqual(self.keys("templates/"), [f for f in files if not f.endswith("extra file.txt")])
        self.ok("delete_prefix", "templates/")

    def test_sync_cli(self):
        tdir = os.path.join(self.tmpdir, "tpl-cli")
        shutil.rmtree(tdir, ignore_errors=True)
        shutil.copytree(os.path.join(harness.SOURCE_DIR, "templates"), tdir)
        self.assertEqual(self.post("/sync_cli", {"args": [tdir, "--dry-run"]})["code"], 0)
        self.assertEqual(self.keys("templates/"), [])
        self.assertEqual(self.post("/sync_cli", {"args": [tdir]})["code"], 0)
        self.assertEqual(len(self.keys("templates/")), 5)
        self.assertEqual(self.post("/sync_cli", {"args": ["--bogus"]})["code"], 2)
        self.assertEqual(self.post("/sync_cli", {"args": [os.path.join(self.tmpdir, "missing")]})["code"], 1)
        self.ok("delete_prefix", "templates/")

    def test_xml_hardening(self):
        laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
                  '<ListBucketResult><Contents><Key>&lol2;</Key></Contents></ListBucketResult>')
        r = self.post("/xml", {"fn": "parse_list", "xml": laughs})
        self.assertFalse(r["ok"])
        self.assertEqual(r["err"]["code"], "bad_response")
        ext = '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]><Error><Code>&x;</Code></Error>'
        self.assertFalse(self.post("/xml", {"fn": "parse_error", "xml": ext})["ok"])
        ns = ('<?xml version="1.0"?><s3:Error xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/">'
              '<s3:Code>NoSuchKey</s3:Code><s3:Message>a &amp; b</s3:Message></s3:Error>')
        r = self.post("/xml", {"fn": "parse_error", "xml": ns})
        self.assertEqual(r["result"], {"code": "NoSuchKey", "message": "a & b"})
        enc = ('<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><EncodingType>url</EncodingType>'
               '<IsTruncated>true</IsTruncated><NextContinuationToken>t+1</NextContinuationToken>'
               '<Contents><Key>a+b%2Bc%20%C3%A9</Key><Size>3</Size><ETag>"x"</ETag></Contents>'
               '<CommonPrefixes><Prefix>p%2F+q/</Prefix></CommonPrefixes></ListBucketResult>')
        r = self.post("/xml", {"fn": "parse_list", "xml": enc})["result"]
        self.assertEqual(r["contents"][0]["key"], "a b+c é")
        self.assertEqual(r["common_prefixes"], ["p/ q/"])
        self.assertEqual((r["is_truncated"], r["next_token"]), (True, "t+1"))


class S3DriverTest(StorageSuite, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ensure_s3_server()
        cls.tmpdir = tempfile.mkdtemp(prefix="devexd-s3test-")
        cls.server = S3Server().start()
        cls.d = harness.Devexd(app="s3app", config={"s3": cls.server.conf(), "storage": {"driver": "s3"}},
                               max_body=4 << 20)
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.__exit__(None, None, None)
        finally:
            cls.server.close()
            shutil.rmtree(cls.tmpdir, ignore_errors=True)

    def test_signature_is_checked(self):
        before = self.server.stats()
        self.ok("put", "sig/ok.txt", "x")
        wrong = {"s3": self.server.conf(secret_key="not-the-secret"), "storage": {"driver": "s3"}}
        r = self.op("get", "sig/ok.txt", conf=wrong)
        self.assertFalse(r["ok"])
        self.assertEqual(r["err"]["code"], "SignatureDoesNotMatch")
        self.assertEqual(r["err"]["status"], 403)
        self.assertIn("signature", r["err"]["message"])
        self.assertTrue(r["err"].get("request_id"))
        r = self.op("list", "sig/", conf=wrong)
        self.assertEqual(r["err"]["code"], "SignatureDoesNotMatch")
        after = self.server.stats()
        self.assertEqual(after["rejected"] - before["rejected"], 2)  # 403 is not retried
        badkey = {"s3": self.server.conf(access_key="AKIDUNKNOWN"), "storage": {"driver": "s3"}}
        self.assertEqual(self.op("list", "sig/", conf=badkey)["err"]["code"], "InvalidAccessKeyId")
        # HEAD answers carry no body: the code comes from the status
        self.assertEqual(self.op("head_bucket", conf=badkey)["err"]["code"], "AccessDenied")
        self.ok("delete", "sig/ok.txt")

    def test_session_token_is_signed(self):
        conf = {"s3": self.server.conf(session_token="FQoGZXIvYXdzE//token+="), "storage": {"driver": "s3"}}
        self.assertTrue(self.op("head_bucket", conf=conf)["ok"])

    def test_server_down_is_unavailable_quickly(self):
        # a bound socket that does not listen: connections to it are refused
        hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hold.bind(("127.0.0.1", 0))
        self.addCleanup(hold.close)
        port = hold.getsockname()[1]
        conf = {"s3": self.server.conf(endpoint="http://127.0.0.1:%d" % port, backoff=0.05), "storage": {"driver": "s3"}}
        t0 = time.monotonic()
        r = self.op("get", "any", conf=conf)
        self.assertLess(time.monotonic() - t0, 3)
        self.assertFalse(r["ok"])
        self.assertEqual(r["err"]["code"], "unavailable")
        self.assertEqual(r["err"]["cause"], "connect", r)

    def test_retries_5xx_and_slowdown(self):
        self.ok("put", "retry/a", "1")
        before = self.server.stats()
        self.server.fail(2, 503, "SlowDown")
        self.assertEqual(self.ok("get", "retry/a")["body"], "1")
        self.server.fail(1, 500, "InternalError")
        self.ok("put", "retry/b", "2")
        self.assertEqual(self.server.stats()["injected"] - before["injected"], 3)
        # every attempt fails: the S3 error comes back after max_attempts (4)
        self.server.fail(10, 503, "SlowDown")
        r = self.op("get", "retry/a")
        self.server.fail(0)
        self.assertEqual((r["err"]["code"], r["err"]["status"]), ("SlowDown", 503))
        self.assertEqual(self.server.stats()["injected"] - before["injected"], 3 + 4)

    def test_4xx_is_not_retried(self):
        before = self.server.stats()
        self.server.fail(1, 403, "AccessDenied")
        r = self.op("get", "retry/none")
        self.assertEqual((r["err"]["code"], r["err"]["status"]), ("AccessDenied", 403))
        self.assertEqual(self.server.stats()["injected"] - before["injected"], 1)
        self.assertEqual(self.server.stats()["requests"] - before["requests"], 1)

    def test_delete_many_batches(self):
        # 1,200 keys: two DeleteObjects requests (1000 + 200), Content-MD5 checked by the front
        r = self.post("/bulk_put", {"prefix": "dm/k", "n": 1200, "concurrency": 32})
        self.assertTrue(r["ok"], r)
        before = self.server.stats()
        keys = ["dm/k%05d" % i for i in range(1, 1201)]
        mark = self.d.mark()
        d = self.ok("delete_many", keys)
        self.assertEqual(d["result"], {"deleted": 1200, "failures": []})
        after = self.server.stats()
        # two batches, plus any retry (s3rver answers DeleteObjects with a 500
        # InternalError now and then; each retry is logged)
        retries = [e for e in self.d.logs()[mark:] if e.get("msg") == "s3 request retried"]
        self.assertEqual(after["forwarded"] - before["forwarded"], 2 + len(retries), (before, after))
        self.assertEqual(self.keys("dm/"), [])


class FsDriverTest(StorageSuite, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmpdir = tempfile.mkdtemp(prefix="devexd-fstest-")
        cls.store_dir = os.path.join(cls.tmpdir, "bucket")
        cls.d = harness.Devexd(app="s3app", config={"storage": {"driver": "fs", "dir": cls.store_dir}},
                               max_body=4 << 20)
        cls.d.__enter__()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.__exit__(None, None, None)
        finally:
            shutil.rmtree(cls.tmpdir, ignore_errors=True)

    def test_fs_layout_is_safe(self):
        self.ok("put", "lay/.dot/%25 x", "1")
        # a leading '.' and '%' are encoded: nothing escapes or hides in the directory
        self.assertTrue(os.path.exists(os.path.join(self.store_dir, "lay", "%2Edot", "%2525 x")))
        self.assertEqual(self.keys("lay/"), ["lay/.dot/%25 x"])
        self.ok("delete", "lay/.dot/%25 x")
        self.assertFalse(os.path.exists(os.path.join(self.store_dir, "lay")))  # empty dirs removed


if __name__ == "__main__":
    harness.main()
