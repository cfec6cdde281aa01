/*
 * fuzz_runner_protocol: the runner agent's WebSocket message decoder and
 * dispatcher (lua/runner/protocol.lua: json.decode of each message, the
 * event lookup, every handler's argument checks) and the diff-match-patch
 * parser behind updateContent (lua/runner/dmp.lua), for the messages an IDE
 * page sends. The input is one WebSocket message; the connection, the
 * workspace, the terminals and the lifecycle are stand-ins (no file is
 * touched), except the patch, which is applied to a fixed text by the real
 * dmp. Every answer must be a JSON object with an event name.
 */
#include <stdint.h>

#include "fuzz_lua.h"

static const char *setup =
    "local json = require('devex.json')\n"
    "local dmp = require('runner.dmp')\n"
    "local incoming, sent\n"
    "local conn = {\n"
    "  receive = function() local m = incoming; incoming = nil; return m end,\n"
    "  send = function(_, text) sent[#sent + 1] = text; return true end,\n"
    "  close = function() end,\n"
    "}\n"
    "package.loaded['devex.websocket'] = { upgrade = function() return conn end }\n"
    "package.loaded['devex.log'] = setmetatable({}, { __index = function() return function() end end })\n"
    "package.loaded['runner.settings'] = { get = function() return { dir = '/nonexistent', max_file = 1 << 20 } end }\n"
    "package.loaded['runner.lifecycle'] = { client_opened = function() end, client_closed = function() end,\n"
    "  touch = function() end }\n"
    "local TEXT = 'hello world\\nsecond line\\n\\tthird \\u{e9}t\\u{e9}\\n'\n"
    "local ws = { list = function(_, dir) if dir == '' then return { { name = 'a', type = 'file' } } end\n"
    "                                      return nil, dir .. ': no such file or folder' end,\n"
    "  read = function(_, p) return TEXT end,\n"
    "  patch = function(_, p, patch) local new, err = dmp.apply(TEXT, patch)\n"
    "    check(new == nil or type(new) == 'string', 'dmp.apply returns a string')\n"
    "    if not new then return nil, err end; return true end,\n"
    "  resolve = function(_, p) return { st = {}, path = p } end,\n"
    "  transfer = function() return true end, rename = function() return true end,\n"
    "  create_file = function() return true end, create_folder = function() return true end,\n"
    "  delete = function() return true end }\n"
    "package.loaded['runner.workspace'] = { open = function() return ws end }\n"
    "local term = { id = 't1', pty = { write = function() return true end, resize = function() end } }\n"
    "package.loaded['runner.terminals'] = { open = function() return 't1' end,\n"
    "  get = function(_, id) if id == 't1' then return term end end,\n"
    "  close = function() end, close_all = function() end }\n"
    "local protocol = require('runner.protocol')\n"
    "function fuzz_one(s)\n"
    "  incoming, sent = s, {}\n"
    "  protocol.serve({})\n"
    "  check(#sent <= 1 or s == '', 'one answer per message at most')\n"
    "  for _, text in ipairs(sent) do\n"
    "    local m = json.decode(text)\n"
    "    check(type(m) == 'table' and type(m.event) == 'string', 'an answer is a JSON object with an event')\n"
    "  end\n"
    "  dmp.parse(s)\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run(setup, NULL, data, size);
}
