"""The CSI driver's pure rules: sizes from capacity ranges, pagination tokens, the catalog's
record format, the NFS mount command line, the mount table parser, volume capabilities."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from nasblade.controller.apiclient import ControlAPIError
from nasblade_csi import catalog, proto
from nasblade_csi.array import _kind
from nasblade_csi.controller import _page, choose_size, fits, snapshot_id, volume_id
from nasblade_csi.errors import CsiError, capability_error, guard
from nasblade_csi.node import mounted, nfs_mount_args

pb, _ = proto.load()
MiB = 1 << 20


def test_sizes_are_whole_mib_at_least_the_smallest_file_system() -> None:
    assert choose_size(0, 0) == 1 << 30
    assert choose_size(1, 0) == 48 * MiB
    assert choose_size(100 * MiB + 1, 0) == 101 * MiB
    assert choose_size(0, 64 * MiB) == 64 * MiB
    with pytest.raises(CsiError) as exc:
        choose_size(0, 10 * MiB)
    assert exc.value.code == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(CsiError) as exc:
        choose_size(2 * MiB, MiB)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fits(64 * MiB, 64 * MiB, 0) and not fits(64 * MiB, 65 * MiB, 0) and not fits(64 * MiB, 0, 63 * MiB)


def test_the_controllers_refusals_become_error_kinds_by_their_reason() -> None:
    """No space is the controller's ``409`` with ``"reason": "NoSpace"`` (or an older
    controller's ``507``): RESOURCE_EXHAUSTED, never a busy ``409`` (ABORTED)."""
    assert _kind(ControlAPIError(409, {"error": "no space: x", "reason": "NoSpace"})) == "nospace"
    assert _kind(ControlAPIError(507, {"error": "no space: x"})) == "nospace"
    assert _kind(ControlAPIError(409, {"error": "a running copy job uses this LU"})) == "busy"
    assert _kind(ControlAPIError(404, {"error": "not found: LU x"})) == "missing"
    assert _kind(ControlAPIError(503, {"error": "I/O error"})) == "failed"

    class Context:
        def abort(self, code: grpc.StatusCode, message: str) -> None:
            raise CsiError(code, message)

    def refused(status: int, body: dict[str, Any]) -> grpc.StatusCode:
        @guard
        def method(self: Any, request: Any, context: Any) -> None:
            raise ControlAPIError(status, body)
        with pytest.raises(CsiError) as exc:
            method(None, None, Context())
        return exc.value.code

    # a raw refusal (the catalog's own LU): no space is RESOURCE_EXHAUSTED, the rest UNAVAILABLE
    assert refused(409, {"error": "no space: x", "reason": "NoSpace"}) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused(507, {"error": "no space: x"}) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused(409, {"error": "already exists: x"}) == grpc.StatusCode.UNAVAILABLE


def test_ids_are_lu_names_derived_from_the_csi_name() -> None:
    assert volume_id("pvc-1") == volume_id("pvc-1") != volume_id("pvc-2")
    assert volume_id("pvc-1").startswith("pv-") and len(volume_id("x" * 300)) == 27
    assert snapshot_id("pvc-1").startswith("sn-")


def test_pages_and_tokens() -> None:
    items = list(range(5))
    assert _page(items, "", 0) == (items, "")
    assert _page(items, "", 2) == ([0, 1], "2")
    assert _page(items, "2", 2) == ([2, 3], "4")
    assert _page(items, "4", 2) == ([4], "")
    for bad in ("x", "6", "-1"):
        with pytest.raises(CsiError) as exc:
            _page(items, bad, 2)
        assert exc.value.code == grpc.StatusCode.ABORTED


def test_catalog_record_round_trip_and_limit() -> None:
    doc = {"volumes": {"pvc-1": {"id": "pv-1", "size": 5}}, "snapshots": {}}
    raw = catalog.encode(doc)
    assert len(raw) == catalog.RECORD
    assert catalog.decode(raw) == doc
    assert catalog.decode(bytes(catalog.RECORD)) == catalog.empty()
    with pytest.raises(catalog.CatalogFull):
        catalog.encode({"volumes": {"x": "y" * catalog.RECORD}})


def test_mount_command_fixes_the_options_that_matter() -> None:
    argv = nfs_mount_args({"server": "10.0.0.9", "export": "/pv-1", "nfsPort": "2049", "mountPort": "20048"},
                          "/stage", ["noatime"])
    assert argv == ["mount", "-t", "nfs", "-o",
                    "vers=3,proto=tcp,mountproto=tcp,hard,nolock,port=2049,mountport=20048,noatime",
                    "10.0.0.9:/pv-1", "/stage"]
    with pytest.raises(CsiError) as exc:
        nfs_mount_args({"lu": "pv-1"}, "/stage", [])
    assert exc.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_mounted_reads_the_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text("36 35 98:0 / /mnt/a rw,noatime - nfs 10.0.0.9:/x rw\n"
                     "37 35 98:0 / /mnt/with\\040space rw - nfs s:/y rw\n")
    assert mounted("/mnt/a", str(table))
    assert mounted("/mnt/with space", str(table))
    assert not mounted("/mnt/b", str(table))


def test_capabilities() -> None:
    mode = pb.VolumeCapability.AccessMode
    rwx = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                              access_mode=mode(mode=mode.MULTI_NODE_MULTI_WRITER))
    assert capability_error(rwx) == ""
    block = pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                                access_mode=mode(mode=mode.SINGLE_NODE_WRITER))
    assert "block" in capability_error(block)
    ext4 = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="ext4"),
                               access_mode=mode(mode=mode.SINGLE_NODE_WRITER))
    assert "ext4" in capability_error(ext4)
    assert "access_mode" in capability_error(pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume()))


def test_the_provisioner_works_on_claims_side_by_side_and_on_each_once() -> None:
    """A CreateVolume waits until the group serves the volume: two claims are in CreateVolume at
    the same time, and a claim whose call is still running is not queued again by later
    passes. (The API server is faked: what is tested is the provisioner's queue.)"""
    import threading
    import time

    from nasblade_csi.provisioner import Provisioner

    release, calls = threading.Event(), []

    class SlowController:
        def CreateVolume(self, request: object, context: object) -> object:
            calls.append(request.name)  # type: ignore[attr-defined]
            assert release.wait(10)
            return pb.CreateVolumeResponse(volume=pb.Volume(volume_id=request.name, capacity_bytes=64 * MiB))  # type: ignore[attr-defined]

    sc = {"metadata": {"name": "nas"}, "provisioner": "nas.nasblade.io", "parameters": {"diskArray": "ns/a1"}}
    claims = [{"metadata": {"name": n, "namespace": "ns", "uid": n}, "status": {"phase": "Pending"},
               "spec": {"storageClassName": "nas", "accessModes": ["ReadWriteMany"],
                        "resources": {"requests": {"storage": "64Mi"}}}} for n in ("u1", "u2")]
    listed = {"/apis/storage.k8s.io/v1/storageclasses": [sc], "/api/v1/persistentvolumes": [],
              "/api/v1/persistentvolumeclaims": claims}
    posted: list[str] = []
    p = Provisioner(None, SlowController(), array="ns/a1", workers=4)  # type: ignore[arg-type]
    p._items = lambda path: listed[path]  # type: ignore[method-assign]
    p._request = lambda method, path, body=None, **_: posted.append(f"{method} {path}")  # type: ignore[method-assign,misc]

    p.pass_once()
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(calls) == ["pvc-u1", "pvc-u2"]  # both waiting at once
    p.pass_once()  # the claims are still Pending: nothing queued twice
    time.sleep(0.2)
    assert len(calls) == 2
    release.set()
    while posted.count("POST /api/v1/persistentvolumes") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert posted.count("POST /api/v1/persistentvolumes") == 2


def test_the_provisioner_takes_the_classes_of_its_own_driver_name() -> None:
    """One driver name per array: a class of another array's driver is not this provisioner's
    (left alone, no Event); the classes of this driver are provisioned, and their
    PersistentVolumes carry this driver's name."""
    from nasblade_csi.provisioner import Provisioner

    made: list[str] = []

    class Controller:
        def CreateVolume(self, request: object, context: object) -> object:
            made.append(request.name)  # type: ignore[attr-defined]
            return pb.CreateVolumeResponse(volume=pb.Volume(volume_id=f"v-{request.name}", capacity_bytes=64 * MiB))  # type: ignore[attr-defined]

    me, other = "a1.ns.nas.nasblade.io", "a2.ns.nas.nasblade.io"
    classes = [{"metadata": {"name": "mine"}, "provisioner": me, "parameters": {}},
               {"metadata": {"name": "named"}, "provisioner": me, "parameters": {"diskArray": "ns/a1"}},
               {"metadata": {"name": "theirs"}, "provisioner": other, "parameters": {"diskArray": "ns/a2"}}]
    claims = [{"metadata": {"name": sc["metadata"]["name"], "namespace": "ns", "uid": sc["metadata"]["name"]},
               "status": {"phase": "Pending"},
               "spec": {"storageClassName": sc["metadata"]["name"], "accessModes": ["ReadWriteMany"],
                        "resources": {"requests": {"storage": "64Mi"}}}} for sc in classes]
    listed = {"/apis/storage.k8s.io/v1/storageclasses": classes, "/api/v1/persistentvolumes": [],
              "/api/v1/persistentvolumeclaims": claims}
    posted: list[tuple[str, Any]] = []
    p = Provisioner(None, Controller(), array="ns/a1", workers=1, driver_name=me)  # type: ignore[arg-type]
    p._items = lambda path: listed[path]  # type: ignore[method-assign]
    p._request = lambda method, path, body=None, **_: posted.append((path, body))  # type: ignore[method-assign,misc]
    assert [sc["metadata"]["name"] for sc in classes if p.mine(sc)] == ["mine", "named"]
    p.pass_once()
    deadline = time.monotonic() + 10
    while len([b for path, b in posted if path == "/api/v1/persistentvolumes"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(made) == ["pvc-mine", "pvc-named"]
    pvs = [b for path, b in posted if path == "/api/v1/persistentvolumes"]
    assert {pv["spec"]["csi"]["driver"] for pv in pvs} == {me}
    assert {pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] for pv in pvs} == {me}
    assert not [b for _, b in posted if b["kind"] == "Event" and b["involvedObject"]["name"] == "theirs"]


def test_a_class_of_this_driver_naming_another_array_is_refused() -> None:
    """Whoever calls CreateVolume (the upstream provisioner or the driver's own), a class whose
    ``diskArray`` names another array is INVALID_ARGUMENT with what to use instead, before
    anything is made; naming this array, or none, passes."""
    from nasblade_csi.exports import DiskArrayExports

    exports = DiskArrayExports(None, namespace="ns", array="a1", group="g1", clients=("10.0.0.0/8",))  # type: ignore[arg-type]
    with pytest.raises(CsiError) as exc:
        exports.entry("pv-x", 64 * MiB, {"diskArray": "ns/a2"})
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "names DiskArray ns/a2" in str(exc.value) and "status.csi.driver" in str(exc.value)
    with pytest.raises(CsiError):
        exports.publish_directory("pv-x", MiB, {"diskArray": "other/a1", "layout": "directory", "fileSystem": "home"})
    assert exports.entry("pv-x", 64 * MiB, {"diskArray": "ns/a1"})["clusterGroup"] == "g1"
    assert exports.entry("pv-x", 64 * MiB, {})["exports"][0]["clients"] == ["10.0.0.0/8"]


def test_a_volume_is_exported_to_the_nodes_whose_pods_use_it() -> None:
    """exportPolicy nodes: node addresses of running pods through their claims; finished pods,
    unscheduled pods, other namespaces' same-named claims and nodes without an address count
    for nothing."""
    from nasblade_csi.provisioner import internal_ip, node_clients

    def pod(ns: str, node: str | None, *claims: str, phase: str = "Running") -> dict[str, Any]:
        return {"metadata": {"namespace": ns}, "spec": {"nodeName": node, "volumes": [
            {"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims] + [{"name": "tmp", "emptyDir": {}}]},
            "status": {"phase": phase}}

    nodes = {"n1": internal_ip({"status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                                          {"type": "InternalIP", "address": "10.0.0.1"}]}}),
             "n2": "10.0.0.2", "n3": "fd00::3", "n4": internal_ip({"status": {}})}
    claims = {"a/data": "pv-1", "a/logs": "pv-2", "b/data": "pv-3"}
    pods = [pod("a", "n1", "data"), pod("a", "n2", "data", "logs"), pod("a", "n1", "data"),
            pod("a", "n3", "logs"), pod("a", None, "data"), pod("a", "n2", "other"),
            pod("b", "n4", "data"), pod("b", "n1", "data", phase="Succeeded")]
    assert node_clients(pods, claims, nodes) == {"pv-1": ["10.0.0.1/32", "10.0.0.2/32"],
                                                 "pv-2": ["10.0.0.2/32", "fd00::3/128"]}
