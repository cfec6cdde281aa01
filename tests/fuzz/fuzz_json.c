/*
 * fuzz_json: the JSON decoder (src/json.c, devex_json_decode on yajl), which
 * reads every request body, the Redis records and the API servers' answers.
 * A decoded value is encoded again, and what the encoder writes must decode.
 * The same text is decoded again keeping only some members (as the pod
 * informer decodes watch events): it must decode exactly when the whole does.
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
    int whole_ok = lua_gettop(L) > 0;
    lua_settop(L, 0);
    /* keep = { a = true, metadata = { name = true, labels = true }, items = { b = { c = true } } } */
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "a");
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "labels");
    lua_setfield(L, -2, "metadata");
    lua_createtable(L, 0, 1);
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "c");
    lua_setfield(L, -2, "b");
    lua_setfield(L, -2, "items");
    int kept_ok = devex_json_decode_keep(L, (const char *)data, size, 1, err, sizeof err) == 0;
    if (kept_ok != whole_ok) {
        /* a left-out member is still parsed and checked, but not nested in Lua: only
         * depth may tell them apart (the whole decode refuses it, the kept one need not) */
        if (!(whole_ok == 0 && kept_ok == 1)) {
            fprintf(stderr, "decoding with keep %s where the whole decode %s\n", kept_ok ? "passed" : "failed",
                    whole_ok ? "passed" : "failed");
            abort();
        }
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT); /* see fuzz_lua_call */
    return 0;
}
