/*
 * errjson.h: the filter that rewrites H2O's own error responses as JSON (errjson.c).
 */
#ifndef DEVEX_ERRJSON_H
#define DEVEX_ERRJSON_H

#include <h2o.h>

void devex_errjson_register(h2o_pathconf_t *pathconf);

#endif
