/*
 * memtrim.h: gives a worker's memory back after a burst of requests (memtrim.c).
 */
#ifndef DEVEX_MEMTRIM_H
#define DEVEX_MEMTRIM_H

#include "worker.h"

/* Starts the worker's once-a-second check that returns memory after traffic. */
void devex_idle_start(devex_worker_t *w);

#endif
