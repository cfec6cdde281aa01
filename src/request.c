/*
 * request.c: the request object Lua sees, a small userdata over the H2O
 * request. Accessors read H2O's data lazily, so a handler that never looks at
 * headers or the body costs nothing for them. Once the response is sent or
 * the client is gone the userdata is detached and every accessor returns nil.
 *
 * The userdata has no __gc: the task's stack holds it until the task ends, and
 * the request detaches it (request_done, or reqctx_dispose when the client
 * leaves first) before it can become garbage. Finalizers cost a second pass
 * of the collector for every request.
 */
#include "server.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    devex_reqctx_t *rc;
} request_ud_t;

/* the metatable's registry key: a pointer lookup, no string hashing per request */
static const char request_mt_key = 0;

void devex_request_push(lua_State *L, devex_reqctx_t *rc)
{
    request_ud_t *ud = lua_newuserdatauv(L, sizeof(*ud), 0);
    ud->rc = rc;
    rc->ud = ud;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &request_mt_key);
    lua_setmetatable(L, -2);
}

void devex_request_detach(devex_reqctx_t *rc)
{
    if (rc->ud != NULL)
        ((request_ud_t *)rc->ud)->rc = NULL;
    rc->ud = NULL;
}

static request_ud_t *check_ud(lua_State *L)
{
    return devex_check_udata_up(L, 1, "devex.request");
}

static h2o_req_t *check_req(lua_State *L)
{
    request_ud_t *ud = check_ud(L);
    return ud->rc ? ud->rc->req : NULL;
}

/* Pushes all values of headers named `name` (lowercase), joined with sep. */
static int push_header(lua_State *L, h2o_req_t *req, const char *name, size_t nlen)
{
    luaL_Buffer b;
    int found = 0;
    const char *sep = (nlen == 6 && memcmp(name, "cookie", 6) == 0) ? "; " : ", ";
    ssize_t i = -1;
    while ((i = h2o_find_header_by_str(&req->headers, name, nlen, i)) != -1) {
        if (!found)
            luaL_buffinit(L, &b);
        else
            luaL_addstring(&b, sep);
        luaL_addlstring(&b, req->headers.entries[i].value.base, req->headers.entries[i].value.len);
        found = 1;
    }
    if (!found)
        return 0;
    luaL_pushresult(&b);
    return 1;
}

static int l_header(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    size_t n;
    const char *name = luaL_checklstring(L, 2, &n);
    if (req == NULL || n == 0 || n > 256)
        return 0;
    char lower[257];
    for (size_t i = 0; i < n; i++)
        lower[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
    lower[n] = '\0';
    return push_header(L, req, lower, n) ? 1 : 0;
}

static int l_headers(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    if (req == NULL)
        return 0;
    lua_createtable(L, 0, (int)req->headers.size);
    for (size_t i = 0; i < req->headers.size; i++) {
        h2o_iovec_t *name = req->headers.entries[i].name;
        lua_pushlstring(L, name->base, name->len);
        if (lua_rawget(L, -2) != LUA_TNIL) {
            lua_pop(L, 1);
            continue; /* already joined */
        }
        lua_pop(L, 1);
        lua_pushlstring(L, name->base, name->len);
        push_header(L, req, name->base, name->len);
        lua_rawset(L, -3);
    }
    return 1;
}

static int l_query(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    if (req == NULL || req->query_at == SIZE_MAX)
        return 0;
    lua_pushlstring(L, req->path.base + req->query_at + 1, req->path.len - req->query_at - 1);
    return 1;
}

static int l_body(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    if (req == NULL || req->entity.base == NULL)
        return 0;
    lua_pushlstring(L, req->entity.base, req->entity.len);
    return 1;
}

static int l_remote_addr(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    if (req == NULL)
        return 0;
    struct sockaddr_storage ss;
    socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    char buf[INET6_ADDRSTRLEN];
    if (len == 0)
        return 0;
    const void *addr = ss.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                                                : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
    if (inet_ntop(ss.ss_family, addr, buf, sizeof(buf)) == NULL)
        return 0;
    lua_pushstring(L, buf);
    return 1;
}

static int l_scheme(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    if (req == NULL)
        return 0;
    lua_pushlstring(L, req->scheme->name.base, req->scheme->name.len);
    return 1;
}

static int l_authority(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    if (req == NULL)
        return 0;
    lua_pushlstring(L, req->authority.base, req->authority.len);
    return 1;
}

/* The Upgrade header of an HTTP/1.1 request (H2O keeps it apart from the
 * other headers), or nothing. */
static int l_upgrade(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    if (req == NULL || req->upgrade.base == NULL)
        return 0;
    lua_pushlstring(L, req->upgrade.base, req->upgrade.len);
    return 1;
}

static int l_http_version(lua_State *L)
{
    h2o_req_t *req = check_req(L);
    if (req == NULL)
        return 0;
    lua_pushstring(L, req->version >= 0x200 ? "2" : req->version == 0x101 ? "1.1" : "1.0");
    return 1;
}

/* The request id; it stays readable after the response is sent (log lines). */
static int l_id(lua_State *L)
{
    request_ud_t *ud = check_ud(L);
    if (ud->rc == NULL) {
        devex_task_t *t = devex_task_of(L);
        if (t == NULL || t->request_id[0] == '\0')
            return 0;
        lua_pushstring(L, t->request_id);
        return 1;
    }
    lua_pushstring(L, ud->rc->request_id);
    return 1;
}

static int l_aborted(lua_State *L)
{
    request_ud_t *ud = check_ud(L);
    lua_pushboolean(L, ud->rc == NULL);
    return 1;
}

int luaopen_devex_request(lua_State *L)
{
    static const luaL_Reg methods[] = {{"header", l_header},
                                       {"headers", l_headers},
                                       {"query", l_query},
                                       {"body", l_body},
                                       {"remote_addr", l_remote_addr},
                                       {"scheme", l_scheme},
                                       {"authority", l_authority},
                                       {"http_version", l_http_version},
                                       {"upgrade", l_upgrade},
                                       {"aborted", l_aborted},
                                       {"id", l_id},
                                       {NULL, NULL}};
    if (luaL_newmetatable(L, "devex.request")) {
        lua_pushvalue(L, -1);
        luaL_setfuncs(L, methods, 1); /* upvalue: the metatable, for check_ud */
        lua_pushvalue(L, -1);
        lua_setfield(L, -2, "__index");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &request_mt_key);
    }
    return 1;
}
