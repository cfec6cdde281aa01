-- s3app: the test app of tests/integration/test_s3.py and tests/bench/bench_s3.sh.
-- It opens the storage API (lua/storage) from the config the test wrote
-- (driver "s3" against the signature-checking front of tests/s3/server, or
-- driver "fs") and runs what the test asks, answering with JSON that says
-- exactly what Lua got back (results, or err = {code, message, status, ...}).
local framework = require("devex.app")
local json = require("devex.json")
local tasks = require("devex.tasks")
local timer = require("devex.timer")
local storage = require("storage")
local sync = require("storage.sync")

local app = framework.new()
require("routes.health")(app)

local function plain_err(err)
  if type(err) ~= "table" then return { code = "raised", message = tostring(err) } end
  local out = {}
  for k, v in pairs(err) do
    if type(v) == "string" or type(v) == "number" or type(v) == "boolean" then out[k] = v end
  end
  out.str = tostring(err)
  return out
end

local function plain_failures(list)
  local out = {}
  for i, f in ipairs(list or {}) do out[i] = { key = f.key, error = plain_err(f.error) } end
  return json.array(out)
end

local function open(body)
  local conf = body.conf
  if conf == nil then return storage.open() end
  return storage.open(conf)
end

local function arr(t) return json.array(t or {}) end

-- POST /op {op, args = [...], conf?}: one store method call.
app:post("/op", function(req)
  local b = req:json()
  local store, err = open(b)
  if not store then return 200, { ok = false, err = plain_err(err) } end
  local t0 = timer.now()
  local ok, r1, r2 = xpcall(store[b.op], debug.traceback, store, table.unpack(b.args or {}))
  local elapsed = timer.now() - t0
  if not ok then return 200, { ok = false, raised = tostring(r1), elapsed = elapsed } end
  if r1 == nil then return 200, { ok = false, err = plain_err(r2), elapsed = elapsed } end
  local out = { ok = true, elapsed = elapsed }
  if b.op == "get" then
    out.body = r1
    out.info = r2
  elseif b.op == "list" then
    out.objects = arr(r1.objects)
    out.prefixes = arr(r1.prefixes)
    out.count = #r1.objects
  elseif type(r1) == "table" then
    out.result = r1
    if r1.failures then r1.failures = plain_failures(r1.failures) end
  else
    out.result = r1
  end
  return 200, out
end)

-- POST /bulk_put {prefix, n, concurrency, body?}: n objects prefix..%05d.
app:post("/bulk_put", function(req)
  local b = req:json()
  local store, err = open(b)
  if not store then return 200, { ok = false, err = plain_err(err) } end
  local keys = {}
  for i = 1, b.n do keys[i] = b.prefix .. string.format("%05d", i) end
  local t0 = timer.now()
  local results, failures = tasks.map(keys, function(k)
    return store:put(k, b.body or ("object " .. k))
  end, { concurrency = b.concurrency or 16 })
  local n = 0
  for _ in pairs(results) do n = n + 1 end
  local f = {}
  for i, x in ipairs(failures) do f[i] = { key = x.item, error = plain_err(x.error) } end
  return 200, { ok = #f == 0, put = n, failures = json.array(f), elapsed = timer.now() - t0 }
end)

-- POST /sync {dir, dry_run, conf?}
app:post("/sync", function(req)
  local b = req:json()
  local store, err = open(b)
  if not store then return 200, { ok = false, err = plain_err(err) } end
  local r, serr = sync.sync(store, b.dir, { dry_run = b.dry_run })
  if not r then return 200, { ok = false, err = plain_err(serr) } end
  return 200, { ok = true, uploaded = arr(r.uploaded), skipped = arr(r.skipped), deleted = arr(r.deleted),
    failures = plain_failures(r.failures) }
end)

-- POST /sync_cli {args}: the CLI entry point, exit code only (it prints to stdout).
app:post("/sync_cli", function(req)
  local b = req:json()
  return 200, { code = sync.cli(b.args) }
end)

-- POST /check_key {keys = [...]} -> which keys are refused
app:post("/check_key", function(req)
  local common = require("storage.common")
  local out = {}
  for i, k in ipairs(req:json().keys) do
    local ok, err = common.check_key(k)
    out[i] = ok and "ok" or err.message
  end
  return 200, { results = json.array(out) }
end)

-- POST /xml {fn, xml}: a devex.s3 parser on hostile input
app:post("/xml", function(req)
  local s3c = require("devex.s3")
  local b = req:json()
  local r, err = s3c[b.fn](b.xml)
  if r == nil then return 200, { ok = false, err = err and plain_err(err) or json.null } end
  return 200, { ok = true, result = r }
end)

return app
