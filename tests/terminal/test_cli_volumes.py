"""``nasblade volumes``: the CSI driver's volumes of both modes, with their snapshots.

On a real standalone array (its own ``nasblade up``: one cluster group ``g1`` of one blade
serving the shared file system ``shared`` and a file-system volume, a file system named as the
driver names volumes), volumes made as the CSI driver makes them: a directory volume is
``PUT /v1/filesystems/shared/directories/<id> {"quotaBytes"}`` on the serving blade, its
snapshot ``PUT …/snapshots/<id>``; a file-system volume's snapshot is a read-only LU ``sn-…``;
the driver's records go into its catalog LU through ``nasblade_csi.catalog.Catalog``. The
command's table and ``-o json`` are checked against the blade's and the controller's own
answers; things that are not volumes (the shared file system, a directory ``scratch`` with a
quota, ``pv-short``) are left out. Without processes: the rendering, the pure merge
(``nasblade.terminal.volumes``) and the Kubernetes source on hand-made PersistentVolumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import NASBLADE, Array, free_port, run_array
from nasblade import cli as nasblade_cli
from nasblade.terminal import kubectl, render
from nasblade.terminal import volumes as csivolumes
from nasblade.terminal.kube import KubeSource
from nasblade.terminal.model import Snapshot, VolumeList

MiB = 1 << 20


def vid(name: str) -> str:
    return "pv-" + hashlib.sha256(name.encode()).hexdigest()[:24]  # nasblade_csi.controller.volume_id


def sid(name: str) -> str:
    return "sn-" + hashlib.sha256(name.encode()).hexdigest()[:24]


FS_VOL, DIR_VOL, FS_SNAP, DIR_SNAP = vid("pvc-fs"), vid("pvc-dir"), sid("snapshot-f"), sid("snapshot-d")


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    """``nasblade up``: group g1 (blade g1-0) serving ``shared`` and the volume ``FS_VOL``."""
    tmp = tmp_path_factory.mktemp("volumes-array")
    net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    cfg = {
        "array": {"devices": {"count": 2, "size": "256M"}, "cacheSize": "16M", "areas": {"programSize": "32M"}},
        "clusterGroups": [{"name": "g1", "blades": 1, "failureTimeout": "1s"}],
        "fileSystems": [{"name": "shared", "size": "48M", "clusterGroup": "g1", "address": f"{net}.2"},
                        {"name": FS_VOL, "size": "48M", "clusterGroup": "g1", "address": f"{net}.3"}],
        "network": {"nbdPort": free_port(), "apiPort": free_port(), "bladeApiPort": 0,
                    "nfsPort": free_port(), "mountPort": free_port(), "portmapPort": None},
    }
    yield from run_array(tmp, cfg)


def run(array: Array, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NASBLADE_DATA_DIR": str(array.data_dir), "NASBLADE_CONFIG": str(array.config),
           "COLUMNS": "200"}
    env.pop("KUBECONFIG", None)
    return subprocess.run([*NASBLADE, *args], env=env, text=True, capture_output=True, timeout=120, check=False)


def write(array: Array, fs: str, path: str, size: int) -> None:
    """``size`` bytes into ``path`` (an export, or a directory volume below one) over NFSv3."""
    import libnfs

    [ep] = [e for e in array.endpoints["nfs"] if e["fileSystem"] == fs]
    url = urlsplit(ep["url"])
    nfs = libnfs.NFS(urlunsplit((url.scheme, url.netloc, path, url.query, "")))
    f = nfs.open("/data.bin", "wb")
    try:
        f.write(bytearray(os.urandom(size)))
        f.flush()  # COMMIT
    finally:
        f.close()


def make_volumes(array: Array, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both kinds of volume and a snapshot of each, as the CSI driver makes them."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))
    from nasblade_csi.catalog import Catalog

    blade = array.blade("g1-0")
    deadline = time.monotonic() + 60
    while "shared" not in blade.status().get("fileSystems", []) or FS_VOL not in blade.status().get("fileSystems", []):
        assert time.monotonic() < deadline, blade.status()
        time.sleep(0.2)
    blade.set_directory("shared", DIR_VOL, 4 * MiB)
    blade.set_directory("shared", "scratch", 2 * MiB)  # a quota tree, but not a volume
    blade.set_directory("shared", "pv-short", 2 * MiB)  # not a name the driver gives
    write(array, "shared", f"/shared/{DIR_VOL}", MiB)  # usage for the blade to report
    write(array, FS_VOL, f"/{FS_VOL}", 2 * MiB)
    blade.snapshot_directory("shared", DIR_VOL, DIR_SNAP)
    control = array.control
    control.create_lu(FS_SNAP, 48 * MiB)
    control.update_lu(FS_SNAP, read_only=True)  # the driver's copy done
    monkeypatch.setenv("NASBLADE_NBD_TLS_DIR", str(array.data_dir / "tls" / "admin"))
    now = time.time_ns()

    def record(doc: dict[str, Any]) -> None:
        doc["volumes"]["pvc-fs"] = {"id": FS_VOL, "lu": f"fs-{FS_VOL}", "size": 48 * MiB, "source": {},
                                    "state": "ready", "created": now, "parameters": {}}
        doc["volumes"]["pvc-dir"] = {"id": DIR_VOL, "layout": "directory", "lu": "", "size": 4 * MiB, "source": {},
                                     "state": "ready", "created": now, "fileSystem": "shared",
                                     "parameters": {"layout": "directory", "fileSystem": "shared"}}
        doc["snapshots"]["snapshot-f"] = {"id": FS_SNAP, "lu": FS_SNAP, "source": FS_VOL, "sourceLu": f"fs-{FS_VOL}",
                                          "size": 48 * MiB, "state": "ready", "created": now}
        doc["snapshots"]["snapshot-d"] = {"id": DIR_SNAP, "lu": "", "layout": "directory", "fileSystem": "shared",
                                          "source": DIR_VOL, "size": 4 * MiB, "state": "ready", "created": now}

    Catalog(control, f"nbds://{array.endpoints['controller']['nbd']}").change(record)


@pytest.mark.component
def test_volumes_of_both_modes_on_a_standalone_array(array: Array, monkeypatch: pytest.MonkeyPatch) -> None:
    make_volumes(array, monkeypatch)
    blade = array.blade("g1-0")
    dirs = {d["name"]: d for d in blade.directories("shared")["directories"]}
    space = blade.directories(FS_VOL)["space"]

    out = run(array, "volumes", "-o", "json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert listing["problems"] == []
    by_id = {v["id"]: v for v in listing["volumes"]}
    assert set(by_id) == {FS_VOL, DIR_VOL}  # not `shared`, `scratch` or `pv-short`
    fs = by_id[FS_VOL]
    assert {k: fs[k] for k in ("name", "mode", "fileSystem", "lu", "group", "blade", "size", "state")} == {
        "name": "pvc-fs", "mode": "filesystem", "fileSystem": FS_VOL, "lu": f"fs-{FS_VOL}", "group": "g1",
        "blade": "g1-0", "size": 48 * MiB, "state": "ready"}
    assert fs["usedBytes"] == space["totalBytes"] - space["freeBytes"] >= 2 * MiB
    assert [(s["id"], s["name"], s["size"], s["ready"]) for s in fs["snapshots"]] == [(FS_SNAP, "snapshot-f", 48 * MiB, True)]
    d = by_id[DIR_VOL]
    assert {k: d[k] for k in ("name", "mode", "fileSystem", "lu", "group", "blade", "size", "state")} == {
        "name": "pvc-dir", "mode": "directory", "fileSystem": "shared", "lu": None, "group": "g1",
        "blade": "g1-0", "size": 4 * MiB, "state": "ready"}
    assert (d["usedBytes"], d["files"]) == (dirs[DIR_VOL]["usedBytes"], dirs[DIR_VOL]["files"])
    assert d["usedBytes"] >= MiB and d["files"] >= 2  # the directory and the file
    assert [(s["id"], s["name"], s["size"], s["ready"]) for s in d["snapshots"]] == [(DIR_SNAP, "snapshot-d", 4 * MiB, True)]

    table = run(array, "volumes")
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in table.stdout.splitlines() if line.count("│") > 3}
    assert rows[FS_VOL][:7] == [FS_VOL, "filesystem", FS_VOL, "g1", "g1-0", "48.0 MiB", render.size(fs["usedBytes"])]
    assert rows[DIR_VOL][:8] == [DIR_VOL, "directory", "shared", "g1", "g1-0", "quota 4.0 MiB",
                                 render.size(d["usedBytes"]), str(d["files"])]
    assert rows[f"snapshot {FS_SNAP}"][5] == "48.0 MiB" and rows[f"snapshot {FS_SNAP}"][8] == "ready"
    assert rows[f"snapshot {DIR_SNAP}"][5] == "4.0 MiB" and rows[f"snapshot {DIR_SNAP}"][9] == "snapshot-d"
    assert set(rows) == {FS_VOL, DIR_VOL, f"snapshot {FS_SNAP}", f"snapshot {DIR_SNAP}"}
    assert "scratch" not in table.stdout and "pv-short" not in table.stdout


@pytest.mark.component
def test_volumes_of_an_unreachable_array_exit_3(array: Array) -> None:
    out = run(array, "volumes", "--controller", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 3
    assert out.stderr.startswith("nasblade volumes: controller http://127.0.0.1:") and "does not answer" in out.stderr


# -- without processes ------------------------------------------------------------------------


def test_volumes_is_a_command_of_both_entry_points() -> None:
    assert "\n  volumes " in nasblade_cli.build_parser().format_help()
    assert "volumes" in kubectl.build_parser().format_help()


def listing() -> VolumeList:
    snap = {"id": FS_SNAP, "name": "snapshot-f", "size": 64 * MiB, "ready": False, "created": None}
    return {"target": {"kind": "standalone"}, "time": "2026-01-01T00:00:00Z", "problems": ["blade b2 did not answer"],
            "volumes": [
                {"id": DIR_VOL, "name": "pvc-dir", "claim": "apps/data", "mode": "directory", "fileSystem": "shared",
                 "lu": None, "group": "g1", "blade": "b1", "size": 4 * MiB, "usedBytes": 3 * MiB, "files": 7,
                 "state": "ready", "snapshots": []},
                {"id": FS_VOL, "name": None, "claim": None, "mode": "filesystem", "fileSystem": FS_VOL,
                 "lu": f"fs-{FS_VOL}", "group": "g2", "blade": None, "size": 64 * MiB, "usedBytes": None,
                 "files": None, "state": None, "snapshots": [snap]}]}


def test_volumes_view() -> None:
    console = render.console(io.StringIO(), width=200)
    console.print(render.volumes_view(listing()))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    [header] = [[c.strip() for c in line.split("┃")[1:-1]] for line in out.splitlines() if line.count("┃") > 3]
    assert header == ["volume", "mode", "file system", "group", "blade", "size", "used", "files", "state", "name"]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.count("│") > 3]
    rows.insert(0, header)
    assert rows[1] == [DIR_VOL, "directory", "shared", "g1", "b1", "quota 4.0 MiB", "3.0 MiB", "7", "ready", "apps/data"]
    assert rows[2] == [FS_VOL, "filesystem", FS_VOL, "g2", "-", "64.0 MiB", "-", "-", "-", "-"]
    assert rows[3] == [f"snapshot {FS_SNAP}", "", "", "", "", "64.0 MiB", "", "", "not ready", "snapshot-f"]
    assert "note: blade b2 did not answer" in out
    empty = render.console(io.StringIO(), width=200)
    empty.print(render.volumes_view({**listing(), "volumes": [], "problems": []}))
    assert empty.file.getvalue().strip() == "no CSI volumes"  # type: ignore[attr-defined]


def test_only_names_the_driver_gives_are_volumes(snapshot: Snapshot) -> None:
    lus = [{"name": "fs-fs1", "size": 64 * MiB}, {"name": f"pv-{'0' * 24}", "size": 48 * MiB},
           {"name": "pv-short", "size": MiB}, {"name": FS_SNAP, "size": 48 * MiB, "readOnly": False}]
    served = {"fs1": {"directories": [{"name": DIR_VOL, "quotaBytes": MiB, "usedBytes": 0, "files": 1},
                                      {"name": "home", "quotaBytes": MiB, "usedBytes": 0, "files": 1}],
                      "space": {"totalBytes": 10, "freeBytes": 4}}}
    catalog = {"volumes": {"pvc-x": {"id": f"pv-{'0' * 24}", "lu": f"pv-{'0' * 24}", "size": 48 * MiB,
                                     "state": "formatted", "created": 0}},
               "snapshots": {"snapshot-x": {"id": FS_SNAP, "source": f"pv-{'0' * 24}", "size": 48 * MiB,
                                            "state": "copying", "created": 0}}}
    found, problems = csivolumes.volumes(catalog=catalog, lus=lus, file_systems=snapshot["fileSystems"],
                                         served=served, snapshots={"fs1": [DIR_SNAP]})
    assert [(v["id"], v["mode"], v["fileSystem"], v["blade"]) for v in found] == [
        (DIR_VOL, "directory", "fs1", "b1"), (f"pv-{'0' * 24}", "filesystem", None, None)]
    standalone_lu = found[1]  # the CSI driver's LU on a standalone array: no file system of the array
    assert (standalone_lu["name"], standalone_lu["state"], standalone_lu["size"]) == ("pvc-x", "formatted", 48 * MiB)
    assert [(s["id"], s["ready"], s["created"]) for s in standalone_lu["snapshots"]] == [
        (FS_SNAP, False, "1970-01-01T00:00:00Z")]
    assert problems == [f"snapshot {DIR_SNAP} is not of a volume the driver's catalog knows"]


def test_kubernetes_volumes_from_persistent_volumes(snapshot: Snapshot) -> None:
    source = KubeSource.__new__(KubeSource)
    source.namespace, source.server, source.context = "storage", "https://k", "ctx"
    snapshot["fileSystems"].append({"name": FS_VOL, "group": "g1", "lu": f"fs-{FS_VOL}", "size": 64 * MiB,
                                    "blade": "b1", "homeBlade": "b1", "pinnedTo": None, "epoch": 1, "endpoint": None})

    driver = "a.storage.nas.nasblade.io"
    snapshot["arrays"][0]["csiDriver"] = driver  # status.csi.driver: one driver name per array

    def pv(name: str, handle: str, attrs: dict[str, str], driver: str = driver) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"phase": "Bound"},
                "spec": {"capacity": {"storage": "64Mi"}, "claimRef": {"namespace": "apps", "name": name + "-claim"},
                         "csi": {"driver": driver, "volumeHandle": handle, "volumeAttributes": attrs}}}

    lists = {
        "persistentvolumes": [
            pv("pvc-1", FS_VOL, {"lu": f"fs-{FS_VOL}", "diskArray": "storage/a", "export": f"/{FS_VOL}"}),
            pv("pvc-2", DIR_VOL, {"lu": "", "diskArray": "storage/a", "fileSystem": "fs1", "export": f"/fs1/{DIR_VOL}"}),
            pv("pvc-3", vid("elsewhere"), {"lu": "", "diskArray": "other/a", "export": "/fs1/x"}),
            pv("pvc-4", vid("nfs"), {}, driver="nfs.csi.k8s.io"),
            # the one name of every array before names were per array: not this array's driver
            pv("pvc-5", vid("old"), {"lu": "", "diskArray": "storage/a", "fileSystem": "fs1", "export": "/fs1/y"},
               driver="nas.nasblade.io")],
        "volumesnapshotcontents": [{"metadata": {"name": "snapcontent-1"},
                                    "spec": {"driver": driver, "source": {"volumeHandle": DIR_VOL},
                                             "volumeSnapshotRef": {"uid": "u1"}},
                                    "status": {"snapshotHandle": DIR_SNAP, "restoreSize": 64 * MiB,
                                               "readyToUse": True, "creationTime": 0}}],
    }
    source._cluster_list = lambda plural, **_: lists[plural]  # type: ignore[method-assign]
    result = source.volumes(snapshot)
    got = [(v["id"], v["name"], v["claim"], v["mode"], v["fileSystem"], v["group"], v["blade"], v["size"])
           for v in result["volumes"]]
    assert got == [(DIR_VOL, "pvc-2", "apps/pvc-2-claim", "directory", "fs1", "g1", "b1", 64 * MiB),
                   (FS_VOL, "pvc-1", "apps/pvc-1-claim", "filesystem", FS_VOL, "g1", "b1", 64 * MiB)]
    assert result["volumes"][0]["snapshots"] == [{"id": DIR_SNAP, "name": "snapshot-u1", "size": 64 * MiB,
                                                  "ready": True, "created": "1970-01-01T00:00:00Z"}]
