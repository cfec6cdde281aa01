/*
 * modules.c: the table of every devex.* primitive, registered in
 * package.preload of each VM (as Lua's own linit.c does for the standard
 * libraries), so `require "devex.json"` works and nothing loads from disk.
 */
#include "devex.h"
#include "crypto.h"
#include "errors.h"
#include "json.h"
#include "log.h"
#include "oauth.h"
#include "fs.h"
#include "process.h"
#include "ptys.h"
#include "proxy.h"
#include "redis.h"
#include "s3.h"
#include "smtp.h"
#include "stream.h"
#include "http.h"
#include "k8s.h"
#include "metrics.h"
#include "router.h"
#include "runtime_info.h"
#include "server.h"
#include "task_lib.h"
#include "timer.h"
#include "websocket.h"

static const luaL_Reg devex_modules[] = {
    {"devex.json", luaopen_devex_json},     {"devex.crypto", luaopen_devex_crypto}, {"devex.router", luaopen_devex_router},
    {"devex.log", luaopen_devex_log},       {"devex.timer", luaopen_devex_timer},   {"devex.runtime", luaopen_devex_runtime},
    {"devex.request", luaopen_devex_request}, {"devex.task", luaopen_devex_task},
    {"devex.redis", luaopen_devex_redis}, {"devex.oauth", luaopen_devex_oauth},
    {"devex.redis_track", luaopen_devex_redis_track}, /* invalidations for lua/services/tracked.lua */
    {"devex.http", luaopen_devex_http}, {"devex.s3", luaopen_devex_s3},
    {"devex.k8s", luaopen_devex_k8s},
    {"devex.proxy", luaopen_devex_proxy},
    {"devex.process", luaopen_devex_process},
    {"devex.metrics", luaopen_devex_metrics},
    {"devex.websocket", luaopen_devex_websocket}, /* the runner agent: lua/runner */
    {"devex.pty", luaopen_devex_pty},
    {"devex.fs", luaopen_devex_fs},
    {"devex.smtp", luaopen_devex_smtp}, /* the magic-link mail: lua/auth/mail.lua */
    {"devex.stream", luaopen_devex_stream}, /* streamed bodies: the session event stream */
    {"devex.error", luaopen_devex_error},   /* the one error shape (errors.c) */
    {NULL, NULL},
};

void devex_modules_preload(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *m = devex_modules; m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
    /* the request metatable must exist before the first request arrives */
    luaL_requiref(L, "devex.request", luaopen_devex_request, 0);
    lua_pop(L, 1);
}
