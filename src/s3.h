/*
 * s3.h: devex.s3, the parts of the S3 client that belong in C (s3.c): SigV4
 * signing of a request (on s3_sigv4.c), the XML S3 answers with (on expat,
 * DOCTYPEs and entity declarations refused), the DeleteObjects body with its
 * Content-MD5, MD5 digests, and two small local-filesystem helpers the fs
 * storage driver needs (Lua's io cannot list a directory or create one).
 * The requests themselves go through devex.http from lua/storage/s3.lua.
 *
 * Lua (misuse raises; bad input data returns nil, err):
 *
 *   s3.sign{ method=, host=, path= (RAW: "/bucket/key", any byte but NUL),
 *            query= (RAW "a=b&c") | params= { {name, value}, ... } or { name = value },
 *            headers = { name = value } (host is added from host= when absent),
 *            payload_hash = hex | "UNSIGNED-PAYLOAD" | nil, body = string (hashed when no payload_hash),
 *            access_key=, secret_key=, session_token=, region=, service="s3", time = epoch seconds }
 *     -> { headers = { ...caller's, x-amz-date, x-amz-content-sha256, [x-amz-security-token], authorization },
 *          target = url_path .. ["?" .. url_query], path =, query =, signature =,
 *          canonical_request =, string_to_sign = }
 *      | nil, err (code "invalid")
 *   s3.presign{ same fields as sign (no body; payload_hash defaults to UNSIGNED-PAYLOAD),
 *               expires = seconds 1..604800 }
 *     -> { target = url_path .. "?" .. query (with every X-Amz-* parameter, X-Amz-Signature last),
 *          path =, query =, signature =, canonical_request =, string_to_sign =,
 *          headers = { the signed headers the request must carry: host } }
 *      | nil, err (code "invalid")  (SigV4 query-string authentication: a presigned URL)
 *   s3.parse_list(xml)   -> { contents = { {key, size, etag, last_modified, storage_class}... },
 *                             common_prefixes = { "a/", ... }, is_truncated = bool,
 *                             next_token = string|nil, key_count = n } | nil, err
 *                           (keys are percent-decoded when the answer says EncodingType url)
 *   s3.parse_error(xml)  -> { code, message, request_id, resource, key } | nil (not an <Error>)
 *   s3.parse_delete_result(xml) -> { deleted = { key... }, errors = { {key, code, message}... } } | nil, err
 *   s3.parse_copy_result(xml)   -> { etag, last_modified } | nil, err
 *   s3.delete_body(keys, quiet) -> xml, content_md5 (base64) | nil, err (a key XML 1.0 cannot carry)
 *   s3.md5_hex(data), s3.md5_base64(data)
 *   s3.uri_encode(s, encode_slash) -> AWS UriEncode
 *   s3.fs_walk(dir[, hidden]), s3.fs_mkdir_p(dir): local file-system helpers, see fs_tree.h
 */
#ifndef DEVEX_S3_H
#define DEVEX_S3_H

#include <lua.h>

int luaopen_devex_s3(lua_State *L);

#endif
