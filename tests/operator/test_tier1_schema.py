"""The CRDs against the real API server: defaults, CEL rules, rejections (tier 1, no operator)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Kubectl

pytestmark = pytest.mark.tier1


def array(name: str = "a1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"devices": {"size": "1Gi"}}
    body.update(spec)
    return {"apiVersion": "nasblade.io/v1alpha1", "kind": "DiskArray", "metadata": {"name": name}, "spec": body}


def group(name: str = "g1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"diskArrayRef": {"name": "a1"}}
    body.update(spec)
    return {"apiVersion": "nasblade.io/v1alpha1", "kind": "ClusterGroup", "metadata": {"name": name}, "spec": body}


def test_defaults_are_applied(kubectl: Kubectl) -> None:
    kubectl.apply(array(fileSystems=[{"name": "home", "size": "64Mi", "clusterGroup": "g1",
                                      "exports": [{"clients": ["10.0.0.0/8"]}]}]))
    kubectl.apply(group())
    a = kubectl.get("diskarray", "a1")
    assert a is not None
    s = a["spec"]
    assert s["devices"]["count"] == 2 and s["deletionPolicy"] == "Retain"
    assert s["controller"]["cacheSize"] == "256Mi" and s["software"]["version"] == "0.1.0"
    assert s["fileSystems"][0]["exports"][0] == {"clients": ["10.0.0.0/8"], "access": "rw", "squash": "root"}
    g = kubectl.get("cg", "g1")
    assert g is not None
    assert g["spec"]["heartbeat"] == {"interval": "200ms", "failureTimeout": "3s"}
    assert g["spec"]["failover"] == {"policy": "Automatic", "giveBack": "Automatic"}
    assert kubectl("get", "da").stdout.split()[:7] == ["NAME", "READY", "REASON", "DEVICES", "REDUNDANCY", "DEVICE-SIZE", "FILESYSTEMS"]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (array(devices={"size": "lots"}), "must be a positive quantity"),
        (array(devices={"size": "1Gi", "count": 0}), "spec.devices.count"),
        (array(deletionPolicy="Shred"), "spec.deletionPolicy"),
        (array(fileSystems=[{"name": "Home", "size": "1Gi", "clusterGroup": "g"}]), "spec.fileSystems[0].name"),
        (array(fileSystems=[{"name": "h", "size": "1Gi"}]), "clusterGroup: Required value"),
        (array(fileSystems=[{"name": "h", "size": "1Gi", "clusterGroup": "g", "exports": [{"clients": ["10.0.0.0/33"]}]}]),
         "every client must be a CIDR"),
        (array(areas={"processorInfoSize": "64Mi", "backupSize": "32Mi"}), "backupSize must be at least processorInfoSize"),
        (group(heartbeat={"interval": "1s", "failureTimeout": "2s"}), "at least three heartbeat intervals"),
        (group(failover={"policy": "Sometimes"}), "spec.failover.policy"),
        (group(backup={"interval": "1s"}), "at least 10s"),
        (group(backup={"interval": "1h", "maxAge": "10m"}), "maxAge must be at least the interval"),
        (group(diskArrayRef={}), "spec.diskArrayRef.name: Required value"),
    ],
)
def test_invalid_objects_are_refused(kubectl: Kubectl, obj: dict[str, Any], message: str) -> None:
    r = kubectl.apply(obj, check=False)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_immutable_fields(kubectl: Kubectl) -> None:
    kubectl.apply(array(fileSystems=[{"name": "home", "size": "64Mi", "clusterGroup": "g1"}]))
    r = kubectl.apply(array(devices={"size": "2Gi"}, fileSystems=[{"name": "home", "size": "64Mi", "clusterGroup": "g1"}]), check=False)
    assert "devices cannot change after creation" in r.stderr
    r = kubectl.apply(array(fileSystems=[{"name": "home", "size": "32Mi", "clusterGroup": "g1"}]), check=False)
    assert "can grow but not shrink" in r.stderr
    kubectl.apply(group())
    r = kubectl.apply(group(diskArrayRef={"name": "other"}), check=False)
    assert "diskArrayRef cannot change" in r.stderr
