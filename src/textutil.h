/*
 * textutil.h: small character classes several primitives share (textutil.c):
 * hex digits, the two base64 alphabets, HTTP tokens and header values.
 */
#ifndef DEVEX_TEXTUTIL_H
#define DEVEX_TEXTUTIL_H

#include <stddef.h>

/* 0..15 for a hex digit (either case), -1 otherwise. */
int devex_hex_value(int c);
/* 0..63 for a base64 digit: the standard alphabet (+/) or, with url set, the
 * URL-safe one (-_); -1 otherwise (padding included). */
int devex_b64_value(int c, int url);
/* 1 when s[0..n) is a non-empty HTTP token (RFC 9110 tchar) of at most 256 bytes. */
int devex_http_token(const char *s, size_t n);
/* 1 when s[0..n) may be an HTTP header value (no CR, LF or NUL). */
int devex_http_value(const char *s, size_t n);

#endif
