/*
 * runtime_info.h: devex.runtime (runtime_info.c), facts about the running
 * process for Lua: version, config file, worker id, VM generation, exe path.
 */
#ifndef DEVEX_RUNTIME_INFO_H
#define DEVEX_RUNTIME_INFO_H

#include "devex.h"

int luaopen_devex_runtime(lua_State *L);

#endif
