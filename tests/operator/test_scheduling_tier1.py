"""The blades of a group on a real scheduler (issue 16): a private control plane with
kube-scheduler, kube-controller-manager (the disruption controller) and kwok nodes.

Two kwok nodes: the two blade pods the builders make land on different nodes (the default
``spread: Preferred``). A drain of a node, done as ``kubectl drain`` does it (the Eviction
API), evicts one blade; the group's PodDisruptionBudget then refuses to evict the other while
its partner is gone (HTTP 429), so a drain never takes a whole group down.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbcluster
import pytest
from nasblade_operator import policies
from nasblade_operator.clustergroup import builders as cg_builders
from nasblade_operator.clustergroup import spec as cg_spec
from nasblade_operator.diskarray import spec as da_spec

pytestmark = pytest.mark.tier1

NS = "sched"
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nbcluster.ControlPlane]:
    nbcluster.ensure_built("tier1")
    cp = nbcluster.ControlPlane(tmp_path_factory.mktemp("sched"), controller_manager=True, scheduler=True)
    try:
        cp.start()
        cp.start_kwok()
        yield cp
    finally:
        cp.stop()


def kubectl(cp: nbcluster.ControlPlane, *args: str, input: str | None = None, check: bool = True) -> str:
    r = subprocess.run([str(nbcluster.k8s_bin("kubectl")), "--kubeconfig", str(cp.kubeconfig), *args],
                       capture_output=True, text=True, input=input, timeout=120, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {r.stderr}")
    return r.stdout + r.stderr


def wait(what: str, fn: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"type": "kwok", "kubernetes.io/hostname": name}},
            "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]}}


def test_blades_spread_and_a_drain_keeps_one(plane: nbcluster.ControlPlane, tmp_path: Path) -> None:
    kubectl(plane, "create", "namespace", NS)
    # kube-controller-manager makes the namespace's default ServiceAccount; pods wait for it
    wait("default ServiceAccount", lambda: "default" in kubectl(plane, "-n", NS, "get", "sa", check=False))
    for n in ("kwok-a", "kwok-b"):
        kubectl(plane, "apply", "-f", "-", input=json.dumps(node(n)))
    wait("two Ready kwok nodes", lambda: kubectl(plane, "get", "nodes", "--no-headers").count(" Ready") == 2)
    array = da_spec.parse({"devices": {"size": "1Gi"}, "fileSystems": [
        {"name": "home", "size": "64Mi", "clusterGroup": "g1"}]})
    group = cg_spec.parse({"diskArrayRef": {"name": "a1"}, "blades": {"count": 2, "tolerations": [KWOK_TAINT]}})
    objs = [cg_builders.blade_pod(group="g1", namespace=NS, index=i, spec=group, portion=0, portion_size=2**20,
                                  version="0.1.0", image="nasblade/nasblade:0.1.0",
                                  file_systems=array.file_systems_of("g1"), slots={"home": 0}) for i in range(2)]
    objs.append(policies.disruption_budget(array="a1", group="g1", blades=2))
    for obj in objs:
        kubectl(plane, "-n", NS, "create", "-f", "-", input=json.dumps(obj))

    def placed() -> dict[str, str]:
        pods = json.loads(kubectl(plane, "-n", NS, "get", "pods", "-o", "json"))["items"]
        out = {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods}
        running = all(p["status"].get("phase") == "Running" for p in pods)
        return out if len(out) == 2 and all(out.values()) and running else {}

    where = wait("both blades scheduled and Running", placed)
    assert sorted(where.values()) == ["kwok-a", "kwok-b"], where  # apart, not on one node

    def budget() -> dict[str, Any]:
        pdb = json.loads(kubectl(plane, "-n", NS, "get", "pdb", "g1-blades", "-o", "json"))
        st = pdb.get("status", {})
        return dict(st) if st.get("currentHealthy") == 2 and st.get("disruptionsAllowed") == 1 else {}

    wait("the budget counting two healthy blades", budget)

    def evict(pod: str) -> str:
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": NS}}
        return kubectl(plane, "create", "--raw", f"/api/v1/namespaces/{NS}/pods/{pod}/eviction", "-f", "-",
                       input=json.dumps(eviction), check=False)

    # drain kwok-a: cordon, then evict what runs there (as `kubectl drain` does)
    kubectl(plane, "cordon", "kwok-a")
    first = next(p for p, n in where.items() if n == "kwok-a")
    other = next(p for p in where if p != first)
    out = evict(first)
    assert "TooManyRequests" not in out and "Error" not in out, out
    wait(f"{first} gone", lambda: first not in kubectl(plane, "-n", NS, "get", "pods", "-o", "name"))
    wait("the budget seeing one blade", lambda: json.loads(kubectl(plane, "-n", NS, "get", "pdb", "g1-blades",
                                                                   "-o", "json")).get("status", {}).get(
        "disruptionsAllowed") == 0)
    # the partner is the group's survivor: the budget refuses to evict it (a drain of its node waits)
    out = evict(other)
    assert "Cannot evict pod as it would violate the pod's disruption budget" in out or "429" in out, out
    assert other in kubectl(plane, "-n", NS, "get", "pods", "-o", "name")
