/*
 * websocket.h: devex.websocket (websocket.c), the server side of a WebSocket
 * in a request handler, on H2O's HTTP/1.1 upgrade and wslay's framing.
 *
 *   local ws = require("devex.websocket")
 *   local conn, err = ws.upgrade{ max_message = 16 << 20 }  -- from the request's own task
 *   local text, kind = conn:receive()   -- kind "text" | "binary"; nil, err once closed
 *   conn:send(text[, "binary"])         -- true | nil, err; waits only while more than
 *                                       --   1 MiB is queued for a slow client
 *   conn:close([code[, reason]])        -- close frame; the socket ends once it is sent
 *   conn:is_open()
 *
 * upgrade() answers 101 to the running request (HTTP/1.1 only) and returns
 * once the answer is written; the request object is gone afterwards (read
 * what you need from it first) and the handler's return value is dropped.
 * A handshake that is not a WebSocket one gives nil, {code="bad_request"}.
 * Messages larger than max_message close the connection with 1009.
 */
#ifndef DEVEX_WEBSOCKET_H
#define DEVEX_WEBSOCKET_H

#include "devex.h"

int luaopen_devex_websocket(lua_State *L);

#endif
