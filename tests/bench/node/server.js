// Node.js baseline for tests/bench/bench_redis.sh: the same endpoint as the
// devexd bench app, GET /get/:key -> one Redis GET -> 200 {"value": ...}
// (404 {"error":"not found"} for other paths, 503 {"error":...} when Redis
// fails), written the way a small Node service would be: node:http + ioredis
// with its default options (one connection per process, no auto-pipelining).
//
// node:cluster with WORKERS processes (default 2, to match devexd's 2 worker
// threads; each process, like each devexd thread, has one event loop and one
// Redis connection). WORKERS=1 runs a single process without cluster.
//
// Environment: PORT (HTTP, 127.0.0.1), REDIS_URL (redis://127.0.0.1:6379),
// WORKERS (2). Prints "ready" on stdout once every worker listens.
"use strict";

const cluster = require("node:cluster");
const http = require("node:http");

const PORT = Number(process.env.PORT || 3000);
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const WORKERS = Math.max(1, Number(process.env.WORKERS || 2));

function serve() {
  const Redis = require("ioredis");
  const redis = new Redis(REDIS_URL, { lazyConnect: false });
  redis.on("error", () => {}); // reconnects on its own; requests see the failure

  const server = http.createServer((req, res) => {
    const m = req.method === "GET" && /^\/get\/([^/?]+)/.exec(req.url);
    if (!m) {
      send(res, 404, { error: "not found" });
      return;
    }
    redis.get(decodeURIComponent(m[1])).then(
      (value) => send(res, 200, { value }),
      (err) => send(res, 503, { error: String(err && err.message) })
    );
  });
  server.keepAliveTimeout = 60000;
  server.listen(PORT, "127.0.0.1", () => {
    if (cluster.isWorker) process.send("listening");
    else console.log("ready");
  });
}

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) });
  res.end(data);
}

if (WORKERS > 1 && cluster.isPrimary) {
  let listening = 0;
  for (let i = 0; i < WORKERS; i++) {
    const w = cluster.fork();
    w.on("message", (msg) => {
      if (msg === "listening" && ++listening === WORKERS) console.log("ready");
    });
  }
  let stopping = false;
  cluster.on("exit", (w, code, signal) => {
    if (!stopping) {
      console.error(`worker ${w.process.pid} exited (${signal || code}); stopping`);
      stopping = true;
      for (const id in cluster.workers) cluster.workers[id].kill();
      process.exitCode = 1;
    }
  });
  const stop = () => {
    stopping = true;
    for (const id in cluster.workers) cluster.workers[id].kill();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  serve();
}
