#!/usr/bin/env node
// sign.js: the independent signer of the SigV4 cross-check
// (tests/integration/test_sigv4_crosscheck.py). It signs requests with the
// AWS SDK for JavaScript's own signer, @smithy/signature-v4, so that devexd's
// C signer (src/s3_sigv4.c) can be compared with it byte for byte.
//
// stdin: a JSON array of requests
//   { "id": any, "mode": "s3" | "generic", "method": "GET",
//     "host": "bucket.s3.us-east-1.amazonaws.com",
//     "path": "/raw key/é+=.txt",           RAW (unencoded) path
//     "query": [["prefix", "a b"], ...],    RAW names and values, may repeat
//     "headers": [["Host", "..."], ...],    the headers to sign (host included)
//     "payload_sha256": "<hex>" | "UNSIGNED-PAYLOAD" | null,
//     "body": "text" | null,                hashed by the SDK when no payload_sha256
//     "access_key", "secret_key", "session_token" (or null), "region", "service",
//     "time": seconds since the epoch }
// stdout: a JSON array of { "id", "authorization", "path", "error" }.
//
// How the SDK is driven so that it behaves as S3 requires (mode "s3"):
//   - uriEscapePath: false. S3 signs the path exactly as sent, encoded once
//     and never normalized; with the default (true) the SDK would normalize
//     "." / ".." / "//" and encode the path a second time, which is what the
//     other services expect (mode "generic").
//   - request.path must then be the already-encoded path. It is built the way
//     the S3 client's request serializer builds a greedy {Key+} label: split
//     on "/", extendedEncodeURIComponent() each segment, join with "/".
//   - the payload hash: the signer takes the x-amz-content-sha256 header when
//     the request has one (this is how the S3 client signs UNSIGNED-PAYLOAD),
//     else hashes the body (applyChecksum: true then adds the header). So a
//     given payload_sha256 is passed as that header; a body is passed as is.
//   - query values are raw: the signer encodes them itself.
//   - the signer deletes caller headers named date, x-amz-date and
//     authorization, sets x-amz-date from signingDate and, with a session
//     token, x-amz-security-token; it never signs user-agent, expect, etc.
"use strict";

const { SignatureV4 } = require("@smithy/signature-v4");
const { Hash } = require("@smithy/hash-node");
const { HttpRequest, extendedEncodeURIComponent } = require("@smithy/core/protocols");

function encodePath(raw) {
  return raw.split("/").map(extendedEncodeURIComponent).join("/");
}

async function signOne(r) {
  const s3 = r.mode !== "generic";
  const credentials = { accessKeyId: r.access_key, secretAccessKey: r.secret_key };
  if (r.session_token) credentials.sessionToken = r.session_token;
  const signer = new SignatureV4({
    credentials,
    region: r.region,
    service: r.service,
    sha256: Hash.bind(null, "sha256"),
    uriEscapePath: !s3,
    applyChecksum: s3,
  });
  const query = {};
  for (const [name, value] of r.query || []) {
    if (Object.prototype.hasOwnProperty.call(query, name)) {
      query[name] = [].concat(query[name], value);
    } else {
      query[name] = value;
    }
  }
  const headers = {};
  for (const [name, value] of r.headers || []) headers[name] = value;
  if (r.payload_sha256) headers["x-amz-content-sha256"] = r.payload_sha256;
  const path = encodePath(r.path);
  const request = new HttpRequest({
    method: r.method,
    protocol: "https:",
    hostname: r.host,
    path,
    query,
    headers,
    body: r.body == null ? undefined : r.body,
  });
  const signed = await signer.signRequest(request, { signingDate: new Date(r.time * 1000) });
  return { id: r.id, authorization: signed.headers.authorization, path };
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const requests = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const out = [];
  for (const r of requests) {
    try {
      out.push(await signOne(r));
    } catch (e) {
      out.push({ id: r.id, error: String(e && e.stack ? e.stack : e) });
    }
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(1);
});
