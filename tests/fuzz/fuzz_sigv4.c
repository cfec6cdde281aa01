/*
 * fuzz_sigv4: the SigV4 canonical request (src/s3_sigv4.c): URI encoding,
 * path normalization, query splitting and sorting, header canonicalization.
 * Object keys, prefixes and listing parameters come from users (file names
 * in a REPL). Input: one flags byte (the DEVEX_SIGV4_* bits; 0x10 adds a
 * session token, 0x20 presigns), then lines:
 *   METHOD \n PATH \n QUERY \n PAYLOAD-HASH \n name:value \n name:value ...
 * (an empty query or payload hash means none). Whatever is signed must come
 * out as a request target made only of URI-safe characters.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "s3_sigv4.h"

#define MAX_FIELDS (4 + DEVEX_SIGV4_MAX_HEADERS)

static void check_target(const devex_buf_t *b, const char *extra, const char *what)
{
    for (size_t i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)b->data[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("-_.~%", c) ||
            (c != 0 && strchr(extra, c)))
            continue;
        fprintf(stderr, "fuzz_sigv4: %s holds byte 0x%02x at %zu\n", what, c, i);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0] & 0x0f;
    int session = data[0] & 0x10, presign = data[0] & 0x20;
    /* split into NUL-terminated lines (a NUL inside a line ends it early:
     * the API takes C strings) */
    char *buf = malloc(size);
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    char *field[MAX_FIELDS];
    size_t nf = 0;
    char *p = buf;
    while (nf < MAX_FIELDS) {
        field[nf++] = p;
        char *nl = strchr(p, '\n');
        if (nl == NULL)
            break;
        *nl = '\0';
        p = nl + 1;
    }
    devex_sigv4_header_t headers[DEVEX_SIGV4_MAX_HEADERS];
    size_t nh = 0;
    headers[nh++] = (devex_sigv4_header_t){"host", "examplebucket.s3.amazonaws.com"};
    for (size_t i = 4; i < nf && nh < DEVEX_SIGV4_MAX_HEADERS - 3; i++) {
        char *colon = strchr(field[i], ':');
        if (colon == NULL)
            continue;
        *colon = '\0';
        headers[nh++] = (devex_sigv4_header_t){field[i], colon + 1};
    }
    devex_sigv4_param_t params[] = {{"list-type", "2"}, {"prefix", nf > 2 ? field[2] : NULL}};
    devex_sigv4_request_t req = {
        .method = nf > 0 && field[0][0] ? field[0] : "GET",
        .path = nf > 1 ? field[1] : "/",
        .query = nf > 2 && field[2][0] ? field[2] : NULL,
        .params = params,
        .nparams = (data[0] & 0x40) ? 2 : 0,
        .headers = headers,
        .nheaders = nh,
        .payload_sha256 = nf > 3 && field[3][0] ? field[3] : NULL,
        .flags = flags,
    };
    devex_sigv4_creds_t creds = {
        .access_key = "AKIAIOSFODNN7EXAMPLE",
        .secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        .session_token = session ? "FQoGZXIvYXdzEJr//////////wEaDOQ+token" : NULL,
        .region = "us-east-1",
        .service = "s3",
    };
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    int rc = presign ? devex_sigv4_presign(&creds, &req, 1369353600, 3600, &r)
                     : devex_sigv4_sign(&creds, &req, 1369353600, &r);
    if (rc == 0) {
        check_target(&r.url_path, "/", "url_path");
        check_target(&r.url_query, "=&", "url_query");
        if (r.canonical_request.data == NULL || strlen(r.signature) != 64)
            abort();
    } else if (r.error == NULL) {
        abort(); /* a failure says why */
    }
    devex_sigv4_result_free(&r);
    free(buf);
    return 0;
}
