"""Tier 2: the CSI node plugin registers itself with a real kubelet (``nasblade_csi.registration``,
the node-driver-registrar's job, whose module the Go proxy does not serve here).

The node plugin runs on this host, which is the local tier-2 cluster's node: its registration
socket goes into the kubelet's ``plugins_registry``, the kubelet asks it for its info, calls
``NodeGetInfo`` on the driver's socket and lists the driver in the node's CSINode. Stopping the
plugin removes the socket and the kubelet drops it again. (A kind cluster's kubelets run in
their own containers, whose directories this host does not see: there the same plugin runs
in the chart's node DaemonSet.)

Each DiskArray has a driver name of its own, and the one node plugin registers them all: a
name given with ``--register-driver`` and the names of the CSIDriver objects
``--register-drivers-labelled`` selects (listed through this cluster's API server), each
through its own socket; deleting a CSIDriver object unregisters its name, the others stay.

With ``--topology-keys`` the plugin's ``NodeGetInfo`` reports the node's labels of those keys
(read from its Node object): the kubelet lists the keys in the CSINode's driver entry.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from nasblade import ready
from test_cluster_tier2 import wait_until

pytestmark = pytest.mark.tier2

REGISTRY = Path("/var/lib/kubelet/plugins_registry")
PLUGIN_DIR = Path("/var/lib/kubelet/plugins/nas.nasblade.io")


def local_kubelet(e2e_api: client.ApiClient) -> tuple[str, Callable[[], dict[str, str]]]:
    """This host's node, and a function that reads the drivers of its CSINode (name: node ID)."""
    if os.environ.get("NASBLADE_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG"):
        pytest.skip("the kubelet of a cluster given by KUBECONFIG does not run on this host")
    assert REGISTRY.is_dir(), "the local tier-2 kubelet has no plugins_registry"
    storage = client.StorageV1Api(e2e_api)
    meta = client.CoreV1Api(e2e_api).list_node().items[0].metadata
    assert meta is not None and meta.name
    node: str = meta.name

    def drivers() -> dict[str, str]:
        try:  # raw JSON: the client's model refuses the "drivers": null of a node without any
            response: Any = storage.read_csi_node(node, _preload_content=False)
            raw = json.loads(response.data)
        except client.ApiException:
            return {}
        return {d["name"]: d.get("nodeID", "") for d in raw.get("spec", {}).get("drivers") or []}

    return node, drivers


def test_node_plugin_registers_with_the_kubelet_and_leaves(e2e_api: client.ApiClient, tmp_path: Path) -> None:
    node, drivers = local_kubelet(e2e_api)
    assert "nas.nasblade.io" not in drivers()
    endpoint = PLUGIN_DIR / "csi.sock"
    with open(tmp_path / "csi-node.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nasblade_csi.main", "--role", "node",
                                 "--endpoint", f"unix://{endpoint}", "--node-id", f"{node}-test",
                                 "--registration-dir", str(REGISTRY)], stdout=subprocess.PIPE, stderr=log)
        try:
            ready.wait_ready(proc, timeout=60)
            assert (REGISTRY / "nas.nasblade.io-reg.sock").exists()
            wait_until("the driver in the node's CSINode",
                       lambda: drivers().get("nas.nasblade.io") == f"{node}-test")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert proc.returncode == 0, (tmp_path / "csi-node.log").read_text()[-2000:]
    assert not (REGISTRY / "nas.nasblade.io-reg.sock").exists()
    wait_until("the driver gone from the CSINode", lambda: "nas.nasblade.io" not in drivers())
    assert "the kubelet registered nas.nasblade.io" in (tmp_path / "csi-node.log").read_text()


def test_node_plugin_registers_every_driver_name(e2e_api: client.ApiClient, e2e_kubeconfig: str,
                                                 tmp_path: Path) -> None:
    """One name from ``--register-driver``, one from a labelled CSIDriver object: both in the
    CSINode; the object deleted, its name leaves the CSINode and the other stays."""
    node, drivers = local_kubelet(e2e_api)
    storage = client.StorageV1Api(e2e_api)
    run = uuid.uuid4().hex[:8]
    static, labelled = f"s{run}.test.nasblade.io", f"l{run}.test.nasblade.io"
    # a label of this run's own besides the operator's: the plugin registers no other driver
    selector = f"nasblade.io/csi-driver=true,nasblade.io/test-run={run}"
    storage.create_csi_driver(client.V1CSIDriver(
        metadata=client.V1ObjectMeta(name=labelled, labels={"nasblade.io/csi-driver": "true",
                                                              "nasblade.io/test-run": run}),
        spec=client.V1CSIDriverSpec(attach_required=False)))
    plugin_dir = REGISTRY.parent / "plugins" / f"test-{run}"  # not the socket of a real node plugin
    log_path = tmp_path / "csi-node.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nasblade_csi.main", "--role", "node",
                 "--endpoint", f"unix://{plugin_dir / 'csi.sock'}", "--node-id", f"{node}-test",
                 "--registration-dir", str(REGISTRY), "--register-driver", static,
                 "--register-drivers-labelled", selector, "--register-poll", "1"],
                stdout=subprocess.PIPE, stderr=log, env={**os.environ, "KUBECONFIG": e2e_kubeconfig})
            try:
                ready.wait_ready(proc, timeout=60)
                assert (REGISTRY / f"{static}-reg.sock").exists() and (REGISTRY / f"{labelled}-reg.sock").exists()
                wait_until("both drivers in the node's CSINode",
                           lambda: {static, labelled} <= {n for n, i in drivers().items() if i == f"{node}-test"})

                storage.delete_csi_driver(labelled)
                wait_until("the deleted driver's socket gone", lambda: not (REGISTRY / f"{labelled}-reg.sock").exists(),
                           timeout=30)
                wait_until("the deleted driver gone from the CSINode", lambda: labelled not in drivers())
                assert drivers().get(static) == f"{node}-test"
                assert (REGISTRY / f"{static}-reg.sock").exists()
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    finally:
        try:
            storage.delete_csi_driver(labelled)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        shutil.rmtree(plugin_dir, ignore_errors=True)
    text = log_path.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert not (REGISTRY / f"{static}-reg.sock").exists()
    wait_until("the other driver gone from the CSINode", lambda: static not in drivers())
    assert f"the kubelet registered {static}" in text and f"the kubelet registered {labelled}" in text
    assert "cannot list the CSIDriver objects" not in text, text[-2000:]


def test_node_plugin_reports_the_nodes_topology(e2e_api: client.ApiClient, e2e_kubeconfig: str,
                                                tmp_path: Path) -> None:
    """The node labelled with a zone (kept if it has one), the plugin run with that key and one
    the node has no label for: the CSINode's driver entry has the zone's key alone."""
    node, drivers = local_kubelet(e2e_api)
    core, storage = client.CoreV1Api(e2e_api), client.StorageV1Api(e2e_api)
    zone_key = "topology.kubernetes.io/zone"
    run = uuid.uuid4().hex[:8]
    name = f"z{run}.test.nasblade.io"
    labels = core.read_node(node).metadata.labels or {}
    labelled = zone_key not in labels  # a zone the node has already is kept as it is
    if labelled:
        core.patch_node(node, {"metadata": {"labels": {zone_key: f"zone-{run}"}}})

    def entry() -> dict[str, Any]:
        raw = json.loads(storage.read_csi_node(node, _preload_content=False).data)
        return next((d for d in raw.get("spec", {}).get("drivers") or [] if d["name"] == name), {})

    plugin_dir = REGISTRY.parent / "plugins" / f"test-{run}"
    log_path = tmp_path / "csi-node.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nasblade_csi.main", "--role", "node",
                 "--endpoint", f"unix://{plugin_dir / 'csi.sock'}", "--node-id", node,
                 "--registration-dir", str(REGISTRY), "--register-driver", name,
                 "--topology-keys", f"{zone_key},example.nasblade.io/rack-{run}"],
                stdout=subprocess.PIPE, stderr=log, env={**os.environ, "KUBECONFIG": e2e_kubeconfig})
            try:
                ready.wait_ready(proc, timeout=60)
                wait_until("the driver in the node's CSINode", entry)
                assert entry().get("nodeID") == node
                assert entry().get("topologyKeys") == [zone_key]
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        wait_until("the driver gone from the CSINode", lambda: name not in drivers())
    finally:
        shutil.rmtree(plugin_dir, ignore_errors=True)
        if labelled:
            core.patch_node(node, {"metadata": {"labels": {zone_key: None}}})
    text = log_path.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert f"the kubelet registered {name}" in text and "cannot read the labels" not in text, text[-2000:]
