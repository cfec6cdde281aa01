/*
 * process.h: devex.process (process.c), child processes for the single-host
 * local runtime: a session runs its template's runner as a child of devexd.
 *
 *   local h, err = process.spawn{ command = "/usr/bin/python3", args = {"main.py"},
 *                                 cwd = dir, env = {REPL_ID = id, PORT = port},
 *                                 inherit_env = true,          -- adds PATH, HOME, LANG
 *                                 stdout = "/path/log" | "inherit" | "ignore" | nil,
 *                                 stderr = ...,                -- nil: "ignore"
 *                                 on_exit = function(code, signal, pid) end }
 *   h.pid; h:running()
 *   h:wait([timeout])       -> code, signal | nil, {code="timeout"}
 *   h:kill([sig[, group]])  -> true | nil, err     (group defaults to true)
 *   h:stop([grace])         -> code, signal        (TERM to the group, KILL after grace)
 *   process.free_port()     -> port | nil, err
 *   process.kill_pid(pid[, sig[, group]]) -> true | nil, err
 *   process.alive(pid)      -> boolean
 *
 * code is the exit status, or 128 + signal when a signal ended the child;
 * signal is the signal number, or nil when the child exited by itself.
 * Everything is non-blocking on the worker's loop (uv_spawn + exit callback).
 * Each child leads its own process group (and session), so signals sent by
 * kill/stop reach the runner's own children too.
 *
 * Lifetimes: the uv_process_t belongs to C, not to the Lua handle. A child
 * outlives its handle, a reload and a VM close; on_exit runs (as a background
 * task) only while the VM that spawned the child is still the worker's live
 * VM, never on a retired or closed one. devexd does NOT kill its children at
 * shutdown: runners keep serving across a devexd restart and the session
 * sweep repairs state (kill_pid / alive work on any pid).
 */
#ifndef DEVEX_PROCESS_H
#define DEVEX_PROCESS_H

#include "devex.h"

int luaopen_devex_process(lua_State *L);

/* A child's end as Lua results: code (the exit status, or 128 + n when signal
 * n ended it), then the signal number or nil. Returns 2. process.c and pty.c. */
int devex_push_exit_status(lua_State *L, int code, int sig);

#endif
