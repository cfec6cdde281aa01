"""The session workload of the Kubernetes runtime (lua/policy/workload.lua,
lua/runtime/kubernetes.lua; issue 13, items 4 to 6):

  * `devexd workload render` with the shipped config: the default objects fit
    the original runner image (image, imagePullPolicy Always, ports 8081 and
    50051, readiness probe GET /ping on 8081), no Ingress in gateway mode;
    RUNNER_EXPOSURE=ingress gives the Ingress with its TLS block and
    cert-manager annotation and the Middleware; ENABLE_MCP_SIDECAR=true the
    mcp-server container; an unknown template exits 2; a build() without an
    identity gets one derived from its objects.
  * `devexd --check` refuses a policy whose build() raises, returns no
    Deployment, or whose identity selects every REPL's pods.
  * The pod's security (issue 14, item 4): by default runAsNonRoot as uid/gid
    1000, RuntimeDefault seccomp, no service-account token, no service links,
    and on every container (init, runner, MCP sidecar) no privilege
    escalation and every capability dropped; a template's `security` loosens
    only what it names and never the init container; a typo is refused. On
    the cluster the Deployment read back and the uploader added at stop carry
    them.
  * On the real kube-apiserver of k8s_harness: an operator build() with other
    labels and other names still gets readiness, stop (the uploader goes to
    the pod its selector finds), orphan cleanup (by its managed selector and
    repl label) and the URL right; ingress mode makes the Ingress (TLS,
    annotation) and Middleware, owned by the Deployment and gone after stop.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, poll  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import test_repl  # noqa: E402
from test_config import SHIPPED_CONF, clean_env  # noqa: E402
import k8s_harness  # noqa: E402
import test_k8s_runtime  # noqa: E402  (the module only: its TestCase is not re-run here)

JSON = {"Content-Type": "application/json"}
IMAGE = "ghcr.io/parthkapoor-dev/devex/runner-%s:latest"



# An operator's build(): the default objects relabelled and renamed, with an
# identity that says so. Nothing in it uses devex.io/* or managed-by=devexd.
CUSTOM_POLICY = r'''
local workload = require("policy.workload")
local function relabel(ctx)
  return { ["example.com/owner"] = "ide-control", ["example.com/workspace"] = ctx.repl.id,
           ["example.com/kind"] = "workspace" }
end
return {
  workload = {
    build = function(ctx)
      local o = workload.build(ctx)
      local labels = relabel(ctx)
      local name = "ws-" .. ctx.repl.id:sub(6)
      local match = { ["example.com/workspace"] = ctx.repl.id }
      for _, k in ipairs({ "deployment", "service", "ingress", "middleware" }) do
        if o[k] then o[k].metadata.labels = labels; o[k].metadata.name = name end
      end
      o.deployment.spec.selector = { matchLabels = match }
      o.deployment.spec.template.metadata.labels = labels
      o.service.spec.selector = match
      o.identity = {
        selector = "example.com/workspace=" .. ctx.repl.id,
        names = { deployment = name, service = name },
        port = ctx.template.port,
        url = "https://custom.example.test/w/" .. ctx.repl.id .. "/",
        labels = labels,
        managed_selector = "example.com/owner=ide-control",
        repl_label = "example.com/workspace",
      }
      return o
    end,
  },
}
'''

# The same relabelled objects without an identity: it is derived.
DERIVED_POLICY = r'''
local workload = require("policy.workload")
return {
  workload = {
    build = function(ctx)
      local o = workload.build(ctx)
      o.identity = nil
      local labels = { ["app.kubernetes.io/managed-by"] = "devexd", ["team.example/repl"] = ctx.repl.id }
      o.deployment.metadata.name = "derived-" .. ctx.repl.id:sub(6)
      o.deployment.metadata.labels = labels
      o.deployment.spec.selector = { matchLabels = { ["team.example/repl"] = ctx.repl.id } }
      o.deployment.spec.template.metadata.labels = labels
      return o
    end,
  },
}
'''


class WorkloadRenderTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="devexd-render-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def run_devexd(self, *args, conf=SHIPPED_CONF, **env):
        env.setdefault("ENVIRONMENT", "test")  # rendering is not about production's https rules
        p = subprocess.run([harness.DEVEXD_BIN, "-c", conf, "-L", harness.LUA_DIR] + list(args),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=30, env=clean_env(**env))
        self.assertFalse(harness.sanitizer_errors(p.stderr), p.stderr)
        return p

    def render(self, *args, conf=SHIPPED_CONF, **env):
        p = self.run_devexd("workload", "render", *args, conf=conf, **env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("\n  ", p.stdout, "indented for reading")
        out = json.loads(p.stdout)
        return {o["kind"]: o for o in out["objects"]}, out["identity"], out

    def policy_conf(self, text, extra=""):
        """A config (extra: more of its fields, in Lua) with the policy file text."""
        policy = os.path.join(self.tmp, "policy.lua")
        with open(policy, "w") as f:
            f.write(text)
        conf = os.path.join(self.tmp, "devexd.conf.lua")
        with open(conf, "w") as f:
            f.write("return { policy = { file = %s }, %s }\n" % (json.dumps(policy), extra))
        return conf

    def assert_check_refuses(self, policy_text, message):
        """devexd --check with this policy fails saying message; returns the config."""
        conf = self.policy_conf(policy_text)
        p = self.run_devexd("--check", conf=conf)
        self.assertEqual(p.returncode, 1, (policy_text, p.stdout))
        self.assertIn(message, p.stderr, policy_text)
        return conf

    @staticmethod
    def containers(objs):
        return {c["name"]: c for c in objs["Deployment"]["spec"]["template"]["spec"]["containers"]}

    def test_default_gateway_mode(self):
        rid = "repl-" + str(uuid.uuid4())
        objs, ident, out = self.render("--template", "node", "--repl", rid, "--user", "octocat",
                                       RUNNER_DOMAIN="run.example.test")
        self.assertEqual([o["kind"] for o in out["objects"]], ["Deployment", "Service"])  # no Ingress, no Middleware
        runner = self.containers(objs)["runner"]
        self.assertEqual(list(self.containers(objs)), ["runner"])  # no sidecar by default
        self.assertEqual(runner["image"], IMAGE % "node")
        self.assertEqual(runner["imagePullPolicy"], "Always")
        self.assertEqual([(p["name"], p["containerPort"]) for p in runner["ports"]], [("http", 8081), ("grpc", 50051)])
        self.assertEqual(runner["readinessProbe"]["httpGet"], {"path": "/ping", "port": 8081})
        env = {e["name"]: e.get("value") for e in runner["env"]}
        self.assertEqual((env["REPL_ID"], env["TEMPLATE"], env["PORT"]), (rid, "node", "8081"))
        self.assertEqual([(p["name"], p["port"], p["targetPort"]) for p in objs["Service"]["spec"]["ports"]],
                         [("http", 8081, 8081), ("grpc", 50051, 50051)])
        init_env = {e["name"]: e for e in objs["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]["env"]}
        # no storage credential in the pod (presigned URLs from devexd, see routes.runner_storage)
        self.assertEqual(sorted(init_env), ["CALLBACK_URL", "RUNNER_TOKEN"])
        self.assertTrue(init_env["CALLBACK_URL"]["value"].endswith("/api/runner/" + rid))
        self.assertNotIn("secretKeyRef", json.dumps(objs))
        self.assertNotIn("AWS_", json.dumps(objs))
        self.assertEqual(ident, {
            "selector": "devex.io/repl=" + rid,
            "names": {"deployment": rid, "service": rid},
            "port": 8081,
            "url": "https://run.example.test/%s/" % rid,
            "labels": objs["Deployment"]["metadata"]["labels"],
            "managed_selector": "app.kubernetes.io/managed-by=devexd",
            "repl_label": "devex.io/repl",
        })
        for t in ("python", "go"):
            objs, _, _ = self.render("--template", t)
            self.assertEqual(self.containers(objs)["runner"]["image"], IMAGE % t)

    def test_gateway_url_without_a_runner_domain(self):
        _, ident, _ = self.render("--template", "go", "--repl", "repl-0123", PUBLIC_URL="https://api.example.test/")
        self.assertEqual(ident["url"], "https://api.example.test/repl/repl-0123/")
        _, ident, _ = self.render("--template", "go", "--repl", "repl-0123", RUNNER_DOMAIN="r.example.test",
                                  RUNNER_SCHEME="http")
        self.assertEqual(ident["url"], "http://r.example.test/repl-0123/")

    def test_ingress_mode(self):
        rid = "repl-" + str(uuid.uuid4())
        objs, ident, out = self.render("--template", "python", "--repl", rid, RUNNER_EXPOSURE="ingress",
                                       RUNNER_CLUSTER_IP="runners.example.test", KUBE_NAMESPACE="repls")
        self.assertEqual([o["kind"] for o in out["objects"]], ["Deployment", "Service", "Ingress", "Middleware"])
        ing = objs["Ingress"]
        self.assertEqual(ing["spec"]["tls"], [{"hosts": ["runners.example.test"], "secretName": "tls-secret"}])
        self.assertEqual(ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"], "letsencrypt-cluster-issuer")
        self.assertEqual(ing["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.middlewares"],
                         "repls-%s-strip@kubernetescrd" % rid)
        rule = ing["spec"]["rules"][0]
        self.assertEqual(rule["host"], "runners.example.test")
        self.assertEqual([(p["path"], p["backend"]["service"]["port"]["number"]) for p in rule["http"]["paths"]],
                         [("/" + rid, 8081)])
        self.assertEqual(objs["Middleware"]["spec"]["stripPrefix"]["prefixes"], ["/" + rid])
        self.assertEqual(ident["url"], "https://runners.example.test/%s/" % rid)
        self.assertEqual(ident["names"], {"deployment": rid, "service": rid, "ingress": rid, "middleware": rid + "-strip"})

    def test_ingress_tls_knobs(self):
        conf = self.policy_conf('return { workload = { tls_secret = "wild", tls_issuer = "staging", host = "ws.example.test" } }\n',
                                extra='runner = { exposure = "ingress", domain = "other.example.test" }')
        objs, ident, _ = self.render("--template", "node", "--repl", "repl-1", conf=conf)
        self.assertEqual(objs["Ingress"]["spec"]["tls"], [{"hosts": ["ws.example.test"], "secretName": "wild"}])
        self.assertEqual(objs["Ingress"]["metadata"]["annotations"]["cert-manager.io/cluster-issuer"], "staging")
        self.assertEqual(ident["url"], "https://ws.example.test/repl-1/")

    def test_ingress_mode_needs_a_host(self):
        p = self.run_devexd("--check", RUNNER_EXPOSURE="ingress")
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("no runner host", p.stderr)

    def test_mcp_sidecar(self):
        for value in ("true", "1"):
            objs, ident, _ = self.render("--template", "node", "--repl", "repl-2", ENABLE_MCP_SIDECAR=value,
                                         RUNNER_EXPOSURE="ingress", RUNNER_DOMAIN="r.example.test")
            mcp = self.containers(objs)["mcp-server"]
            self.assertEqual(mcp["image"], "ghcr.io/parthkapoor-dev/devex/mcp:latest")
            self.assertEqual([p["containerPort"] for p in mcp["ports"]], [8080])
            self.assertEqual(mcp["volumeMounts"], [{"name": "workspaces", "mountPath": "/workspaces"}])
            self.assertEqual(ident["mcp_port"], 8080)
            self.assertIn(("mcp", 8080), [(p["name"], p["port"]) for p in objs["Service"]["spec"]["ports"]])
            paths = [p["path"] for p in objs["Ingress"]["spec"]["rules"][0]["http"]["paths"]]
            self.assertEqual(paths, ["/repl-2", "/mcp/repl-2"])
        objs, ident, _ = self.render("--template", "node", ENABLE_MCP_SIDECAR="false")
        self.assertNotIn("mcp-server", self.containers(objs))
        self.assertNotIn("mcp_port", ident)
        # opt-in per template
        conf = self.policy_conf("return { templates = { catalogue = { go = { mcp = true } } } }\n")
        objs, ident, _ = self.render("--template", "go", conf=conf)
        self.assertIn("mcp-server", self.containers(objs))
        objs, ident, _ = self.render("--template", "node", conf=conf)
        self.assertNotIn("mcp-server", self.containers(objs))

    def test_template_fields_and_registry(self):
        conf = self.policy_conf(
            'return { templates = { registry = "mirror.example/devex", catalogue = {\n'
            '  rust = { image = "runner-rust:1", port = 3000, grpc_port = false, readiness_path = "/healthz",\n'
            '           image_pull_policy = "IfNotPresent" },\n'
            '  own = { image = "quay.example/team/own:2" } } } }\n')
        objs, ident, _ = self.render("--template", "rust", conf=conf)
        runner = self.containers(objs)["runner"]
        self.assertEqual(runner["image"], "mirror.example/devex/runner-rust:1")
        self.assertEqual(runner["imagePullPolicy"], "IfNotPresent")
        self.assertEqual([p["containerPort"] for p in runner["ports"]], [3000])
        self.assertEqual(runner["readinessProbe"]["httpGet"], {"path": "/healthz", "port": 3000})
        self.assertEqual(ident["port"], 3000)
        objs, _, _ = self.render("--template", "own", conf=conf)
        self.assertEqual(self.containers(objs)["runner"]["image"], "quay.example/team/own:2")
        objs, _, _ = self.render("--template", "node", conf=conf)
        self.assertEqual(self.containers(objs)["runner"]["image"], "mirror.example/devex/runner-node:latest")

    LOCKED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

    def assert_locked(self, sc, what):
        for k, v in self.LOCKED.items():
            self.assertEqual(sc.get(k), v, "%s: %s" % (what, k))

    def test_security_defaults(self):
        for env in ({}, {"ENABLE_MCP_SIDECAR": "true", "RUNNER_EXPOSURE": "ingress", "RUNNER_DOMAIN": "r.example.test"}):
            for t in ("node", "python", "go"):
                objs, _, _ = self.render("--template", t, **env)
                pod = objs["Deployment"]["spec"]["template"]["spec"]
                self.assertIs(pod["automountServiceAccountToken"], False)
                self.assertIs(pod["enableServiceLinks"], False)
                self.assertEqual(pod["securityContext"], {
                    "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"}})
                containers = pod["initContainers"] + pod["containers"]
                self.assertEqual([c["name"] for c in containers],
                                 ["download", "runner"] + (["mcp-server"] if env else []))
                for c in containers:
                    self.assert_locked(c["securityContext"], c["name"])
                    self.assertNotIn("add", c["securityContext"]["capabilities"])
                    self.assertNotIn("privileged", c["securityContext"])
                    self.assertNotIn("runAsUser", c["securityContext"])  # the pod's user for all of them
                self.assertEqual(pod["initContainers"][0]["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
                # uid 1000 has no home in the original images: one on an emptyDir
                runner = self.containers(objs)["runner"]
                env_ = {e["name"]: e.get("value") for e in runner["env"]}
                self.assertEqual(env_["HOME"], "/home/devex")
                self.assertIn({"name": "home", "mountPath": "/home/devex"}, runner["volumeMounts"])
                self.assertIn({"name": "home", "emptyDir": {}}, pod["volumes"])

    def test_security_loosened_per_template_only(self):
        conf = self.policy_conf(
            'return { templates = { catalogue = {\n'
            '  node = { security = { run_as_non_root = false, run_as_user = 0, run_as_group = 0,\n'
            '                        add_capabilities = { "NET_BIND_SERVICE" }, seccomp_profile = "Unconfined" } },\n'
            '  python = { security = { read_only_root_filesystem = true, home = false } } } },\n'
            '  workload = { security = { run_as_user = 2000 } } }\n')
        objs, _, _ = self.render("--template", "node", conf=conf)
        pod = objs["Deployment"]["spec"]["template"]["spec"]
        self.assertEqual(pod["securityContext"], {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0,
                                                  "fsGroup": 1000, "seccompProfile": {"type": "Unconfined"}})
        runner = self.containers(objs)["runner"]
        self.assertEqual(runner["securityContext"]["capabilities"], {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
        self.assertFalse(runner["securityContext"]["allowPrivilegeEscalation"])
        self.assertNotIn("HOME", [e["name"] for e in runner["env"]])  # root has its own
        self.assertEqual([v["name"] for v in pod["volumes"]], ["workspaces"])
        # the init container is not loosened by the template
        init = pod["initContainers"][0]["securityContext"]
        self.assertEqual(init, {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}})
        # python: only what it names; workload.security changes every template's default
        objs, _, _ = self.render("--template", "python", conf=conf)
        pod = objs["Deployment"]["spec"]["template"]["spec"]
        self.assertEqual(pod["securityContext"]["runAsUser"], 2000)
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        runner = self.containers(objs)["runner"]
        self.assertTrue(runner["securityContext"]["readOnlyRootFilesystem"])
        self.assertNotIn("HOME", [e["name"] for e in runner["env"]])
        objs, _, _ = self.render("--template", "go", conf=conf)
        self.assertEqual(objs["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"], 2000)
        self.assertEqual(self.run_devexd("--check", conf=conf).returncode, 0)

    def test_uploader_security(self):
        """policy.sync's uploader, rendered through a build() that calls it
        for a 1.28 and a 1.20 API server and shows the result."""
        conf = self.policy_conf(r'''
local json = require("devex.json")
local workload, sync = require("policy.workload"), require("policy.sync")
return { workload = { build = function(ctx)
  local o = workload.build(ctx)
  local show = {}
  for _, minor in ipairs({ 28, 20 }) do
    local c = sync.container({ repl = ctx.repl, s3 = ctx.s3, server_version = { major_n = 1, minor_n = minor } })
    show["test.example/uploader-1." .. minor] = json.encode({ securityContext = c.securityContext or json.null,
                                                              target = c.targetContainerName })
  end
  o.deployment.metadata.annotations = show
  return o
end } }
''')
        objs, _, _ = self.render("--template", "node", conf=conf)
        ann = objs["Deployment"]["metadata"]["annotations"]
        self.assertEqual(json.loads(ann["test.example/uploader-1.28"]), {
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "target": "runner"})
        self.assertEqual(json.loads(ann["test.example/uploader-1.20"]), {"securityContext": None, "target": "runner"})

    def test_security_mistakes_are_refused(self):
        cases = {
            "templates = { catalogue = { node = { security = { run_as_nonroot = false } } } }":
                "templates.catalogue.node.security: unknown field 'run_as_nonroot'",
            "templates = { catalogue = { node = { security = { run_as_user = 0 } } } }":
                "run_as_non_root with run_as_user 0",
            'workload = { security = { seccomp_profile = "none" } }': "workload.security.seccomp_profile: expected",
            'templates = { catalogue = { go = { security = { drop_capabilities = "ALL" } } } }':
                "templates.catalogue.go.security.drop_capabilities: expected a list",
            'templates = { catalogue = { go = { security = "off" } } }': "templates.catalogue.go.security must be a table",
        }
        for text, message in cases.items():
            self.assert_check_refuses("return { %s }\n" % text, message)

    def test_unknown_template_and_bad_arguments(self):
        for args in (["--template", "cobol"], [], ["--template"], ["--template", "node", "--repl", "../etc"],
                     ["--template", "node", "--colour", "red"]):
            p = self.run_devexd("workload", "render", *args)
            self.assertEqual(p.returncode, 2, (args, p.stdout, p.stderr))
            self.assertEqual(p.stdout, "")
            self.assertIn("workload render", p.stderr)
        p = self.run_devexd("workload", "render", "--template", "cobol")
        self.assertIn("unknown template 'cobol' (one of: go, node, python)", p.stderr)

    def test_operator_build(self):
        conf = self.policy_conf(CUSTOM_POLICY)
        objs, ident, _ = self.render("--template", "node", "--repl", "repl-abc", conf=conf)
        self.assertEqual(objs["Deployment"]["metadata"]["name"], "ws-abc")
        self.assertEqual(ident["selector"], "example.com/workspace=repl-abc")
        self.assertEqual(ident["url"], "https://custom.example.test/w/repl-abc/")
        self.assertEqual(self.run_devexd("--check", conf=conf).returncode, 0)

    def test_identity_derived_from_the_objects(self):
        conf = self.policy_conf(DERIVED_POLICY)
        _, ident, _ = self.render("--template", "python", "--repl", "repl-abc", conf=conf)
        self.assertEqual(ident["selector"], "team.example/repl=repl-abc")
        self.assertEqual(ident["names"], {"deployment": "derived-abc", "service": "repl-abc"})
        self.assertEqual(ident["repl_label"], "team.example/repl")
        self.assertEqual(ident["managed_selector"], "app.kubernetes.io/managed-by=devexd")
        self.assertEqual(ident["port"], 8081)
        self.assertTrue(ident["url"].endswith("/repl/repl-abc/"), ident["url"])

    def test_check_refuses_a_broken_build(self):
        cases = {
            'build = function(ctx) error("no workload today") end': "no workload today",
            "build = function(ctx) return { service = {} } end": "no deployment",
            "build = function(ctx) return nil end": "must return a table",
            # every REPL's pods: stop would pick another user's pod
            'build = function(ctx) local o = require("policy.workload").build(ctx); '
            'o.identity.selector = "app.kubernetes.io/name=devex-runner"; return o end': "same for two REPLs",
            # a selector that does not select the pods: the start would never see them Ready
            'build = function(ctx) local o = require("policy.workload").build(ctx); '
            'o.identity.selector = "nope=1"; return o end': "does not match the labels",
            # labels without managed-by and no identity: orphans could not be listed
            'build = function(ctx) local o = require("policy.workload").build(ctx); o.identity = nil; '
            'o.deployment.metadata.labels = { x = ctx.repl.id }; return o end': "managed_selector is missing",
        }
        for build, message in cases.items():
            conf = self.assert_check_refuses("return { workload = { %s } }\n" % build, message)
            p = self.run_devexd("workload", "render", "--template", "node", conf=conf)
            self.assertNotEqual(p.returncode, 0, build)
        # the local runtime does not use the workload: not checked there
        conf = os.path.join(self.tmp, "local.conf.lua")
        with open(conf, "w") as f:
            f.write('return { runtime = { driver = "local" }, policy = { file = %s } }\n'
                    % json.dumps(os.path.join(self.tmp, "policy.lua")))
        self.assertEqual(self.run_devexd("--check", conf=conf).returncode, 0)


class OperatorPolicyOnKubernetesTest(k8s_harness.NamespacePerTest, unittest.TestCase):
    """An operator build() with its own labels and names, and ingress mode,
    on the real kube-apiserver."""

    ns_prefix = "wl"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.gh = GitHubFake().__enter__()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        harness.stop_class_servers(cls, "gh")

    def devexd(self, policy_text=None, runner=None, cleanup=None):
        kubeconfig = self.kc.write_kubeconfig(os.path.join(self.tmp, "kubeconfig-" + self.ns), namespace=self.ns)
        conf = test_k8s_runtime.cluster_config(self, kubeconfig, self.ns)
        if runner:
            conf["runner"].update(runner)
        policy = os.path.join(self.tmp, "policy-%s.lua" % self.ns)
        text = policy_text or "return {}\n"
        if cleanup:
            text = "local policy = (function()\n%s\nend)()\npolicy.cleanup = { %s }\nreturn policy\n" % (
                text, ", ".join("%s = %s" % kv for kv in cleanup.items()))
        with open(policy, "w") as f:
            f.write(text)
        conf["policy"] = {"file": policy}
        self.d = Devexd(app=None, threads=2, config=conf).__enter__()
        self.d.sync_templates()
        return self.d

    def login(self):
        return test_repl.ReplTest.login(self)

    def create(self, b, **kw):
        st, repl = test_repl.ReplTest.create(self, b, **kw)
        self.assertEqual(st, 201, repl)
        return repl["id"]

    def names(self, version, plural, selector):
        items = self.api.get(k8s_harness.api_path(version, plural, self.ns), query={"labelSelector": selector})["items"]
        return sorted(o["metadata"]["name"] for o in items)

    def get(self, version, plural, name):
        return self.api.get(k8s_harness.api_path(version, plural, self.ns) + "/" + name)

    def session(self, rid):
        h = self.redis.call("HGETALL", "devex:activeSession:" + rid)
        return {h[i].decode(): h[i + 1].decode() for i in range(0, len(h), 2)}

    def state(self, rid):
        v = self.redis.call("HGET", "devex:replMeta:" + rid, "state")
        return v.decode() if v else None

    def check_endpoint(self, endpoint):
        host, port = endpoint.rsplit(":", 1)
        self.assertEqual(port, "8081")
        if host.startswith("127."):  # a runner stand-in (k8s_harness), reachable for real
            with urllib.request.urlopen("http://%s/ping" % endpoint, timeout=5) as r:
                self.assertEqual(r.status, 200)

    def test_operator_labels_and_names(self):
        d = self.devexd(CUSTOM_POLICY, cleanup={"orphan_grace": 1, "sweep_interval": 0.3})
        b = self.login()
        rid = self.create(b, name="custom", template="node")
        name = "ws-" + rid[5:]
        # start: the pod is found by the identity's selector, the URL is the identity's
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["url"], "https://custom.example.test/w/%s/" % rid)
        self.assertEqual(self.names("apps/v1", "deployments", "example.com/workspace=" + rid), [name])
        self.assertEqual(self.names("apps/v1", "deployments", "devex.io/repl=" + rid), [])
        self.assertEqual(self.names("v1", "services", "example.com/owner=ide-control"), [name])
        sess = self.session(rid)
        self.assertEqual((sess["k8s_selector"], sess["k8s_deployment"]), ("example.com/workspace=" + rid, name))
        pod = self.api.get(k8s_harness.api_path("v1", "pods", self.ns),
                           query={"labelSelector": "example.com/workspace=" + rid})["items"][0]
        self.assertEqual(sess["pod"], pod["metadata"]["name"])
        self.assertEqual(sess["endpoint"], "%s:8081" % pod["status"]["podIP"])
        self.check_endpoint(sess["endpoint"])
        self.assertNotIn("mcp_endpoint", sess)
        # stop: the uploader goes into that pod (a failing one keeps everything) ...
        rule = self.kc.kubelet.ephemeral_exit_code(3, namespace=self.ns)
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 502, r.body)
        self.assertIn("exit code 3", r.json()["error"])
        self.assertEqual(self.names("apps/v1", "deployments", "example.com/workspace=" + rid), [name])
        pod = self.get("v1", "pods", pod["metadata"]["name"])
        self.assertTrue(pod["spec"].get("ephemeralContainers"), "no uploader was added to the session's pod")
        # the uploader runs as the pod's user; Kubernetes 1.20 refuses a
        # securityContext on an ephemeral container, so it has none of its own
        # here (test_uploader_security: 1.21+ gets the init container's)
        for c in pod["spec"]["ephemeralContainers"]:
            self.assertNotIn("securityContext", c)
        self.assertEqual(pod["spec"]["securityContext"]["runAsUser"], 1000)
        self.assertTrue(pod["spec"]["securityContext"]["runAsNonRoot"])
        self.kc.kubelet.remove_rule(rule)
        # ... and once it exits 0 the Deployment of that name goes, its Service with it
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        poll(lambda: self.names("apps/v1", "deployments", "example.com/workspace=" + rid) == []
             and self.names("v1", "services", "example.com/workspace=" + rid) == [], "the session's objects to go")
        self.assertEqual(self.state(rid), "stopped")
        # orphans: by the identity's managed selector and repl label; a
        # Deployment with devexd's default labels is not this policy's
        orphan = "repl-" + str(uuid.uuid4())
        other = "repl-" + str(uuid.uuid4())
        for n, labels in (("ws-" + orphan[5:], {"example.com/owner": "ide-control", "example.com/workspace": orphan}),
                          (other, {"app.kubernetes.io/managed-by": "devexd", "devex.io/repl": other})):
            self.api.post(k8s_harness.api_path("apps/v1", "deployments", self.ns), {
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": n, "namespace": self.ns, "labels": labels},
                "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels},
                                      "spec": {"containers": [{"name": "runner", "image": IMAGE % "node"}]}}},
            })
        poll(lambda: self.names("apps/v1", "deployments", "example.com/owner=ide-control") == [],
             "the sweep to remove the operator-labelled orphan")
        d.wait_log(lambda e: e.get("msg") == "sweep removed an orphan workload" and e.get("repl") == orphan,
                   what="the sweep's orphan log line")
        self.assertEqual(self.names("apps/v1", "deployments", "devex.io/repl=" + other), [other])
        # a second start and a delete work the same way
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(b.request("DELETE", "/api/repl/" + rid, headers=JSON).status, 200)
        poll(lambda: self.names("apps/v1", "deployments", "example.com/workspace=" + rid) == [], "the Deployment to go")

    def test_ingress_mode_on_the_cluster(self):
        self.devexd(runner={"exposure": "ingress"})
        b = self.login()
        rid = self.create(b, name="ingress", template="python")
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["url"], "https://runners.example.test/%s/" % rid)
        dep = self.get("apps/v1", "deployments", rid)
        ing = self.get("networking.k8s.io/v1", "ingresses", rid)
        mw = self.get("traefik.io/v1alpha1", "middlewares", rid + "-strip")
        self.assertEqual(ing["spec"]["tls"], [{"hosts": ["runners.example.test"], "secretName": "tls-secret"}])
        self.assertEqual(ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"], "letsencrypt-cluster-issuer")
        self.assertEqual(mw["spec"]["stripPrefix"]["prefixes"], ["/" + rid])
        for o in (ing, mw, self.get("v1", "services", rid)):
            self.assertEqual([ref["uid"] for ref in o["metadata"]["ownerReferences"]], [dep["metadata"]["uid"]])
        self.check_endpoint(self.session(rid)["endpoint"])
        r = b.request("DELETE", "/api/repl/session/" + rid, headers=JSON)
        self.assertEqual(r.status, 200, r.body)
        for version, plural in test_k8s_runtime.KINDS:
            poll(lambda: self.names(version, plural, "devex.io/repl=" + rid) == [], plural + " to go")

    def test_mcp_sidecar_endpoint(self):
        self.devexd('return { templates = { catalogue = { go = { mcp = true } } } }\n')
        b = self.login()
        rid = self.create(b, name="mcp", template="go")
        r = b.get("/api/repl/session/" + rid)
        self.assertEqual(r.status, 200, r.body)
        sess = self.session(rid)
        ip = sess["endpoint"].rsplit(":", 1)[0]
        self.assertEqual(sess["mcp_endpoint"], ip + ":8080")
        dep = self.get("apps/v1", "deployments", rid)
        self.assertEqual([c["name"] for c in dep["spec"]["template"]["spec"]["containers"]], ["runner", "mcp-server"])
        # the API server kept the securityContext of the pod and of every container
        spec = dep["spec"]["template"]["spec"]
        self.assertEqual(spec["securityContext"], {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                                   "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}})
        self.assertIs(spec["automountServiceAccountToken"], False)
        self.assertIs(spec["enableServiceLinks"], False)
        for c in spec["initContainers"] + spec["containers"]:
            self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"], c["name"])
            self.assertEqual(c["securityContext"]["capabilities"], {"drop": ["ALL"]}, c["name"])
        self.assertEqual(b.request("DELETE", "/api/repl/" + rid, headers=JSON).status, 200)
        poll(lambda: self.names("apps/v1", "deployments", "devex.io/repl=" + rid) == [], "the Deployment to go")


if __name__ == "__main__":
    harness.main()
