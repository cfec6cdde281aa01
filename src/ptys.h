/*
 * ptys.h: devex.pty (pty.c; not "pty.h", which would hide the system's <pty.h>), programs on a pseudo-terminal, for the runner
 * agent's terminals.
 *
 *   local t, err = pty.spawn{ command = "/bin/bash", args = {"-l"}, cwd = dir,
 *                             env = {TERM = "xterm-256color"},  -- added to (or replacing) the agent's own
 *                             unset = {"RUNNER_TOKEN"},          -- removed from the child's environment
 *                             cols = 80, rows = 24 }
 *   t.pid
 *   t:read()            -> data | nil, {code="eof"}   output as it comes (valid UTF-8: a sequence split
 *                                                      between reads is kept for the next one, invalid
 *                                                      bytes become U+FFFD); eof once the program exited
 *                                                      and its output is read
 *   t:write(data)       -> true | nil, err           input (queued when the terminal is full, up to 1 MiB)
 *   t:resize(cols, rows)-> true | nil, err           TIOCSWINSZ; the kernel sends SIGWINCH
 *   t:busy()            -> boolean                   a job other than the shell has the foreground
 *   t:wait()            -> code, signal              once the program exited (code 128+n for signal n)
 *   t:running()         -> boolean
 *   t:close()           -> true                      SIGKILL to every process of the terminal's session
 *                                                    (its process group and the jobs it started), master closed
 *
 * The child is the leader of a new session whose controlling terminal is the
 * pty (forkpty's setup), with default signal dispositions, an empty signal
 * mask, no inherited descriptors above 2, and SIGKILL when the agent's thread
 * dies (PR_SET_PDEATHSIG). It is reaped from the loop on SIGCHLD (uv_signal
 * plus waitpid on its own pid, so libuv's children are never taken). The
 * handle's __gc and __close close it as t:close() does.
 */
#ifndef DEVEX_PTYS_H
#define DEVEX_PTYS_H

#include "devex.h"

int luaopen_devex_pty(lua_State *L);

#endif
