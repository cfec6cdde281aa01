/*
 * cli.c: devexd's one-shot commands (`devexd templates sync`, `devexd repl
 * stuck`...): the Lua side's require("devex.cli").main(args) runs as a task
 * on a worker's loop in the calling thread, without listeners, until it ends.
 */
#include "worker.h"

#include <stdio.h>

/* ---- command-line tasks ---- */

typedef struct {
    int done;
    int code;
    devex_worker_t *w;
} cli_state_t;

static void cli_done(devex_task_t *t, int status, int nres)
{
    cli_state_t *st = t->data;
    st->done = 1;
    if (status == LUA_OK) {
        int base = lua_gettop(t->co) - nres + 1;
        st->code = nres >= 1 && lua_isinteger(t->co, base) ? (int)lua_tointeger(t->co, base) : 0;
    } else if (status != DEVEX_TASK_KILLED) {
        fprintf(stderr, "devexd: %s\n", luaL_tolstring(t->co, -1, NULL));
        st->code = 1;
    } else {
        st->code = 1;
    }
    uv_stop(&st->w->loop);
}

int devex_worker_run_cli(devex_worker_t *w, int argc, char **argv)
{
    cli_state_t st = {0, 0, w};
    devex_worker_set_current(w);
    lua_State *L = w->vm->L;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "devex.cli");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "devexd: %s\n", lua_tostring(L, -1));
        return 1;
    }
    lua_getfield(L, -1, "main");
    lua_remove(L, -2);
    lua_createtable(L, argc, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    devex_task_spawn(w->vm, L, 1, cli_done, &st, NULL, NULL);
    while (!st.done)
        uv_run(&w->loop, UV_RUN_DEFAULT);
    devex_vm_close(w->vm);
    w->vm = NULL;
    devex_worker_set_current(NULL);
    return st.code;
}
