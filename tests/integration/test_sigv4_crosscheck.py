"""SigV4 cross-check: devexd's C signer (src/s3_sigv4.c, driven through
`test_sigv4 --sign`) against the AWS SDK for JavaScript's own signer
(@smithy/signature-v4, driven by tests/s3/signer/sign.js).

For ~50 generated requests (S3 object keys with spaces, UTF-8, '+', '=', '~',
'/', '%', dot segments and double slashes; list/multipart/versioning queries;
session tokens; signed and unsigned payloads; a few non-S3 requests that use
double encoding and path normalization) with the same credentials and fixed
time, the Authorization header and the URL path must be byte for byte the
same.

Needs node and npm; runs `npm ci` in tests/s3/signer when its node_modules is
missing (the npm registry must then be reachable). The C side is the
test_sigv4 unit-test binary: $DEVEXD_SIGV4_BIN, else $DEVEXD_BUILD_DIR/test_sigv4,
else build/ or build-asan/ under the source tree.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
SOURCE_DIR = os.environ.get("DEVEXD_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
SIGNER_DIR = os.path.join(SOURCE_DIR, "tests", "s3", "signer")

# flags of s3_sigv4.h
NO_CONTENT_SHA256, DOUBLE_ENCODE_PATH, NORMALIZE_PATH = 1, 2, 4
GENERIC = NO_CONTENT_SHA256 | DOUBLE_ENCODE_PATH | NORMALIZE_PATH

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def find_c_signer():
    cands = []
    if os.environ.get("DEVEXD_SIGV4_BIN"):
        cands.append(os.environ["DEVEXD_SIGV4_BIN"])
    if os.environ.get("DEVEXD_BUILD_DIR"):
        cands.append(os.path.join(os.environ["DEVEXD_BUILD_DIR"], "test_sigv4"))
    for d in ("build", "build-asan"):
        cands.append(os.path.join(SOURCE_DIR, d, "test_sigv4"))
    for c in cands:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise AssertionError("test_sigv4 not found (looked at %s): build the unit tests first" % ", ".join(cands))


def ensure_node_modules():
    harness.npm_ci(SIGNER_DIR, "@smithy/signature-v4")


def split_query(q):
    """The raw-query rule of s3_sigv4.h: split on '&' (empty pieces dropped),
    then at the first '=' (no '=': empty value)."""
    pairs = []
    for piece in (q or "").split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append([name, value])
    return pairs


# ---- the requests -----------------------------------------------------------

KEYS = [
    "photos/2024/été à la plage.jpg",
    "日本語/ファイル名 (1).txt",
    "a+b=c&d?e#f.txt",
    "tilde~and-dash_under.score",
    "space at end ",
    " leading space",
    "percent%20literal%2F.txt",
    "dir//double//slash",
    "./dot/../segments/.",
    "quote'paren(star)*!.txt",
    "emoji 😀.png",
    "semi;colon:comma,at@dollar$.txt",
    "brackets[]{}|\\^`\".txt",
    "ümlaut/Ärger/ß.txt",
    "/".join(["deep"] * 12) + "/key",
    "equals==signs==.txt",
    "plus++plus.txt",
    "tab\tin key",
    "trailing/slash/",
    "",
    "~/.config/x",
    "100% done.txt",
]

QUERIES = [
    None,
    "list-type=2&prefix=a b&continuation-token=x+y/z=",
    "uploads",
    "partNumber=3&uploadId=VXBsb2FkIElEIGZvciA2aWWpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA",
    "versionId=3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo",
    "prefix=日本/&delimiter=/&max-keys=1000&encoding-type=url",
    "acl",
    "tagging&versionId=null",
    "delete",
    "response-content-disposition=attachment; filename=\"é.txt\"&response-content-type=text/plain",
    "x-id=GetObject",
    "a=2&a=1&A=0&a-b=x&b=",
    "start-after=key with space&fetch-owner=true&list-type=2",
    "prefix=~tilde&marker=a+b",
]

CREDS = [
    ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None),
    ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None),
    ("ASIAEXAMPLESESSION01", "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
     "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+/token/with+plus==="),
    ("minioadmin", "minio+admin/secret=", "short-token"),
]

REGIONS = ["us-east-1", "eu-west-3", "ap-northeast-1", "auto"]

TIMES = [
    1440938160,  # 2015-08-30T12:36:00Z
    1369353600,  # 2013-05-24T00:00:00Z
    951868799,   # 2000-02-29T23:59:59Z
    1767225599,  # 2025-12-31T23:59:59Z
    1893456000,  # 2030-01-01T00:00:00Z
]


def generate():
    rnd = random.Random(20150830)
    reqs = []
    n = 0

    def add(req):
        nonlocal n
        n += 1
        req["id"] = n
        reqs.append(req)

    # S3: every key, with a query, creds, time, method and payload mode each
    for i, key in enumerate(KEYS * 2):
        ak, sk, tok = CREDS[i % len(CREDS)]
        region = REGIONS[i % len(REGIONS)]
        bucket = "bucket-%d" % i
        virtual = i % 3 != 0
        host = ("%s.s3.%s.amazonaws.com" % (bucket, region)) if virtual else "127.0.0.1:9000"
        path = "/" + key if virtual else "/%s/%s" % (bucket, key)
        method = ["GET", "PUT", "HEAD", "DELETE", "POST"][i % 5]
        query = QUERIES[rnd.randrange(len(QUERIES))]
        headers = [["Host", host]]
        if i % 4 == 1:
            headers.append(["Range", "bytes=0-%d" % (i * 10 + 9)])
        if i % 5 == 2:
            headers += [["X-Amz-Meta-Title", "  Les  vacances   d'été  "], ["x-amz-meta-tags", "a,b\tc"]]
        if i % 6 == 3:
            headers += [["Content-Type", "text/plain; charset=utf-8"], ["x-amz-storage-class", "STANDARD_IA"],
                        ["Content-MD5", "1B2M2Y8AsgTpgAQqh7Y7Gg=="]]
        if i % 7 == 4:
            headers += [["x-amz-copy-source", "/src-bucket/" + key], ["If-None-Match", "*"]]
        rnd.shuffle(headers)
        body = None
        c_payload = None
        js_payload = None
        mode = i % 4
        if mode == 0:
            c_payload = js_payload = "UNSIGNED-PAYLOAD"
        elif mode == 1:
            body = "body of %s ✓" % key
            c_payload = hashlib.sha256(body.encode()).hexdigest()  # C gets the hash, the SDK hashes the body
        elif mode == 2:
            pass  # empty body: both default to the hash of ""
        else:
            c_payload = js_payload = EMPTY_SHA256
        add({
            "mode": "s3", "method": method, "host": host, "path": path, "query_raw": query,
            "query": split_query(query), "headers": headers, "c_payload": c_payload,
            "payload_sha256": js_payload, "body": body, "access_key": ak, "secret_key": sk,
            "session_token": tok, "region": region, "service": "s3", "time": TIMES[i % len(TIMES)],
            "flags": 0,
        })

    # S3, the payload hash given as an x-amz-content-sha256 header to both
    for i, payload in enumerate(["STREAMING-UNSIGNED-PAYLOAD-TRAILER", "UNSIGNED-PAYLOAD",
                                 hashlib.sha256(b"x").hexdigest()]):
        add({
            "mode": "s3", "method": "PUT", "host": "b.s3.us-east-1.amazonaws.com",
            "path": "/k e y/%d+%d=é" % (i, i), "query_raw": None, "query": [],
            "headers": [["host", "b.s3.us-east-1.amazonaws.com"], ["X-Amz-Content-SHA256", payload]],
            "c_payload": None, "payload_sha256": None, "body": None,
            "access_key": "AKIDEXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "session_token": None, "region": "us-east-1", "service": "s3", "time": 1440938160, "flags": 0,
        })

    # S3, query names and values with '&' and '=' go through params
    for i, params in enumerate([[["prefix", "a&b=c"], ["delimiter", "&"]],
                                [["tag", "k=v&k2=v2"], ["tag", "=&="], ["x", ""]]]):
        add({
            "mode": "s3", "method": "GET", "host": "b.s3.eu-west-3.amazonaws.com", "path": "/",
            "query_raw": None, "params": params, "query": params,
            "headers": [["Host", "b.s3.eu-west-3.amazonaws.com"]], "c_payload": "UNSIGNED-PAYLOAD",
            "payload_sha256": "UNSIGNED-PAYLOAD", "body": None,
            "access_key": "AKIDEXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "session_token": None, "region": "eu-west-3", "service": "s3", "time": 1767225599 + i, "flags": 0,
        })

    # other services: double encoding, normalized paths, no x-amz-content-sha256
    for i, path in enumerate(["/", "/a b/c", "/./x/../y//z/", "/ünïcode/日本/", "/p%q/r+s=t", "/.."]):
        body = "Action=ListUsers&Version=2010-05-08" if i % 2 else None
        add({
            "mode": "generic", "method": "POST" if body else "GET", "host": "api.example.com", "path": path,
            "query_raw": QUERIES[(i * 5) % len(QUERIES)], "query": split_query(QUERIES[(i * 5) % len(QUERIES)]),
            "headers": [["Host", "api.example.com"], ["Content-Type", "application/x-www-form-urlencoded"]],
            "c_payload": hashlib.sha256(body.encode()).hexdigest() if body else None,
            "payload_sha256": None, "body": body,
            "access_key": "AKIDEXAMPLE", "secret_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "session_token": CREDS[2][2] if i == 3 else None, "region": "us-west-2",
            "service": ["execute-api", "iam", "sqs"][i % 3], "time": TIMES[i % len(TIMES)], "flags": GENERIC,
        })
    return reqs


# ---- the two signers -----------------------------------------------------------


def hx(s):
    return s.encode("utf-8").hex()


def sign_c(binary, reqs):
    lines = []
    for r in reqs:
        lines.append("begin")
        lines.append("method " + hx(r["method"]))
        lines.append("path " + hx(r["path"]))
        if r.get("query_raw") is not None:
            lines.append("query " + hx(r["query_raw"]))
        for name, value in r.get("params", []):
            lines.append("param %s %s" % (hx(name), hx(value)))
        for name, value in r["headers"]:
            lines.append("header %s %s" % (hx(name), hx(value)))
        if r["c_payload"] is not None:
            lines.append("payload " + hx(r["c_payload"]))
        lines.append("access " + hx(r["access_key"]))
        lines.append("secret " + hx(r["secret_key"]))
        if r["session_token"]:
            lines.append("token " + hx(r["session_token"]))
        lines.append("region " + hx(r["region"]))
        lines.append("service " + hx(r["service"]))
        lines.append("flags %d" % r["flags"])
        lines.append("time %d" % r["time"])
        lines.append("end")
    p = subprocess.run([binary, "--sign"], input="\n".join(lines) + "\n", capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        raise AssertionError("test_sigv4 --sign failed (%d):\n%s" % (p.returncode, p.stderr))
    out = []
    for line in p.stdout.splitlines():
        f = line.split("\t")
        if f[0] == "ok":
            out.append({"authorization": f[1], "path": f[2], "query": f[3],
                        "canonical": bytes.fromhex(f[4]).decode("utf-8", "replace")})
        else:
            out.append({"error": "\t".join(f[1:])})
    return out, p.stderr


def sign_js(reqs):
    keep = ("id", "mode", "method", "host", "path", "query", "headers", "payload_sha256", "body",
            "access_key", "secret_key", "session_token", "region", "service", "time")
    payload = json.dumps([{k: r[k] for k in keep} for r in reqs])
    p = subprocess.run(["node", os.path.join(SIGNER_DIR, "sign.js")], input=payload, capture_output=True,
                       text=True, cwd=SIGNER_DIR, timeout=120)
    if p.returncode != 0:
        raise AssertionError("sign.js failed (%d):\n%s" % (p.returncode, p.stderr))
    return json.loads(p.stdout)


class SigV4CrossCheck(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c_bin = find_c_signer()
        ensure_node_modules()
        cls.reqs = generate()
        cls.c_out, cls.c_stderr = sign_c(cls.c_bin, cls.reqs)
        cls.js_out = sign_js(cls.reqs)

    def test_counts(self):
        self.assertGreaterEqual(len(self.reqs), 30)
        self.assertEqual(len(self.c_out), len(self.reqs), self.c_stderr)
        self.assertEqual(len(self.js_out), len(self.reqs))
        self.assertEqual(self.c_stderr, "")  # no sanitizer report

    def test_same_authorization(self):
        for r, c, js in zip(self.reqs, self.c_out, self.js_out):
            with self.subTest(id=r["id"], mode=r["mode"], path=r["path"], query=r.get("query_raw")):
                self.assertNotIn("error", c)
                self.assertNotIn("error", js)
                self.assertEqual(js["id"], r["id"])
                self.assertTrue(js["authorization"].startswith("AWS4-HMAC-SHA256 Credential="))
                self.assertEqual(c["authorization"], js["authorization"],
                                 "\nC canonical request:\n%s" % c["canonical"])

    def test_same_url_path(self):
        # the path the request line carries: what the S3 client's serializer
        # builds for a {Key+} label, and what devexd signs (S3) or encodes again
        for r, c, js in zip(self.reqs, self.c_out, self.js_out):
            with self.subTest(id=r["id"], path=r["path"]):
                self.assertEqual(c.get("path"), js.get("path"))
                if r["mode"] == "s3":
                    self.assertEqual(c["canonical"].split("\n")[1], c["path"])

    def test_unsigned_and_token_headers(self):
        # every S3 request signs x-amz-content-sha256, session ones the token
        for r, c in zip(self.reqs, self.c_out):
            with self.subTest(id=r["id"]):
                signed = c["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
                self.assertIn("host", signed)
                self.assertIn("x-amz-date", signed)
                self.assertEqual("x-amz-content-sha256" in signed, r["mode"] == "s3")
                self.assertEqual("x-amz-security-token" in signed, bool(r["session_token"]))


if __name__ == "__main__":
    unittest.main(verbosity=2)
