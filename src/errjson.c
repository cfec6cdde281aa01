/*
 * errjson.c: an H2O output filter that turns the plain-text error responses
 * H2O writes by itself (413 for a body over the limit, 400 for a malformed
 * request...) into JSON {"error": "..."}, so a client of devexd sees the same
 * error shape whether the error came from the Lua app or from the server.
 * Responses made by devexd (server.c) and proxied ones (which carry
 * x-request-id) pass untouched.
 */
#include <h2o.h>
#include <string.h>

#include "errjson.h"
#include "response_origin.h"

typedef struct {
    h2o_ostream_t super;
    h2o_iovec_t body;
    int sent;
} errjson_ostream_t;

static void do_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs, size_t bufcnt, h2o_send_state_t state)
{
    errjson_ostream_t *os = (errjson_ostream_t *)self;
    int head = h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
    if (!os->sent && !head) {
        os->sent = 1;
        h2o_ostream_send_next(self, req, &os->body, 1, state);
    } else {
        h2o_ostream_send_next(self, req, NULL, 0, state);
    }
}

h2o_ostream_t **devex_errjson_set_body(h2o_req_t *req, h2o_ostream_t **slot, h2o_iovec_t body)
{
    req->res.content_length = body.len;
    h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, H2O_STRLIT("application/json"), 1);
    errjson_ostream_t *os = (errjson_ostream_t *)h2o_add_ostream(req, sizeof(*os), slot);
    os->body = body;
    os->sent = 0;
    os->super.do_send = do_send;
    return &os->super.next;
}

static void on_setup_ostream(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
    if (req->res.status >= 400 && !devex_server_made_response(req)) {
        const char *reason = req->res.reason ? req->res.reason : "error";
        size_t rlen = strlen(reason);
        if (rlen > 100)
            rlen = 100;
        char *json = h2o_mem_alloc_pool(&req->pool, rlen + 16);
        size_t n = 0;
        memcpy(json, "{\"error\":\"", 10);
        n = 10;
        for (size_t i = 0; i < rlen; i++) {
            char c = reason[i];
            if (c == '"' || c == '\\' || (unsigned char)c < 0x20)
                c = ' ';
            json[n++] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
        }
        memcpy(json + n, "\"}", 2);
        n += 2;
        slot = devex_errjson_set_body(req, slot, h2o_iovec_init(json, n));
    }
    h2o_setup_next_ostream(req, slot);
}

void devex_errjson_register(h2o_pathconf_t *pathconf)
{
    h2o_filter_t *f = h2o_create_filter(pathconf, sizeof(*f));
    f->on_setup_ostream = on_setup_ostream;
}
