"""The controller service against a real storage controller, checked through the data: a
snapshot holds the file system as it was when it was taken, a volume made from it or cloned
from a volume holds that data, an expanded volume's file system has the room, the catalog
outlives the driver, and deleting everything leaves nothing on the array but the catalog."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from csiharness import Array, Driver, pb
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component
MiB = 1 << 20
ROOT = fsmod.Cred(0, 0)
RWX = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                          access_mode=pb.VolumeCapability.AccessMode(
                              mode=pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER))


def create(ctl: Any, name: str, size: int, *, snapshot: str = "", volume: str = "") -> Any:
    req = pb.CreateVolumeRequest(name=name, capacity_range=pb.CapacityRange(required_bytes=size),
                                 volume_capabilities=[RWX], parameters={"mode": "filesystem"})
    if snapshot:
        req.volume_content_source.snapshot.snapshot_id = snapshot
    if volume:
        req.volume_content_source.volume.volume_id = volume
    return ctl.CreateVolume(req).volume


def write(array: Array, lu: str, data: bytes) -> None:
    with NBDBlockDevice.connect(f"{array.nbd}/{lu}") as dev:
        f = fsmod.FileSystem(dev)
        try:
            ino, _ = f.create(fsmod.ROOT_INO, b"f", ROOT)
            f.write(ino, 0, data)
        finally:
            f.close()


def read(array: Array, lu: str) -> tuple[bytes, fsmod.FsStat]:
    with NBDBlockDevice.connect(f"{array.nbd}/{lu}") as dev:
        f = fsmod.FileSystem(dev)
        try:
            data = f.read(f.lookup(fsmod.ROOT_INO, b"f", ROOT), 0, 1 << 20)[0]
            stat = f.fsstat()
        finally:
            f.close()
        rep = fsck.check(dev)
        assert rep.clean, rep.problems
    return data, stat


def test_snapshots_clones_expansion_and_cleanup(array: Array, driver: Driver) -> None:
    ctl = driver.controller()
    a = create(ctl, "pvc-a", 64 * MiB)
    assert a.capacity_bytes == 64 * MiB and a.volume_context["lu"] == a.volume_id
    assert array.client.get_lu(a.volume_id)["size"] == 64 * MiB
    write(array, a.volume_id, b"one" * 1000)

    snap = ctl.CreateSnapshot(pb.CreateSnapshotRequest(name="snap-a", source_volume_id=a.volume_id)).snapshot
    assert snap.ready_to_use and snap.source_volume_id == a.volume_id and snap.size_bytes == 64 * MiB
    assert array.client.get_lu(snap.snapshot_id)["readOnly"] is True
    write(array, a.volume_id, b"two" * 1000)  # after the snapshot: not in it

    b = create(ctl, "pvc-b", 96 * MiB, snapshot=snap.snapshot_id)
    c = create(ctl, "pvc-c", 64 * MiB, volume=a.volume_id)
    assert b.content_source.snapshot.snapshot_id == snap.snapshot_id
    data_b, stat_b = read(array, b.volume_id)
    assert data_b == b"one" * 1000
    before = read(array, a.volume_id)[1]
    assert stat_b.total_bytes - before.total_bytes == 32 * MiB  # restored into a larger volume: grown
    assert read(array, c.volume_id)[0] == b"two" * 1000

    grown = ctl.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
        volume_id=a.volume_id, capacity_range=pb.CapacityRange(required_bytes=160 * MiB)))
    assert grown.capacity_bytes == 160 * MiB and not grown.node_expansion_required
    data_a, after = read(array, a.volume_id)
    assert data_a == b"two" * 1000
    assert after.total_bytes - before.total_bytes == 96 * MiB

    cap = ctl.GetCapacity(pb.GetCapacityRequest(volume_capabilities=[RWX]))
    assert cap.available_capacity == array.client.array()["free"]

    driver.stop()  # a new driver process finds everything in the catalog on the array
    driver.start()
    ctl = driver.controller()
    listed = {e.volume.volume_id: e.volume.capacity_bytes for e in ctl.ListVolumes(pb.ListVolumesRequest()).entries}
    assert listed == {a.volume_id: 160 * MiB, b.volume_id: 96 * MiB, c.volume_id: 64 * MiB}
    assert create(ctl, "pvc-a", 64 * MiB).volume_id == a.volume_id  # idempotent: fits 160 MiB
    snaps = ctl.ListSnapshots(pb.ListSnapshotsRequest(source_volume_id=a.volume_id)).entries
    assert [s.snapshot.snapshot_id for s in snaps] == [snap.snapshot_id]

    for v in (a, b, c):
        ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))
        ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.volume_id))  # idempotent
    ctl.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert [lu["name"] for lu in array.client.list_lus()] == ["csi-catalog"]
    assert not ctl.ListVolumes(pb.ListVolumesRequest()).entries


def test_a_snapshot_is_usable_once_its_copy_finishes(array: Array, tmp_path: Path) -> None:
    """With the copy throttled (16 MiB/s for 64 MiB) and no waiting, CreateSnapshot answers at
    once with ready_to_use false; a volume cannot be made from it yet; asked again it turns
    ready, and holds the data as of its first call, not a write made while it copied."""
    work = tmp_path / "csi-slow"
    work.mkdir()
    driver = Driver(work, array, extra=["--snapshot-wait", "0", "--copy-rate-limit", str(16 * MiB)])
    driver.start()
    try:
        ctl = driver.controller()
        a = create(ctl, "pvc-slow", 64 * MiB)
        write(array, a.volume_id, b"before")
        req = pb.CreateSnapshotRequest(name="snap-slow", source_volume_id=a.volume_id)
        first = ctl.CreateSnapshot(req).snapshot
        assert not first.ready_to_use
        write(array, a.volume_id, b"during")  # after the point in time: not in the snapshot
        with pytest.raises(grpc.RpcError) as exc:
            create(ctl, "pvc-from-slow", 64 * MiB, snapshot=first.snapshot_id)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        listed = ctl.ListSnapshots(pb.ListSnapshotsRequest(snapshot_id=first.snapshot_id)).entries
        assert [e.snapshot.ready_to_use for e in listed] == [False]
        deadline = time.monotonic() + 60
        while not (snap := ctl.CreateSnapshot(req).snapshot).ready_to_use:
            assert time.monotonic() < deadline, "the snapshot never became ready"
            time.sleep(0.5)
        assert snap.creation_time == first.creation_time
        b = create(ctl, "pvc-from-slow", 64 * MiB, snapshot=snap.snapshot_id)
        assert read(array, b.volume_id)[0] == b"before"
    finally:
        driver.stop()


ZONE = "topology.kubernetes.io/zone"


def test_an_array_reachable_from_some_nodes_gives_its_volumes_that_topology(array: Array, tmp_path: Path) -> None:
    """``--topology``: the plugin advertises accessibility constraints; a volume is usable from
    the array's segments that meet the requisite (all without one), ListVolumes says the same,
    a requisite the array cannot meet is RESOURCE_EXHAUSTED before any LU is made, and
    GetCapacity is 0 from elsewhere."""
    work = tmp_path / "csi-topology"
    work.mkdir()
    driver = Driver(work, array, extra=["--topology", f'[{{"{ZONE}": "a"}}, {{"{ZONE}": "b"}}]'])
    driver.start()
    try:
        caps = driver.identity().GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
        assert pb.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS in [c.service.type for c in caps]
        ctl = driver.controller()

        def request(name: str, *requisite: dict[str, str]) -> Any:
            req = pb.CreateVolumeRequest(name=name, capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
                                         volume_capabilities=[RWX])
            for segment in requisite:
                req.accessibility_requirements.requisite.add(segments=segment)
            return req

        anywhere = ctl.CreateVolume(request("pvc-any")).volume
        assert [dict(t.segments) for t in anywhere.accessible_topology] == [{ZONE: "a"}, {ZONE: "b"}]
        # the node a WaitForFirstConsumer claim was scheduled to: zone b (and its region)
        on_b = ctl.CreateVolume(request("pvc-b", {ZONE: "b", "topology.kubernetes.io/region": "r"})).volume
        assert [dict(t.segments) for t in on_b.accessible_topology] == [{ZONE: "b"}]
        again = ctl.CreateVolume(request("pvc-b", {ZONE: "b", "topology.kubernetes.io/region": "r"})).volume
        assert again.volume_id == on_b.volume_id and list(again.accessible_topology) == list(on_b.accessible_topology)
        lus = {lu["name"] for lu in array.client.list_lus()}
        with pytest.raises(grpc.RpcError) as exc:
            ctl.CreateVolume(request("pvc-c", {ZONE: "c"}))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "reachable only from" in exc.value.details()
        assert {lu["name"] for lu in array.client.list_lus()} == lus  # nothing was made
        listed = ctl.ListVolumes(pb.ListVolumesRequest()).entries
        assert {len(e.volume.accessible_topology) for e in listed} == {2}
        here = ctl.GetCapacity(pb.GetCapacityRequest(accessible_topology=pb.Topology(segments={ZONE: "a"})))
        there = ctl.GetCapacity(pb.GetCapacityRequest(accessible_topology=pb.Topology(segments={ZONE: "c"})))
        assert here.available_capacity > 0 and there.available_capacity == 0
    finally:
        driver.stop()


def test_without_topology_requirements_are_ignored(driver: Driver) -> None:
    """An array reachable from every node: no accessibility capability, and a requisite (which
    a CO may still send) changes nothing: the volume has no topology, usable everywhere."""
    caps = driver.identity().GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()).capabilities
    assert pb.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS not in [c.service.type for c in caps]
    req = pb.CreateVolumeRequest(name="pvc-z", capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
                                 volume_capabilities=[RWX])
    req.accessibility_requirements.requisite.add(segments={ZONE: "z"})
    assert not driver.controller().CreateVolume(req).volume.accessible_topology
