/*
 * fs.h: devex.fs (fs.c), the file-system calls Lua lacks, for the runner
 * agent's workspace operations. Blocking system calls on local files (the
 * workspace is a local directory); every function returns `nil, err` with a
 * stable err.code on failure: not_found, exists, not_dir, is_dir, not_empty,
 * permission, loop (a symlink where none is allowed), too_large, invalid, io.
 *
 *   fs.readdir(path)            -> { {name=, type="file"|"dir"|"link"|"other"}, ... } sorted by name
 *   fs.stat(path), fs.lstat(path) -> {type=, size=, mode=, mtime=}
 *   fs.realpath(path)           -> absolute path without symlinks, . or ..
 *   fs.readlink(path), fs.symlink(target, path)
 *   fs.mkdir(path[, mode])      fs.rmdir(path)     fs.unlink(path)
 *   fs.rename(old, new[, noreplace])  noreplace: fails with "exists" instead of replacing
 *   fs.read_file(path, max)     -> contents  (the last component is never followed)
 *   fs.write_file(path, data[, exclusive])  exclusive: the file must not exist; never follows
 *                                           a symlink in the last component
 *   fs.copy_file(src, dst)      -> true      dst must not exist; mode kept
 *   fs.remove_tree(path)        -> true      never follows symlinks
 *   fs.utf8_clean(s)            -> s with every invalid UTF-8 sequence replaced by U+FFFD
 */
#ifndef DEVEX_FS_H
#define DEVEX_FS_H

#include "buf.h"
#include "devex.h"

/* Appends s[0..n) to b with invalid UTF-8 replaced by U+FFFD. With keep_tail,
 * an incomplete sequence at the very end is not appended: returns its length
 * (0..3), which the caller keeps for the next call. */
size_t devex_utf8_clean(devex_buf_t *b, const unsigned char *s, size_t n, int keep_tail);

int luaopen_devex_fs(lua_State *L);

#endif
