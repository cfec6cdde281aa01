/*
 * task_lib.h: devex.task (task_lib.c), sibling tasks inside one request:
 * task.spawn(fn, ...) and handle:wait(). The task machinery itself is task.c.
 */
#ifndef DEVEX_TASK_LIB_H
#define DEVEX_TASK_LIB_H

#include "devex.h"

int luaopen_devex_task(lua_State *L);

#endif
