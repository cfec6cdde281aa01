"""deploy/kubernetes/*.yaml against a real kube-apiserver 1.20 (k8s_harness):

  - every manifest is accepted by a server-side dry run (server-side apply
    with ?dryRun=All; the server parses the YAML itself, so no YAML library is
    needed here);
  - the Role is no wider than devexd needs: namespaced (no ClusterRole or
    ClusterRoleBinding anywhere), no "*" verb, resource or API group, only
    the resources the runtime touches;
  - the NetworkPolicies (networkpolicy.yaml): devex-repls denies by default;
    the runner pods (selected by the labels `devexd workload render` gives
    them) accept only devexd's pods on the ports the gateway uses, and reach
    only kube-dns, devexd and the internet minus the private and link-local
    ranges; devexd reaches DNS, Redis, the runners' ports and 443/6443;
  - the Role is enough: with a TokenRequest token of the devexd
    ServiceAccount (kubeconfig with that token, namespace devex-repls) devexd's
    Kubernetes runtime runs test_k8s_runtime.py's flows (create, start, stop,
    uploader failure and retry, image pull failure, concurrent starts, delete).

Kubernetes 1.20 does not serve policy/v1 (1.21+): the PodDisruptionBudget,
written for current clusters, is dry-run as policy/v1beta1 (same spec) when
the server lacks policy/v1.
"""

import glob
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Devexd, RedisServer  # noqa: E402
from fakes.github_fake import GitHubFake  # noqa: E402
import k8s_harness  # noqa: E402
from k8s_harness import api_path  # noqa: E402
import test_k8s_runtime  # noqa: E402  (the module only: its TestCase is not re-run here)

MANIFESTS = os.path.join(harness.SOURCE_DIR, "deploy", "kubernetes")
APP_NS = "devexd"
REPL_NS = "devex-repls"
PLURALS = {"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "Role": "roles",
           "RoleBinding": "rolebindings", "ConfigMap": "configmaps", "Secret": "secrets",
           "Deployment": "deployments", "StatefulSet": "statefulsets", "Service": "services", "PodDisruptionBudget": "poddisruptionbudgets",
           "Ingress": "ingresses", "NetworkPolicy": "networkpolicies"}
# what lua/runtime/kubernetes.lua touches, by API group
ALLOWED = {("apps", "deployments"), ("apps", "replicasets"), ("", "services"), ("networking.k8s.io", "ingresses"),
           ("traefik.io", "middlewares"), ("", "pods"), ("", "pods/ephemeralcontainers"), ("", "events")}


class Doc:
    """One YAML document of a manifest file, with the fields needed for its URL."""

    def __init__(self, path, text):
        self.path, self.text = path, text
        self.api_version = re.search(r"^apiVersion:\s*(\S+)", text, re.M).group(1)
        self.kind = re.search(r"^kind:\s*(\S+)", text, re.M).group(1)
        meta = re.search(r"^metadata:\n((?:[ #].*\n|\n)*)", text + "\n", re.M).group(1)
        self.name = re.search(r"^  name:\s*(\S+)", meta, re.M).group(1)
        m = re.search(r"^  namespace:\s*(\S+)", meta, re.M)
        self.namespace = m.group(1) if m else None

    def url(self):
        return api_path(self.api_version, PLURALS[self.kind], self.namespace, self.name)

    def __repr__(self):
        return "%s %s/%s (%s)" % (self.kind, self.namespace or "-", self.name, os.path.basename(self.path))


def load_docs():
    docs = []
    for path in sorted(glob.glob(os.path.join(MANIFESTS, "*.yaml"))):
        with open(path) as f:
            for part in re.split(r"^---\s*$", f.read(), flags=re.M):
                body = "\n".join(line for line in part.splitlines() if not line.lstrip().startswith("#"))
                if body.strip():
                    docs.append(Doc(path, part))
    return docs


def apply(kc, doc, dry_run):
    q = {"fieldManager": "devexd-manifests-test", "force": "true"}
    if dry_run:
        q["dryRun"] = "All"
    text = doc.text
    if doc.kind == "PodDisruptionBudget" and doc.api_version == "policy/v1" and not served(kc, "policy/v1"):
        text = re.sub(r"^apiVersion:\s*policy/v1\s*$", "apiVersion: policy/v1beta1", text, flags=re.M)
        doc = Doc(doc.path, text)
    return kc.api.patch(doc.url(), text, patch_type="apply", query=q)


def served(kc, group_version):
    return kc.api.get_or_none("/apis/" + group_version) is not None


def apply_namespaces(kc, docs):
    for d in docs:
        if d.kind == "Namespace":
            apply(kc, d, dry_run=False)
            kc.create_namespace(d.name)  # exists: waits for its default service account


class ManifestsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = load_docs()
        cls.kc = k8s_harness.KubeCluster(install_crds=True).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.kc.__exit__(None, None, None)

    def test_every_kind_is_there(self):
        kinds = sorted({d.kind for d in self.docs})
        self.assertEqual(kinds, sorted(PLURALS))
        deps = [d for d in self.docs if d.kind == "Deployment"]
        self.assertEqual(len(deps), 1)

    def test_server_side_dry_run(self):
        existed = self.kc.api.get_or_none(api_path("v1", "namespaces", name=REPL_NS)) is not None
        for d in self.docs:  # namespaces first (dry run creates nothing)
            if d.kind == "Namespace":
                apply(self.kc, d, dry_run=True)
        if not existed:  # (another test of this class may have made it)
            self.assertIsNone(self.kc.api.get_or_none(api_path("v1", "namespaces", name=REPL_NS)))
        apply_namespaces(self.kc, self.docs)
        for d in self.docs:
            with self.subTest(doc=repr(d)):
                before = self.kc.api.get_or_none(d.url()) if d.kind != "PodDisruptionBudget" else None
                obj = apply(self.kc, d, dry_run=True)
                self.assertEqual(obj["metadata"]["name"], d.name)
                if before is None and d.kind not in ("Namespace", "PodDisruptionBudget"):
                    self.assertIsNone(self.kc.api.get_or_none(d.url()), "dry run stored %r" % d)

    def test_deployment_settings(self):
        apply_namespaces(self.kc, self.docs)
        dep = apply(self.kc, [d for d in self.docs if d.kind == "Deployment"][0], dry_run=True)
        spec = dep["spec"]
        self.assertEqual(spec["replicas"], 2)
        pod = spec["template"]["spec"]
        self.assertEqual(pod["serviceAccountName"], "devexd")
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault")
        c = pod["containers"][0]
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        sc = c["securityContext"]
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        self.assertIn("limits", c["resources"])
        env = {e["name"]: e.get("value") for e in c["env"]}
        self.assertEqual(env["KUBE_NAMESPACE"], REPL_NS)

    def test_redis_is_tls_only(self):
        """redis.yaml: redis-server's TLS on 6379, the plain port off, client
        certificates required, the ACL file; devexd points at it with
        rediss://, the CA and its client certificate (test_redis_tls.py runs
        the same settings for real)."""
        apply_namespaces(self.kc, self.docs)
        sts = apply(self.kc, [d for d in self.docs if d.kind == "StatefulSet"][0], dry_run=True)
        pod = sts["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        args = c["args"]
        opts = dict(zip(args[1::2], args[2::2]))
        self.assertEqual(args[0], "redis-server")
        self.assertEqual(opts["--port"], "0")
        self.assertEqual(opts["--tls-port"], "6379")
        self.assertEqual(opts["--tls-auth-clients"], "yes")
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod["volumes"]}
        for flag in ("--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file"):
            self.assertTrue(opts[flag].startswith(mounts["tls"] + "/"), opts[flag])
        self.assertEqual(vols["tls"]["secret"]["secretName"], "redis-tls")
        self.assertTrue(opts["--aclfile"].startswith(mounts["acl"] + "/"))
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        svc = [d for d in self.docs if d.kind == "Service" and d.name == "redis"][0]
        # devexd: rediss:// to that Service, the CA and client certificate mounted from devexd-redis-tls
        secrets = [d for d in self.docs if d.kind == "Secret" and d.name == "devexd-secrets"][0]
        url = re.search(r'REDIS_URL:\s*"([^"]+)"', secrets.text).group(1)
        self.assertTrue(url.startswith("rediss://"), url)
        self.assertEqual(url.split("@", 1)[1], "%s.%s.svc:6379/0" % (svc.name, svc.namespace))
        dep = apply(self.kc, [d for d in self.docs if d.kind == "Deployment"][0], dry_run=True)
        dpod = dep["spec"]["template"]["spec"]
        dc = dpod["containers"][0]
        env = {e["name"]: e.get("value") for e in dc["env"]}
        dmounts = {m["name"]: m["mountPath"] for m in dc["volumeMounts"]}
        dvols = {v["name"]: v for v in dpod["volumes"]}
        self.assertEqual(dvols["redis-tls"]["secret"]["secretName"], "devexd-redis-tls")
        for k in ("REDIS_CA_FILE", "REDIS_CERT_FILE", "REDIS_KEY_FILE"):
            self.assertTrue(env[k].startswith(dmounts["redis-tls"] + "/"), (k, env[k]))

    def render(self, template="node"):
        """`devexd workload render` with the shipped config and the MCP sidecar on."""
        from test_config import SHIPPED_CONF, clean_env
        p = subprocess.run([harness.DEVEXD_BIN, "-c", SHIPPED_CONF, "-L", harness.LUA_DIR, "workload", "render",
                            "--template", template], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=30,
                           env=clean_env(ENABLE_MCP_SIDECAR="true", KUBE_NAMESPACE=REPL_NS, ENVIRONMENT="test"))
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)

    def test_network_policies(self):
        apply_namespaces(self.kc, self.docs)
        pols = {(d.namespace, d.name): apply(self.kc, d, dry_run=True)["spec"]
                for d in self.docs if d.kind == "NetworkPolicy"}
        self.assertEqual(sorted(pols), sorted([(APP_NS, "devexd"), (APP_NS, "redis"), (REPL_NS, "default-deny"),
                                               (REPL_NS, "runners")]))
        # everything in the REPL namespace that no other policy allows is denied
        deny = pols[(REPL_NS, "default-deny")]
        self.assertEqual(deny["podSelector"], {})
        self.assertEqual(sorted(deny["policyTypes"]), ["Egress", "Ingress"])
        self.assertNotIn("ingress", deny)
        self.assertNotIn("egress", deny)

        out = self.render()
        self.assertEqual(out["objects"][0]["metadata"]["namespace"], REPL_NS)
        pod = out["objects"][0]["spec"]["template"]
        gateway_ports = {out["identity"]["port"], out["identity"]["mcp_port"]}
        app_dep = apply(self.kc, [d for d in self.docs if d.kind == "Deployment"][0], dry_run=True)
        app_labels = app_dep["spec"]["template"]["metadata"]["labels"]

        def selects(selector, labels):
            return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) \
                and not selector.get("matchExpressions")

        def ns_is(peer, ns):
            return peer.get("namespaceSelector") == {"matchLabels": {"kubernetes.io/metadata.name": ns}}

        # the runner pods: selected by the labels devexd gives them
        run = pols[(REPL_NS, "runners")]
        self.assertTrue(selects(run["podSelector"], pod["metadata"]["labels"]), run["podSelector"])
        self.assertTrue(run["podSelector"]["matchLabels"], "must not select every pod")
        self.assertEqual(sorted(run["policyTypes"]), ["Egress", "Ingress"])
        # ingress: from devexd's pods only, on the ports the gateway uses
        (rule,) = run["ingress"]
        (peer,) = rule["from"]
        self.assertTrue(ns_is(peer, APP_NS), peer)
        self.assertTrue(selects(peer["podSelector"], app_labels), peer)
        self.assertEqual({(p["protocol"], p["port"]) for p in rule["ports"]}, {("TCP", p) for p in gateway_ports})
        # egress: every rule names its destination; DNS only to kube-dns; the
        # internet without the private and link-local ranges
        private = [ipaddress.ip_network(n) for n in
                   ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
                    "fc00::/7", "fe80::/10")]
        blocks = []
        for r in run["egress"]:
            self.assertIn("to", r, r)
            for peer in r["to"]:
                if "ipBlock" in peer:
                    blocks.append(peer["ipBlock"])
                    self.assertNotIn("ports", r)  # any port, but only outside the cluster
                else:
                    self.assertTrue(peer.get("namespaceSelector", {}).get("matchLabels"), r)
                    self.assertTrue(peer.get("podSelector", {}).get("matchLabels"), r)
                    if ns_is(peer, "kube-system"):
                        self.assertEqual(peer["podSelector"], {"matchLabels": {"k8s-app": "kube-dns"}})
                        self.assertEqual(sorted((p["protocol"], p["port"]) for p in r["ports"]),
                                         [("TCP", 53), ("UDP", 53)])
                    else:
                        self.assertTrue(ns_is(peer, APP_NS) and selects(peer["podSelector"], app_labels), r)
                        self.assertEqual([p["port"] for p in r["ports"]], [8080])
        self.assertEqual(sorted(b["cidr"] for b in blocks), ["0.0.0.0/0", "::/0"])
        for b in blocks:
            excepts = [ipaddress.ip_network(e) for e in b["except"]]
            for net in private:
                if net.version == ipaddress.ip_network(b["cidr"]).version:
                    self.assertTrue(any(net.subnet_of(e) for e in excepts), (net, b))
        # what an address inside the cluster would match: nothing but the selector rules
        for addr in ("10.96.0.1", "10.244.1.7", "172.17.0.2", "192.168.1.1", "169.254.169.254", "100.64.0.10",
                     "fd00::1", "fe80::1"):
            a = ipaddress.ip_address(addr)
            allowed = [b for b in blocks if a in ipaddress.ip_network(b["cidr"])
                       and not any(a in ipaddress.ip_network(e) for e in b["except"])]
            self.assertEqual(allowed, [], addr)

        # Redis (redis.yaml): only devexd's pods, on the TLS port
        rds = pols[(APP_NS, "redis")]
        redis_set = apply(self.kc, [d for d in self.docs if d.kind == "StatefulSet"][0], dry_run=True)
        self.assertTrue(selects(rds["podSelector"], redis_set["spec"]["template"]["metadata"]["labels"]))
        (rule,) = rds["ingress"]
        (peer,) = rule["from"]
        self.assertEqual(set(peer), {"podSelector"})  # this namespace only
        self.assertTrue(selects(peer["podSelector"], app_labels), peer)
        self.assertEqual([(p["protocol"], p["port"]) for p in rule["ports"]], [("TCP", 6379)])

        # devexd: DNS, Redis, the runners' ports, HTTPS
        app = pols[(APP_NS, "devexd")]
        self.assertTrue(selects(app["podSelector"], app_labels))
        self.assertEqual(app["policyTypes"], ["Egress"])
        by_port = {}
        for r in app["egress"]:
            for p in r["ports"]:
                by_port.setdefault((p["protocol"], p["port"]), []).append(r.get("to"))
        for port in (("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 443), ("TCP", 6443)):
            self.assertIn(port, by_port)
        for port in gateway_ports:
            (to,) = by_port[("TCP", port)]
            self.assertTrue(ns_is(to[0], REPL_NS) and selects(to[0]["podSelector"], pod["metadata"]["labels"]), to)

    def test_role_is_not_wider_than_needed(self):
        kinds = {d.kind for d in self.docs}
        self.assertNotIn("ClusterRole", kinds)
        self.assertNotIn("ClusterRoleBinding", kinds)
        roles = [d for d in self.docs if d.kind == "Role"]
        self.assertEqual([(r.namespace, r.name) for r in roles], [(REPL_NS, "devexd-runtime")])
        apply_namespaces(self.kc, self.docs)
        role = apply(self.kc, roles[0], dry_run=True)
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups"):
                self.assertNotIn("*", rule.get(field, []), rule)
            self.assertNotIn("nonResourceURLs", rule)
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    self.assertIn((g, r), ALLOWED, rule)
            self.assertFalse(set(rule["verbs"]) - {"get", "list", "watch", "create", "patch", "update", "delete"},
                             rule)
            if "pods" in rule["resources"]:
                # delete: what a failed start made (Driver:remove_now); never create, patch or update
                self.assertEqual(sorted(rule["verbs"]), ["delete", "get", "list", "watch"])
            if "events" in rule["resources"] or "replicasets" in rule["resources"]:
                self.assertFalse(set(rule["verbs"]) - {"list", "watch", "delete"}, rule)
                self.assertFalse("events" in rule["resources"] and "delete" in rule["verbs"], rule)
        (binding,) = [d for d in self.docs if d.kind == "RoleBinding"]
        self.assertEqual(binding.namespace, REPL_NS)
        b = apply(self.kc, binding, dry_run=True)
        self.assertEqual(b["subjects"], [{"kind": "ServiceAccount", "name": "devexd", "namespace": APP_NS}])
        # and nothing in the app's own namespace or cluster-wide
        self.kc.api.patch(api_path("v1", "serviceaccounts", APP_NS, "devexd"),
                          [d for d in self.docs if d.kind == "ServiceAccount"][0].text, patch_type="apply",
                          query={"fieldManager": "devexd-manifests-test"})
        self.kc.api.patch(roles[0].url(), roles[0].text, patch_type="apply",
                          query={"fieldManager": "devexd-manifests-test"})
        self.kc.api.patch(binding.url(), binding.text, patch_type="apply",
                          query={"fieldManager": "devexd-manifests-test"})
        token = self.kc.service_account_token(APP_NS, "devexd", create=False)
        sa = self.kc.client(token)
        self.assertEqual(sa.get(api_path("apps/v1", "deployments", REPL_NS))["items"], [])
        for path in (api_path("apps/v1", "deployments", APP_NS), api_path("v1", "secrets", REPL_NS),
                     api_path("v1", "pods"), api_path("v1", "namespaces")):
            with self.assertRaises(k8s_harness.ApiError) as cm:
                sa.get(path)
            self.assertEqual(cm.exception.status, 403, path)


# The REPL namespace of test_k8s_runtime's flows (its methods read the module's NS)
test_k8s_runtime.NS = REPL_NS


class ServiceAccountRuntimeTest(test_k8s_runtime.K8sRuntimeTest):
    """test_k8s_runtime.py's flows, with devexd holding only the devexd
    ServiceAccount's token (the manifests' Role in devex-repls)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-manifests-")
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.kc = k8s_harness.KubeCluster(install_crds=True).__enter__()
        docs = load_docs()
        apply_namespaces(cls.kc, docs)
        for d in docs:
            if d.kind in ("ServiceAccount", "Role", "RoleBinding", "Secret"):
                apply(cls.kc, d, dry_run=False)
        token = cls.kc.service_account_token(APP_NS, "devexd", create=False)
        kubeconfig = cls.kc.write_kubeconfig(os.path.join(cls.tmp, "kubeconfig"), token=token, user="devexd",
                                             namespace=REPL_NS)
        cls.redis = RedisServer().__enter__()
        cls.gh = GitHubFake().__enter__()
        cls.d = Devexd(app=None, threads=2, config=test_k8s_runtime.cluster_config(cls, kubeconfig, REPL_NS)).__enter__()
        cls.d.sync_templates()

    @classmethod
    def tearDownClass(cls):
        harness.stop_class_servers(cls, "d", "gh", "redis", "kc")

    def test_forbidden_is_reported(self):
        """Sanity check of the premise: the token cannot act outside the REPL namespace."""
        token = self.kc.service_account_token(APP_NS, "devexd", create=False)
        with self.assertRaises(k8s_harness.ApiError) as cm:
            self.kc.client(token).get(api_path("apps/v1", "deployments", "default"))
        self.assertEqual(cm.exception.status, 403)


if __name__ == "__main__":
    harness.main()
