/*
 * fs_tree.h: recursive file-system helpers (fs_tree.c), Lua functions that
 * devex.s3 registers as s3.fs_walk and s3.fs_mkdir_p:
 *
 *   fs_walk(dir[, hidden]) -> { {path = "a/b" (relative), size = n, mtime = s}... }
 *                             regular files, recursive (64 levels), names starting with "."
 *                             skipped unless hidden; a missing dir is an empty list | nil, err
 *   fs_mkdir_p(dir)        -> true | nil, err
 */
#ifndef DEVEX_FS_TREE_H
#define DEVEX_FS_TREE_H

#include <lua.h>

int devex_fs_walk(lua_State *L);
int devex_fs_mkdir_p(lua_State *L);

#endif
