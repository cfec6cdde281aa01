/*
 * runtime_info.c: devex.runtime, what the Lua side needs to know about the process
 * it runs in: version, config file, worker id, VM generation, and exe (the
 * path of the devexd binary, which the local runtime runs again for its
 * sandbox helpers and runner agents; "" when /proc is not mounted), and
 * lua_dir (the Lua directories such a child is given).
 */
#include "runtime_info.h"
#include "settings.h"

#include <unistd.h>

static int l_worker_id(lua_State *L)
{
    lua_pushinteger(L, devex_worker_id(devex_worker_current()));
    return 1;
}

static int l_generation(lua_State *L)
{
    devex_vm_t *vm = devex_vm_of(L);
    lua_pushinteger(L, vm ? (lua_Integer)vm->generation : 0);
    return 1;
}

int luaopen_devex_runtime(lua_State *L)
{
    static const luaL_Reg fns[] = {{"worker_id", l_worker_id}, {"generation", l_generation}, {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_pushstring(L, DEVEX_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, devex_settings.conf_path ? devex_settings.conf_path : "");
    lua_setfield(L, -2, "conf_path");
    lua_pushinteger(L, devex_settings.threads);
    lua_setfield(L, -2, "threads");
    /* the Lua directories: what a `devexd runner` child needs to find its app */
    lua_pushstring(L, devex_settings.lua_dirs ? devex_settings.lua_dirs : "");
    lua_setfield(L, -2, "lua_dir");
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    lua_pushlstring(L, exe, n > 0 ? (size_t)n : 0);
    lua_setfield(L, -2, "exe");
    return 1;
}
