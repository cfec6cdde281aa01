/*
 * fuzz_json: the JSON decoder (src/json.c, devex_json_decode on yajl), which
 * reads every request body, the Redis records and the API servers' answers.
 * A decoded value is encoded again, and what the encoder writes must decode.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "buf.h"
#include "fuzz_lua.h"
#include "json.h"

static lua_State *L;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL)
        L = fuzz_lua_new();
    char err[256];
    if (devex_json_decode(L, (const char *)data, size, err, sizeof err) == 0) {
        devex_buf_t out = {0};
        char eerr[256];
        if (devex_json_encode(L, -1, &out, eerr, sizeof eerr) == 0) {
            char derr[256];
            if (devex_json_decode(L, out.data, out.len, derr, sizeof derr) != 0) {
                fprintf(stderr, "the encoder wrote JSON its decoder refuses: %s\n", derr);
                abort();
            }
        }
        devex_buf_free(&out);
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT); /* see fuzz_lua_call */
    return 0;
}
