-- devexd development / single-host configuration: everything on one machine,
-- no cluster and no cloud account. Sessions run as child processes (runtime
-- "local"), files live in a directory (storage "fs"), sign-in is by name
-- (dev_login), Redis is a local redis-server. scripts/run-dev.sh uses this.
-- Never expose it: dev_login lets anyone sign in as anyone, and devexd
-- refuses to start with it when ENVIRONMENT is production or PUBLIC_URL is https.
local env = require("devex.env")

local data = env.str("DEVEXD_DATA", "/tmp/devexd-data")
local port = env.int("PORT", 8080, 1, 65535)
local public = env.url("PUBLIC_URL", "http://localhost:" .. port, { "http", "https" })

return {
  environment = env.enum("ENVIRONMENT", "development", { "development", "production", "test" }),
  public_url = public,
  -- the built-in development dashboard; a separate frontend would set its own
  frontend_url = env.url("FRONTEND_URL", public, { "http", "https" }),
  server = {
    listen = {
      { host = env.str("HOST", "127.0.0.1"), port = port },
      -- runners call back here (heartbeats, self-stop, their files): an
      -- isolated runner has no network to devexd; only /api/runner/ answers
      -- (a Unix socket path has at most 107 bytes: a longer DEVEXD_DATA goes without)
      #(data .. "/devexd.sock") <= 107 and { socket = data .. "/devexd.sock", only = "/api/runner/" } or nil,
    },
    threads = env.int("DEVEXD_THREADS", 0, 0, 256),
    log_level = env.enum("LOG_LEVEL", "info", { "debug", "info", "warn", "error" }),
  },
  redis = {
    -- or Sentinel: redis+sentinel://[user:pass@]host:26379,host2:26379/mymaster[/db]
    -- (the sentinels name the primary; devexd follows a failover)
    url = env.url("REDIS_URL", "redis://127.0.0.1:6379/0", { "redis", "rediss", "unix", "redis+sentinel" }),
    -- rediss:// only: PEM CAs to trust (default: the system's), and a client
    -- certificate and key when Redis asks for one (tls-auth-clients)
    ca_file = env.str("REDIS_CA_FILE"),
    cert_file = env.str("REDIS_CERT_FILE"),
    key_file = env.str("REDIS_KEY_FILE"),
  },
  storage = { driver = "fs", dir = data .. "/storage" },
  -- RUNTIME_ISOLATION=1: each runner under its own uid in a sandbox (README
  -- "Single-host isolation"); needed as soon as a real sign-in is configured
  runtime = { driver = "local", dir = data .. "/workspaces", isolation = env.bool("RUNTIME_ISOLATION", false) },
  dev_login = { enabled = true },
}
