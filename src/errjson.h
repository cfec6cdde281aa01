/*
 * errjson.h: the filter that rewrites H2O's own error responses as JSON (errjson.c).
 */
#ifndef DEVEX_ERRJSON_H
#define DEVEX_ERRJSON_H

#include <h2o.h>

void devex_errjson_register(h2o_pathconf_t *pathconf);
/* For an output filter setting up a response: replaces its body with `body`
 * (JSON, in the request's pool; not sent for HEAD), sets Content-Type and
 * Content-Length, and returns the slot for the next output stream. */
h2o_ostream_t **devex_errjson_set_body(h2o_req_t *req, h2o_ostream_t **slot, h2o_iovec_t body);

#endif
