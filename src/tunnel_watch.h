/*
 * tunnel_watch.h: traffic through WebSocket tunnels made by devex.proxy
 * (tunnel_watch.c), so that a session whose user keeps working over one
 * long-lived WebSocket is seen as active.
 */
#ifndef DEVEX_TUNNEL_WATCH_H
#define DEVEX_TUNNEL_WATCH_H

#include <h2o.h>
#include "devex.h"

#define DEVEX_ACTIVITY_KEY_MAX 64

/* Called for a proxied WebSocket handshake (req->upgrade set) that carries an
 * activity key: the tunnel H2O makes for req's connection, if the upstream
 * accepts the upgrade, is watched under that key. key is copied. */
void devex_tunnel_expect(h2o_req_t *req, const char *key, size_t keylen);

/* Pushes on L a list of the keys of this thread's tunnels that moved bytes
 * (either direction) since the previous call. */
int devex_tunnel_activity(lua_State *L);

/* Pushes on L the number of this thread's open watched tunnels. */
int devex_tunnel_count(lua_State *L);

#endif
