-- policy.sandbox: the limits of one runner of the local runtime with
-- runtime.isolation on (lua/runtime/sandbox.lua), and of what a save of its
-- workspace reads (with or without isolation).
--   memory      bytes: the memory cgroup's limit (RLIMIT_AS when no memory
--               cgroup can be made: then it bounds address space, not use)
--   cpu         CPUs (1.5 = one and a half), a CFS quota where the cpu
--               controller is available; nil: no CPU limit
--   processes   tasks: pids.max and RLIMIT_NPROC (per uid: each runner has its own)
--   file_size   bytes: RLIMIT_FSIZE, no file grows beyond it (the disk bound
--               per file; EFBIG / SIGXFSZ for the writer)
--   open_files  RLIMIT_NOFILE
--   tmp_size    bytes: the sandbox's /tmp (a tmpfs, charged to its memory)
--   save_file_max   bytes: a file larger than this (by its size, sparse or
--                   not) is not saved; the save records an error naming it
--                   and saves the rest
--   save_total_max  bytes: the whole workspace; files past it are skipped the same way
return {
  memory = 1024 * 1024 * 1024,
  cpu = 1,
  processes = 256,
  file_size = 1024 * 1024 * 1024,
  open_files = 4096,
  tmp_size = 256 * 1024 * 1024,
  save_file_max = 1024 * 1024 * 1024,
  save_total_max = 4 * 1024 * 1024 * 1024,
}
