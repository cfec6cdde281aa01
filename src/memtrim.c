/*
 * memtrim.c: gives memory back after a burst. A request burst leaves garbage in
 * the worker's Lua heap and freed blocks in the allocator, which together kept
 * an idle devexd several MB above its startup size. Once a second each worker
 * looks whether requests arrived since the last look; the first quiet second
 * after some traffic it runs a full Lua collection and asks the allocator to
 * return free pages to the OS. A busy worker never pays for it.
 *
 * Requests still in flight do not hold it back (they did: with any IDE open,
 * a proxied WebSocket in flight, it never ran). Parked ones,
 * session starts waiting for their pods, are quiet, and a burst of them is
 * when the garbage of their API calls is worth giving back. Background tasks
 * (the sweep, timers) are not traffic: counting them would leave no quiet
 * second at all. What they leave behind is looked at instead: a Lua heap
 * grown by a quarter (and by at least GROWTH_KB) since the last collection
 * is collected in the next quiet second too. The sweep's first pass over 400
 * REPLs (building its indexes) left 11 MB of garbage in an idle worker,
 * which the generational collector, with nothing more allocated, never
 * reached; and parked session starts, still busy for seconds after their
 * requests came (pod and event notes), left 1.4 MB of garbage on a 4.2 MB
 * heap that waited below "grown by half" for as long as they stayed parked
 * (11 KB more resident memory per parked start, in one worker of two).
 *
 * The collection is an incremental one (collect_all): only that kind shrinks
 * the stacks of coroutines, which the generational collector the workers run
 * does not (except while a bad collection has left it incremental for a
 * while). Of 529 parked session starts, 272 kept the 160-176 slots their API
 * calls had grown their coroutine to (about 2.7 KB) where the wait needs 52.
 */
#include "memtrim.h"

#include "heaps.h"

#define IDLE_TICK_MS 1000
#define GROWTH_KB 512

/* A full collection in incremental mode, then back to generational: Lua
 * 5.4 shrinks a coroutine's stack (and frees half its unused call records)
 * only when an incremental cycle traverses it outside the atomic step; a
 * generational collection traverses threads in the atomic step alone. The
 * step after the switch back is a young collection that sets the next
 * one's allowance as a generational collection would: the switch leaves the
 * incremental cycle's (the heap may double first; an 18 MB heap grew by
 * 18 MB before its next collection, by 3.6 MB with the step). */
static void collect_all(lua_State *L)
{
    lua_gc(L, LUA_GCINC, 0, 0, 0);
    lua_gc(L, LUA_GCCOLLECT);
    lua_gc(L, LUA_GCGEN, 0, 0);
    lua_gc(L, LUA_GCSTEP, 0);
}

static void on_tick(uv_timer_t *h)
{
    devex_worker_t *w = h->data;
    uint64_t served = w->served;
    if (served != w->served_at_tick) {
        w->served_at_tick = served;
        w->dirty = true;
        return;
    }
    if (w->vm != NULL && w->trim_vm != w->vm) { /* the first tick, or the first since a reload */
        w->trim_vm = w->vm;
        w->lua_kb_after_trim = lua_gc(w->vm->L, LUA_GCCOUNT);
    }
    if (!w->dirty && w->vm != NULL) {
        int kb = lua_gc(w->vm->L, LUA_GCCOUNT);
        w->dirty = kb > w->lua_kb_after_trim + GROWTH_KB && kb > w->lua_kb_after_trim * 5 / 4;
    }
    if (!w->dirty)
        return;
    w->dirty = false;
    if (w->vm != NULL) {
        collect_all(w->vm->L);
        w->lua_kb_after_trim = lua_gc(w->vm->L, LUA_GCCOUNT);
    }
    devex_heaps_collect(); /* heaps.c: the thread's free pages back to the system */
}

void devex_idle_start(devex_worker_t *w)
{
    uv_timer_init(&w->loop, &w->idle_timer);
    w->idle_timer.data = w;
    uv_timer_start(&w->idle_timer, on_tick, IDLE_TICK_MS, IDLE_TICK_MS);
    uv_unref((uv_handle_t *)&w->idle_timer); /* never what keeps the loop running */
}
