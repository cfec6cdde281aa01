/*
 * errors.c: one shape for every error in devexd, from the C primitives up to
 * the routes: a table {code=, message=, status=, ...} with the "devex.error"
 * metatable (tostring prints "code: message (status N)"). Primitives push it
 * with devex_push_error/devex_push_fail; Lua code makes the same values with
 * the devex.error module (new, http, is), so drivers, storage, the k8s client and
 * the REPL domain return one kind of error, and devex.app maps it to an HTTP
 * answer in one place. `status` is the HTTP status the error stands for, when
 * it stands for one; `fields` (a table) holds extra members of the JSON body
 * a route answers with (e.g. `limit` of a 429).
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

/* Pushes the shared metatable (made on first use, one per VM). */
static void push_metatable(lua_State *L)
{
    if (luaL_newmetatable(L, "devex.error")) {
        lua_pushcfunction(L, l_tostring);
        lua_setfield(L, -2, "__tostring");
    }
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
    push_metatable(L);
    lua_setmetatable(L, -2);
}

int devex_push_fail(lua_State *L, const char *code, const char *message, int status)
{
    lua_pushnil(L);
    devex_push_error(L, code, message, status);
    return 2;
}

/*
 * error.new(code, message?, status?, extra?) -> err. status: an HTTP status
 * (100..599) or nil; extra: a table whose members are copied onto the error
 * (code, message and status are the arguments' and are not overridden).
 * Made on failure paths, often from what an upstream answered: a message
 * that is not a string is converted with tostring, and a status that is not
 * an HTTP status is left out, rather than raising instead of the error.
 */
static int l_new(lua_State *L)
{
    lua_settop(L, 4); /* what is pushed below starts at 5 */
    const char *code = luaL_checkstring(L, 1);
    const char *message = lua_isnoneornil(L, 2) ? code : luaL_tolstring(L, 2, NULL);
    lua_Integer status = 0;
    int isnum = 0;
    if (!lua_isnoneornil(L, 3)) {
        status = lua_tointegerx(L, 3, &isnum);
        if (!isnum || status < 100 || status > 599)
            status = 0;
    }
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);
    devex_push_error(L, code, message, (int)status);
    if (lua_istable(L, 4)) {
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            /* the arguments win over extra's members of the same name */
            int own = lua_type(L, -2) == LUA_TSTRING;
            if (own) {
                lua_pushvalue(L, -2);
                own = lua_rawget(L, -4) != LUA_TNIL;
                lua_pop(L, 1);
            }
            if (own) {
                lua_pop(L, 1);
                continue;
            }
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
    }
    return 1;
}

/* The code an error made from an HTTP status gets (error.http). */
static const char *code_of_status(lua_Integer status)
{
    switch (status) {
    case 400: return "invalid_input";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 409: return "conflict";
    case 413: return "too_large";
    case 429: return "limit";
    case 500: return "internal";
    case 502: return "upstream";
    case 503: return "unavailable";
    case 504: return "timeout";
    default: return NULL;
    }
}

/*
 * error.http(status, message, fields?) -> err: the domain's errors, which
 * stand for one HTTP answer: code from the status ("not_found", "conflict",
 * "limit", "unavailable"... or "http_<status>"), and `fields` (extra members
 * of the JSON body, e.g. {limit = 5}) kept as err.fields.
 */
static int l_http(lua_State *L)
{
    lua_settop(L, 3); /* what is pushed below starts at 4 */
    lua_Integer status = luaL_checkinteger(L, 1);
    luaL_argcheck(L, status >= 400 && status <= 599, 1, "an HTTP error status (400..599)");
    const char *message = luaL_checkstring(L, 2);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    const char *code = code_of_status(status);
    if (!code)
        code = lua_pushfstring(L, "http_%d", (int)status);
    devex_push_error(L, code, message, (int)status);
    if (lua_istable(L, 3)) {
        lua_pushvalue(L, 3);
        lua_setfield(L, -2, "fields");
    }
    return 1;
}

/* error.is(v) -> whether v is a devex.error */
static int l_is(lua_State *L)
{
    int is = 0;
    if (lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, "devex.error");
        is = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    lua_pushboolean(L, is);
    return 1;
}

int luaopen_devex_error(lua_State *L)
{
    static const luaL_Reg fns[] = {{"new", l_new}, {"http", l_http}, {"is", l_is}, {NULL, NULL}};
    push_metatable(L); /* exists before the first is() */
    lua_pop(L, 1);
    luaL_newlib(L, fns);
    return 1;
}
