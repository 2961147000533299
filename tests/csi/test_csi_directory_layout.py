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
        self.calls: list[tuple[str, str, int]] = []

    def lu(self, volume: str) -> str:
        raise AssertionError("a directory volume has no LU of its own")

    def publish(self, volume: str, size: int, parameters: Mapping[str, str]) -> dict[str, str]:
        raise AssertionError("a directory volume is not a file system of the array")

    def unpublish(self, volume: str) -> None:
        raise AssertionError("a directory volume is not a file system of the array")

    def publish_directory(self, volume: str, size: int, parameters: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        self.calls.append(("publish", volume, size))
        self.quotas[volume] = size
        fs = parameters["fileSystem"]
        return fs, {"server": f"a1-{fs}-nfs.ns.svc", "export": f"/{fs}/{volume}"}

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

    # no snapshots or clones of a directory, none into one
    assert code_of(ctl.CreateSnapshot, pb.CreateSnapshotRequest(
        name="snap-d1", source_volume_id=vol.volume_id)) == grpc.StatusCode.FAILED_PRECONDITION
    clone = pb.CreateVolumeRequest(name="pvc-d2", capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
                                   volume_capabilities=[RWX], parameters={"layout": "filesystem"})
    clone.volume_content_source.volume.volume_id = vol.volume_id
    assert code_of(ctl.CreateVolume, clone) == grpc.StatusCode.INVALID_ARGUMENT
    into = pb.CreateVolumeRequest(name="pvc-d3", capacity_range=pb.CapacityRange(required_bytes=MiB),
                                  volume_capabilities=[RWX], parameters=PARAMS)
    into.volume_content_source.volume.volume_id = vol.volume_id
    assert code_of(ctl.CreateVolume, into) == grpc.StatusCode.INVALID_ARGUMENT
    bad = pb.CreateVolumeRequest(name="pvc-d4", volume_capabilities=[RWX], parameters={"layout": "qtree"})
    assert code_of(ctl.CreateVolume, bad) == grpc.StatusCode.INVALID_ARGUMENT

    call(ctl.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vol.volume_id))
    call(ctl.DeleteVolume, pb.DeleteVolumeRequest(volume_id=vol.volume_id))  # idempotent
    assert blades.quotas == {}
    assert [c[0] for c in blades.calls] == ["publish", "resize", "delete"]
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
