"""A real Kubernetes control plane for the integration tests (Python 3 stdlib only).

KubeCluster is a context manager that starts, on free loopback ports with all
state in a temporary directory:

  etcd                      Debian's etcd-server (/usr/bin/etcd)
  kube-apiserver            v1.20.2, built by tests/k8s/build.sh
  kube-controller-manager   same build (deployment, replicaset, garbage
                            collector, namespace, service accounts and their
                            token secrets, endpoints, root CA config map...)
  a simulated kubelet       a Python thread (SimKubelet, below): no container
                            image runs anywhere, but pods go through the states
                            a real node gives them, and each Running pod's
                            runner container is played by a real HTTP server
                            (runner_standin.py) on the pod's own loopback
                            address (podIP 127.H.L.2, 127.H.L.3, ...: from
                            a block keyed on the kubelet's process)

and installs Traefik's Middleware CRD (traefik.io/v1alpha1). It waits until
the API server is ready, the CRD is established, the controller manager has
made the "default" service account (with its token secret) in namespace
"default", and the node is registered.

    with k8s_harness.KubeCluster() as kc:
        kc.server            "https://127.0.0.1:PORT"
        kc.ca_file           the CA that signed the serving certificate
        kc.admin_token       a static token: user "admin", group system:masters
        kc.limited_token     a static token: user "limited", no RBAC at all
        kc.kubeconfig        a kubeconfig file for the admin user
        kc.api               a Client (JSON REST, admin token)
        kc.client(token)     a Client for another token
        kc.service_account_token("ns", "sa")   a TokenRequest token
        kc.kubelet           the SimKubelet (rules, pause/resume)

Binaries: $DEVEXD_K8S_BIN_DIR, else the cache tests/k8s/build.sh prints
($DEVEXD_K8S_CACHE or /var/cache/devexd-k8s, then v1.20.2/bin). When they are
missing, KubeCluster() raises KubeBinariesMissing (an AssertionError, so the
test FAILS rather than skips) naming tests/k8s/build.sh.

Environment:
  DEVEXD_K8S_BIN_DIR     directory with kube-apiserver and kube-controller-manager
  DEVEXD_K8S_CACHE       cache root used by build.sh (default /var/cache/devexd-k8s)
  DEVEXD_ETCD_BIN        etcd binary (default: etcd on PATH, /usr/bin/etcd)
  DEVEXD_KEEP_TMP        keep the temporary directory (logs, certs, etcd data)
  DEVEXD_K8S_VERBOSE     print component log tails even when nothing failed
  DEVEXD_K8S_STANDINS    "0": no runner stand-ins by default (podIP 10.244.x.y,
                         status only, as before they existed)

Things to know about Kubernetes 1.20 (this API server):
  - Ephemeral containers are added with PUT/PATCH on the pod's
    "ephemeralcontainers" subresource, whose body is an object of kind
    "EphemeralContainers" (apiVersion v1, metadata.name = the pod, and an
    "ephemeralContainers" list); 1.22+ takes a Pod there instead.
  - The ServiceAccount admission plugin rejects pods in a namespace until the
    "default" service account and its token secret exist: create namespaces
    with KubeCluster.create_namespace(), which waits for them.
  - TokenRequest needs expirationSeconds >= 600.

The simulated kubelet (see SimKubelet) is steered by annotations or labels on
the pod (a Deployment's pod template carries them to the pods), or by rules
registered from the test (kc.kubelet.add_rule(...)) when the test does not
write the pod template itself.
"""

import base64
import concurrent.futures
import contextlib
import hashlib
import heapq
import http.client
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("DEVEXD_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
K8S_VERSION = "1.20.2"
BUILD_SCRIPT = "tests/k8s/build.sh"
CACHE_DIR = os.environ.get("DEVEXD_K8S_CACHE") or "/var/cache/devexd-k8s"
BIN_DIR = os.environ.get("DEVEXD_K8S_BIN_DIR") or os.path.join(CACHE_DIR, "v" + K8S_VERSION, "bin")

NODE_NAME = "devexd-node-1"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Controllers the controller manager runs (its --controllers). Everything a
# REPL workload touches, without the node, volume, cloud and certificate ones.
DEFAULT_CONTROLLERS = [
    "deployment", "replicaset", "garbagecollector", "namespace", "serviceaccount",
    "serviceaccount-token", "endpoint", "endpointslice", "root-ca-cert-publisher",
    "statefulset", "job", "podgc", "clusterrole-aggregation",
]

# Annotation (or label) keys the simulated kubelet obeys; see SimKubelet.
ANN = "devex.test/"
FAIL_IMAGE = ANN + "fail-image"
NEVER_READY = ANN + "never-ready"
READY_AFTER = ANN + "ready-after"
CRASH = ANN + "crash"
INIT_EXIT_CODE = ANN + "init-exit-code"
UNSCHEDULABLE = ANN + "unschedulable"
POD_IP = ANN + "pod-ip"
TERMINATION_DELAY = ANN + "termination-delay"
EPHEMERAL_EXIT_CODE = ANN + "ephemeral-exit-code"      # or ephemeral-exit-code.<container>
EPHEMERAL_RUN_SECONDS = ANN + "ephemeral-run-seconds"  # or ephemeral-run-seconds.<container>
AGENT = ANN + "agent"  # "true": the runner container runs the real agent (`devexd runner`), see SimKubelet

# The runner stand-in the kubelet runs per Running pod (see SimKubelet)
STANDIN_SCRIPT = os.path.join(HERE, "runner_standin.py")
STANDIN_DEFAULT_PORT = 8081   # the original runner image's port
PROBE_USER_AGENT = "kube-probe/1.20"   # the stand-in leaves these out of /_standin/last-request

TRAEFIK_MIDDLEWARE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "middlewares.traefik.io"},
    "spec": {
        "group": "traefik.io",
        "scope": "Namespaced",
        "names": {"kind": "Middleware", "listKind": "MiddlewareList", "plural": "middlewares",
                  "singular": "middleware"},
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
                "required": ["metadata", "spec"],
            }},
        }],
    },
}


class KubeBinariesMissing(AssertionError):
    """The control plane binaries are not built: run tests/k8s/build.sh."""


class ApiError(Exception):
    """A Kubernetes API answer with status >= 400. .status, .body (the decoded
    Status object, or text), .reason (the Status reason: NotFound, Forbidden,
    AlreadyExists, Conflict, Invalid...)."""

    def __init__(self, method, path, status, body):
        self.method, self.path, self.status, self.body = method, path, status, body
        self.reason = body.get("reason") if isinstance(body, dict) else None
        msg = body.get("message") if isinstance(body, dict) else str(body)[:500]
        super().__init__("%s %s: %d %s: %s" % (method, path, status, self.reason or "", msg))


# the same helpers as devexd's own tests (harness.py is beside this file)
sys.path.insert(0, HERE)
from harness import RedisServer, free_port, _set_pdeathsig  # noqa: E402


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def now_micro():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


def wait_for(fn, what, timeout=30, interval=0.1):
    """Calls fn() until it returns a true value, and returns that. Exceptions
    from fn count as "not yet" (the last one is reported on timeout)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(interval)


def api_path(api_version, plural, namespace=None, name=None, subresource=None):
    """"/api/v1/namespaces/NS/pods/NAME/status" and the like, from
    ("v1", "pods", ns, name, "status"); api_version "apps/v1" gives /apis/apps/v1."""
    p = "/api/v1" if api_version == "v1" else "/apis/" + api_version
    if namespace:
        p += "/namespaces/" + namespace
    p += "/" + plural
    if name:
        p += "/" + name
    if subresource:
        p += "/" + subresource
    return p


# ---------------------------------------------------------------------------
# JSON REST client
# ---------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body  # bytes

    def json(self):
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:300])


PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


class Client:
    """A small Kubernetes REST client: JSON in, JSON out, bearer token, TLS
    verified against the cluster CA. One keep-alive connection per thread.

    get/post/put/patch/delete return the decoded body and raise ApiError on a
    status >= 400; request() returns a Response whatever the status."""

    def __init__(self, server, ca_file, token=None, timeout=30):
        u = urllib.parse.urlsplit(server)
        self.server = server
        self.host, self.port = u.hostname, u.port or 443
        self.token = token
        self.timeout = timeout
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self._local = threading.local()
        self._all = set()  # every thread's connection, for close()
        self._all_lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is not None:
            return c, True
        c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=self.timeout)
        self._local.conn = c
        with self._all_lock:
            self._all.add(c)
        return c, False

    def _drop(self):
        c = getattr(self._local, "conn", None)
        self._local.conn = None
        if c is not None:
            with self._all_lock:
                self._all.discard(c)
            with contextlib.suppress(Exception):
                c.close()

    def close(self):
        """Closes the connections of every thread (they reopen on the next request)."""
        self._local = threading.local()
        with self._all_lock:
            conns, self._all = self._all, set()
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()

    def _headers(self, body, content_type, headers):
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if body is not None:
            h["Content-Type"] = content_type or "application/json"
        h.update(headers or {})
        return h

    @staticmethod
    def _url(path, query):
        if query:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(query)
        return path

    def request(self, method, path, body=None, query=None, content_type=None, headers=None):
        """Any request; body: dict/list (sent as JSON), bytes or str. Returns a Response."""
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        url = self._url(path, query)
        hdrs = self._headers(body, content_type, headers)
        for attempt in (0, 1):
            conn, reused = self._conn()
            try:
                conn.request(method, url, body=body, headers=hdrs)
                r = conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self._drop()
                return Response(r.status, r.headers, data)
            except (http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError,
                    ConnectionResetError, http.client.CannotSendRequest, http.client.ResponseNotReady):
                self._drop()
                if not reused or attempt:
                    raise
            except BaseException:
                self._drop()
                raise

    def call(self, method, path, body=None, query=None, content_type=None, headers=None, check=True):
        r = self.request(method, path, body=body, query=query, content_type=content_type, headers=headers)
        try:
            obj = r.json()
        except ValueError:
            obj = r.body.decode("utf-8", "replace")
        if check and r.status >= 400:
            raise ApiError(method, path, r.status, obj)
        return obj

    def get(self, path, query=None, **kw):
        return self.call("GET", path, query=query, **kw)

    def get_or_none(self, path, query=None):
        """The object, or None on 404."""
        try:
            return self.get(path, query=query)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path, body, query=None, **kw):
        return self.call("POST", path, body=body, query=query, **kw)

    def put(self, path, body, query=None, **kw):
        return self.call("PUT", path, body=body, query=query, **kw)

    def patch(self, path, body, patch_type="merge", query=None, **kw):
        """patch_type: merge, strategic, json, apply (or a full content type)."""
        return self.call("PATCH", path, body=body, query=query,
                         content_type=PATCH_TYPES.get(patch_type, patch_type), **kw)

    def delete(self, path, grace_period=None, propagation=None, preconditions=None, query=None,
               missing_ok=False, **kw):
        """DELETE with optional DeleteOptions (gracePeriodSeconds,
        propagationPolicy: Foreground/Background/Orphan, preconditions)."""
        opts = None
        if grace_period is not None or propagation or preconditions:
            opts = {"kind": "DeleteOptions", "apiVersion": "v1"}
            if grace_period is not None:
                opts["gracePeriodSeconds"] = grace_period
            if propagation:
                opts["propagationPolicy"] = propagation
            if preconditions:
                opts["preconditions"] = preconditions
        try:
            return self.call("DELETE", path, body=opts, query=query, **kw)
        except ApiError as e:
            if missing_ok and e.status == 404:
                return None
            raise

    def watch(self, path, query=None, timeout_seconds=30, resource_version=None):
        """Yields watch events ({"type": ..., "object": {...}}) from a list path
        until the server ends the watch (timeout_seconds) or the caller stops."""
        q = dict(query or {})
        q["watch"] = "1"
        q["timeoutSeconds"] = str(int(timeout_seconds))
        if resource_version is not None:
            q["resourceVersion"] = str(resource_version)
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout_seconds + 15)
        try:
            conn.request("GET", self._url(path, q), headers=self._headers(None, None, None))
            r = conn.getresponse()
            if r.status >= 400:
                body = r.read()
                try:
                    body = json.loads(body)
                except ValueError:
                    pass
                raise ApiError("WATCH", path, r.status, body)
            while True:
                line = r.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


# ---------------------------------------------------------------------------
# Certificates and keys (openssl command line)
# ---------------------------------------------------------------------------

def _openssl(*args, cwd=None):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    if p.returncode != 0:
        raise AssertionError("openssl %s failed: %s" % (" ".join(args), p.stderr.decode(errors="replace")))
    return p.stdout


def make_pki(d, sans):
    """CA, a serving certificate signed by it (for sans), and the service
    account key pair. Returns a dict of paths."""
    ca_key, ca_crt = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    key, csr, crt = os.path.join(d, "apiserver.key"), os.path.join(d, "apiserver.csr"), os.path.join(d, "apiserver.crt")
    ext = os.path.join(d, "apiserver.ext")
    sa_key, sa_pub = os.path.join(d, "sa.key"), os.path.join(d, "sa.pub")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "3",
             "-subj", "/CN=devexd-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    _openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=%s\n" % ",".join(sans))
    _openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial", "-days", "3",
             "-out", crt, "-extfile", ext, cwd=d)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", sa_key)
    _openssl("pkey", "-in", sa_key, "-pubout", "-out", sa_pub)
    return {"ca_key": ca_key, "ca_crt": ca_crt, "key": key, "crt": crt, "sa_key": sa_key, "sa_pub": sa_pub}


def _yaml_scalar(v):
    s = str(v)
    if re.fullmatch(r"[A-Za-z0-9_./:@+=-]+", s) and not re.fullmatch(r"[0-9.+-]+|true|false|null|yes|no", s):
        return s
    return json.dumps(s)  # a YAML double-quoted scalar


def kubeconfig_text(server, token, ca_file=None, ca_data=None, namespace="default", user="admin",
                    cluster="devexd-test", context="devexd-test"):
    """A kubeconfig in the block style kubectl writes (JSON would do for
    client-go, but a hand-written parser may expect this shape)."""
    lines = ["apiVersion: v1", "kind: Config", "clusters:", "- name: " + _yaml_scalar(cluster), "  cluster:",
             "    server: " + _yaml_scalar(server)]
    if ca_data is not None:
        lines.append("    certificate-authority-data: " + base64.b64encode(ca_data).decode())
    elif ca_file:
        lines.append("    certificate-authority: " + _yaml_scalar(ca_file))
    lines += ["users:", "- name: " + _yaml_scalar(user), "  user:", "    token: " + _yaml_scalar(token),
              "contexts:", "- name: " + _yaml_scalar(context), "  context:",
              "    cluster: " + _yaml_scalar(cluster), "    user: " + _yaml_scalar(user)]
    if namespace:
        lines.append("    namespace: " + _yaml_scalar(namespace))
    lines += ["current-context: " + _yaml_scalar(context), "preferences: {}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

class _Proc:
    def __init__(self, name, cmd, log_path, env=None):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        log = open(log_path, "ab")
        try:
            self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      env=env, preexec_fn=_set_pdeathsig)
        finally:
            log.close()

    def alive(self):
        return self.p.poll() is None

    def check(self):
        if self.p.poll() is not None:
            raise AssertionError("%s exited with %s\n--- %s (tail) ---\n%s"
                                 % (self.name, self.p.returncode, self.log_path, self.tail()))

    def tail(self, n=6000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - n))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout=10):
        if self.p.poll() is None:
            with contextlib.suppress(OSError):
                self.p.terminate()
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    self.p.kill()
                self.p.wait()


def check_binaries():
    """Raises KubeBinariesMissing unless etcd, kube-apiserver and
    kube-controller-manager are present; returns their paths."""
    etcd = os.environ.get("DEVEXD_ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"
    paths = {"etcd": etcd,
             "kube-apiserver": os.path.join(BIN_DIR, "kube-apiserver"),
             "kube-controller-manager": os.path.join(BIN_DIR, "kube-controller-manager")}
    missing = [p for p in paths.values() if not os.access(p, os.X_OK)]
    if missing:
        raise KubeBinariesMissing(
            "Kubernetes test binaries missing: %s. Build them with %s (from the source tree: "
            "`bash %s`; it installs etcd-server and caches the build in %s), or point "
            "DEVEXD_K8S_BIN_DIR at a directory holding kube-apiserver and kube-controller-manager %s."
            % (", ".join(missing), BUILD_SCRIPT, BUILD_SCRIPT, CACHE_DIR, K8S_VERSION))
    return paths


# ---------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------

class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager + a simulated kubelet.

    kubelet:          start the simulated kubelet (SimKubelet) for node_name
    controllers:      the controller manager's controllers (list; ["*"] for its defaults)
    install_crds:     install Traefik's Middleware CRD (and wait until established)
    extra_crds:       more CRD objects to install before the controller manager starts
    users:            more static-token users {name: [groups]}; tokens in .tokens[name]
    apiserver_args:   extra kube-apiserver flags
    pod_ip:           give every pod this IP (e.g. "127.0.0.1", to reach a fake
                      runner; no stand-in runs then); default: a distinct
                      loopback address per pod with a runner stand-in on it
    standins:         run a runner stand-in per Running pod (default True, or
                      $DEVEXD_K8S_STANDINS); False: status only, podIP 10.244.x.y
    start_timeout:    seconds for the whole start
    """

    def __init__(self, kubelet=True, node_name=NODE_NAME, controllers=None, install_crds=True, extra_crds=(),
                 users=None, apiserver_args=(), controller_manager_args=(), pod_ip=None, standins=None,
                 poll_interval=0.2, lease_interval=5.0, ephemeral_run_seconds=0.3, start_timeout=180,
                 kubelet_workers=1):
        self.paths = check_binaries()
        self.kubelet_workers = kubelet_workers
        self.want_kubelet = kubelet
        self.node_name = node_name
        self.controllers = list(controllers or DEFAULT_CONTROLLERS)
        self.install_crds = install_crds
        self.extra_crds = list(extra_crds)
        self.extra_users = dict(users or {})
        self.apiserver_args = list(apiserver_args)
        self.controller_manager_args = list(controller_manager_args)
        self.pod_ip = pod_ip
        self.standins = standins
        self.poll_interval = poll_interval
        self.lease_interval = lease_interval
        self.ephemeral_run_seconds = ephemeral_run_seconds
        self.start_timeout = start_timeout
        self.keep_tmp = bool(os.environ.get("DEVEXD_KEEP_TMP"))
        self.tmp = None
        self.etcd_dir = None
        self.procs = {}
        self.kubelet = None
        self.api = None
        self.start_seconds = None
        self.timings = {}

    # ---- lifecycle ----

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self._dump_logs("start failed")
            self.stop()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or os.environ.get("DEVEXD_K8S_VERBOSE"):
            self._dump_logs("test failed" if exc_type else "verbose")
        self.stop()
        return False

    def start(self):
        t0 = time.monotonic()
        self.deadline = t0 + self.start_timeout
        self.tmp = tempfile.mkdtemp(prefix="devexd-k8s-")
        self.pki = make_pki(self.tmp, ["DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                                       "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
                                       "IP:127.0.0.1", "IP:10.0.0.1"])
        self.ca_file = self.pki["ca_crt"]
        self.tokens = {"admin": secrets.token_hex(24), "limited": secrets.token_hex(24)}
        rows = ['%s,admin,uid-admin,"system:masters"' % self.tokens["admin"],
                "%s,limited,uid-limited" % self.tokens["limited"]]
        for name, groups in self.extra_users.items():
            self.tokens[name] = secrets.token_hex(24)
            row = "%s,%s,uid-%s" % (self.tokens[name], name, name)
            if groups:
                row += ',"%s"' % ",".join(groups)
            rows.append(row)
        self.token_file = os.path.join(self.tmp, "tokens.csv")
        with open(self.token_file, "w") as f:
            f.write("\n".join(rows) + "\n")
        os.chmod(self.token_file, 0o600)
        self.timings["pki"] = time.monotonic() - t0

        for attempt in range(3):  # a port taken between free_port() and bind: start again
            try:
                self._start_etcd()
                self.timings["etcd"] = time.monotonic() - t0
                self._start_apiserver()
                self.timings["apiserver"] = time.monotonic() - t0
                break
            except _PortInUse:
                if attempt == 2:
                    raise
                for name in ("kube-apiserver", "etcd"):
                    if name in self.procs:
                        self.procs.pop(name).stop()
                shutil.rmtree(self.etcd_dir, ignore_errors=True)

        self.kubeconfig = self.write_kubeconfig(os.path.join(self.tmp, "admin.kubeconfig"))
        if self.install_crds:
            self.apply_crd(TRAEFIK_MIDDLEWARE_CRD)
        for crd in self.extra_crds:
            self.apply_crd(crd)
        self.timings["crds"] = time.monotonic() - t0
        self._start_controller_manager()
        self._wait_default_service_account("default")
        self.timings["controller-manager"] = time.monotonic() - t0
        if self.want_kubelet:
            self.kubelet = SimKubelet(self, self.node_name, poll_interval=self.poll_interval,
                                      lease_interval=self.lease_interval, pod_ip=self.pod_ip,
                                      standins=self.standins,
                                      ephemeral_run_seconds=self.ephemeral_run_seconds,
                                      log_path=os.path.join(self.tmp, "kubelet.log"),
                                      workers=self.kubelet_workers)
            self.kubelet.register()
            self.kubelet.start()
            self.timings["kubelet"] = time.monotonic() - t0
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self):
        """Stops the kubelet thread and the processes; removes the temporary
        directories (kept with DEVEXD_KEEP_TMP). Safe to call twice."""
        try:
            if self.kubelet is not None:
                self.kubelet.stop()
        finally:
            for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
                p = self.procs.pop(name, None)
                if p is not None:
                    p.stop()
            if self.api is not None:
                self.api.close()
            dirs = [d for d in (self.tmp, getattr(self, "etcd_dir", None)) if d]
            if self.keep_tmp and dirs:
                sys.stderr.write("k8s_harness: kept %s\n" % " ".join(dirs))
            else:
                for d in dirs:
                    shutil.rmtree(d, ignore_errors=True)
            self.tmp = self.etcd_dir = None

    def _remaining(self):
        return max(1.0, self.deadline - time.monotonic())

    def _wait(self, proc, fn, what):
        """Polls fn until true; fails early with the log if proc exits."""
        def step():
            for p in proc if isinstance(proc, (list, tuple)) else [proc]:
                if not p.alive():
                    txt = p.tail()
                    if "address already in use" in txt:
                        raise _PortInUse(txt)
                    p.check()
            return fn()
        deadline = time.monotonic() + self._remaining()
        last = None
        while True:
            try:
                v = step()
                if v:
                    return v
            except (_PortInUse, AssertionError):
                raise
            except Exception as e:  # noqa: BLE001
                last = e
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))
            time.sleep(0.1)

    # ---- etcd ----

    @staticmethod
    def _remove_stale_etcd_dirs(base):
        """Removes the etcd data dirs of earlier runs that were killed before
        their cleanup (in /dev/shm each holds ~100 MB of RAM): a dir no
        running process names and older than two minutes (a concurrent test
        may have made its dir and not started etcd yet)."""
        cmdlines = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open("/proc/%s/cmdline" % pid, "rb") as f:
                        cmdlines.append(f.read())
                except OSError:
                    pass
        for name in os.listdir(base):
            d = os.path.join(base, name)
            try:
                old = time.time() - os.stat(d).st_mtime > 120
            except OSError:
                continue
            if name.startswith("devexd-etcd-") and old and not any(d.encode() in c for c in cmdlines):
                shutil.rmtree(d, ignore_errors=True)

    def _start_etcd(self):
        self.etcd_port, peer = free_port(), free_port()
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else self.tmp  # cheap fsync
        if base == "/dev/shm":
            self._remove_stale_etcd_dirs(base)
        self.etcd_dir = tempfile.mkdtemp(prefix="devexd-etcd-", dir=base)
        self.etcd_url = "http://127.0.0.1:%d" % self.etcd_port
        peer_url = "http://127.0.0.1:%d" % peer
        cmd = [self.paths["etcd"], "--name", "devexd", "--data-dir", self.etcd_dir,
               "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
               "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
               "--initial-cluster", "devexd=" + peer_url, "--initial-cluster-state", "new",
               "--snapshot-count", "100000", "--quota-backend-bytes", str(2 * 1024 ** 3)]
        env = dict(os.environ)
        env.pop("ETCDCTL_API", None)
        for k in list(env):
            if k.startswith("ETCD_"):
                del env[k]  # an ETCD_* variable would override the flags
        p = self.procs["etcd"] = _Proc("etcd", cmd, os.path.join(self.tmp, "etcd.log"), env=env)

        def healthy():
            with contextlib.closing(http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=2)) as c:
                c.request("GET", "/health")
                r = c.getresponse()
                return r.status == 200 and b"true" in r.read()
        self._wait(p, healthy, "etcd /health")

    # ---- kube-apiserver ----

    def _start_apiserver(self):
        self.port = free_port()
        self.host = "127.0.0.1"
        self.server = "https://127.0.0.1:%d" % self.port
        cmd = [os.path.join(BIN_DIR, "kube-apiserver"),
               "--etcd-servers=" + self.etcd_url,
               "--bind-address=127.0.0.1", "--secure-port=%d" % self.port, "--insecure-port=0",
               "--advertise-address=127.0.0.1",
               "--endpoint-reconciler-type=none",  # 127.0.0.1 is not a valid Endpoints address
               "--tls-cert-file=" + self.pki["crt"], "--tls-private-key-file=" + self.pki["key"],
               "--cert-dir=" + os.path.join(self.tmp, "apiserver-certs"),
               "--token-auth-file=" + self.token_file,
               "--authorization-mode=Node,RBAC",
               "--feature-gates=EphemeralContainers=true",
               "--service-account-issuer=" + SERVICE_ACCOUNT_ISSUER,
               "--service-account-signing-key-file=" + self.pki["sa_key"],
               "--service-account-key-file=" + self.pki["sa_pub"],
               "--api-audiences=" + SERVICE_ACCOUNT_ISSUER,
               "--service-cluster-ip-range=" + SERVICE_CIDR,
               "--allow-privileged=true",
               "--profiling=false",
               "--event-ttl=10m",
               "--v=1"] + self.apiserver_args
        p = self.procs["kube-apiserver"] = _Proc("kube-apiserver", cmd, os.path.join(self.tmp, "apiserver.log"))
        self.api = Client(self.server, self.ca_file, self.tokens["admin"])

        def ready():
            r = self.api.request("GET", "/readyz")
            return r.status == 200
        self._wait(p, ready, "kube-apiserver /readyz")

    @property
    def admin_token(self):
        return self.tokens["admin"]

    @property
    def limited_token(self):
        return self.tokens["limited"]

    # ---- kube-controller-manager ----

    def _start_controller_manager(self):
        cmd = [os.path.join(BIN_DIR, "kube-controller-manager"),
               "--kubeconfig=" + self.kubeconfig,
               "--controllers=" + ",".join(self.controllers),
               "--use-service-account-credentials=false",
               "--leader-elect=false",
               "--root-ca-file=" + self.ca_file,
               "--service-account-private-key-file=" + self.pki["sa_key"],
               "--port=0", "--secure-port=0",  # serve nothing: no port to collide
               "--kube-api-qps=200", "--kube-api-burst=400",
               "--concurrent-gc-syncs=5",
               "--v=1"] + self.controller_manager_args
        self.procs["kube-controller-manager"] = _Proc("kube-controller-manager", cmd,
                                                      os.path.join(self.tmp, "controller-manager.log"))

    def _wait_default_service_account(self, namespace):
        """The ServiceAccount admission plugin rejects pods until the namespace's
        "default" service account has its token secret."""
        procs = [self.procs[n] for n in ("kube-apiserver", "kube-controller-manager") if n in self.procs]

        def ok():
            sa = self.api.get_or_none(api_path("v1", "serviceaccounts", namespace, "default"))
            return sa and sa.get("secrets")
        self._wait(procs, ok, "service account %s/default and its token" % namespace)

    # ---- helpers for tests ----

    def client(self, token=None, user=None):
        """A Client for a token (or for one of the static users by name)."""
        if user is not None:
            token = self.tokens[user]
        return Client(self.server, self.ca_file, token)

    def write_kubeconfig(self, path=None, token=None, user="admin", namespace="default", embed_ca=False):
        """Writes a kubeconfig (server, CA, token) and returns its path. token
        defaults to the static token of `user`."""
        if token is None:
            token = self.tokens[user]
        if path is None:
            path = os.path.join(self.tmp, "kubeconfig-%s-%s" % (user, secrets.token_hex(4)))
        ca_data = None
        if embed_ca:
            with open(self.ca_file, "rb") as f:
                ca_data = f.read()
        with open(path, "w") as f:
            f.write(kubeconfig_text(self.server, token, ca_file=self.ca_file, ca_data=ca_data,
                                    namespace=namespace, user=user))
        os.chmod(path, 0o600)
        return path

    def in_cluster_env(self):
        """The variables a pod sees for the API server."""
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}

    def service_account_dir(self, namespace, name, directory=None, expiration_seconds=3600):
        """A directory shaped like /var/run/secrets/kubernetes.io/serviceaccount
        (token, ca.crt, namespace) for a service account; returns its path."""
        d = directory or tempfile.mkdtemp(prefix="sa-", dir=self.tmp)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "token"), "w") as f:
            f.write(self.service_account_token(namespace, name, expiration_seconds=expiration_seconds))
        shutil.copyfile(self.ca_file, os.path.join(d, "ca.crt"))
        with open(os.path.join(d, "namespace"), "w") as f:
            f.write(namespace)
        return d

    def create_namespace(self, name, labels=None, wait=True):
        """Creates a namespace (an existing one is fine) and waits until pods
        can be created in it (default service account and token exist)."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        if labels:
            body["metadata"]["labels"] = labels
        try:
            self.api.post("/api/v1/namespaces", body)
        except ApiError as e:
            if e.status != 409:
                raise
        if wait:
            self._wait_default_service_account(name)
        return name

    def create_service_account(self, namespace, name):
        try:
            return self.api.post(api_path("v1", "serviceaccounts", namespace),
                                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
        except ApiError as e:
            if e.status != 409:
                raise
            return self.api.get(api_path("v1", "serviceaccounts", namespace, name))

    def service_account_token(self, namespace, name, expiration_seconds=3600, audiences=None, create=True):
        """A bound token for the service account (TokenRequest API), creating
        the account first when create is true. expiration_seconds >= 600."""
        if create:
            self.create_service_account(namespace, name)
        spec = {"expirationSeconds": int(expiration_seconds)}
        if audiences:
            spec["audiences"] = list(audiences)
        tr = self.api.post(api_path("v1", "serviceaccounts", namespace, name, "token"),
                           {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return tr["status"]["token"]

    def grant(self, subject, rules, namespace=None, name=None):
        """Gives a subject RBAC rules: a Role + RoleBinding in namespace, or a
        ClusterRole + ClusterRoleBinding without one. subject: "user:NAME",
        "group:NAME" or "serviceaccount:NS:NAME". rules: RBAC PolicyRule dicts,
        e.g. [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]."""
        kind, _, rest = subject.partition(":")
        if kind == "user":
            subj = {"kind": "User", "name": rest, "apiGroup": "rbac.authorization.k8s.io"}
        elif kind == "group":
            subj = {"kind": "Group", "name": rest, "apiGroup": "rbac.authorization.k8s.io"}
        elif kind == "serviceaccount":
            ns, _, sa = rest.partition(":")
            subj = {"kind": "ServiceAccount", "namespace": ns, "name": sa}
        else:
            raise ValueError("subject must be user:, group: or serviceaccount:ns:name")
        name = name or "devexd-test-" + hashlib.sha1(subject.encode()).hexdigest()[:10]
        rk = "Role" if namespace else "ClusterRole"
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": rk, "metadata": {"name": name},
                "rules": rules}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": rk + "Binding", "metadata": {"name": name},
                   "subjects": [subj], "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": rk, "name": name}}
        plural = "roles" if namespace else "clusterroles"
        for obj, pl in ((role, plural), (binding, plural[:-1] + "bindings")):
            path = api_path("rbac.authorization.k8s.io/v1", pl, namespace)
            try:
                self.api.post(path, obj)
            except ApiError as e:
                if e.status != 409:
                    raise
                self.api.put(path + "/" + name, obj)
        return name

    def apply_crd(self, crd, timeout=60):
        """Creates a CustomResourceDefinition and waits until it is Established
        and its resources answer."""
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        try:
            self.api.post(path, crd)
        except ApiError as e:
            if e.status != 409:
                raise
        name = crd["metadata"]["name"]

        def established():
            o = self.api.get(path + "/" + name)
            return any(c.get("type") == "Established" and c.get("status") == "True"
                       for c in o.get("status", {}).get("conditions", []))
        wait_for(established, "CRD %s established" % name, timeout=timeout)
        spec = crd["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("served", True))
        probe = "/apis/%s/%s/%s" % (spec["group"], version, spec["names"]["plural"])
        wait_for(lambda: self.api.request("GET", probe).status == 200, "GET " + probe, timeout=timeout)

    def wait_for(self, fn, what, timeout=30, interval=0.1):
        return wait_for(fn, what, timeout=timeout, interval=interval)

    def wait_pod_ready(self, namespace, label_selector=None, name=None, count=1, timeout=60):
        """Waits until `count` pods (by name or label selector) are Ready; returns them."""
        def ready_pods():
            if name:
                pods = [self.api.get(api_path("v1", "pods", namespace, name))]
            else:
                pods = self.api.get(api_path("v1", "pods", namespace),
                                     query={"labelSelector": label_selector} if label_selector else None)["items"]
            ok = [p for p in pods if pod_is_ready(p) and not p["metadata"].get("deletionTimestamp")]
            return ok if len(ok) >= count else None
        return wait_for(ready_pods, "%d ready pod(s) in %s (%s)" % (count, namespace, name or label_selector),
                        timeout=timeout)

    def log_path(self, component):
        """Log file of etcd, kube-apiserver, kube-controller-manager or kubelet."""
        files = {"etcd": "etcd.log", "kube-apiserver": "apiserver.log",
                 "kube-controller-manager": "controller-manager.log", "kubelet": "kubelet.log"}
        return os.path.join(self.tmp, files[component])

    def log_tail(self, component, n=6000):
        try:
            with open(self.log_path(component), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def _dump_logs(self, why):
        if not self.tmp:
            return
        for comp in ("etcd", "kube-apiserver", "kube-controller-manager", "kubelet"):
            t = self.log_tail(comp, 4000)
            if t:
                sys.stderr.write("--- %s log tail (%s) ---\n%s\n" % (comp, why, t))


class NamespacePerTest:
    """A TestCase mixin (listed before unittest.TestCase): one KubeCluster for
    the class (cls.kc, cls.api as admin; cls.tmp holding cls.store_dir), and
    per test a namespace of its own (self.ns = ns_prefix + a number: no test
    sees another's objects), the kubelet's rules cleared, a new Redis
    (self.redis); self.d, a Devexd the test may start, is stopped after it."""

    ns_prefix = "ns"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devexd-%s-k8s-" % cls.ns_prefix)
        cls.store_dir = os.path.join(cls.tmp, "bucket")
        os.mkdir(cls.store_dir)
        cls.n = 0
        cls.kc = KubeCluster().__enter__()
        cls.api = cls.kc.client(user="admin")

    @classmethod
    def tearDownClass(cls):
        kc = getattr(cls, "kc", None)
        if kc is not None:
            kc.__exit__(None, None, None)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        type(self).n += 1
        self.ns = "%s%d" % (self.ns_prefix, self.n)
        self.kc.create_namespace(self.ns)
        self.kc.kubelet.clear_rules()
        self.redis = RedisServer().__enter__()
        self.d = None

    def tearDown(self):
        self.kc.kubelet.clear_rules()
        if self.d is not None:
            self.d.__exit__(*sys.exc_info())
        self.redis.__exit__(None, None, None)


class _PortInUse(Exception):
    pass


def pod_is_ready(pod):
    for c in pod.get("status", {}).get("conditions", []) or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


# ---------------------------------------------------------------------------
# The simulated kubelet
# ---------------------------------------------------------------------------

class SimKubelet(threading.Thread):
    """Plays the kubelet (and the scheduler) of one node, polling the API
    server every poll_interval seconds:

    - registers Node `node_name` (Ready, 127.0.0.1) and renews its Lease in
      kube-node-lease every lease_interval seconds;
    - binds every unscheduled pod to the node (POST pods/NAME/binding);
    - sets the status of the node's pods: Running and Ready with a podIP,
      container statuses (running) and init container statuses (completed);
    - runs a runner stand-in per Running pod (below);
    - finishes deletions: a pod with a deletionTimestamp is deleted with
      gracePeriodSeconds=0 (else it would stay Terminating for ever);
    - ephemeral containers added to a pod run for ephemeral_run_seconds, then
      terminate with exit code 0.

    Runner stand-ins (standins=True, the default): each pod gets its own
    loopback address as podIP (127.H.L.2, 127.H.L.3, ... from a block keyed
    on this kubelet's process, see _first_loopback; any 127/8 address
    is local on Linux), and once its containers would be running, the
    kubelet starts runner_standin.py on that address and the port of the
    runner container (the container named "runner", else the first one; its
    first containerPort, else 8081). Log: standin-NS-NAME.log beside
    kubelet.log. The runner container is Ready when:
      - the stand-in answers (GET /_standin/info from this very process), and
      - its readinessProbe passes: httpGet GETs http://podIP:port/path for
        real (port by number or by the container port's name; 2xx/3xx is a
        success; the stand-in answers 404 on "/", so a probe there never
        passes, and 200 on /ping); tcpSocket connects; exec is not run (a
        success). initialDelaySeconds, periodSeconds, successThreshold and
        failureThreshold count as on a node, except that until the first
        success the probe runs at every poll (not every periodSeconds).
        Probes carry "User-Agent: kube-probe/1.20"; the stand-in leaves them
        out of /_standin/last-request.
    A stand-in that exits by itself is a container restart (restartCount,
    lastState terminated, not Ready; started again after a second). It is
    stopped (SIGTERM, then SIGKILL) before the kubelet's final delete of its
    pod, when its pod vanishes, when a rule makes the container stop running
    (fail-image, crash), and when the kubelet stops; processes die with the
    kubelet thread anyway (PR_SET_PDEATHSIG). An address is handed out again
    only once its process is gone and its pod forgotten; one that another
    process holds (another test cluster) is skipped. A pod whose IP is set
    explicitly (devex.test/pod-ip, or the pod_ip argument) gets no stand-in:
    its readiness is status only, as with standins=False (podIP 10.244.x.y).
    kc.kubelet.standin("ns", "pod") tells the address, port and pid.

    The real agent instead of the stand-in: when the pod's runner container
    is the agent (key devex.test/agent "true", or an agent image named
    devexd-runner-*, or a command or args containing "runner"), the kubelet
    starts `$DEVEXD_BIN -L <lua dir> runner --dir <workspace> --host <podIP>
    --port <container port>` with only the container's env values (valueFrom
    is not resolved) plus PATH, HOME (the workspace), DEVEXD_LUA_DIR and the
    sanitizer options: nothing of the test's own environment (no storage
    keys). The workspace is agent-NS-NAME-UID8 beside the log (an emptyDir:
    kept across the container's restarts, a new pod starts empty). It
    "answers" once GET /ping gets any HTTP answer; the readiness probe is real
    as above. The pod's deletion SIGKILLs it (a node loss: no last
    checkpoint), other stops are SIGTERM as for the stand-in. standin()
    also tells "agent": True and "dir".

    Behaviour per pod, from its annotations or labels (values are strings):
      devex.test/fail-image: "true" (every container) or "a,b" (these
          containers, init containers included): waiting ErrImagePull, after
          a second ImagePullBackOff; the pod stays Pending, never Ready
      devex.test/never-ready: "true": Running, containers running (the
          stand-in too), not Ready
      devex.test/ready-after: seconds: Running, Ready only after that long
      devex.test/crash: "true": containers in CrashLoopBackOff (exit code 1)
      devex.test/init-exit-code: N: the first init container exits with N
          (non-zero: Init:CrashLoopBackOff, the pod stays Pending)
      devex.test/unschedulable: "true": never bound (PodScheduled False)
      devex.test/pod-ip: the podIP to report (and no stand-in runs)
      devex.test/termination-delay: seconds between the deletionTimestamp
          and the final delete
      devex.test/ephemeral-exit-code: N, or devex.test/ephemeral-exit-code.NAME
          for the ephemeral container NAME: its exit code
      devex.test/ephemeral-run-seconds (.NAME): how long it runs first

    workers (KubeCluster's kubelet_workers, default 1): how many pods a
    tick handles at once (binding, status, starting agents, probes).

    The test can set the same keys without touching the pod, with rules:
      kc.kubelet.add_rule({"devex.test/fail-image": "true"}, labels={"app": "x"})
      kc.kubelet.ephemeral_exit_code(3, container="sync", namespace="ns")
    A rule matches on namespace, pod name prefix and labels (all optional);
    its keys override the pod's own annotations.
    """

    def __init__(self, cluster, node_name=NODE_NAME, poll_interval=0.2, lease_interval=5.0, pod_ip=None,
                 ephemeral_run_seconds=0.3, log_path=None, standins=None, log_dir=None, workers=1):
        super().__init__(name="sim-kubelet", daemon=True)
        self.cluster = cluster
        self.api = cluster.client(user="admin")
        # workers > 1: a tick handles its pods on that many threads, each with
        # its own API client (a node runs its pods side by side; one after the
        # other, agents start and pass their probes about one a second, too
        # slow for hundreds of pods at once: tests/bench/bench_storm.py)
        self.workers = max(1, int(workers))
        self._pool = None
        self._tl = threading.local()
        self._pool_clients = []
        self.node_name = node_name
        self.poll_interval = poll_interval
        self.lease_interval = lease_interval
        self.lease_duration = 40
        self.pod_ip = pod_ip
        self.ephemeral_run_seconds = ephemeral_run_seconds
        self.log_path = log_path
        self._log = open(log_path, "a") if log_path else None
        self._log_lock = threading.Lock()
        self._stop_ev = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._lock = threading.Lock()
        self._rules = {}
        self._rule_ids = itertools.count(1)
        self._pods = {}  # uid -> state
        self._ips = itertools.count(2)
        if standins is None:
            standins = os.environ.get("DEVEXD_K8S_STANDINS", "1").strip().lower() not in ("0", "false", "no", "off")
        self.standins = bool(standins)
        self.log_dir = log_dir or (os.path.dirname(os.path.abspath(log_path)) if log_path else None) or \
            getattr(cluster, "tmp", None) or tempfile.gettempdir()
        self._standin_lock = threading.Lock()  # the address pool, _reaping, _closed
        self._loop_free = []       # loopback address numbers free again (process gone, pod forgotten)
        self._loop_next = _first_loopback()  # 127.H.L.2: where this kubelet's addresses start
        self._loop_held = set()    # numbers given to pods we still know
        self._reaping = []         # (Popen, address number or None) not gone yet after SIGKILL
        self._closed = False       # stopped: start no stand-in any more
        self.errors = []  # (time, message) of unexpected API errors
        self.node_uid = None
        self._last_lease = 0.0
        self._last_node_status = 0.0
        self.iterations = 0

    # ---- rules ----

    def add_rule(self, keys, namespace=None, name_prefix=None, labels=None):
        """Registers {annotation key: value} for matching pods; returns an id for remove_rule()."""
        rid = next(self._rule_ids)
        with self._lock:
            self._rules[rid] = (dict(keys), namespace, name_prefix, dict(labels or {}))
        return rid

    def remove_rule(self, rid):
        with self._lock:
            self._rules.pop(rid, None)

    def clear_rules(self):
        with self._lock:
            self._rules.clear()

    def fail_image(self, containers="true", **match):
        return self.add_rule({FAIL_IMAGE: containers}, **match)

    def never_ready(self, **match):
        return self.add_rule({NEVER_READY: "true"}, **match)

    def ephemeral_exit_code(self, code, container=None, **match):
        key = EPHEMERAL_EXIT_CODE + ("." + container if container else "")
        return self.add_rule({key: str(code)}, **match)

    def pause(self):
        """Stops everything (lease renewal, binding, status, deletions) until resume()."""
        self._running.clear()

    def resume(self):
        self._running.set()

    # ---- lifecycle ----

    def stop(self):
        self._stop_ev.set()
        self._running.set()
        if self.is_alive():
            self.join(10)
        self._stop_all_standins()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for c in self._pool_clients:
            c.close()
        self.api.close()
        if self._log:
            self._log.close()
            self._log = None

    def log(self, fmt, *args):
        if self._log:
            with self._log_lock, contextlib.suppress(ValueError, AttributeError):  # pool threads write too
                self._log.write("%s %s\n" % (now_micro(), fmt % args if args else fmt))
                self._log.flush()

    def _error(self, msg):
        self.log("ERROR %s", msg)
        self.errors.append((time.time(), msg))
        del self.errors[:-200]

    def run(self):
        try:
            while not self._stop_ev.is_set():
                self._running.wait()
                if self._stop_ev.is_set():
                    break
                try:
                    self.tick()
                except Exception:  # noqa: BLE001 - the thread must survive anything
                    self._error(traceback.format_exc())
                    self.api.close()
                self.iterations += 1
                self._stop_ev.wait(self.poll_interval)
        finally:
            self._stop_all_standins()

    def tick(self):
        now = time.monotonic()
        if now - self._last_lease >= self.lease_interval:
            self.renew_lease()
            self._last_lease = now
        if now - self._last_node_status >= 30:
            self.update_node_status()
            self._last_node_status = now
        pods = self.api.get("/api/v1/pods")["items"]
        seen = {pod["metadata"]["uid"] for pod in pods}
        if self.workers == 1:
            for pod in pods:
                self._handle_pod_once(pod)
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="sim-kubelet-pod",
                                                                   initializer=self._pool_thread_init)
            for f in [self._pool.submit(self._handle_pod_once, pod) for pod in pods]:
                exc = f.exception()
                if exc is not None:
                    self._error("".join(traceback.format_exception(exc)))
        for uid in list(self._pods):
            if uid not in seen:
                self._forget(self._pods.pop(uid))
        self._reap()

    def _handle_pod_once(self, pod):
        try:
            self.handle_pod(pod)
        except ApiError as e:
            if e.status not in (404, 409):  # gone meanwhile, or a race: next tick
                self._error(str(e))

    def _pool_thread_init(self):
        self._tl.api = self.cluster.client(user="admin")
        with self._lock:
            self._pool_clients.append(self._tl.api)

    def _pod_api(self):
        """The calling thread's API client: a pool thread's own, else the kubelet's."""
        return getattr(self._tl, "api", None) or self.api

    # ---- runner stand-ins ----

    def standin(self, namespace, name):
        """The runner stand-in of pod namespace/name: {"ip", "port", "pid"
        (None when no process runs), "ready", "restarts", "log"}, or None
        when the pod has none (unknown pod, explicit IP, standins=False)."""
        for st in list(self._pods.values()):
            sa = st.get("sa")
            if sa is not None and st.get("ns") == namespace and st.get("name") == name:
                p = sa["proc"]
                return {"ip": st["ip"], "port": sa["port"], "pid": p.pid if p is not None and p.poll() is None else None,
                        "ready": sa.get("ready", False), "restarts": sa["restarts"], "log": sa.get("log"),
                        "agent": bool(sa.get("agent")), "dir": sa.get("dir")}
        return None

    def _alloc_loopback(self, port, avoid=()):
        """A loopback address number (see _loopback) nobody else uses, on which
        port can be bound right now (another test cluster may hold some)."""
        with self._standin_lock:
            skipped = []
            try:
                for attempt in itertools.count():
                    if self._loop_free:
                        n = heapq.heappop(self._loop_free)
                    else:
                        n = self._loop_next
                        self._loop_next = _next_loopback(n)
                    if n in avoid or (attempt < 64 and not _port_bindable(_loopback(n), port)):
                        skipped.append(n)
                        continue
                    if attempt >= 64:
                        self._error("port %d cannot be bound on 64 loopback addresses (a listener on 0.0.0.0?)" % port)
                    self._loop_held.add(n)
                    return n
            finally:
                for n in skipped:
                    heapq.heappush(self._loop_free, n)

    def _release_loopback(self, n):
        with self._standin_lock:
            if n in self._loop_held:
                self._loop_held.discard(n)
                heapq.heappush(self._loop_free, n)

    def _start_standin(self, pod, st):
        """Starts the stand-in of st (returns False once the kubelet is stopped)."""
        sa = st["sa"]
        md = pod["metadata"]
        with self._standin_lock:
            if self._closed:
                return False
            if sa.get("agent"):
                cmd, env = self._agent_command(pod, st)
            else:
                sa["log"] = os.path.join(self.log_dir, "standin-%s-%s.log" % (md["namespace"], md["name"]))
                env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
                cmd = [sys.executable, STANDIN_SCRIPT, "--host", st["ip"], "--port", str(sa["port"])]
            with open(sa["log"], "ab") as log:
                sa["log_at"] = log.tell()  # this run's output starts here (_log_says)
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_set_pdeathsig)
        sa.update(proc=p, pid=p.pid, started_mono=time.monotonic(), answered=False, ready=False, succ=0, fails=0,
                  last_probe=0.0, probe_what=None)
        sa["started_at"] = st["start_time"] if sa["restarts"] == 0 and not sa.get("ever") else now_rfc3339()
        sa["ever"] = True
        self.log("stand-in %s/%s: pid %d on %s:%d", md["namespace"], md["name"], p.pid, st["ip"], sa["port"])
        return True

    def _agent_command(self, pod, st):
        """The real agent's command line and environment for pod (see the class
        docstring); sets st["sa"]'s log and dir."""
        import harness as h  # noqa: PLC0415 - DEVEXD_BIN and LUA_DIR, as the tests use them
        sa, md = st["sa"], pod["metadata"]
        c = pod["spec"]["containers"][_runner_index(pod["spec"])]
        tag = "%s-%s-%s" % (md["namespace"], md["name"], md["uid"][:8])
        sa["log"] = os.path.join(self.log_dir, "agent-%s.log" % tag)
        sa["dir"] = os.path.join(self.log_dir, "agent-%s" % tag)
        os.makedirs(sa["dir"], exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": sa["dir"], "DEVEXD_LUA_DIR": h.LUA_DIR}
        for k in ("ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS"):
            if k in os.environ:
                env[k] = os.environ[k]
        for e in c.get("env") or []:
            if "value" in e:  # valueFrom (secrets, the downward API) is not resolved here
                env[e["name"]] = str(e["value"])
        env["HOME"] = sa["dir"]  # the pod's HOME (security.home) is a path of the image, not of this host
        cmd = [os.environ.get("DEVEXD_BIN") or h.DEVEXD_BIN, "-L", h.LUA_DIR, "runner", "--dir", sa["dir"],
               "--host", st["ip"], "--port", str(sa["port"])]
        return cmd, env

    @staticmethod
    def _is_agent(pod, keys):
        """Whether the pod's runner container is the agent (see the class docstring)."""
        if _true(keys.get(AGENT)):
            return True
        c = pod["spec"]["containers"][_runner_index(pod["spec"])]
        image = (c.get("image") or "").rsplit("/", 1)[-1]
        return image.startswith("devexd-runner-") or "runner" in (c.get("command") or []) + (c.get("args") or [])

    def _terminate(self, p, kill=False):
        """SIGTERM, then SIGKILL (at once with kill); True once the process is gone."""
        if kill and p.poll() is None:
            with contextlib.suppress(OSError):
                p.kill()
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.terminate()
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    p.kill()
                try:
                    p.wait(2)
                except subprocess.TimeoutExpired:
                    return False
        return True

    def _stop_standin(self, st, why, kill=False):
        sa = st.get("sa")
        if sa is None or sa["proc"] is None:
            return
        p, sa["proc"] = sa["proc"], None
        sa.update(answered=False, ready=False)
        if not self._terminate(p, kill=kill and sa.get("agent")):
            sa["zombie"] = p
            with self._standin_lock:
                self._reaping.append([p, None])
        self.log("stand-in %s/%s (pid %d) stopped: %s", st.get("ns"), st.get("name"), p.pid, why)

    def _forget(self, st):
        """A pod gone from the API server: its stand-in ends, its address is free
        again once the process is gone."""
        self._stop_standin(st, "pod gone")
        n = st.pop("ip_n", None)
        if n is None:
            return
        z = (st.get("sa") or {}).get("zombie")
        if z is not None and z.poll() is None:
            with self._standin_lock:
                for entry in self._reaping:
                    if entry[0] is z:
                        entry[1] = n
        else:
            self._release_loopback(n)

    def _reap(self):
        with self._standin_lock:
            done = [e for e in self._reaping if e[0].poll() is not None]
            self._reaping = [e for e in self._reaping if e[0].poll() is None]
        for p, n in done:
            if n is not None:
                self._release_loopback(n)

    def _stop_all_standins(self):
        """Ends every stand-in (SIGTERM to all, then wait, SIGKILL the rest)."""
        with self._standin_lock:
            self._closed = True
            procs = [e[0] for e in self._reaping]
        for st in list(self._pods.values()):
            sa = st.get("sa")
            if sa is not None and sa["proc"] is not None:
                procs.append(sa["proc"])
                sa.update(proc=None, answered=False, ready=False)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.terminate()
        deadline = time.monotonic() + 3
        for p in procs:
            try:
                p.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(2)
        if procs:
            self.log("stopped %d stand-in(s)", len(procs))

    def _standin_container(self, pod, c, st, s):
        """Runs the stand-in of the runner container c (status s, running):
        starts or restarts it, fills s's state, restartCount and lastState,
        and returns its readiness."""
        sa = st["sa"]
        md = pod["metadata"]
        where = "%s/%s" % (md["namespace"], md["name"])
        now = time.monotonic()
        p = sa["proc"]
        if p is not None and p.poll() is not None:
            rc = p.returncode
            sa["proc"] = None
            in_use = rc == 98 or (sa.get("agent") and rc == 1 and _log_says(sa.get("log"), b"Address already in use", sa.get("log_at", 0)))
            if in_use and not sa.get("answered") and sa.get("moves", 0) < 5 and "ip_n" in st:
                # its address was taken after all (another test cluster): another address
                old, old_n = st["ip"], st["ip_n"]
                st["ip_n"] = self._alloc_loopback(sa["port"], avoid={old_n})
                st["ip"] = _loopback(st["ip_n"])
                self._release_loopback(old_n)
                sa["moves"] = sa.get("moves", 0) + 1
                self.log("stand-in %s: %s:%d in use, moving to %s", where, old, sa["port"], st["ip"])
            else:
                code = rc if rc >= 0 else 128 - rc
                sa["restarts"] += 1
                sa["last"] = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                             "startedAt": sa["started_at"], "finishedAt": now_rfc3339(),
                                             "containerID": s.get("containerID", "")}}
                sa["next_start"] = now + 1.0
                self.log("stand-in %s (pid %d) exited with %d: restart %d", where, p.pid, rc, sa["restarts"])
        s["restartCount"] = sa["restarts"]
        if sa["last"]:
            s["lastState"] = sa["last"]
        if sa["proc"] is None:
            if now < sa["next_start"] or not self._start_standin(pod, st):
                s["state"] = {"waiting": {"reason": "CrashLoopBackOff",
                                          "message": "back-off 1s restarting failed container=%s" % c["name"]}}
                s["started"] = False
                return False
        s["state"] = {"running": {"startedAt": sa["started_at"]}}
        if not sa["answered"] and sa.get("agent"):
            try:  # the agent: any HTTP answer to /ping (503 while it restores), so not someone else's listener
                with contextlib.closing(http.client.HTTPConnection(st["ip"], sa["port"], timeout=0.5)) as conn:
                    conn.request("GET", "/ping", headers={"User-Agent": PROBE_USER_AGENT})
                    conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                return False
            sa["answered"] = True
            sa["answered_mono"] = now
            self.log("agent %s answers on %s:%d", where, st["ip"], sa["port"])
        if not sa["answered"]:
            try:
                with contextlib.closing(http.client.HTTPConnection(st["ip"], sa["port"], timeout=0.5)) as conn:
                    conn.request("GET", "/_standin/info", headers={"User-Agent": PROBE_USER_AGENT})
                    r = conn.getresponse()
                    info = json.loads(r.read())
                if r.status != 200 or info.get("pid") != sa["pid"]:
                    return False
            except (OSError, ValueError, http.client.HTTPException):
                return False
            sa["answered"] = True
            sa["answered_mono"] = now
            self.log("stand-in %s answers on %s:%d", where, st["ip"], sa["port"])
        return self._readiness(c, st, now, where)

    def _readiness(self, c, st, now, where):
        sa = st["sa"]
        probe = c.get("readinessProbe")
        if not probe:
            return True
        if now - sa["started_mono"] < _num(probe.get("initialDelaySeconds"), 0):
            return False
        period = max(_num(probe.get("periodSeconds"), 10), 0.1)
        if sa["ready"] and now - sa["last_probe"] < period:
            return True
        ok, what = _probe(probe, c, st["ip"])
        sa["last_probe"] = now
        if what != sa["probe_what"]:
            self.log("readiness probe %s: %s%s", where, what, "" if ok else " (failure)")
            sa["probe_what"] = what
        if ok:
            sa["fails"] = 0
            sa["succ"] += 1
            if sa["succ"] >= _num(probe.get("successThreshold"), 1):
                sa["ready"] = True
        else:
            sa["succ"] = 0
            sa["fails"] += 1
            if sa["ready"] and sa["fails"] >= _num(probe.get("failureThreshold"), 3):
                sa["ready"] = False
        return sa["ready"]

    # ---- node and lease ----

    def node_status(self):
        ts = now_rfc3339()

        def cond(t, status, reason, msg):
            return {"type": t, "status": status, "reason": reason, "message": msg,
                    "lastHeartbeatTime": ts, "lastTransitionTime": self._node_since}
        res = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"}
        return {
            "capacity": res, "allocatable": res,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status (simulated)"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "devexd", "systemUUID": "devexd", "bootID": "devexd",
                         "kernelVersion": os.uname().release, "osImage": "devexd simulated node",
                         "containerRuntimeVersion": "containerd://1.4.0", "kubeletVersion": "v" + K8S_VERSION,
                         "kubeProxyVersion": "v" + K8S_VERSION, "operatingSystem": "linux", "architecture": "amd64"},
        }

    def register(self):
        """Creates the Node and its Lease (synchronously, before the thread starts)."""
        self._node_since = now_rfc3339()
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name,
                             "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64"}},
                "spec": {}, "status": self.node_status()}
        try:
            created = self.api.post("/api/v1/nodes", node)
        except ApiError as e:
            if e.status != 409:
                raise
            created = self.api.get("/api/v1/nodes/" + self.node_name)
        self.node_uid = created["metadata"]["uid"]
        self.update_node_status()
        self._last_node_status = time.monotonic()
        wait_for(self.renew_lease, "node lease (namespace kube-node-lease)", timeout=30, interval=0.2)
        self._last_lease = time.monotonic()
        self.log("registered node %s", self.node_name)

    def update_node_status(self):
        self.api.patch("/api/v1/nodes/%s/status" % self.node_name, {"status": self.node_status()})

    def renew_lease(self):
        path = api_path("coordination.k8s.io/v1", "leases", "kube-node-lease", self.node_name)
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": self.lease_duration,
                "renewTime": now_micro()}
        try:
            self.api.patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": self.node_name, "namespace": "kube-node-lease",
                                  "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                                       "uid": self.node_uid}]},
                     "spec": spec}
            self.api.post(api_path("coordination.k8s.io/v1", "leases", "kube-node-lease"), lease)
        return True

    # ---- pods ----

    def effective_keys(self, pod):
        """The pod's devex.test/* settings: labels, annotations, then matching rules."""
        md = pod["metadata"]
        labels = md.get("labels") or {}
        keys = {k: v for k, v in labels.items() if k.startswith(ANN)}
        keys.update({k: v for k, v in (md.get("annotations") or {}).items() if k.startswith(ANN)})
        with self._lock:
            rules = list(self._rules.values())
        for rkeys, ns, prefix, rlabels in rules:
            if ns is not None and md.get("namespace") != ns:
                continue
            if prefix is not None and not md["name"].startswith(prefix):
                continue
            if any(labels.get(k) != v for k, v in rlabels.items()):
                continue
            keys.update(rkeys)
        return keys

    def handle_pod(self, pod):
        md, spec = pod["metadata"], pod["spec"]
        ns, name, uid = md["namespace"], md["name"], md["uid"]
        node = spec.get("nodeName")
        if node and node != self.node_name:
            return
        keys = self.effective_keys(pod)
        st = self._pods.get(uid)
        if st is None:
            st = self._pods[uid] = {"seen": time.monotonic(), "eph": {}, "eph_fin": {}, "sent": None, "cid": {},
                                    "ns": ns, "name": name}
        path = api_path("v1", "pods", ns, name)
        api = self._pod_api()

        if md.get("deletionTimestamp"):
            st.setdefault("deleting_since", time.monotonic())
            if time.monotonic() - st["deleting_since"] < _num(keys.get(TERMINATION_DELAY), 0):
                return
            if not st.get("deleted"):
                self._stop_standin(st, "pod %s/%s deleted" % (ns, name), kill=True)
                self.log("delete %s/%s (grace 0)", ns, name)
                api.delete(path, grace_period=0, preconditions={"uid": uid}, missing_ok=True)
                st["deleted"] = True
            return

        if not node:
            if _true(keys.get(UNSCHEDULABLE)):
                if not st.get("unsched"):
                    api.patch(path + "/status", {"status": {"phase": "Pending", "conditions": [
                        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                         "message": "0/1 nodes are available: simulated (devex.test/unschedulable)",
                         "lastTransitionTime": now_rfc3339()}]}})
                    st["unsched"] = True
                return
            self.log("bind %s/%s -> %s", ns, name, self.node_name)
            api.post(path + "/binding", {"apiVersion": "v1", "kind": "Binding",
                                              "metadata": {"name": name, "namespace": ns},
                                              "target": {"apiVersion": "v1", "kind": "Node",
                                                         "name": self.node_name}})
            st["bound_at"] = now_rfc3339()
        status = self.desired_status(pod, keys, st)
        sig = json.dumps(status, sort_keys=True)
        if sig != st["sent"]:
            api.patch(path + "/status", {"status": status})
            if st["sent"] is None or json.loads(st["sent"]).get("phase") != status.get("phase") or \
                    _ready_of(st["sent"]) != _ready_of(sig):
                self.log("status %s/%s phase=%s ready=%s", ns, name, status.get("phase"), _ready_of(sig))
            st["sent"] = sig

    def _cid(self, st, key):
        if key not in st["cid"]:
            st["cid"][key] = "containerd://" + secrets.token_hex(32)
        return st["cid"][key]

    def desired_status(self, pod, keys, st):
        md, spec = pod["metadata"], pod["spec"]
        now = time.monotonic()
        if "start_time" not in st:
            st["start_time"] = now_rfc3339()
            st["started"] = now
        t0 = st["start_time"]
        runner_i = _runner_index(spec)
        if "ip" not in st:
            if keys.get(POD_IP):
                st["ip"] = keys[POD_IP]
            elif self.pod_ip:
                st["ip"] = self.pod_ip
            elif self.standins and runner_i is not None:
                port = _container_port(spec["containers"][runner_i])
                st["ip_n"] = self._alloc_loopback(port)
                st["ip"] = _loopback(st["ip_n"])
                st["sa"] = {"port": port, "proc": None, "pid": None, "restarts": 0, "last": None,
                            "next_start": 0.0, "started_at": None, "agent": self._is_agent(pod, keys)}
            else:
                n = next(self._ips)
                st["ip"] = "10.244.%d.%d" % (n // 250, n % 250 + 2)
        age = now - st["started"]

        fail = keys.get(FAIL_IMAGE)
        failing = set()
        if fail:
            every = _true(fail)
            names = set(x.strip() for x in fail.split(","))
            for c in (spec.get("initContainers") or []) + spec.get("containers", []):
                if every or c["name"] in names:
                    failing.add(c["name"])
        pull_reason = "ErrImagePull" if age < 1.0 else "ImagePullBackOff"

        def image_id(c):
            img = c.get("image", "")
            return "registry.invalid/%s@sha256:%s" % (img.split(":")[0], hashlib.sha256(img.encode()).hexdigest())

        def waiting_pull(c):
            return {"waiting": {"reason": pull_reason,
                                "message": 'Back-off pulling image "%s"' % c.get("image") if pull_reason ==
                                "ImagePullBackOff" else 'rpc error: code = Unknown desc = failed to pull and '
                                'unpack image "%s": simulated failure (devex.test/fail-image)' % c.get("image")}}

        # init containers, in order
        init_statuses = []
        initialized = True
        init_reason = None
        init_exit = keys.get(INIT_EXIT_CODE)
        for i, c in enumerate(spec.get("initContainers") or []):
            s = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0}
            if not initialized:
                s["state"] = {"waiting": {"reason": "PodInitializing"}}
            elif c["name"] in failing:
                s["state"] = waiting_pull(c)
                initialized, init_reason = False, "ContainersNotInitialized"
            elif i == 0 and init_exit is not None and int(init_exit) != 0:
                code = int(init_exit)
                s.update(imageID=image_id(c), containerID=self._cid(st, "init/" + c["name"]), restartCount=1)
                s["state"] = {"waiting": {"reason": "CrashLoopBackOff",
                                          "message": "back-off 10s restarting failed container=%s" % c["name"]}}
                s["lastState"] = {"terminated": {"exitCode": code, "reason": "Error", "startedAt": t0,
                                                 "finishedAt": t0, "containerID": s["containerID"]}}
                initialized, init_reason = False, "ContainersNotInitialized"
            else:
                s.update(imageID=image_id(c), containerID=self._cid(st, "init/" + c["name"]), ready=True)
                s["state"] = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": t0,
                                             "finishedAt": t0, "containerID": s["containerID"]}}
            init_statuses.append(s)

        never_ready = _true(keys.get(NEVER_READY))
        ready_after = _num(keys.get(READY_AFTER), 0)
        crash = _true(keys.get(CRASH))
        statuses = []
        all_ready = initialized
        any_failing = False
        runner_running = False
        for i, c in enumerate(spec.get("containers", [])):
            s = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
                 "started": False}
            if not initialized:
                s["state"] = {"waiting": {"reason": "PodInitializing"}}
                all_ready = False
            elif c["name"] in failing:
                s["state"] = waiting_pull(c)
                all_ready = False
                any_failing = True
            elif crash:
                cid = self._cid(st, c["name"])
                s.update(imageID=image_id(c), containerID=cid, restartCount=1)
                s["state"] = {"waiting": {"reason": "CrashLoopBackOff",
                                          "message": "back-off 10s restarting failed container=%s" % c["name"]}}
                s["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": t0,
                                                 "finishedAt": t0, "containerID": cid}}
                all_ready = False
            else:
                ready = not never_ready and age >= ready_after
                s.update(imageID=image_id(c), containerID=self._cid(st, c["name"]), ready=ready, started=True)
                s["state"] = {"running": {"startedAt": t0}}
                if i == runner_i and st.get("sa") is not None:
                    runner_running = True
                    ready = self._standin_container(pod, c, st, s) and ready
                    s["ready"] = ready
                all_ready = all_ready and ready
            statuses.append(s)
        if not runner_running and st.get("sa") is not None and st["sa"]["proc"] is not None:
            self._stop_standin(st, "container %s/%s not running" % (md["namespace"], md["name"]))

        eph_statuses = []
        for c in spec.get("ephemeralContainers") or []:
            cname = c["name"]
            started = st["eph"].setdefault(cname, (now, now_rfc3339()))
            run_for = _num(keys.get(EPHEMERAL_RUN_SECONDS + "." + cname,
                                    keys.get(EPHEMERAL_RUN_SECONDS)), self.ephemeral_run_seconds)
            code = int(keys.get(EPHEMERAL_EXIT_CODE + "." + cname, keys.get(EPHEMERAL_EXIT_CODE, "0")))
            cid = self._cid(st, "eph/" + cname)
            s = {"name": cname, "image": c.get("image", ""), "imageID": image_id(c), "containerID": cid,
                 "ready": False, "restartCount": 0}
            if cname in failing:
                s.update(imageID="")
                del s["containerID"]
                s["state"] = waiting_pull(c)
            elif now - started[0] < run_for:
                s["state"] = {"running": {"startedAt": started[1]}}
            else:
                fin = st["eph_fin"].setdefault(cname, now_rfc3339())
                s["state"] = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                             "startedAt": started[1], "finishedAt": fin, "containerID": cid}}
            eph_statuses.append(s)

        bound = st.get("bound_at") or t0
        cond_ready = "True" if all_ready else "False"

        def cond(t, status, reason=None):
            c = {"type": t, "status": status, "lastTransitionTime": t0}
            if reason and status != "True":
                c["reason"] = reason
            return c
        conditions = [
            cond("Initialized", "True" if initialized else "False", init_reason),
            cond("Ready", cond_ready, "ContainersNotReady"),
            cond("ContainersReady", cond_ready, "ContainersNotReady"),
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": bound},
        ]
        phase = "Running" if initialized and not any_failing else "Pending"
        status = {"phase": phase, "conditions": conditions, "hostIP": "127.0.0.1", "podIP": st["ip"],
                  "podIPs": [{"ip": st["ip"]}], "startTime": t0, "containerStatuses": statuses}
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        if eph_statuses:
            status["ephemeralContainerStatuses"] = eph_statuses
        return status


def _log_says(path, what, since=0):
    """Whether the log at path holds what (bytes) in its last 2 KB written after offset since."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(since, f.tell() - 2048))
            return what in f.read()
    except (OSError, TypeError):
        return False


def _true(v):
    return str(v).strip().lower() in ("true", "1", "yes", "on") if v is not None else False


def _num(v, default):
    try:
        return float(v) if v is not None else default
    except (TypeError, ValueError):
        return default


def _ready_of(sig):
    try:
        for c in json.loads(sig)["conditions"]:
            if c["type"] == "Ready":
                return c["status"]
    except (TypeError, ValueError, KeyError):
        pass
    return None


def _runner_index(spec):
    """Index of the runner container: the one named "runner", else the first."""
    cs = spec.get("containers") or []
    for i, c in enumerate(cs):
        if c.get("name") == "runner":
            return i
    return 0 if cs else None


def _container_port(c):
    """The container's first containerPort, else the runner image's 8081."""
    for p in c.get("ports") or []:
        if p.get("containerPort"):
            return int(p["containerPort"])
    return STANDIN_DEFAULT_PORT


_LOOP_BLOCKS = itertools.count()


def _first_loopback():
    """The first address number of a new kubelet: 127.H.L.2, the start of a
    block of 253 loopback addresses (to .254; a kubelet with more pods goes on
    into the next block). Tests run side by side (ctest -j), each
    with its own kubelet: had they all started at 127.0.0.2, a stand-in
    down for its one-second restart back-off could find its address taken by
    another process's new pod and move (podIP changed). The block is keyed on
    the process id and on the kubelets this process made before; a block
    another process happens to share is still handled by _port_bindable and
    the move in _standin_container, only no longer the common case."""
    block = (os.getpid() * 7 + next(_LOOP_BLOCKS) * 101) % 65279 + 1  # 1..65279: 127.0.1 .. 127.254.255
    return block << 8 | 2


def _loopback(n):
    """Loopback address number n: 2 -> 127.0.0.2, 256 + 1 -> 127.0.1.1."""
    return "127.%d.%d.%d" % ((n >> 16) & 255, (n >> 8) & 255, n & 255)


def _next_loopback(n):
    n += 1
    while n & 255 in (0, 255):
        n += 1
    if n >= 1 << 24:
        raise AssertionError("out of loopback addresses")
    return n


def _port_bindable(host, port):
    """Whether a server could listen on host:port now (as the stand-in binds: SO_REUSEADDR)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _probe_port(port, c):
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if isinstance(port, str):
        if port.isdigit():
            return int(port)
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    return None


def _probe(probe, c, ip):
    """Runs a readiness probe once against the pod at ip; returns (ok, what happened)."""
    timeout = min(max(_num(probe.get("timeoutSeconds"), 1), 0.2), 2)
    for kind in ("httpGet", "tcpSocket"):
        if kind in probe:
            action = probe[kind] or {}
            port = _probe_port(action.get("port"), c)
            host = action.get("host") or ip
            if port is None:
                return False, "%s port %r: no such container port" % (kind, action.get("port"))
            break
    else:
        return True, "%s probe not run (simulated success)" % (",".join(sorted(probe)) or "empty")
    if kind == "tcpSocket":
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            return False, "tcp %s:%d: %s" % (host, port, e)
        return True, "tcp %s:%d: connected" % (host, port)
    path = action.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    url = "http://%s:%d%s" % (host, port, path)
    if (action.get("scheme") or "HTTP").upper() != "HTTP":
        return False, "%s: scheme %s (the stand-in speaks HTTP only)" % (url, action.get("scheme"))
    headers = {"User-Agent": PROBE_USER_AGENT, "Accept": "*/*", "Connection": "close"}
    for h in action.get("httpHeaders") or []:
        headers[h.get("name", "")] = h.get("value", "")
    try:
        with contextlib.closing(http.client.HTTPConnection(host, port, timeout=timeout)) as conn:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
    except (OSError, http.client.HTTPException) as e:
        return False, "GET %s: %s" % (url, e)
    return 200 <= r.status < 400, "GET %s: %d" % (url, r.status)
