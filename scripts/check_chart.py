#!/usr/bin/env python3
"""Checks of the Helm chart, the examples and the CRD copy; run by scripts/check-chart.sh.

    examples/*.yaml ──> CRD openAPIV3Schema (strict: unknown fields refused)
                   └──> taskstream-operator render -f ──> Kubernetes schemas (1.29, newest)
    charts/taskstream ──> helm lint --strict, helm template (default + ci/*-values.yaml)
                      ──> Kubernetes schemas (1.29, newest), strict
                      ──> CRD identical to crds/, RBAC rules == operator/rbac.yaml
    bad values ──> helm template must refuse them

Every failure is collected and printed; the exit status is 1 if there is any.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

import check_observability as observability

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "taskstream"
CRD_FILE = ROOT / "crds" / "taskstream.dev_taskstreams.yaml"
CHART_CRD = CHART / "files" / "crds" / "taskstream.dev_taskstreams.yaml"
RBAC_TABLE = ROOT / "operator" / "rbac.yaml"
GATEWAY_CRDS = ROOT / "tests" / "gateway-api" / "standard-crds-v1.5.1.yaml"
HELM = Path(os.environ.get("HELM", ROOT / ".tools" / "bin" / "helm"))
# Read when the examples are rendered, so the self-test can import this module without it.
OPERATOR = Path(os.environ.get("TASKSTREAM_OPERATOR", ROOT / "target" / "debug" / "taskstream-operator"))
RELEASE, RELEASE_NS = "ts", "taskstream-system"
OLDEST = "1.29.0"
NEWEST = kv_utils.latest_version()
# Kinds with no schema in kubernetes-validate (prometheus-operator CRDs): checked by hand below.
MONITORS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
NO_K8S_SCHEMA = MONITORS | {
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"  FAIL {msg}")


def run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if check and p.returncode != 0:
        fail(f"{' '.join(map(str, args))}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def k8s_validate(doc: dict, where: str) -> None:
    """Strict validation against the Kubernetes schemas of the oldest and newest version."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in NO_K8S_SCHEMA:
        return
    for version in (OLDEST, NEWEST):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{where}: {key[1]} {doc['metadata'].get('name')}: k8s {version}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{where}: {key[0]} {key[1]}: no schema in Kubernetes {version}")


# --- the CRD: one source -------------------------------------------------------------------


# Keywords whose subschemas only add value validation in a structural schema: the API server
# prunes (and strict field validation refuses) by the structural part alone, so no field
# restriction is added inside them (it would refuse fields the structural part declares).
VALUE_ONLY = ("allOf", "anyOf", "oneOf", "not")
# Fields an `x-kubernetes-embedded-resource` object always has, declared or not.
# Their metadata is checked by the API server as ObjectMeta, not by the CRD schema.
EMBEDDED = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
}


def strict_openapi(schema: dict) -> dict:
    """The CRD's structural schema as JSON Schema that refuses unknown fields wherever the API
    server's strict field validation does (`kubectl apply --validate=strict`,
    `fieldValidation=Strict`): the API server prunes, and strict validation reports, every field
    of an object that its schema does not declare, unless the object (not its parents) has
    `x-kubernetes-preserve-unknown-fields: true` or is a map (`additionalProperties`). An
    object with neither properties nor `additionalProperties` keeps no field at all; one with
    `x-kubernetes-embedded-resource` keeps apiVersion, kind and metadata. `nullable` only adds
    `null` to what a node accepts: a nullable object is as strict as any other."""
    s = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, list):
            for v in node:
                walk(v)
            return
        if not isinstance(node, dict):
            return
        # Decide on the object rule from the node's own type, before `nullable` rewrites it.
        kind = node.get("type")
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
            kind = None
        if kind == "object" and node.get("x-kubernetes-embedded-resource"):
            props = node.setdefault("properties", {})
            for name, sub in EMBEDDED.items():
                props.setdefault(name, copy.deepcopy(sub))
        if (
            kind == "object"
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        if node.pop("nullable", False):
            if "type" in node:
                node["type"] = [node["type"], "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
        for key, v in node.items():
            if key in VALUE_ONLY:
                continue
            if key in ("properties", "patternProperties", "definitions"):
                for sub in v.values():
                    walk(sub)
            elif key in ("items", "additionalProperties"):
                walk(v)

    walk(s)
    # apiVersion, kind and metadata are checked by the API server, not by the CRD schema.
    s["properties"]["metadata"] = {"type": "object", "required": ["name"]}
    s["properties"]["apiVersion"] = {"type": "string"}
    s["properties"]["kind"] = {"type": "string"}
    return s


def check_crd_copy() -> dict:
    print("crd: the chart's CRD is crds/ itself")
    source = CRD_FILE.read_bytes()
    if not CHART_CRD.exists():
        fail(f"{CHART_CRD.relative_to(ROOT)} is missing")
    elif CHART_CRD.read_bytes() != source:
        fail(f"{CHART_CRD.relative_to(ROOT)} differs from crds/{CRD_FILE.name}: it must be a symlink to it")
    # `helm package` resolves the symlink: the packaged file must be the same bytes.
    with tempfile.TemporaryDirectory() as tmp:
        if run([HELM, "package", CHART, "-d", tmp]).returncode == 0:
            (tgz,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tgz) as tar:
                member = tar.extractfile(f"taskstream/files/crds/{CRD_FILE.name}")
                if member is None or member.read() != source:
                    fail("the packaged chart's CRD differs from crds/")
    crd = yaml.safe_load(source)
    # The CRD the chart renders is the same object, plus the chart's labels and keep annotation.
    rendered = [d for d in template([]) if d.get("kind") == "CustomResourceDefinition"]
    if len(rendered) != 1:
        fail(f"default values render {len(rendered)} CRDs, want 1")
    else:
        got = copy.deepcopy(rendered[0])
        annotations = got["metadata"].pop("annotations", {})
        got["metadata"].pop("labels", None)
        if got != crd:
            fail("the rendered CRD differs from crds/ (beyond labels and annotations)")
        if annotations.get("helm.sh/resource-policy") != "keep":
            fail("the rendered CRD lacks helm.sh/resource-policy: keep")
    if any(d.get("kind") == "CustomResourceDefinition" for d in template(["--set", "crds.install=false"])):
        fail("crds.install=false still renders the CRD")
    return crd


# --- examples ------------------------------------------------------------------------------


def gateway_validate(doc: dict, where: str) -> None:
    """Gateway API objects against their CRDs (the copy the operator e2e test installs)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    schemas = {}
    for crd in docs(GATEWAY_CRDS.read_text()):
        for v in crd["spec"]["versions"]:
            schemas[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = v
    version = schemas.get(key)
    if version is None:
        fail(f"{where}: {key[0]} {key[1]}: not in {GATEWAY_CRDS.relative_to(ROOT)}")
        return
    validator = jsonschema.Draft7Validator(strict_openapi(version["schema"]["openAPIV3Schema"]))
    for e in validator.iter_errors(doc):
        fail(f"{where}: {key[1]}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}")


def check_examples(crd: dict) -> None:
    version = crd["spec"]["versions"][0]
    schema = strict_openapi(version["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft7Validator(schema)
    api_version = f"{crd['spec']['group']}/{version['name']}"
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    if not examples:
        fail("no examples/*.yaml")
    for path in examples:
        rel = path.relative_to(ROOT)
        print(f"example: {rel}")
        objects = docs(path.read_text())
        taskstreams = [d for d in objects if d.get("kind") == "TaskStream"]
        if not taskstreams:
            fail(f"{rel}: no TaskStream")
        for d in objects:
            if d.get("kind") != "TaskStream":
                k8s_validate(d, str(rel))
                continue
            if d.get("apiVersion") != api_version:
                fail(f"{rel}: apiVersion {d.get('apiVersion')}, want {api_version}")
            for e in validator.iter_errors(d):
                fail(f"{rel}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}")
        p = run([OPERATOR, "render", "-f", path, "--namespace", "examples"])
        if p.returncode == 0:
            for child in docs(p.stdout):
                if child.get("apiVersion", "").startswith("gateway.networking.k8s.io/"):
                    gateway_validate(child, f"render {rel}")
                    continue
                k8s_validate(child, f"render {rel}")
                if child.get("kind") == "Service":
                    ports = [port["port"] for port in child["spec"]["ports"]]
                    if ports != [80]:
                        fail(f"render {rel}: Service ports {ports}: the admin port must stay in the pod")


# --- the chart -----------------------------------------------------------------------------


def template(args: list[str], namespace: str = RELEASE_NS) -> list[dict]:
    p = run([HELM, "template", RELEASE, CHART, "--namespace", namespace, *args])
    return docs(p.stdout) if p.returncode == 0 else []


def variations() -> list[tuple[str, list[str]]]:
    out = [("default", [])]
    for f in sorted((CHART / "ci").glob("*-values.yaml")):
        out.append((f.name, ["-f", str(f)]))
    return out


def rbac_table() -> dict[str, set[tuple[str, str, str]]]:
    table: dict[str, set[tuple[str, str, str]]] = {"watched": set(), "lease": set(), "webhook": set(), "cluster": set()}
    for r in yaml.safe_load(RBAC_TABLE.read_text())["rules"]:
        for verb in r["verbs"]:
            table[r["scope"]].add((r["group"], r["resource"], verb))
    return table


def expand(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def check_rbac(name: str, objects: list[dict], values: dict) -> None:
    """The rendered roles grant exactly the table in operator/rbac.yaml, in the right places."""
    table = rbac_table()
    roles = {(d["kind"], d["metadata"]["name"]): d for d in objects if d["kind"] in ("ClusterRole", "Role")}
    fullname = f"{RELEASE}-taskstream-operator"
    scope = values.get("scope", "cluster")
    watched_ns = values.get("watchNamespace") or RELEASE_NS
    kind = "ClusterRole" if scope == "cluster" else "Role"
    main = roles.get((kind, fullname))
    if main is None:
        fail(f"{name}: no {kind} {fullname}")
    else:
        if kind == "Role" and main["metadata"]["namespace"] != watched_ns:
            fail(f"{name}: Role in {main['metadata']['namespace']}, want the watched {watched_ns}")
        got = expand(main["rules"])
        if got != table["watched"]:
            fail(
                f"{name}: {kind} rules differ from operator/rbac.yaml: "
                f"extra {sorted(got - table['watched'])}, missing {sorted(table['watched'] - got)}"
            )
        if any(rule.get("resourceNames") for rule in main["rules"]):
            fail(f"{name}: {kind} has resourceNames: the operator reads objects of any name")
    lease = roles.get(("Role", f"{fullname}-leader-election"))
    if values.get("leaderElection", {}).get("enabled", True):
        if lease is None:
            fail(f"{name}: no leader election Role")
        else:
            if lease["metadata"]["namespace"] != RELEASE_NS:
                fail(f"{name}: leader election Role not in the release namespace")
            got = expand(lease["rules"])
            if got != table["lease"]:
                fail(f"{name}: lease Role differs from operator/rbac.yaml: {sorted(got)} vs {sorted(table['lease'])}")
            lease_name = values.get("leaderElection", {}).get("leaseName", "taskstream-operator")
            for rule in lease["rules"]:
                if "create" not in rule["verbs"] and rule.get("resourceNames") != [lease_name]:
                    fail(f"{name}: lease get/patch not limited to {lease_name}")
    elif lease is not None:
        fail(f"{name}: leader election off but a Lease Role is rendered")
    check_webhook_rbac(name, roles, values, table, fullname)
    # Every binding names the operator's ServiceAccount in the release namespace.
    for d in objects:
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            for s in d["subjects"]:
                if s.get("namespace") != RELEASE_NS:
                    fail(f"{name}: {d['kind']} {d['metadata']['name']} binds a subject outside the release")


def check_webhook_rbac(name: str, roles: dict, values: dict, table: dict, fullname: str) -> None:
    """The webhook's Role (its Secret, by name but for create) and ClusterRole (its
    configuration, by name) grant exactly the table's webhook and cluster rows."""
    webhook = values.get("webhook", {})
    secret = webhook.get("certSecretName", "taskstream-webhook-tls")
    for kind, scope, limit in (("Role", "webhook", secret), ("ClusterRole", "cluster", fullname)):
        role = roles.get((kind, f"{fullname}-webhook"))
        if not webhook.get("enabled", True):
            if role is not None:
                fail(f"{name}: webhook off but its {kind} is rendered")
            continue
        if role is None:
            fail(f"{name}: no webhook {kind}")
            continue
        if kind == "Role" and role["metadata"]["namespace"] != RELEASE_NS:
            fail(f"{name}: webhook Role not in the release namespace")
        got = expand(role["rules"])
        if got != table[scope]:
            fail(f"{name}: webhook {kind} differs from operator/rbac.yaml: {sorted(got)} vs {sorted(table[scope])}")
        for rule in role["rules"]:
            if "create" not in rule["verbs"] and rule.get("resourceNames") != [limit]:
                fail(f"{name}: webhook {kind} {rule['verbs']} not limited to {limit}")


def check_webhook(name: str, objects: list[dict], values: dict) -> None:
    """The webhook configuration: label selector, excluded namespaces, safe settings, and a
    Service on 443 to the operator's webhook port."""
    webhook = values.get("webhook", {})
    configs = [d for d in objects if d["kind"] == "MutatingWebhookConfiguration"]
    if not webhook.get("enabled", True):
        if configs:
            fail(f"{name}: webhook off but a MutatingWebhookConfiguration is rendered")
        return
    if len(configs) != 1:
        fail(f"{name}: {len(configs)} MutatingWebhookConfigurations")
        return
    (hook,) = configs[0]["webhooks"]
    want_policy = webhook.get("failurePolicy", "Fail")
    checks = {
        "objectSelector on taskstream.dev/inject": hook["objectSelector"]
        == {"matchExpressions": [{"key": "taskstream.dev/inject", "operator": "Exists"}]},
        "kube-system and the release namespace excluded": any(
            e["operator"] == "NotIn" and set(e["values"]) == {"kube-system", RELEASE_NS}
            for e in hook["namespaceSelector"]["matchExpressions"]
        ),
        "sideEffects None": hook["sideEffects"] == "None",
        "admissionReviewVersions [v1]": hook["admissionReviewVersions"] == ["v1"],
        "timeoutSeconds": hook["timeoutSeconds"] == webhook.get("timeoutSeconds", 5),
        "reinvocationPolicy IfNeeded": hook["reinvocationPolicy"] == "IfNeeded",
        f"failurePolicy {want_policy}": hook["failurePolicy"] == want_policy,
        "pod CREATE only": hook["rules"]
        == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
        "path /mutate-pods": hook["clientConfig"]["service"]["path"] == "/mutate-pods",
    }
    for what, ok in checks.items():
        if not ok:
            fail(f"{name}: webhook: {what}: {hook}")
    svc_name = hook["clientConfig"]["service"]["name"]
    services = [d for d in objects if d["kind"] == "Service" and d["metadata"]["name"] == svc_name]
    if not services or services[0]["spec"]["ports"] != [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]:
        fail(f"{name}: webhook Service {svc_name} missing or not 443 -> webhook")
    cert_manager = webhook.get("certManager", {}).get("enabled", False)
    annotated = "cert-manager.io/inject-ca-from" in (configs[0]["metadata"].get("annotations") or {})
    certificates = [d for d in objects if d["kind"] == "Certificate"]
    if cert_manager != annotated or cert_manager != bool(certificates):
        fail(f"{name}: certManager.enabled={cert_manager} but inject-ca-from={annotated}, Certificates={len(certificates)}")
    (deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    if not any(p["name"] == "webhook" for p in c["ports"]):
        fail(f"{name}: the operator container has no webhook port")
    if f"--webhook-service={RELEASE_NS}/{svc_name}" not in c["args"]:
        fail(f"{name}: --webhook-service does not name {svc_name}")


def check_deployment(name: str, objects: list[dict], values: dict) -> None:
    deployments = [d for d in objects if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        fail(f"{name}: {len(deployments)} Deployments")
        return
    pod = deployments[0]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = c["args"]
    # Every flag must be one the binary accepts: parse them with the real CLI.
    p = run([OPERATOR, "run", "--help"])
    for a in args[1:]:
        flag = a.split("=", 1)[0]
        if flag not in p.stdout:
            fail(f"{name}: operator arg {flag} is not a flag of `taskstream-operator run`")
    sc, psc = c["securityContext"], pod["securityContext"]
    hardened = (
        sc.get("allowPrivilegeEscalation") is False
        and sc.get("readOnlyRootFilesystem") is True
        and sc.get("capabilities", {}).get("drop") == ["ALL"]
        and psc.get("runAsNonRoot") is True
        and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    )
    if not hardened:
        fail(f"{name}: the operator's security context is not hardened")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        if c.get(probe, {}).get("httpGet", {}).get("path") != path:
            fail(f"{name}: {probe} is not on {path}")
    scope = values.get("scope", "cluster")
    want_ns = f"--namespace={values.get('watchNamespace') or RELEASE_NS}"
    if (scope == "namespace") != (want_ns in args):
        fail(f"{name}: scope={scope} but args are {args}")
    replicas = deployments[0]["spec"]["replicas"]
    if replicas > 1 and "--leader-election=true" not in args:
        fail(f"{name}: {replicas} replicas without leader election")


def check_monitors(name: str, objects: list[dict]) -> None:
    for d in objects:
        if (d.get("apiVersion"), d.get("kind")) not in MONITORS:
            continue
        spec = d["spec"]
        endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints") or []
        if not endpoints or not all(e.get("port") and e.get("path") == "/metrics" for e in endpoints):
            fail(f"{name}: {d['kind']} without a /metrics endpoint on a named port")
        if d["kind"] == "PodMonitor" and spec["selector"]["matchLabels"] != {"app.kubernetes.io/name": "taskstream"}:
            fail(f"{name}: PodMonitor does not select the TaskStream pods")


def check_chart() -> None:
    print(f"chart: helm {run([HELM, 'version', '--short']).stdout.strip()}, Kubernetes schemas {OLDEST} and {NEWEST}")
    for name, args in variations():
        print(f"chart: {name}")
        run([HELM, "lint", "--strict", CHART, "--namespace", RELEASE_NS, *args])
        objects = template(args)
        if not objects:
            fail(f"{name}: rendered nothing")
            continue
        values = yaml.safe_load(Path(args[1]).read_text()) if args else {}
        for d in objects:
            k8s_validate(d, f"chart {name}")
        check_rbac(name, objects, values)
        check_deployment(name, objects, values)
        check_webhook(name, objects, values)
        check_monitors(name, objects)
        observability.check_observability(sys.modules[__name__], name, objects, values)
        services = [d for d in objects if d["kind"] == "Service"]
        for s in services:
            if any(p["port"] == 9090 for p in s["spec"]["ports"]):
                fail(f"{name}: a Service exposes 9090")
    # Values the chart must refuse, each with a message naming the problem.
    refused = [
        (["--set", "replicaCount=2", "--set", "leaderElection.enabled=false"], "leaderElection.enabled"),
        (["--set", "scope=everywhere"], "scope"),
        (["--set", "replicas=2"], "replicas"),
        (["--set", "logFormat=xml"], "logFormat"),
        (["--set", "leaderElection.leaseGraceSeconds=15"], "leaseGraceSeconds"),
        (["--set", "watchNamespace=apps"], "watchNamespace"),
        (["--set", "adminPort=http"], "adminPort"),
        (["--set", "webhook.failurePolicy=Sometimes"], "failurePolicy"),
    ]
    for args, word in refused:
        p = run([HELM, "template", RELEASE, CHART, "--namespace", RELEASE_NS, *args], check=False)
        if p.returncode == 0:
            fail(f"helm template {' '.join(args)} was accepted")
        elif word not in p.stderr:
            fail(f"helm template {' '.join(args)}: the error does not name {word}: {p.stderr.strip()}")


def main() -> int:
    start = time.monotonic()
    crd = check_crd_copy()
    check_examples(crd)
    check_chart()
    observability.check_observability_refusals(sys.modules[__name__])
    took = time.monotonic() - start
    if failures:
        print(f"check-chart: {len(failures)} failure(s) in {took:.1f}s", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"check-chart: ok in {took:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
