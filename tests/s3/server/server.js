#!/usr/bin/env node
// server.js: the S3 server of devexd's integration tests and benchmarks.
//
// s3rver (3.7.1, pinned in package-lock.json) stores the objects; it does not
// verify request signatures, so it runs in-process on an internal loopback
// port behind this front, which does what S3 does before serving a request:
//   - recomputes the SigV4 signature with the AWS SDK's own signer,
//     @smithy/signature-v4, in S3 mode (uriEscapePath: false: the path is
//     signed exactly as sent, encoded once, never normalized), from the known
//     secret, over the headers the request lists in SignedHeaders, and answers
//     403 <Error><Code>SignatureDoesNotMatch</Code>... on a mismatch
//     (InvalidAccessKeyId for an unknown key, AccessDenied without a signature,
//     RequestTimeTooSkewed beyond 15 minutes);
//   - presigned URLs (query-string authentication: X-Amz-Algorithm,
//     X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders,
//     X-Amz-Signature) are checked the same way, with the SDK's own
//     presigner over the URL minus X-Amz-Signature, payload UNSIGNED-PAYLOAD
//     (403 SignatureDoesNotMatch); as on S3, a URL used after X-Amz-Date +
//     X-Amz-Expires gets 403 AccessDenied "Request has expired", X-Amz-Expires
//     outside 1..604800 400 AuthorizationQueryParametersError, and a request
//     with both an Authorization header and a query signature 400
//     InvalidArgument "Only one auth mechanism allowed";
//   - checks x-amz-content-sha256 against the body (400 XAmzContentSHA256Mismatch)
//     and Content-MD5 when present (400 BadDigest); DeleteObjects (POST ?delete)
//     without Content-MD5 gets 400 InvalidRequest, as on S3.
// Then it forwards the request to s3rver. One s3rver deviation from S3 is
// compensated here, after the signature check: s3rver decodes
// x-amz-copy-source with decodeURI, which leaves %2B, %3D, %2C... encoded,
// where S3 decodes the header fully; the header is re-encoded so that
// decodeURI yields the key S3 would have read.
//
// Emulated latency (off by default): --latency-ms N (or --latency-ms=N, or
// the environment variable S3_FRONT_LATENCY_MS=N; the flag wins) holds every
// S3 request N ms after its body has arrived and before it is checked,
// forwarded and answered, with a timer (setTimeout), so the event loop keeps
// serving other requests meanwhile: N is a round trip that costs no CPU, as
// the network and S3's own queues are for a client of real S3. Loopback has
// no such latency; the benchmarks use it to measure what concurrency overlaps.
// The /__front/ hooks are never delayed.
//
// Test hooks (paths under /__front/, which no bucket name can start with):
//   POST /__front/fail?count=N&status=503&code=SlowDown  the next N S3 requests get that error
//   POST /__front/latency?ms=N  sets the emulated latency from now on (0: off)
//   GET  /__front/stats    {"requests":n,"rejected":n,"injected":n,"forwarded":n,"latency_ms":n}
//
// s3rver's continuation tokens use DES, which Node 17+ (OpenSSL 3) only has
// with the legacy provider: run node with --openssl-legacy-provider, else
// listings past the first page fail with InternalError.
//
// Usage: node --openssl-legacy-provider server.js --port 0 --dir DIR --access-key AK --secret-key SK
//                       [--bucket NAME]... [--region us-east-1] [--latency-ms 0]
// Prints "READY <port>" on stdout once listening; exits on SIGTERM/SIGINT.
"use strict";

const http = require("http");
const crypto = require("crypto");
const S3rver = require("s3rver");
const { SignatureV4 } = require("@smithy/signature-v4");
const { Hash } = require("@smithy/hash-node");
const { HttpRequest } = require("@smithy/core/protocols");

function parseLatency(v, what) {
  const n = Number(v);
  if (v === undefined || v === "" || !Number.isFinite(n) || n < 0)
    throw new Error(what + " must be a number of milliseconds >= 0, not " + JSON.stringify(v));
  return n;
}

function parseArgs(argv) {
  const o = { port: 0, dir: null, accessKey: null, secretKey: null, buckets: [], region: "us-east-1",
    latencyMs: parseLatency(process.env.S3_FRONT_LATENCY_MS || "0", "S3_FRONT_LATENCY_MS") };
  for (let i = 2; i < argv.length; i++) {
    let a = argv[i];
    let v;
    const eq = a.indexOf("=");
    if (a.startsWith("--") && eq > 0) {
      v = a.slice(eq + 1);
      a = a.slice(0, eq);
    } else {
      v = argv[++i];
    }
    if (a === "--port") o.port = Number(v);
    else if (a === "--dir") o.dir = v;
    else if (a === "--access-key") o.accessKey = v;
    else if (a === "--secret-key") o.secretKey = v;
    else if (a === "--bucket") o.buckets.push(v);
    else if (a === "--region") o.region = v;
    else if (a === "--latency-ms") o.latencyMs = parseLatency(v, "--latency-ms");
    else throw new Error("unknown argument " + a);
  }
  if (!o.dir || !o.accessKey || !o.secretKey) throw new Error("--dir, --access-key and --secret-key are required");
  return o;
}

const opts = parseArgs(process.argv);
const stats = { requests: 0, rejected: 0, injected: 0, forwarded: 0 };
let latencyMs = opts.latencyMs;
let inject = { count: 0, status: 503, code: "SlowDown" };

function xmlEscape(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;" })[c]);
}

function sendError(res, status, code, message, extra) {
  const id = crypto.randomBytes(8).toString("hex").toUpperCase();
  let body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + xmlEscape(code) + "</Code><Message>" +
    xmlEscape(message) + "</Message>";
  for (const [k, v] of Object.entries(extra || {})) body += "<" + k + ">" + xmlEscape(v) + "</" + k + ">";
  body += "<RequestId>" + id + "</RequestId></Error>";
  res.writeHead(status, { "content-type": "application/xml", "content-length": Buffer.byteLength(body), "x-amz-request-id": id });
  res.end(body);
}

function parseQuery(q) {
  const query = {};
  if (!q) return query;
  for (const piece of q.split("&")) {
    if (!piece) continue;
    const eq = piece.indexOf("=");
    const name = decodeURIComponent(eq < 0 ? piece : piece.slice(0, eq));
    const value = eq < 0 ? "" : decodeURIComponent(piece.slice(eq + 1));
    if (Object.prototype.hasOwnProperty.call(query, name)) query[name] = [].concat(query[name], value);
    else query[name] = value;
  }
  return query;
}

function parseAmzDate(s) {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s || "");
  if (!m) return null;
  return new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]));
}

const SIG_MISMATCH = [403, "SignatureDoesNotMatch",
  "The request signature we calculated does not match the signature you provided. Check your key and signing method."];

// A presigned request (query-string authentication). null if authentic,
// else [status, code, message].
async function verifyPresigned(req, rawPath, rawQuery) {
  if (req.headers["authorization"])
    return [400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified"];
  const q = parseQuery(rawQuery);
  for (const n of ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature"])
    if (typeof q[n] !== "string")
      return [400, "AuthorizationQueryParametersError", "Query-string authentication version 4 requires the " +
        "X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."];
  if (q["X-Amz-Algorithm"] !== "AWS4-HMAC-SHA256")
    return [400, "AuthorizationQueryParametersError", "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\""];
  const m = /^([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request$/.exec(q["X-Amz-Credential"]);
  if (!m) return [400, "AuthorizationQueryParametersError", "Error parsing the X-Amz-Credential parameter"];
  const [, accessKey, scopeDate, region, service] = m;
  if (accessKey !== opts.accessKey)
    return [403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."];
  const date = parseAmzDate(q["X-Amz-Date"]);
  if (!date) return [400, "AuthorizationQueryParametersError", "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""];
  const expires = /^\d+$/.test(q["X-Amz-Expires"]) ? Number(q["X-Amz-Expires"]) : NaN;
  if (!(expires >= 1 && expires <= 604800))
    return [400, "AuthorizationQueryParametersError", "X-Amz-Expires must be less than a week (in seconds) that is 604800"];
  if (Date.now() > date.getTime() + expires * 1000) return [403, "AccessDenied", "Request has expired"];
  if (date.getTime() - Date.now() > 15 * 60 * 1000) return [403, "AccessDenied", "Request is not valid yet"];
  const signed = q["X-Amz-SignedHeaders"].split(";");
  if (!signed.includes("host")) return [403, "AccessDenied", "host must be signed"];
  const headers = { "x-amz-content-sha256": "UNSIGNED-PAYLOAD" };
  for (const name of signed) {
    const v = req.headers[name];
    if (v === undefined) return [403, "SignatureDoesNotMatch", "signed header " + name + " is missing"];
    headers[name] = Array.isArray(v) ? v.join(",") : v;
  }
  const query = { ...q };
  delete query["X-Amz-Signature"];
  const signer = new SignatureV4({
    credentials: { accessKeyId: accessKey, secretAccessKey: opts.secretKey, sessionToken: q["X-Amz-Security-Token"] },
    region,
    service,
    sha256: Hash.bind(null, "sha256"),
    uriEscapePath: false,
    applyChecksum: false,
  });
  const request = new HttpRequest({ method: req.method, protocol: "http:", hostname: headers.host, path: rawPath, query, headers });
  const unsigned = new Set(["x-amz-content-sha256"]);
  const out = await signer.presign(request, {
    signingDate: date, expiresIn: expires, signableHeaders: new Set(signed),
    unsignableHeaders: unsigned, unhoistableHeaders: unsigned,
  });
  const mine = String(out.query["X-Amz-Signature"] || "");
  const theirs = q["X-Amz-Signature"];
  if (scopeDate !== q["X-Amz-Date"].slice(0, 8) || mine.length !== 64 || theirs.length !== 64 ||
      !crypto.timingSafeEqual(Buffer.from(mine), Buffer.from(theirs)))
    return SIG_MISMATCH;
  return null;
}

// Returns null if the request is authentic, else [status, code, message].
async function verify(req, rawPath, rawQuery, body) {
  if (/(^|&)X-Amz-(Algorithm|Signature|Credential)=/i.test(rawQuery || "")) return verifyPresigned(req, rawPath, rawQuery);
  const auth = req.headers["authorization"];
  if (!auth) return [403, "AccessDenied", "Access Denied"];
  const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/.exec(auth);
  if (!m) return [400, "AuthorizationHeaderMalformed", "The authorization header is malformed"];
  const [, accessKey, scopeDate, region, service, signedList, signature] = m;
  if (accessKey !== opts.accessKey)
    return [403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."];
  const date = parseAmzDate(req.headers["x-amz-date"]);
  if (!date) return [403, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"];
  if (Math.abs(date.getTime() - Date.now()) > 15 * 60 * 1000)
    return [403, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large."];
  const contentSha = req.headers["x-amz-content-sha256"];
  if (!contentSha) return [400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"];
  if (contentSha !== "UNSIGNED-PAYLOAD") {
    const actual = crypto.createHash("sha256").update(body).digest("hex");
    if (actual !== contentSha)
      return [400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed."];
  }
  const signed = signedList.split(";");
  if (!signed.includes("host")) return [403, "AccessDenied", "host must be signed"];
  const headers = {};
  for (const name of signed) {
    const v = req.headers[name];
    if (v === undefined) return [403, "SignatureDoesNotMatch", "signed header " + name + " is missing"];
    headers[name] = Array.isArray(v) ? v.join(",") : v;
  }
  const signer = new SignatureV4({
    credentials: { accessKeyId: accessKey, secretAccessKey: opts.secretKey, sessionToken: req.headers["x-amz-security-token"] },
    region,
    service,
    sha256: Hash.bind(null, "sha256"),
    uriEscapePath: false,
    applyChecksum: false,
  });
  const request = new HttpRequest({
    method: req.method,
    protocol: "http:",
    hostname: headers.host,
    path: rawPath,
    query: parseQuery(rawQuery),
    headers,
  });
  const out = await signer.sign(request, { signingDate: date, signableHeaders: new Set(signed) });
  const mine = /Signature=([0-9a-f]{64})/.exec(out.headers["authorization"])[1];
  const expectedScope = scopeDate === req.headers["x-amz-date"].slice(0, 8);
  if (!expectedScope || !crypto.timingSafeEqual(Buffer.from(mine), Buffer.from(signature)))
    return [403, "SignatureDoesNotMatch",
      "The request signature we calculated does not match the signature you provided. Check your key and signing method."];
  return null;
}

function checkMd5(req, rawQuery, body) {
  const md5 = req.headers["content-md5"];
  if (md5 !== undefined) {
    const actual = crypto.createHash("md5").update(body).digest("base64");
    if (actual !== md5) return [400, "BadDigest", "The Content-MD5 you specified did not match what we received."];
  } else if (req.method === "POST" && /(^|&)delete(=|&|$)/.test(rawQuery || "")) {
    return [400, "InvalidRequest", "Missing required header for this request: Content-MD5"];
  }
  return null;
}

async function main() {
  const s3rver = new S3rver({
    address: "127.0.0.1",
    port: 0,
    silent: !process.env.S3_SERVER_VERBOSE,
    directory: opts.dir,
    configureBuckets: opts.buckets.map((name) => ({ name })),
  });
  // s3rver looks the access key up in its account registry (and stops
  // there for SigV4): register the test's key pair with its dummy account
  require("s3rver/lib/models/account").DUMMY_ACCOUNT.createKeyPair(opts.accessKey, opts.secretKey);
  const inner = await s3rver.run();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

  const front = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks);
      const q = req.url.indexOf("?");
      const rawPath = q < 0 ? req.url : req.url.slice(0, q);
      const rawQuery = q < 0 ? "" : req.url.slice(q + 1);
      try {
        if (rawPath.startsWith("/__front/")) {
          if (rawPath === "/__front/stats") {
            res.writeHead(200, { "content-type": "application/json" });
            return res.end(JSON.stringify({ ...stats, latency_ms: latencyMs }));
          }
          if (rawPath === "/__front/latency" && req.method === "POST") {
            latencyMs = parseLatency(parseQuery(rawQuery).ms, "ms");
            res.writeHead(204);
            return res.end();
          }
          if (rawPath === "/__front/fail") {
            const p = parseQuery(rawQuery);
            inject = { count: Number(p.count || 1), status: Number(p.status || 503), code: p.code || "SlowDown" };
            res.writeHead(204);
            return res.end();
          }
          res.writeHead(404);
          return res.end();
        }
        stats.requests++;
        if (process.env.S3_FRONT_LOG) process.stderr.write(req.method + " " + req.url.slice(0, 120) + " " + body.length + "\n");
        if (latencyMs > 0) await new Promise((resolve) => setTimeout(resolve, latencyMs));
        if (inject.count > 0) {
          inject.count--;
          stats.injected++;
          return sendError(res, inject.status, inject.code, "injected by the test front");
        }
        const bad = (await verify(req, rawPath, rawQuery, body)) || checkMd5(req, rawQuery, body);
        if (bad) {
          stats.rejected++;
          return sendError(res, bad[0], bad[1], bad[2]);
        }
        const headers = { ...req.headers };
        if (headers["x-amz-copy-source"] !== undefined) {
          headers["x-amz-copy-source"] = encodeURI(decodeURIComponent(headers["x-amz-copy-source"]));
        }
        headers["content-length"] = String(body.length);
        delete headers["transfer-encoding"];
        delete headers["expect"];
        stats.forwarded++;
        const up = http.request({ host: "127.0.0.1", port: inner.port, method: req.method, path: req.url, headers, agent },
          (ur) => {
            res.writeHead(ur.statusCode, ur.headers);
            ur.pipe(res);
          });
        up.on("error", (e) => sendError(res, 500, "InternalError", String(e)));
        up.end(body);
      } catch (e) {
        sendError(res, 500, "InternalError", String(e && e.stack ? e.stack : e));
      }
    });
  });
  front.keepAliveTimeout = 30000;
  front.listen(opts.port, "127.0.0.1", () => {
    process.stdout.write("READY " + front.address().port + "\n");
  });
  const stop = () => {
    front.close();
    s3rver.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
