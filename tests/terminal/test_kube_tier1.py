"""``kubectl nas`` against the tier-1 API server with the real operator running.

The operator (``KopfRunner``) reconciles a DiskArray and a ClusterGroup; pod life is the fake
kubelet, the blades' management API the fake blade server, the controller a real process
(all from tests/operator/conftest.py). The plugin is run as an administrator runs it: the
``kubectl-nas`` entry point, and through ``kubectl nas`` itself (kubectl finds plugins on PATH).
Its ``-o json`` is compared with the resources as ``kubectl get`` returns them.
``volumes`` is checked against PersistentVolumes and VolumeSnapshotContents made as the CSI
driver's provisioning makes them (the VolumeSnapshot CRDs from ``tools/kube/csi.sh snapshot-crds``).
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

import nbcluster
import pytest
from nasblade.controller.apiclient import ControlClient
from nasblade.terminal.kube import KubeSource
from nasblade.terminal.source import BackupRequest
from nasblade_operator import naming

REPO = Path(__file__).resolve().parents[2]

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


def test_kubectl_nas_volumes_lists_the_csi_drivers_persistent_volumes(
    kubectl: Any, operator: Callable[[], Any], blades: Any, token_secret: Callable[[str], None], namespace: str,
    tier1_kubeconfig: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``kubectl nas volumes`` lists the PersistentVolumes and VolumeSnapshotContents the CSI driver's
    provisioning leaves (external-provisioner and csi-snapshotter write them from the driver's
    answers): a file-system volume published by the driver's own ``DiskArrayExports`` (so the
    operator serves it), a directory volume of the shared file system ``home``, each bound to a
    claim; a PV of another driver, and one of this driver naming another DiskArray, are left out."""
    import pykube
    from nasblade import lunames
    from nasblade_csi.controller import ALIGN, choose_size, snapshot_id, volume_id
    from nasblade_csi.exports import DiskArrayExports

    token_secret("a1")
    nbcluster.install_snapshot_crds(kubectl)
    suffix = namespace.removeprefix("op-")
    ref = f"{namespace}/a1"
    classes = {"fs": {"diskArray": ref, "clusterGroup": "g1"},
               "dir": {"diskArray": ref, "layout": "directory", "fileSystem": "home"}}
    requests = {"fs": 40 << 20, "dir": 5_000_000}  # what the claims ask for (the driver rounds up)
    cluster_scoped: list[tuple[str, str]] = []
    try:
        with operator() as runner:
            # CSI on: the array's driver name is in its status (the plugin itself is refused
            # here, the operator has no CSI ClusterRole: only the names matter to the listing)
            kubectl.apply({**ARRAY, "spec": {**ARRAY["spec"], "csi": {"enabled": True, "clusterGroup": "g1"}}})
            kubectl.apply(GROUP)
            kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
            kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
            driver = naming.csi_driver_name(namespace, "a1")
            assert (kubectl.get("diskarray", "a1") or {})["status"]["csi"]["driver"] == driver

            # the StorageClasses and the claims; the PV names are the provisioner's, pvc-<claim uid>
            claims: dict[str, dict[str, Any]] = {}
            for kind, params in classes.items():
                sc = f"nasblade-{kind}-{suffix}"
                kubectl.apply({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": sc},
                               "provisioner": driver, "reclaimPolicy": "Delete", "parameters": params})
                cluster_scoped.append(("storageclass", sc))
                kubectl.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"data-{kind}"},
                               "spec": {"storageClassName": sc, "accessModes": ["ReadWriteMany"],
                                        "resources": {"requests": {"storage": str(requests[kind])}}}})
                claims[kind] = kubectl.get("pvc", f"data-{kind}") or {}
            names = {kind: f"pvc-{c['metadata']['uid']}" for kind, c in claims.items()}
            vids = {kind: volume_id(n) for kind, n in names.items()}  # CreateVolume's volume ids
            sizes = {"fs": choose_size(requests["fs"], 0), "dir": choose_size(requests["dir"], 0, minimum=ALIGN)}
            assert sizes["fs"] == 48 << 20 and sizes["dir"] == 5 << 20

            # CreateVolume's volume contexts, from the driver's own exports: the file-system volume
            # becomes a DiskArray file system the operator serves (publish waits for it); the
            # directory volume's blade call is not made here (the fake blades have no directories)
            exports = DiskArrayExports(pykube.HTTPClient(pykube.KubeConfig.from_file(tier1_kubeconfig)),
                                       namespace=namespace, array="a1", group="g1", clients=("10.0.0.0/8",),
                                       timeout=90, poll=0.5)
            asked: list[tuple[str, Any]] = []

            class Blade:
                def set_directory(self, *args: Any, **kwargs: Any) -> None:
                    asked.append(args)

            monkeypatch.setattr(exports, "_blade_call", lambda fs, call, da=None: call(Blade()))
            contexts = {"fs": {**exports.publish(vids["fs"], sizes["fs"], classes["fs"]), "lu": exports.lu(vids["fs"])}}
            shared, context = exports.publish_directory(vids["dir"], sizes["dir"], classes["dir"])
            contexts["dir"] = {**context, "lu": ""}  # Controller._volume_msg: a directory volume's lu is ""
            assert shared == "home" and asked == [("home", vids["dir"], sizes["dir"])]

            def pv(name: str, driver: str, handle: str, attrs: dict[str, str], size: int,
                   claim: dict[str, Any] | None = None, sc: str = "") -> dict[str, Any]:
                """A PersistentVolume as external-provisioner writes it from CreateVolume's answer."""
                spec: dict[str, Any] = {
                    "accessModes": ["ReadWriteMany"], "capacity": {"storage": f"{size >> 20}Mi"},
                    "persistentVolumeReclaimPolicy": "Delete", "storageClassName": sc, "volumeMode": "Filesystem",
                    "csi": {"driver": driver, "volumeHandle": handle, "volumeAttributes": {
                        **attrs, "storage.kubernetes.io/csiProvisionerIdentity": f"1700000000000-1234-{driver}"}}}
                if claim:
                    spec["claimRef"] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                        "namespace": claim["metadata"]["namespace"], "name": claim["metadata"]["name"],
                                        "uid": claim["metadata"]["uid"]}
                cluster_scoped.append(("pv", name))
                return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {
                    "name": name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}}, "spec": spec}

            for kind in classes:
                kubectl.apply(pv(names[kind], driver, vids[kind], contexts[kind], sizes[kind],
                                 claims[kind], claims[kind]["spec"]["storageClassName"]))
            # left out: another driver's PV (its handle and context would pass otherwise), one of the
            # name every array had before names were per array, and one of this driver for a
            # DiskArray of another namespace
            other_driver, other_array = f"pvc-other-driver-{suffix}", f"pvc-other-array-{suffix}"
            kubectl.apply(pv(other_driver, "nfs.csi.k8s.io", volume_id(other_driver), contexts["dir"], 8 << 20))
            old_name = f"pvc-old-name-{suffix}"
            kubectl.apply(pv(old_name, "nas.nasblade.io", volume_id(old_name), contexts["dir"], 8 << 20))
            kubectl.apply(pv(other_array, driver, volume_id(other_array),
                             {**contexts["dir"], "diskArray": f"elsewhere-{suffix}/a1"}, 8 << 20))
            wait_until("the claims bound to their volumes", lambda: all(
                (kubectl.get("pv", names[k]) or {}).get("status", {}).get("phase") == "Bound" and
                (kubectl.get("pvc", f"data-{k}") or {}).get("status", {}).get("phase") == "Bound" for k in classes))

            # a snapshot of the file-system volume: the VolumeSnapshot, its content as the
            # snapshot-controller makes it, the status csi-snapshotter writes from CreateSnapshot
            vsc_class = f"nasblade-snap-{suffix}"
            kubectl.apply({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                           "metadata": {"name": vsc_class}, "driver": driver, "deletionPolicy": "Delete"})
            cluster_scoped.append(("volumesnapshotclass", vsc_class))
            kubectl.apply({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "snap1"},
                           "spec": {"volumeSnapshotClassName": vsc_class,
                                    "source": {"persistentVolumeClaimName": "data-fs"}}})
            vs = kubectl.get("volumesnapshot", "snap1") or {}
            uid = vs["metadata"]["uid"]
            sid, created = snapshot_id(f"snapshot-{uid}"), time.time_ns()

            def content(name: str, driver: str, handle: str) -> dict[str, Any]:
                cluster_scoped.append(("volumesnapshotcontent", name))
                return {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                        "metadata": {"name": name},
                        "spec": {"deletionPolicy": "Delete", "driver": driver, "source": {"volumeHandle": handle},
                                 "sourceVolumeMode": "Filesystem", "volumeSnapshotClassName": vsc_class,
                                 "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                                                       "namespace": namespace, "name": "snap1", "uid": uid}}}

            kubectl.apply(content(f"snapcontent-{uid}", driver, vids["fs"]))
            kubectl("patch", "volumesnapshotcontent", f"snapcontent-{uid}", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"snapshotHandle": sid, "creationTime": created,
                                                 "restoreSize": sizes["fs"], "readyToUse": True}}))
            # another driver's content on the same handle is not this volume's snapshot
            kubectl.apply(content(f"snapcontent-other-{suffix}", "nfs.csi.k8s.io", vids["fs"]))

            out = plugin(tier1_kubeconfig, "volumes", "-n", namespace, "-o", "json")
            assert out.returncode == 0, out.stderr
            listing = json.loads(out.stdout)
            cg = kubectl.get("clustergroup", "g1") or {}
            owners = {f["name"]: f["blade"] for f in cg["status"]["fileSystems"]}
            assert owners.get(vids["fs"]) and owners.get("home"), owners
            assert listing["target"]["namespace"] == namespace and listing["problems"] == []
            got = {v["id"]: v for v in listing["volumes"]}
            assert set(got) == {vids["fs"], vids["dir"]}, sorted(got)  # not the other driver's nor array's
            assert [v["id"] for v in listing["volumes"]] == [vids["dir"], vids["fs"]]  # directory first
            fs_vol, dir_vol = got[vids["fs"]], got[vids["dir"]]
            assert {k: fs_vol[k] for k in ("name", "claim", "mode", "fileSystem", "lu", "group", "blade", "size", "state")} == {
                "name": names["fs"], "claim": f"{namespace}/data-fs", "mode": "filesystem", "fileSystem": vids["fs"],
                "lu": lunames.fs_lu(vids["fs"]), "group": "g1", "blade": owners[vids["fs"]], "size": sizes["fs"],
                "state": "Bound"}
            assert {k: dir_vol[k] for k in ("name", "claim", "mode", "fileSystem", "lu", "group", "blade", "size", "state")} == {
                "name": names["dir"], "claim": f"{namespace}/data-dir", "mode": "directory", "fileSystem": "home",
                "lu": None, "group": "g1", "blade": owners["home"], "size": sizes["dir"], "state": "Bound"}
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created // 10**9))
            assert fs_vol["snapshots"] == [{"id": sid, "name": f"snapshot-{uid}", "size": sizes["fs"], "ready": True,
                                            "created": stamp}]
            assert dir_vol["snapshots"] == []

            # the table names both volumes, the snapshot and the claims, not the volumes left out
            monkeypatch.setenv("COLUMNS", "250")
            table = plugin(tier1_kubeconfig, "volumes", "-n", namespace)
            assert table.returncode == 0, table.stderr
            rows = {line.split()[1]: line for line in table.stdout.splitlines() if line.split()[1:2]}
            assert vids["fs"] in rows and vids["dir"] in rows, table.stdout
            assert f"{namespace}/data-fs" in rows[vids["fs"]] and "filesystem" in rows[vids["fs"]]
            assert f"{namespace}/data-dir" in rows[vids["dir"]] and "quota 5" in rows[vids["dir"]]
            assert f"snapshot {sid}" in table.stdout
            assert volume_id(other_driver) not in table.stdout and volume_id(other_array) not in table.stdout
            assert volume_id(old_name) not in table.stdout
        operator_fixtures_clean(runner)
    finally:
        kubectl("delete", "pvc", "--all", "--wait=false", check=False)
        for kind, name in reversed(cluster_scoped):
            kubectl("delete", kind, name, "--ignore-not-found", "--wait=false", check=False)

def operator_fixtures_clean(runner: Any) -> None:
    """The operator exited cleanly and logged no traceback (tests/operator's assert_clean)."""
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None, runner.exception
    assert "Traceback" not in runner.output, runner.output
