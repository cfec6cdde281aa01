/*
 * fs_tree.c: two recursive file-system helpers of the storage drivers and the
 * local runtime (lua/storage/fs.lua, lua/storage/sync.lua, lua/runtime/local.lua...):
 * listing every regular file under a directory, and mkdir -p. Lua reaches
 * them as s3.fs_walk and s3.fs_mkdir_p (devex.s3 registers them, where they
 * were first written).
 */
#include "fs_tree.h"
#include "buf.h"
#include "errors.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define FS_WALK_MAX_DEPTH 64

static int walk(lua_State *L, int out, lua_Integer *n, devex_buf_t *path, size_t root_len, int depth, int hidden)
{
    if (depth > FS_WALK_MAX_DEPTH)
        return 0;
    DIR *d = opendir(path->data);
    if (!d)
        return errno == ENOENT && depth == 0 ? 0 : -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' && (!hidden || e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0')))
            continue; /* ".", "..", and unless asked for, dot files (the driver's ".devex-tmp") */
        size_t save = path->len;
        devex_buf_append_str(path, "/");
        devex_buf_append_str(path, e->d_name);
        struct stat st;
        if (lstat(path->data, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                if (walk(L, out, n, path, root_len, depth + 1, hidden) != 0)
                    rc = -1;
            } else if (S_ISREG(st.st_mode)) {
                lua_createtable(L, 0, 3);
                lua_pushstring(L, path->data + root_len + 1);
                lua_setfield(L, -2, "path");
                lua_pushinteger(L, (lua_Integer)st.st_size);
                lua_setfield(L, -2, "size");
                lua_pushinteger(L, (lua_Integer)st.st_mtime);
                lua_setfield(L, -2, "mtime");
                lua_rawseti(L, out, ++*n);
            }
        }
        path->len = save;
        path->data[save] = '\0';
        if (rc)
            break;
    }
    closedir(d);
    return rc;
}

int devex_fs_walk(lua_State *L)
{
    size_t len;
    const char *dir = luaL_checklstring(L, 1, &len);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    int hidden = lua_toboolean(L, 2); /* fs_walk(dir, true): dot files too (workspaces) */
    lua_newtable(L);
    int out = lua_gettop(L);
    devex_buf_t path = DEVEX_BUF_INIT;
    devex_buf_append(&path, dir, len);
    lua_Integer n = 0;
    int rc = walk(L, out, &n, &path, len, 0, hidden);
    int saved = errno;
    if (rc != 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "cannot list %s: %s", path.data, strerror(saved));
        devex_buf_free(&path);
        return devex_push_fail(L, "io", msg, 0);
    }
    devex_buf_free(&path);
    return 1;
}

int devex_fs_mkdir_p(lua_State *L)
{
    size_t len;
    const char *dir = luaL_checklstring(L, 1, &len);
    devex_buf_t p = DEVEX_BUF_INIT;
    devex_buf_append(&p, dir, len);
    for (size_t i = 1; i <= p.len; i++) {
        if (i == p.len || p.data[i] == '/') {
            char c = p.data[i];
            p.data[i] = '\0';
            if (mkdir(p.data, 0755) != 0 && errno != EEXIST) {
                char msg[512];
                snprintf(msg, sizeof msg, "cannot create %s: %s", p.data, strerror(errno));
                devex_buf_free(&p);
                return devex_push_fail(L, "io", msg, 0);
            }
            p.data[i] = c;
        }
    }
    devex_buf_free(&p);
    lua_pushboolean(L, 1);
    return 1;
}
