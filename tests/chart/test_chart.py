"""The Helm chart (charts/nasblade): lint, rendering, value checks, CRD identity, and a
server-side dry-run of the rendered manifests against a real API server with Pod Security
admission set to "restricted"."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbcluster  # tools/kube, put on sys.path by conftest.py
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
                    "KopfPeering", "ServiceMonitor", "PodMonitor", "NetworkPolicy", "ConfigMap",
                    "PrometheusRule"}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_role(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's ClusterRole (the chart's others are the CSI plugins', ``-csi-controller*``
    and ``-csi-node``, and the snapshot-controller's, ``-snapshot-controller``)."""
    found = [o for o in by_kind(objs, "ClusterRole")
             if not any(s in o["metadata"]["name"] for s in ("-csi-controller", "-csi-node", "-snapshot-controller"))]
    assert len(found) == 1, f"expected one operator ClusterRole, got {len(found)}"
    return found[0]


def operator_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


def assert_api_access(pod: dict[str, Any], container: str) -> None:
    """The pod has no automatic ServiceAccount token; ``container`` alone mounts the projected
    credentials (token, CA, namespace) where client libraries read them."""
    assert pod["automountServiceAccountToken"] is False
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-access"]
    sources = volume["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
    assert {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in sources
    assert any("downwardAPI" in src for src in sources)
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        mounts = [m for m in c.get("volumeMounts", []) if m["name"] == "api-access"]
        assert mounts == ([{"name": "api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                            "readOnly": True}] if c["name"] == container else []), c["name"]


# ---------------------------------------------------------------- offline


PEERING_API = ("kopf.dev/v1/ClusterKopfPeering", "kopf.dev/v1/KopfPeering")


CHART_CRDS = CHART / "files" / "crds"  # rendered by templates/customresourcedefinitions.yaml
KEEP = {"helm.sh/resource-policy": "keep"}


def _source_crds() -> dict[str, dict[str, Any]]:
    """The repository's CRDs by name (crds/, the single source of truth), without kopf's
    peering CRDs, which the chart never installs (other kopf operators own them)."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))
            if p.name != "kopf-peering.yaml"]
    return {d["metadata"]["name"]: d for d in docs}


def test_chart_crds_are_the_repository_crds() -> None:
    """One source of truth: charts/nasblade/files/crds/ holds byte-identical copies of crds/
    (all but kopf's peering CRDs)."""
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml") if p.name != "kopf-peering.yaml"}
    chart = {p.name: p.read_bytes() for p in CHART_CRDS.glob("*.yaml")}
    assert source, "no CRDs in crds/"
    assert sorted(chart) == sorted(source), "the chart's CRD files differ from crds/: cp crds/*.yaml charts/nasblade/files/crds/"
    for name, data in source.items():
        assert chart[name] == data, f"charts/nasblade/files/crds/{name} differs from crds/{name}: copy it"
    assert not (CHART / "crds").exists(), "Helm's crds/ folder is installed once and never upgraded"


def test_rendered_crds_are_the_repository_crds_kept_on_uninstall(render: Render) -> None:
    """The chart renders each CRD of crds/ as a template (so ``helm upgrade`` upgrades it):
    the same object, plus the chart's labels and ``helm.sh/resource-policy: keep`` (so
    ``helm uninstall`` never deletes it, nor every DiskArray with it)."""
    rendered = {o["metadata"]["name"]: o for o in by_kind(render(), "CustomResourceDefinition")}
    source = _source_crds()
    assert sorted(rendered) == sorted(source) == ["clustergroups.nasblade.io", "diskarrays.nasblade.io"]
    for name, crd in rendered.items():
        meta = crd["metadata"]
        assert meta["annotations"] == KEEP | source[name]["metadata"].get("annotations", {}), name
        assert source[name]["metadata"]["labels"].items() <= meta["labels"].items(), name
        assert meta["labels"]["app.kubernetes.io/component"] == "crd"
        assert all(label in meta["labels"] for label in STANDARD_LABELS), name
        bare = copy.deepcopy(crd)
        bare["metadata"] = {k: v for k, v in meta.items() if k not in ("labels", "annotations")}
        expected = copy.deepcopy(source[name])
        expected["metadata"] = {k: v for k, v in expected["metadata"].items() if k not in ("labels", "annotations")}
        assert bare == expected, f"the rendered {name} differs from crds/"


def test_crds_install_false_renders_none(render: Render) -> None:
    """``crds.install=false`` (CRDs managed separately): no CRD, everything else unchanged."""
    on, off = render(), render("crds.install=false")
    assert len(by_kind(on, "CustomResourceDefinition")) == 2
    assert by_kind(off, "CustomResourceDefinition") == []
    assert sorted(o["kind"] for o in off) == sorted(o["kind"] for o in on if o["kind"] != "CustomResourceDefinition")


def test_crd_template_refuses_a_file_it_cannot_copy_exactly(helm: Helm, tmp_path: Path) -> None:
    """The template copies a CRD's ``spec`` as text after its metadata: a file with another
    top-level key, or with ``spec`` not last, stops the render instead of rendering it wrong."""
    chart = tmp_path / "nasblade"
    shutil.copytree(CHART, chart)
    target = chart / "files" / "crds" / "diskarray.yaml"
    text = target.read_text()
    argv = ("template", "nb", str(chart), "--kube-version", KUBE_VERSION)
    target.write_text(text + "status: {}\n")
    r = helm(*argv, check=False)
    assert r.returncode != 0 and "must hold exactly apiVersion, kind, metadata and spec" in r.stderr, r.stderr
    head, spec = text.split("\nspec:\n", 1)
    target.write_text("spec:\n" + spec + head + "\n")
    r = helm(*argv, check=False)
    assert r.returncode != 0 and "spec must be the file's last top-level key" in r.stderr, r.stderr


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
         "NetworkPolicy", "CustomResourceDefinition", "CustomResourceDefinition",
         "ClusterRole", "ClusterRole"])
    for o in objs:
        labels = o["metadata"]["labels"]
        for label in STANDARD_LABELS:
            assert label in labels, f"{o['kind']} lacks label {label}"
        if o["kind"] in NAMESPACED_KINDS:
            assert o["metadata"]["namespace"] == "nasblade-system"
    c = operator_container(objs)
    assert c["image"] == "nasblade/nasblade:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["args"][:2] == ["operator", "--standalone"]  # one replica: no peering, no kopf CRDs
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NASBLADE_IMAGE"] == "nasblade/nasblade:0.1.0"
    assert env["NASBLADE_METRICS_PORT"] == "8081"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["memory"]
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert_api_access(pod, "operator")
    sa = one(objs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    svc = one(objs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert not any(r == "clusterkopfpeerings" for _, r, _ in _rules(operator_role(objs)))


DIGEST = "sha256:" + "ab" * 32


def test_image_digest_pins_every_nasblade_pod(render: Render) -> None:
    """image.digest: the operator runs repository:tag@digest and passes the same reference on
    (NASBLADE_IMAGE), so the controller, blade and CSI pods it makes are pinned too."""
    c = operator_container(render(f"image.digest={DIGEST}"))
    assert c["image"] == f"nasblade/nasblade:0.1.0@{DIGEST}"
    assert {e["name"]: e.get("value") for e in c["env"]}["NASBLADE_IMAGE"] == c["image"]
    assert operator_container(render())["image"] == "nasblade/nasblade:0.1.0"


def test_leader_election_is_optional_and_needs_the_peering_api(helm: Helm, render: Render) -> None:
    """leaderElection.enabled: the peering object, --peering and its RBAC -- only when kopf's
    peering CRDs are there (the chart installs none)."""
    objs = render("leaderElection.enabled=true", "replicaCount=2", api_versions=PEERING_API)
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "nb-nasblade"
    assert operator_container(objs)["args"][:2] == ["operator", "--peering=nb-nasblade"]
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in _rules(operator_role(objs))
    r = helm("template", "nb", str(CHART), "--kube-version", KUBE_VERSION, "--set", "leaderElection.enabled=true",
             check=False)
    assert r.returncode != 0 and "needs kopf's peering CRDs (no kopf.dev/v1/ClusterKopfPeering API)" in r.stderr
    assert not (CHART_CRDS / "kopf-peering.yaml").exists()
    assert not any(o["spec"]["group"] == "kopf.dev" for o in by_kind(objs, "CustomResourceDefinition"))


def test_kube_version_is_the_tested_one(helm: Helm) -> None:
    """Chart.yaml's kubeVersion starts at the release the tiers run (tools/kube/versions.env),
    and helm refuses an older cluster."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    major, minor = KUBE_VERSION.split(".")[:2]
    assert chart["kubeVersion"] == f">={major}.{minor}.0-0"
    r = helm("template", "nb", str(CHART), "--kube-version", f"{major}.{int(minor) - 1}.0", check=False)
    assert r.returncode != 0 and "kubeVersion" in r.stderr


def test_values_reach_the_operator(render: Render) -> None:
    objs = render("image.repository=registry.example/nb", "image.tag=9.9", "logLevel=debug", "logFormat=json",
                  "metrics.enabled=false", "statusInterval=3", "clusterDomain=svc.cluster.local",
                  "leaderElection.enabled=false")
    c = operator_container(objs)
    assert c["image"] == "registry.example/nb:9.9"
    assert "--verbose" in c["args"] and "--standalone" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env == {"NASBLADE_IMAGE": "registry.example/nb:9.9", "NASBLADE_METRICS_PORT": "0",
                   "NASBLADE_STATUS_INTERVAL": "3", "NASBLADE_CLUSTER_DOMAIN": "svc.cluster.local",
                   "NASBLADE_IMAGE_PULL_POLICY": "IfNotPresent", "NASBLADE_IMAGE_PULL_SECRETS": "",
                   "NASBLADE_NETWORK_POLICIES": "true", "NASBLADE_OPERATOR_NAMESPACE": None,
                   "NASBLADE_LOG_FORMAT": "json", "NASBLADE_METRICS_SCRAPER": json.dumps(DEFAULT_SCRAPER, separators=(",", ":")),
                   "NASBLADE_CSI_CLUSTER_ROLE": "nb-nasblade-csi-controller",
                   "NASBLADE_CSI_SNAPSHOTTER_IMAGE": SNAPSHOTTER_IMAGE,
                   "NASBLADE_CSI_PROVISIONER_IMAGE": "registry.k8s.io/sig-storage/csi-provisioner:v5.3.0",
                   "NASBLADE_CSI_RESIZER_IMAGE": "registry.k8s.io/sig-storage/csi-resizer:v1.14.0",
                   "NASBLADE_POD_DEFAULTS": json.dumps({r: {"nodeSelector": {}, "priorityClassName": "", "resources": {},
                                                            "tolerations": []} for r in ("blades", "controller")},
                                                       separators=(",", ":")),
                   "NASBLADE_OPERATOR_LABELS": json.dumps({"app.kubernetes.io/component": "operator",
                                                           "app.kubernetes.io/instance": "nb",
                                                           "app.kubernetes.io/name": "nasblade"},
                                                          separators=(",", ":"))}
    assert not by_kind(objs, "Service") and not by_kind(objs, "ClusterKopfPeering")


def test_pod_defaults_reach_the_operator(render: Render) -> None:
    """``podDefaults``: the placement and resources of controller and blade pods, as the
    operator reads them (``settings.OperatorConfig``)."""
    from nasblade_operator import settings

    objs = render("podDefaults.blades.nodeSelector.pool=nas", "podDefaults.blades.priorityClassName=nas-critical",
                  "podDefaults.controller.resources.requests.memory=2Gi",
                  "podDefaults.blades.tolerations[0].key=nas", "podDefaults.blades.tolerations[0].operator=Exists")
    env = {e["name"]: e.get("value") for e in operator_container(objs)["env"]}
    cfg = settings.OperatorConfig.from_env({"NASBLADE_POD_DEFAULTS": env["NASBLADE_POD_DEFAULTS"]})
    blades = cfg.pod_defaults.blades
    assert blades.placement.node_selector == {"pool": "nas"} and blades.placement.priority_class_name == "nas-critical"
    assert blades.placement.tolerations == ({"key": "nas", "operator": "Exists"},) and not blades.resources
    assert cfg.pod_defaults.controller.resources == {"requests": {"memory": "2Gi"}}


def test_pull_settings_and_policies_reach_the_pods_the_operator_makes(render: Render) -> None:
    """imagePullSecrets and the pull policy go to the operator pod and, through the environment,
    to every pod the operator makes; networkPolicy.enabled switches the operator's policies and
    the RBAC they need."""
    objs = render("imagePullSecrets[0].name=regcred", "imagePullSecrets[1].name=mirror",
                  "image.pullPolicy=Always")
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    c = operator_container(objs)
    env = {e["name"]: e for e in c["env"]}
    assert env["NASBLADE_IMAGE_PULL_SECRETS"]["value"] == "regcred,mirror"
    assert env["NASBLADE_IMAGE_PULL_POLICY"]["value"] == "Always"
    assert env["NASBLADE_OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    labels = json.loads(env["NASBLADE_OPERATOR_LABELS"]["value"])
    assert labels.items() <= pod.get("labels", one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]).items()
    np = one(objs, "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == labels  # its ports: test_operator_policy_*
    rules = _rules(operator_role(objs))
    assert ("networking.k8s.io", "networkpolicies", "create") in rules
    assert ("policy", "poddisruptionbudgets", "patch") in rules
    off = render("networkPolicy.enabled=false")
    assert not by_kind(off, "NetworkPolicy")
    assert not any(r == "networkpolicies" for _, r, _ in _rules(operator_role(off)))
    assert {e["name"]: e.get("value") for e in operator_container(off)["env"]}["NASBLADE_NETWORK_POLICIES"] == "false"


def _rules(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(g, r, v) for rule in obj["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]]


def test_rbac_is_least_privilege(render: Render) -> None:
    cluster = _rules(operator_role(render()))
    assert all("*" not in t for t in cluster), "no wildcards"
    assert ("", "pods", "delete") in cluster  # replaces failed blades
    assert ("", "pods", "patch") in cluster  # a group's file systems changed: the blades' annotation
    assert ("nasblade.io", "diskarrays/status", "patch") in cluster
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "create") not in cluster
    # Secrets by name only (no listing or watching every Secret); patch renews certificates in place
    assert {v for g, r, v in cluster if r == "secrets"} == {"get", "create", "patch", "delete"}
    assert not any(r == "nodes" for _, r, _ in cluster)
    # RBAC objects: only the bindings of each DiskArray's CSI plugin, to the chart's two CSI roles
    assert {(r, v) for _, r, v in cluster if r.startswith(("clusterrole", "rolebinding", "role"))} == {
        ("clusterrolebindings", "get"), ("clusterrolebindings", "create"), ("clusterrolebindings", "delete"),
        ("clusterroles", "bind"), ("rolebindings", "get"), ("rolebindings", "create"), ("rolebindings", "delete")}
    (bind,) = [rule for rule in operator_role(render())["rules"] if "bind" in rule["verbs"]]
    assert bind["resourceNames"] == ["nb-nasblade-csi-controller", "nb-nasblade-csi-controller-array"]
    assert {o["metadata"]["name"] for o in by_kind(render(), "ClusterRole")} >= set(bind["resourceNames"])
    # each array's CSIDriver and VolumeSnapshotClass (cluster-wide, one name per array): found
    # by label, never updated but for the class's deletion policy
    assert {(r, v) for _, r, v in cluster if r in ("csidrivers", "volumesnapshotclasses")} == {
        ("csidrivers", v) for v in ("get", "list", "create", "delete")} | {
        ("volumesnapshotclasses", v) for v in ("get", "list", "create", "patch", "delete")}
    nosnap = _rules(operator_role(render("csi.snapshotter.enabled=false")))
    assert not any(r == "volumesnapshotclasses" for _, r, _ in nosnap) and any(r == "csidrivers" for _, r, _ in nosnap)
    off = _rules(operator_role(render("csi.enabled=false")))
    assert not any(r in ("clusterrolebindings", "clusterroles", "rolebindings", "deployments", "serviceaccounts",
                         "csidrivers", "volumesnapshotclasses") for _, r, _ in off)
    # watched namespaces: the namespaced rights move to Roles in exactly those namespaces
    objs = render("watchNamespaces={team-a,team-b}", "leaderElection.enabled=true", api_versions=PEERING_API)
    narrow = _rules(operator_role(objs))
    assert {r for _, r, _ in narrow} == {"customresourcedefinitions", "namespaces", "clusterrolebindings",
                                         "clusterroles", "csidrivers", "volumesnapshotclasses"}
    assert {v for _, r, v in narrow if r in ("customresourcedefinitions", "namespaces")} == {"get", "list", "watch"}
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(objs, "RoleBinding")) == ["team-a", "team-b"]
    assert sorted(p["metadata"]["namespace"] for p in by_kind(objs, "KopfPeering")) == ["team-a", "team-b"]
    args = operator_container(objs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_csi_node_plugin_is_asked_for_and_mounts_under_the_kubelet_dir(render: Render, helm: Helm) -> None:
    """The node DaemonSet only when asked (it is privileged); then on every node by default,
    privileged, with the kubelet's directory at the same path and Bidirectional propagation,
    the driver's and the registration sockets under it, and a ServiceAccount whose only rights
    are to read CSIDriver objects (it registers every array's driver name with the kubelet) and,
    with topology keys (the default region and zone), to get Node objects (NodeGetInfo reports
    its node's labels of those keys); without keys, neither the argument nor that right."""
    assert by_kind(render(), "DaemonSet") == []
    assert by_kind(render("csi.enabled=false", "csi.node.enabled=true"), "DaemonSet") == []
    ds = one(render("csi.node.enabled=true", "csi.node.kubeletDir=/data/kubelet",
                    "imagePullSecrets[0].name=regcred"), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["nasblade-csi"]
    assert c["args"] == ["--role=node", "--endpoint=unix:///data/kubelet/plugins/nas.nasblade.io/csi.sock",
                         "--registration-dir=/data/kubelet/plugins_registry",
                         "--register-drivers-labelled=nasblade.io/csi-driver=true", "--node-id=$(NODE_NAME)",
                         "--topology-keys=topology.kubernetes.io/region,topology.kubernetes.io/zone"]
    assert c["securityContext"]["privileged"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    (kubelet,) = [m for m in c["volumeMounts"] if m["name"] == "kubelet-dir"]
    assert kubelet == {"name": "kubelet-dir", "mountPath": "/data/kubelet", "mountPropagation": "Bidirectional"}
    assert {v["name"]: v.get("hostPath", {}).get("path") for v in pod["volumes"]}["kubelet-dir"] == "/data/kubelet"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert_api_access(pod, "csi-node")
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    objs = render("csi.node.enabled=true")
    assert pod["serviceAccountName"] == "nb-nasblade-csi-node"
    (role,) = [o for o in by_kind(objs, "ClusterRole") if o["metadata"]["name"] == "nb-nasblade-csi-node"]
    csidrivers = {("storage.k8s.io", "csidrivers", v) for v in ("get", "list", "watch")}
    assert sorted(_rules(role)) == sorted(csidrivers | {("", "nodes", "get")})
    empty = helm("template", "nb", str(CHART), "--namespace", "nasblade-system", "--kube-version", KUBE_VERSION,
                 "--set", "csi.node.enabled=true", "--set-json", "csi.node.topologyKeys=[]").stdout
    for none, bare in (("null", render("csi.node.enabled=true", "csi.node.topologyKeys=null")),
                       ("[]", [d for d in yaml.safe_load_all(empty) if d])):
        (c,) = one(bare, "DaemonSet")["spec"]["template"]["spec"]["containers"]
        assert not any(a.startswith("--topology-keys") for a in c["args"]), none
        (role,) = [o for o in by_kind(bare, "ClusterRole") if o["metadata"]["name"] == "nb-nasblade-csi-node"]
        assert set(_rules(role)) == csidrivers, none
    (c,) = one(render("csi.node.enabled=true", "csi.node.topologyKeys={example.com/rack}"),
               "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert c["args"][-1] == "--topology-keys=example.com/rack"
    (binding,) = [o for o in by_kind(objs, "ClusterRoleBinding") if o["metadata"]["name"] == "nb-nasblade-csi-node"]
    assert binding["roleRef"]["name"] == "nb-nasblade-csi-node"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nb-nasblade-csi-node",
                                    "namespace": "nasblade-system"}]
    assert "nb-nasblade-csi-node" in {o["metadata"]["name"] for o in by_kind(objs, "ServiceAccount")}


SNAPSHOTTER_IMAGE = "registry.k8s.io/sig-storage/csi-snapshotter:v8.7.0"
SNAPSHOT_CONTROLLER_IMAGE = "registry.k8s.io/sig-storage/snapshot-controller:v8.7.0"
SNAPSHOT_CLASS_API = "snapshot.storage.k8s.io/v1/VolumeSnapshotClass"
# what the upstream csi-snapshotter sidecar needs (external-snapshotter's rbac-csi-snapshotter.yaml,
# without its lease Role: the operator runs it with --leader-election=false)
SIDECAR_RULES = {("", "events", v) for v in ("list", "watch", "create", "update", "patch")} | {
    (g, r, v) for g, r, verbs in (
        ("snapshot.storage.k8s.io", "volumesnapshotclasses", "get list watch"),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", "get list watch update patch"),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", "update patch"),
        ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", "get list watch"),
        ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "get list watch update patch"),
        ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status", "update patch"))
    for v in verbs.split()}


def csi_role(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (role,) = [o for o in by_kind(objs, "ClusterRole") if o["metadata"]["name"] == "nb-nasblade-csi-controller"]
    return role


def snapshot_controller_objects(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["metadata"]["name"] == "nb-nasblade-snapshot-controller"]


def test_csi_snapshotter_reaches_the_operator_and_the_plugin_role(render: Render) -> None:
    """csi.snapshotter (on by default): the operator gets the sidecar's image
    (NASBLADE_CSI_SNAPSHOTTER_IMAGE), and the ClusterRole every CSI controller plugin is bound to
    grants what the sidecar does -- each resource in one rule, the provisioner's rights kept.
    Off: no variable (no sidecar) and the plugin's role as before."""
    from nasblade_operator import settings
    from nasblade_operator.diskarray import csi as da_csi

    objs = render()
    env = {e["name"]: e.get("value") for e in operator_container(objs)["env"]}
    assert env["NASBLADE_CSI_SNAPSHOTTER_IMAGE"] == SNAPSHOTTER_IMAGE
    assert settings.OperatorConfig.from_env(env).csi_snapshotter_image == SNAPSHOTTER_IMAGE
    role = csi_role(objs)
    rules = set(_rules(role))
    assert ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", "patch") in rules
    assert rules >= SIDECAR_RULES
    assert {("", "persistentvolumes", "create"), ("snapshot.storage.k8s.io", "volumesnapshots", "get"),
            ("", "persistentvolumeclaims/status", "patch")} <= rules  # the provisioner's and resizer's
    assert not any(r == "leases" or "*" in (g, r, v) for g, r, v in rules)
    # the sidecar runs without leader election (so the role needs no Leases)
    assert "--leader-election=false" in da_csi.snapshotter_container(SNAPSHOTTER_IMAGE)["args"]
    pairs = [(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]]
    assert len(pairs) == len(set(pairs)), "a resource in two rules"
    assert {v for g, r, v in rules if r == "events"} == {"list", "watch", "create", "update", "patch"}

    other = operator_container(render("csi.snapshotter.image=reg.example/snap:1"))
    assert {"name": "NASBLADE_CSI_SNAPSHOTTER_IMAGE", "value": "reg.example/snap:1"} in other["env"]

    off = render("csi.snapshotter.enabled=false", "csi.provisioner.enabled=false", "csi.resizer.enabled=false")
    assert "NASBLADE_CSI_SNAPSHOTTER_IMAGE" not in {e["name"] for e in operator_container(off)["env"]}
    off_rules = set(_rules(csi_role(off)))
    assert ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", "patch") not in off_rules
    assert not any(g == "groupsnapshot.storage.k8s.io" or r == "volumesnapshotclasses" for g, r, _ in off_rules)
    assert {v for _, r, v in off_rules if r in ("volumesnapshots", "volumesnapshotcontents")} == {"get", "list"}
    assert {v for _, r, v in off_rules if r == "events"} == {"create"}
    nocsi = render("csi.enabled=false")
    assert "NASBLADE_CSI_SNAPSHOTTER_IMAGE" not in {e["name"] for e in operator_container(nocsi)["env"]}


# what the upstream external-provisioner and external-resizer need (their deploy/kubernetes/rbac.yaml
# of v5.3.0 and v1.14.0, without leader election's Leases)
PROVISIONER_RULES = {(g, r, v) for g, r, verbs in (
    ("", "persistentvolumes", "get list watch create patch delete"),
    ("", "persistentvolumeclaims", "get list watch update"),
    ("storage.k8s.io", "storageclasses", "get list watch"),
    ("", "events", "list watch create update patch"),
    ("snapshot.storage.k8s.io", "volumesnapshots", "get list"),
    ("snapshot.storage.k8s.io", "volumesnapshotcontents", "get list"),
    ("storage.k8s.io", "csinodes", "get list watch"),
    ("", "nodes", "get list watch"),
    ("storage.k8s.io", "volumeattachments", "get list watch")) for v in verbs.split()}
RESIZER_RULES = {(g, r, v) for g, r, verbs in (
    ("", "persistentvolumes", "get list watch patch"),
    ("", "persistentvolumeclaims", "get list watch"),
    ("", "pods", "get list watch"),
    ("", "persistentvolumeclaims/status", "patch"),
    ("", "events", "list watch create update patch"),
    ("storage.k8s.io", "volumeattributesclasses", "get list watch")) for v in verbs.split()}


def test_csi_provisioner_and_resizer_reach_the_operator_and_the_plugin_role(render: Render) -> None:
    """csi.provisioner and csi.resizer (on by default): the operator gets the upstream sidecars'
    images, and the plugin's ClusterRole grants what they need, with or without the
    snapshotter; off: no variable, and the role loses what only they need."""
    from nasblade_operator import settings

    objs = render()
    env = {e["name"]: e.get("value") for e in operator_container(objs)["env"]}
    assert env["NASBLADE_CSI_PROVISIONER_IMAGE"] == "registry.k8s.io/sig-storage/csi-provisioner:v5.3.0"
    assert env["NASBLADE_CSI_RESIZER_IMAGE"] == "registry.k8s.io/sig-storage/csi-resizer:v1.14.0"
    config = settings.OperatorConfig.from_env(env)
    assert (config.csi_provisioner_image, config.csi_resizer_image) == (
        env["NASBLADE_CSI_PROVISIONER_IMAGE"], env["NASBLADE_CSI_RESIZER_IMAGE"])
    for values in ((), ("csi.snapshotter.enabled=false",)):
        rules = set(_rules(csi_role(render(*values))))
        assert rules >= PROVISIONER_RULES | RESIZER_RULES, sorted(PROVISIONER_RULES | RESIZER_RULES - rules)
        assert not any(r == "leases" or "*" in (g, r, v) for g, r, v in rules)
    other = operator_container(render("csi.provisioner.image=reg.example/prov:1", "csi.resizer.image=reg.example/res:1"))
    assert {"name": "NASBLADE_CSI_PROVISIONER_IMAGE", "value": "reg.example/prov:1"} in other["env"]
    assert {"name": "NASBLADE_CSI_RESIZER_IMAGE", "value": "reg.example/res:1"} in other["env"]
    off = render("csi.provisioner.enabled=false", "csi.resizer.enabled=false")
    names = {e["name"] for e in operator_container(off)["env"]}
    assert not names & {"NASBLADE_CSI_PROVISIONER_IMAGE", "NASBLADE_CSI_RESIZER_IMAGE"}
    off_rules = set(_rules(csi_role(off)))
    assert not {r for _, r, _ in off_rules} & {"csinodes", "volumeattachments", "volumeattributesclasses"}
    assert {v for _, r, v in off_rules if r == "persistentvolumeclaims"} == {"get", "list", "watch"}
    assert {v for _, r, v in off_rules if r in ("pods", "nodes")} == {"list"}


def test_snapshot_controller_is_asked_for_and_hardened(render: Render) -> None:
    """csi.snapshotController: off by default (most clusters run one); when asked, its
    ServiceAccount, the upstream ClusterRole bound to it, a one-replica Deployment without leader
    election, hardened as the operator's pod (Pod Security "restricted"), with labels of its own
    (no overlap with the operator's selector), and a NetworkPolicy that lets nothing in."""
    assert snapshot_controller_objects(render()) == []
    assert snapshot_controller_objects(render("csi.enabled=false", "csi.snapshotController.enabled=true")) == []
    objs = render("csi.snapshotController.enabled=true", "imagePullSecrets[0].name=regcred",
                  "image.pullPolicy=Always")
    mine = snapshot_controller_objects(objs)
    assert sorted(o["kind"] for o in mine) == ["ClusterRole", "ClusterRoleBinding", "Deployment",
                                               "NetworkPolicy", "ServiceAccount"]
    for o in mine:
        assert all(label in o["metadata"]["labels"] for label in STANDARD_LABELS), o["kind"]
        assert o["metadata"]["labels"]["app.kubernetes.io/component"] == "snapshot-controller"
        if o["kind"] in NAMESPACED_KINDS:
            assert o["metadata"]["namespace"] == "nasblade-system"
    kinds = {o["kind"]: o for o in mine}

    rules = set(_rules(kinds["ClusterRole"]))
    assert ("snapshot.storage.k8s.io", "volumesnapshotcontents", "create") in rules
    assert ("snapshot.storage.k8s.io", "volumesnapshots/status", "patch") in rules
    assert ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status", "patch") in rules
    assert ("", "persistentvolumeclaims", "update") in rules
    assert {v for _, r, v in rules if r == "persistentvolumes"} == {"get", "list", "watch"}
    assert not any(r in ("secrets", "leases", "pods") or "*" in (g, r, v) for g, r, v in rules)
    binding = kinds["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "nb-nasblade-snapshot-controller"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nb-nasblade-snapshot-controller",
                                    "namespace": "nasblade-system"}]

    dep = kinds["Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "snapshot-controller"
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    operator = [d for d in by_kind(objs, "Deployment") if d is not dep]
    assert len(operator) == 1
    assert not operator[0]["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= operator[0]["spec"]["template"]["metadata"]["labels"].items()
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nb-nasblade-snapshot-controller"
    assert_api_access(pod, "snapshot-controller")
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["image"] == SNAPSHOT_CONTROLLER_IMAGE and c["imagePullPolicy"] == "Always"
    assert c["args"] == ["--leader-election=false", "--v=2"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]

    np = kinds["NetworkPolicy"]
    assert np["spec"]["podSelector"]["matchLabels"] == selector
    assert np["spec"]["policyTypes"] == ["Ingress"] and not np["spec"].get("ingress")
    off = render("csi.snapshotController.enabled=true", "networkPolicy.enabled=false")
    assert sorted(o["kind"] for o in snapshot_controller_objects(off)) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]
    other = one(snapshot_controller_objects(render(
        "csi.snapshotController.enabled=true", "csi.snapshotController.image=reg.example/sc:1",
        "csi.snapshotController.resources.requests.cpu=1")), "Deployment")
    (c,) = other["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "reg.example/sc:1" and c["resources"]["requests"]["cpu"] == 1


def test_no_driver_name_objects_in_the_chart(render: Render) -> None:
    """The CSIDriver and VolumeSnapshotClass objects are the operator's, one of each per
    CSI-enabled DiskArray under the array's own driver name (nasblade_operator.diskarray.csi):
    the chart renders neither, whatever the cluster serves."""
    for objs in (render(), render(api_versions=(SNAPSHOT_CLASS_API,)), render("csi.node.enabled=true")):
        assert by_kind(objs, "CSIDriver") == [] and by_kind(objs, "VolumeSnapshotClass") == []


def test_service_monitor(helm: Helm) -> None:
    base = ["template", "nb", str(CHART), "--kube-version", KUBE_VERSION,
            "--set", "metrics.serviceMonitor.enabled=true"]
    r = helm(*base, check=False)
    assert r.returncode != 0 and "no monitoring.coreos.com/v1 ServiceMonitor API" in r.stderr
    out = helm(*base, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor").stdout
    sm = one([d for d in yaml.safe_load_all(out) if d], "ServiceMonitor")
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "interval": "30s"}]


MONITOR_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor")


def test_array_monitors(helm: Helm, render: Render) -> None:
    """``metrics.arrays``: per DiskArray, a ServiceMonitor of its controller and a PodMonitor of
    its blades, in the array's namespace, on ``/v1/metrics`` with the token of the Secret the
    operator makes (``naming.token_secret_name``), on the ports its builders name, over HTTPS
    checked against the array's CA bundle Secret and a name the certificates carry
    (``nbdtls.server_names``, ``nbdtls.blade_names``)."""
    from nasblade_operator import naming, nbdtls
    from nasblade_operator.clustergroup import builders as cg_builders
    from nasblade_operator.clustergroup import spec as cg_spec
    from nasblade_operator.diskarray import builders as da_builders

    assert not by_kind(render(api_versions=MONITOR_APIS), "PodMonitor")
    objs = render("metrics.arrays[0].name=a1", "metrics.arrays[0].namespace=storage",
                  "metrics.arrays[1].name=a2", "metrics.arrays[1].namespace=team",
                  "metrics.serviceMonitor.labels.release=prom", api_versions=MONITOR_APIS)
    token = {"type": "Bearer", "credentials": {"name": naming.token_secret_name("a1"), "key": "metrics-token"}}
    controllers = {o["metadata"]["name"]: o for o in by_kind(objs, "ServiceMonitor")}
    blades = {o["metadata"]["name"]: o for o in by_kind(objs, "PodMonitor")}
    assert set(controllers) == {"a1-controller", "a2-controller"} and set(blades) == {"a1-blades", "a2-blades"}
    sm, pm = controllers["a1-controller"], blades["a1-blades"]
    for o in (sm, pm):
        assert o["metadata"]["namespace"] == "storage" and o["spec"]["namespaceSelector"] == {"matchNames": ["storage"]}
        assert o["metadata"]["labels"]["release"] == "prom"
        assert all(label in o["metadata"]["labels"] for label in STANDARD_LABELS)
    trust = {"secret": {"name": naming.tls_trust_secret_name("a1"), "key": "ca-cert.pem"}}
    [endpoint] = sm["spec"]["endpoints"]
    relabel = [{"targetLabel": "array", "replacement": "a1"}]  # what the alerts group by
    assert endpoint == {"port": "api", "path": "/v1/metrics", "interval": "30s", "authorization": token,
                        "scheme": "https", "tlsConfig": {"ca": trust, "serverName": "a1-controller.storage.svc"},
                        "relabelings": relabel}
    assert "a1-controller.storage.svc" in nbdtls.server_names("a1", "storage", "svc.cluster.local")
    [pod_endpoint] = pm["spec"]["podMetricsEndpoints"]
    assert pod_endpoint == {"port": "blade-api", "path": "/v1/metrics", "interval": "30s", "authorization": token,
                            "scheme": "https", "tlsConfig": {"ca": trust, "serverName": "a1-blades"},
                            "relabelings": relabel}
    assert "a1-blades" in nbdtls.blade_names("a1", "g1-blade-0")
    # the selectors find what the operator makes: the controller Service (its port "api") and
    # the blade pods (their container port "blade-api")
    service = da_builders.controller_service("a1")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "api" in [p["name"] for p in service["spec"]["ports"]]
    group = cg_spec.parse({"diskArrayRef": {"name": "a1"}})
    pod = cg_builders.blade_pod(group="g1", namespace="storage", index=0, spec=group, portion=0,
                                portion_size=2**20, version="0.1.0", image="nasblade/nasblade:0.1.0",
                                file_systems=[], slots={})
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    assert "blade-api" in ports
    for missing, api in (("PodMonitor", MONITOR_APIS[0]), ("ServiceMonitor", MONITOR_APIS[1])):
        r = helm("template", "nb", str(CHART), "--kube-version", KUBE_VERSION, "--set", "metrics.arrays[0].name=a1",
                 "--set", "metrics.arrays[0].namespace=storage", "--api-versions", api, check=False)
        assert r.returncode != 0 and f"no monitoring.coreos.com/v1 {missing} API" in r.stderr


DEFAULT_SCRAPER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                   "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def test_scraper_reaches_the_operator(render: Render) -> None:
    """``metrics.scraper`` goes to the operator as NASBLADE_METRICS_SCRAPER, which the operator's
    settings read into the peer its policies admit to the API ports: by default the Prometheus
    pods of prometheus-operator in the namespace "monitoring"; ``null``: no scrape access."""
    from nasblade_operator import settings

    def scraper(*values: str) -> str:
        return {e["name"]: e.get("value") for e in operator_container(render(*values))["env"]}["NASBLADE_METRICS_SCRAPER"]

    assert settings.scraper_peer(scraper()) == DEFAULT_SCRAPER
    assert settings.scraper_peer(scraper("metrics.scraper=null")) is None
    assert settings.scraper_peer(scraper("metrics.scraper.namespaceSelector=null",
                                         "metrics.scraper.podSelector=null")) is None
    mine = settings.scraper_peer(scraper("metrics.scraper.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=obs",
                                         "metrics.scraper.podSelector=null"))
    assert mine == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}}}


HEALTH_RULE = {"ports": [{"protocol": "TCP", "port": 8082}]}  # no "from": any source (kubelet probes)


@pytest.mark.parametrize("values", [
    [],
    ["metrics.scraper=null"],
    ["metrics.scraper.namespaceSelector=null", "metrics.scraper.podSelector=null"],
    ["metrics.scraper.podSelector=null"],
    ["metrics.scraper.namespaceSelector.matchLabels=null"],
    ["metrics.scraper.podSelector=null", "metrics.scraper.namespaceSelector.matchExpressions[0].key=team",
     "metrics.scraper.namespaceSelector.matchExpressions[0].operator=Exists"],
    ["metrics.port=9100"],
], ids=["default", "null", "both-null", "namespace-only", "empty-namespace-selector", "expressions", "other-port"])
def test_operator_policy_opens_metrics_to_the_scraper_only(render: Render, values: list[str]) -> None:
    """The operator pod's NetworkPolicy: the health port from anywhere, the metrics port only
    from ``metrics.scraper`` -- the very rule the operator's per-array policies give the same
    peer on their API ports (``policies.scrape_rule`` of what ``settings.scraper_peer`` reads from
    NASBLADE_METRICS_SCRAPER), so both read an empty or null selector the same way; no rule for
    the metrics port when the scraper names nobody."""
    from nasblade_operator import policies, settings

    objs = render(*values)
    env = {e["name"]: e.get("value") for e in operator_container(objs)["env"]}
    port = int(env["NASBLADE_METRICS_PORT"])
    peer = settings.scraper_peer(env["NASBLADE_METRICS_SCRAPER"])
    ingress = one(objs, "NetworkPolicy")["spec"]["ingress"]
    assert ingress == [HEALTH_RULE, *policies.scrape_rule(peer, port)]
    for rule in ingress:
        if any(p["port"] == port for p in rule["ports"]):
            assert rule["from"] == [peer] and peer, "the metrics port is open to a named peer only"


def test_operator_policy_metrics_port_defaults_and_off(render: Render) -> None:
    """The default scraper (Prometheus pods of the namespace "monitoring") is the metrics
    port's only peer; ``metrics.scraper: null`` or ``metrics.enabled=false`` leave the health
    rule alone."""
    metrics_rule = {"from": [DEFAULT_SCRAPER], "ports": [{"protocol": "TCP", "port": 8081}]}
    assert one(render(), "NetworkPolicy")["spec"]["ingress"] == [HEALTH_RULE, metrics_rule]
    for values in (["metrics.scraper=null"], ["metrics.enabled=false"]):
        assert one(render(*values), "NetworkPolicy")["spec"]["ingress"] == [HEALTH_RULE], values


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
    (["metrics.arrays[0].name=a1"], "missing property 'namespace'"),
    (["logFormat=xml"], "at '/logFormat'"),
    (["podDefaults.blades.affinity.x=y"], "additional properties 'affinity' not allowed"),
    (["podDefaults.controller.resources.wants.cpu=1"], "additional properties 'wants' not allowed"),
    (["metrics.scraper.podSelector.app=prometheus"], "additional properties 'app' not allowed"),
    (["metrics.scraper.ipBlock.cidr=0.0.0.0/0"], "additional properties 'ipBlock' not allowed"),
    (["metrics.scraper.namespaceSelector.matchExpressions[0].key=team",
      "metrics.scraper.namespaceSelector.matchExpressions[0].operator=Is"], "/metrics/scraper/namespaceSelector"),
    (["csi.snapshotter.tag=v8"], "additional properties 'tag' not allowed"),
    (["csi.snapshotClass.deletionPolicy=Retain"], "additional properties 'snapshotClass' not allowed"),
    (["csi.snapshotController.image="], "at '/csi/snapshotController/image'"),
    (["image.digest=sha256:abc"], "at '/image/digest'"),
    (["image.digest=latest"], "at '/image/digest'"),
    (["csi.node.topologyKeys={not a key}"], "at '/csi/node/topologyKeys/0'"),
    (["csi.node.topologyKeys=topology.kubernetes.io/zone"], "at '/csi/node/topologyKeys'"),
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
                                         "leaderElection.enabled=true", "logLevel=debug",
                                         "csi.snapshotController.enabled=true"]],
                         ids=["defaults", "namespaced"])
def test_server_side_dry_run(helm: Helm, crds_applied: str, values: list[str]) -> None:
    """helm template | kubectl apply --server-side --dry-run=server: the API server validates
    every object (the CRDs over the ones crds_applied made, schemas, RBAC, the kopf peering CRs)
    and Pod Security admission warns about nothing. Server-side, as the CRDs were applied: a
    client-side apply would warn about their missing last-applied annotation."""
    kc = crds_applied
    ns = _restricted_namespace(kc)
    for v in values:
        if v.startswith("watchNamespaces="):
            for w in v.split("=", 1)[1].strip("{}").split(","):
                _restricted_namespace(kc, w)
    argv = ["template", "nb", str(CHART), "--namespace", ns, "--kube-version", KUBE_VERSION]
    for v in values:
        argv += ["--set", v]
    for a in PEERING_API:
        argv += ["--api-versions", a]
    manifests = helm(*argv).stdout
    r = _kubectl(kc, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=manifests)
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
def test_snapshot_controller_pod_meets_restricted(render: Render, crds_applied: str) -> None:
    """The snapshot-controller's pod template is admitted by Pod Security 'restricted' as a Pod
    (enforced), and refused without its security context (the check is real)."""
    kc = crds_applied
    ns = _restricted_namespace(kc)
    (dep,) = [d for d in by_kind(render("csi.snapshotController.enabled=true", namespace=ns), "Deployment")
              if d["metadata"]["name"] == "nb-nasblade-snapshot-controller"]
    template = dep["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "snapshot-controller-probe", "namespace": ns,
                        "labels": template["metadata"]["labels"]},
           "spec": copy.deepcopy(template["spec"])}
    pod["spec"]["serviceAccountName"] = "default"
    r = _kubectl(kc, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr
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


@pytest.mark.tier1
def test_csi_examples_pass_the_api_server(crds_applied: str) -> None:
    """examples/csi: StorageClasses of the example DiskArray's driver (its name in namespace
    default), naming the example's group and shared file system, and claims, a VolumeSnapshot,
    a restore and a clone of them that the API server accepts (with the VolumeSnapshot CRDs)."""
    from nasblade_operator import naming

    def kubectl(*args: str) -> None:
        r = _kubectl(crds_applied, *args)
        assert r.returncode == 0, r.stderr

    array = next(d for d in yaml.safe_load_all((REPO / "examples" / "diskarray.yaml").read_text())
                 if d and d["kind"] == "DiskArray")
    docs = [d for p in sorted((REPO / "examples" / "csi").glob("*.yaml"))
            for d in yaml.safe_load_all(Path(p).read_text()) if d]
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StorageClass"}
    assert {c["provisioner"] for c in classes.values()} == {naming.csi_driver_name("default", array["metadata"]["name"])}
    assert classes["nasblade"]["parameters"]["clusterGroup"] in {f["clusterGroup"] for f in array["spec"]["fileSystems"]}
    assert classes["nasblade-dirs"]["parameters"]["fileSystem"] in {f["name"] for f in array["spec"]["fileSystems"]}
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert {c["spec"]["storageClassName"] for c in claims.values()} == set(classes)
    nbcluster.install_snapshot_crds(kubectl)
    ns = _restricted_namespace(crds_applied)
    r = _kubectl(crds_applied, "-n", ns, "create", "--dry-run=server", "-f", str(REPO / "examples" / "csi"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("(server dry run)") == len(docs)


def _adopt_crds(kc: str, names: list[str], *, release: str, namespace: str) -> None:
    """What docs/install.md tells users coming from a chart that shipped the CRDs in crds/ (or
    who applied them with kubectl): give the existing CRDs to the release (Helm's ownership
    label and annotations), so that the release takes them over instead of refusing them."""
    for name in names:
        r = _kubectl(kc, "label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
        assert r.returncode == 0, r.stderr
        r = _kubectl(kc, "annotate", "--overwrite", "crd", name, f"meta.helm.sh/release-name={release}",
                     f"meta.helm.sh/release-namespace={namespace}")
        assert r.returncode == 0, r.stderr


def _chart_with_own_crds(tmp_path: Path, group: str) -> tuple[Path, list[str]]:
    """A copy of the chart whose CRDs are in the API group ``group`` (so that a test's release
    owns CRDs of its own, not the session's nasblade.io ones, which belong to kubectl: see
    ``crds_applied``); returns the chart's path and the CRDs' names."""
    chart = tmp_path / "nasblade"
    shutil.copytree(CHART, chart)
    names: list[str] = []
    for path in (chart / "files" / "crds").glob("*.yaml"):
        text = path.read_text()
        text = re.sub(r"(?m)^(  name: [a-z]+)\.nasblade\.io$", rf"\1.{group}", text, count=1)
        text = re.sub(r"(?m)^  group: nasblade\.io$", f"  group: {group}", text, count=1)
        path.write_text(text)
        names.append(yaml.safe_load(text)["metadata"]["name"])
    assert sorted(names) == sorted(f"{n.split('.')[0]}.{group}" for n in _source_crds())
    return chart, names


@pytest.mark.tier1
def test_helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them(helm: Helm, tier1_kubeconfig: str,
                                                                 tmp_path: Path) -> None:
    """A real ``helm install`` / ``helm upgrade`` / ``helm uninstall`` on the tier-1 API server,
    with a copy of the chart whose CRDs are in a group of their own (the session's real
    nasblade.io CRDs belong to kubectl, see ``crds_applied``):

    - CRDs that exist without Helm's ownership (chart 0.1.0's crds/ folder, kubectl apply) are
      refused by ``helm install`` until adopted as docs/install.md says, then taken over and
      brought to the chart's schema;
    - an upgrade whose chart changes a CRD applies the change on the server;
    - ``crds.install=false`` on an upgrade, and ``helm uninstall``, leave the CRDs (keep)."""
    kc = tier1_kubeconfig
    tag = uuid.uuid4().hex[:6]
    group = f"up{tag}.nasblade.test"
    release, ns = f"up{tag}", f"chart-up-{tag}"
    chart, names = _chart_with_own_crds(tmp_path, group)
    crd_dir = chart / "files" / "crds"
    env = ("--namespace", ns, "--kubeconfig", kc)

    def ok(*args: str) -> None:
        r = helm(*args, check=False)
        assert r.returncode == 0, r.stdout + r.stderr

    def server_crd(name: str) -> dict[str, Any]:
        r = _kubectl(kc, "get", "crd", name, "-o", "json")
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    def da_spec_properties() -> dict[str, Any]:
        crd = server_crd(f"diskarrays.{group}")
        return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])

    def with_probe(path: Path, probe: str) -> str:
        """The CRD file with a new optional string field ``spec.<probe>`` (first version)."""
        doc = yaml.safe_load(path.read_text())
        doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][probe] = {
            "type": "string"}
        return yaml.safe_dump(doc, sort_keys=False)

    da = crd_dir / "diskarray.yaml"
    try:
        # CRDs from before the chart templated them (an older schema, with oldProbe): no Helm
        # ownership; adopted, the install brings them to the chart's schema
        r = _kubectl(kc, "apply", "--server-side", "-f", str(crd_dir / "clustergroup.yaml"))
        assert r.returncode == 0, r.stderr
        r = _kubectl(kc, "apply", "--server-side", "-f", "-", stdin=with_probe(da, "oldProbe"))
        assert r.returncode == 0, r.stderr
        assert "oldProbe" in da_spec_properties()
        r = helm("install", release, str(chart), *env, "--create-namespace", check=False)
        assert r.returncode != 0 and "invalid ownership metadata" in r.stderr, r.stdout + r.stderr
        _adopt_crds(kc, names, release=release, namespace=ns)
        ok("install", release, str(chart), *env, "--create-namespace")
        for name in names:
            assert server_crd(name)["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert "oldProbe" not in da_spec_properties() and "upgradeProbe" not in da_spec_properties()

        # the next chart version changes the DiskArray CRD (a new optional field)
        da.write_text(with_probe(da, "upgradeProbe"))
        rendered = helm("template", release, str(chart), "--kube-version", KUBE_VERSION).stdout
        assert "upgradeProbe" in rendered
        ok("upgrade", release, str(chart), *env)
        assert da_spec_properties()["upgradeProbe"] == {"type": "string"}

        # managed elsewhere from now on: the upgrade drops them from the release, not the cluster
        ok("upgrade", release, str(chart), *env, "--set", "crds.install=false")
        assert "upgradeProbe" in da_spec_properties()
        ok("uninstall", release, *env)
        for name in names:
            server_crd(name)  # still there
        assert "upgradeProbe" in da_spec_properties()
    finally:
        helm("uninstall", release, *env, check=False)
        for name in names:
            _kubectl(kc, "delete", "crd", name, "--ignore-not-found", "--wait=false")
        _kubectl(kc, "delete", "namespace", ns, "--ignore-not-found", "--wait=false")


@pytest.mark.tier1
def test_a_second_release_must_leave_the_crds_to_the_first(helm: Helm, tier1_kubeconfig: str,
                                                             tmp_path: Path) -> None:
    """Only one release owns the CRDs: with release A installed (crds.install=true), a second
    release B -- or A's name in another namespace -- that would install them too is refused
    by the chart's own check (``lookup`` of each CRD's Helm ownership annotations), with a
    message that names the owner and ``--set crds.install=false``; B with crds.install=false
    installs, and cannot take them by an upgrade either. A keeps them and upgrades as usual."""
    kc = tier1_kubeconfig
    tag = uuid.uuid4().hex[:6]
    chart, names = _chart_with_own_crds(tmp_path, f"own{tag}.nasblade.test")
    owner, owner_ns = f"own{tag}", f"chart-own-{tag}"
    second, second_ns = f"second{tag}", f"chart-second-{tag}"
    releases = ((owner, owner_ns), (second, second_ns), (owner, second_ns))

    def run(verb: str, release: str, ns: str, *values: str) -> subprocess.CompletedProcess[str]:
        argv = [verb, release, str(chart), "--namespace", ns, "--kubeconfig", kc]
        argv += ["--create-namespace"] if verb == "install" else []
        for v in values:
            argv += ["--set", v]
        return helm(*argv, check=False)

    def refused(r: subprocess.CompletedProcess[str], release: str, ns: str) -> None:
        assert r.returncode != 0, r.stdout
        assert (f'belongs to the Helm release "{owner}" in the namespace "{owner_ns}"' in r.stderr
                and f'this release ("{release}" in "{ns}") with --set crds.install=false' in r.stderr), r.stderr
        assert "invalid ownership metadata" not in r.stderr, r.stderr  # the chart said it first

    def owners() -> set[tuple[str, str]]:
        found = set()
        for name in names:
            r = _kubectl(kc, "get", "crd", name, "-o", "json")
            assert r.returncode == 0, r.stderr
            ann = json.loads(r.stdout)["metadata"]["annotations"]
            found.add((ann["meta.helm.sh/release-name"], ann["meta.helm.sh/release-namespace"]))
        return found

    try:
        r = run("install", owner, owner_ns)
        assert r.returncode == 0, r.stdout + r.stderr
        assert owners() == {(owner, owner_ns)}
        refused(run("install", second, second_ns), second, second_ns)
        refused(run("install", owner, second_ns), owner, second_ns)  # same name, other namespace
        # (CSI, like the CRDs, has one release per cluster: the second runs none)
        r = run("install", second, second_ns, "crds.install=false", "csi.enabled=false")
        assert r.returncode == 0, r.stdout + r.stderr
        refused(run("upgrade", second, second_ns, "crds.install=true", "csi.enabled=false"), second, second_ns)
        r = run("upgrade", owner, owner_ns)
        assert r.returncode == 0, r.stdout + r.stderr
        assert owners() == {(owner, owner_ns)}
    finally:
        for release, ns in releases:
            helm("uninstall", release, "--namespace", ns, "--kubeconfig", kc, check=False)
        for name in names:
            _kubectl(kc, "delete", "crd", name, "--ignore-not-found", "--wait=false")
        for ns in (owner_ns, second_ns):
            _kubectl(kc, "delete", "namespace", ns, "--ignore-not-found", "--wait=false")


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
    cluster_wide = set(_rules(operator_role(render("leaderElection.enabled=true", api_versions=PEERING_API))))
    assert documented - cluster_wide == set()
    objs = render("watchNamespaces={team-a}", "leaderElection.enabled=true", api_versions=PEERING_API)
    narrow = set(_rules(operator_role(objs))) | set(_rules(one(objs, "Role")))
    missing = {(g, r, v) for g, r, v in documented - narrow if r != "clusterkopfpeerings"}
    assert missing == set()


# ---------------------------------------------------------------- alerts and dashboard

PROM_RULE_API = "monitoring.coreos.com/v1/PrometheusRule"
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "gauge": ("",), "summary": ("_count", "_sum", "_created")}


def _exported_metric_names() -> set[str]:
    """Every sample name the operator's /metrics can carry (its registry, data-plane gauges
    included), and those of the controllers' and blades' own /v1/metrics (``metrics.arrays``;
    their modules declare their families, and their tests hold each scrape to that)."""
    from nasblade.blockproc import metrics as blade_metrics
    from nasblade.controller import metrics as controller_metrics
    from nasblade_operator import datametrics, metrics  # noqa: F401 - datametrics registers its gauges

    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names |= {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
    for name, kind in (*controller_metrics.FAMILIES.items(), *blade_metrics.FAMILIES.items()):
        names |= {name + s for s in _SUFFIXES.get(kind, ("",))}
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(nasblade_[a-z_]+)\b", expr))


def _alerts_file() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "files" / "alerts.yaml").read_text()))


def test_prometheus_rule_and_dashboard_render(render: Render, helm: Helm) -> None:
    objs = render("metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.release=prom",
                  "metrics.dashboard.enabled=true", api_versions=(PROM_RULE_API,))
    rule = one(objs, "PrometheusRule")
    assert rule["spec"] == _alerts_file()
    assert rule["metadata"]["labels"]["release"] == "prom"
    cm = one(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["nasblade.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())
    assert not by_kind(render(), "PrometheusRule") and not by_kind(render(), "ConfigMap")
    r = helm("template", "nb", str(CHART), "--kube-version", KUBE_VERSION,
             "--set", "metrics.prometheusRule.enabled=true", check=False)
    assert r.returncode != 0 and "no monitoring.coreos.com/v1 PrometheusRule API" in r.stderr


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    """Every nasblade_* name in an alert or a dashboard query is one the operator exports, and
    docs/operator.md lists each family (the check fails on a made-up name)."""
    exported = _exported_metric_names()
    assert "nasblade_filesystem_served" in exported and "nasblade_operator_failovers_total" in exported
    assert _metric_names("rate(nasblade_made_up_total[5m])") - exported == {"nasblade_made_up_total"}
    exprs = [r["expr"] for g in _alerts_file()["groups"] for r in g["rules"]]
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert len(used) >= 15
    assert used - exported == set()
    docs = (REPO / "docs" / "operator.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert {f for f in families if f not in docs} == set()


@pytest.fixture(scope="session")
def promtool() -> Path:
    binary = nbcluster.BIN_ROOT / f"promtool-{nbcluster.VERSIONS['PROMETHEUS_VERSION']}" / "promtool"
    if not binary.exists():
        subprocess.run([str(REPO / "tools" / "kube" / "build.sh"), "promtool"], check=True, timeout=3600)
    return binary


@pytest.mark.slow  # the first run builds promtool from the Go module proxy (long on 2 cores)
@pytest.mark.timeout(3600)
def test_alert_rules_fire_in_promtool(render: Render, promtool: Path, tmp_path: Path) -> None:
    """`promtool check rules` and `promtool test rules` (tests/chart/alerts_test.yaml) on the
    rules of the rendered PrometheusRule: each alert fires when it should and not before."""
    rule = one(render("metrics.prometheusRule.enabled=true", api_versions=(PROM_RULE_API,)), "PrometheusRule")
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rule["spec"]))
    (tmp_path / "alerts_test.yaml").write_text((Path(__file__).parent / "alerts_test.yaml").read_text())
    r = subprocess.run([str(promtool), "check", "rules", "alerts.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS: 10 rules found" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(promtool), "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # the test is real: an alert that should fire but whose rule is gone fails it
    broken = {"groups": [{"name": "nasblade", "rules": [r for r in rule["spec"]["groups"][0]["rules"]
                                                         if r["alert"] != "NasbladeBladeDown"]}]}
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(broken))
    r = subprocess.run([str(promtool), "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "NasbladeBladeDown" in r.stdout + r.stderr


# ---------------------------------------------------------------- checkov


@pytest.fixture(scope="session")
def checkov() -> Path:
    binary = nbcluster.CACHE / "tools" / f"checkov-{nbcluster.VERSIONS['CHECKOV_VERSION']}" / "bin" / "checkov"
    if not binary.exists():
        subprocess.run([str(REPO / "tools" / "kube" / "build.sh"), "checkov"], check=True, timeout=1800)
    return binary


@pytest.mark.slow  # checkov takes minutes on this machine (and is installed on first use)
@pytest.mark.timeout(3600)
def test_checkov(helm: Helm, checkov: Path, tmp_path: Path) -> None:
    """checkov (PyPI) on everything the chart renders (all options on, every image pinned by
    digest as a production install is) and on the pods, policies and budget the operator makes
    from it: every finding is fixed or listed with its reason in charts/nasblade/checkov-skips.yaml,
    and every listed one still occurs (no stale excuses). None of the listed ones is about
    resources, pulling or ServiceAccount tokens."""
    from nasblade_operator import policies
    from nasblade_operator.clustergroup import builders as cg_builders
    from nasblade_operator.clustergroup import spec as cg_spec
    from nasblade_operator.diskarray import builders as da_builders
    from nasblade_operator.diskarray import csi as da_csi
    from nasblade_operator.diskarray import spec as da_spec

    array = da_spec.parse({"devices": {"count": 1, "size": "1Gi"}, "fileSystems": [
        {"name": "home", "size": "64Mi", "clusterGroup": "g1", "exports": [{"clients": ["10.0.0.0/8"]}]}],
        "csi": {"enabled": True, "clusterGroup": "g1"}})
    group = cg_spec.parse({"diskArrayRef": {"name": "a1"}})
    image = f"nasblade/nasblade:0.1.0@{DIGEST}"  # what image.digest makes NASBLADE_IMAGE
    pinned = {name: f"{ref}@{DIGEST}" for name, ref in (
        ("snapshotter", SNAPSHOTTER_IMAGE), ("snapshotController", SNAPSHOT_CONTROLLER_IMAGE),
        ("provisioner", "registry.k8s.io/sig-storage/csi-provisioner:v5.3.0"),
        ("resizer", "registry.k8s.io/sig-storage/csi-resizer:v1.14.0"))}
    blade = cg_builders.blade_pod(group="g1", namespace="storage", index=0, spec=group, portion=0,
                                  portion_size=2**20, version="0.1.0", image=image,
                                  file_systems=array.file_systems_of("g1"),
                                  slots={f.name: i for i, f in enumerate(array.file_systems_of("g1"))})

    argv = ["template", "nb", str(CHART), "--namespace", "nasblade-system", "--kube-version", KUBE_VERSION,
            "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboard.enabled=true",
            "--set", "metrics.serviceMonitor.enabled=true", "--set", "csi.node.enabled=true",
            "--set", "csi.snapshotController.enabled=true", "--api-versions", PROM_RULE_API,
            "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--api-versions", SNAPSHOT_CLASS_API,
            "--set", f"image.digest={DIGEST}"]
    for name, ref in pinned.items():
        argv += ["--set", f"csi.{name}.image={ref}"]
    rendered = helm(*argv).stdout
    assert f"nasblade/nasblade:0.1.0@{DIGEST}" in rendered
    (tmp_path / "chart.yaml").write_text(rendered)
    made = [blade, da_builders.controller_statefulset("a1", array, image=image),
            *policies.array_policies("a1", operator_namespace="nasblade-system", operator_labels={"a": "b"}),
            policies.blade_policy(array="a1", group="g1", clients=["10.0.0.0/8"], operator_namespace="nasblade-system",
                                  operator_labels={"a": "b"}, nfs_slots=[0]),
            policies.disruption_budget(array="a1", group="g1", blades=2),
            # the CSI controller plugin of a DiskArray with spec.csi, and its csi-snapshotter sidecar
            da_csi.deployment("storage", "a1", array, image=image, snapshotter=pinned["snapshotter"],
                              provisioner=pinned["provisioner"], resizer=pinned["resizer"]),
            da_csi.service_account("a1"), da_csi.role_binding("storage", "a1", role="nb-nasblade-csi-controller")]
    for obj in made:
        obj["metadata"]["namespace"] = "storage"
    (tmp_path / "operator-made.yaml").write_text(yaml.safe_dump_all(made))
    r = subprocess.run([str(checkov), "-d", str(tmp_path), "--framework", "kubernetes", "--quiet", "--compact",
                        "-o", "json"], capture_output=True, text=True, timeout=900)
    reports = json.loads(r.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(f["check_id"], f["resource"]) for rep in reports for f in rep["results"]["failed_checks"]]
    passed = sum(rep["summary"]["passed"] for rep in reports)
    assert passed > 100, r.stderr  # it really scanned the objects
    skips = yaml.safe_load((CHART / "checkov-skips.yaml").read_text())
    assert all(isinstance(v, str) and len(v) > 40 for v in skips.values()), "every skip needs its reason"
    # requests and limits, image tag and digest, pull policy, ServiceAccount tokens: no excuse taken
    assert not set(skips) & {"CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13", "CKV_K8S_14",
                             "CKV_K8S_15", "CKV_K8S_38", "CKV_K8S_43"}
    unexplained = sorted({f for f in failed if f[0] not in skips})
    assert unexplained == [], unexplained
    assert sorted(set(skips) - {c for c, _ in failed}) == [], "stale entries in checkov-skips.yaml"
