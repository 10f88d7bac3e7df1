#!/usr/bin/env python3
"""The operator at scale: N TaskStreams applied in one go on a real API server.

    kubectl apply (N TaskStreams) ──> API server <──watch/apply/status── operator (chart's RBAC,
         │                               │                                 token of its SA)
         └── t0: apply returned          └──watch──> this script: converged when every
                                                     TaskStream has its Deployment and a status
                                                     at its generation (Ready/Progressing set)

Sets up what the chart would (CRD, ServiceAccount, the chart's (Cluster)Role(Binding)s
rendered with helm), runs the operator binary outside the cluster with a kubeconfig holding
that ServiceAccount's token, applies the TaskStreams (NAMESPACES x PER_NAMESPACE) in one
`kubectl apply --server-side -f`, and prints, as one JSON object:

  converged_after_apply_s  time from `kubectl apply` returning to the last TaskStream converged
  rss_peak_mb, rss_mb      operator VmHWM and VmRSS (/proc/<pid>/status) at the end
  requests                 the operator's API requests until convergence, by verb/resource
  requests_per_taskstream  the same divided by N
  steady                   requests over STEADY seconds after convergence (writes must be 0;
                           the leader Lease renewal is counted apart)

Usage (python3 stdlib only; kubectl >= the server's minor - 1; helm from .tools/bin):
  KUBECONFIG=... bench/operator-scale.py --operator target/release/taskstream-operator
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_NS = "taskstream-system"
RELEASE = "taskstream"
LEASE = "taskstream-operator"
READ_VERBS = {"get", "list", "watch"}


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--operator", required=True, help="path of the taskstream-operator binary")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="admin kubeconfig (default: $KUBECONFIG)")
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--helm", default=os.path.join(ROOT, ".tools/bin/helm"))
    p.add_argument("--namespaces", type=int, default=10)
    p.add_argument("--per-namespace", type=int, default=100)
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for convergence")
    p.add_argument("--steady", type=float, default=60, help="steady-state window, seconds")
    p.add_argument("--prefix", default="scale", help="namespace prefix (<prefix>-0..)")
    p.add_argument("--keep", action="store_true", help="leave the namespaces in place")
    p.add_argument("--service-cidr", default="10.100.0.0/20",
                   help="extra Service range (ServiceCIDR) for N Services; '' for none")
    p.add_argument("--client-side", action="store_true",
                   help="client-side `kubectl apply` (a GET and a POST per object: slower)")
    p.add_argument("--log", help="operator log file (default: a temporary file)")
    args = p.parse_args()
    if not args.kubeconfig:
        sys.exit("set KUBECONFIG or pass --kubeconfig")
    bench = Bench(args)
    try:
        print(json.dumps(bench.run(), indent=2))
    finally:
        bench.close()
    return 0


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = tempfile.mkdtemp(prefix="operator-scale-")
        self.env = dict(os.environ, KUBECONFIG=args.kubeconfig)
        self.operator = None
        self.watchers = []
        self.namespaces = [f"{args.prefix}-{i}" for i in range(args.namespaces)]

    def kubectl(self, *argv, input=None, check=True):
        r = subprocess.run([self.a.kubectl, *argv], env=self.env, input=input,
                           capture_output=True, text=True)
        if check and r.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    # -- set-up: CRD, chart RBAC, token ----------------------------------------------------

    def setup(self):
        if self.a.service_cidr:
            # A cluster's Service range is usually a /12 or so; a small control plane's /24
            # runs out at 254 Services and the rest fail (500). A ServiceCIDR widens it.
            self.kubectl("apply", "-f", "-", input=json.dumps({
                "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                "metadata": {"name": "taskstream-bench"},
                "spec": {"cidrs": [self.a.service_cidr]},
            }))
            self.kubectl("wait", "--for=condition=Ready", "--timeout=60s",
                         "servicecidr/taskstream-bench")
        self.kubectl("apply", "--server-side", "-f",
                     os.path.join(ROOT, "crds/taskstream.dev_taskstreams.yaml"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     "crd/taskstreams.taskstream.dev")
        self.kubectl("create", "namespace", SYSTEM_NS, check=False)
        rendered = subprocess.run(
            [self.a.helm, "template", RELEASE, os.path.join(ROOT, "charts/taskstream"),
             "--namespace", SYSTEM_NS, "--set", "webhook.enabled=false",
             "--set", f"leaderElection.leaseName={LEASE}",
             "--show-only", "templates/serviceaccount.yaml",
             "--show-only", "templates/rbac.yaml"],
            capture_output=True, text=True, check=True).stdout
        applied = self.kubectl("apply", "-n", SYSTEM_NS, "-f", "-", "-o", "name", input=rendered)
        sa = next(line.split("/", 1)[1] for line in applied.split()
                  if line.startswith("serviceaccount/"))
        token = self.kubectl("create", "token", sa, "-n", SYSTEM_NS, "--duration=2h").strip()
        view = json.loads(self.kubectl("config", "view", "--raw", "--minify", "-o", "json"))
        cluster = view["clusters"][0]["cluster"]
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "operator",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": "operator",
                          "context": {"cluster": "c", "user": sa, "namespace": SYSTEM_NS}}],
        }
        path = os.path.join(self.tmp, "operator.kubeconfig")
        with open(path, "w") as f:
            json.dump(kubeconfig, f)
        os.chmod(path, 0o600)
        self.operator_kubeconfig = path
        for ns in self.namespaces:
            self.kubectl("create", "namespace", ns, check=False)

    def start_operator(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.admin = f"http://127.0.0.1:{port}"
        log = self.a.log or os.path.join(self.tmp, "operator.log")
        self.log_path = log
        env = dict(os.environ, KUBECONFIG=self.operator_kubeconfig,
                   RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.operator = subprocess.Popen(
            [self.a.operator, "run", f"--admin-listen=127.0.0.1:{port}",
             "--webhook-listen=off", "--leader-election=true", f"--lease-name={LEASE}",
             f"--lease-namespace={SYSTEM_NS}", "--log-format=json"],
            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.operator.poll() is not None:
                raise SystemExit(f"operator exited {self.operator.returncode}; log: {log}")
            try:
                if metric(self.scrape(), "taskstream_operator_leader") == 1:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"operator not leader within 60 s; log: {log}")

    def scrape(self) -> str:
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as r:
            return r.read().decode()

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> dict:
        n = self.a.namespaces * self.a.per_namespace
        load_before = os.getloadavg()
        self.setup()
        self.start_operator()
        watch = Convergence(self, n)
        watch.start()
        text = self.scrape()
        before = requests(text)
        reconciles_before = metric(text, "taskstream_operator_reconciles_total") or 0

        manifest = os.path.join(self.tmp, "taskstreams.yaml")
        with open(manifest, "w") as f:
            f.write(taskstreams(self.namespaces, self.a.per_namespace))
        t_start = time.monotonic()
        side = [] if self.a.client_side else ["--server-side"]
        self.kubectl("apply", *side, "-f", manifest)
        t_applied = time.monotonic()

        done = watch.done.wait(self.a.timeout)
        t_done = watch.converged_at if done else None
        text = self.scrape()
        at_convergence = requests(text)
        reconciles_converged = metric(text, "taskstream_operator_reconciles_total") or 0
        rss_converged = rss(self.operator.pid)

        time.sleep(2)  # let the last in-flight reconciles finish before the window opens
        steady_from = requests(self.scrape())
        reconciles_from = metric(self.scrape(), "taskstream_operator_reconciles_total")
        time.sleep(self.a.steady)
        text = self.scrape()
        steady = diff(requests(text), steady_from)
        reconciles = metric(text, "taskstream_operator_reconciles_total")
        mem = rss(self.operator.pid)

        used = diff(at_convergence, before)
        total = sum(used.values())
        writes = {k: v for k, v in steady.items()
                  if k.split(" ")[0] not in READ_VERBS and "leases" not in k}
        return {
            "taskstreams": n,
            "converged": bool(done),
            "converged_count": watch.count(),
            "apply_s": round(t_applied - t_start, 2),
            "converged_after_apply_s": round(t_done - t_applied, 2) if done else None,
            "rss_peak_mb": round(mem["VmHWM"] / 1024, 1),
            "rss_mb": round(mem["VmRSS"] / 1024, 1),
            "rss_at_convergence_mb": round(rss_converged["VmRSS"] / 1024, 1),
            "requests": dict(sorted(used.items())),
            "requests_total": total,
            "requests_per_taskstream": round(total / n, 2),
            "reconciles_until_convergence": reconciles_converged - reconciles_before,
            "steady": {
                "seconds": self.a.steady,
                "requests": dict(sorted(steady.items())),
                "writes": sum(writes.values()),
                "reconciles": reconciles - reconciles_from,
            },
            "reconciles_total": reconciles,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "operator_log": self.log_path,
        }

    def close(self):
        for w in self.watchers:
            w.terminate()
            w.wait()
        if self.operator and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
        if not self.a.keep:
            self.kubectl("delete", "namespace", *self.namespaces, "--wait=true",
                         "--timeout=300s", check=False)


class Convergence:
    """Watches TaskStreams and the operator's Deployments (kubectl --watch, one JSON object per
    event) and notes when the last TaskStream converged."""

    def __init__(self, bench: Bench, n: int):
        self.bench, self.n = bench, n
        self.lock = threading.Lock()
        self.status_ok = set()
        self.deployments = set()
        self.done = threading.Event()
        self.converged_at = None

    def start(self):
        sel = "app.kubernetes.io/managed-by=taskstream-operator"
        for argv, handle in [
            (["get", "taskstreams.taskstream.dev", "-A"], self.on_taskstream),
            (["get", "deployments", "-A", "-l", sel], self.on_deployment),
        ]:
            proc = subprocess.Popen(
                [self.bench.a.kubectl, *argv, "--watch", "--output-watch-events", "-o", "json"],
                env=self.bench.env, stdout=subprocess.PIPE, text=True)
            self.bench.watchers.append(proc)
            threading.Thread(target=self.read, args=(proc, handle), daemon=True).start()

    def read(self, proc, handle):
        decoder, buf = json.JSONDecoder(), ""
        for line in proc.stdout:
            buf += line
            while True:
                buf = buf.lstrip()
                try:
                    event, end = decoder.raw_decode(buf)
                except ValueError:
                    break
                buf = buf[end:]
                if event.get("type") in ("ADDED", "MODIFIED"):
                    handle(event["object"])

    @staticmethod
    def key(obj):
        return obj["metadata"]["namespace"], obj["metadata"]["name"]

    def on_taskstream(self, ts):
        if not ts["metadata"]["namespace"].startswith(self.bench.a.prefix + "-"):
            return
        status = ts.get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions", [])}
        ok = (status.get("observedGeneration") == ts["metadata"].get("generation")
              and "Ready" in conds and "Progressing" in conds and "Degraded" in conds)
        with self.lock:
            (self.status_ok.add if ok else self.status_ok.discard)(self.key(ts))
            self.check()

    def on_deployment(self, d):
        with self.lock:
            self.deployments.add(self.key(d))
            self.check()

    def check(self):
        if not self.done.is_set() and len(self.status_ok & self.deployments) >= self.n:
            self.converged_at = time.monotonic()
            self.done.set()

    def count(self):
        with self.lock:
            return len(self.status_ok & self.deployments)


def taskstreams(namespaces, per_namespace) -> str:
    docs = []
    for ns in namespaces:
        for i in range(per_namespace):
            docs.append(f"""apiVersion: taskstream.dev/v1alpha1
kind: TaskStream
metadata:
  name: app-{i}
  namespace: {ns}
spec:
  app:
    image: registry.example/app:1.0
    port: 8000
  redis:
    url: redis://redis.{ns}.svc:6379/0
  auth:
    mode: none
""")
    return "---\n".join(docs)


LINE = re.compile(r'^taskstream_operator_api_requests_total\{(.*)\} (\d+(?:\.\d+)?)$')


def requests(text: str) -> dict:
    """`verb resource code` -> count, from the operator's /metrics."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = f"{labels['verb']} {labels['resource']} {labels['code']}"
            out[key] = out.get(key, 0) + int(float(m.group(2)))
    return out


def diff(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def metric(text: str, name: str):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def rss(pid) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


if __name__ == "__main__":
    sys.exit(main())
