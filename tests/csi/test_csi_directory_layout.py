"""The controller service's ``layout: directory`` (directory volumes, like Trident's
nas-economy): what it records and asks of the blades, against a real storage controller and
catalog. The blade side (``Exports.publish_directory`` & co.) is a recorder here: the blades'
directory volumes are tested with real blades in tests/cluster/test_directory_volumes.py and
the whole path on the real cluster in e2e step 3f."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import pytest
from csiharness import Array, Driver, pb
from nasblade_csi.array import Array as CsiArray
from nasblade_csi.catalog import Catalog
from nasblade_csi.controller import Controller
from nasblade_csi.errors import CsiError

pytestmark = pytest.mark.component
MiB = 1 << 20
RWX = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                          access_mode=pb.VolumeCapability.AccessMode(
                              mode=pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER))
PARAMS = {"layout": "directory", "fileSystem": "shared"}


class Blades:
    """Records what the controller service asks of the blade serving the shared file system."""

    served = True

    def __init__(self) -> None:
        self.quotas: dict[str, int] = {}
        self.sources: dict[str, dict[str, str]] = {}
        self.snapshots: set[str] = set()
        self.calls: list[tuple[str, str, int]] = []

    def lu(self, volume: str) -> str:
        raise AssertionError("a directory volume has no LU of its own")

    def publish(self, volume: str, size: int, parameters: Mapping[str, str]) -> dict[str, str]:
        raise AssertionError("a directory volume is not a file system of the array")

    def unpublish(self, volume: str) -> None:
        raise AssertionError("a directory volume is not a file system of the array")

    def publish_directory(self, volume: str, size: int, parameters: Mapping[str, str], *,
                          source: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
        self.calls.append(("publish", volume, size))
        if source:
            self.sources[volume] = dict(source)
        self.quotas[volume] = size
        fs = parameters["fileSystem"]
        return fs, {"server": f"a1-{fs}-nfs.ns.svc", "export": f"/{fs}/{volume}"}

    def snapshot_directory(self, volume: str, file_system: str, snapshot: str) -> None:
        assert volume in self.quotas and file_system == "shared"
        self.calls.append(("snapshot", snapshot, 0))
        self.snapshots.add(snapshot)

    def unsnapshot_directory(self, file_system: str, snapshot: str) -> None:
        self.calls.append(("unsnapshot", snapshot, 0))
        self.snapshots.discard(snapshot)

    def resize_directory(self, volume: str, file_system: str, size: int) -> None:
        self.calls.append(("resize", volume, size))
        self.quotas[volume] = size

    def unpublish_directory(self, volume: str, file_system: str) -> None:
        self.calls.append(("delete", volume, 0))
        self.quotas.pop(volume, None)

    def directory_space(self, parameters: Mapping[str, str]) -> int:
        assert parameters["fileSystem"] == "shared"
        return 100 * MiB - sum(self.quotas.values())  # as if every quota were full


class Ctx:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise CsiError(code, details)


def call(method: Any, request: Any) -> Any:
    return method(request, Ctx())


def code_of(method: Any, request: Any) -> grpc.StatusCode:
    with pytest.raises(CsiError) as err:
        call(method, request)
    return err.value.code


def test_directory_volumes_are_quotas_in_a_shared_file_system(array: Array) -> None:
    control = array.client
    blades = Blades()
    ctl = Controller(CsiArray(control, array.nbd), Catalog(control, array.nbd), exports=blades)

    req = pb.CreateVolumeRequest(name="pvc-d1", capacity_range=pb.CapacityRange(required_bytes=3 * MiB + 1),
                                 volume_capabilities=[RWX], parameters=PARAMS)
    vol = call(ctl.CreateVolume, req).volume
    assert vol.capacity_bytes == 4 * MiB  # whole MiB, no file-system minimum
    assert vol.volume_context["export"] == f"/shared/{vol.volume_id}"
    assert blades.quotas == {vol.volume_id: 4 * MiB}
    assert call(ctl.CreateVolume, req).volume.volume_id == vol.volume_id  # idempotent
    assert blades.calls == [("publish", vol.volume_id, 4 * MiB)]  # once: the record says it is ready
    assert [lu["name"] for lu in control.list_lus()] == ["csi-catalog"]  # no LU made for it
    other = pb.CreateVolumeRequest(name="pvc-d1", capacity_range=pb.CapacityRange(required_bytes=3 * MiB),
                                   volume_capabilities=[RWX], parameters={**PARAMS, "fileSystem": "other"})
    assert code_of(ctl.CreateVolume, other) == grpc.StatusCode.ALREADY_EXISTS
    listed = call(ctl.ListVolumes, pb.ListVolumesRequest()).entries
    assert [e.volume.volume_id for e in listed] == [vol.volume_id]
    # capacity: the shared file system's free space, not the array's; a directory from 1 MiB
    cap = call(ctl.GetCapacity, pb.GetCapacityRequest(volume_capabilities=[RWX], parameters=PARAMS))
    assert (cap.available_capacity, cap.minimum_volume_size.value) == (96 * MiB, MiB)
    whole = call(ctl.GetCapacity, pb.GetCapacityRequest(volume_capabilities=[RWX], parameters={"layout": "filesystem"}))
    assert whole.available_capacity == CsiArray(control, array.nbd).free() != 96 * MiB

    grown = call(ctl.ControllerExpandVolume, pb.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=pb.CapacityRange(required_bytes=10 * MiB)))
    assert (grown.capacity_bytes, grown.node_expansion_required) == (10 * MiB, False)
    assert blades.quotas[vol.volume_id] == 10 * MiB

    # a snapshot: made by the blade that serves the file system, ready at once, idempotent
    snap_req = pb.CreateSnapshotRequest(name="snap-d1", source_volume_id=vol.volume_id)
    snap = call(ctl.CreateSnapshot, snap_req).snapshot
    assert snap.ready_to_use and snap.source_volume_id == vol.volume_id and snap.size_bytes == 10 * MiB
    assert call(ctl.CreateSnapshot, snap_req).snapshot.snapshot_id == snap.snapshot_id
    assert blades.snapshots == {snap.snapshot_id}
    listed_snaps = call(ctl.ListSnapshots, pb.ListSnapshotsRequest(source_volume_id=vol.volume_id)).entries
    assert [e.snapshot.snapshot_id for e in listed_snaps] == [snap.snapshot_id]
    # restored and cloned into directory volumes of the same file system
    restore = pb.CreateVolumeRequest(name="pvc-r1", capacity_range=pb.CapacityRange(required_bytes=MiB),
                                     volume_capabilities=[RWX], parameters=PARAMS)
    restore.volume_content_source.snapshot.snapshot_id = snap.snapshot_id
    restored = call(ctl.CreateVolume, restore).volume
    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    assert blades.sources[restored.volume_id] == {"snapshot": snap.snapshot_id}
    assert call(ctl.CreateVolume, restore).volume.volume_id == restored.volume_id  # idempotent
    clone = pb.CreateVolumeRequest(name="pvc-c1", capacity_range=pb.CapacityRange(required_bytes=MiB),
                                   volume_capabilities=[RWX], parameters=PARAMS)
    clone.volume_content_source.volume.volume_id = vol.volume_id
    cloned = call(ctl.CreateVolume, clone).volume
    assert blades.sources[cloned.volume_id] == {"directory": vol.volume_id}
    # the same name with another source is another volume
    other_src = pb.CreateVolumeRequest(name="pvc-c1", capacity_range=pb.CapacityRange(required_bytes=MiB),
                                       volume_capabilities=[RWX], parameters=PARAMS)
    other_src.volume_content_source.snapshot.snapshot_id = snap.snapshot_id
    assert code_of(ctl.CreateVolume, other_src) == grpc.StatusCode.ALREADY_EXISTS
    # copies never cross layouts or file systems
    into_fs = pb.CreateVolumeRequest(name="pvc-d2", capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
                                     volume_capabilities=[RWX], parameters={"layout": "filesystem"})
    into_fs.volume_content_source.volume.volume_id = vol.volume_id
    assert code_of(ctl.CreateVolume, into_fs) == grpc.StatusCode.INVALID_ARGUMENT
    into_fs.volume_content_source.snapshot.snapshot_id = snap.snapshot_id
    assert code_of(ctl.CreateVolume, into_fs) == grpc.StatusCode.INVALID_ARGUMENT
    elsewhere = pb.CreateVolumeRequest(name="pvc-d3", capacity_range=pb.CapacityRange(required_bytes=MiB),
                                       volume_capabilities=[RWX], parameters={**PARAMS, "fileSystem": "other"})
    elsewhere.volume_content_source.volume.volume_id = vol.volume_id
    assert code_of(ctl.CreateVolume, elsewhere) == grpc.StatusCode.INVALID_ARGUMENT
    missing = pb.CreateVolumeRequest(name="pvc-d5", volume_capabilities=[RWX], parameters=PARAMS)
    missing.volume_content_source.snapshot.snapshot_id = "sn-nope"
    assert code_of(ctl.CreateVolume, missing) == grpc.StatusCode.NOT_FOUND
    bad = pb.CreateVolumeRequest(name="pvc-d4", volume_capabilities=[RWX], parameters={"layout": "qtree"})
    assert code_of(ctl.CreateVolume, bad) == grpc.StatusCode.INVALID_ARGUMENT
    call(ctl.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    call(ctl.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))  # idempotent
    assert blades.snapshots == set()
    for extra in (restored, cloned):
        call(ctl.DeleteVolume, pb.DeleteVolumeRequest(volume_id=extra.volume_id))

    call(ctl.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    call(ctl.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vol.volume_id))  # idempotent
    assert blades.quotas == {}
    assert [c[0] for c in blades.calls] == ["publish", "resize", "snapshot", "publish", "publish", "unsnapshot",
                                            "delete", "delete", "delete"]
    assert not call(ctl.ListVolumes, pb.ListVolumesRequest()).entries
    assert [lu["name"] for lu in control.list_lus()] == ["csi-catalog"]


def test_without_a_diskarray_the_driver_refuses_the_layout(driver: Driver) -> None:
    """The real driver process with a fixed export (no DiskArray): nowhere to make a directory
    volume, so CreateVolume says so and records nothing."""
    ctl = driver.controller()
    req = pb.CreateVolumeRequest(name="pvc-dir", capacity_range=pb.CapacityRange(required_bytes=MiB),
                                 volume_capabilities=[RWX], parameters=PARAMS)
    with pytest.raises(grpc.RpcError) as err:
        ctl.CreateVolume(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--diskarray" in (err.value.details() or "")
    assert not ctl.ListVolumes(pb.ListVolumesRequest()).entries
