/*
 * log.h: structured logs, one JSON object per line on stderr (log.c).
 * Each line: time, level, msg, request_id when there is one, then fields.
 * Lua module devex.log: log.info(msg, fields), log.warn, log.error, log.debug.
 */
#ifndef DEVEX_LOG_H
#define DEVEX_LOG_H

#include <lua.h>
#include "buf.h"

typedef enum { DEVEX_LOG_DEBUG = 0, DEVEX_LOG_INFO, DEVEX_LOG_WARN, DEVEX_LOG_ERROR } devex_log_level_t;

void devex_log_set_level(devex_log_level_t level);
int devex_log_parse_level(const char *name, devex_log_level_t *out);
int devex_log_enabled(devex_log_level_t level);

/* Starts a line in b: {"time":"...","level":"...","msg":"..."[,"request_id":"..."] */
void devex_log_begin(devex_buf_t *b, devex_log_level_t level, const char *msg, const char *request_id);
/* Appends ,"key":"value" (escaped) / ,"key":number. */
void devex_log_str(devex_buf_t *b, const char *key, const char *value);
void devex_log_strn(devex_buf_t *b, const char *key, const char *value, size_t len);
void devex_log_int(devex_buf_t *b, const char *key, long long value);
void devex_log_num(devex_buf_t *b, const char *key, double value);
/* Closes the object and writes the line with one write(2). Frees nothing. */
void devex_log_end(devex_buf_t *b);

/* Convenience: a line with msg and optional "error" field. */
void devex_log(devex_log_level_t level, const char *msg, const char *error);
void devex_logf(devex_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends s as a JSON string body (escaped, invalid UTF-8 replaced by U+FFFD). */
void devex_json_escape(devex_buf_t *b, const char *s, size_t len);

int luaopen_devex_log(lua_State *L);

#endif
