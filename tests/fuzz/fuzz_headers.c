/*
 * fuzz_headers: request header parsing done in Lua: the Cookie header and
 * the query string (devex.app parse_cookies / parse_query, lua/devex/app.lua)
 * and the client address from X-Forwarded-For behind a trusted proxy
 * (middleware.ratelimit client_address, parse_ip, parse_cidr). Config,
 * policy and Redis are stand-ins; the parsers are the real modules.
 */
#include <stdint.h>

#include "fuzz_lua.h"

static const char *setup =
    "package.loaded['devex.config'] = { get = function() return { server = {\n"
    "  trusted_proxies = { '10.0.0.0/8', '::1', '2001:db8::/32' }, client_ip_header = 'X-Forwarded-For' } } end }\n"
    "package.loaded['policy'] = { limits = {} }\n"
    "package.loaded['services.redis'] = {}\n"
    "local app = require('devex.app')\n"
    "local rl = require('middleware.ratelimit')\n"
    "local function req(peer, h) return { raw = {\n"
    "  remote_addr = function() return peer end,\n"
    "  header = function(_, name) return h end } } end\n"
    "function fuzz_one(s)\n"
    "  local c = app.parse_cookies(s)\n"
    "  for k, v in pairs(c) do check(type(k) == 'string' and type(v) == 'string') end\n"
    "  local q = app.parse_query(s)\n"
    "  for k, v in pairs(q) do check(type(k) == 'string' and type(v) == 'string') end\n"
    "  local a = rl.client_address(req('10.1.2.3', s))\n"
    "  check(a == nil or #a == 16)\n"
    "  if a then rl.address_key(a) end\n"
    "  rl.client_address(req(s, nil))\n"
    "  rl.parse_ip(s)\n"
    "  rl.parse_cidr(s)\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run(setup, NULL, data, size);
}
