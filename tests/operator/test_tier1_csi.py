"""The CSI controller service on Kubernetes (``nasblade-csi --diskarray``): a volume becomes a
file system of the DiskArray that a ClusterGroup serves through its own NFS Service.

Against the real operator, API server and storage controller of tier 1 (blade pods do not run
here: ``FakeBlades`` answers their API, so the blades are told of the volume but nothing
mounts it; tests/cluster/test_reconfigure.py and e2e step 3d show real blades serving a file
system added that way). The driver's controller service runs in this process, as the
provisioner and resizer would call it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pykube
import pytest
from conftest import Controller, Kubectl, assert_clean
from fakeblade import FakeBlades
from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade_csi.provisioner import CallFailed, InProcessContext
from nasblade_operator import naming
from test_tier1_operator import array, group, service_blade, wait_until

pytestmark = pytest.mark.tier1


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
                volume_capabilities=[cap], parameters=parameters), InProcessContext()).volume

        with pytest.raises(CallFailed) as bad:
            csi.CreateVolume(pb.CreateVolumeRequest(
                name="pvc-bad", capacity_range=pb.CapacityRange(required_bytes=64 << 20),
                volume_capabilities=[cap], parameters={"squash": "sometimes"}), InProcessContext())
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "squash" in str(bad.value)

        vol = create(clients="10.1.2.0/24")
        vid = vol.volume_id
        assert dict(vol.volume_context) == {"server": f"a1-{vid}-nfs.{namespace}.svc", "export": f"/{vid}",
                                            "diskArray": f"{namespace}/a1", "lu": f"fs-{vid}"}
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
            volume_id=vid, capacity_range=pb.CapacityRange(required_bytes=128 << 20)), InProcessContext())
        assert grown.capacity_bytes == 128 << 20 and not grown.node_expansion_required
        assert int(control.get_lu(f"fs-{vid}")["size"]) == 128 << 20
        assert Array(control, nbd).fs_size(f"fs-{vid}") - before >= (64 << 20) - (4 << 20)
        da = kubectl.get("diskarray", "a1") or {}
        assert next(f for f in da["spec"]["fileSystems"] if f["name"] == vid)["size"] == str(128 << 20)
        assert service_blade(kubectl, vid) == "g1-blade-0"

        csi.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid), InProcessContext())
        da = kubectl.get("diskarray", "a1") or {}
        assert vid not in [f["name"] for f in da["spec"]["fileSystems"]]
        assert kubectl.get("service", f"a1-{vid}-nfs") is None
        with pytest.raises(ControlAPIError) as gone:
            control.get_lu(f"fs-{vid}")
        assert gone.value.status == 404
        wait_until("both blades told it is gone", lambda: {
            b for b, _, fs in blades.of("configure") if fs == ["home", "scratch"]} == {"g1-blade-0", "g1-blade-1"})
        csi.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid), InProcessContext())  # idempotent
    assert_clean(runner)


def test_claims_of_the_storage_class_become_volumes_bound_grown_and_deleted(
    kubectl: Kubectl, operator: Callable[[], Any], controller: Controller, blades: FakeBlades,
    token_secret: Callable[[str], None], use_tier1: str, namespace: str,
) -> None:
    """The provisioner and resizer jobs (``nasblade_csi.provisioner``, what ``--provision``
    runs): a claim of the driver's StorageClass becomes a volume and a PersistentVolume that
    the real kube-controller-manager binds; a clone of it too; a larger request grows it; a
    claim the driver refuses gets a Warning Event; deleted claims take their volumes with
    them (reclaim policy Delete)."""
    import threading

    from nasblade_csi.array import Array
    from nasblade_csi.catalog import Catalog
    from nasblade_csi.controller import Controller as Csi
    from nasblade_csi.exports import DiskArrayExports
    from nasblade_csi.provisioner import Provisioner

    control = ControlClient(controller.api, controller.token)
    nbd = f"nbd://{controller.nbd}"
    api = pykube.HTTPClient(pykube.KubeConfig.from_file(use_tier1))
    sc_name, bad_sc, other_sc = f"nasblade-{namespace}", f"nasblade-bad-{namespace}", f"nasblade-other-{namespace}"
    wrong_sc = f"nasblade-wrong-{namespace}"

    driver = naming.csi_driver_name(namespace, "a1")

    def storage_class(name: str, provisioner: str = driver, **parameters: str) -> dict[str, Any]:
        return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                "provisioner": provisioner, "reclaimPolicy": "Delete", "allowVolumeExpansion": True,
                "volumeBindingMode": "Immediate", "mountOptions": ["noatime"], "parameters": parameters}

    def claim(name: str, size: str, sc: str = sc_name, source: str = "") -> dict[str, Any]:
        spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "storageClassName": sc,
                                "resources": {"requests": {"storage": size}}}
        if source:
            spec["dataSource"] = {"kind": "PersistentVolumeClaim", "name": source}
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}

    def bound(name: str) -> dict[str, Any] | None:
        c = kubectl.get("pvc", name)
        return c if c and c.get("status", {}).get("phase") == "Bound" else None

    def fs_names() -> list[str]:
        return [f["name"] for f in (kubectl.get("diskarray", "a1") or {})["spec"]["fileSystems"]]

    token_secret("a1")
    stop = threading.Event()
    with operator() as runner:
        kubectl.apply(array())
        kubectl.apply(group())
        kubectl.wait("clustergroup/g1", "condition=Ready", timeout=90)
        exports = DiskArrayExports(api, namespace=namespace, array="a1", group="g1", timeout=90, poll=0.5)
        provisioner = Provisioner(api, Csi(Array(control, nbd), Catalog(control, nbd), exports=exports),
                                  array=f"{namespace}/a1", interval=0.5, driver_name=driver)
        thread = threading.Thread(target=provisioner.run, args=(stop,), daemon=True)
        thread.start()
        try:
            mine = f"{namespace}/a1"
            kubectl.apply(storage_class(sc_name, clusterGroup="g1", clients="10.1.0.0/16"))
            kubectl.apply(storage_class(bad_sc, clusterGroup="g1", diskArray=mine))  # no clients: refused
            another = naming.csi_driver_name(namespace, "another")
            kubectl.apply(storage_class(other_sc, another, clusterGroup="g1", clients="10.1.0.0/16",
                                        diskArray=f"{namespace}/another"))  # another array's driver
            # this array's driver, another array's name: refused, saying which driver to use
            kubectl.apply(storage_class(wrong_sc, clusterGroup="g1", clients="10.1.0.0/16",
                                        diskArray=f"{namespace}/another"))
            kubectl.apply(claim("data", "64Mi"))
            kubectl.apply(claim("nowhere", "64Mi", sc=bad_sc))
            kubectl.apply(claim("elsewhere", "64Mi", sc=other_sc))
            kubectl.apply(claim("mixed", "64Mi", sc=wrong_sc))
            data = wait_until("claim data Bound", lambda: bound("data"), timeout=120)
            pv = kubectl.get("pv", data["spec"]["volumeName"]) or {}
            assert pv["metadata"]["name"] == f"pvc-{data['metadata']['uid']}"
            assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == driver
            vid = pv["spec"]["csi"]["volumeHandle"]
            assert pv["spec"]["csi"]["driver"] == driver
            assert pv["spec"]["csi"]["volumeAttributes"]["server"] == f"a1-{vid}-nfs.{namespace}.svc"
            assert pv["spec"]["capacity"]["storage"] == str(64 << 20) and pv["spec"]["mountOptions"] == ["noatime"]
            assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
            assert vid in fs_names() and service_blade(kubectl, vid)
            assert ("Normal", "ProvisioningSucceeded") in _claim_events(kubectl, "data")
            wait_until("the refused claim's Warning", lambda: ("Warning", "ProvisioningFailed")
                       in _claim_events(kubectl, "nowhere"))
            assert (kubectl.get("pvc", "nowhere") or {})["status"]["phase"] == "Pending"
            wait_until("the mixed claim's Warning", lambda: ("Warning", "ProvisioningFailed")
                       in _claim_events(kubectl, "mixed"))
            assert (kubectl.get("pvc", "mixed") or {})["status"]["phase"] == "Pending"
            # a class of another array is that array's driver's: left alone
            assert (kubectl.get("pvc", "elsewhere") or {})["status"]["phase"] == "Pending"
            assert not {r for _, r in _claim_events(kubectl, "elsewhere")} & {"ProvisioningSucceeded",
                                                                                "ProvisioningFailed"}
            assert pv["spec"]["csi"]["volumeAttributes"]["diskArray"] == mine

            kubectl.apply(claim("copy", "64Mi", source="data"))
            copy = wait_until("the clone Bound", lambda: bound("copy"), timeout=120)
            copy_vid = (kubectl.get("pv", copy["spec"]["volumeName"]) or {})["spec"]["csi"]["volumeHandle"]
            assert copy_vid in fs_names() and copy_vid != vid

            kubectl("patch", "pvc", "data", "--type=merge", "-p",
                    '{"spec": {"resources": {"requests": {"storage": "128Mi"}}}}')
            wait_until("the claim grown", lambda: (kubectl.get("pvc", "data") or {}).get("status", {})
                       .get("capacity", {}).get("storage") in (str(128 << 20), "128Mi"), timeout=120)
            assert (kubectl.get("pv", pv["metadata"]["name"]) or {})["spec"]["capacity"]["storage"] == str(128 << 20)
            assert int(control.get_lu(f"fs-{vid}")["size"]) == 128 << 20
            assert ("Normal", "VolumeResizeSuccessful") in _claim_events(kubectl, "data")

            kubectl("delete", "pvc", "copy", "data", "nowhere", "elsewhere", "mixed", "--wait=false")
            wait_until("both volumes deleted", lambda: kubectl.get("pv", pv["metadata"]["name"]) is None
                       and kubectl.get("pv", copy["spec"]["volumeName"]) is None, timeout=120)
            assert vid not in fs_names() and copy_vid not in fs_names()
            for lu in (f"fs-{vid}", f"fs-{copy_vid}"):
                with pytest.raises(ControlAPIError):
                    control.get_lu(lu)
        finally:
            stop.set()
            thread.join(30)
            kubectl("delete", "storageclass", sc_name, bad_sc, other_sc, wrong_sc, "--ignore-not-found", check=False)
    assert_clean(runner)


def _claim_events(kubectl: Kubectl, name: str) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in kubectl.list("events")
            if e["involvedObject"].get("kind") == "PersistentVolumeClaim" and e["involvedObject"]["name"] == name]


def test_the_operator_runs_a_diskarrays_csi_controller_plugin(
    kubectl: Kubectl, operator: Callable[[], Any], token_secret: Callable[[str], None], namespace: str,
) -> None:
    """``spec.csi.enabled``: the operator makes the plugin's ServiceAccount, its bindings to the
    installation's two CSI ClusterRoles, its Deployment, and under the array's own driver name a
    CSIDriver and a VolumeSnapshotClass; turning it off removes them all, and so does deleting the
    DiskArray (the cluster-wide ones have no owner to take them). A driver name another
    installation holds is refused with a Warning, and so is CSI on an operator installed without
    the ClusterRole; the array keeps running."""
    import nbcluster
    from test_tier1_operator import condition, events

    token_secret("a1")
    nbcluster.install_snapshot_crds(kubectl)  # the VolumeSnapshotClass API, as a distribution has it
    binding = f"nasblade-csi-{namespace}-a1"
    driver = naming.csi_driver_name(namespace, "a1")
    taken = f"taken.{namespace}.example.com"
    csi_on = {"enabled": True, "clusterGroup": "g1", "clients": ["10.1.0.0/16", "192.168.7.0/24"]}
    with operator() as runner:  # no NASBLADE_CSI_CLUSTER_ROLE
        kubectl.apply(array(csi=csi_on))
        kubectl.wait("diskarray/a1", "condition=Ready", timeout=90)
        wait_until("CsiRefused", lambda: ("Warning", "CsiRefused") in events(kubectl, "a1"))
        assert kubectl.get("deployment", "a1-csi-controller") is None
    assert_clean(runner)

    assert (kubectl.get("diskarray", "a1") or {})["status"]["csi"] == {"driver": driver, "controller": "a1-csi-controller",
                                                                        "volumes": []}
    assert kubectl.get("csidriver", driver) is None

    with operator(csi_cluster_role="nasblade-csi-test", csi_snapshotter_image="csi-snapshotter:test",
                  csi_provisioner_image="csi-provisioner:test", csi_resizer_image="csi-resizer:test") as runner:
        dep = wait_until("plugin Deployment", lambda: kubectl.get("deployment", "a1-csi-controller"))
        cd = wait_until("CSIDriver", lambda: kubectl.get("csidriver", driver))
        assert cd["metadata"]["labels"]["nasblade.io/csi-driver"] == "true"
        assert cd["spec"]["attachRequired"] is False and cd["spec"]["fsGroupPolicy"] == "None"
        vsc = wait_until("VolumeSnapshotClass", lambda: kubectl.get("volumesnapshotclass", driver))
        assert vsc["driver"] == driver and vsc["deletionPolicy"] == "Delete"
        crb = wait_until("binding", lambda: kubectl.get("clusterrolebinding", binding))
        sa = kubectl.get("serviceaccount", "a1-csi-controller")
        assert sa is not None and sa["metadata"]["ownerReferences"][0]["name"] == "a1"
        assert dep["metadata"]["ownerReferences"][0]["name"] == "a1"
        assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "nasblade-csi-test"}
        assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "a1-csi-controller", "namespace": namespace}]
        rb = kubectl.get("rolebinding", "a1-csi-controller")
        assert rb is not None and rb["roleRef"]["name"] == "nasblade-csi-test-array"
        assert rb["subjects"] == crb["subjects"] and rb["metadata"]["ownerReferences"][0]["name"] == "a1"
        pod = dep["spec"]["template"]["spec"]
        # the credentials in every container (all four call the API server), not the kubelet's mount
        assert pod["serviceAccountName"] == "a1-csi-controller" and pod["automountServiceAccountToken"] is False
        assert [v["name"] for v in pod["volumes"] if "projected" in v] == ["api-access"]
        c, *sidecars = pod["containers"]
        assert [(s["name"], s["image"]) for s in sidecars] == [
            ("csi-provisioner", "csi-provisioner:test"), ("csi-resizer", "csi-resizer:test"),
            ("csi-snapshotter", "csi-snapshotter:test")]
        for sidecar in sidecars:  # on the plugin's socket, none of its array credentials
            assert "--csi-address=/csi/csi.sock" in sidecar["args"] and "--leader-election=false" in sidecar["args"]
            assert {m["name"] for m in sidecar["volumeMounts"]} == {"socket", f"tmp-{sidecar['name']}", "api-access"}
        args = c["args"]
        # the upstream sidecars provision, delete and grow; the plugin narrows exports
        assert args[args.index("--provision-jobs") + 1] == "exports"
        assert c["command"] == ["nasblade-csi"]
        assert args[args.index("--driver-name") + 1] == driver
        assert args[args.index("--diskarray") + 1] == f"{namespace}/a1"
        assert args[args.index("--cluster-group") + 1] == "g1"
        assert args[args.index("--export-clients") + 1] == "10.1.0.0/16,192.168.7.0/24"
        assert "--provision" in args and args[args.index("--array-nbd") + 1].startswith("nbds://")
        volumes = {v["name"]: v.get("secret", {}) for v in pod["volumes"]}
        # credentials of its own role: the CSI token and certificate, not the array's or the admin's
        assert volumes["nbd-tls"]["secretName"] == "a1-nbd-csi"
        assert volumes["token"]["items"] == [{"key": "csi-token", "path": "token"}]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True and dep["spec"]["strategy"]["type"] == "Recreate"
        # the snapshot deletion policy follows the spec
        kubectl("patch", "diskarray", "a1", "--type=merge", "-p",
                '{"spec": {"csi": {"snapshotDeletionPolicy": "Retain"}}}')
        wait_until("Retain", lambda: (kubectl.get("volumesnapshotclass", driver) or {}).get("deletionPolicy") == "Retain")
        # a name another installation holds: refused, and the array's own objects stay
        kubectl.apply({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": taken},
                       "spec": {"attachRequired": False}})
        try:
            kubectl("patch", "diskarray", "a1", "--type=merge", "-p",
                    json.dumps({"spec": {"csi": {"driverName": taken}}}))
            wait_until("CsiRefused for the taken name", lambda: any(
                e["reason"] == "CsiRefused" and taken in e["message"] and "another installation" in e["message"]
                for e in kubectl.list("events") if e["involvedObject"]["name"] == "a1"))
            assert kubectl.get("volumesnapshotclass", taken) is None
            assert (kubectl.get("csidriver", taken) or {}).get("metadata", {}).get("labels") is None
            kubectl("patch", "diskarray", "a1", "--type=json", "-p",
                    '[{"op": "remove", "path": "/spec/csi/driverName"}]')
        finally:
            kubectl("delete", "csidriver", taken, "--ignore-not-found", check=False)
        assert kubectl.get("csidriver", driver) is not None
        # off: all of them go
        kubectl("patch", "diskarray", "a1", "--type=merge", "-p", '{"spec": {"csi": {"enabled": false}}}')
        wait_until("plugin gone", lambda: kubectl.get("deployment", "a1-csi-controller") is None
                   and kubectl.get("clusterrolebinding", binding) is None
                   and kubectl.get("rolebinding", "a1-csi-controller") is None
                   and kubectl.get("serviceaccount", "a1-csi-controller") is None
                   and kubectl.get("csidriver", driver) is None
                   and kubectl.get("volumesnapshotclass", driver) is None)
        assert "csi" not in (kubectl.get("diskarray", "a1") or {})["status"]
        # on again, then the DiskArray deleted: the cluster-wide objects go with it
        kubectl("patch", "diskarray", "a1", "--type=merge", "-p", '{"spec": {"csi": {"enabled": true}}}')
        wait_until("binding again", lambda: kubectl.get("clusterrolebinding", binding)
                   and kubectl.get("csidriver", driver))
        assert condition(kubectl.get("diskarray", "a1"), "Ready")["status"] == "True"
        kubectl("delete", "diskarray", "a1", "--wait=false")
        wait_until("DiskArray gone", lambda: kubectl.get("diskarray", "a1") is None, timeout=90)
        assert kubectl.get("clusterrolebinding", binding) is None
        assert kubectl.get("csidriver", driver) is None and kubectl.get("volumesnapshotclass", driver) is None
    assert_clean(runner)
