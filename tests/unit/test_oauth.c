/*
 * test_oauth.c: unit tests of oauth.c: PKCE against RFC 7636 Appendix B,
 * state/nonce, URL and form encoding, and JWT verification with keys made
 * here by OpenSSL (RSA 2048, EC P-256 and P-384) and tokens signed here, so
 * every check of verify_jwt is exercised on tokens that differ from a valid
 * one in exactly one way.
 */
#include <lauxlib.h>
#include <lualib.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <stdint.h>
#include <stdlib.h>

#include "crypto.h"
#include "json.h"
#include "oauth.h"
#include "unit.h"

/* ---- C API -------------------------------------------------------------- */

static void test_pkce_vector(void)
{
    /* RFC 7636 Appendix B. (A copy with "r7w" for "r_w" in the verifier and
     * "CHxkVq7y8DvQ8u6Ka7r1xYQ" at the end of the challenge circulates; the
     * appendix's own octets below settle which one is right.) */
    const char *verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    char challenge[DEVEX_OAUTH_B64_32_LEN + 1];
    CHECK(devex_oauth_pkce_challenge(verifier, strlen(verifier), challenge) == 0);
    CHECK_STR(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");

    /* the appendix's 32 octets give that verifier */
    static const uint8_t octets[32] = {116, 24, 223, 180, 151, 153, 224, 37,  79,  250, 96,  125, 216, 173, 187, 186,
                                       22,  212, 37,  77,  105, 214, 191, 240, 91,  88,  5,   88,  83,  132, 141, 121};
    char v[DEVEX_OAUTH_B64_32_LEN + 1];
    CHECK(devex_b64url_encode(octets, sizeof(octets), v) == 43);
    CHECK_STR(v, verifier);

    /* RFC 7636 4.1: 43 to 128 unreserved characters */
    char buf[130];
    memset(buf, 'a', sizeof(buf));
    CHECK(devex_oauth_pkce_challenge(buf, 42, challenge) == -1);
    CHECK(devex_oauth_pkce_challenge(buf, 43, challenge) == 0);
    CHECK(devex_oauth_pkce_challenge(buf, 128, challenge) == 0);
    CHECK(devex_oauth_pkce_challenge(buf, 129, challenge) == -1);
    memcpy(buf, "-._~", 4);
    CHECK(devex_oauth_pkce_challenge(buf, 43, challenge) == 0);
    buf[10] = '+';
    CHECK(devex_oauth_pkce_challenge(buf, 43, challenge) == -1);
    buf[10] = '\0';
    CHECK(devex_oauth_pkce_challenge(buf, 43, challenge) == -1);
}

static void test_b64url(void)
{
    static const struct {
        const char *plain, *enc;
    } v[] = {{"", ""},         {"f", "Zg"},         {"fo", "Zm8"},          {"foo", "Zm9v"},
             {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}, {"\xfb\xff", "-_8"}};
    char out[16];
    uint8_t dec[16];
    size_t n;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        CHECK(devex_b64url_encode((const uint8_t *)v[i].plain, strlen(v[i].plain), out) == strlen(v[i].enc));
        CHECK_STR(out, v[i].enc);
        CHECK(devex_b64url_decode(v[i].enc, strlen(v[i].enc), dec, &n) == 0);
        CHECK(n == strlen(v[i].plain) && memcmp(dec, v[i].plain, n) == 0);
    }
    static const char *bad[] = {"Zg==", "Zm9v=", "Zm+v", "Zm/v", "Z", "Zm9vY", "Zh", "Zm9", " Zm9v", "Zm9v\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(devex_b64url_decode(bad[i], strlen(bad[i]), dec, &n) == -1);
}

/* ---- keys and signatures for the JWT tests ------------------------------ */

static struct {
    const char *name;
    EVP_PKEY *pkey;
} test_keys[] = {{"rsa", NULL}, {"rsa2", NULL}, {"rsa1024", NULL}, {"ec", NULL}, {"ec384", NULL}, {"ec_b", NULL}};

#define NKEYS (sizeof(test_keys) / sizeof(test_keys[0]))

static int make_keys(void)
{
    test_keys[0].pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    test_keys[1].pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    test_keys[2].pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    test_keys[3].pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    test_keys[4].pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    test_keys[5].pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    for (size_t i = 0; i < NKEYS; i++)
        if (test_keys[i].pkey == NULL)
            return -1;
    return 0;
}

static void free_keys(void)
{
    for (size_t i = 0; i < NKEYS; i++)
        EVP_PKEY_free(test_keys[i].pkey);
}

static EVP_PKEY *key_arg(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(test_keys[i].name, name) == 0)
            return test_keys[i].pkey;
    luaL_error(L, "no test key %s", name);
    return NULL;
}

/* Sets t[field] to base64url of bn, left-padded to pad bytes when pad > 0. */
static int set_bn_field(lua_State *L, const BIGNUM *bn, int pad, const char *field)
{
    uint8_t bin[1024];
    char b64[1400];
    int n = pad > 0 ? BN_bn2binpad(bn, bin, pad) : BN_bn2bin(bn, bin);
    if (n <= 0)
        return -1;
    devex_b64url_encode(bin, (size_t)n, b64);
    lua_pushstring(L, b64);
    lua_setfield(L, -2, field);
    return 0;
}

/* pubjwk(keyname) -> a JWK table with the public numbers (no kid, no alg). */
static int l_pubjwk(lua_State *L)
{
    EVP_PKEY *pk = key_arg(L, 1);
    lua_newtable(L);
    BIGNUM *a = NULL, *b = NULL;
    int ok;
    if (EVP_PKEY_is_a(pk, "RSA")) {
        lua_pushliteral(L, "RSA");
        lua_setfield(L, -2, "kty");
        ok = EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &a) == 1 &&
             EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &b) == 1 && set_bn_field(L, a, 0, "n") == 0 &&
             set_bn_field(L, b, 0, "e") == 0;
    } else {
        int coord = (EVP_PKEY_get_bits(pk) + 7) / 8;
        lua_pushliteral(L, "EC");
        lua_setfield(L, -2, "kty");
        lua_pushstring(L, coord == 32 ? "P-256" : "P-384");
        lua_setfield(L, -2, "crv");
        ok = EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_EC_PUB_X, &a) == 1 &&
             EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_EC_PUB_Y, &b) == 1 && set_bn_field(L, a, coord, "x") == 0 &&
             set_bn_field(L, b, coord, "y") == 0;
    }
    BN_free(a);
    BN_free(b);
    if (!ok)
        return luaL_error(L, "cannot export the public key");
    return 1;
}

/* sign(keyname, alg, input [, pss_saltlen]) -> the raw JWS signature of
 * input (RS*, PS*, ES* as R||S) and, second, as OpenSSL made it (DER for
 * ES*). pss_saltlen overrides the salt length of PS* (RFC 7518: the hash's). */
static int l_sign(lua_State *L)
{
    EVP_PKEY *pk = key_arg(L, 1);
    const char *alg = luaL_checkstring(L, 2);
    size_t len;
    const char *msg = luaL_checklstring(L, 3, &len);
    int saltlen = (int)luaL_optinteger(L, 4, RSA_PSS_SALTLEN_DIGEST);
    char md[8];
    snprintf(md, sizeof(md), "SHA%s", alg + 2);
    int pss = alg[0] == 'P', ec = alg[0] == 'E';
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    unsigned char *sig = NULL, raw[2 * 66];
    size_t siglen = 0, rawlen = 0;
    ECDSA_SIG *es = NULL;
    int ok = m != NULL && EVP_DigestSignInit_ex(m, &pctx, md, NULL, NULL, pk, NULL) == 1;
    if (ok && pss)
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, saltlen) > 0 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, md, NULL) > 0;
    ok = ok && EVP_DigestSign(m, NULL, &siglen, (const unsigned char *)msg, len) == 1 &&
         (sig = OPENSSL_malloc(siglen)) != NULL &&
         EVP_DigestSign(m, sig, &siglen, (const unsigned char *)msg, len) == 1;
    if (ok && ec) {
        int coord = (EVP_PKEY_get_bits(pk) + 7) / 8;
        const unsigned char *p = sig;
        const BIGNUM *r, *s;
        ok = (es = d2i_ECDSA_SIG(NULL, &p, (long)siglen)) != NULL;
        if (ok) {
            ECDSA_SIG_get0(es, &r, &s);
            ok = BN_bn2binpad(r, raw, coord) == coord && BN_bn2binpad(s, raw + coord, coord) == coord;
            rawlen = 2 * (size_t)coord;
        }
    }
    if (ok) {
        if (ec)
            lua_pushlstring(L, (const char *)raw, rawlen);
        else
            lua_pushlstring(L, (const char *)sig, siglen);
        /* also the DER form of an EC signature, to check it is refused */
        lua_pushlstring(L, (const char *)sig, siglen);
    }
    ECDSA_SIG_free(es);
    OPENSSL_free(sig);
    EVP_MD_CTX_free(m);
    if (!ok)
        return luaL_error(L, "signing failed");
    return 2;
}

/* ---- Lua API: PKCE, state, URLs, forms ---------------------------------- */

static const char *test_lua_basics =
    "local o = require 'devex.oauth'\n"
    /* PKCE */
    "local v, ch, method = o.pkce()\n"
    "check(#v == 43 and v:match('^[%w%-_]+$'), 'verifier format ' .. v)\n"
    "check(#ch == 43 and ch:match('^[%w%-_]+$'), 'challenge format')\n"
    "check(method == 'S256', 'method')\n"
    "check(o.pkce_challenge(v) == ch, 'challenge of the verifier')\n"
    "local c = require 'devex.crypto'\n"
    "check(ch == c.b64url(c.sha256(v)), 'challenge is b64url(sha256(verifier))')\n"
    "check(o.pkce_challenge('dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk') == 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM',\n"
    "      'RFC 7636 appendix B through Lua')\n"
    "local v2 = o.pkce()\n"
    "check(v ~= v2, 'two verifiers differ')\n"
    "local r, err = o.pkce_challenge('too-short')\n"
    "check(r == nil and err.code == 'invalid', 'short verifier rejected')\n"
    "check(o.pkce_challenge(string.rep('a', 42) .. '!') == nil, 'bad character rejected')\n"
    /* state and nonce */
    "local seen = {}\n"
    "for i = 1, 200 do\n"
    "  local s, n = o.state(), o.nonce()\n"
    "  check(#s == 43 and #n == 43, 'state/nonce length')\n"
    "  check(s:match('^[%w%-_]+$') and n:match('^[%w%-_]+$'), 'state/nonce are base64url')\n"
    "  check(not seen[s] and not seen[n] and s ~= n, 'state/nonce unique')\n"
    "  seen[s] = true seen[n] = true\n"
    "end\n"
    /* authorize_url */
    "local u = o.authorize_url('https://idp.example/authorize', {\n"
    "  response_type = 'code', client_id = 'abc', redirect_uri = 'https://app.example/cb?x=1&y=2',\n"
    "  scope = 'openid email profile', state = 'a=b&c', code_challenge_method = 'S256'})\n"
    "check(u == 'https://idp.example/authorize?client_id=abc&code_challenge_method=S256'\n"
    "  .. '&redirect_uri=https%3A%2F%2Fapp.example%2Fcb%3Fx%3D1%26y%3D2&response_type=code'\n"
    "  .. '&scope=openid%20email%20profile&state=a%3Db%26c', 'authorize_url: ' .. u)\n"
    "check(o.authorize_url('https://x/a', {name = 'é☃'}) == 'https://x/a?name=%C3%A9%E2%98%83', 'unicode')\n"
    "check(o.authorize_url('https://x/a', {k = '-._~+*/ %'}) == 'https://x/a?k=-._~%2B%2A%2F%20%25', 'reserved chars')\n"
    "check(o.authorize_url('https://x/a', {['a b'] = '', ['&'] = '='}) == 'https://x/a?%26=%3D&a%20b=', 'keys encoded')\n"
    "check(o.authorize_url('https://x/a?tenant=t1', {b = '2', a = '1'}) == 'https://x/a?tenant=t1&a=1&b=2', 'existing query')\n"
    "check(o.authorize_url('https://x/a?', {a = '1'}) == 'https://x/a?a=1', 'trailing ?')\n"
    "check(o.authorize_url('https://x/a?t=1&', {a = '1'}) == 'https://x/a?t=1&a=1', 'trailing &')\n"
    "check(o.authorize_url('https://x/a', {}) == 'https://x/a', 'no parameters')\n"
    "check(o.authorize_url('https://x/a', {max_age = 0, n = 1.5}) == 'https://x/a?max_age=0&n=1.5', 'numbers')\n"
    "check(o.authorize_url('https://x/a', {b = 1, a = 2, ab = 3, B = 4, aa = 5}) == 'https://x/a?B=4&a=2&aa=5&ab=3&b=1',\n"
    "      'sorted bytewise')\n"
    "check(not pcall(o.authorize_url, 'https://x/a#frag', {}), 'fragment raises')\n"
    "check(not pcall(o.authorize_url, 'https://x/a', {a = true}), 'boolean value raises')\n"
    "check(not pcall(o.authorize_url, 'https://x/a', {'positional'}), 'integer key raises')\n"
    "check(not pcall(o.authorize_url, 'https://x/a'), 'missing params raises')\n"
    /* form_encode / form_decode */
    "check(o.form_encode({grant_type = 'authorization_code', code = 'a+b/c', code_verifier = v}) ==\n"
    "      'code=a%2Bb%2Fc&code_verifier=' .. v .. '&grant_type=authorization_code', 'form_encode')\n"
    "check(o.form_encode({}) == '', 'empty form')\n"
    "local all = {} for i = 0, 255 do all[#all + 1] = string.char(i) end all = table.concat(all)\n"
    "local t = {all = all, empty = '', plus = 'a+b', pct = '100%', amp = 'x&y=z', uni = 'naïve ☃', [all] = 'key',\n"
    "           ['with space'] = 'v a l'}\n"
    "local d, err = o.form_decode(o.form_encode(t))\n"
    "check(d ~= nil, 'round trip decodes: ' .. tostring(err))\n"
    "local n = 0\n"
    "for k, val in pairs(t) do check(d[k] == val, 'round trip ' .. k) end\n"
    "for k in pairs(d) do n = n + 1 end\n"
    "check(n == 8, 'round trip keeps every key')\n"
    "local gh = o.form_decode('access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a&scope=repo%2Cgist&token_type=bearer')\n"
    "check(gh.access_token == 'gho_16C7e42F292c6912E7710c838347Ae178B4a' and gh.scope == 'repo,gist'\n"
    "      and gh.token_type == 'bearer', 'GitHub token response')\n"
    "local e = o.form_decode('error=bad_verification_code&error_description=The+code+passed+is%20incorrect.')\n"
    "check(e.error == 'bad_verification_code' and e.error_description == 'The code passed is incorrect.', '+ is a space')\n"
    "local d2 = o.form_decode('a&&b=2&=x&c=d=e&')\n"
    "check(d2.a == '' and d2.b == '2' and d2[''] == 'x' and d2.c == 'd=e', 'edge cases')\n"
    "check(next(o.form_decode('')) == nil, 'empty string')\n"
    "check(o.form_decode('%41%62=%e2%98%83').Ab == '☃', 'escapes in either case')\n"
    "for _, bad in ipairs({'a=%zz', 'a=%4', 'a=%', '%g0=1', 'a=1%2'}) do\n"
    "  local r, err = o.form_decode(bad)\n"
    "  check(r == nil and err.code == 'invalid', 'bad escape rejected: ' .. bad)\n"
    "end\n"
    "local r, err = o.form_decode('a=1&b=2&a=3')\n"
    "check(r == nil and err.message:find('repeated'), 'repeated parameter rejected')\n";

/* ---- Lua API: verify_jwt ------------------------------------------------ */

static const char *test_lua_jwt =
    "local o = require 'devex.oauth'\n"
    "local c = require 'devex.crypto'\n"
    "local json = require 'devex.json'\n"
    "local NOW = 1700000000\n"
    "local ISS, AUD = 'https://idp.example', 'client-123'\n"
    "local function copy(t, over)\n"
    "  local r = {}\n"
    "  for k, v in pairs(t) do r[k] = v end\n"
    "  for k, v in pairs(over or {}) do if v == json.null then r[k] = nil else r[k] = v end end\n"
    "  return r\n"
    "end\n"
    "local function b64json(t) return c.b64url(assert(json.encode(t))) end\n"
    "local function token(key, header, claims)\n"
    "  local input = b64json(header) .. '.' .. b64json(claims)\n"
    "  return input .. '.' .. c.b64url((sign(key, header.alg, input)))\n"
    "end\n"
    "local rsa = copy(pubjwk('rsa'), {kid = 'r1', alg = 'RS256', use = 'sig'})\n"
    "local rsa_ps = copy(pubjwk('rsa'), {kid = 'p1', key_ops = {'verify'}})\n"
    "local ec = copy(pubjwk('ec'), {kid = 'e1'})\n"
    "local ec384 = copy(pubjwk('ec384'), {kid = 'e384'})\n"
    "local small = copy(pubjwk('rsa1024'), {kid = 'small'})\n"
    "local enc = copy(pubjwk('rsa2'), {kid = 'enc', use = 'enc'})\n"
    "local jwks = {keys = {rsa, rsa_ps, ec, ec384, small, enc}}\n"
    "local claims = {iss = ISS, aud = AUD, sub = 'user-1', exp = NOW + 300, iat = NOW - 10, nbf = NOW - 10, nonce = 'n-1'}\n"
    "local opts = {issuer = ISS, audience = AUD, now = NOW}\n"
    "local function ok(tok, o2, what)\n"
    "  local cl, h = o.verify_jwt(tok, jwks, o2 or opts)\n"
    "  check(cl ~= nil, what .. ': ' .. tostring(h))\n"
    "  return cl, h\n"
    "end\n"
    "local function fails(tok, check_name, what, o2, keys)\n"
    "  local cl, err = o.verify_jwt(tok, keys or jwks, o2 or opts)\n"
    "  check(cl == nil and type(err) == 'table', what .. ': accepted')\n"
    "  if cl == nil and type(err) == 'table' then\n"
    "    check(err.code == 'invalid_token', what .. ': code ' .. tostring(err.code))\n"
    "    check(err.check == check_name, what .. ': check ' .. tostring(err.check) .. ' ~= ' .. check_name\n"
    "          .. ' (' .. tostring(err.message) .. ')')\n"
    "    check(err.message:sub(1, #check_name + 2) == check_name .. ': ', what .. ': message ' .. tostring(err.message))\n"
    "  end\n"
    "  return err\n"
    "end\n"
    /* valid tokens of each algorithm */
    "local good = token('rsa', {alg = 'RS256', typ = 'JWT', kid = 'r1'}, claims)\n"
    "local cl, h = ok(good, nil, 'RS256')\n"
    "check(cl and cl.sub == 'user-1' and cl.iss == ISS and cl.exp == NOW + 300, 'RS256 claims returned')\n"
    "check(h and h.kid == 'r1' and h.alg == 'RS256', 'header returned')\n"
    "local good_ec = token('ec', {alg = 'ES256', kid = 'e1'}, claims)\n"
    "cl = ok(good_ec, nil, 'ES256')\n"
    "check(cl and cl.sub == 'user-1', 'ES256 claims returned')\n"
    "ok(token('ec384', {alg = 'ES384', kid = 'e384'}, claims), nil, 'ES384')\n"
    "ok(token('rsa', {alg = 'PS256', kid = 'p1'}, claims), nil, 'PS256')\n"
    "ok(token('rsa', {alg = 'PS384', kid = 'p1'}, claims), nil, 'PS384')\n"
    "ok(token('rsa', {alg = 'RS512', kid = 'p1'}, claims), nil, 'RS512')\n"
    "ok(token('rsa', {alg = 'RS256'}, claims), nil, 'no kid: every fitting key is tried')\n"
    "ok(token('ec', {alg = 'ES256'}, claims), nil, 'no kid, EC')\n"
    "ok(good, {issuer = ISS, audience = AUD, now = NOW, algs = {'ES256', 'RS256'}}, 'allowed algs')\n"
    "ok(good, copy(opts, {nonce = 'n-1'}), 'nonce matches')\n"
    "ok(good, json.decode(json.encode(opts)), 'opts through JSON')\n"
    "cl = o.verify_jwt(good, json.decode(assert(json.encode(jwks))), opts)\n"
    "check(cl ~= nil, 'a JWKS decoded from JSON')\n"
    "cl = o.verify_jwt(good, jwks, {issuer = ISS, audience = AUD})\n"
    "check(cl == nil, 'default now is the real clock (the test token expired in 2023)')\n"
    /* signature */
    "local hdr, pay, sig = good:match('^([^.]+)%.([^.]+)%.([^.]+)$')\n"
    "local evil = b64json(copy(claims, {sub = 'admin'}))\n"
    "fails(hdr .. '.' .. evil .. '.' .. sig, 'signature', 'tampered payload')\n"
    "local ehdr, epay, esig = good_ec:match('^([^.]+)%.([^.]+)%.([^.]+)$')\n"
    "fails(ehdr .. '.' .. evil .. '.' .. esig, 'signature', 'tampered ES256 payload')\n"
    "local raw = c.unb64url(sig)\n"
    "local flipped = raw:sub(1, 10) .. string.char(raw:byte(11) ~ 1) .. raw:sub(12)\n"
    "fails(hdr .. '.' .. pay .. '.' .. c.b64url(flipped), 'signature', 'flipped signature bit')\n"
    "fails(hdr .. '.' .. pay .. '.' .. c.b64url(raw:sub(1, -2)), 'signature', 'short RSA signature')\n"
    "fails(token('rsa2', {alg = 'RS256', kid = 'r1'}, claims), 'signature', 'signed by another key')\n"
    "fails(token('ec_b', {alg = 'ES256', kid = 'e1'}, claims), 'signature', 'signed by another EC key')\n"
    "fails(token('rsa2', {alg = 'RS256'}, claims), 'signature', 'no kid, no key verifies')\n"
    "local input = ehdr .. '.' .. epay\n"
    "local rs, der = sign('ec', 'ES256', input)\n"
    "fails(input .. '.' .. c.b64url(der), 'signature', 'DER-encoded ES256 signature')\n"
    "fails(input .. '.' .. c.b64url(rs .. '\\0'), 'signature', 'ES256 signature too long')\n"
    "fails(input .. '.' .. c.b64url(string.rep('\\0', 64)), 'signature', 'all-zero ES256 signature')\n"
    "fails(input .. '.' .. c.b64url(rs:sub(33) .. rs:sub(1, 32)), 'signature', 'S||R')\n"
    "fails(hdr .. '.' .. pay .. '.', 'signature', 'empty signature')\n"
    "local pin = b64json({alg = 'PS256', kid = 'p1'}) .. '.' .. b64json(claims)\n"
    "ok(pin .. '.' .. c.b64url((sign('rsa', 'PS256', pin, 32))), nil, 'PS256 salt of 32 bytes')\n"
    "fails(pin .. '.' .. c.b64url((sign('rsa', 'PS256', pin, 0))), 'signature', 'PS256 without salt')\n"
    "fails(pin .. '.' .. c.b64url((sign('rsa', 'PS256', pin, 64))), 'signature', 'PS256 salt of 64 bytes')\n"
    "fails(pin .. '.' .. c.b64url((sign('rsa', 'RS256', pin))), 'signature', 'PKCS#1 v1.5 signature under PS256')\n"
    /* kid and key selection */
    "fails(token('rsa', {alg = 'RS256', kid = 'nope'}, claims), 'kid', 'unknown kid')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, claims), 'kid', 'no keys', nil, {keys = {}})\n"
    "fails(token('rsa', {alg = 'PS256', kid = 'r1'}, claims), 'key', 'key alg RS256 does not allow PS256')\n"
    "fails(token('ec', {alg = 'ES256', kid = 'r1'}, claims), 'key', 'EC alg with an RSA key')\n"
    "fails(token('ec384', {alg = 'ES384', kid = 'e1'}, claims), 'key', 'P-256 key for ES384')\n"
    "fails(token('rsa2', {alg = 'RS256', kid = 'enc'}, claims), 'key', 'encryption key')\n"
    "local e = fails(token('rsa1024', {alg = 'RS256', kid = 'small'}, claims), 'key', '1024-bit RSA key')\n"
    "check(e and e.message:find('2048'), 'small key message: ' .. tostring(e and e.message))\n"
    "local offcurve = copy(ec, {kid = 'off', y = c.b64url(string.rep('\\1', 32))})\n"
    "e = fails(token('ec', {alg = 'ES256', kid = 'off'}, claims), 'key', 'point not on the curve', nil, {keys = {offcurve}})\n"
    "check(e and e.message:find('curve'), 'off-curve message: ' .. tostring(e and e.message))\n"
    "local shortx = copy(ec, {kid = 's', x = c.b64url(c.unb64url(ec.x):sub(2))})\n"
    "fails(token('ec', {alg = 'ES256', kid = 's'}, claims), 'key', 'short x', nil, {keys = {shortx}})\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, claims), 'key', 'bad n', nil, {keys = {copy(rsa, {n = 'A='})}})\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, claims), 'key', 'JWKS without keys', nil, {rsa})\n"
    "fails(token('rsa', {alg = 'RS256'}, claims), 'key', 'keys of the wrong type', nil, {keys = {'x', 1, true}})\n"
    /* algorithms */
    "local function unsigned(header, s) return b64json(header) .. '.' .. b64json(claims) .. '.' .. (s or '') end\n"
    "e = fails(unsigned({alg = 'none'}), 'alg', 'alg none')\n"
    "check(e and e.message:find('none'), 'alg none message')\n"
    "fails(unsigned({alg = 'None', kid = 'r1'}, sig), 'alg', 'alg None with a signature')\n"
    "fails(unsigned({alg = 'NONE'}), 'alg', 'alg NONE')\n"
    /* HS256 keyed with the RSA public key's bytes: the algorithm-confusion forgery */
    "for _, secret in ipairs({c.unb64url(rsa.n), rsa.n, json.encode(rsa), ''}) do\n"
    "  local hin = b64json({alg = 'HS256', kid = 'r1'}) .. '.' .. b64json(claims)\n"
    "  e = fails(hin .. '.' .. c.b64url(c.hmac_sha256(secret, hin)), 'alg', 'HS256 confusion')\n"
    "end\n"
    "check(e and e.message:find('HS256') and e.message:find('confusion'), 'HS256 message: ' .. tostring(e and e.message))\n"
    "fails(unsigned({alg = 'HS512'}, sig), 'alg', 'HS512')\n"
    "fails(unsigned({alg = 'hs384'}, sig), 'alg', 'hs384')\n"
    "fails(unsigned({alg = 'ES256K'}, sig), 'alg', 'unsupported alg')\n"
    "fails(unsigned({alg = 'rs256', kid = 'r1'}, sig), 'alg', 'alg names are case-sensitive')\n"
    "fails(unsigned({kid = 'r1'}, sig), 'alg', 'no alg')\n"
    "fails(unsigned({alg = 256}, sig), 'alg', 'numeric alg')\n"
    "fails(good, 'alg', 'alg not allowed by opts.algs', copy(opts, {algs = {'ES256'}}))\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1', crit = {'exp'}, exp = 1}, claims), 'crit', 'crit header')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 7}, claims), 'malformed', 'numeric kid')\n"
    /* time claims */
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {exp = NOW - 61})), 'expired', 'expired')\n"
    "ok(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {exp = NOW - 59})), nil, 'expired within leeway')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {exp = NOW - 59})), 'expired', 'leeway 0',\n"
    "      copy(opts, {leeway = 0}))\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {exp = NOW})), 'expired', 'exp == now, leeway 0',\n"
    "      copy(opts, {leeway = 0}))\n"
    "ok(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {exp = NOW - 200})), copy(opts, {leeway = 300}), 'leeway 300')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {exp = json.null})), 'exp', 'no exp')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {exp = tostring(NOW + 300)})), 'exp', 'string exp')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {nbf = NOW + 120})), 'nbf', 'nbf in the future')\n"
    "ok(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {nbf = NOW + 30})), nil, 'nbf within leeway')\n"
    "ok(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {nbf = json.null, iat = json.null})), nil, 'no nbf, no iat')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {nbf = 'soon'})), 'nbf', 'string nbf')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {iat = NOW + 3600})), 'iat', 'iat in the future')\n"
    "ok(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {exp = NOW + 300.5, iat = NOW - 0.5})), nil, 'float times')\n"
    /* issuer, audience, nonce */
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {iss = 'https://evil.example'})), 'issuer', 'wrong iss')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {iss = ISS .. '/'})), 'issuer', 'iss with a slash')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {iss = json.null})), 'issuer', 'no iss')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {aud = 'other'})), 'audience', 'wrong aud')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {aud = json.null})), 'audience', 'no aud')\n"
    "ok(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {aud = {'other', AUD}})), nil, 'aud array with the audience')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {aud = {'other', 'more'}})), 'audience', 'aud array without')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {aud = {}})), 'audience', 'empty aud array')\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {aud = {[AUD] = true}})), 'audience', 'aud object')\n"
    "fails(good, 'nonce', 'wrong nonce', copy(opts, {nonce = 'n-2'}))\n"
    "fails(token('rsa', {alg = 'RS256', kid = 'r1'}, copy(claims, {nonce = json.null})), 'nonce', 'missing nonce',\n"
    "      copy(opts, {nonce = 'n-1'}))\n"
    /* malformed tokens */
    "for _, bad in ipairs({'', '.', '..', 'abc', hdr .. '.' .. pay, hdr .. '.' .. pay .. '.' .. sig .. '.x',\n"
    "                      hdr .. '.' .. pay .. '.' .. sig .. '.', '!!!.' .. pay .. '.' .. sig, hdr .. '.!!!.' .. sig,\n"
    "                      hdr .. '.' .. pay .. '.' .. sig .. '=', hdr .. '=.' .. pay .. '.' .. sig,\n"
    "                      c.b64url('not json') .. '.' .. pay .. '.' .. sig, c.b64url('\"str\"') .. '.' .. pay .. '.' .. sig,\n"
    "                      hdr .. '.' .. c.b64url('{\"sub\":') .. '.' .. sig, hdr .. '.' .. c.b64url('[1]x') .. '.' .. sig,\n"
    "                      hdr .. '.' .. c.b64url('42') .. '.' .. sig, hdr .. '.' .. pay .. '.' .. sig:sub(2),\n"
    "                      string.rep('A', 70000)}) do\n"
    "  fails(bad, 'malformed', 'malformed token ' .. bad:sub(1, 40))\n"
    "end\n"
    "fails('.' .. pay .. '.' .. sig, 'malformed', 'empty header')\n"
    "fails(c.b64url('[]') .. '.' .. pay .. '.' .. sig, 'alg', 'array header has no alg')\n"
    "fails(good:gsub('%.', ' . '), 'malformed', 'spaces')\n"
    "local e2 = fails(hdr .. '.' .. pay .. '.' .. sig .. '.x', 'malformed', 'five parts')\n"
    "check(e2 and tostring(e2):match('^invalid_token: malformed'), 'tostring of the error')\n"
    "local kidbad = token('rsa', {alg = 'RS256', kid = 'a\\n\\27[31mb'}, claims)\n"
    "e2 = fails(kidbad, 'kid', 'control characters in kid')\n"
    "check(e2 and not e2.message:find('[%c\\27]'), 'no control characters in the message')\n"
    /* misuse raises */
    "check(not pcall(o.verify_jwt, good, jwks, {audience = AUD}), 'issuer required')\n"
    "check(not pcall(o.verify_jwt, good, jwks, {issuer = ISS}), 'audience required')\n"
    "check(not pcall(o.verify_jwt, good, jwks, {issuer = ISS, audience = AUD, leeway = -1}), 'negative leeway')\n"
    "check(not pcall(o.verify_jwt, good, jwks, {issuer = ISS, audience = AUD, now = 'x'}), 'string now')\n"
    "check(not pcall(o.verify_jwt, good, jwks, {issuer = ISS, audience = AUD, nonce = 1}), 'numeric nonce')\n"
    "check(not pcall(o.verify_jwt, good, jwks), 'opts required')\n"
    "check(not pcall(o.verify_jwt, good, nil, opts), 'jwks required')\n"
    "check(not pcall(o.verify_jwt, nil, jwks, opts), 'token required')\n";

int main(void)
{
    test_pkce_vector();
    test_b64url();

    CHECK(make_keys() == 0);
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_requiref(L, "devex.oauth", luaopen_devex_oauth, 0);
    luaL_requiref(L, "devex.crypto", luaopen_devex_crypto, 0);
    luaL_requiref(L, "devex.json", luaopen_devex_json, 0);
    lua_pop(L, 3);
    lua_register(L, "check", unit_lua_check);
    lua_register(L, "pubjwk", l_pubjwk);
    lua_register(L, "sign", l_sign);
    unit_lua_run(L, "basics", test_lua_basics);
    unit_lua_run(L, "jwt", test_lua_jwt);
    lua_close(L);
    free_keys();
    return unit_done("test_oauth");
}
