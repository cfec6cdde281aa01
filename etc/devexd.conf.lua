-- devexd configuration. A Lua chunk that returns a table; values come from the
-- environment with the original service's variable names. A malformed value
-- (PORT=abc) or an unknown setting stops devexd at start with its name.
local env = require("devex.env")

-- production by default: no development CORS origin (http://localhost:3000),
-- and devexd refuses to start unless PUBLIC_URL is https (so that the session
-- cookie is Secure) or DEVEXD_ALLOW_HTTP=1 says plain HTTP is meant
local environment = env.enum("ENVIRONMENT", "production", { "development", "production", "test" })

-- "10.0.0.0/8, 192.0.2.7" -> { "10.0.0.0/8", "192.0.2.7" }
local function list(name)
  local v = env.str(name)
  if not v then return nil end
  local t = {}
  for item in v:gmatch("[^,%s]+") do t[#t + 1] = item end
  return t
end

return {
  environment = environment,
  public_url = env.url("PUBLIC_URL", nil, { "http", "https" }),
  allow_insecure_http = env.bool("DEVEXD_ALLOW_HTTP", false),
  frontend_url = env.url("FRONTEND_URL", "http://localhost:3000", { "http", "https" }),

  server = {
    listen = {
      { host = env.str("HOST", "0.0.0.0"), port = env.int("PORT", 8080, 1, 65535) },
      -- TLS (HTTP/2 by ALPN, HTTP/1.1 fallback):
      -- { host = "0.0.0.0", port = 8443, tls = { cert = "/etc/devexd/tls.crt", key = "/etc/devexd/tls.key" } },
    },
    threads = env.int("DEVEXD_THREADS", 0, 0, 256), -- 0: one per CPU
    max_body = env.int("DEVEXD_MAX_BODY", 1048576, 1024), -- bytes; larger bodies get 413
    header_timeout = 10, -- seconds to receive request headers, and a new connection's first request
    idle_timeout = 60, -- seconds an HTTP/2 connection with no request open is kept
    -- HTTP/2 abuse (README "Connection limits"): streams a connection may
    -- reset before it is closed, and its Lua handlers running at once
    http2_max_resets = 100,
    http2_max_inflight = 128,
    shutdown_timeout = 15, -- seconds in-flight requests get on SIGTERM
    log_level = env.enum("LOG_LEVEL", "info", { "debug", "info", "warn", "error" }),
    access_log = env.bool("ACCESS_LOG", true),
    -- X-Request-Id on responses: "errors" (status >= 400, or the client sent
    -- one) or "always" (costs HTTP/2 throughput: README "Request ids")
    request_id_header = env.enum("DEVEXD_REQUEST_ID_HEADER", "errors", { "always", "errors" }),
    -- the proxies in front of devexd (addresses or CIDRs, e.g. the Ingress
    -- controller's pods): only from them is the client address read from
    -- client_ip_header, for the rate limits per client (policy.limits)
    trusted_proxies = list("DEVEXD_TRUSTED_PROXIES"),
    client_ip_header = env.str("DEVEXD_CLIENT_IP_HEADER", "X-Forwarded-For"),
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

  s3 = {
    endpoint = env.url("S3_ENDPOINT", nil, { "http", "https" }),
    region = env.str("S3_REGION", "auto"),
    bucket = env.str("S3_BUCKET"),
    access_key = env.str("S3_ACCESS_KEY"),
    secret_key = env.str("S3_SECRET_KEY"),
    session_token = env.str("S3_SESSION_TOKEN"),
    addressing = env.enum("S3_ADDRESSING", nil, { "path", "virtual" }), -- default: path, virtual for AWS
  },

  -- Where REPL files and templates live: "s3" (default when S3_ENDPOINT is
  -- set) or "fs", a local directory standing in for the bucket (development).
  storage = {
    driver = env.enum("STORAGE_DRIVER", nil, { "s3", "fs" }),
    dir = env.str("STORAGE_DIR"),
  },

  github = {
    client_id = env.str("GITHUB_CLIENT_ID"),
    client_secret = env.str("GITHUB_CLIENT_SECRET"),
    redirect_url = env.url("GITHUB_REDIRECT_URL", nil, { "http", "https" }),
    -- GitHub's endpoints (GitHub Enterprise Server: https://HOST/login/oauth/..., https://HOST/api/v3)
    authorize_url = env.url("GITHUB_AUTHORIZE_URL", "https://github.com/login/oauth/authorize", { "http", "https" }),
    token_url = env.url("GITHUB_TOKEN_URL", "https://github.com/login/oauth/access_token", { "http", "https" }),
    api_url = env.url("GITHUB_API_URL", "https://api.github.com", { "http", "https" }),
    ca_file = env.str("GITHUB_CA_FILE"), -- PEM CA bundle for GitHub's TLS (default: the system's)
  },

  auth = {
    -- Domain of the session cookie: the parent of the API and runner domains
    -- (api.example.com and runner.example.com -> example.com), so that the
    -- browser also sends it to the runner gateway. Unset: host-only cookie.
    cookie_domain = env.str("COOKIE_DOMAIN"),
    -- E-mail magic-link sign-in (POST /auth/magiclink/login): on when SMTP_URL,
    -- GMAIL_USER or RESEND_API_KEY is set. SMTP: smtps://host:465, or
    -- smtp://host:587 with STARTTLS required (plain only to a loopback host).
    -- GMAIL_USER/GMAIL_PASSWORD (an app password) mean Gmail's submission
    -- server. RESEND_API_KEY sends through Resend's HTTP API instead.
    magiclink = {
      smtp_url = env.url("SMTP_URL", env.str("GMAIL_USER") and "smtps://smtp.gmail.com:465" or nil,
        { "smtp", "smtps" }),
      username = env.str("SMTP_USERNAME", env.str("GMAIL_USER")),
      password = env.str("SMTP_PASSWORD", env.str("GMAIL_PASSWORD")),
      from = env.str("MAIL_FROM", env.str("GMAIL_USER")),
      from_name = env.str("MAIL_FROM_NAME"),
      resend_api_key = env.str("RESEND_API_KEY"),
      -- the link: this URL + ?token=... (default: PUBLIC_URL/auth/magiclink/verify)
      redirect_url = env.url("MAGICLINK_REDIRECT_URL", nil, { "http", "https" }),
      token_ttl = env.int("MAGICLINK_TTL", 900, 60, 86400), -- seconds a link is valid
    },
  },

  session = {
    ttl = env.int("SESSION_TTL", 7 * 24 * 3600, 60), -- seconds; renewed when used with less than half left
    max_lifetime = env.int("SESSION_MAX_LIFETIME", 30 * 24 * 3600, 60), -- seconds a session lives at most, used or not
    state_ttl = env.int("OAUTH_STATE_TTL", 600, 1), -- seconds a sign-in attempt may take
  },

  -- Sign-in with an OpenID Connect provider besides GitHub, at /auth/<name>/login.
  -- More providers: add entries to oauth.providers by hand.
  oauth = {
    providers = env.str("OIDC_ISSUER") and {
      [env.str("OIDC_PROVIDER_NAME", "oidc")] = {
        issuer = env.url("OIDC_ISSUER", nil, { "http", "https" }),
        client_id = env.str("OIDC_CLIENT_ID"),
        client_secret = env.str("OIDC_CLIENT_SECRET"),
        redirect_url = env.url("OIDC_REDIRECT_URL", nil, { "http", "https" }),
        scopes = env.str("OIDC_SCOPES", "openid profile email"),
        ca_file = env.str("OIDC_CA_FILE"),
      },
    } or nil,
  },

  -- Where sessions run: "kubernetes" (default) or "local" (single-host: on
  -- this machine, under RUNTIME_DIR). The local runtime with a real sign-in
  -- needs RUNTIME_ISOLATION=1 (README "Single-host isolation").
  runtime = {
    driver = env.enum("RUNTIME_DRIVER", "kubernetes", { "kubernetes", "local" }),
    dir = env.str("RUNTIME_DIR", "/var/lib/devexd/workspaces"),
    isolation = env.bool("RUNTIME_ISOLATION", false),
  },

  kube = {
    config_path = env.str("KUBE_CONFIG_PATH"),
    namespace = env.str("KUBE_NAMESPACE", "default"),
  },

  -- Where the IDE page reaches a REPL's runner (README "Runner gateway").
  runner = {
    -- the runner domain: https://<domain>/<replId>/... (RUNNER_CLUSTER_IP is the original service's name)
    domain = env.str("RUNNER_DOMAIN", env.str("RUNNER_CLUSTER_IP")),
    cluster_ip = env.str("RUNNER_CLUSTER_IP"),
    -- "gateway": devexd serves the runner domain itself (owner only, activity
    -- seen); "ingress": a per-REPL Ingress as the original service (unauthenticated)
    exposure = env.enum("RUNNER_EXPOSURE", "gateway", { "gateway", "ingress" }),
    -- scheme of the runner URLs handed to the frontend
    scheme = env.enum("RUNNER_SCHEME", "https", { "http", "https" }),
  },
}
