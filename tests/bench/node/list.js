// Node.js peer of devexd's GET /api/repl for tests/bench/bench_repl.sh: the
// same Redis reads as the shipped route, written the way a small Node service
// would be: node:http + ioredis with its default options (one connection per
// process, no auto-pipelining), node:cluster with WORKERS processes.
//
// GET /api/repl with the cookie devex_session=<id>:
//   1. the session: <prefix>session:<sha256 hex of id>, read and renewed by
//      the same script as lua/auth/session.lua's TOUCH (HGETALL, the
//      absolute lifetime, the sliding TTL renewal) -> 401 without one;
//      a renewal adds the Set-Cookie with the new Max-Age
//   2. the list: the same script as lua/repl/store.lua's LIST did (SMEMBERS
//      <prefix>userRepls:<owner>, then HGETALL replMeta + EXISTS
//      activeSession per REPL), sorted by created_at
//   -> 200 [{"user","id","name","template","isActive"}], byte for byte
//      devexd's answer
// Two round trips to Redis per request, as devexd did before it read both in
// one script. Other paths: 404.
//
// Environment: PORT, REDIS_URL, WORKERS (2), PREFIX ("devex:"),
// SESSION_TTL (604800), MAX_LIFETIME (2592000): devexd's defaults.
"use strict";

const cluster = require("node:cluster");
const crypto = require("node:crypto");
const http = require("node:http");

const PORT = Number(process.env.PORT || 3000);
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const WORKERS = Math.max(1, Number(process.env.WORKERS || 2));
const PREFIX = process.env.PREFIX || "devex:";
const SESSION_TTL = Number(process.env.SESSION_TTL || 604800);
const MAX_LIFETIME = Number(process.env.MAX_LIFETIME || 2592000);
const COOKIE = "devex_session";

const TOUCH = `
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local ttl, now, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local created
for i = 1, #h, 2 do if h[i] == 'created_at' then created = tonumber(h[i + 1]) end end
if not created then created = now end
local left = created + max - now
if left <= 0 then redis.call('DEL', KEYS[1]) return false end
if left > ttl then left = ttl end
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 and pttl < ttl * 500 and left * 1000 > pttl + 1000 then
  local exp = tostring(now + left)
  redis.call('EXPIRE', KEYS[1], left)
  redis.call('HSET', KEYS[1], 'expires_at', exp)
  for i = 1, #h, 2 do if h[i] == 'expires_at' then h[i + 1] = exp end end
  h[#h + 1] = '_renewed'
  h[#h + 1] = '1'
end
return h
`;

const LIST = `
local ids = redis.call('SMEMBERS', KEYS[1])
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. id)
  out[#out + 1] = redis.call('EXISTS', ARGV[2] .. id)
end
return out
`;

function flat(a) {
  const t = {};
  for (let i = 0; i + 1 < a.length; i += 2) t[a[i]] = a[i + 1];
  return t;
}

function cookieOf(header) {
  if (!header) return null;
  for (const part of header.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === COOKIE) return part.slice(i + 1).trim();
  }
  return null;
}

function serve() {
  const Redis = require("ioredis");
  const redis = new Redis(REDIS_URL, { lazyConnect: false });
  redis.on("error", () => {});
  redis.defineCommand("touchSession", { numberOfKeys: 1, lua: TOUCH });
  redis.defineCommand("listRepls", { numberOfKeys: 1, lua: LIST });

  async function list(req, res) {
    const id = cookieOf(req.headers.cookie);
    if (!id || id.length !== 43 || !/^[A-Za-z0-9_-]+$/.test(id)) return send(res, 401, { error: "unauthorized" });
    const key = PREFIX + "session:" + crypto.createHash("sha256").update(id).digest("hex");
    const now = Math.floor(Date.now() / 1000);
    const h = await redis.touchSession(key, SESSION_TTL, now, MAX_LIFETIME);
    if (!h) return send(res, 401, { error: "unauthorized" });
    const s = flat(h);
    let user;
    try { user = JSON.parse(s.user); } catch { return send(res, 401, { error: "unauthorized" }); }
    if (!user || typeof user.owner !== "string") return send(res, 200, []);
    const r = await redis.listRepls(PREFIX + "userRepls:" + user.owner, PREFIX + "replMeta:", PREFIX + "activeSession:");
    const repls = [];
    for (let i = 0; i < r.length; i += 2) {
      const m = flat(r[i]);
      if (m.id) { m.active = r[i + 1] === 1; repls.push(m); }
    }
    repls.sort((a, b) => ((a.created_at || "") < (b.created_at || "") ? -1 : 1));
    const out = repls.map((m) => ({ user: user.login || m.login || m.user, id: m.id, name: m.name, template: m.template, isActive: m.active }));
    const headers = {};
    if (s._renewed === "1") {
      const left = Number(s.expires_at) - now;
      headers["Set-Cookie"] = `${COOKIE}=${id}; Path=/; Max-Age=${left}; HttpOnly; SameSite=Lax`;
    }
    send(res, 200, out, headers);
  }

  const server = http.createServer((req, res) => {
    if (req.method === "GET" && (req.url === "/api/repl" || req.url === "/api/repl/")) {
      list(req, res).catch((err) => send(res, 503, { error: String(err && err.message) }));
    } else {
      send(res, 404, { error: "not found" });
    }
  });
  server.keepAliveTimeout = 60000;
  server.listen(PORT, "127.0.0.1", () => {
    if (cluster.isWorker) process.send("listening");
    else console.log("ready");
  });
}

function send(res, status, body, headers) {
  const data = JSON.stringify(body);
  res.writeHead(status, Object.assign({ "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) }, headers));
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
