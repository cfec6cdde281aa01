/*
 * errors.h: the error values primitives return to Lua as `nil, err`
 * (errors.c): a table {code=, message=, status=} whose metatable prints
 * "code: message" with tostring, shared by every primitive; and the
 * devex.error Lua module (new, http, is) that makes the same values in Lua.
 */
#ifndef DEVEX_ERRORS_H
#define DEVEX_ERRORS_H

#include <lua.h>

/* Pushes an error table; status <= 0 leaves the field out. */
void devex_push_error(lua_State *L, const char *code, const char *message, int status);
/* Pushes nil and an error table; returns 2 for `return devex_push_fail(...)`. */
int devex_push_fail(lua_State *L, const char *code, const char *message, int status);

/* The devex.error module: error.new(code, message, status, extra),
 * error.http(status, message, fields), error.is(v). */
int luaopen_devex_error(lua_State *L);

#endif
