/*
 * stream.h: devex.stream, streaming response bodies (Server-Sent Events) for
 * Lua handlers, and a condition variable for tasks of one worker.
 *
 * A handler returns `status, stream.new(fn), headers`; the middleware on the
 * way out (CORS) still adds its headers, then server.c's request_done hands
 * the response to devex_stream_start, which sends the headers and runs
 * fn(writer) as a task of its own. writer:write(chunk) yields until H2O has
 * sent the chunk and returns nil, "closed" once the client is gone.
 *
 * A handler that returns `status, stream.later(fn)` has its whole answer
 * made by fn, run as a task of its own once the handler's task has ended;
 * fn returns status, body, headers as a handler does.
 */
#ifndef DEVEX_STREAM_H
#define DEVEX_STREAM_H

#include "server.h"

/* Whether the value at idx is a stream body made by stream.new. */
int devex_stream_is(lua_State *L, int idx);
/* Whether the value at idx is a response made later (stream.later(fn)):
 * request_done runs fn as a new task, whose results are the response, so
 * the handler's coroutine (the middleware's frames, the request) is freed
 * while fn waits. */
int devex_stream_later_is(lua_State *L, int idx);
/* Starts the streamed response of rc with status (headers already added)
 * and runs the stream body at idx of co as a new task. */
void devex_stream_start(devex_reqctx_t *rc, lua_State *co, int idx, int status);
int luaopen_devex_stream(lua_State *L);

#endif
