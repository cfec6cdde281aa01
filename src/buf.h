/*
 * buf.h: a growable byte buffer. The caller owns the buffer and frees it with
 * devex_buf_free(); data is always NUL-terminated for convenience.
 */
#ifndef DEVEX_BUF_H
#define DEVEX_BUF_H

#include <stddef.h>

typedef struct devex_buf {
    char *data;
    size_t len;
    size_t cap;
} devex_buf_t;

#define DEVEX_BUF_INIT {NULL, 0, 0}

/* Ensures room for `extra` more bytes (plus the NUL); aborts on out of memory. */
void devex_buf_reserve(devex_buf_t *b, size_t extra);
void devex_buf_append(devex_buf_t *b, const void *p, size_t n);
void devex_buf_append_str(devex_buf_t *b, const char *s);
void devex_buf_appendf(devex_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void devex_buf_reset(devex_buf_t *b);
void devex_buf_free(devex_buf_t *b);

#endif
