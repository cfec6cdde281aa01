/*
 * park.h: stream.park, a later answer's task ended while it waits, its
 * request kept by a small record until a callback resumes it (park.c).
 */
#ifndef DEVEX_PARK_H
#define DEVEX_PARK_H

#include "devex.h"

typedef struct devex_park devex_park_t;

/* stream.park(seconds, arm, expired), stream.parkable(), stream.parked() (park.c) */
int devex_park_l_park(lua_State *L);
int devex_park_l_parkable(lua_State *L);
int devex_park_l_parked(lua_State *L);
/* The park handles' metatable, made once per VM by luaopen_devex_stream. */
void devex_park_open(lua_State *L);
/* The client of a parked request went away: its answer, when made, is dropped. */
void devex_park_client_gone(devex_park_t *p);
/* At VM close: every pending park's request ends as a killed task's does. */
void devex_park_kill_all(devex_vm_t *vm);

#endif
