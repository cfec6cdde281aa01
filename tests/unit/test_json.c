/*
 * test_json.c: unit tests of json.c, through the devex.json Lua module (how
 * the app uses it) and through the C API (how request handling uses it).
 * Lua snippets call check(cond, what), which counts into unit.h's totals so
 * a failing Lua assertion is reported like a C one, with its Lua line.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>

#include "json.h"
#include "unit.h"

static const char *prelude =
    "json = require 'devex.json'\n"
    /* deep comparison that also tells integers from floats */
    "function same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then return math.type(a) == math.type(b) and a == b end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "function roundtrip(v)\n"
    "  local s, err = json.encode(v)\n"
    "  if not s then return nil, err end\n"
    "  return json.decode(s)\n"
    "end\n";

static const char *test_roundtrip =
    "local docs = {\n"
    "  [[{\"a\":1,\"b\":[true,false,null,\"x\",1.5,-2],\"c\":{\"d\":{}},\"e\":[]}]],\n"
    "  [=[[1,[2,[3,[4]]],{\"k\":\"v\"}]]=],\n"
    "  '\"just a string\"', '42', '-7', '3.25', 'true', 'false', 'null', '\"\"',\n"
    "  [[{\"\":\"empty key\",\"unicode \\u00e9\":\"caf\\u00e9\"}]],\n"
    "}\n"
    "for _, d in ipairs(docs) do\n"
    "  local v, err = json.decode(d)\n"
    "  check(err == nil, d .. ': ' .. tostring(err))\n"
    "  local v2, err2 = roundtrip(v)\n"
    "  check(err2 == nil and same(v, v2), 'round trip of ' .. d)\n"
    "end\n"
    /* scalars and small documents whose text is fixed (no key order involved) */
    "check(json.encode({a = 1}) == '{\"a\":1}', 'single key object')\n"
    "check(json.encode({1, 2, 3}) == '[1,2,3]', 'sequence is an array')\n"
    "check(json.encode({'a', {b = {true}}}) == '[\"a\",{\"b\":[true]}]', 'nested')\n"
    "check(json.encode('x') == '\"x\"', 'top-level string')\n"
    "check(json.encode(true) == 'true', 'top-level boolean')\n"
    "check(json.encode(12) == '12', 'top-level integer')\n"
    "check(json.encode('a/b') == '\"a/b\"', 'solidus is not escaped')\n"
    "check(json.encode('caf\\u{e9} \\u{1F600}') == '\"caf\\u{e9} \\u{1F600}\"', 'UTF-8 passes through')\n"
    "local v = json.decode('{\"a\":1,\"a\":2}')\n"
    "check(v.a == 2, 'duplicate key: last wins')\n"
    "local v = json.decode(' \\t\\r\\n[ 1 , 2 ]\\n ')\n"
    "check(same(v, {1, 2}), 'whitespace around tokens')\n"
    /* a sequence mixed with other keys is an object with string keys */
    "local v = json.decode(json.encode({10, 20, x = 1}))\n"
    "check(same(v, {['1'] = 10, ['2'] = 20, x = 1}), 'mixed table is an object')\n"
    "local v = json.decode(json.encode({[1] = 'a', [3] = 'c'}))\n"
    "check(same(v, {['1'] = 'a', ['3'] = 'c'}), 'sparse table is an object')\n"
    "local v = json.decode(json.encode({[-5] = 'neg'}))\n"
    "check(v['-5'] == 'neg', 'integer keys become decimal strings')\n";

static const char *test_null =
    "check(type(json.null) == 'userdata', 'json.null is a lightuserdata')\n"
    "check(json.decode('null') == json.null, 'null decodes to json.null')\n"
    "local v = json.decode('[null, 1, null]')\n"
    "check(#v == 3 and v[1] == json.null and v[3] == json.null, 'nulls keep array positions')\n"
    "check(json.decode('{\"a\":null}').a == json.null, 'null member is kept')\n"
    "check(json.encode(json.null) == 'null', 'json.null encodes')\n"
    "check(json.encode({json.null, 1}) == '[null,1]', 'json.null in an array')\n"
    "check(json.encode({a = json.null}) == '{\"a\":null}', 'json.null in an object')\n"
    "check(json.encode(nil) == 'null', 'nil encodes as null')\n";

static const char *test_shapes =
    "check(json.encode(json.decode('[]')) == '[]', 'decoded empty array stays an array')\n"
    "check(json.encode(json.decode('{}')) == '{}', 'decoded empty object stays an object')\n"
    "check(json.encode(json.decode('[[],{}]')) == '[[],{}]', 'nested empties')\n"
    "check(json.encode(json.array()) == '[]', 'json.array() is []')\n"
    "check(json.encode(json.object()) == '{}', 'json.object() is {}')\n"
    "check(json.encode({}) == '{}', 'unmarked empty table is an object')\n"
    "local t = {1, 2}\n"
    "check(json.array(t) == t, 'json.array returns its argument')\n"
    "check(json.encode(json.object({'a', 'b'})) == '{\"1\":\"a\",\"2\":\"b\"}' or\n"
    "      json.encode(json.object({'a', 'b'})) == '{\"2\":\"b\",\"1\":\"a\"}', 'json.object forces an object')\n"
    "check(json.is_array(json.array()), 'is_array of a marked empty table')\n"
    "check(json.is_array({1, 2}), 'is_array of a sequence')\n"
    "check(not json.is_array({}), 'is_array of an empty table')\n"
    "check(not json.is_array({a = 1}), 'is_array of a map')\n"
    "check(not json.is_array({1, 2, x = 3}), 'is_array of a mixed table')\n"
    "check(not json.is_array(json.decode('{}')), 'is_array of a decoded object')\n"
    "check(json.is_array(json.decode('[]')), 'is_array of a decoded array')\n"
    "check(not json.is_array('x'), 'is_array of a non-table')\n"
    "local a = json.decode('[]')\n"
    "a[1] = 'x'\n"
    "check(json.encode(a) == '[\"x\"]', 'decoded array stays an array when filled')\n"
    "check(not pcall(json.array, 'x'), 'json.array rejects a non-table')\n";

static const char *test_numbers =
    "local v = json.decode('9007199254740993')\n"
    "check(math.type(v) == 'integer' and v == 9007199254740993, '2^53+1 is exact')\n"
    "local v = json.decode('-9223372036854775808')\n"
    "check(math.type(v) == 'integer' and v == math.mininteger, 'INT64_MIN')\n"
    "local v = json.decode('9223372036854775807')\n"
    "check(math.type(v) == 'integer' and v == math.maxinteger, 'INT64_MAX')\n"
    "check(json.encode(math.mininteger) == '-9223372036854775808', 'encode INT64_MIN')\n"
    "check(json.encode(math.maxinteger) == '9223372036854775807', 'encode INT64_MAX')\n"
    "check(json.encode(9007199254740993) == '9007199254740993', 'encode 2^53+1')\n"
    "local v = json.decode('9223372036854775808')\n"
    "check(math.type(v) == 'float', 'INT64_MAX+1 is a float')\n"
    "local v = json.decode('18446744073709551616')\n"
    "check(math.type(v) == 'float' and v == 2^64, '2^64 is a float')\n"
    "local v = json.decode('1e400')\n"
    "check(math.type(v) == 'float' and v == math.huge, '1e400 is a float')\n"
    "local v = json.decode('-0')\n"
    "check(math.type(v) == 'integer' and v == 0, '-0 is integer zero')\n"
    "for _, s in ipairs({'1.0', '1e2', '1E2', '-1.5e-3', '0.0', '2e0'}) do\n"
    "  check(math.type(json.decode(s)) == 'float', s .. ' is a float')\n"
    "end\n"
    "check(json.encode(1.5) == '1.5', 'encode 1.5')\n"
    "check(json.encode(1.0) == '1.0', 'encode 1.0 keeps the float')\n"
    "check(json.encode(-0.0) == '-0.0', 'encode -0.0')\n"
    "check(json.encode(0.1) == '0.1', 'shortest form of 0.1')\n"
    "check(json.encode(1e20) == '1e+20', 'exponent form')\n"
    "check(json.encode(2^53) == '9007199254740992.0', '2^53 as a float')\n"
    "check(math.type(json.decode(json.encode(1.0))) == 'float', '1.0 decodes as a float')\n"
    "check(math.type(json.decode(json.encode(1.5))) == 'float', '1.5 decodes as a float')\n"
    "for _, x in ipairs({1/3, 2/3, 0.1 + 0.2, 1e-300, 1.7976931348623157e308, 5e-324, -123.456, 2^63}) do\n"
    "  local y = json.decode(json.encode(x))\n"
    "  check(y == x and math.type(y) == 'float', 'float round trip ' .. string.format('%.17g', x))\n"
    "end\n"
    "local long = '1' .. string.rep('0', 100)\n"
    "local v = json.decode(long)\n"
    "check(math.type(v) == 'float' and v == 1e100, '101-digit integer literal')\n"
    "local v = json.decode('0.' .. string.rep('5', 300))\n"
    "check(math.type(v) == 'float' and math.abs(v - 5/9) < 1e-15, '300-digit fraction')\n"
    "local s, err = json.encode(0/0)\n"
    "check(s == nil and err:find('NaN'), 'NaN rejected: ' .. tostring(err))\n"
    "local s, err = json.encode({x = math.huge})\n"
    "check(s == nil and err:find('infinity'), 'infinity rejected: ' .. tostring(err))\n"
    "local s, err = json.encode(-math.huge)\n"
    "check(s == nil, '-infinity rejected')\n"
    "for _, bad in ipairs({'01', '+1', '.5', '1.', '1e', '-', '0x10', 'NaN', 'Infinity', '1.5e+'}) do\n"
    "  check(json.decode(bad) == nil, 'bad number ' .. bad)\n"
    "end\n";

static const char *test_strings =
    "check(json.decode('\"\\\\u00e9\"') == '\\xc3\\xa9', '\\\\u00e9 decodes to UTF-8')\n"
    "check(json.decode('\"\\\\ud83d\\\\ude00\"') == '\\xf0\\x9f\\x98\\x80', 'surrogate pair')\n"
    "check(json.decode('\"\\\\u0000\"') == '\\0', '\\\\u0000 is a NUL byte')\n"
    "check(json.decode([[\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"]]) == 'a\"b\\\\c/d\\b\\f\\n\\r\\t', 'simple escapes')\n"
    "check(json.decode('{\"k\\\\u00e9\":1}')['k\\xc3\\xa9'] == 1, 'escapes in keys')\n"
    "check(json.encode('a\\1b') == '\"a\\\\u0001b\"', 'control char escaped: ' .. json.encode('a\\1b'))\n"
    "check(json.encode('\\0') == '\"\\\\u0000\"', 'NUL escaped')\n"
    "check(json.encode('\\31') == '\"\\\\u001f\"' or json.encode('\\31') == '\"\\\\u001F\"', 'US escaped')\n"
    "check(json.encode('q\"\\\\\\n\\r\\t\\b\\f') == [[\"q\\\"\\\\\\n\\r\\t\\b\\f\"]], 'short escapes: ' .. json.encode('q\"\\\\\\n\\r\\t\\b\\f'))\n"
    "check(json.decode(json.encode('\\0\\1\\31 \\127')) == '\\0\\1\\31 \\127', 'control chars round trip')\n"
    "local raw = '\"\\x01\"'\n"
    "check(json.decode(raw) == nil, 'raw control char in a string rejected')\n"
    /* invalid UTF-8, both ways: broken sequences, overlong forms, surrogates,
     * code points above U+10FFFF */
    "for _, b in ipairs({'\\xff', '\\xc3', 'a\\x80', '\\xc0\\xaf', '\\xe0\\x80\\xaf', '\\xed\\xa0\\x80',\n"
    "                    '\\xf4\\x90\\x80\\x80', '\\xf8\\x88\\x80\\x80\\x80', '\\xe2\\x82'}) do\n"
    "  local hex = b:gsub('.', function(c) return string.format('%02x', c:byte()) end)\n"
    "  local v, err = json.decode('\"' .. b .. '\"')\n"
    "  check(v == nil and err:find('byte'), 'decode rejects ' .. hex .. ': ' .. tostring(err))\n"
    "  local v, err = json.decode('{\"' .. b .. '\":1}')\n"
    "  check(v == nil, 'decode rejects key ' .. hex)\n"
    "  local s, err = json.encode(b)\n"
    "  check(s == nil and err == 'string is not valid UTF-8', 'encode rejects ' .. hex .. ': ' .. tostring(err))\n"
    "  local s, err = json.encode({[b] = 1})\n"
    "  check(s == nil, 'encode rejects key ' .. hex)\n"
    "end\n"
    "local v, err = json.decode('\"\\\\udc00\"')\n"
    "check(v == nil, 'lone low surrogate escape rejected')\n"
    "for _, ok in ipairs({'\\u{7ff}', '\\u{800}', '\\u{d7ff}', '\\u{e000}', '\\u{ffff}', '\\u{10000}', '\\u{10ffff}'}) do\n"
    "  check(json.decode(json.encode(ok)) == ok, 'valid boundary code point round trips')\n"
    "end\n"
    "local big = string.rep('\\u{e9}abc', 10000)\n"
    "check(json.decode(json.encode(big)) == big, 'long string round trip')\n";

static const char *test_frozen =
    "local f = json.frozen({status = 'ok'})\n"
    "check(type(f) == 'userdata', 'frozen is a userdata')\n"
    "check(tostring(f) == '{\"status\":\"ok\"}', 'tostring gives the JSON text: ' .. tostring(f))\n"
    "check(json.encode(f) == '{\"status\":\"ok\"}', 'encode of a frozen value is its text')\n"
    "check(json.encode({a = f, b = {f, 1}}):find('\"a\":{\"status\":\"ok\"}', 1, true), 'nested in an object')\n"
    "check(json.encode({f, f}) == '[{\"status\":\"ok\"},{\"status\":\"ok\"}]', 'nested in an array')\n"
    "check(json.decode(json.encode({x = f})).x.status == 'ok', 'round trip')\n"
    "check(tostring(json.frozen('a\"b')) == '\"a\\\\\"b\"', 'a string: ' .. tostring(json.frozen('a\"b')))\n"
    "check(tostring(json.frozen(json.array())) == '[]', 'an empty array')\n"
    "check(getmetatable(f) == 'frozen JSON value', 'metatable is protected')\n"
    "local ok, err = pcall(json.frozen, {f = print})\n"
    "check(not ok and err:find('cannot encode function'), 'frozen of a bad value raises: ' .. tostring(err))\n"
    "local s, err = json.encode({io.stdout})\n"
    "check(s == nil and err:find('cannot encode'), 'other userdata still refused: ' .. tostring(err))\n";

static const char *test_errors =
    "local v, err = json.decode('{\"a\":1,}')\n"
    "check(v == nil and err:find('at byte 8', 1, true), 'error has the byte position: ' .. tostring(err))\n"
    "check(err:match('^invalid JSON at byte 8: '), 'error format: ' .. tostring(err))\n"
    "for _, bad in ipairs({'[1] x', '1 2', '{}{}', '[]]', 'null,', '\"a\" \"b\"'}) do\n"
    "  local v, err = json.decode(bad)\n"
    "  check(v == nil and err:find('invalid JSON at byte'), 'trailing garbage rejected: ' .. bad)\n"
    "end\n"
    "local v, err = json.decode('[1] x')\n"
    "check(err and err:find('trailing garbage'), 'trailing garbage message: ' .. tostring(err))\n"
    "for _, bad in ipairs({'', ' ', '[', '[1,', '{\"a\"', '{\"a\":', '\"abc', '[1,]', '{,}', \"{'a':1}\",\n"
    "                      '[1 2]', 'tru', 'nul', '/* c */ 1', '// c\\n1', '{\"a\" 1}', '{1:2}', 'undefined'}) do\n"
    "  local v, err = json.decode(bad)\n"
    "  check(v == nil and type(err) == 'string', 'rejected: ' .. bad)\n"
    "end\n"
    "local v, err = json.decode('[1,')\n"
    "check(err and err:find('at byte 3'), 'premature end at the end: ' .. tostring(err))\n"
    "check(not pcall(json.decode, {}), 'decode of a non-string raises')\n"
    "check(not pcall(json.decode), 'decode of nothing raises')\n"
    "check(not pcall(json.encode), 'encode of nothing raises')\n"
    "local s, err = json.encode({f = print})\n"
    "check(s == nil and err:find('cannot encode function'), 'function rejected: ' .. tostring(err))\n"
    "check(err:find('$[\"f\"]', 1, true), 'error has the path: ' .. tostring(err))\n"
    "local s, err = json.encode({1, {x = {2, coroutine.create(print)}}})\n"
    "check(s == nil and err == 'cannot encode thread at $[2][\"x\"][2]', 'nested path: ' .. tostring(err))\n"
    "local s, err = json.encode(io.stdout)\n"
    "check(s == nil and err:find('cannot encode'), 'userdata rejected: ' .. tostring(err))\n"
    "local s, err = json.encode({[true] = 1})\n"
    "check(s == nil and err:find('key'), 'boolean key rejected: ' .. tostring(err))\n"
    "local s, err = json.encode({[1.5] = 1})\n"
    "check(s == nil and err:find('float'), 'float key rejected: ' .. tostring(err))\n";

static const char *test_depth =
    "local function nested(n) return string.rep('[', n) .. string.rep(']', n) end\n"
    "local v, err = json.decode(nested(64))\n"
    "check(v ~= nil, '64 nested arrays decode: ' .. tostring(err))\n"
    "check(json.encode(v) == nested(64), '64 nested arrays encode')\n"
    "local v, err = json.decode(nested(65))\n"
    "check(v == nil and err:find('too deeply nested'), '65 nested arrays rejected: ' .. tostring(err))\n"
    "check(err:find('at byte 65', 1, true), 'depth error position: ' .. tostring(err))\n"
    "local v, err = json.decode(string.rep('{\"a\":', 64) .. '1' .. string.rep('}', 64))\n"
    "check(v ~= nil, '64 nested objects decode: ' .. tostring(err))\n"
    "local v, err = json.decode(string.rep('{\"a\":', 65) .. '1' .. string.rep('}', 65))\n"
    "check(v == nil, '65 nested objects rejected')\n"
    "local v, err = json.decode(string.rep('[', 100000))\n"
    "check(v == nil and err:find('too deeply nested'), 'very deep input rejected early')\n"
    "local t = {}\n"
    "local inner = t\n"
    "for i = 2, 64 do inner[1] = json.array() inner = inner[1] end\n"
    "check(json.encode(t) == nested(64), '64 nested tables encode')\n"
    "inner[1] = json.array()\n"
    "local s, err = json.encode(t)\n"
    "check(s == nil and err:find('too deeply nested'), '65 nested tables rejected: ' .. tostring(err))\n"
    "local cyc = {}\n"
    "cyc.self = cyc\n"
    "local s, err = json.encode(cyc)\n"
    "check(s == nil and err:find('too deeply nested'), 'cycle rejected')\n"
    "local a = {}\n"
    "local b = {a}\n"
    "a[1] = b\n"
    "check(json.encode(a) == nil, 'indirect cycle rejected')\n"
    /* the same table twice is not a cycle */
    "local shared = {1}\n"
    "check(json.encode({shared, shared}) == '[[1],[1]]', 'shared subtable is fine')\n";

static const char *test_big =
    "local t = {}\n"
    "for i = 1, 10000 do t[i] = {id = i, name = 'n' .. i, tags = json.array(), score = i / 4} end\n"
    "local s = assert(json.encode(t))\n"
    "local v = assert(json.decode(s))\n"
    "check(#v == 10000 and same(v[1234], t[1234]), 'big document round trip')\n"
    "check(json.encode(v[5].tags) == '[]', 'empty array inside a big document')\n";

/* The C API: the buffer is appended to, the stack is left as it was, and a
 * failure leaves neither output nor stack garbage. */
static void test_c_api(lua_State *L)
{
    int top = lua_gettop(L);
    devex_buf_t b = DEVEX_BUF_INIT;
    char err[256];
    devex_buf_append_str(&b, "prefix:");

    lua_createtable(L, 0, 2);
    lua_pushinteger(L, INT64_MAX);
    lua_setfield(L, -2, "n");
    CHECK(devex_json_encode(L, -1, &b, err, sizeof(err)) == 0);
    CHECK_STR(b.data, "prefix:{\"n\":9223372036854775807}");
    CHECK(lua_gettop(L) == top + 1);

    /* a failure after partial output rolls the buffer back */
    lua_pushcfunction(L, unit_lua_check);
    lua_setfield(L, -2, "f");
    size_t before = b.len;
    CHECK(devex_json_encode(L, -1, &b, err, sizeof(err)) == -1);
    CHECK(b.len == before && b.data[before] == '\0');
    CHECK(strstr(err, "cannot encode function") != NULL);
    CHECK(lua_gettop(L) == top + 1);
    lua_pop(L, 1);

    devex_buf_reset(&b);
    devex_json_push_null(L);
    CHECK(devex_json_encode(L, -1, &b, err, sizeof(err)) == 0);
    CHECK_STR(b.data, "null");
    lua_pop(L, 1);

    /* errors with a tiny or missing message buffer */
    lua_pushnumber(L, 0.0 / 0.0);
    char tiny[4];
    CHECK(devex_json_encode(L, -1, &b, tiny, sizeof(tiny)) == -1);
    CHECK(strlen(tiny) == 3);
    CHECK(devex_json_encode(L, -1, &b, NULL, 0) == -1);
    lua_pop(L, 1);

    const char *doc = "{\"a\":[1,2.5,\"s\",null,{}],\"b\":true}";
    CHECK(devex_json_decode(L, doc, strlen(doc), err, sizeof(err)) == 0);
    CHECK(lua_gettop(L) == top + 1 && lua_istable(L, -1));
    lua_getfield(L, -1, "a");
    lua_rawgeti(L, -1, 2);
    CHECK(lua_isnumber(L, -1) && !lua_isinteger(L, -1) && lua_tonumber(L, -1) == 2.5);
    lua_pop(L, 2);
    devex_buf_reset(&b);
    CHECK(devex_json_encode(L, -1, &b, err, sizeof(err)) == 0);
    lua_pop(L, 1);
    CHECK(devex_json_decode(L, b.data, b.len, err, sizeof(err)) == 0);
    lua_getfield(L, -1, "a");
    lua_rawgeti(L, -1, 5);
    devex_buf_reset(&b);
    CHECK(devex_json_encode(L, -1, &b, err, sizeof(err)) == 0);
    CHECK_STR(b.data, "{}");
    lua_pop(L, 3);

    /* failures deep inside a document leave the stack alone */
    const char *bad[] = {
        "{\"a\":[1,2,{\"b\":[3,", "{\"a\":[1,2,{\"b\":[3,]}]}", "[[[[[[\"\xff\"]]]]]]", "{\"a\":{\"b\":1}} x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(devex_json_decode(L, bad[i], strlen(bad[i]), err, sizeof(err)) == -1);
        CHECK(strncmp(err, "invalid JSON at byte ", 21) == 0);
        CHECK(lua_gettop(L) == top);
    }
    /* the text need not be NUL-terminated: only len bytes are read */
    CHECK(devex_json_decode(L, "[1]]]]", 3, err, sizeof(err)) == 0);
    lua_pop(L, 1);
    CHECK(devex_json_decode(L, "12345", 2, err, sizeof(err)) == 0);
    CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 12);
    lua_pop(L, 1);
    CHECK(devex_json_decode(L, "[1]", 3, NULL, 0) == 0);
    lua_pop(L, 1);
    CHECK(devex_json_decode(L, "[1", 2, NULL, 0) == -1);
    CHECK(lua_gettop(L) == top);
    devex_buf_free(&b);
}

/* The C functions must work on a state that never loaded the module: the
 * marker metatables are created on first use. */
static void test_bare_state(void)
{
    lua_State *L = luaL_newstate();
    devex_buf_t b = DEVEX_BUF_INIT;
    char err[256];
    CHECK(devex_json_decode(L, "[[],{}]", 7, err, sizeof(err)) == 0);
    CHECK(devex_json_encode(L, -1, &b, err, sizeof(err)) == 0);
    CHECK_STR(b.data, "[[],{}]");
    CHECK(lua_gettop(L) == 1);
    devex_buf_free(&b);
    lua_close(L);

    /* and encode alone, before any metatable exists */
    L = luaL_newstate();
    lua_newtable(L);
    CHECK(devex_json_encode(L, 1, &b, err, sizeof(err)) == 0);
    CHECK_STR(b.data, "{}");
    devex_buf_free(&b);
    lua_close(L);
}

/* Decoding inside a coroutine (every request runs in one). */
static const char *test_coroutine =
    "local co = coroutine.wrap(function()\n"
    "  local v = json.decode('{\"a\":[1,2,3]}')\n"
    "  coroutine.yield(#v.a)\n"
    "  return json.encode(v.a)\n"
    "end)\n"
    "check(co() == 3, 'decode in a coroutine')\n"
    "check(co() == '[1,2,3]', 'encode in a coroutine')\n";

/* json.decode(text, keep): only what keep names is made (watch events of
 * pods: the informer keeps a few fields of objects of tens of KB) */
static const char *test_keep =
    "local doc = [==[{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\","
    "\"labels\":{\"a\":\"1\",\"b\":\"2\"},\"managedFields\":[{\"x\":{\"y\":[1,{\"z\":2}]}}],\"uid\":\"u\"},"
    "\"status\":{\"phase\":\"Running\",\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"lastProbeTime\":null},"
    "{\"type\":\"PodScheduled\",\"status\":\"True\",\"extra\":{\"deep\":[[1]]}}],"
    "\"podIPs\":[{\"ip\":\"10.0.0.1\"}],\"hostIP\":\"h\"},\"spec\":{\"big\":[1,2,3]}}}]==]\n"
    "local keep = { type = true, object = { kind = true, metadata = { name = true, labels = true, uid = true },\n"
    "  status = { phase = true, conditions = { type = true, status = true }, podIPs = true } } }\n"
    "local v, err = json.decode(doc, keep)\n"
    "check(err == nil, tostring(err))\n"
    "check(same(v, { type = 'MODIFIED', object = { kind = 'Pod', metadata = { name = 'p', labels = { a = '1', b = '2' }, uid = 'u' },\n"
    "  status = { phase = 'Running', conditions = { { type = 'Ready', status = 'True' }, { type = 'PodScheduled', status = 'True' } },\n"
    "  podIPs = { { ip = '10.0.0.1' } } } } }), 'only what keep names: ' .. json.encode(v))\n"
    "check(getmetatable(v.object.status.conditions) == getmetatable(json.decode('[]')), 'a kept array is still an array')\n"
    /* a member kept whole is not filtered; keep = false or a missing key leaves it out */
    "v = json.decode('{\"a\":{\"b\":{\"c\":1}},\"d\":2,\"e\":3}', { a = true, d = false })\n"
    "check(same(v, { a = { b = { c = 1 } } }), 'whole and left out: ' .. json.encode(v))\n"
    /* a top-level array: each element by keep; scalars in arrays are kept */
    "v = json.decode('[{\"a\":1,\"b\":2},3,[{\"a\":4,\"c\":5}]]', { a = true })\n"
    "check(same(v, { { a = 1 }, 3, { { a = 4 } } }), 'top-level array: ' .. json.encode(v))\n"
    /* a projection asking for an object where there is a scalar keeps the scalar */
    "v = json.decode('{\"a\":\"s\",\"b\":[1,2]}', { a = { x = true }, b = { y = true } })\n"
    "check(same(v, { a = 's', b = { 1, 2 } }), 'scalar under a table projection: ' .. json.encode(v))\n"
    /* what is left out is still checked: a syntax error or bad UTF-8 there fails the decode */
    "local bad, berr = json.decode('{\"a\":1,\"skip\":{\"x\":[1,}}', { a = true })\n"
    "check(bad == nil and berr:match('invalid JSON'), 'error inside a left-out member: ' .. tostring(berr))\n"
    "bad, berr = json.decode('{\"a\":1,\"skip\":\"' .. string.char(255) .. '\"}', { a = true })\n"
    "check(bad == nil and berr:match('UTF'), 'invalid UTF-8 inside a left-out member: ' .. tostring(berr))\n"
    /* deep nesting inside a left-out member does not use Lua stack or depth */
    "local deep = string.rep('[', 5000) .. string.rep(']', 5000)\n"
    "v, err = json.decode('{\"a\":1,\"skip\":' .. deep .. '}', { a = true })\n"
    "check(v and v.a == 1 and v.skip == nil, 'deep left-out member: ' .. tostring(err))\n"
    "check(not pcall(json.decode, '{}', 'not a table'), 'keep must be a table')\n";

int main(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "devex.json", luaopen_devex_json, 0);
    lua_pop(L, 1);
    /* require 'devex.json' finds the module through package.loaded */
    lua_register(L, "check", unit_lua_check);

    unit_lua_run(L, "prelude", prelude);
    unit_lua_run(L, "roundtrip", test_roundtrip);
    unit_lua_run(L, "null", test_null);
    unit_lua_run(L, "shapes", test_shapes);
    unit_lua_run(L, "numbers", test_numbers);
    unit_lua_run(L, "strings", test_strings);
    unit_lua_run(L, "errors", test_errors);
    unit_lua_run(L, "frozen", test_frozen);
    unit_lua_run(L, "depth", test_depth);
    unit_lua_run(L, "big", test_big);
    unit_lua_run(L, "coroutine", test_coroutine);
    unit_lua_run(L, "keep", test_keep);
    test_c_api(L);
    CHECK(lua_gettop(L) == 0);
    lua_close(L);
    test_bare_state();
    return unit_done("test_json");
}
