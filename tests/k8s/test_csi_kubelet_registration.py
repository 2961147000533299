"""Tier 2: the CSI node plugin registers itself with a real kubelet (``nasblade_csi.registration``,
the node-driver-registrar's job, whose module the Go proxy does not serve here).

The node plugin runs on this host, which is the local tier-2 cluster's node: its registration
socket goes into the kubelet's ``plugins_registry``, the kubelet asks it for its info, calls
``NodeGetInfo`` on the driver's socket and lists the driver in the node's CSINode. Stopping the
plugin removes the socket and the kubelet drops it again. (A kind cluster's kubelets run in
their own containers, whose directories this host does not see: there the same plugin runs
in the chart's node DaemonSet.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from nasblade import ready
from test_cluster_tier2 import wait_until

pytestmark = pytest.mark.tier2

REGISTRY = Path("/var/lib/kubelet/plugins_registry")
PLUGIN_DIR = Path("/var/lib/kubelet/plugins/nas.nasblade.io")


def test_node_plugin_registers_with_the_kubelet_and_leaves(e2e_api: client.ApiClient, tmp_path: Path) -> None:
    if os.environ.get("NASBLADE_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG"):
        pytest.skip("the kubelet of a cluster given by KUBECONFIG does not run on this host")
    assert REGISTRY.is_dir(), "the local tier-2 kubelet has no plugins_registry"
    storage = client.StorageV1Api(e2e_api)
    node = client.CoreV1Api(e2e_api).list_node().items[0].metadata.name

    def drivers() -> dict[str, str]:
        try:  # raw JSON: the client's model refuses the "drivers": null of a node without any
            raw = json.loads(storage.read_csi_node(node, _preload_content=False).data)
        except client.ApiException:
            return {}
        return {d["name"]: d.get("nodeID", "") for d in raw.get("spec", {}).get("drivers") or []}

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
