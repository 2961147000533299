"""A DiskArray's CSI controller plugin (``spec.csi``): the objects the operator runs it with.

With ``spec.csi.enabled`` the operator makes, in the array's namespace, a ServiceAccount and a
one-replica Deployment ``<array>-csi-controller`` running ``nasblade-csi --role controller
--provision --diskarray <namespace>/<array>`` (``nasblade_csi``: claims of StorageClasses
naming this array become file systems of it), and a ClusterRoleBinding of that ServiceAccount
to the installation's CSI ClusterRole (the chart's, ``settings.csi_cluster_role``: claims,
volumes and StorageClasses are cluster-wide) and a RoleBinding, in the array's namespace only,
to ``<that role>-array`` (the DiskArray, ClusterGroups and Services). A ClusterRoleBinding
cannot be owned by a namespaced object, so ``sync`` deletes it when CSI is turned off and
``forget`` when the DiskArray goes; the rest is owned by the DiskArray.

Each array has a driver name of its own (``driver_name``: ``<array>.<namespace>.nas.nasblade.io``,
or ``spec.csi.driverName``): the upstream sidecars pick their work by driver name alone, so
with one name for every array each array's csi-snapshotter would act on the other arrays'
snapshot contents. The operator makes the array's ``CSIDriver`` object (labelled
``nasblade.io/csi-driver``: the chart's node plugin registers every such name with the
kubelet) and, with the snapshotter, a ``VolumeSnapshotClass`` of the same name. Both are
cluster-wide, so, like the ClusterRoleBinding, ``sync`` and ``forget`` delete them; a name
another array already holds is refused (``DriverNameTaken``).

With the installation's sidecar images (``settings.csi_provisioner_image``,
``csi_resizer_image``, ``csi_snapshotter_image``: the chart's ``csi.provisioner``,
``csi.resizer``, ``csi.snapshotter``) the pod has the upstream kubernetes-csi sidecars beside the
plugin, on the same socket (one replica, so no leader election): external-provisioner turns
claims of this driver into CreateVolume and PersistentVolumes and released volumes into
DeleteVolume, external-resizer grown claims into ControllerExpandVolume, csi-snapshotter
VolumeSnapshotContents into CreateSnapshot and DeleteSnapshot. The plugin's own provisioner
(``nasblade_csi.provisioner``) keeps what no sidecar image does (``jobs``), and always the
narrowing of exports to the nodes that mount.

The plugin holds credentials of its own role, both mounted as files: the CSI token (key
``csi-token`` of the array's token Secret, ``nasblade.grants.csi_token``: at the controller's
control API only the LUs of the driver's volumes, snapshots and catalog; at the blades the
directory-volume routes) and the NBD client certificate ``<array>-nbd-csi`` (identity ``csi``:
the same LUs, over NBD), never the array's control token, the admin token or the operator's
admin certificate. Builders are pure; ``sync`` is the one place that talks to the API server.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import kopf

from nasblade_operator import endpoints, kube, naming, podspec
from nasblade_operator.diskarray import builders
from nasblade_operator.diskarray.spec import DiskArraySpec

SOCKET_DIR = "/csi"
TLS_DIR = "/etc/nasblade/nbd-tls"
COMPONENT = naming.CSI_COMPONENT


def name(array: str) -> str:
    """Deployment and ServiceAccount name of an array's CSI controller plugin."""
    return f"{array}-csi-controller"


def binding_name(namespace: str, array: str) -> str:
    """The ClusterRoleBinding's name (cluster-wide, so the namespace is in it)."""
    return f"nasblade-csi-{namespace}-{array}"[:253]


def driver_name(namespace: str, array: str, spec: DiskArraySpec) -> str:
    """The array's CSI driver name: ``spec.csi.driverName`` (e.g. ``nas.nasblade.io`` for volumes
    made before names were per array), else ``naming.csi_driver_name``."""
    return spec.csi.driver_name or naming.csi_driver_name(namespace, array)


def owner_labels(namespace: str, array: str) -> dict[str, str]:
    """Labels of the cluster-wide objects: which array they belong to."""
    return {**labels(array), naming.L_NAMESPACE: namespace}


def owner_selector(namespace: str, array: str) -> dict[str, str]:
    """What tells the array's cluster-wide objects from another array's."""
    return {naming.L_ARRAY: array, naming.L_NAMESPACE: namespace}


def csi_driver(namespace: str, array: str, driver: str) -> dict[str, Any]:
    """The CSIDriver object: NFS needs no attach step (the node plugin mounts on NodeStage), an
    NFS mount is shared (the kubelet does not chown it to a pod's fsGroup)."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSIDriver",
        "metadata": {"name": driver, "labels": {**owner_labels(namespace, array), naming.L_CSI_DRIVER: "true"}},
        "spec": {"attachRequired": False, "podInfoOnMount": False, "fsGroupPolicy": "None",
                 "volumeLifecycleModes": ["Persistent"]},
    }


#: the annotation the snapshot-controller reads for a driver's default VolumeSnapshotClass
DEFAULT_CLASS = "snapshot.storage.kubernetes.io/is-default-class"


def snapshot_class(namespace: str, array: str, driver: str, *, deletion_policy: str = "Delete") -> dict[str, Any]:
    """The VolumeSnapshotClass of the array's driver, named like it: VolumeSnapshots that name
    it become CreateSnapshot calls of this array's plugin. It is the default class of its
    driver (the snapshot-controller picks a driver's default for a VolumeSnapshot that names no
    class, from the driver of the claim's volume), so ``kubectl`` users need not name it."""
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotClass",
        "metadata": {"name": driver, "labels": owner_labels(namespace, array),
                     "annotations": {DEFAULT_CLASS: "true"}},
        "driver": driver,
        "deletionPolicy": deletion_policy,
    }


def labels(array: str) -> dict[str, str]:
    return {**naming.common_labels(component=COMPONENT, instance=array), naming.L_ARRAY: array}


def service_account(array: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name(array), "labels": labels(array)}}


def cluster_role_binding(namespace: str, array: str, *, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": binding_name(namespace, array), "labels": owner_labels(namespace, array)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name(array), "namespace": namespace}],
    }


def role_binding(namespace: str, array: str, *, role: str) -> dict[str, Any]:
    """In the array's namespace: the plugin's rights on the DiskArray, its groups and Services."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name(array), "labels": labels(array)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{role}-array"},
        "subjects": [{"kind": "ServiceAccount", "name": name(array), "namespace": namespace}],
    }


def sidecar_container(name: str, image: str, *, timeout: str) -> dict[str, Any]:
    """An upstream kubernetes-csi sidecar on the plugin's socket, one replica (no leader
    election), mounting the socket only (none of the plugin's credentials)."""
    return {
        "name": name,
        "image": image,
        "args": [f"--csi-address={SOCKET_DIR}/csi.sock", "--leader-election=false", f"--timeout={timeout}",
                 "--v=2"],
        "volumeMounts": [{"name": "socket", "mountPath": SOCKET_DIR}],
    }


def snapshotter_container(image: str) -> dict[str, Any]:
    """The csi-snapshotter sidecar. ``--timeout`` bounds one CreateSnapshot call; the driver
    answers within ``--snapshot-wait`` (not ready yet: the sidecar calls again)."""
    return sidecar_container("csi-snapshotter", image, timeout="60s")


def provisioner_container(image: str) -> dict[str, Any]:
    """The external-provisioner sidecar: claims of the array's driver become CreateVolume and
    PersistentVolumes ``pvc-<claim uid>``, released volumes DeleteVolume. A CreateVolume waits
    until the group serves the new file system (the driver gives up after its
    ``--publish-timeout``, DEADLINE_EXCEEDED, and the sidecar calls again), so ``--timeout``
    is the driver's wait and some."""
    return sidecar_container("csi-provisioner", image, timeout="150s")


def resizer_container(image: str) -> dict[str, Any]:
    """The external-resizer sidecar: a claim that asks for more becomes ControllerExpandVolume
    (the serving blade lets the file system go while it grows, so the call waits for the group
    to serve it again: ``--timeout`` as the provisioner's)."""
    return sidecar_container("csi-resizer", image, timeout="150s")


def jobs(*, provisioner: str = "", resizer: str = "") -> list[str]:
    """The jobs the plugin's own provisioner keeps (``--provision-jobs``): those no upstream
    sidecar image does."""
    return [j for j, by in (("provision", provisioner), ("delete", provisioner), ("resize", resizer),
                            ("exports", "")) if not by]


def deployment(namespace: str, array: str, spec: DiskArraySpec, *, image: str,
               defaults: podspec.PodDefaults = podspec.DEFAULTS, snapshotter: str = "",
               provisioner: str = "", resizer: str = "") -> dict[str, Any]:
    """One replica (the provisioner must be alone: ``Recreate``), on the controller's placement;
    with ``snapshotter``, ``provisioner`` and ``resizer`` (images) those upstream sidecars beside
    the plugin, which keeps the jobs they do not do."""
    api = endpoints.controller_api(namespace, array)
    nbd = endpoints.controller_nbd(namespace, array)
    args = [
        "--role", "controller", "--provision",
        "--provision-jobs", ",".join(jobs(provisioner=provisioner, resizer=resizer)),
        "--driver-name", driver_name(namespace, array, spec),
        "--endpoint", f"unix://{SOCKET_DIR}/csi.sock",
        "--diskarray", f"{namespace}/{array}",
        "--cluster-group", spec.csi.cluster_group,
        "--array-api", api,
        "--array-nbd", f"nbds://{nbd}",
        "--token-file", f"{builders.TOKEN_DIR}/token",
    ]
    if spec.csi.clients:
        args += ["--export-clients", ",".join(spec.csi.clients)]
    if spec.csi.topology:  # reachable from those nodes only: volumes get node affinity to them
        args += ["--topology", json.dumps([dict(s) for s in spec.csi.topology], sort_keys=True)]
    container: dict[str, Any] = {
        "name": "csi-controller",
        "image": image,
        "command": ["nasblade-csi"],
        "args": args,
        # the HTTPS control API and NBD over TLS, both with this client certificate and CA
        "env": [{"name": "NASBLADE_NBD_TLS_DIR", "value": TLS_DIR}],
        "volumeMounts": [
            {"name": "token", "mountPath": builders.TOKEN_DIR, "readOnly": True},
            {"name": "nbd-tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "socket", "mountPath": SOCKET_DIR},
        ],
    }
    template: dict[str, Any] = {
        "metadata": {"labels": labels(array)},
        "spec": {
            "serviceAccountName": name(array),
            "containers": [container,
                           *([provisioner_container(provisioner)] if provisioner else []),
                           *([resizer_container(resizer)] if resizer else []),
                           *([snapshotter_container(snapshotter)] if snapshotter else [])],
            "volumes": [
                {"name": "token", "secret": {"secretName": naming.token_secret_name(array),
                                             "items": [{"key": builders.CSI_TOKEN_KEY, "path": "token"}]}},
                {"name": "nbd-tls", "secret": {"secretName": naming.nbd_csi_secret_name(array)}},
                {"name": "socket", "emptyDir": {}},
            ],
        },
    }
    podspec.finish(template["spec"], placement=spec.controller.placement, defaults=defaults, role="csi")
    # every container talks to the API server (claims, volumes, snapshots, exports)
    podspec.api_access(template["spec"], [c["name"] for c in template["spec"]["containers"]])
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name(array), "labels": labels(array),
                     "annotations": {builders.TEMPLATE_HASH: digest}},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {naming.L_ARRAY: array, naming.L_COMPONENT: COMPONENT}},
            "template": template,
        },
    }


class NoClusterRole(Exception):
    """``spec.csi.enabled`` on an installation without the CSI ClusterRole."""


class DriverNameTaken(Exception):
    """The array's CSI driver name is another array's (or not the operator's)."""


def _ours(obj: dict[str, Any], namespace: str, array: str) -> bool:
    have = obj.get("metadata", {}).get("labels") or {}
    return owner_selector(namespace, array).items() <= have.items()


def _class_fields(vsc: dict[str, Any]) -> tuple[Any, Any]:
    """What the operator keeps of its VolumeSnapshotClass: the deletion policy, the default mark."""
    return vsc.get("deletionPolicy"), (vsc.get("metadata", {}).get("annotations") or {}).get(DEFAULT_CLASS)


async def _delete_cluster_objects(k: kube.Kube, *, array: str, namespace: str, keep: str = "") -> list[str]:
    """Delete the array's CSIDriver and VolumeSnapshotClass objects (all but ``keep``): found by
    label, so a renamed driver's old objects go too; another array's never."""
    gone: list[str] = []
    for kind in ("CSIDriver", "VolumeSnapshotClass"):
        try:
            objs = await k.list(kind, namespace="", selector=owner_selector(namespace, array))
        except kube.KubeError as exc:
            if exc.status == 404 and kind == "VolumeSnapshotClass":
                continue  # the cluster does not serve the VolumeSnapshot API
            raise
        for obj in objs:
            obj_name = obj["metadata"]["name"]
            if obj_name != keep and await k.delete(kind, obj_name, namespace=""):
                gone.append(f"deleted {kind} {obj_name}")
    return gone


async def sync(k: kube.Kube, body: kopf.Body, spec: DiskArraySpec, *, array: str, namespace: str,
               image: str, role: str, defaults: podspec.PodDefaults, snapshotter: str = "",
               provisioner: str = "", resizer: str = "") -> list[str]:
    """Make (or, with CSI off, remove) the plugin's objects; returns what changed, for an Event."""
    changed: list[str] = []
    if not spec.csi.enabled:
        for kind, obj_name, ns in (("Deployment", name(array), namespace),
                                   ("ClusterRoleBinding", binding_name(namespace, array), ""),
                                   ("RoleBinding", name(array), namespace),
                                   ("ServiceAccount", name(array), namespace)):
            if await k.delete(kind, obj_name, namespace=ns):
                changed.append(f"deleted {kind} {obj_name}")
        return changed + await _delete_cluster_objects(k, array=array, namespace=namespace)
    if not role:
        raise NoClusterRole("spec.csi.enabled needs the CSI ClusterRole: install the chart with "
                            "csi.enabled=true (NASBLADE_CSI_CLUSTER_ROLE), or set csi.enabled false")
    driver = driver_name(namespace, array, spec)
    for obj in (csi_driver(namespace, array, driver),
                *([snapshot_class(namespace, array, driver, deletion_policy=spec.csi.snapshot_deletion_policy)]
                  if snapshotter else [])):
        try:
            existing, created = await k.create(obj)
        except kube.KubeError as exc:
            if exc.status == 404 and obj["kind"] == "VolumeSnapshotClass":
                continue  # no VolumeSnapshot API in this cluster: nothing to name
            raise
        if created:
            changed.append(f"{obj['kind']} {driver}")
        elif _ours(existing, namespace, array):
            if obj["kind"] == "VolumeSnapshotClass" and _class_fields(existing) != _class_fields(obj):
                await k.patch("VolumeSnapshotClass", driver, {"deletionPolicy": obj["deletionPolicy"], "metadata": {
                    "annotations": obj["metadata"]["annotations"]}}, namespace="")
                changed.append(f"VolumeSnapshotClass {driver}: deletionPolicy {obj['deletionPolicy']}, default class")
        else:
            raise DriverNameTaken(f"the CSI driver name {driver} is taken by {obj['kind']} {driver} of "
                                  f"{_owner(existing)}: set spec.csi.driverName to a name of this array's own")
    changed += await _delete_cluster_objects(k, array=array, namespace=namespace, keep=driver)
    sa = service_account(array)
    rb = role_binding(namespace, array, role=role)
    dep = deployment(namespace, array, spec, image=image, defaults=defaults, snapshotter=snapshotter,
                     provisioner=provisioner, resizer=resizer)
    for obj in (sa, rb, dep):
        kopf.adopt(obj, owner=body)
    crb = cluster_role_binding(namespace, array, role=role)
    for obj in (sa, crb, rb, dep):
        existing, created = await k.create(obj)
        if created:
            changed.append(f"{obj['kind']} {obj['metadata']['name']}")
        elif obj is dep and (existing.get("metadata", {}).get("annotations") or {}).get(builders.TEMPLATE_HASH) \
                != dep["metadata"]["annotations"][builders.TEMPLATE_HASH]:
            await k.patch("Deployment", name(array), {"metadata": {"annotations": dep["metadata"]["annotations"]},
                                                      "spec": {"template": dep["spec"]["template"]}},
                          namespace=namespace)
            changed.append(f"Deployment {name(array)}: new pod template")
    return changed


def _owner(obj: dict[str, Any]) -> str:
    have = obj.get("metadata", {}).get("labels") or {}
    if naming.L_ARRAY in have:
        return f"DiskArray {have.get(naming.L_NAMESPACE, '?')}/{have[naming.L_ARRAY]}"
    return "another installation (no nasblade.io/disk-array label)"


async def forget(k: kube.Kube, *, array: str, namespace: str) -> None:
    """The DiskArray is going: its ClusterRoleBinding, CSIDriver and VolumeSnapshotClass too (the
    rest goes with the owner)."""
    await k.delete("ClusterRoleBinding", binding_name(namespace, array), namespace="")
    await _delete_cluster_objects(k, array=array, namespace=namespace)

