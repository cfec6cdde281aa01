/*
 * vm.c: the Lua VM of a worker thread. A VM holds the app, the policy and the
 * config; a reload (SIGHUP) builds a new VM beside the old one, and the old
 * one is closed once its last in-flight task has ended, so requests that
 * started on the old code finish on it and no connection is dropped.
 */
#include "devex.h"
#include "log.h"
#include "settings.h"
#include "heaps.h"
#include "park.h"
#include "timer.h"

#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t next_generation = 1;

/* the methods nearly every request has, most frequent first: their strings
 * are pushed from the registry instead of being looked up in Lua's string
 * table each time */
const char *const devex_methods[DEVEX_NMETHODS] = {"GET",   "POST",    "HEAD",    "DELETE", "PUT",
                                                   "PATCH", "OPTIONS", "CONNECT", "TRACE"};

int devex_method_index(const char *m, size_t n)
{
    for (int i = 0; i < DEVEX_NMETHODS; i++)
        if (strlen(devex_methods[i]) == n && memcmp(devex_methods[i], m, n) == 0)
            return i;
    return -1;
}

static int traceback_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        msg = luaL_tolstring(L, 1, NULL);
    luaL_traceback(L, L, msg, 1);
    return 1;
}

devex_vm_t *devex_vm_new(devex_worker_t *w, char *err, size_t errlen)
{
    devex_vm_t *vm = calloc(1, sizeof(*vm));
    if (vm == NULL)
        abort();
    vm->worker = w;
    vm->dispatch_ref = LUA_NOREF;
    for (int i = 0; i < DEVEX_NMETHODS; i++)
        vm->method_refs[i] = LUA_NOREF;
    vm->generation = __atomic_fetch_add(&next_generation, 1, __ATOMIC_RELAXED);
    lua_State *L = devex_lua_newstate(); /* heaps.c */
    if (L == NULL)
        abort();
    vm->L = L;
    *(devex_task_t **)lua_getextraspace(L) = NULL;
    luaL_openlibs(L);
    /* requests make short-lived garbage (a table or two each): the
     * generational collector handles that with far less work */
    lua_gc(L, LUA_GCGEN, 0, 0);
    lua_pushlightuserdata(L, vm);
    lua_setfield(L, LUA_REGISTRYINDEX, "devex.vm");
    for (int i = 0; i < DEVEX_NMETHODS; i++) {
        lua_pushstring(L, devex_methods[i]);
        vm->method_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    devex_modules_preload(L);
    devex_settings_apply_path(L);

    lua_pushcfunction(L, traceback_handler);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "devex.boot");
    if (lua_pcall(L, 1, 1, 1) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    lua_getfield(L, -1, "start");
    lua_pushstring(L, devex_settings.app_module);
    if (lua_pcall(L, 1, 1, 1) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    if (!lua_isfunction(L, -1)) {
        snprintf(err, errlen, "devex.boot.start did not return a dispatch function");
        goto fail;
    }
    vm->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    return vm;
fail:
    devex_vm_close(vm);
    return NULL;
}

devex_vm_t *devex_vm_of(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "devex.vm");
    devex_vm_t *vm = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return vm;
}

static void vm_free(devex_vm_t *vm)
{
    devex_timer_vm_stop(vm);
    lua_close(vm->L);
    free(vm);
}

void devex_vm_retire(devex_vm_t *vm)
{
    vm->retired = true;
    devex_timer_vm_stop(vm); /* background jobs stop at reload; the new VM starts its own */
    if (vm->ntasks == 0)
        vm_free(vm);
}

void devex_vm_close(devex_vm_t *vm)
{
    devex_timer_vm_stop(vm);
    vm->retired = true;
    vm->ntasks++; /* keep devex_vm_task_ended from freeing while we kill */
    while (vm->tasks != NULL)
        devex_task_kill(vm->tasks);
    devex_park_kill_all(vm); /* park.c: answers waiting with no task */
    vm->ntasks--;
    vm_free(vm);
}

void devex_vm_task_ended(devex_vm_t *vm)
{
    if (vm->retired && vm->ntasks == 0)
        vm_free(vm);
}
