-- The runner agent's configuration (`devexd runner`, src/main.c): not
-- devexd's own config file, which a workspace never has. main.c puts the
-- command line in DEVEXD_RUNNER_DIR/PORT/HOST; the agent's behaviour settings
-- are read from the environment by lua/runner/settings.lua.
return {
  environment = "production",
  server = {
    -- TCP, and/or the Unix socket of --socket (a sandboxed agent's only way in)
    listen = (function()
      local l = {}
      if os.getenv("DEVEXD_RUNNER_TCP") ~= "0" then
        l[#l + 1] = { host = os.getenv("DEVEXD_RUNNER_HOST") or "0.0.0.0",
                      port = math.tointeger(tonumber(os.getenv("DEVEXD_RUNNER_PORT") or "8081")) }
      end
      local sock = os.getenv("DEVEXD_RUNNER_SOCKET")
      if sock and sock ~= "" then l[#l + 1] = { socket = sock } end
      return l
    end)(),
    threads = 1,
    -- a WebSocket session is a request in flight: at TERM the agent waits
    -- this long, then closes the sockets and kills the terminals
    shutdown_timeout = 1,
    max_body = 16 * 1024 * 1024,
    log_level = os.getenv("LOG_LEVEL") or "info",
    access_log = (os.getenv("ACCESS_LOG") or "true") ~= "false",
  },
  lua = { app = "runner.app" },
}
