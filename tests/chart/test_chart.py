"""The Helm chart (charts/nasblade): lint, rendering, value checks, CRD identity, and a
server-side dry-run of the rendered manifests against a real API server with Pod Security
admission set to "restricted"."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbcluster  # tests/cluster, put on sys.path by conftest.py
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "nasblade"
KUBE_VERSION = nbcluster.K8S_VERSION.lstrip("v")
Helm = Callable[..., "subprocess.CompletedProcess[str]"]

Render = Callable[..., list[dict[str, Any]]]
STANDARD_LABELS = ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by")
NAMESPACED_KINDS = {"ServiceAccount", "Service", "Deployment", "Role", "RoleBinding",
                    "KopfPeering", "ServiceMonitor"}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


# ---------------------------------------------------------------- offline


def test_chart_crds_are_the_repository_crds() -> None:
    """One source of truth: charts/nasblade/crds/ holds byte-identical copies of crds/."""
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert source, "no CRDs in crds/"
    assert sorted(chart) == sorted(source), "the chart's CRD files differ from crds/: copy them"
    for name, data in source.items():
        assert chart[name] == data, f"charts/nasblade/crds/{name} differs from crds/{name}: copy it"


def test_helm_lint_strict(helm: Helm) -> None:
    r = helm("lint", "--strict", str(CHART), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout


def test_every_value_is_documented() -> None:
    """Each value in values.yaml has a ``# --`` comment (helm-docs style) on itself or on the
    map that holds it (``resources:`` documents its requests and limits)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented: list[str] = []
    covered_below: int | None = None  # indentation under a documented map
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")):
            continue
        indent = len(line) - len(line.lstrip())
        if covered_below is not None and indent > covered_below:
            continue
        covered_below = None
        key, _, rest = stripped.partition(":")
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        documented = j >= 0 and lines[j].strip().startswith("# --")
        if documented:
            covered_below = indent
        elif rest.strip():  # a leaf without documentation (section headers may go without)
            undocumented.append(key)
    assert undocumented == []


def test_default_render(render: Render) -> None:
    objs = render()
    assert sorted(o["kind"] for o in objs) == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
         "ClusterKopfPeering"])
    for o in objs:
        labels = o["metadata"]["labels"]
        for label in STANDARD_LABELS:
            assert label in labels, f"{o['kind']} lacks label {label}"
        if o["kind"] in NAMESPACED_KINDS:
            assert o["metadata"]["namespace"] == "nasblade-system"
    c = operator_container(objs)
    assert c["image"] == "nasblade/nasblade:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["args"][:2] == ["operator", "--peering=nb-nasblade"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NASBLADE_IMAGE"] == "nasblade/nasblade:0.1.0"
    assert env["NASBLADE_METRICS_PORT"] == "8081"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["memory"]
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    svc = one(objs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "nb-nasblade"


def test_values_reach_the_operator(render: Render) -> None:
    objs = render("image.repository=registry.example/nb", "image.tag=9.9", "logLevel=debug",
                  "metrics.enabled=false", "statusInterval=3", "clusterDomain=svc.cluster.local",
                  "leaderElection.enabled=false")
    c = operator_container(objs)
    assert c["image"] == "registry.example/nb:9.9"
    assert "--verbose" in c["args"] and "--standalone" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env == {"NASBLADE_IMAGE": "registry.example/nb:9.9", "NASBLADE_METRICS_PORT": "0",
                   "NASBLADE_STATUS_INTERVAL": "3", "NASBLADE_CLUSTER_DOMAIN": "svc.cluster.local"}
    assert not by_kind(objs, "Service") and not by_kind(objs, "ClusterKopfPeering")


def _rules(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(g, r, v) for rule in obj["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]]


def test_rbac_is_least_privilege(render: Render) -> None:
    cluster = _rules(one(render(), "ClusterRole"))
    assert all("*" not in t for t in cluster), "no wildcards"
    assert ("", "pods", "delete") in cluster  # replaces failed blades
    assert ("nasblade.io", "diskarrays/status", "patch") in cluster
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "create") not in cluster
    # the token Secret is read by name only: no listing or watching every Secret
    assert {v for g, r, v in cluster if r == "secrets"} == {"get", "create", "delete"}
    assert not any(r == "nodes" or r.startswith("clusterrole") for _, r, _ in cluster)
    # watched namespaces: the namespaced rights move to Roles in exactly those namespaces
    objs = render("watchNamespaces={team-a,team-b}")
    narrow = _rules(one(objs, "ClusterRole"))
    assert {r for _, r, _ in narrow} == {"customresourcedefinitions", "namespaces"}
    assert {v for _, _, v in narrow} == {"get", "list", "watch"}
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(objs, "RoleBinding")) == ["team-a", "team-b"]
    assert sorted(p["metadata"]["namespace"] for p in by_kind(objs, "KopfPeering")) == ["team-a", "team-b"]
    args = operator_container(objs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_service_monitor(helm: Helm) -> None:
    base = ["template", "nb", str(CHART), "--kube-version", KUBE_VERSION,
            "--set", "metrics.serviceMonitor.enabled=true"]
    r = helm(*base, check=False)
    assert r.returncode != 0 and "no monitoring.coreos.com/v1 ServiceMonitor API" in r.stderr
    out = helm(*base, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor").stdout
    sm = one([d for d in yaml.safe_load_all(out) if d], "ServiceMonitor")
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "interval": "30s"}]


@pytest.mark.parametrize(("values", "message"), [
    (["logLevel=loud"], 'logLevel must be "info" or "debug"'),
    (["replicaCount=0"], "replicaCount must be at least 1"),
    (["replicaCount=2", "leaderElection.enabled=false"], "needs leaderElection.enabled=true"),
    (["watchNamespaces={Not_A_Name}"], "is not a valid namespace name"),
    (["image.pullPolicy=Sometimes"], "image.pullPolicy must be"),
    (["metrics.port=8082"], "metrics.port and healthPort must differ"),
    (["healthPort=70000"], "healthPort must be a port number"),
    (["serviceAccount.create=false"], "serviceAccount.name is required"),
    # values.schema.json: misspelled keys and wrong types
    (["imageTag=1.0"], "additional properties 'imageTag' not allowed"),
    (["metrics.servicemonitor.enabled=true"], "additional properties 'servicemonitor' not allowed"),
    (["replicaCount=two"], "at '/replicaCount': got string, want integer"),
])
def test_invalid_values_fail(helm: Helm, values: list[str], message: str) -> None:
    argv = ["template", "nb", str(CHART), "--kube-version", KUBE_VERSION]
    for v in values:
        argv += ["--set", v]
    r = helm(*argv, check=False)
    assert r.returncode != 0, f"{values} rendered"
    assert message in r.stderr


# ---------------------------------------------------------------- against the API server


def _kubectl(kc: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(nbcluster.k8s_bin("kubectl")), "--kubeconfig", kc, *args],
                          input=stdin, capture_output=True, text=True, check=False, timeout=120)


def _restricted_namespace(kc: str, name: str | None = None) -> str:
    ns = name or f"chart-{uuid.uuid4().hex[:6]}"
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted"}}}
    r = _kubectl(kc, "apply", "-f", "-", stdin=json.dumps(manifest))
    assert r.returncode == 0, r.stderr
    return ns


@pytest.mark.tier1
@pytest.mark.parametrize("values", [[], ["watchNamespaces={chart-team-a,chart-team-b}", "replicaCount=2",
                                         "logLevel=debug"]], ids=["defaults", "namespaced"])
def test_server_side_dry_run(helm: Helm, crds_applied: str, values: list[str]) -> None:
    """helm template | kubectl apply --dry-run=server: the API server validates every object
    (schemas, RBAC, the kopf peering CRs) and Pod Security admission warns about nothing."""
    kc = crds_applied
    ns = _restricted_namespace(kc)
    for v in values:
        if v.startswith("watchNamespaces="):
            for w in v.split("=", 1)[1].strip("{}").split(","):
                _restricted_namespace(kc, w)
    argv = ["template", "nb", str(CHART), "--namespace", ns, "--kube-version", KUBE_VERSION]
    for v in values:
        argv += ["--set", v]
    manifests = helm(*argv).stdout
    r = _kubectl(kc, "apply", "--dry-run=server", "-f", "-", stdin=manifests)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    assert r.stdout.count("(server dry run)") == len([d for d in yaml.safe_load_all(manifests) if d])


@pytest.mark.tier1
def test_operator_pod_meets_restricted(render: Render, crds_applied: str) -> None:
    """The operator's pod template is admitted by Pod Security 'restricted' (enforced on Pods),
    and the check is real: the same pod without its security context is refused."""
    kc = crds_applied
    ns = _restricted_namespace(kc)
    template = one(render(namespace=ns), "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "operator-probe", "namespace": ns, "labels": template["metadata"]["labels"]},
           "spec": copy.deepcopy(template["spec"])}
    pod["spec"]["serviceAccountName"] = "default"
    r = _kubectl(kc, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
    assert r.returncode == 0, r.stderr
    loose = copy.deepcopy(pod)
    del loose["spec"]["securityContext"]
    del loose["spec"]["containers"][0]["securityContext"]
    r = _kubectl(kc, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(loose))
    assert r.returncode != 0 and "violates PodSecurity" in r.stderr, r.stderr


@pytest.mark.tier1
def test_examples_pass_the_crd_schemas(crds_applied: str) -> None:
    """examples/ holds a DiskArray and a ClusterGroup that reference each other and that the
    API server accepts (OpenAPI schema + CEL rules of crds/)."""
    docs = [d for p in sorted((REPO / "examples").glob("*.yaml"))
            for d in yaml.safe_load_all(Path(p).read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"DiskArray", "ClusterGroup"} <= set(kinds)
    assert kinds["ClusterGroup"]["spec"]["diskArrayRef"]["name"] == kinds["DiskArray"]["metadata"]["name"]
    fs_groups = {fs["clusterGroup"] for fs in kinds["DiskArray"]["spec"]["fileSystems"]}
    assert kinds["ClusterGroup"]["metadata"]["name"] in fs_groups
    ns = _restricted_namespace(crds_applied)
    r = _kubectl(crds_applied, "-n", ns, "create", "--dry-run=server", "-f", str(REPO / "examples"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("(server dry run)") == len(docs)


def _documented_rbac() -> set[tuple[str, str, str]]:
    """(group, resource, verb) rows of the table in docs/operator.md ("RBAC the operator needs")."""
    text = (REPO / "docs" / "operator.md").read_text()
    section = text.split("## RBAC the operator needs", 1)[1].split("\n## ", 1)[0]
    rows: set[tuple[str, str, str]] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        group = cells[0].strip("`").strip('"')
        resources = re.findall(r"`([^`]+)`", cells[1])
        verbs = re.sub(r"\(.*?\)", "", cells[2]).replace(" ", "").split(",")
        rows |= {(group, r, v) for r in resources for v in verbs if v}
    return rows


def test_rbac_grants_what_the_operator_documents(render: Render) -> None:
    """Every permission docs/operator.md says the operator needs is granted by the chart, in
    both modes (all namespaces: ClusterRole; watchNamespaces: ClusterRole + Roles)."""
    documented = _documented_rbac()
    assert len(documented) > 20, "the RBAC table in docs/operator.md was not found"
    cluster_wide = set(_rules(one(render(), "ClusterRole")))
    assert documented - cluster_wide == set()
    objs = render("watchNamespaces={team-a}")
    narrow = set(_rules(one(objs, "ClusterRole"))) | set(_rules(one(objs, "Role")))
    missing = {(g, r, v) for g, r, v in documented - narrow if r != "clusterkopfpeerings"}
    assert missing == set()
