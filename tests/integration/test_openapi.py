"""docs/openapi.yaml matches the server, both ways:

- every route of the app (app:routes(), read from a running devexd through a
  tiny test app that wraps the shipped one and adds GET /__test/routes) is
  documented, with its method ("*" routes: an operation marked
  x-devex-any-method);
- every documented operation is routed by a running devexd (shipped app,
  development sign-in on, a real redis-server, fs storage, local runtime):
  requested without credentials, with the parameters' `example` values, it
  answers one of its documented status codes, and never the router's own
  404 {"error":"not found"} or 405.

YAML is read with python3-yaml (Debian package python3-yaml)."""

import json
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402

try:
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

SPEC = os.path.join(harness.SOURCE_DIR, "docs", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "patch", "options", "head")

ROUTES_APP = """
-- test app: the shipped app plus a route listing its routes
local app = require("app")
app:get("/__test/routes", function() return 200, app:routes() end)
return app
"""


def norm_app(pattern):
    return re.sub(r"[:*][A-Za-z_][A-Za-z0-9_]*", "{}", pattern)


def norm_doc(path):
    return re.sub(r"\{[^}]+\}", "{}", path)


class OpenApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(SPEC) as f:
            cls.spec = yaml.safe_load(f)
        cls.tmp = tempfile.mkdtemp(prefix="devexd-openapi-")
        cls.redis = RedisServer().__enter__()
        conf = {
            "environment": "development",
            "redis": {"url": cls.redis.url(), "timeout": 2},
            "storage": {"driver": "fs", "dir": cls.tmp},
            "runtime": {"driver": "local", "dir": os.path.join(cls.tmp, "run")},
            "dev_login": {"enabled": True},
        }
        cls.d = Devexd(app="routesapp", app_files={"routesapp.lua": ROUTES_APP}, threads=2,
                       config=conf).__enter__()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "redis")

    def operations(self):
        for path, item in self.spec["paths"].items():
            for m in METHODS:
                if m in item:
                    yield path, m, item[m], item

    def resolve(self, obj):
        while isinstance(obj, dict) and "$ref" in obj:
            node = self.spec
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part]
            obj = node
        return obj

    def url_of(self, path, item, op):
        params = {}
        for p in list(item.get("parameters", [])) + list(op.get("parameters", [])):
            p = self.resolve(p)
            if p["in"] == "path":
                self.assertIn("example", p, "path parameter %s of %s has no example" % (p["name"], path))
                params[p["name"]] = str(p["example"])
        return re.sub(r"\{([^}]+)\}", lambda m: params[m.group(1)], path)

    def test_spec_shape(self):
        self.assertTrue(str(self.spec["openapi"]).startswith("3."))
        for path, m, op, _ in self.operations():
            self.assertTrue(op.get("responses"), "%s %s has no responses" % (m, path))
            for code, resp in op["responses"].items():
                self.assertRegex(str(code), r"^[1-5][0-9][0-9]$", "%s %s" % (m, path))
                self.assertIn("description", self.resolve(resp), "%s %s %s" % (m, path, code))

    def test_every_app_route_is_documented(self):
        r = self.d.get("/__test/routes")
        self.assertEqual(r.status, 200, r.body)
        routes = [x for x in r.json() if x["pattern"] != "/__test/routes"]
        self.assertGreater(len(routes), 15)
        documented = {}
        for path, m, op, _ in self.operations():
            documented.setdefault(norm_doc(path), {})[m.upper()] = op
        missing = []
        for rt in routes:
            ops = documented.get(norm_app(rt["pattern"]))
            if ops is None:
                missing.append("%s %s" % (rt["method"], rt["pattern"]))
            elif rt["method"] == "*":
                if not any(o.get("x-devex-any-method") for o in ops.values()):
                    missing.append("* %s (no operation marked x-devex-any-method)" % rt["pattern"])
            elif rt["method"] not in ops:
                missing.append("%s %s" % (rt["method"], rt["pattern"]))
        self.assertEqual(missing, [], "routes of the app missing from docs/openapi.yaml")
        # and nothing documented that the app does not route
        app_keys = {(norm_app(x["pattern"]), x["method"]) for x in routes}
        extra = []
        for path, m, op, _ in self.operations():
            key = norm_doc(path)
            if (key, m.upper()) not in app_keys and (key, "*") not in app_keys:
                extra.append("%s %s" % (m.upper(), path))
        self.assertEqual(extra, [], "documented operations the app does not have")

    def test_every_documented_operation_answers_a_documented_status(self):
        problems = []
        for path, m, op, item in self.operations():
            url = self.url_of(path, item, op)
            methods = [m.upper()]
            if op.get("x-devex-any-method"):
                methods += ["POST", "DELETE"]
            for method in methods:
                headers = {"Content-Type": "application/json"} if method in ("POST", "PUT", "PATCH") else {}
                body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                r = self.d.request(method, url, body=body, headers=headers)
                codes = {str(c) for c in op["responses"]}
                try:
                    j = r.json() if r.header("Content-Type") and "json" in r.header("Content-Type") else None
                except ValueError:
                    j = None
                if r.status == 405 or (r.status == 404 and j == {"error": "not found"} and path != "/metrics"):
                    problems.append("%s %s: not routed (%d %s)" % (method, url, r.status, r.body[:80]))
                elif str(r.status) not in codes:
                    problems.append("%s %s: answered %d, documented %s" % (method, url, r.status, sorted(codes)))
        self.assertEqual(problems, [])


if __name__ == "__main__":
    harness.main()
