/*
 * fs.c: devex.fs (see fs.h), the file-system calls the runner agent needs
 * and Lua's io library lacks: directory listing, stat/lstat, realpath (the
 * agent confines every path from a message to the workspace with them, in
 * lua/runner/workspace.lua), mkdir, rename, unlink, copy, and reads/writes
 * that never follow a symlink in the last component. They are plain blocking
 * calls: the files are the workspace's own local ones, small, and the agent
 * serves one user.
 */
#include "fs.h"
#include "errors.h"
#include "textutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- UTF-8 ---- */

/* Whether s[0..n) (n < the sequence's length) can still become a valid sequence. */
static int utf8_prefix(const unsigned char *s, size_t n)
{
    static const unsigned char fills[] = {0x80, 0x90, 0xA0};
    for (size_t f = 0; f < sizeof(fills); f++) {
        unsigned char tmp[4];
        memcpy(tmp, s, n);
        for (size_t i = n; i < 4; i++)
            tmp[i] = i == n ? fills[f] : 0x80;
        size_t k = devex_utf8_seq(tmp, 4);
        if (k > n)
            return 1;
    }
    return 0;
}

size_t devex_utf8_clean(devex_buf_t *b, const unsigned char *s, size_t n, int keep_tail)
{
    size_t i = 0, start = 0;
    while (i < n) {
        size_t k = devex_utf8_seq(s + i, n - i);
        if (k > 0) {
            i += k;
            continue;
        }
        if (keep_tail && n - i < 4 && utf8_prefix(s + i, n - i)) {
            devex_buf_append(b, s + start, i - start);
            return n - i;
        }
        devex_buf_append(b, s + start, i - start);
        devex_buf_append(b, "\xEF\xBF\xBD", 3);
        i++;
        start = i;
    }
    devex_buf_append(b, s + start, n - start);
    return 0;
}

static int l_utf8_clean(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_utf8_clean(&b, (const unsigned char *)s, n, 0);
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    devex_buf_free(&b);
    return 1;
}

/* ---- errors ---- */

static int fail_errno(lua_State *L, int err, const char *what, const char *path)
{
    const char *code = "io";
    switch (err) {
    case ENOENT: code = "not_found"; break;
    case EEXIST: code = "exists"; break;
    case ENOTDIR: code = "not_dir"; break;
    case EISDIR: code = "is_dir"; break;
    case ENOTEMPTY: code = "not_empty"; break;
    case EACCES:
    case EPERM:
    case EROFS: code = "permission"; break;
    case ELOOP: code = "loop"; break;
    case EFBIG: code = "too_large"; break;
    case EINVAL:
    case ENAMETOOLONG:
    case EXDEV: code = "invalid"; break;
    }
    char msg[PATH_MAX + 128];
    snprintf(msg, sizeof(msg), "%s %s: %s", what, path, strerror(err));
    return devex_push_fail(L, code, msg, 0);
}

static const char *check_path(lua_State *L, int idx)
{
    size_t n;
    const char *p = luaL_checklstring(L, idx, &n);
    luaL_argcheck(L, n > 0 && strlen(p) == n, idx, "path must be a non-empty string without NUL");
    return p;
}

static const char *type_name(mode_t m)
{
    if (S_ISREG(m))
        return "file";
    if (S_ISDIR(m))
        return "dir";
    if (S_ISLNK(m))
        return "link";
    return "other";
}

/* ---- listing and metadata ---- */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int l_readdir(lua_State *L)
{
    const char *path = check_path(L, 1);
    DIR *d = opendir(path);
    if (d == NULL)
        return fail_errno(L, errno, "cannot list", path);
    size_t n = 0, cap = 0;
    char **names = NULL;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            char **nn = realloc(names, cap * sizeof(*names));
            if (nn == NULL)
                break;
            names = nn;
        }
        names[n] = strdup(e->d_name);
        if (names[n] != NULL)
            n++;
    }
    int dfd = dirfd(d);
    if (n > 1)
        qsort(names, n, sizeof(*names), cmp_names);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        lua_createtable(L, 0, 2);
        lua_pushstring(L, names[i]);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, fstatat(dfd, names[i], &st, AT_SYMLINK_NOFOLLOW) == 0 ? type_name(st.st_mode) : "other");
        lua_setfield(L, -2, "type");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
        free(names[i]);
    }
    free(names);
    closedir(d);
    return 1;
}

static int push_stat(lua_State *L, const struct stat *st)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, type_name(st->st_mode));
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, (lua_Integer)st->st_size);
    lua_setfield(L, -2, "size");
    lua_pushinteger(L, (lua_Integer)(st->st_mode & 07777));
    lua_setfield(L, -2, "mode");
    lua_pushnumber(L, (lua_Number)st->st_mtim.tv_sec + (lua_Number)st->st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    return 1;
}

static int l_stat(lua_State *L)
{
    const char *path = check_path(L, 1);
    struct stat st;
    if (stat(path, &st) != 0)
        return fail_errno(L, errno, "cannot stat", path);
    return push_stat(L, &st);
}

static int l_lstat(lua_State *L)
{
    const char *path = check_path(L, 1);
    struct stat st;
    if (lstat(path, &st) != 0)
        return fail_errno(L, errno, "cannot stat", path);
    return push_stat(L, &st);
}

static int l_realpath(lua_State *L)
{
    const char *path = check_path(L, 1);
    char *r = realpath(path, NULL);
    if (r == NULL)
        return fail_errno(L, errno, "cannot resolve", path);
    lua_pushstring(L, r);
    free(r);
    return 1;
}

static int l_readlink(lua_State *L)
{
    const char *path = check_path(L, 1);
    char buf[PATH_MAX];
    ssize_t n = readlink(path, buf, sizeof(buf));
    if (n < 0)
        return fail_errno(L, errno, "cannot read link", path);
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

static int ok(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

static int l_symlink(lua_State *L)
{
    const char *target = check_path(L, 1);
    const char *path = check_path(L, 2);
    if (symlink(target, path) != 0)
        return fail_errno(L, errno, "cannot create link", path);
    return ok(L);
}

/* ---- changes ---- */

static int l_mkdir(lua_State *L)
{
    const char *path = check_path(L, 1);
    lua_Integer mode = luaL_optinteger(L, 2, 0755);
    if (mkdir(path, (mode_t)mode) != 0)
        return fail_errno(L, errno, "cannot create folder", path);
    return ok(L);
}

static int l_rmdir(lua_State *L)
{
    const char *path = check_path(L, 1);
    if (rmdir(path) != 0)
        return fail_errno(L, errno, "cannot remove folder", path);
    return ok(L);
}

static int l_unlink(lua_State *L)
{
    const char *path = check_path(L, 1);
    if (unlink(path) != 0)
        return fail_errno(L, errno, "cannot remove", path);
    return ok(L);
}

static int l_rename(lua_State *L)
{
    const char *from = check_path(L, 1);
    const char *to = check_path(L, 2);
    int noreplace = lua_toboolean(L, 3);
    if (noreplace) {
        if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
            return ok(L);
        if (errno != EINVAL && errno != ENOSYS)
            return fail_errno(L, errno, "cannot move to", to);
        struct stat st; /* a file system without RENAME_NOREPLACE */
        if (lstat(to, &st) == 0)
            return fail_errno(L, EEXIST, "cannot move to", to);
    }
    if (rename(from, to) != 0)
        return fail_errno(L, errno, "cannot move to", to);
    return ok(L);
}

static int l_read_file(lua_State *L)
{
    const char *path = check_path(L, 1);
    lua_Integer max = luaL_checkinteger(L, 2);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return fail_errno(L, errno, "cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        close(fd);
        return fail_errno(L, e, "cannot read", path);
    }
    if (st.st_size > max) {
        close(fd);
        char msg[PATH_MAX + 64];
        snprintf(msg, sizeof(msg), "%s is larger than %lld bytes", path, (long long)max);
        return devex_push_fail(L, "too_large", msg, 0);
    }
    devex_buf_t b = DEVEX_BUF_INIT;
    for (;;) {
        devex_buf_reserve(&b, 65536);
        ssize_t n = read(fd, b.data + b.len, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            devex_buf_free(&b);
            return fail_errno(L, e, "cannot read", path);
        }
        if (n == 0)
            break;
        b.len += (size_t)n;
        if ((lua_Integer)b.len > max) {
            close(fd);
            devex_buf_free(&b);
            return fail_errno(L, EFBIG, "cannot read", path);
        }
    }
    close(fd);
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    devex_buf_free(&b);
    return 1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int l_write_file(lua_State *L)
{
    const char *path = check_path(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int exclusive = lua_toboolean(L, 3);
    int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (exclusive ? O_EXCL : O_TRUNC);
    int fd = open(path, flags, 0644);
    if (fd < 0)
        return fail_errno(L, errno, exclusive ? "cannot create" : "cannot write", path);
    if (write_all(fd, data, len) != 0) {
        int e = errno;
        close(fd);
        return fail_errno(L, e, "cannot write", path);
    }
    if (close(fd) != 0)
        return fail_errno(L, errno, "cannot write", path);
    return ok(L);
}

static int l_copy_file(lua_State *L)
{
    const char *src = check_path(L, 1);
    const char *dst = check_path(L, 2);
    int in = open(src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in < 0)
        return fail_errno(L, errno, "cannot open", src);
    struct stat st;
    if (fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(in);
        return fail_errno(L, EINVAL, "cannot copy (not a regular file)", src);
    }
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, st.st_mode & 07777);
    if (out < 0) {
        int e = errno;
        close(in);
        return fail_errno(L, e, "cannot create", dst);
    }
    char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            if (n < 0) {
                close(in);
                close(out);
                unlink(dst);
                return fail_errno(L, e, "cannot read", src);
            }
            break;
        }
        if (write_all(out, buf, (size_t)n) != 0) {
            int e = errno;
            close(in);
            close(out);
            unlink(dst);
            return fail_errno(L, e, "cannot write", dst);
        }
    }
    close(in);
    if (close(out) != 0)
        return fail_errno(L, errno, "cannot write", dst);
    return ok(L);
}

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    return (type == FTW_DP ? rmdir(path) : unlink(path)) == 0 ? 0 : errno;
}

static int l_remove_tree(lua_State *L)
{
    const char *path = check_path(L, 1);
    struct stat st;
    if (lstat(path, &st) != 0)
        return fail_errno(L, errno, "cannot remove", path);
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0)
            return fail_errno(L, errno, "cannot remove", path);
        return ok(L);
    }
    int r = nftw(path, remove_one, 32, FTW_DEPTH | FTW_PHYS);
    if (r != 0)
        return fail_errno(L, r > 0 ? r : errno, "cannot remove", path);
    return ok(L);
}

int luaopen_devex_fs(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"readdir", l_readdir},     {"stat", l_stat},           {"lstat", l_lstat},
        {"realpath", l_realpath},   {"readlink", l_readlink},   {"symlink", l_symlink},
        {"mkdir", l_mkdir},         {"rmdir", l_rmdir},         {"unlink", l_unlink},
        {"rename", l_rename},       {"read_file", l_read_file}, {"write_file", l_write_file},
        {"copy_file", l_copy_file}, {"remove_tree", l_remove_tree}, {"utf8_clean", l_utf8_clean},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    return 1;
}
