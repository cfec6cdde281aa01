/*
 * oauth.c: the cryptography and parameter handling of OAuth 2.0 / OpenID
 * Connect sign-in, as the Lua module devex.oauth (see oauth.h for the API).
 * The HTTP calls themselves are made from Lua with devex.http.
 *
 * JWT verification follows RFC 7515/7517/7518 and OIDC Core 3.1.3.7. Only
 * asymmetric algorithms are accepted: "none" and HS* are always rejected,
 * because the verifier holds public keys and an HMAC "keyed" with a public key
 * is the classic algorithm-confusion forgery. The algorithm comes from the
 * token header but must also fit the key (kty, crv, and the key's own alg
 * when it has one), the key comes only from the JWKS passed in (jku, x5u and
 * an embedded jwk are never used), and any "crit" header is refused. The
 * signature is checked before any claim, so no claim of a forged token is
 * ever looked at.
 *
 * Memory: every OpenSSL object is created and freed inside one C function
 * that makes no Lua call in between, so a Lua error (out of memory) cannot
 * leak it; buffers that live across Lua calls are Lua userdata.
 */
#include "oauth.h"

#include <lauxlib.h>
#include <math.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "crypto.h"
#include "errors.h"
#include "json.h"
#include "textutil.h"

#define PKCE_VERIFIER_MIN 43
#define PKCE_VERIFIER_MAX 128
#define JWT_MAX_LEN 65536     /* far above any real ID token */
#define JWK_FIELD_MAX 4096    /* base64url chars of n, e, x or y */
#define RSA_MIN_BITS 2048
#define RSA_MAX_BITS 16384    /* bounds the work one verification can cost */
#define DEFAULT_LEEWAY 60.0

/* ---- base64url and PKCE ------------------------------------------------ */


static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

int devex_oauth_pkce_challenge(const char *verifier, size_t len, char out[DEVEX_OAUTH_B64_32_LEN + 1])
{
    if (len < PKCE_VERIFIER_MIN || len > PKCE_VERIFIER_MAX)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (!is_unreserved((unsigned char)verifier[i]))
            return -1;
    uint8_t md[DEVEX_SHA256_LEN];
    devex_sha256(verifier, len, md);
    devex_b64url_encode(md, sizeof(md), out);
    return 0;
}

/* Pushes base64url(32 random bytes): a PKCE verifier, a state or a nonce. */
static void push_random_token(lua_State *L)
{
    uint8_t r[DEVEX_OAUTH_RANDOM_BYTES];
    char s[DEVEX_OAUTH_B64_32_LEN + 1];
    if (devex_random_bytes(r, sizeof(r)) != 0)
        luaL_error(L, "random number generator failed");
    size_t n = devex_b64url_encode(r, sizeof(r), s);
    OPENSSL_cleanse(r, sizeof(r));
    lua_pushlstring(L, s, n);
    OPENSSL_cleanse(s, sizeof(s));
}

static int l_pkce(lua_State *L)
{
    push_random_token(L);
    size_t len;
    const char *verifier = lua_tolstring(L, -1, &len);
    char challenge[DEVEX_OAUTH_B64_32_LEN + 1];
    if (devex_oauth_pkce_challenge(verifier, len, challenge) != 0)
        return luaL_error(L, "PKCE verifier generation failed"); /* cannot happen: 43 base64url chars */
    lua_pushstring(L, challenge);
    lua_pushliteral(L, "S256");
    return 3;
}

static int l_pkce_challenge(lua_State *L)
{
    size_t len;
    const char *verifier = luaL_checklstring(L, 1, &len);
    char challenge[DEVEX_OAUTH_B64_32_LEN + 1];
    if (devex_oauth_pkce_challenge(verifier, len, challenge) != 0)
        return devex_push_fail(L, "invalid", "PKCE verifier must be 43 to 128 unreserved characters (RFC 7636)", 0);
    lua_pushstring(L, challenge);
    return 1;
}

static int l_state(lua_State *L)
{
    push_random_token(L);
    return 1;
}

/* ---- form encoding ----------------------------------------------------- */

typedef struct {
    const char *k, *v;
    size_t klen, vlen;
} form_pair_t;

static int pair_cmp(const void *a, const void *b)
{
    const form_pair_t *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = n ? memcmp(x->k, y->k, n) : 0;
    if (c != 0)
        return c;
    return (x->klen > y->klen) - (x->klen < y->klen);
}

static void add_escaped(luaL_Buffer *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c)) {
            luaL_addchar(b, (char)c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            luaL_addlstring(b, e, 3);
        }
    }
}

/* Pushes the form encoding of the table at index t: name=value pairs joined
 * by &, names sorted bytewise, everything but unreserved characters %XX.
 * Values are strings or numbers; anything else raises. */
static void push_form(lua_State *L, int t)
{
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "form parameter names must be strings, not %s", luaL_typename(L, -2));
        if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "form parameter '%s' must be a string or a number, not %s", lua_tostring(L, -2),
                       luaL_typename(L, -1));
        n++;
        lua_pop(L, 1);
    }
    form_pair_t *pairs = lua_newuserdatauv(L, n ? n * sizeof(*pairs) : 1, 0);
    lua_createtable(L, 0, 0); /* keeps numbers converted to strings alive */
    int anchor = lua_gettop(L);
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        if (i < n) {
            pairs[i].k = lua_tolstring(L, -2, &pairs[i].klen); /* a string: not converted in place */
            if (lua_type(L, -1) == LUA_TNUMBER) {
                lua_pushvalue(L, -1);
                pairs[i].v = lua_tolstring(L, -1, &pairs[i].vlen);
                lua_rawseti(L, anchor, (lua_Integer)i + 1);
            } else {
                pairs[i].v = lua_tolstring(L, -1, &pairs[i].vlen); /* held by the table */
            }
            i++;
        }
        lua_pop(L, 1);
    }
    qsort(pairs, i, sizeof(*pairs), pair_cmp);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t j = 0; j < i; j++) {
        if (j > 0)
            luaL_addchar(&b, '&');
        add_escaped(&b, pairs[j].k, pairs[j].klen);
        luaL_addchar(&b, '=');
        add_escaped(&b, pairs[j].v, pairs[j].vlen);
    }
    luaL_pushresult(&b);
    lua_replace(L, anchor - 1); /* over the pairs array */
    lua_pop(L, 1);              /* the anchor table */
}

static int l_form_encode(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    push_form(L, 1);
    return 1;
}

static int l_authorize_url(lua_State *L)
{
    size_t blen;
    const char *base = luaL_checklstring(L, 1, &blen);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_argcheck(L, blen > 0, 1, "must not be empty");
    luaL_argcheck(L, memchr(base, '#', blen) == NULL, 1, "must not contain a fragment");
    lua_settop(L, 2);
    push_form(L, 2);
    if (lua_rawlen(L, 3) == 0) {
        lua_pushvalue(L, 1);
        return 1;
    }
    const char *sep = "?";
    if (memchr(base, '?', blen) != NULL)
        sep = base[blen - 1] == '?' || base[blen - 1] == '&' ? "" : "&";
    lua_pushvalue(L, 1);
    lua_pushstring(L, sep);
    lua_pushvalue(L, 3);
    lua_concat(L, 3);
    return 1;
}

/* Decodes one form component (+ is a space, %XX a byte) into out, which has
 * room for len bytes. Returns the decoded length, or -1 on a bad escape. */
static long form_unescape(const char *s, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '+') {
            out[o++] = ' ';
        } else if (c == '%') {
            if (len - i < 3 || devex_hex_value((unsigned char)s[i + 1]) < 0 || devex_hex_value((unsigned char)s[i + 2]) < 0)
                return -1;
            out[o++] = (char)(devex_hex_value((unsigned char)s[i + 1]) << 4 | devex_hex_value((unsigned char)s[i + 2]));
            i += 2;
        } else {
            out[o++] = (char)c;
        }
    }
    return (long)o;
}

static int l_form_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_settop(L, 1);
    char *scratch = lua_newuserdatauv(L, len + 1, 0);
    lua_newtable(L);
    int result = lua_gettop(L);
    const char *p = s, *end = s + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *seg_end = amp ? amp : end;
        if (seg_end > p) { /* empty segments ("a=1&&b=2", a trailing &) are skipped */
            const char *eq = memchr(p, '=', (size_t)(seg_end - p));
            const char *kend = eq ? eq : seg_end;
            long klen = form_unescape(p, (size_t)(kend - p), scratch);
            if (klen < 0)
                return devex_push_fail(L, "invalid", "form: bad percent escape in a name", 0);
            lua_pushlstring(L, scratch, (size_t)klen);
            long vlen = eq ? form_unescape(eq + 1, (size_t)(seg_end - eq - 1), scratch) : 0;
            if (vlen < 0)
                return devex_push_fail(L, "invalid", "form: bad percent escape in a value", 0);
            lua_pushvalue(L, -1);
            if (lua_rawget(L, result) != LUA_TNIL) {
                /* RFC 6749 3.1: parameters must not be repeated; a second
                 * value is an attempt to smuggle one past a check */
                return devex_push_fail(L, "invalid", "form: repeated parameter", 0);
            }
            lua_pop(L, 1);
            lua_pushlstring(L, scratch, (size_t)vlen);
            lua_rawset(L, result);
        }
        p = seg_end + 1;
    }
    return 1;
}

/* ---- JWS signature verification (pure C, no Lua calls) ----------------- */

enum { KTY_RSA, KTY_EC };

typedef struct {
    const char *name;
    int kty;
    const char *md;
    int pss;
    const char *crv;   /* JWK crv (EC) */
    const char *group; /* OpenSSL group name (EC) */
    size_t coord;      /* bytes of a coordinate, and of R and of S (EC) */
} jws_alg_t;

static const jws_alg_t jws_algs[] = {
    {"RS256", KTY_RSA, "SHA256", 0, NULL, NULL, 0},
    {"RS384", KTY_RSA, "SHA384", 0, NULL, NULL, 0},
    {"RS512", KTY_RSA, "SHA512", 0, NULL, NULL, 0},
    {"PS256", KTY_RSA, "SHA256", 1, NULL, NULL, 0},
    {"PS384", KTY_RSA, "SHA384", 1, NULL, NULL, 0},
    {"PS512", KTY_RSA, "SHA512", 1, NULL, NULL, 0},
    {"ES256", KTY_EC, "SHA256", 0, "P-256", "prime256v1", 32},
    {"ES384", KTY_EC, "SHA384", 0, "P-384", "secp384r1", 48},
    {"ES512", KTY_EC, "SHA512", 0, "P-521", "secp521r1", 66},
};

#define EC_COORD_MAX 66

static const jws_alg_t *find_alg(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(jws_algs) / sizeof(jws_algs[0]); i++)
        if (strlen(jws_algs[i].name) == len && memcmp(jws_algs[i].name, name, len) == 0)
            return &jws_algs[i];
    return NULL;
}

/* A JWK's public numbers, decoded: RSA n and e, or EC x and y. */
typedef struct {
    const uint8_t *a, *b;
    size_t alen, blen;
} jwk_pub_t;

static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params != NULL && ctx != NULL && EVP_PKEY_fromdata_init(ctx) == 1 &&
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *rsa_pkey(const jwk_pub_t *k, const char **why)
{
    EVP_PKEY *pkey = NULL;
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    if (k->alen > RSA_MAX_BITS / 8 + 1 || k->blen > 8) {
        *why = "RSA key too large";
        return NULL;
    }
    n = BN_bin2bn(k->a, (int)k->alen, NULL);
    e = BN_bin2bn(k->b, (int)k->blen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (n == NULL || e == NULL || bld == NULL) {
        *why = "out of memory";
        goto out;
    }
    if (BN_num_bits(n) < RSA_MIN_BITS || BN_num_bits(n) > RSA_MAX_BITS) {
        *why = "RSA key size is not between 2048 and 16384 bits";
        goto out;
    }
    if (!BN_is_odd(e) || BN_is_one(e)) {
        *why = "invalid RSA exponent";
        goto out;
    }
    if (OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1) {
        *why = "out of memory";
        goto out;
    }
    pkey = pkey_from_params("RSA", bld);
    if (pkey == NULL)
        *why = "invalid RSA key";
out:
    BN_free(n);
    BN_free(e);
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

static EVP_PKEY *ec_pkey(const jws_alg_t *alg, const jwk_pub_t *k, const char **why)
{
    /* RFC 7518 6.2.1.2: x and y are the full coordinate length */
    if (k->alen != alg->coord || k->blen != alg->coord) {
        *why = "EC coordinates have the wrong length for the curve";
        return NULL;
    }
    uint8_t pub[1 + 2 * EC_COORD_MAX];
    pub[0] = 0x04; /* uncompressed point */
    memcpy(pub + 1, k->a, alg->coord);
    memcpy(pub + 1 + alg->coord, k->b, alg->coord);
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bld == NULL || OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, alg->group, 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * alg->coord) != 1) {
        *why = "out of memory";
        goto out;
    }
    pkey = pkey_from_params("EC", bld);
    if (pkey != NULL) {
        /* the point must be on the curve (invalid-curve attacks) */
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        int ok = ctx != NULL && EVP_PKEY_public_check_quick(ctx) == 1;
        EVP_PKEY_CTX_free(ctx);
        if (!ok) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
    }
    if (pkey == NULL)
        *why = "invalid EC key (not a point on the curve)";
out:
    OSSL_PARAM_BLD_free(bld);
    return pkey;
}

/* A JWS EC signature is R||S, each coord bytes big-endian; OpenSSL wants
 * DER. Returns the DER length with *der to OPENSSL_free, or -1. */
static int ec_sig_to_der(const uint8_t *sig, size_t coord, unsigned char **der)
{
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)coord, NULL);
    BIGNUM *ss = BN_bin2bn(sig + coord, (int)coord, NULL);
    int len = -1;
    if (s != NULL && r != NULL && ss != NULL && ECDSA_SIG_set0(s, r, ss) == 1) {
        r = ss = NULL; /* owned by s now */
        *der = NULL;
        len = i2d_ECDSA_SIG(s, der);
        if (len <= 0) {
            OPENSSL_free(*der);
            *der = NULL;
            len = -1;
        }
    }
    BN_free(r);
    BN_free(ss);
    ECDSA_SIG_free(s);
    return len;
}

/* 1: the signature verifies; 0: it does not; -1: the key cannot be used
 * (*why says why). */
static int jws_verify(const jws_alg_t *alg, const jwk_pub_t *k, const void *msg, size_t msglen, const uint8_t *sig,
                      size_t siglen, const char **why)
{
    int rc = -1;
    unsigned char *der = NULL;
    EVP_MD_CTX *mctx = NULL;
    EVP_PKEY *pkey = alg->kty == KTY_RSA ? rsa_pkey(k, why) : ec_pkey(alg, k, why);
    if (pkey == NULL)
        goto out;
    if (alg->kty == KTY_EC) {
        if (siglen != 2 * alg->coord) {
            rc = 0;
            goto out;
        }
        int derlen = ec_sig_to_der(sig, alg->coord, &der);
        if (derlen < 0) {
            *why = "out of memory";
            goto out;
        }
        sig = der;
        siglen = (size_t)derlen;
    }
    EVP_PKEY_CTX *pctx = NULL;
    mctx = EVP_MD_CTX_new();
    if (mctx == NULL || EVP_DigestVerifyInit_ex(mctx, &pctx, alg->md, NULL, NULL, pkey, NULL) != 1) {
        *why = "cannot set up the verification";
        goto out;
    }
    if (alg->kty == KTY_RSA) {
        int ok = EVP_PKEY_CTX_set_rsa_padding(pctx, alg->pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) > 0;
        /* RFC 7518 3.5: MGF1 with the same hash, salt as long as the hash */
        if (ok && alg->pss)
            ok = EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0 &&
                 EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, alg->md, NULL) > 0;
        if (!ok) {
            *why = "cannot set up the RSA padding";
            goto out;
        }
    }
    rc = EVP_DigestVerify(mctx, sig, siglen, msg, msglen) == 1 ? 1 : 0;
out:
    EVP_MD_CTX_free(mctx);
    EVP_PKEY_free(pkey);
    OPENSSL_free(der);
    ERR_clear_error(); /* nothing left on this thread's queue for the next caller */
    return rc;
}

/* ---- verify_jwt ---------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int jwt_fail(lua_State *L, const char *check, const char *fmt, ...)
{
    char msg[384];
    int n = snprintf(msg, sizeof(msg), "%s: ", check);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    va_end(ap);
    devex_push_fail(L, "invalid_token", msg, 0);
    lua_pushstring(L, check);
    lua_setfield(L, -2, "check");
    return 2;
}

/* A copy of s fit for an error message (and a log line): at most 64 chars,
 * anything but printable ASCII as '?'. Token headers are attacker-controlled. */
static const char *printable(const char *s, size_t len, char out[68])
{
    size_t n = len > 64 ? 64 : len;
    for (size_t i = 0; i < n; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' ? s[i] : '?';
    strcpy(out + n, len > 64 ? "..." : "");
    return out;
}

/* Pushes t[k] (t absolute, no metamethods) and returns its type. */
static int rawfield(lua_State *L, int t, const char *k)
{
    lua_pushstring(L, k);
    return lua_rawget(L, t);
}

/* Whether the string at idx equals the C string s. */
static int is_str(lua_State *L, int idx, const char *s)
{
    size_t len = 0;
    const char *v = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &len) : NULL;
    return v != NULL && len == strlen(s) && memcmp(v, s, len) == 0;
}

/* Whether the JWK at index k may verify alg: kty (and crv) fit it, and the
 * key's optional alg, use and key_ops allow it. */
static int jwk_fits(lua_State *L, int k, const jws_alg_t *alg)
{
    int top = lua_gettop(L);
    int ok = 0;
    rawfield(L, k, "kty");
    if (!is_str(L, -1, alg->kty == KTY_RSA ? "RSA" : "EC"))
        goto out;
    if (alg->kty == KTY_EC) {
        rawfield(L, k, "crv");
        if (!is_str(L, -1, alg->crv))
            goto out;
    }
    if (rawfield(L, k, "alg") != LUA_TNIL && !is_str(L, -1, alg->name))
        goto out;
    if (rawfield(L, k, "use") != LUA_TNIL && !is_str(L, -1, "sig"))
        goto out;
    int t = rawfield(L, k, "key_ops");
    if (t != LUA_TNIL) {
        int verify = 0;
        if (t == LUA_TTABLE) {
            int ops = lua_gettop(L);
            lua_Unsigned n = lua_rawlen(L, ops);
            for (lua_Unsigned i = 1; i <= n && !verify; i++) {
                lua_rawgeti(L, ops, (lua_Integer)i);
                verify = is_str(L, -1, "verify");
                lua_pop(L, 1);
            }
        }
        if (!verify)
            goto out;
    }
    ok = 1;
out:
    lua_settop(L, top);
    return ok;
}

/* Pushes the decoded bytes of JWK member name as a userdata; NULL when the
 * member is missing or not base64url (what was pushed stays: callers reset). */
static const uint8_t *push_jwk_bytes(lua_State *L, int k, const char *name, size_t *outlen)
{
    if (rawfield(L, k, name) != LUA_TSTRING)
        return NULL;
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (len == 0 || len > JWK_FIELD_MAX)
        return NULL;
    uint8_t *p = lua_newuserdatauv(L, len * 3 / 4 + 1, 0);
    return devex_b64url_decode(s, len, p, outlen) == 0 ? p : NULL;
}

/* Pushes the JSON object in a base64url segment and returns 0; or returns -1
 * with nothing pushed and the reason in *why. */
static int push_segment(lua_State *L, const char *s, size_t len, const char **why)
{
    size_t n;
    uint8_t *p = lua_newuserdatauv(L, len * 3 / 4 + 1, 0);
    if (devex_b64url_decode(s, len, p, &n) != 0) {
        lua_pop(L, 1);
        *why = "not valid base64url";
        return -1;
    }
    char err[160];
    int rc = devex_json_decode(L, (const char *)p, n, err, sizeof(err));
    lua_remove(L, rc == 0 ? -2 : -1); /* the bytes */
    if (rc != 0) {
        *why = "not valid JSON";
        return -1;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 1);
        *why = "not a JSON object";
        return -1;
    }
    return 0;
}

/* 1 and the number in *v, 0 when absent, -1 when not a number. */
static int number_claim(lua_State *L, int t, const char *k, lua_Number *v)
{
    int type = rawfield(L, t, k);
    *v = type == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);
    return type == LUA_TNUMBER ? (isfinite(*v) ? 1 : -1) : type == LUA_TNIL ? 0 : -1;
}

enum { O_ISSUER = 4, O_AUDIENCE, O_NONCE, O_ALGS, O_HEADER, O_PAYLOAD, O_SIG, O_KEYS };

static int l_verify_jwt(lua_State *L)
{
    size_t toklen;
    const char *tok = luaL_checklstring(L, 1, &toklen);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);

    /* options: misuse raises, a bad token returns nil, err */
    if (lua_getfield(L, 3, "issuer") != LUA_TSTRING || lua_rawlen(L, O_ISSUER) == 0)
        return luaL_argerror(L, 3, "opts.issuer must be a non-empty string");
    if (lua_getfield(L, 3, "audience") != LUA_TSTRING || lua_rawlen(L, O_AUDIENCE) == 0)
        return luaL_argerror(L, 3, "opts.audience must be a non-empty string");
    int t = lua_getfield(L, 3, "nonce");
    if (t != LUA_TNIL && t != LUA_TSTRING)
        return luaL_argerror(L, 3, "opts.nonce must be a string");
    t = lua_getfield(L, 3, "algs");
    if (t != LUA_TNIL && t != LUA_TTABLE)
        return luaL_argerror(L, 3, "opts.algs must be a list of algorithm names");
    lua_Number leeway = DEFAULT_LEEWAY, now = (lua_Number)time(NULL);
    t = lua_getfield(L, 3, "leeway");
    if (t != LUA_TNIL) {
        leeway = lua_tonumber(L, -1);
        if (t != LUA_TNUMBER || !isfinite(leeway) || leeway < 0)
            return luaL_argerror(L, 3, "opts.leeway must be a number of seconds >= 0");
    }
    lua_pop(L, 1);
    t = lua_getfield(L, 3, "now");
    if (t != LUA_TNIL) {
        now = lua_tonumber(L, -1);
        if (t != LUA_TNUMBER || !isfinite(now))
            return luaL_argerror(L, 3, "opts.now must be a number");
    }
    lua_pop(L, 1);

    /* header.payload.signature */
    if (toklen > JWT_MAX_LEN)
        return jwt_fail(L, "malformed", "token longer than %d bytes", JWT_MAX_LEN);
    const char *end = tok + toklen;
    const char *d1 = memchr(tok, '.', toklen);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    if (d1 == NULL || d2 == NULL || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) != NULL)
        return jwt_fail(L, "malformed", "not a compact JWS (header.payload.signature)");
    const char *why = NULL;
    if (push_segment(L, tok, (size_t)(d1 - tok), &why) != 0)
        return jwt_fail(L, "malformed", "header is %s", why);

    /* the algorithm */
    char pbuf[68];
    if (rawfield(L, O_HEADER, "alg") != LUA_TSTRING)
        return jwt_fail(L, "alg", "header has no alg");
    size_t alglen;
    const char *algname = lua_tolstring(L, -1, &alglen);
    if (strcasecmp(algname, "none") == 0)
        return jwt_fail(L, "alg", "unsigned tokens (alg \"none\") are not accepted");
    if (strncasecmp(algname, "HS", 2) == 0)
        return jwt_fail(L, "alg",
                        "%s is not accepted: HMAC algorithms are refused against public keys (algorithm confusion)",
                        printable(algname, alglen, pbuf));
    const jws_alg_t *alg = find_alg(algname, alglen);
    if (alg == NULL)
        return jwt_fail(L, "alg", "unsupported algorithm \"%s\"", printable(algname, alglen, pbuf));
    lua_pop(L, 1);
    if (lua_type(L, O_ALGS) == LUA_TTABLE) {
        int allowed = 0;
        lua_Unsigned n = lua_rawlen(L, O_ALGS);
        for (lua_Unsigned i = 1; i <= n && !allowed; i++) {
            lua_rawgeti(L, O_ALGS, (lua_Integer)i);
            allowed = is_str(L, -1, alg->name);
            lua_pop(L, 1);
        }
        if (!allowed)
            return jwt_fail(L, "alg", "%s is not one of the allowed algorithms", alg->name);
    }
    if (rawfield(L, O_HEADER, "crit") != LUA_TNIL)
        return jwt_fail(L, "crit", "critical header extensions are not supported");
    lua_pop(L, 1);
    size_t kidlen = 0;
    const char *kid = NULL;
    t = rawfield(L, O_HEADER, "kid");
    if (t == LUA_TSTRING)
        kid = lua_tolstring(L, -1, &kidlen); /* held by the header table */
    else if (t != LUA_TNIL)
        return jwt_fail(L, "malformed", "kid is not a string");
    lua_pop(L, 1);

    if (push_segment(L, d1 + 1, (size_t)(d2 - d1 - 1), &why) != 0)
        return jwt_fail(L, "malformed", "payload is %s", why);
    size_t siglen = (size_t)(end - d2 - 1);
    uint8_t *sig = lua_newuserdatauv(L, siglen * 3 / 4 + 1, 0);
    if (devex_b64url_decode(d2 + 1, siglen, sig, &siglen) != 0)
        return jwt_fail(L, "malformed", "signature is not valid base64url");
    if (siglen == 0)
        return jwt_fail(L, "signature", "the signature is empty");

    /* the key, then the signature over header.payload as sent */
    if (rawfield(L, 2, "keys") != LUA_TTABLE)
        return jwt_fail(L, "key", "the JWKS has no keys list");
    lua_Unsigned nkeys = lua_rawlen(L, O_KEYS);
    int kid_found = 0, tried = 0, verified = 0;
    why = NULL;
    for (lua_Unsigned i = 1; i <= nkeys && !verified; i++) {
        int base = lua_gettop(L);
        if (lua_rawgeti(L, O_KEYS, (lua_Integer)i) != LUA_TTABLE) {
            lua_settop(L, base);
            continue;
        }
        int k = base + 1;
        if (kid != NULL) {
            size_t len = 0;
            const char *s = rawfield(L, k, "kid") == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (s == NULL || len != kidlen || memcmp(s, kid, len) != 0) {
                lua_settop(L, base);
                continue;
            }
        }
        kid_found = 1;
        if (!jwk_fits(L, k, alg)) {
            lua_settop(L, base);
            continue;
        }
        jwk_pub_t pub;
        pub.a = push_jwk_bytes(L, k, alg->kty == KTY_RSA ? "n" : "x", &pub.alen);
        pub.b = pub.a ? push_jwk_bytes(L, k, alg->kty == KTY_RSA ? "e" : "y", &pub.blen) : NULL;
        if (pub.a == NULL || pub.b == NULL) {
            why = "public key members missing or not base64url";
            lua_settop(L, base);
            continue;
        }
        int rc = jws_verify(alg, &pub, tok, (size_t)(d2 - tok), sig, siglen, &why);
        tried += rc >= 0;
        verified = rc == 1;
        lua_settop(L, base);
    }
    if (!verified) {
        if (kid != NULL && !kid_found)
            return jwt_fail(L, "kid", "no key with kid \"%s\" in the JWKS", printable(kid, kidlen, pbuf));
        if (!tried)
            return jwt_fail(L, "key", "no usable %s key in the JWKS%s%s", alg->name, why ? ": " : "",
                            why ? why : "");
        return jwt_fail(L, "signature", "signature verification failed");
    }

    /* the claims, now that they are known to come from the issuer */
    char pbuf2[68];
    size_t len = 0, len2 = 0;
    const char *s;
    if (rawfield(L, O_PAYLOAD, "iss") != LUA_TSTRING)
        return jwt_fail(L, "issuer", "token has no iss claim");
    if (!lua_rawequal(L, -1, O_ISSUER)) {
        s = lua_tolstring(L, -1, &len);
        const char *want = lua_tolstring(L, O_ISSUER, &len2);
        return jwt_fail(L, "issuer", "iss \"%s\" is not \"%s\"", printable(s, len, pbuf),
                        printable(want, len2, pbuf2));
    }
    lua_pop(L, 1);
    int aud_ok = 0;
    t = rawfield(L, O_PAYLOAD, "aud");
    if (t == LUA_TSTRING) {
        aud_ok = lua_rawequal(L, -1, O_AUDIENCE);
    } else if (t == LUA_TTABLE) {
        int auds = lua_gettop(L);
        lua_Unsigned n = lua_rawlen(L, auds);
        for (lua_Unsigned i = 1; i <= n && !aud_ok; i++) {
            lua_rawgeti(L, auds, (lua_Integer)i);
            aud_ok = lua_type(L, -1) == LUA_TSTRING && lua_rawequal(L, -1, O_AUDIENCE);
            lua_pop(L, 1);
        }
    }
    if (!aud_ok)
        return jwt_fail(L, "audience", t == LUA_TNIL ? "token has no aud claim" : "aud does not contain the audience");
    lua_pop(L, 1);
    lua_Number v;
    if (number_claim(L, O_PAYLOAD, "exp", &v) != 1)
        return jwt_fail(L, "exp", "token has no numeric exp claim");
    if (!(v > now - leeway))
        return jwt_fail(L, "expired", "token expired at %.0f (now %.0f, leeway %.0f s)", v, now, leeway);
    int r = number_claim(L, O_PAYLOAD, "nbf", &v);
    if (r < 0)
        return jwt_fail(L, "nbf", "nbf is not a number");
    if (r > 0 && !(v <= now + leeway))
        return jwt_fail(L, "nbf", "token not valid before %.0f (now %.0f, leeway %.0f s)", v, now, leeway);
    r = number_claim(L, O_PAYLOAD, "iat", &v);
    if (r < 0)
        return jwt_fail(L, "iat", "iat is not a number");
    if (r > 0 && !(v <= now + leeway))
        return jwt_fail(L, "iat", "token issued in the future at %.0f (now %.0f, leeway %.0f s)", v, now, leeway);
    if (lua_type(L, O_NONCE) == LUA_TSTRING) {
        const char *want = lua_tolstring(L, O_NONCE, &len2);
        s = rawfield(L, O_PAYLOAD, "nonce") == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (s == NULL)
            return jwt_fail(L, "nonce", "token has no nonce claim");
        if (!devex_ct_equal(s, len, want, len2))
            return jwt_fail(L, "nonce", "nonce does not match");
        lua_pop(L, 1);
    }
    lua_pushvalue(L, O_PAYLOAD);
    lua_pushvalue(L, O_HEADER);
    return 2;
}

int luaopen_devex_oauth(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"pkce", l_pkce},
        {"pkce_challenge", l_pkce_challenge},
        {"state", l_state},
        {"nonce", l_state},
        {"authorize_url", l_authorize_url},
        {"form_encode", l_form_encode},
        {"form_decode", l_form_decode},
        {"verify_jwt", l_verify_jwt},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
