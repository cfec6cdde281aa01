/*
 * errors.c: one shape for the errors every primitive returns, so Lua code can
 * test err.code without knowing which primitive failed, and log lines print
 * well through tostring().
 */
#include "errors.h"

#include <lauxlib.h>

static int l_tostring(lua_State *L)
{
    lua_getfield(L, 1, "code");
    lua_getfield(L, 1, "message");
    lua_getfield(L, 1, "status");
    if (lua_isnil(L, -1))
        lua_pushfstring(L, "%s: %s", luaL_optstring(L, -3, "error"), luaL_optstring(L, -2, ""));
    else
        lua_pushfstring(L, "%s: %s (status %s)", luaL_optstring(L, -3, "error"), luaL_optstring(L, -2, ""),
                        lua_tostring(L, -1));
    return 1;
}

void devex_push_error(lua_State *L, const char *code, const char *message, int status)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, message ? message : code);
    lua_setfield(L, -2, "message");
    if (status > 0) {
        lua_pushinteger(L, status);
        lua_setfield(L, -2, "status");
    }
    if (luaL_newmetatable(L, "devex.error")) {
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_setmetatable(L, -2);
}

int devex_push_fail(lua_State *L, const char *code, const char *message, int status)
{
    lua_pushnil(L);
    devex_push_error(L, code, message, status);
    return 2;
}
