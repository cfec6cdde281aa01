"""A GitHub-shaped OAuth server and REST API for tests (Python 3 stdlib only).

GitHub cannot be reached from the test machines, so this fake follows
GitHub's documented answers for the endpoints devexd uses:

  GET  /login/oauth/authorize     redirects to redirect_uri with code and state,
                                  or with error=access_denied (knob deny=True)
  POST /login/oauth/access_token  JSON when Accept: application/json, else a
                                  form; failures are HTTP 200 with an "error"
                                  field (bad_verification_code for an unknown,
                                  used or expired code or a PKCE mismatch,
                                  incorrect_client_credentials,
                                  redirect_uri_mismatch)
  GET  /user                      the signed-in user; 401 "Bad credentials"
  GET  /user/emails               the user's addresses

Knobs (attributes of GitHubFake, changeable while it runs): deny,
token_status (an HTTP status to answer the token endpoint with instead),
user_status (same for /user), user (the /user document), emails.
Every request is recorded in .requests as (method, path, headers, body).
"""

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from .loopback import LoopbackHTTPServer

DOCS = "https://docs.github.com/rest"


def pkce_s256(verifier):
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


class GitHubFake(LoopbackHTTPServer):
    def __init__(self, client_id="Iv1.testclient", client_secret="test-secret", redirect_uri=None):
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri  # None: any
        self.deny = False
        self.token_status = None
        self.user_status = None
        self.user = {
            "login": "OctoCat",
            "id": 583231,
            "node_id": "MDQ6VXNlcjU4MzIzMQ==",
            "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
            "type": "User",
            "name": "The Octocat",
            "email": None,
            "created_at": "2011-01-25T18:44:36Z",
            "updated_at": "2024-01-22T12:00:00Z",
        }
        self.emails = [
            {"email": "octocat@users.noreply.github.com", "primary": False, "verified": True, "visibility": None},
            {"email": "octocat@github.com", "primary": True, "verified": True, "visibility": "public"},
        ]
        self.codes = {}   # code -> {client_id, redirect_uri, challenge, method, expires}
        self.tokens = {}  # access token -> True
        self.requests = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                fake._route(self, b"")

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                fake._route(self, self.rfile.read(n) if n else b"")

        super().__init__(Handler)
        self.base = "http://127.0.0.1:%d" % self.port

    def config(self, redirect_url):
        """The github config table for devexd."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_url": redirect_url,
            "authorize_url": self.base + "/login/oauth/authorize",
            "token_url": self.base + "/login/oauth/access_token",
            "api_url": self.base,
        }

    def requests_to(self, path):
        with self.lock:
            return [r for r in self.requests if r[1] == path]

    # ---- HTTP ----

    def _send(self, h, status, body, ctype="application/json; charset=utf-8", extra=()):
        if not isinstance(body, bytes):
            body = body.encode()
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h, status, obj):
        self._send(h, status, json.dumps(obj))

    def _redirect(self, h, url):
        self._send(h, 302, "", "text/html; charset=utf-8", [("Location", url)])

    def _route(self, h, body):
        u = urllib.parse.urlsplit(h.path)
        with self.lock:
            self.requests.append((h.command, u.path, {k.lower(): v for k, v in h.headers.items()}, body))
        if h.command == "GET" and u.path == "/login/oauth/authorize":
            return self._authorize(h, dict(urllib.parse.parse_qsl(u.query)))
        if h.command == "POST" and u.path == "/login/oauth/access_token":
            return self._access_token(h, body)
        if h.command == "GET" and u.path == "/user":
            return self._user(h)
        if h.command == "GET" and u.path == "/user/emails":
            return self._emails(h)
        self._json(h, 404, {"message": "Not Found", "documentation_url": DOCS})

    def _authorize(self, h, q):
        redirect_uri = q.get("redirect_uri")
        if q.get("client_id") != self.client_id or not redirect_uri:
            return self._send(h, 404, "Not Found", "text/plain")
        if self.redirect_uri and redirect_uri != self.redirect_uri:
            return self._redirect(h, self._with_query(redirect_uri, {
                "error": "redirect_uri_mismatch",
                "error_description": "The redirect_uri MUST match the registered callback URL for this application.",
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/#redirect-uri-mismatch",
                "state": q.get("state", "")}))
        if self.deny:
            return self._redirect(h, self._with_query(redirect_uri, {
                "error": "access_denied",
                "error_description": "The user has denied your application access.",
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/#access-denied",
                "state": q.get("state", "")}))
        code = secrets.token_hex(10)
        with self.lock:
            self.codes[code] = {"client_id": self.client_id, "redirect_uri": redirect_uri,
                                "challenge": q.get("code_challenge"),
                                "method": q.get("code_challenge_method", "plain"),
                                "scope": q.get("scope", ""), "expires": time.time() + 600}
        params = {"code": code}
        if "state" in q:
            params["state"] = q["state"]
        self._redirect(h, self._with_query(redirect_uri, params))

    @staticmethod
    def _with_query(url, params):
        sep = "&" if "?" in url else "?"
        return url + sep + urllib.parse.urlencode(params)

    def _token_answer(self, h, status, obj):
        accept = h.headers.get("Accept") or ""
        if "application/json" in accept:
            self._json(h, status, obj)
        else:
            self._send(h, status, urllib.parse.urlencode(obj), "application/x-www-form-urlencoded; charset=utf-8")

    def _access_token(self, h, body):
        if self.token_status is not None:
            return self._send(h, self.token_status, "<html>upstream error</html>", "text/html")
        f = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        if f.get("client_id") != self.client_id or f.get("client_secret") != self.client_secret:
            return self._token_answer(h, 200, {
                "error": "incorrect_client_credentials",
                "error_description": "The client_id and/or client_secret passed are incorrect.",
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#incorrect-client-credentials"})
        bad_code = {
            "error": "bad_verification_code",
            "error_description": "The code passed is incorrect or expired.",
            "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"}
        with self.lock:
            c = self.codes.pop(f.get("code", ""), None)  # a code works once
        if c is None or c["expires"] < time.time():
            return self._token_answer(h, 200, bad_code)
        if f.get("redirect_uri") and f["redirect_uri"] != c["redirect_uri"]:
            return self._token_answer(h, 200, {
                "error": "redirect_uri_mismatch",
                "error_description": "The redirect_uri MUST match the registered callback URL for this application."})
        if c["challenge"]:
            verifier = f.get("code_verifier", "")
            want = pkce_s256(verifier) if c["method"] == "S256" else verifier
            if not verifier or want != c["challenge"]:
                return self._token_answer(h, 200, bad_code)
        token = "gho_" + secrets.token_hex(18)
        with self.lock:
            self.tokens[token] = True
        self._token_answer(h, 200, {"access_token": token, "token_type": "bearer",
                                    "scope": c["scope"].replace(" ", ",")})

    def _bearer(self, h):
        a = h.headers.get("Authorization") or ""
        parts = a.split(" ", 1)
        if len(parts) == 2 and parts[0].lower() in ("bearer", "token"):
            with self.lock:
                return parts[1] in self.tokens
        return False

    def _user(self, h):
        if self.user_status is not None:
            return self._json(h, self.user_status, {"message": "Server Error", "documentation_url": DOCS})
        if not self._bearer(h):
            return self._json(h, 401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"})
        self._json(h, 200, self.user)

    def _emails(self, h):
        if not self._bearer(h):
            return self._json(h, 401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"})
        self._json(h, 200, self.emails)
