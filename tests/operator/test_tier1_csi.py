"""The CSI controller service on Kubernetes (``nasblade-csi --diskarray``): a volume becomes a
file system of the DiskArray that a ClusterGroup serves through its own NFS Service.

Against the real operator, API server and storage controller of tier 1 (blade pods do not run
here: ``FakeBlades`` answers their API, so the blades are told of the volume but nothing
mounts it; tests/cluster/test_reconfigure.py and e2e step 3d show real blades serving a file
system added that way). The driver's controller service runs in this process, as the
provisioner and resizer would call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pykube
import pytest
from conftest import Controller, Kubectl, assert_clean
from fakeblade import FakeBlades
from nasblade.controller.apiclient import ControlAPIError, ControlClient
from test_tier1_operator import array, group, service_blade, wait_until

pytestmark = pytest.mark.tier1


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class Ctx:
    """The part of ``grpc.ServicerContext`` the servicers use."""

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise Aborted(code, message)


def test_a_volume_is_a_file_system_of_the_diskarray_served_by_its_group(
    kubectl: Kubectl, operator: Callable[[], Any], controller: Controller, blades: FakeBlades,
    token_secret: Callable[[str], None], use_tier1: str, namespace: str,
) -> None:
    from nasblade_csi import proto
    from nasblade_csi.array import Array
    from nasblade_csi.catalog import Catalog
    from nasblade_csi.controller import Controller as Csi
    from nasblade_csi.exports import DiskArrayExports

    pb, _ = proto.load()
    control = ControlClient(controller.api, controller.token)
    nbd = f"nbd://{controller.nbd}"
    cap = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                              access_mode=pb.VolumeCapability.AccessMode(mode=5))  # MULTI_NODE_MULTI_WRITER
    token_secret("a1")
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group())
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        exports = DiskArrayExports(pykube.HTTPClient(pykube.KubeConfig.from_file(use_tier1)), namespace=namespace,
                                   array="a1", group="g1", clients=("10.0.0.0/8",), timeout=90, poll=0.5)
        csi = Csi(Array(control, nbd), Catalog(control, nbd), exports=exports)

        def create(**parameters: str) -> Any:
            return csi.CreateVolume(pb.CreateVolumeRequest(
                name="pvc-1", capacity_range=pb.CapacityRange(required_bytes=64 << 20),
                volume_capabilities=[cap], parameters=parameters), Ctx()).volume

        with pytest.raises(Aborted) as bad:
            csi.CreateVolume(pb.CreateVolumeRequest(
                name="pvc-bad", capacity_range=pb.CapacityRange(required_bytes=64 << 20),
                volume_capabilities=[cap], parameters={"squash": "sometimes"}), Ctx())
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "squash" in str(bad.value)

        vol = create(clients="10.1.2.0/24")
        vid = vol.volume_id
        assert dict(vol.volume_context) == {"server": f"a1-{vid}-nfs.{namespace}.svc", "export": f"/{vid}",
                                            "lu": f"fs-{vid}"}
        da = kubectl.get("diskarray", "a1") or {}
        entry = next(f for f in da["spec"]["fileSystems"] if f["name"] == vid)
        assert entry == {"name": vid, "size": str(64 << 20), "clusterGroup": "g1",
                         "exports": [{"clients": ["10.1.2.0/24"], "access": "rw", "squash": "root"}]}
        # formatted by the driver, recorded (not formatted again) by the operator
        assert next(f for f in da["status"]["fileSystems"] if f["name"] == vid)["formatted"] is True
        assert service_blade(kubectl, vid) == "g1-blade-0"
        wait_until("both blades told of the volume",
                   lambda: {b for b, _, fs in blades.of("configure") if vid in fs} == {"g1-blade-0", "g1-blade-1"})
        before = Array(control, nbd).fs_size(f"fs-{vid}")
        # idempotent: the same name gives the same volume, and nothing more in the spec
        assert create(clients="10.1.2.0/24") == vol
        assert [f["name"] for f in (kubectl.get("diskarray", "a1") or {})["spec"]["fileSystems"]].count(vid) == 1

        # offline expansion: the group lets go of it, the LU and file system grow, it is served again
        grown = csi.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=128 << 20)), Ctx())
        assert grown.capacity_bytes == 128 << 20 and not grown.node_expansion_required
        assert int(control.get_lu(f"fs-{vid}")["size"]) == 128 << 20
        assert Array(control, nbd).fs_size(f"fs-{vid}") - before >= (64 << 20) - (4 << 20)
        da = kubectl.get("diskarray", "a1") or {}
        assert next(f for f in da["spec"]["fileSystems"] if f["name"] == vid)["size"] == str(128 << 20)
        assert service_blade(kubectl, vid) == "g1-blade-0"

        csi.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid), Ctx())
        da = kubectl.get("diskarray", "a1") or {}
        assert vid not in [f["name"] for f in da["spec"]["fileSystems"]]
        assert kubectl.get("service", f"a1-{vid}-nfs") is None
        with pytest.raises(ControlAPIError) as gone:
            control.get_lu(f"fs-{vid}")
        assert gone.value.status == 404
        wait_until("both blades told it is gone", lambda: {
            b for b, _, fs in blades.of("configure") if fs == ["home", "scratch"]} == {"g1-blade-0", "g1-blade-1"})
        csi.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid), Ctx())  # idempotent
    assert_clean(runner)
