/*
 * timer.h: devex.timer (timer.c): sleep(s) parks the calling task; at(s, fn)
 * and every(s, fn) run fn later as background tasks of the VM, which may use
 * every I/O primitive; now() is monotonic seconds.
 */
#ifndef DEVEX_TIMER_H
#define DEVEX_TIMER_H

#include "devex.h"

/* Stops every timer of vm (reload, shutdown). Running tick tasks finish. */
void devex_timer_vm_stop(devex_vm_t *vm);
int luaopen_devex_timer(lua_State *L);

#endif
