/*
 * textutil.h: small character classes several primitives share (textutil.c):
 * hex digits, the two base64 alphabets, UTF-8 sequences, HTTP tokens and
 * header values.
 */
#ifndef DEVEX_TEXTUTIL_H
#define DEVEX_TEXTUTIL_H

#include <stddef.h>

/* 0..15 for a hex digit (either case), -1 otherwise. */
int devex_hex_value(int c);
/* 0..63 for a base64 digit: the standard alphabet (+/) or, with url set, the
 * URL-safe one (-_); -1 otherwise (padding included). */
int devex_b64_value(int c, int url);
/* 1 when s[0..n) is a non-empty HTTP token (RFC 9110 tchar characters only). */
int devex_http_token(const char *s, size_t n);
/* The length (1..4) of the well-formed UTF-8 sequence at s[0..n) (RFC 3629:
 * no overlong forms, no surrogates, nothing above U+10FFFF), 0 if there is none. */
size_t devex_utf8_seq(const unsigned char *s, size_t n);
/* 1 when s[0..n) may be an HTTP header value (no CR, LF or NUL). */
int devex_http_value(const char *s, size_t n);

#endif
