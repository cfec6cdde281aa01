/*
 * worker_current.c: which worker the calling thread runs (a thread-local set
 * by worker.c and cli.c), and its loop and id. Every primitive asks this to
 * find the loop its I/O goes on; it is a file of its own so that they depend
 * on this and not on the worker machinery (worker.c loads the VMs that load
 * the primitives).
 */
#include "worker.h"

static _Thread_local devex_worker_t *current_worker;

void devex_worker_set_current(devex_worker_t *w)
{
    current_worker = w;
}

devex_worker_t *devex_worker_current(void)
{
    return current_worker;
}

uv_loop_t *devex_worker_loop(devex_worker_t *w)
{
    return &w->loop;
}

int devex_worker_id(devex_worker_t *w)
{
    return w ? w->id : -1;
}
