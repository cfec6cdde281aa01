/*
 * buf.c: the growable byte buffer of buf.h. Allocation failure aborts: devexd
 * cannot do anything sensible without memory and every caller would do the same.
 */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void devex_buf_reserve(devex_buf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        abort();
    b->data = p;
    b->cap = cap;
}

void devex_buf_append(devex_buf_t *b, const void *p, size_t n)
{
    devex_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void devex_buf_append_str(devex_buf_t *b, const char *s)
{
    devex_buf_append(b, s, strlen(s));
}

void devex_buf_appendf(devex_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        devex_buf_append(b, tmp, (size_t)n);
        return;
    }
    devex_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void devex_buf_reset(devex_buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void devex_buf_free(devex_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
