/*
 * crypto.h: the cryptography devexd needs, on OpenSSL (crypto.c): random
 * bytes, hex and base64url, SHA-256, HMAC-SHA256, constant-time comparison,
 * UUIDv4. Lua module devex.crypto.
 */
#ifndef DEVEX_CRYPTO_H
#define DEVEX_CRYPTO_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

#define DEVEX_SHA256_LEN 32

/* Fills out with n cryptographically secure random bytes; 0 on success. */
int devex_random_bytes(void *out, size_t n);
void devex_sha256(const void *data, size_t len, uint8_t out[DEVEX_SHA256_LEN]);
void devex_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[DEVEX_SHA256_LEN]);
/* Writes 2*n lowercase hex digits and a NUL into out (size >= 2n+1). */
void devex_hex_encode(const uint8_t *in, size_t n, char *out);
/* Writes the unpadded base64url form of n bytes and a NUL into out, which must
 * hold (4n + 2) / 3 + 1 chars. Returns the length written (without the NUL). */
size_t devex_b64url_encode(const uint8_t *in, size_t n, char *out);
/* Strict unpadded base64url decode (no padding, whitespace or non-zero
 * trailing bits) into out, which must hold len * 3 / 4 bytes. Returns 0 and
 * the decoded length in *outlen, or -1. */
int devex_b64url_decode(const char *in, size_t len, uint8_t *out, size_t *outlen);
/* Constant-time equality of two byte strings (lengths may differ: then false). */
int devex_ct_equal(const void *a, size_t alen, const void *b, size_t blen);
/* Writes a UUIDv4 (36 chars) and a NUL into out. */
int devex_uuid4(char out[37]);

int luaopen_devex_crypto(lua_State *L);

#endif
