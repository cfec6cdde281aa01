/*
 * fuzz_workspace_paths: the runner agent's path checks (lua/runner/workspace.lua:
 * resolve, with and without following a final symbolic link, read and list),
 * which every path in a runner protocol message goes through. Read-only: the
 * workspace is a private temporary folder made here with files, folders and
 * symbolic links pointing inside and outside it (to a SECRET file beside it
 * and to /etc/hostname). Whatever resolves must stay inside the workspace,
 * and no read may return the secret.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_lua.h"

static char base[64];

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

static void cleanup(void)
{
    nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void put(const char *base, const char *rel, const char *text)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", base, rel);
    FILE *f = fopen(p, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
        abort();
}

static void dir(const char *base, const char *rel)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", base, rel);
    if (mkdir(p, 0700) != 0)
        abort();
}

static void link_(const char *base, const char *rel, const char *target)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", base, rel);
    if (symlink(target, p) != 0)
        abort();
}

static const char *setup =
    "local workspace = require('runner.workspace')\n"
    "local ws = assert(workspace.open(WS_ROOT))\n"
    "local root = ws.root\n"
    "local function inside(p) return p == root or p:sub(1, #root + 1) == root .. '/' end\n"
    "assert(ws:read('a.txt') == 'hello\\n')\n"
    "assert(ws:read('in/b.txt') == 'inside\\n')\n"
    "assert(not ws:read('out'))\n"
    "function fuzz_one(s)\n"
    "  local r = ws:resolve(s, 'follow')\n"
    "  if r then check(inside(r.path), 'resolve(follow) left the workspace: ' .. r.path) end\n"
    "  r = ws:resolve(s, 'nofollow')\n"
    "  if r then check(inside(r.path), 'resolve(nofollow) left the workspace: ' .. r.path) end\n"
    "  local data = ws:read(s)\n"
    "  if data then check(not data:find('SECRET', 1, true), 'read a file outside the workspace') end\n"
    "  local list = ws:list(s)\n"
    "  if list then for _, e in ipairs(list) do check(type(e.name) == 'string', 'entry names') end end\n"
    "end\n";

static void prepare(lua_State *L)
{
    static char root[96];
    snprintf(base, sizeof base, "%s", "/tmp/devex-fuzz-ws-XXXXXX");
    if (mkdtemp(base) == NULL)
        abort();
    atexit(cleanup);
    put(base, "secret.txt", "SECRET\n");
    dir(base, "ws");
    snprintf(root, sizeof root, "%s/ws", base);
    put(root, "a.txt", "hello\n");
    dir(root, "dir");
    put(root, "dir/b.txt", "inside\n");
    dir(root, "dir/sub");
    link_(root, "in", "dir");
    link_(root, "out", "../secret.txt");
    link_(root, "outdir", "..");
    link_(root, "dir/up", "..");
    link_(root, "dir/esc", "../../secret.txt");
    link_(root, "dir/sub/deep", "../../../ws/../secret.txt");
    link_(root, "abs", "/etc/hostname");
    link_(root, "loop", "loop");
    link_(root, "broken", "nothing-here");
    lua_pushstring(L, root);
    lua_setglobal(L, "WS_ROOT");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_lua_run(setup, prepare, data, size);
}
