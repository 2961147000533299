"""``kubectl nas`` against the tier-1 API server with the real operator running.

The operator (``KopfRunner``) reconciles a DiskArray and a ClusterGroup; pod life is the fake
kubelet, the blades' management API the fake blade server, the controller a real process
(all from tests/operator/conftest.py). The plugin is run as an administrator runs it: the
``kubectl-nas`` entry point, and through ``kubectl nas`` itself (kubectl finds plugins on PATH).
Its ``-o json`` is compared with the resources as ``kubectl get`` returns them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nasblade.controller.apiclient import ControlClient
from nasblade.terminal.kube import KubeSource
from nasblade.terminal.source import BackupRequest

pytestmark = pytest.mark.tier1
SVG = "{http://www.w3.org/2000/svg}"
FS = [{"name": "home", "size": "64Mi", "clusterGroup": "g1", "exports": [{"clients": ["10.0.0.0/8"]}]},
      {"name": "scratch", "size": "48Mi", "clusterGroup": "g1"}]  # mkfs needs 48 MiB
ARRAY = {"apiVersion": "nasblade.io/v1alpha1", "kind": "DiskArray", "metadata": {"name": "a1"},
         "spec": {"devices": {"count": 2, "size": "1Gi"}, "fileSystems": FS,
                  "areas": {"programSize": "16Mi", "processorInfoSize": "8Mi", "backupSize": "8Mi", "portions": 4}}}
GROUP = {"apiVersion": "nasblade.io/v1alpha1", "kind": "ClusterGroup", "metadata": {"name": "g1"},
         "spec": {"diskArrayRef": {"name": "a1"}, "blades": {"count": 2},
                  "heartbeat": {"interval": "200ms", "failureTimeout": "6s"}}}


def wait_until(what: str, fn: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def plugin(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    env.pop("NASBLADE_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "nasblade.terminal.kubectl", *args], env=env, text=True,
                          capture_output=True, timeout=120, check=False)


def test_kubectl_nas_against_the_operator(
    kubectl: Any, operator: Callable[[], Any], blades: Any, token_secret: Callable[[str], None], namespace: str,
    tier1_kubeconfig: str, tmp_path: Path, controller: Any,
) -> None:
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(ARRAY)
        kubectl.apply(GROUP)
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
        wait_until("owners in status", lambda: len((kubectl.get("clustergroup", "g1") or {})
                                                  .get("status", {}).get("fileSystems", [])) == 2)

        # status -o json is what the API server holds
        out = plugin(tier1_kubeconfig, "status", "-n", namespace, "-o", "json")
        assert out.returncode == 0, out.stderr
        snap = json.loads(out.stdout)
        cg, da = kubectl.get("clustergroup", "g1"), kubectl.get("diskarray", "a1")
        assert snap["target"]["namespace"] == namespace
        [arr] = snap["arrays"]
        assert arr["name"] == "a1" and arr["ready"] is True and len(arr["devices"]) == 2
        assert arr["size"] == 2 << 30
        lus = {lu["name"]: lu for lu in arr["lus"]}
        for f in da["status"]["fileSystems"]:
            assert lus[f["lu"]]["size"] == f["size"] and lus[f["lu"]]["fileSystem"] == f["name"]
        [g] = snap["groups"]
        assert [(b["name"], b["state"]) for b in g["blades"]] == [(b["name"], "ok") for b in cg["status"]["blades"]]
        assert {f["name"]: (f["blade"], f["epoch"]) for f in snap["fileSystems"]} == \
               {f["name"]: (f["blade"], f.get("epoch")) for f in cg["status"]["fileSystems"]}

        # heartbeat ages: what a blade reports, in whole seconds, in status and in the terminal
        blades.heartbeat_age["g1-blade-1"] = 3.4
        wait_until("the heartbeat age in status", lambda: {
            b["name"]: b.get("heartbeatAgeSeconds") for b in kubectl.get("clustergroup", "g1")["status"]["blades"]
        } == {"g1-blade-0": 0, "g1-blade-1": 3})
        ages = json.loads(plugin(tier1_kubeconfig, "status", "-n", namespace, "-o", "json").stdout)
        assert {b["name"]: b["heartbeatAge"] for b in ages["groups"][0]["blades"]} == {"g1-blade-0": 0, "g1-blade-1": 3}
        blades.heartbeat_age.clear()
        wait_until("the heartbeat age back to 0", lambda: {
            b.get("heartbeatAgeSeconds") for b in kubectl.get("clustergroup", "g1")["status"]["blades"]} == {0})

        # the same through kubectl itself, which finds kubectl-nas on PATH
        kubectl_bin = shutil.which("kubectl") or "kubectl"
        env = {**os.environ, "KUBECONFIG": tier1_kubeconfig,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        via = subprocess.run([kubectl_bin, "nas", "status", "-n", namespace], env=env, text=True,
                             capture_output=True, timeout=120, check=False)
        assert via.returncode == 0, via.stderr
        assert "g1-blade-0" in via.stdout and "Cluster group g1" in via.stdout

        # the map names every blade and LU, and draws each LU's extents where status.lus puts them
        placed = wait_until("the LU layout in status", lambda: {
            lu["name"]: lu for lu in (kubectl.get("diskarray", "a1") or {}).get("status", {}).get("lus", [])
        }.keys() >= set(lus) and kubectl.get("diskarray", "a1")["status"]["lus"])
        svg = tmp_path / "k.svg"
        assert plugin(tier1_kubeconfig, "map", "-n", namespace, "--svg", str(svg), "--no-png").returncode == 0
        root = ET.parse(svg).getroot()
        named: dict[str, set[str]] = {}
        for el in root.iter(f"{SVG}g"):
            named.setdefault(el.get("data-kind", ""), set()).add(el.get("data-name", ""))
        assert named["blade"] == {b["name"] for b in cg["status"]["blades"]}
        assert named["lu"] == set(lus)
        rects = {(el.get("data-kind"), el.get("data-name"), el.get("data-device"), el.get("data-offset")):
                 (el, el.find(f"{SVG}rect")) for el in root.iter(f"{SVG}g")}
        drawn = {(el.get("data-name"), int(el.get("data-device", -1)), int(el.get("data-offset", -1)),
                  int(el.get("data-length", -1))) for el, _ in rects.values() if el.get("data-kind") == "lu-extent"}
        assert drawn == {(lu["name"], e["device"], e["offset"], e["length"])
                         for lu in placed if lu["name"] in lus for e in lu["extents"]}
        assert drawn and {name for name, *_ in drawn} == set(lus)
        for name, device, offset, length in drawn:
            dev, ext = rects[("device", str(device), None, None)][1], rects[("lu-extent", name, str(device), str(offset))][1]
            assert dev is not None and ext is not None
            dx, dw = float(dev.get("x", 0)), float(dev.get("width", 0))
            assert abs(float(ext.get("x", 0)) - (dx + dw * offset / (1 << 30))) < 0.2  # spec.devices.size 1Gi
            assert abs(float(ext.get("width", 0)) - max(dw * length / (1 << 30), 0.5)) < 0.2

        # on-demand backup: the annotation, the operator runs it through a blade (which really copies
        # the portion with the controller's copy engine and answers when the test lets it), the bytes
        # copied in status.backups.inProgress while it runs, the terminal's progress from there, exit 0
        size = int(da["status"]["areas"]["portionSize"])
        blades.copy_through, blades.backup_gate = (controller.api, size), threading.Event()
        since = time.time()
        env = {**os.environ, "KUBECONFIG": tier1_kubeconfig}
        follower = subprocess.Popen([sys.executable, "-m", "nasblade.terminal.kubectl", "backup", "g1", "-n", namespace,
                                     "-o", "json", "--timeout", "90"], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            running = wait_until("the copied bytes in status", lambda: (
                ((kubectl.get("clustergroup", "g1") or {}).get("status", {}).get("backups", {}).get("inProgress") or {})
                .get("bytesCopied") == size and kubectl.get("clustergroup", "g1")["status"]["backups"]["inProgress"]))
            portion = int(kubectl.get("clustergroup", "g1")["status"]["portion"])
            assert running["totalBytes"] == size and running["portions"] == [portion] and running["trigger"] == "OnDemand"
            jobs = ControlClient(controller.api, token=controller.token).list_copy_jobs()
            assert [j["bytesDone"] for j in jobs if j["sourceOffset"] == portion * size] == [size]
            progress = KubeSource(kubeconfig=Path(tier1_kubeconfig), context=None, namespace=namespace).backup_progress(
                BackupRequest(group="g1", groups=["g1"], since=since))
            assert (progress.done, progress.bytes_done, progress.bytes_total) == (False, size, size)
        finally:
            blades.backup_gate.set()
            followed, err = follower.communicate(timeout=120)
        assert follower.returncode == 0, err
        assert json.loads(followed)["succeeded"] is True and json.loads(followed)["bytesDone"] == size
        assert "inProgress" not in kubectl.get("clustergroup", "g1")["status"]["backups"]
        assert any(c[1] == "backup" and c[2]["trigger"] == "OnDemand" for c in blades.calls)
        assert "nasblade.io/backup-now" not in (kubectl.get("clustergroup", "g1")["metadata"].get("annotations") or {})
        events = json.loads(plugin(tier1_kubeconfig, "events", "-n", namespace, "-o", "json").stdout)
        assert any(e["kind"] == "BackupSucceeded" and e["object"] == "ClusterGroup/g1" for e in events)

        # takeover: the dry run answers from the status; the operator makes the move and pins it
        owner = {f["name"]: f["blade"] for f in snap["fileSystems"]}["home"]
        peer = next(b["name"] for b in g["blades"] if b["name"] != owner)
        dry = plugin(tier1_kubeconfig, "takeover", "home", "--to", peer, "--dry-run", "-n", namespace)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        move = plugin(tier1_kubeconfig, "takeover", "home", "--to", peer, "-n", namespace, "-o", "json", "--timeout", "60")
        assert move.returncode == 0, move.stdout + move.stderr
        assert json.loads(move.stdout)["blade"] == peer
        assert blades.of("release")[-1][::2] == (owner, "home") and blades.of("takeover")[-1][::2] == (peer, "home")
        fs_status = {f["name"]: f for f in kubectl.get("clustergroup", "g1")["status"]["fileSystems"]}
        assert fs_status["home"]["blade"] == peer and fs_status["home"]["pinnedTo"] == peer
        svc = kubectl.get("service", fs_status["home"]["service"])
        assert svc is not None and svc["spec"]["selector"]["nasblade.io/blade"] == peer
        cg = kubectl.get("clustergroup", "g1")
        assert "nasblade.io/move-request" not in (cg["metadata"].get("annotations") or {})
        assert cg["status"]["lastMoveRequest"]["result"] == "Succeeded"
        pinned = json.loads(plugin(tier1_kubeconfig, "status", "-n", namespace, "-o", "json").stdout)
        assert {f["name"]: (f["blade"], f["pinnedTo"]) for f in pinned["fileSystems"]}["home"] == (peer, peer)

        # a request the operator cannot carry out is refused with the reason, and the annotation removed
        bad_request = json.dumps({"fileSystem": "home", "to": "g1-blade-9", "id": "bad1"})
        kubectl("annotate", "clustergroup", "g1", f"nasblade.io/move-request={bad_request}")
        refused = wait_until("the refusal", lambda: (kubectl.get("clustergroup", "g1") or {}).get("status", {})
                             .get("lastMoveRequest", {}).get("id") == "bad1" and kubectl.get("clustergroup", "g1"))
        assert refused["status"]["lastMoveRequest"]["result"] == "Refused"
        assert "no blade 'g1-blade-9'" in refused["status"]["lastMoveRequest"]["message"]
        wait_until("the annotation removed", lambda: "nasblade.io/move-request" not in
                   ((kubectl.get("clustergroup", "g1") or {})["metadata"].get("annotations") or {"nasblade.io/move-request": 1}))
        events = json.loads(plugin(tier1_kubeconfig, "events", "-n", namespace, "-o", "json").stdout)
        assert any(e["kind"] == "MoveRefused" and "g1-blade-9" in e["message"] for e in events)
        # the passes since the move did not give the pinned file system back
        assert {f["name"]: f["blade"] for f in refused["status"]["fileSystems"]}["home"] == peer

        # giveback: home again, the pin removed
        back = plugin(tier1_kubeconfig, "giveback", "home", "-n", namespace, "--timeout", "60")
        assert back.returncode == 0, back.stdout + back.stderr
        fs_status = {f["name"]: f for f in kubectl.get("clustergroup", "g1")["status"]["fileSystems"]}
        assert fs_status["home"]["blade"] == owner and "pinnedTo" not in fs_status["home"]

        # a move that fails half-way (the target cannot mount it): the owner serves it again, exit 1
        blades.refuse_takeover.add(peer)
        calls = len(blades.calls)
        failed = plugin(tier1_kubeconfig, "takeover", "home", "--to", peer, "-n", namespace, "--timeout", "60")
        assert failed.returncode == 1 and "the move failed" in failed.stderr, failed.stdout + failed.stderr
        assert [c for c in blades.calls[calls:] if c[2] == "home"] == [
            (owner, "release", "home"), (peer, "takeover", "home"), (owner, "takeover", "home")]
        fs_status = {f["name"]: f for f in kubectl.get("clustergroup", "g1")["status"]["fileSystems"]}
        assert fs_status["home"]["blade"] == owner and "pinnedTo" not in fs_status["home"]
        blades.refuse_takeover.clear()

        # rollout: spec.software.version, then every blade on the new version
        roll = plugin(tier1_kubeconfig, "software", "rollout", "0.2.0", "--force", "-n", namespace, "-o", "json",
                      "--timeout", "120")
        assert roll.returncode == 0, roll.stderr
        assert kubectl.get("diskarray", "a1")["spec"]["software"]["version"] == "0.2.0"
        assert set(json.loads(roll.stdout)["blades"].values()) == {"0.2.0"}

        # errors: unknown names and namespaces exit 2, an API server that does not answer exits 3
        bad = plugin(tier1_kubeconfig, "backup", "nope", "-n", namespace)
        assert bad.returncode == 2 and "no ClusterGroup 'nope'" in bad.stderr
        gone = plugin(tier1_kubeconfig, "status", "-n", "no-such-namespace")
        assert gone.returncode == 2 and "no namespace 'no-such-namespace'" in gone.stderr
    operator_fixtures_clean(runner)
    broken = tmp_path / "kubeconfig"
    cfg = Path(tier1_kubeconfig).read_text()
    import yaml

    doc = yaml.safe_load(cfg)
    doc["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    broken.write_text(yaml.safe_dump(doc))
    down = plugin(str(broken), "status", "-n", namespace)
    assert down.returncode == 3 and "does not answer" in down.stderr


def operator_fixtures_clean(runner: Any) -> None:
    """The operator exited cleanly and logged no traceback (tests/operator's assert_clean)."""
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None, runner.exception
    assert "Traceback" not in runner.output, runner.output
