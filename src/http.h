/*
 * http.h: devex.http, the HTTP client every other primitive that talks to an
 * HTTP API builds on (http.c): libcurl's multi "socket" interface driven by
 * the worker's libuv loop, one multi handle (and so one connection cache, one
 * DNS cache, HTTP/2 multiplexing) per worker thread.
 *
 * Lua (misuse raises a Lua error; failures of the world return nil, err):
 *
 *   local res, err = http.request{
 *     url = "https://...",          -- required, http:// or https:// only
 *     method = "GET",               -- any token; POST/PUT/PATCH always send a body ("" if none)
 *     headers = { Name = "value" }, -- string or number values; no CR/LF/NUL; "" sends an empty header;
 *                                   -- Content-Length/Transfer-Encoding are not allowed (from body)
 *     body = nil,                   -- string (binary safe)
 *     timeout = 30,                 -- seconds for the whole transfer, 0 = none
 *     connect_timeout = 10,         -- seconds, > 0
 *     max_size = 16 * 1024 * 1024,  -- bytes of (decoded) body; stream: of buffered unread data
 *     http2 = true,                 -- HTTP/2 over TLS by ALPN (cleartext stays HTTP/1.1); false: HTTP/1.1
 *     ca_file =, client_cert =, client_key =,          -- PEM file paths
 *     ca_pem =, client_cert_pem =, client_key_pem =,   -- the same as PEM text (kubeconfig *-data)
 *     insecure = false,             -- true turns certificate checks off (logged once per process)
 *   }
 *   res = { status = 200, headers = { ["content-type"] = "..." }, body = "...", http_version = 1.1 | 2 }
 *     header names are lowercase; a repeated header's values are joined with ", "
 *   err = { code =, message =, curl_code = }, the shared devex.error metatable
 *     (tostring(err) == "code: message"); code is one of
 *     timeout   the timeout or connect_timeout passed
 *     connect   the TCP connection was refused or failed
 *     resolve   the host name did not resolve
 *     tls       handshake or certificate verification failed, bad ca/cert/key
 *     too_large the body (request) or the unread buffer (stream) exceeded max_size
 *     protocol  anything else on the wire: not HTTP, connection reset mid-body...
 *     invalid   libcurl could not parse the URL
 *     cancelled the stream was closed while this task waited on it
 *   An HTTP error status (404, 500) is a response, not an error.
 *   Unknown option names raise, so typos do not pass silently.
 *
 *   local s, err = http.stream{ same options }
 *     Waits for the response headers, then returns the stream (or nil, err).
 *     s.status, s.headers, s.http_version as for request().
 *     s:read_line() -> the next '\n'-terminated line without the '\n' ('\r' is
 *       kept), as soon as it has arrived; a last line without '\n' is returned
 *       too; then nil at the end of the body, or nil, err if the transfer failed.
 *       One reader at a time (a second one raises). Reading a closed stream raises.
 *     s:close() stops the transfer (also __close and __gc); a task parked in
 *       read_line on it gets nil, err (code "cancelled").
 *     timeout bounds the whole stream (watches: pass the watch's duration, or 0).
 *     max_size bounds the data received and not yet read, including the chunk
 *       being received (up to 16 KiB), so keep it well above that.
 *
 * Connections are kept alive and reused per worker thread; concurrent HTTPS
 * requests to one HTTP/2 server share one connection. Proxies from the
 * environment (http_proxy...) are ignored. Redirects are not followed.
 */
#ifndef DEVEX_HTTP_H
#define DEVEX_HTTP_H

#include <curl/curl.h>
#include <lua.h>

/* Initializes libcurl's global state. Call once from main() before any worker
 * thread starts; calling it again (or not at all: the first request does it
 * under pthread_once) is harmless. */
void devex_http_global_init(void);

int luaopen_devex_http(lua_State *L);

/* For another primitive that talks a protocol libcurl knows (smtp.c): runs
 * easy, which the caller configured (URL, protocols, callbacks), on the
 * thread's multi handle and parks the calling task (check it first with
 * devex_task_check) until the transfer ends. Use as
 * `return devex_http_perform(L, fn, easy, release, arg);`. Lua then gets
 * true, the last reply code; or nil, err as http.request's errors (code
 * "auth" when the server refused the login; err.reply is the server's last
 * reply code). From the call on, easy and arg belong to devex.http:
 * release(arg) runs after easy has been cleaned up (also when the task is
 * abandoned, and on a Lua error raised here), so data that easy's callbacks
 * read lives in arg. PRIVATE, ERRORBUFFER, NOSIGNAL and QUICK_EXIT are set here. */
int devex_http_perform(lua_State *L, const char *fn, CURL *easy, void (*release)(void *), void *arg);

#endif
