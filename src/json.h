/*
 * json.h: JSON both ways between Lua values and text, on yajl (json.c).
 * Lua module devex.json: encode(v) -> string | nil, err; decode(s [, keep]) -> v | nil, err;
 * json.null (sentinel), json.array(t) / json.object(t) mark a table's shape,
 * json.is_array(t).
 */
#ifndef DEVEX_JSON_H
#define DEVEX_JSON_H

#include <lua.h>
#include "buf.h"

#define DEVEX_JSON_MAX_DEPTH 64

/* Encodes the value at idx into out (appended). Returns 0, or -1 with a
 * message in err (a non-UTF-8 string, NaN, a cycle/too deep, a bad key type). */
int devex_json_encode(lua_State *L, int idx, devex_buf_t *out, char *err, size_t errlen);
/* Decodes text and pushes the value. Returns 0, or -1 with nothing pushed and a
 * message with the byte position in err. */
int devex_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen);
/* The same, keeping only what the table at stack index keep names (0: all):
 * a member is kept if keep has its key, whole when the value there is true,
 * filtered by it when it is a table (for an array: each element by it);
 * array elements that are not objects are kept as they are. */
int devex_json_decode_keep(lua_State *L, const char *text, size_t len, int keep, char *err, size_t errlen);
/* Marks the table at idx as an array, so it encodes as [] even when empty. */
void devex_json_mark_array(lua_State *L, int idx);
/* Pushes the json.null sentinel. */
void devex_json_push_null(lua_State *L);

int luaopen_devex_json(lua_State *L);
/* The JSON text of the json.frozen value at idx, or NULL when it is not one. */
const char *devex_json_frozen(lua_State *L, int idx, size_t *len);

#endif
