/*
 * proxy.h: the built-in reverse proxy (proxy.c). A Lua handler decides who
 * may pass and where to; H2O's own proxy (lib/core/proxy.c of libh2o 2.2)
 * moves the bytes, WebSocket upgrades included.
 *
 * Lua module devex.proxy:
 *
 *   return require("devex.proxy").pass{
 *     upstream = "127.0.0.1:8123",      -- IPv4:PORT, [IPv6]:PORT, dns-name:PORT or localhost:PORT (127.0.0.1);
 *                                        --   Lua takes it from what devexd created, never from the request
 *     path = "/rest/of/path?query",      -- starts with '/', no controls or spaces
 *     headers = { ["x-user"] = "42", cookie = false },  -- optional: set (replace) or delete request headers
 *     preserve_host = false,             -- optional: send the client's Host instead of the upstream's
 *     location_prefix = "/repl/abc/",    -- optional: rewrite the upstream's absolute Location
 *                                        --   http://<upstream>/x to <scheme>://<our host>/repl/abc/x
 *     activity = "repl-...",             -- optional: a WebSocket tunnel made for this request is
 *   }                                    --   watched for traffic under this key (tunnel_watch.h)
 *
 *   proxy.tunnel_activity() -> { key, ... }  keys of this worker's tunnels that moved bytes since the last call
 *   proxy.tunnels() -> n                    this worker's open watched tunnels
 *
 * pass() validates everything and raises a Lua error when something is wrong
 * (the dispatcher turns it into 500). It returns two values, `0, instruction`,
 * so a devex.app handler can `return proxy.pass{...}` through the
 * dispatcher's integer-status check; request_done (server.c) recognises the
 * instruction and calls devex_proxy_start instead of sending a response.
 */
#ifndef DEVEX_PROXY_H
#define DEVEX_PROXY_H

#include <h2o.h>
#include "devex.h"

/* Registers, on pathconf, the handler that owns each worker's upstream client
 * context (io and WebSocket timeouts). Its on_req always declines, so it is
 * invisible to clients. Also turns off H2O's plain-text request error lines
 * on that pathconf: proxy errors are logged as JSON in the access line. */
void devex_proxy_register(h2o_pathconf_t *pathconf);

/* The stack index of a pass() instruction among the nres results starting at
 * base (at base+1, where `return proxy.pass{...}` puts it after its status
 * 0), or 0 when the handler returned a normal response. An instruction in
 * any other place is not one: the response is then invalid (500). */
int devex_proxy_find(lua_State *L, int base, int nres);

/* Hands the request to H2O's proxy as the instruction at idx says. The
 * request and rc must not be touched afterwards (like after a send). The
 * access log line is written when H2O frees the request, with the final status. */
void devex_proxy_start(devex_reqctx_t *rc, lua_State *L, int idx);

int luaopen_devex_proxy(lua_State *L);

#endif
