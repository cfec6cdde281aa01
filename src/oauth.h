/*
 * oauth.h: the C side of OAuth 2.0 / OpenID Connect sign-in (oauth.c): PKCE
 * (RFC 7636), state and nonce values, form encoding of authorization URLs and
 * token requests, and verification of signed JWTs (ID tokens) against a JWKS.
 * The HTTP calls are made from Lua with devex.http.
 *
 * Lua module devex.oauth:
 *   pkce() -> verifier, challenge, "S256"  (verifier: 32 random bytes, base64url)
 *   pkce_challenge(verifier) -> challenge | nil, err (code "invalid")
 *   state() -> string; nonce() -> string     (32 random bytes, base64url)
 *   authorize_url(base_url, params) -> url   (names sorted bytewise, all but
 *     unreserved characters %XX, space %20; appended with & when base_url
 *     already has a query; a fragment in base_url raises)
 *   form_encode(params) -> string            (same encoding; values are
 *     strings or numbers, anything else raises)
 *   form_decode(string) -> table | nil, err  (+ is a space; code "invalid" on
 *     a bad %XX escape or a repeated parameter, RFC 6749 3.1)
 *   verify_jwt(token, jwks, opts) -> claims, header | nil, err
 *     token: compact JWS; jwks: the decoded JWKS document ({keys = {...}}).
 *     Algorithms RS256/384/512, PS256/384/512, ES256/384/512; "none" and HS*
 *     are always refused. opts: issuer, audience (both required: misuse
 *     raises), nonce, leeway (60 s), now (time(NULL)), algs (allow-list).
 *     err.code is "invalid_token"; err.check names the failed check and
 *     err.message starts with it: "malformed", "alg", "crit", "kid", "key",
 *     "signature", "issuer", "audience", "exp", "expired", "nbf", "iat",
 *     "nonce".
 */
#ifndef DEVEX_OAUTH_H
#define DEVEX_OAUTH_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

/* Random bytes behind a PKCE verifier, a state and a nonce. */
#define DEVEX_OAUTH_RANDOM_BYTES 32
/* base64url of 32 bytes (a verifier, a state, a nonce, a PKCE challenge) */
#define DEVEX_OAUTH_B64_32_LEN 43

/* base64url: devex_b64url_encode / devex_b64url_decode in crypto.h */
/* The S256 challenge of a PKCE verifier: base64url(SHA-256(verifier)) and a
 * NUL into out. The verifier must be 43 to 128 unreserved characters
 * (RFC 7636 section 4.1); returns 0, or -1 when it is not. */
int devex_oauth_pkce_challenge(const char *verifier, size_t len, char out[DEVEX_OAUTH_B64_32_LEN + 1]);

int luaopen_devex_oauth(lua_State *L);

#endif
