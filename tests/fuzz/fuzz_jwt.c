/*
 * fuzz_jwt: JWT / OIDC token parsing (src/oauth.c: verify_jwt, form_decode,
 * pkce_challenge). The first byte picks what the rest is:
 *   0: a compact token, checked against a fixed JWKS (header and segment
 *      decoding, the algorithm and key choice, the signature check);
 *   1: "HEADER-JSON\nPAYLOAD-JSON", signed here with a real ES256 key, so the
 *      claim checks (iss, aud, azp, exp, nbf, iat, nonce) see arbitrary JSON;
 *   2: a JWKS document (JSON, as the provider's jwks_uri answers it), against
 *      which a valid token is checked;
 *   other: a token endpoint's form answer (form_decode) and a PKCE verifier.
 */
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "fuzz_lua.h"

static EVP_PKEY *key;

static void b64url_push(lua_State *L, const uint8_t *in, size_t n)
{
    char *out = malloc((4 * n + 2) / 3 + 1);
    size_t len = devex_b64url_encode(in, n, out);
    lua_pushlstring(L, out, len);
    free(out);
}

/* b64url(s) */
static int l_b64url(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    b64url_push(L, (const uint8_t *)s, n);
    return 1;
}

/* es256(msg) -> base64url of the raw R||S signature */
static int l_es256(lua_State *L)
{
    size_t n;
    const char *msg = luaL_checklstring(L, 1, &n);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t derlen = sizeof der;
    if (m == NULL || EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(m, der, &derlen, (const unsigned char *)msg, n) != 1)
        abort();
    EVP_MD_CTX_free(m);
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
    if (sig == NULL)
        abort();
    uint8_t raw[64];
    BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32);
    ECDSA_SIG_free(sig);
    b64url_push(L, raw, sizeof raw);
    return 1;
}

static void push_coord(lua_State *L, const char *param)
{
    BIGNUM *bn = NULL;
    uint8_t b[32];
    if (EVP_PKEY_get_bn_param(key, param, &bn) != 1 || BN_bn2binpad(bn, b, 32) != 32)
        abort();
    BN_free(bn);
    b64url_push(L, b, 32);
}

static const char *setup =
    "local oauth = require('devex.oauth')\n"
    "local json = require('devex.json')\n"
    "local NOW = 1700000000\n"
    "local jwks = { keys = { { kty = 'EC', crv = 'P-256', kid = 'e1', use = 'sig', alg = 'ES256', x = EC_X, y = EC_Y },\n"
    "  { kty = 'RSA', kid = 'r1', n = 'sXch', e = 'AQAB' } } }\n"
    "local opts = { issuer = 'https://issuer.example', audience = 'client-1', nonce = 'n-0S6', now = NOW }\n"
    "local function token(h, p) local si = b64url(h) .. '.' .. b64url(p); return si .. '.' .. es256(si) end\n"
    "local good = token('{\"alg\":\"ES256\",\"kid\":\"e1\",\"typ\":\"JWT\"}',\n"
    "  '{\"iss\":\"https://issuer.example\",\"aud\":\"client-1\",\"sub\":\"u1\",\"exp\":1700000600,\"iat\":1700000000,\"nonce\":\"n-0S6\"}')\n"
    "local cl = assert(oauth.verify_jwt(good, jwks, opts))\n"
    "assert(cl.sub == 'u1')\n"
    "local function verified(claims, hdr)\n"
    "  if claims == nil then return end\n"
    "  check(type(claims) == 'table' and type(hdr) == 'table', 'verify_jwt: claims and header are tables')\n"
    "  check(claims.iss == opts.issuer, 'verify_jwt accepted another issuer')\n"
    "  check(type(claims.exp) == 'number' and claims.exp + 60 >= NOW, 'verify_jwt accepted an expired token')\n"
    "end\n"
    "function fuzz_one(s)\n"
    "  local mode, rest = s:byte(1) or 0, s:sub(2)\n"
    "  if mode == 0 then\n"
    "    local claims, hdr = oauth.verify_jwt(rest, jwks, opts)\n"
    "    check(claims == nil or rest == good or rest:match('^[^.]*%.[^.]*%.'), 'accepted a token that is not a JWS')\n"
    "    verified(claims, hdr)\n"
    "  elseif mode == 1 then\n"
    "    local h, p = rest:match('^([^\\n]*)\\n(.*)$')\n"
    "    if not h then h, p = '{\"alg\":\"ES256\",\"kid\":\"e1\"}', rest end\n"
    "    local tok = token(h, p)\n"
    "    verified(oauth.verify_jwt(tok, jwks, opts))\n"
    "    verified(oauth.verify_jwt(tok, jwks, { issuer = opts.issuer, audience = opts.audience, now = NOW,\n"
    "      algs = { 'ES256', 'RS256' }, leeway = 0 }))\n"
    "  elseif mode == 2 then\n"
    "    local doc = json.decode(rest)\n"
    "    if type(doc) == 'table' then\n"
    "      local claims = oauth.verify_jwt(good, doc, opts)\n"
    "      if claims then verified(claims, {}) end\n"
    "    end\n"
    "  else\n"
    "    local t = oauth.form_decode(rest)\n"
    "    if t then for k, v in pairs(t) do check(type(k) == 'string' and type(v) == 'string', 'form_decode: strings') end end\n"
    "    oauth.pkce_challenge(rest)\n"
    "  end\n"
    "end\n";

static void prepare(lua_State *L)
{
    key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (key == NULL)
        abort();
    lua_register(L, "b64url", l_b64url);
    lua_register(L, "es256", l_es256);
    push_coord(L, OSSL_PKEY_PARAM_EC_PUB_X);
    lua_setglobal(L, "EC_X");
    push_coord(L, OSSL_PKEY_PARAM_EC_PUB_Y);
    lua_setglobal(L, "EC_Y");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run(setup, prepare, data, size);
}
