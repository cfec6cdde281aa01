/*
 * response_origin.h: whether a response is devexd's own (response_origin.c).
 */
#ifndef DEVEX_RESPONSE_ORIGIN_H
#define DEVEX_RESPONSE_ORIGIN_H

#include <h2o.h>

/* Whether req's response comes from devexd: sent by its own code right now
 * (H2O's filters run inside h2o_start_response), or proxied by devex.proxy
 * (which always adds x-request-id). errjson and the metrics filter leave
 * such responses alone; the others are H2O's own (413, 400...). */
int devex_server_made_response(h2o_req_t *req);
/* server.c: req is the response devexd is starting now (NULL: done). */
void devex_server_set_own_response(h2o_req_t *req);

#endif
