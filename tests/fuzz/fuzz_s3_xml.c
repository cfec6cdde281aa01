/*
 * fuzz_s3_xml: S3's XML answers as devexd reads them (src/s3.c: the expat
 * wrapper xml_parse and the readers of devex.s3: parse_list, parse_error,
 * parse_delete_result, parse_copy_result). The bytes come from the storage
 * server, or whatever answers in its place.
 */
#include <stdint.h>

#include "fuzz_lua.h"

static const char *setup =
    "local s3 = require('devex.s3')\n"
    "local function walk(v, d)\n"
    "  check(d < 40, 'result nested too deep')\n"
    "  if type(v) == 'table' then for k, x in pairs(v) do walk(k, d + 1); walk(x, d + 1) end end\n"
    "end\n"
    "local readers = { ListBucketResult = s3.parse_list, Error = s3.parse_error,\n"
    "  DeleteResult = s3.parse_delete_result, CopyObjectResult = s3.parse_copy_result }\n"
    "function fuzz_one(s)\n"
    "  -- each reader parses the whole document: only those whose root is named in it\n"
    "  local any = false\n"
    "  for root, f in pairs(readers) do\n"
    "    if s:find(root, 1, true) then\n"
    "      any = true\n"
    "      local ok, r = pcall(f, s)\n"
    "      if ok then walk(r, 0) end\n"
    "    end\n"
    "  end\n"
    "  if not any then walk(s3.parse_error(s), 0) end\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run(setup, NULL, data, size);
}
