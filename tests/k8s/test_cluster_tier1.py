"""Tier 1: a real kube-apiserver (+ etcd, kube-controller-manager) and kwok."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.tier1

GROUP = "test.nasblade.io"


def _crd(plural: str) -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget" + plural[-4:]},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size", "mode"],
                            "properties": {
                                "size": {"type": "integer", "minimum": 1, "maximum": 64},
                                "mode": {"type": "string", "enum": ["nfs", "nbd"]},
                                "labels": {"type": "object",
                                           "additionalProperties": {"type": "string"}},
                            },
                        },
                        "status": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }


def _wait_established(api: client.ApiClient, name: str, timeout: float = 30) -> None:
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(name)
        conds = {c.type: c.status for c in (crd.status.conditions or [])}
        if conds.get("Established") == "True":
            return
        time.sleep(0.2)
    raise AssertionError(f"CRD {name} not established")


def test_server_is_the_pinned_version(tier1_api: client.ApiClient) -> None:
    v = client.VersionApi(tier1_api).get_code()
    assert v.git_version.startswith("v1.3"), v.git_version
    assert v.major == "1"


def test_crd_structural_schema_accepts_valid_and_refuses_invalid(
        tier1_api: client.ApiClient, tier1_ns: str) -> None:
    plural = f"w{uuid.uuid4().hex[:6]}s"
    body = _crd(plural)
    ext = client.ApiextensionsV1Api(tier1_api)
    ext.create_custom_resource_definition(body)
    try:
        _wait_established(tier1_api, body["metadata"]["name"])
        kind = body["spec"]["names"]["kind"]
        co = client.CustomObjectsApi(tier1_api)
        ok = {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": {"name": "good"},
              "spec": {"size": 3, "mode": "nfs", "labels": {"a": "b"},
                       "unknownField": "pruned"}}
        created = co.create_namespaced_custom_object(GROUP, "v1", tier1_ns, plural, ok)
        assert created["spec"]["size"] == 3
        # structural schemas prune unknown fields
        assert "unknownField" not in created["spec"]

        bad_objects = [
            {"size": 0, "mode": "nfs"},          # below minimum
            {"size": 3, "mode": "smb"},          # not in enum
            {"size": "three", "mode": "nfs"},    # wrong type
            {"mode": "nfs"},                     # missing required
        ]
        for i, spec in enumerate(bad_objects):
            bad = {"apiVersion": f"{GROUP}/v1", "kind": kind,
                   "metadata": {"name": f"bad{i}"}, "spec": spec}
            with pytest.raises(ApiException) as exc:
                co.create_namespaced_custom_object(GROUP, "v1", tier1_ns, plural, bad)
            assert exc.value.status == 422, (spec, exc.value.body)
            assert json.loads(exc.value.body)["reason"] == "Invalid"
        names = [o["metadata"]["name"] for o in
                 co.list_namespaced_custom_object(GROUP, "v1", tier1_ns, plural)["items"]]
        assert names == ["good"]
    finally:
        ext.delete_custom_resource_definition(body["metadata"]["name"])


MANIFEST = """
apiVersion: v1
kind: ConfigMap
metadata: {name: dry-cm}
data: {k: v}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: dry-deploy}
spec:
  replicas: 1
  selector: {matchLabels: {app: dry}}
  template:
    metadata: {labels: {app: dry}}
    spec:
      containers: [{name: c, image: "nasblade/base:bookworm-1"}]
"""


def test_server_side_dry_run(tier1_cluster, tier1_ns: str) -> None:  # type: ignore[no-untyped-def]
    r = tier1_cluster.kubectl("apply", "-n", tier1_ns, "--server-side", "--dry-run=server",
                              "-f", "-", input=MANIFEST)
    assert "configmap/dry-cm serverside-applied (server dry run)" in r.stdout
    assert "deployment.apps/dry-deploy serverside-applied (server dry run)" in r.stdout
    # nothing was persisted
    r = tier1_cluster.kubectl("get", "-n", tier1_ns, "configmap,deployment", "-o", "name")
    assert "dry-cm" not in r.stdout and "dry-deploy" not in r.stdout
    # server-side validation runs in dry-run too: an invalid Deployment is refused
    bad = MANIFEST.replace("replicas: 1", "replicas: -1")
    r = tier1_cluster.kubectl("apply", "-n", tier1_ns, "--server-side", "--dry-run=server",
                              "-f", "-", input=bad, check=False)
    assert r.returncode != 0
    assert "spec.replicas" in r.stderr
    # and a real apply persists
    tier1_cluster.kubectl("apply", "-n", tier1_ns, "--server-side", "-f", "-", input=MANIFEST)
    r = tier1_cluster.kubectl("get", "-n", tier1_ns, "configmap/dry-cm", "-o", "name")
    assert r.stdout.strip() == "configmap/dry-cm"


def test_controller_manager_garbage_collects(tier1_api: client.ApiClient,
                                             tier1_ns: str) -> None:
    core = client.CoreV1Api(tier1_api)
    owner = core.create_namespaced_config_map(tier1_ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    core.create_namespaced_config_map(tier1_ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="child", owner_references=[client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)])))
    core.delete_namespaced_config_map("owner", tier1_ns)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_config_map("child", tier1_ns)
        except ApiException as e:
            assert e.status == 404
            return
        time.sleep(0.5)
    raise AssertionError("dependent ConfigMap was not garbage-collected")


def test_kwok_fake_node_runs_pods(kwok, tier1_api: client.ApiClient,  # type: ignore[no-untyped-def]
                                  tier1_ns: str) -> None:
    core = client.CoreV1Api(tier1_api)
    node = f"kwok-{uuid.uuid4().hex[:6]}"
    core.create_node(client.V1Node(
        metadata=client.V1ObjectMeta(name=node, annotations={"kwok.x-k8s.io/node": "fake"},
                                     labels={"type": "kwok"}),
        spec=client.V1NodeSpec(taints=[client.V1Taint(key="kwok.x-k8s.io/node",
                                                      value="fake", effect="NoSchedule")])))
    try:
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="fake-pod"),
            spec=client.V1PodSpec(
                node_name=node,
                tolerations=[client.V1Toleration(key="kwok.x-k8s.io/node", operator="Exists",
                                                 effect="NoSchedule")],
                containers=[client.V1Container(name="c", image="nasblade/base:bookworm-1")]))
        core.create_namespaced_pod(tier1_ns, pod)
        deadline = time.monotonic() + 60
        ready = phase = None
        while time.monotonic() < deadline:
            n = core.read_node(node)
            ready = {c.type: c.status for c in (n.status.conditions or [])}.get("Ready")
            phase = core.read_namespaced_pod("fake-pod", tier1_ns).status.phase
            if ready == "True" and phase == "Running":
                return
            time.sleep(0.5)
        raise AssertionError(f"kwok: node Ready={ready}, pod phase={phase}")
    finally:
        core.delete_namespaced_pod("fake-pod", tier1_ns, grace_period_seconds=0)
        core.delete_node(node)
