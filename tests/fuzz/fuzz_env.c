/*
 * fuzz_env: the typed environment readers of the config file
 * (lua/devex/env.lua: int, num, bool, enum, url and redact), with every
 * variable holding the input (os.getenv is replaced in the harness's state).
 */
#include <stdint.h>

#include "fuzz_lua.h"

static const char *setup =
    "local env = require('devex.env')\n"
    "local value\n"
    "os.getenv = function() return value end\n"
    "function fuzz_one(s)\n"
    "  value = s\n"
    "  env.reset()\n"
    "  env.str('X')\n"
    "  local n = env.int('X', 1, 0, 65535)\n"
    "  check(math.type(n) == 'integer' and n >= 0 and n <= 65535)\n"
    "  env.int('X', nil)\n"
    "  env.num('X', 0)\n"
    "  env.bool('X', false)\n"
    "  env.enum('X', 'a', { 'a', 'b', 'info' })\n"
    "  env.url('X', nil, { 'http', 'https' })\n"
    "  env.url('X', nil, { 'redis', 'unix' })\n"
    "  env.redact(s)\n"
    "  for _, p in ipairs(env.problems()) do check(type(p) == 'string') end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run(setup, NULL, data, size);
}
