/*
 * s3_sigv4.h: AWS Signature Version 4 (the Authorization header form) for
 * devexd's S3 client, on crypto.c's SHA-256 and HMAC-SHA256.
 *
 * One call, devex_sigv4_sign(), turns a request (method, RAW path, raw query,
 * the headers to sign, the payload hash) plus credentials and a time into the
 * Authorization header value, the headers the signer adds, and the encoded
 * path and query the HTTP request must use so that what is sent is what was
 * signed. The steps are exposed too, for tests and debugging: URI encoding,
 * the canonical request, the string to sign, and the signing key chain.
 *
 * Encoding rules (AWS "UriEncode"): bytes A-Z a-z 0-9 - _ . ~ are kept,
 * every other byte (UTF-8 bytes included) becomes %XX with upper-case hex;
 * '/' is kept in the path and encoded as %2F in query names and values.
 *
 * S3 (flags 0, DEVEX_SIGV4_S3) differs from the other AWS services:
 *   - the canonical URI is the object path encoded ONCE, exactly as it goes
 *     on the request line, and it is never normalized ("a/./b", "a//b" and
 *     "a/.." are distinct keys);
 *   - an x-amz-content-sha256 header carrying the payload hash is added to
 *     the request (and signed) when the caller did not pass one.
 * Other services (DEVEX_SIGV4_GENERIC) sign the path encoded twice (the URL
 * path, encoded again), after removing "." and ".." segments and empty
 * segments, and get no x-amz-content-sha256 header.
 *
 * Ownership: every input is borrowed for the duration of the call only. The
 * result owns all of its strings; release them with devex_sigv4_result_free()
 * (a result may be passed to devex_sigv4_sign() again: it is reset, and its
 * buffers reused). The secret key is never copied into a result (the session
 * token is, as a header value to send); the signing key chain
 * (devex_sigv4_key_t) is secret material, wipe it with devex_sigv4_key_wipe().
 *
 * Thread safety: no global state; distinct results/keys may be used from
 * distinct threads at once.
 */
#ifndef DEVEX_S3_SIGV4_H
#define DEVEX_S3_SIGV4_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "buf.h"
#include "crypto.h"

#define DEVEX_SIGV4_ALGORITHM "AWS4-HMAC-SHA256"
#define DEVEX_SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
/* SHA-256 of the empty string: the payload hash of a request without body */
#define DEVEX_SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/* sizes with the terminating NUL: "YYYYMMDDTHHMMSSZ", "YYYYMMDD", hex digests */
#define DEVEX_SIGV4_AMZ_DATE_SIZE 17
#define DEVEX_SIGV4_DATE_SIZE 9
#define DEVEX_SIGV4_HEX_SIZE (2 * DEVEX_SHA256_LEN + 1)
/* the most headers a signed request may carry (the caller's plus the 3 the
 * signer may add) */
#define DEVEX_SIGV4_MAX_HEADERS 64

/* Credentials and scope. All strings are borrowed. session_token may be NULL
 * (long-term keys); when set, the signer adds a signed x-amz-security-token
 * header. access_key, region and service must be non-empty and hold no '/',
 * ',', space, control or non-ASCII byte (they end up in the credential
 * scope). */
typedef struct devex_sigv4_creds {
    const char *access_key;
    const char *secret_key;
    const char *session_token;
    const char *region;  /* "us-east-1" */
    const char *service; /* "s3" */
} devex_sigv4_creds_t;

/* A header to sign, or (devex_sigv4_param_t) a RAW query parameter. */
typedef struct devex_sigv4_header {
    const char *name;
    const char *value;
} devex_sigv4_header_t;
typedef devex_sigv4_header_t devex_sigv4_param_t;

enum {
    /* S3: single-encoded, unnormalized path; x-amz-content-sha256 added */
    DEVEX_SIGV4_S3 = 0,
    /* do not add an x-amz-content-sha256 header (the payload hash is still
     * the last line of the canonical request) */
    DEVEX_SIGV4_NO_CONTENT_SHA256 = 1u << 0,
    /* the canonical URI is the URL path encoded a second time */
    DEVEX_SIGV4_DOUBLE_ENCODE_PATH = 1u << 1,
    /* remove empty, "." and ".." path segments before encoding the
     * canonical URI (the URL path is left as given) */
    DEVEX_SIGV4_NORMALIZE_PATH = 1u << 2,
    /* query-string authentication (devex_sigv4_presign sets it): the signer
     * adds no x-amz-date, x-amz-content-sha256 or x-amz-security-token
     * header; those travel as X-Amz-* query parameters */
    DEVEX_SIGV4_QUERY_AUTH = 1u << 3,
    /* every AWS service but S3 */
    DEVEX_SIGV4_GENERIC = DEVEX_SIGV4_NO_CONTENT_SHA256 | DEVEX_SIGV4_DOUBLE_ENCODE_PATH | DEVEX_SIGV4_NORMALIZE_PATH,
};

/* A request to sign. All pointers are borrowed; arrays may be NULL when
 * their count is 0. */
typedef struct devex_sigv4_request {
    /* "GET", "PUT", ...: an HTTP token, used as given (case-sensitive) */
    const char *method;
    /* The RAW (not percent-encoded) path, starting with '/': for S3 "/" +
     * the object key (virtual-hosted style) or "/bucket/key" (path style),
     * e.g. "/photos/été 2024/a+b=c.jpg". Any byte but NUL may appear. */
    const char *path;
    /* RAW query "name=value&name2&..." or NULL. Not form-encoded: '+' is a
     * plus and '%' a percent sign. Split on '&' (empty pieces ignored), then
     * at the first '=' (a piece without '=' is a name with an empty value,
     * "acl" -> "acl="). For names or values holding '&', use params. */
    const char *query;
    /* further RAW query parameters (value NULL means empty) */
    const devex_sigv4_param_t *params;
    size_t nparams;
    /* The headers to sign, as they will be sent. Must include "host". Names
     * are matched case-insensitively and must be HTTP tokens; "authorization"
     * is refused. Values are canonicalized (CR and LF become spaces, runs of
     * spaces and tabs become one space, leading/trailing space is dropped);
     * other control bytes are refused. Repeated names are joined with ','
     * in the order given. If the caller passes x-amz-date, it must equal the
     * signing time; x-amz-content-sha256, it must equal the payload hash;
     * x-amz-security-token with a session token, it must equal the token.
     * Send only headers that are signed, or that proxies may not change. */
    const devex_sigv4_header_t *headers;
    size_t nheaders;
    /* Lower-case hex SHA-256 of the body, or "UNSIGNED-PAYLOAD" (or another
     * S3 token such as "STREAMING-UNSIGNED-PAYLOAD-TRAILER": upper-case
     * letters, digits and '-', with at least one '-', first a letter).
     * NULL: the value of an x-amz-content-sha256 header if the caller passed
     * one, else the hash of an empty body. devex_sigv4_sha256_hex() hashes a
     * body. */
    const char *payload_sha256;
    /* DEVEX_SIGV4_S3 (0), DEVEX_SIGV4_GENERIC, or a combination of the
     * DEVEX_SIGV4_* bits */
    unsigned flags;
} devex_sigv4_request_t;

/* The outcome of devex_sigv4_sign(). Zero-initialize it (DEVEX_SIGV4_RESULT_INIT
 * or memset) before its first use; it owns everything it points to. After a
 * successful call every buffer below holds a NUL-terminated string (data is
 * not NULL, url_query may be ""); after a failed one they are empty. */
typedef struct devex_sigv4_result {
    /* the Authorization header value:
     * "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request,
     *  SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=<hex>" */
    devex_buf_t authorization;
    /* what to put on the request line: url_path (encoded once, '/' kept)
     * and, when url_query is not empty, '?' + url_query (the canonical query
     * string, which is a valid encoded query). Send them verbatim: an HTTP
     * client that removes dot segments or merges slashes (libcurl does the
     * former unless CURLOPT_PATH_AS_IS is set) would request another key
     * than the one signed. */
    devex_buf_t url_path;
    devex_buf_t url_query;
    /* the headers the caller must add to the request (beyond its own):
     * x-amz-date, and, when the caller did not pass them, x-amz-content-sha256
     * (S3) and x-amz-security-token (session credentials). Names are static
     * strings, values point into this result. */
    devex_sigv4_header_t added[3];
    size_t nadded;
    /* for tests and debugging */
    devex_buf_t canonical_request;
    devex_buf_t string_to_sign;
    devex_buf_t signed_headers;   /* "host;x-amz-content-sha256;x-amz-date" */
    devex_buf_t credential_scope; /* "20130524/us-east-1/s3/aws4_request" */
    char amz_date[DEVEX_SIGV4_AMZ_DATE_SIZE];
    char signature[DEVEX_SIGV4_HEX_SIZE];
    char payload_sha256[80];   /* the payload hash that was signed */
    devex_buf_t session_token; /* copy of the token, backing added[] */
    /* on failure: a static string saying why, else NULL */
    const char *error;
} devex_sigv4_result_t;

/* clang-format off */
#define DEVEX_SIGV4_RESULT_INIT {0}
/* clang-format on */

/* The SigV4 signing key chain for one date, region and service:
 * kDate = HMAC("AWS4" + secret, date), kRegion = HMAC(kDate, region),
 * kService = HMAC(kRegion, service), kSigning = HMAC(kService, "aws4_request").
 * kSigning is valid for every request of that UTC day, region and service,
 * so a client may derive it once and reuse it (devex_sigv4_sign_with_key). */
typedef struct devex_sigv4_key {
    char date[DEVEX_SIGV4_DATE_SIZE]; /* "YYYYMMDD" it was derived for */
    uint8_t k_date[DEVEX_SHA256_LEN];
    uint8_t k_region[DEVEX_SHA256_LEN];
    uint8_t k_service[DEVEX_SHA256_LEN];
    uint8_t k_signing[DEVEX_SHA256_LEN];
} devex_sigv4_key_t;

/* Signs req with creds at time now (seconds since the epoch, UTC). Returns 0
 * on success, -1 on invalid input (out->error says which). */
int devex_sigv4_sign(const devex_sigv4_creds_t *creds, const devex_sigv4_request_t *req, time_t now,
                     devex_sigv4_result_t *out);
/* Same, with a key derived beforehand by devex_sigv4_derive_key() from the
 * same secret, region and service; key->date must be the UTC date of now. */
int devex_sigv4_sign_with_key(const devex_sigv4_creds_t *creds, const devex_sigv4_key_t *key,
                              const devex_sigv4_request_t *req, time_t now, devex_sigv4_result_t *out);
/* the longest validity of a presigned URL SigV4 allows: 7 days */
#define DEVEX_SIGV4_MAX_EXPIRES 604800L

/* Presigns req (S3 "query-string authentication", a presigned URL): the
 * request is valid for `expires` seconds (1..604800) from now, for exactly
 * this method, path and query, and carries its authentication as query
 * parameters: X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date, X-Amz-Expires,
 * X-Amz-Security-Token (session credentials), X-Amz-SignedHeaders (the
 * headers of req, normally only host) and, last, X-Amz-Signature. The
 * payload hash defaults to UNSIGNED-PAYLOAD (the body is not signed: the
 * holder of the URL may PUT any body to that one key). req must not carry
 * X-Amz-* authentication parameters of its own.
 * On success out->url_path + "?" + out->url_query is the request target
 * (url_query ends with "&X-Amz-Signature=<hex>"), out->signature,
 * canonical_request, string_to_sign, credential_scope and signed_headers
 * are set, out->authorization is "" and nothing is in out->added. Returns 0,
 * or -1 with out->error. */
int devex_sigv4_presign(const devex_sigv4_creds_t *creds, const devex_sigv4_request_t *req, time_t now,
                        long expires, devex_sigv4_result_t *out);

/* Frees the buffers of a result and zeroes it. */
void devex_sigv4_result_free(devex_sigv4_result_t *r);

/* Derives the key chain. date is "YYYYMMDD". Returns 0, or -1 if an argument
 * is NULL or date is not 8 digits. */
int devex_sigv4_derive_key(const char *secret_key, const char *date, const char *region, const char *service,
                           devex_sigv4_key_t *out);
/* Overwrites a key with zeros (in a way the compiler keeps). */
void devex_sigv4_key_wipe(devex_sigv4_key_t *key);

/* Formats now as x-amz-date "YYYYMMDDTHHMMSSZ" (and, if date is not NULL,
 * the scope date "YYYYMMDD"). Returns 0, or -1 if the year is not in
 * 0000..9999 or the time cannot be converted. */
int devex_sigv4_format_time(time_t now, char amz_date[DEVEX_SIGV4_AMZ_DATE_SIZE], char date[DEVEX_SIGV4_DATE_SIZE]);

/* The payload hash of a body: lower-case hex SHA-256 of data[0..len). */
void devex_sigv4_sha256_hex(const void *data, size_t len, char out[DEVEX_SIGV4_HEX_SIZE]);

/* Appends the AWS URI encoding of s[0..n) to out (see the top of this file);
 * '/' is encoded only if encode_slash. */
void devex_sigv4_uri_encode(const char *s, size_t n, int encode_slash, devex_buf_t *out);

/* The canonical request of req signed at amz_date ("YYYYMMDDTHHMMSSZ"),
 * appended to canonical (and the signed header list to signed_headers, the
 * URL path and query to url_path and url_query, each when not NULL). The
 * headers added by the signer (x-amz-date, x-amz-content-sha256 unless
 * flagged off, x-amz-security-token if session_token is not NULL) are part
 * of it. Returns 0, or -1 with *error set. */
int devex_sigv4_canonical_request(const devex_sigv4_request_t *req, const char *amz_date, const char *session_token,
                                  devex_buf_t *canonical, devex_buf_t *signed_headers, devex_buf_t *url_path,
                                  devex_buf_t *url_query, const char **error);

/* "AWS4-HMAC-SHA256\n" amz_date "\n" scope "\n" hex(SHA-256(canonical)),
 * appended to out. */
void devex_sigv4_string_to_sign(const char *amz_date, const char *scope, const char *canonical, size_t canonical_len,
                                devex_buf_t *out);

/* hex(HMAC(key->k_signing, string_to_sign)) into sig. */
void devex_sigv4_signature(const devex_sigv4_key_t *key, const char *string_to_sign, size_t len,
                           char sig[DEVEX_SIGV4_HEX_SIZE]);

#endif
