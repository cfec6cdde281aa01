/*
 * test_sigv4_presign.c: unit tests of devex_sigv4_presign() (s3_sigv4.c),
 * SigV4 query-string authentication ("presigned URLs").
 *
 *  - the example of the S3 API reference, "Authenticating Requests: Using
 *    Query Parameters (AWS Signature Version 4)": GET /test.txt on
 *    examplebucket.s3.amazonaws.com, AKIAIOSFODNN7EXAMPLE, 20130524T000000Z,
 *    us-east-1, X-Amz-Expires=86400: its canonical request, string to sign
 *    and signature;
 *  - session credentials (X-Amz-Security-Token is a signed parameter, no
 *    header is added), a PUT of a key with spaces and UTF-8, caller's query
 *    parameters kept and sorted;
 *  - input validation (expires range, X-Amz-* parameters of the caller).
 */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "s3_sigv4.h"
#include "unit.h"

#define S3_HOST "examplebucket.s3.amazonaws.com"
#define AK "AKIAIOSFODNN7EXAMPLE"
#define SK "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define T_20130524 ((time_t)1369353600) /* 2013-05-24T00:00:00Z */

static void test_aws_example(void)
{
    devex_sigv4_creds_t c = {.access_key = AK, .secret_key = SK, .region = "us-east-1", .service = "s3"};
    devex_sigv4_header_t h[] = {{"Host", S3_HOST}};
    devex_sigv4_request_t req = {.method = "GET", .path = "/test.txt", .headers = h, .nheaders = 1};
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 86400, &r) == 0);
    CHECK_STR(r.canonical_request.data,
              "GET\n"
              "/test.txt\n"
              "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2F"
              "aws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\n"
              "host:examplebucket.s3.amazonaws.com\n"
              "\n"
              "host\n"
              "UNSIGNED-PAYLOAD");
    CHECK_STR(r.string_to_sign.data,
              "AWS4-HMAC-SHA256\n"
              "20130524T000000Z\n"
              "20130524/us-east-1/s3/aws4_request\n"
              "3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04");
    CHECK_STR(r.signature, "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    CHECK_STR(r.url_path.data, "/test.txt");
    CHECK_STR(r.url_query.data,
              "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2F"
              "aws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
              "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    CHECK_STR(r.signed_headers.data, "host");
    CHECK_STR(r.authorization.data, "");
    CHECK(r.nadded == 0);
    /* the result is reusable */
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 86400, &r) == 0);
    CHECK_STR(r.signature, "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    devex_sigv4_result_free(&r);
}

static void test_session_and_keys(void)
{
    devex_sigv4_creds_t c = {
        .access_key = AK, .secret_key = SK, .session_token = "tok/en+1=", .region = "auto", .service = "s3"};
    devex_sigv4_header_t h[] = {{"host", "s3.local:9000"}};
    devex_sigv4_param_t p[] = {{"versionId", "a b"}};
    devex_sigv4_request_t req = {.method = "PUT",
                                 .path = "/bucket/repl/u/r/dir/été a+b.txt",
                                 .params = p,
                                 .nparams = 1,
                                 .headers = h,
                                 .nheaders = 1};
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 300, &r) == 0);
    CHECK_STR(r.url_path.data, "/bucket/repl/u/r/dir/%C3%A9t%C3%A9%20a%2Bb.txt");
    /* sorted by name (upper case first), the token encoded, signature last */
    const char *q = r.url_query.data;
    CHECK(strstr(q, "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fauto%2Fs3%2F"
                    "aws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=300&X-Amz-Security-Token=tok%2Fen%2B1%3D"
                    "&X-Amz-SignedHeaders=host&versionId=a%20b&X-Amz-Signature=") == q);
    CHECK(strlen(r.signature) == 64);
    CHECK(strstr(r.canonical_request.data, "\nhost:s3.local:9000\n\nhost\nUNSIGNED-PAYLOAD") != NULL);
    CHECK(r.nadded == 0);
    /* another key, another signature */
    char sig[DEVEX_SIGV4_HEX_SIZE];
    memcpy(sig, r.signature, sizeof(sig));
    req.path = "/bucket/repl/u/r2/dir/été a+b.txt";
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 300, &r) == 0);
    CHECK(strcmp(sig, r.signature) != 0);
    /* a signed payload hash is used as given */
    req.payload_sha256 = DEVEX_SIGV4_EMPTY_SHA256;
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 300, &r) == 0);
    CHECK(strstr(r.canonical_request.data, "\nhost\n" DEVEX_SIGV4_EMPTY_SHA256) != NULL);
    devex_sigv4_result_free(&r);
}

static void test_errors(void)
{
    devex_sigv4_creds_t c = {.access_key = AK, .secret_key = SK, .region = "us-east-1", .service = "s3"};
    devex_sigv4_header_t h[] = {{"Host", S3_HOST}};
    devex_sigv4_request_t req = {.method = "GET", .path = "/test.txt", .headers = h, .nheaders = 1};
    devex_sigv4_result_t r = DEVEX_SIGV4_RESULT_INIT;
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 0, &r) == -1 && r.error != NULL);
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 604801, &r) == -1 && r.error != NULL);
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 604800, &r) == 0 && r.error == NULL);
    devex_sigv4_param_t p[] = {{"X-Amz-Signature", "0"}};
    req.params = p;
    req.nparams = 1;
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 60, &r) == -1);
    p[0].name = "x-amz-expires";
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 60, &r) == -1);
    req.nparams = 0;
    req.path = "test.txt";
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 60, &r) == -1 && r.error != NULL);
    CHECK(r.url_query.len == 0);
    req.path = "/test.txt";
    req.nheaders = 0;
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 60, &r) == -1); /* no host */
    c.access_key = "bad/key";
    req.nheaders = 1;
    CHECK(devex_sigv4_presign(&c, &req, T_20130524, 60, &r) == -1);
    CHECK(devex_sigv4_presign(NULL, &req, T_20130524, 60, &r) == -1);
    devex_sigv4_result_free(&r);
}

int main(void)
{
    test_aws_example();
    test_session_and_keys();
    test_errors();
    return unit_done("sigv4_presign");
}
