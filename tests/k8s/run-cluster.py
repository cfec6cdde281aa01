#!/usr/bin/env python3
"""Starts the test Kubernetes cluster (tests/integration/k8s_harness.py) and
keeps it up until Ctrl-C, for poking at it by hand or running devexd against
it. Prints the server, the CA, the tokens and an admin kubeconfig path.

    python3 tests/k8s/run-cluster.py [--pod-ip 127.0.0.1] [--json]

With --json, one line of JSON with the same facts goes to stdout once the
cluster is ready (for scripts); everything else goes to stderr.
"""

import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import k8s_harness  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pod-ip", help="report this podIP for every pod (default: 10.244.x.y)")
    ap.add_argument("--no-kubelet", action="store_true", help="do not run the simulated kubelet")
    ap.add_argument("--json", action="store_true", help="print the facts as one JSON line on stdout")
    args = ap.parse_args()
    def on_term(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough
        raise KeyboardInterrupt  # caught below: a clean stop, like Ctrl-C
    signal.signal(signal.SIGTERM, on_term)
    with k8s_harness.KubeCluster(kubelet=not args.no_kubelet, pod_ip=args.pod_ip) as kc:
        facts = {"server": kc.server, "ca_file": kc.ca_file, "admin_token": kc.admin_token,
                 "limited_token": kc.limited_token, "kubeconfig": kc.kubeconfig, "tmp": kc.tmp,
                 "start_seconds": round(kc.start_seconds, 1)}
        if args.json:
            print(json.dumps(facts), flush=True)
        for k, v in facts.items():
            sys.stderr.write("%-14s %s\n" % (k, v))
        sys.stderr.write("logs in %s; Ctrl-C stops the cluster\n" % kc.tmp)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
