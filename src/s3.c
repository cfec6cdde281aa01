/*
 * s3.c: devex.s3 (see s3.h), the C half of devexd's S3 client. What is here
 * is what Lua cannot do well or safely: SigV4 (s3_sigv4.c) with the exact
 * path/query the request must then use, XML parsing with expat (S3 answers
 * XML; a DOCTYPE or entity declaration is refused so no entity expansion can
 * happen, namespaces and "prefix:" qualified names are reduced to the local
 * name), the DeleteObjects body and its Content-MD5, MD5, and directory
 * walking for the fs driver. The I/O itself is lua/storage/s3.lua on
 * devex.http, so retries and concurrency stay in readable Lua.
 *
 * Memory: every function builds its results as Lua values; C allocations
 * (the XML tree, the signer result) are freed before returning or raising.
 */
#include "s3.h"

#include <errno.h>
#include <expat.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "errors.h"
#include "fs_tree.h"
#include "s3_sigv4.h"
#include "textutil.h"

#define XML_MAX_DEPTH 32

/* ---- signing ------------------------------------------------------------ */

static const char *opt_field(lua_State *L, int t, const char *name, const char *def)
{
    lua_getfield(L, t, name); /* left on the stack: keeps the string alive */
    if (lua_isnil(L, -1))
        return def;
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "s3.sign: %s must be a string", name);
    return lua_tostring(L, -1);
}

static const char *value_string(lua_State *L, int idx, const char *what)
{
    int t = lua_type(L, idx);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "s3.sign: %s values must be strings or numbers", what);
    return lua_tostring(L, idx); /* converts the stack copy in place */
}

/* Appends the name/value pairs of t[field] ({name = value} or
 * {{name, value}, ...}) as strings to keep, after its first n entries;
 * returns how many entries were added (2 per pair). */
static int collect_pairs(lua_State *L, int t, const char *field, int keep, int n)
{
    int start = n;
    lua_getfield(L, t, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "s3.sign: %s must be a table", field);
    int src = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, src)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            lua_pushvalue(L, -2);
            lua_rawseti(L, keep, ++n);
            lua_pushstring(L, value_string(L, -1, field));
            lua_rawseti(L, keep, ++n);
        } else if (lua_type(L, -2) == LUA_TNUMBER && lua_istable(L, -1)) {
            lua_rawgeti(L, -1, 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "s3.sign: a %s pair must be {name, value}", field);
            lua_rawseti(L, keep, ++n);
            lua_rawgeti(L, -1, 2);
            if (lua_isnil(L, -1))
                lua_pushliteral(L, "");
            else
                lua_pushstring(L, value_string(L, -1, field));
            lua_rawseti(L, keep, ++n);
            lua_pop(L, 1);
        } else {
            luaL_error(L, "s3.sign: bad %s table", field);
        }
        lua_pop(L, 1);
        if (n - start > 2 * DEVEX_SIGV4_MAX_HEADERS)
            luaL_error(L, "s3.sign: too many %s", field);
    }
    lua_pop(L, 1);
    return n - start;
}

static int sign_common(lua_State *L, int presign)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkstack(L, 40, "s3.sign");
    devex_sigv4_creds_t creds = {0};
    devex_sigv4_request_t req = {0};
    devex_sigv4_header_t headers[DEVEX_SIGV4_MAX_HEADERS];
    devex_sigv4_param_t params[DEVEX_SIGV4_MAX_HEADERS];
    size_t nheaders = 0, nparams = 0;
    bool has_host = false;

    creds.access_key = opt_field(L, 1, "access_key", NULL);
    creds.secret_key = opt_field(L, 1, "secret_key", NULL);
    creds.session_token = opt_field(L, 1, "session_token", NULL);
    creds.region = opt_field(L, 1, "region", NULL);
    creds.service = opt_field(L, 1, "service", "s3");
    req.method = opt_field(L, 1, "method", NULL);
    req.path = opt_field(L, 1, "path", NULL);
    req.query = opt_field(L, 1, "query", NULL);
    const char *host = opt_field(L, 1, "host", NULL);
    req.payload_sha256 = opt_field(L, 1, "payload_hash", NULL);
    if (!creds.access_key || !creds.secret_key || !creds.region || !req.method || !req.path)
        return luaL_error(L, "s3.sign: access_key, secret_key, region, method and path are required");
    if (creds.session_token && !*creds.session_token)
        creds.session_token = NULL;

    char body_hash[DEVEX_SIGV4_HEX_SIZE];
    lua_getfield(L, 1, "body");
    if (!lua_isnil(L, -1)) {
        size_t blen;
        const char *body = luaL_checklstring(L, -1, &blen);
        if (!req.payload_sha256) {
            devex_sigv4_sha256_hex(body, blen, body_hash);
            req.payload_sha256 = body_hash;
        }
    }

    lua_Integer now = time(NULL);
    lua_getfield(L, 1, "time");
    if (!lua_isnil(L, -1))
        now = luaL_checkinteger(L, -1);
    lua_Integer expires = 0;
    if (presign) {
        lua_getfield(L, 1, "expires");
        if (!lua_isinteger(L, -1))
            return luaL_error(L, "s3.presign: expires (integer seconds) is required");
        expires = lua_tointeger(L, -1);
    }

    /* Headers and params are first copied, as strings, into a "keep" table
     * that stays on the stack, so every pointer handed to the signer refers
     * to a string that cannot be collected during the call. */
    lua_newtable(L);
    int keep = lua_gettop(L);
    int nh2 = collect_pairs(L, 1, "headers", keep, 0);
    int np2 = collect_pairs(L, 1, "params", keep, nh2);
    if ((nh2 + np2) / 2 > DEVEX_SIGV4_MAX_HEADERS - 4)
        return luaL_error(L, "s3.sign: too many headers or params");
    for (int i = 0; i < nh2; i += 2) {
        lua_rawgeti(L, keep, i + 1);
        headers[nheaders].name = lua_tostring(L, -1);
        lua_rawgeti(L, keep, i + 2);
        headers[nheaders].value = lua_tostring(L, -1);
        lua_pop(L, 2);
        if (strcasecmp(headers[nheaders].name, "host") == 0)
            has_host = true;
        nheaders++;
    }
    for (int i = nh2; i < nh2 + np2; i += 2) {
        lua_rawgeti(L, keep, i + 1);
        params[nparams].name = lua_tostring(L, -1);
        lua_rawgeti(L, keep, i + 2);
        params[nparams].value = lua_tostring(L, -1);
        lua_pop(L, 2);
        nparams++;
    }
    if (!has_host) {
        if (!host)
            return luaL_error(L, "s3.sign: host (or a Host header) is required");
        headers[nheaders].name = "host";
        headers[nheaders].value = host;
        nheaders++;
    }

    req.headers = headers;
    req.nheaders = nheaders;
    req.params = params;
    req.nparams = nparams;
    req.flags = DEVEX_SIGV4_S3;

    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    int rc = presign ? (expires < 1 || expires > DEVEX_SIGV4_MAX_EXPIRES
                            ? (r.error = "expires must be 1..604800 seconds", -1)
                            : devex_sigv4_presign(&creds, &req, (time_t)now, (long)expires, &r))
                     : devex_sigv4_sign(&creds, &req, (time_t)now, &r);
    if (rc != 0) {
        const char *why = r.error ? r.error : "cannot sign";
        lua_pushnil(L);
        devex_push_error(L, "invalid", why, 0);
        devex_sigv4_result_free(&r);
        return 2;
    }
    lua_createtable(L, 0, 8);
    int out = lua_gettop(L);
    lua_createtable(L, 0, (int)nheaders + 4);
    for (size_t i = 0; i < nheaders; i++) {
        lua_pushstring(L, headers[i].value);
        lua_setfield(L, -2, headers[i].name);
    }
    for (size_t i = 0; i < r.nadded; i++) {
        lua_pushstring(L, r.added[i].value);
        lua_setfield(L, -2, r.added[i].name);
    }
    if (!presign) {
        lua_pushlstring(L, r.authorization.data, r.authorization.len);
        lua_setfield(L, -2, "authorization");
    }
    lua_setfield(L, out, "headers");
    lua_pushlstring(L, r.url_path.data, r.url_path.len);
    lua_setfield(L, out, "path");
    lua_pushlstring(L, r.url_query.data, r.url_query.len);
    lua_setfield(L, out, "query");
    lua_pushlstring(L, r.url_path.data, r.url_path.len);
    if (r.url_query.len) {
        lua_pushliteral(L, "?");
        lua_pushlstring(L, r.url_query.data, r.url_query.len);
        lua_concat(L, 3);
    }
    lua_setfield(L, out, "target");
    lua_pushstring(L, r.signature);
    lua_setfield(L, out, "signature");
    lua_pushlstring(L, r.canonical_request.data, r.canonical_request.len);
    lua_setfield(L, out, "canonical_request");
    lua_pushlstring(L, r.string_to_sign.data, r.string_to_sign.len);
    lua_setfield(L, out, "string_to_sign");
    devex_sigv4_result_free(&r);
    return 1;
}

static int l_sign(lua_State *L)
{
    return sign_common(L, 0);
}

static int l_presign(lua_State *L)
{
    return sign_common(L, 1);
}

/* ---- a small XML tree on expat ------------------------------------------ */

typedef struct xnode {
    char *name; /* local name: namespace URI and prefix removed */
    devex_buf_t text;
    struct xnode *parent, *first, *last, *next;
} xnode_t;

typedef struct {
    XML_Parser p;
    xnode_t *root, *cur;
    int depth;
    const char *error;
} xparse_t;

static void xnode_free(xnode_t *n)
{
    while (n) {
        xnode_t *next = n->next;
        xnode_free(n->first);
        free(n->name);
        devex_buf_free(&n->text);
        free(n);
        n = next;
    }
}

static void x_fail(xparse_t *x, const char *why)
{
    if (!x->error)
        x->error = why;
    XML_StopParser(x->p, XML_FALSE);
}

static void XMLCALL x_start(void *ud, const XML_Char *name, const XML_Char **atts)
{
    xparse_t *x = ud;
    (void)atts;
    if (x->error)
        return;
    if (++x->depth > XML_MAX_DEPTH) {
        x_fail(x, "XML nested too deeply");
        return;
    }
    if (!x->cur && x->root) {
        x_fail(x, "more than one root element");
        return;
    }
    const char *local = strrchr(name, '\x01'); /* namespace separator */
    local = local ? local + 1 : name;
    const char *colon = strrchr(local, ':');
    if (colon)
        local = colon + 1;
    xnode_t *n = calloc(1, sizeof(*n));
    if (!n || !(n->name = strdup(local))) {
        free(n);
        x_fail(x, "out of memory");
        return;
    }
    n->parent = x->cur;
    if (x->cur) {
        if (x->cur->last)
            x->cur->last->next = n;
        else
            x->cur->first = n;
        x->cur->last = n;
    } else {
        x->root = n;
    }
    x->cur = n;
}

static void XMLCALL x_end(void *ud, const XML_Char *name)
{
    xparse_t *x = ud;
    (void)name;
    if (x->error || !x->cur)
        return;
    x->depth--;
    x->cur = x->cur->parent;
}

static void XMLCALL x_text(void *ud, const XML_Char *s, int len)
{
    xparse_t *x = ud;
    if (x->error || !x->cur)
        return;
    devex_buf_append(&x->cur->text, s, (size_t)len);
}

static void XMLCALL x_doctype(void *ud, const XML_Char *name, const XML_Char *sysid, const XML_Char *pubid,
                              int has_internal)
{
    (void)name, (void)sysid, (void)pubid, (void)has_internal;
    x_fail(ud, "DOCTYPE refused");
}

static void XMLCALL x_entity(void *ud, const XML_Char *name, int is_param, const XML_Char *value, int value_len,
                             const XML_Char *base, const XML_Char *sysid, const XML_Char *pubid,
                             const XML_Char *notation)
{
    (void)name, (void)is_param, (void)value, (void)value_len, (void)base, (void)sysid, (void)pubid, (void)notation;
    x_fail(ud, "entity declaration refused");
}

/* Parses data into a tree; returns the root or NULL with *err set. */
static xnode_t *xml_parse(const char *data, size_t len, const char **err)
{
    xparse_t x = {0};
    x.p = XML_ParserCreateNS(NULL, '\x01');
    if (!x.p) {
        *err = "out of memory";
        return NULL;
    }
    XML_SetUserData(x.p, &x);
    XML_SetElementHandler(x.p, x_start, x_end);
    XML_SetCharacterDataHandler(x.p, x_text);
    XML_SetStartDoctypeDeclHandler(x.p, x_doctype);
    XML_SetEntityDeclHandler(x.p, x_entity);
    XML_SetParamEntityParsing(x.p, XML_PARAM_ENTITY_PARSING_NEVER);
    int ok = 1;
    while (ok && len > 0) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        ok = XML_Parse(x.p, data, chunk, 0) == XML_STATUS_OK;
        data += chunk;
        len -= (size_t)chunk;
    }
    if (ok)
        ok = XML_Parse(x.p, "", 0, 1) == XML_STATUS_OK;
    if (!ok && !x.error)
        x.error = XML_ErrorString(XML_GetErrorCode(x.p));
    if (!x.error && !x.root)
        x.error = "no root element";
    XML_ParserFree(x.p);
    if (x.error) {
        xnode_free(x.root);
        *err = x.error;
        return NULL;
    }
    return x.root;
}

static xnode_t *xchild(xnode_t *n, const char *name)
{
    for (xnode_t *c = n ? n->first : NULL; c; c = c->next)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

/* Pushes the text of child `name` of n (url-decoded, '+' as space, when
 * decode is set), or nil. Returns whether it pushed a string. */
static bool push_child_text(lua_State *L, xnode_t *n, const char *name, bool decode)
{
    xnode_t *c = xchild(n, name);
    if (!c) {
        lua_pushnil(L);
        return false;
    }
    const char *s = c->text.data ? c->text.data : "";
    size_t len = c->text.len;
    if (!decode) {
        lua_pushlstring(L, s, len);
        return true;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
        int h1, h2;
        if (s[i] == '%' && i + 2 < len && (h1 = devex_hex_value((unsigned char)s[i + 1])) >= 0 && (h2 = devex_hex_value((unsigned char)s[i + 2])) >= 0) {
            luaL_addchar(&b, (char)(h1 * 16 + h2));
            i += 2;
        } else if (s[i] == '+') {
            luaL_addchar(&b, ' ');
        } else {
            luaL_addchar(&b, s[i]);
        }
    }
    luaL_pushresult(&b);
    return true;
}

static void set_child_text(lua_State *L, int t, xnode_t *n, const char *child, const char *field, bool decode)
{
    t = lua_absindex(L, t);
    push_child_text(L, n, child, decode);
    lua_setfield(L, t, field);
}

static int bad_xml(lua_State *L, const char *what, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof msg, "S3 answered %s that cannot be read: %s", what, why);
    return devex_push_fail(L, "bad_response", msg, 0);
}

static xnode_t *parse_root(lua_State *L, const char *want, const char **err)
{
    size_t len;
    const char *xml = luaL_checklstring(L, 1, &len);
    xnode_t *root = xml_parse(xml, len, err);
    if (root && want && strcmp(root->name, want) != 0) {
        xnode_free(root);
        *err = "unexpected root element";
        return NULL;
    }
    return root;
}

static int l_parse_list(lua_State *L)
{
    const char *err = NULL;
    xnode_t *root = parse_root(L, "ListBucketResult", &err);
    if (!root)
        return bad_xml(L, "a listing", err);
    xnode_t *enc = xchild(root, "EncodingType");
    bool decode = enc && enc->text.data && strcmp(enc->text.data, "url") == 0;
    lua_createtable(L, 0, 6);
    int out = lua_gettop(L);
    lua_newtable(L);
    lua_newtable(L);
    int contents = out + 1, prefixes = out + 2;
    lua_Integer nc = 0, np = 0;
    for (xnode_t *c = root->first; c; c = c->next) {
        if (strcmp(c->name, "Contents") == 0) {
            lua_createtable(L, 0, 5);
            set_child_text(L, -1, c, "Key", "key", decode);
            xnode_t *sz = xchild(c, "Size");
            lua_pushinteger(L, sz && sz->text.data ? strtoll(sz->text.data, NULL, 10) : 0);
            lua_setfield(L, -2, "size");
            set_child_text(L, -1, c, "ETag", "etag", false);
            set_child_text(L, -1, c, "LastModified", "last_modified", false);
            set_child_text(L, -1, c, "StorageClass", "storage_class", false);
            lua_rawseti(L, contents, ++nc);
        } else if (strcmp(c->name, "CommonPrefixes") == 0) {
            if (push_child_text(L, c, "Prefix", decode))
                lua_rawseti(L, prefixes, ++np);
            else
                lua_pop(L, 1);
        }
    }
    lua_setfield(L, out, "common_prefixes");
    lua_setfield(L, out, "contents");
    xnode_t *t = xchild(root, "IsTruncated");
    lua_pushboolean(L, t && t->text.data && strcmp(t->text.data, "true") == 0);
    lua_setfield(L, out, "is_truncated");
    set_child_text(L, out, root, "NextContinuationToken", "next_token", false);
    xnode_t *kc = xchild(root, "KeyCount");
    if (kc && kc->text.data) {
        lua_pushinteger(L, strtoll(kc->text.data, NULL, 10));
        lua_setfield(L, out, "key_count");
    }
    xnode_free(root);
    return 1;
}

static int l_parse_error(lua_State *L)
{
    const char *err = NULL;
    xnode_t *root = parse_root(L, "Error", &err);
    if (!root) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, 0, 5);
    set_child_text(L, -1, root, "Code", "code", false);
    set_child_text(L, -1, root, "Message", "message", false);
    set_child_text(L, -1, root, "RequestId", "request_id", false);
    set_child_text(L, -1, root, "Resource", "resource", false);
    set_child_text(L, -1, root, "Key", "key", false);
    xnode_free(root);
    return 1;
}

static int l_parse_delete_result(lua_State *L)
{
    const char *err = NULL;
    xnode_t *root = parse_root(L, "DeleteResult", &err);
    if (!root)
        return bad_xml(L, "a DeleteObjects result", err);
    lua_createtable(L, 0, 2);
    int out = lua_gettop(L);
    lua_newtable(L);
    lua_newtable(L);
    int deleted = out + 1, errors = out + 2;
    lua_Integer nd = 0, ne = 0;
    for (xnode_t *c = root->first; c; c = c->next) {
        if (strcmp(c->name, "Deleted") == 0) {
            if (push_child_text(L, c, "Key", false))
                lua_rawseti(L, deleted, ++nd);
            else
                lua_pop(L, 1);
        } else if (strcmp(c->name, "Error") == 0) {
            lua_createtable(L, 0, 3);
            set_child_text(L, -1, c, "Key", "key", false);
            set_child_text(L, -1, c, "Code", "code", false);
            set_child_text(L, -1, c, "Message", "message", false);
            lua_rawseti(L, errors, ++ne);
        }
    }
    lua_setfield(L, out, "errors");
    lua_setfield(L, out, "deleted");
    xnode_free(root);
    return 1;
}

static int l_parse_copy_result(lua_State *L)
{
    const char *err = NULL;
    xnode_t *root = parse_root(L, "CopyObjectResult", &err);
    if (!root)
        return bad_xml(L, "a CopyObject result", err);
    lua_createtable(L, 0, 2);
    set_child_text(L, -1, root, "ETag", "etag", false);
    set_child_text(L, -1, root, "LastModified", "last_modified", false);
    xnode_free(root);
    return 1;
}

/* ---- DeleteObjects body, MD5 --------------------------------------------- */

static void md5(const void *data, size_t len, unsigned char out[16])
{
    unsigned int n = 0;
    if (EVP_Digest(data, len, out, &n, EVP_md5(), NULL) != 1 || n != 16)
        abort(); /* as crypto.c: a digest that fails cannot be reported sanely */
}

static void push_base64(lua_State *L, const unsigned char *in, size_t n)
{
    char out[4 * ((16 + 2) / 3) + 1];
    if (n > 16)
        abort();
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    lua_pushlstring(L, out, (size_t)len);
}

static int l_md5_hex(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char d[16];
    char hex[33];
    md5(s, len, d);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    lua_pushlstring(L, hex, 32);
    return 1;
}

static int l_md5_base64(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char d[16];
    md5(s, len, d);
    push_base64(L, d, 16);
    return 1;
}

/* md5_file(path) -> hex, size | nil, err: the MD5 of a file read in 256 KiB
 * pieces, so that a large file is never held in memory (the runner agent's
 * checkpoints compare it with the object's ETag). Blocking reads, like the
 * fs driver's: local files. */
static int l_md5_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        lua_pushnil(L);
        devex_push_error(L, "io", strerror(errno), 0);
        return 2;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_md5(), NULL) != 1)
        abort();
    static _Thread_local unsigned char chunk[256 * 1024];
    size_t n;
    long long total = 0;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (EVP_DigestUpdate(ctx, chunk, n) != 1)
            abort();
        total += (long long)n;
    }
    int failed = ferror(f);
    fclose(f);
    unsigned char d[16];
    unsigned int dl = 0;
    if (EVP_DigestFinal_ex(ctx, d, &dl) != 1 || dl != 16)
        abort();
    EVP_MD_CTX_free(ctx);
    if (failed) {
        lua_pushnil(L);
        devex_push_error(L, "io", "read error", 0);
        return 2;
    }
    static const char digits[] = "0123456789abcdef";
    char hex[33];
    for (int i = 0; i < 16; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    lua_pushlstring(L, hex, 32);
    lua_pushinteger(L, (lua_Integer)total);
    return 2;
}

/* Appends s XML-escaped; returns -1 for a byte XML 1.0 cannot carry. */
static int xml_escape(devex_buf_t *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '&': devex_buf_append_str(b, "&amp;"); break;
        case '<': devex_buf_append_str(b, "&lt;"); break;
        case '>': devex_buf_append_str(b, "&gt;"); break;
        case '"': devex_buf_append_str(b, "&quot;"); break;
        case '\'': devex_buf_append_str(b, "&apos;"); break;
        case '\t': devex_buf_append_str(b, "&#9;"); break;
        case '\n': devex_buf_append_str(b, "&#10;"); break;
        case '\r': devex_buf_append_str(b, "&#13;"); break;
        default:
            if (c < 0x20)
                return -1;
            devex_buf_append(b, &s[i], 1);
        }
    }
    return 0;
}

static int l_delete_body(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int quiet = lua_toboolean(L, 2);
    lua_Integer n = luaL_len(L, 1);
    if (n < 1 || n > 1000)
        return luaL_error(L, "s3.delete_body: 1 to 1000 keys, got %d", (int)n);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "s3.delete_body: keys must be strings");
        lua_pop(L, 1);
    }
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_buf_append_str(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                             "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    if (quiet)
        devex_buf_append_str(&b, "<Quiet>true</Quiet>");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        size_t klen;
        const char *k = lua_tolstring(L, -1, &klen);
        devex_buf_append_str(&b, "<Object><Key>");
        int bad = xml_escape(&b, k, klen);
        lua_pop(L, 1);
        if (bad) {
            devex_buf_free(&b);
            return devex_push_fail(L, "invalid_key", "a key holds a control character XML cannot carry", 0);
        }
        devex_buf_append_str(&b, "</Key></Object>");
    }
    devex_buf_append_str(&b, "</Delete>");
    unsigned char d[16];
    md5(b.data, b.len, d);
    lua_pushlstring(L, b.data, b.len);
    devex_buf_free(&b);
    push_base64(L, d, 16);
    return 2;
}

static int l_uri_encode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int slash = lua_toboolean(L, 2);
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_sigv4_uri_encode(s, len, slash, &b);
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    devex_buf_free(&b);
    return 1;
}

int luaopen_devex_s3(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"sign", l_sign},
        {"presign", l_presign},
        {"parse_list", l_parse_list},
        {"parse_error", l_parse_error},
        {"parse_delete_result", l_parse_delete_result},
        {"parse_copy_result", l_parse_copy_result},
        {"delete_body", l_delete_body},
        {"md5_hex", l_md5_hex},
        {"md5_base64", l_md5_base64},
        {"md5_file", l_md5_file},
        {"uri_encode", l_uri_encode},
        {"fs_walk", devex_fs_walk},       /* fs_tree.c */
        {"fs_mkdir_p", devex_fs_mkdir_p}, /* fs_tree.c */
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
