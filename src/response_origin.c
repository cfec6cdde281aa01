/*
 * response_origin.c: whether a response comes from devexd or from H2O
 * itself, for the output filters (errjson.c, metrics.c). server.c marks the
 * response it is starting; this is a file of its own so that the filters,
 * which server.c registers, do not depend back on server.c.
 */
#include "response_origin.h"

static _Thread_local h2o_req_t *own_response;

void devex_server_set_own_response(h2o_req_t *req)
{
    own_response = req;
}

int devex_server_made_response(h2o_req_t *req)
{
    return req == own_response || h2o_find_header_by_str(&req->res.headers, H2O_STRLIT("x-request-id"), -1) != -1;
}
