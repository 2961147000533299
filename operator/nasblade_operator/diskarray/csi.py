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

With the installation's csi-snapshotter image (``settings.csi_snapshotter_image``, the chart's
``csi.snapshotter``) the pod has a second container, the upstream external-snapshotter sidecar,
on the same socket: it turns VolumeSnapshotContents of this driver into CreateSnapshot and
DeleteSnapshot calls (one replica, so no leader election).

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


def labels(array: str) -> dict[str, str]:
    return {**naming.common_labels(component=COMPONENT, instance=array), naming.L_ARRAY: array}


def service_account(array: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name(array), "labels": labels(array)}}


def cluster_role_binding(namespace: str, array: str, *, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": binding_name(namespace, array),
                     "labels": {**labels(array), "nasblade.io/namespace": namespace}},
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


def snapshotter_container(image: str) -> dict[str, Any]:
    """The csi-snapshotter sidecar on the plugin's socket. ``--timeout`` bounds one
    CreateSnapshot call; the driver answers within ``--snapshot-wait`` (not ready yet: the
    sidecar calls again)."""
    return {
        "name": "csi-snapshotter",
        "image": image,
        "args": [f"--csi-address={SOCKET_DIR}/csi.sock", "--leader-election=false", "--timeout=60s",
                 "--v=2"],
        "volumeMounts": [{"name": "socket", "mountPath": SOCKET_DIR}],
    }


def deployment(namespace: str, array: str, spec: DiskArraySpec, *, image: str,
               defaults: podspec.PodDefaults = podspec.DEFAULTS, snapshotter: str = "") -> dict[str, Any]:
    """One replica (the provisioner must be alone: ``Recreate``), on the controller's placement;
    with ``snapshotter`` (an image) the csi-snapshotter sidecar beside the plugin."""
    api = endpoints.controller_api(namespace, array)
    nbd = endpoints.controller_nbd(namespace, array)
    args = [
        "--role", "controller", "--provision",
        "--endpoint", f"unix://{SOCKET_DIR}/csi.sock",
        "--diskarray", f"{namespace}/{array}",
        "--cluster-group", spec.csi.cluster_group,
        "--array-api", api,
        "--array-nbd", f"nbds://{nbd}",
        "--token-file", f"{builders.TOKEN_DIR}/token",
    ]
    if spec.csi.clients:
        args += ["--export-clients", ",".join(spec.csi.clients)]
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
            "containers": [container, *([snapshotter_container(snapshotter)] if snapshotter else [])],
            "volumes": [
                {"name": "token", "secret": {"secretName": naming.token_secret_name(array),
                                             "items": [{"key": builders.CSI_TOKEN_KEY, "path": "token"}]}},
                {"name": "nbd-tls", "secret": {"secretName": naming.nbd_csi_secret_name(array)}},
                {"name": "socket", "emptyDir": {}},
            ],
        },
    }
    podspec.finish(template["spec"], placement=spec.controller.placement, defaults=defaults, role="csi")
    template["spec"]["automountServiceAccountToken"] = True  # it talks to the API server
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


async def sync(k: kube.Kube, body: kopf.Body, spec: DiskArraySpec, *, array: str, namespace: str,
               image: str, role: str, defaults: podspec.PodDefaults, snapshotter: str = "") -> list[str]:
    """Make (or, with CSI off, remove) the plugin's objects; returns what changed, for an Event."""
    changed: list[str] = []
    if not spec.csi.enabled:
        for kind, obj_name, ns in (("Deployment", name(array), namespace),
                                   ("ClusterRoleBinding", binding_name(namespace, array), ""),
                                   ("RoleBinding", name(array), namespace),
                                   ("ServiceAccount", name(array), namespace)):
            if await k.delete(kind, obj_name, namespace=ns):
                changed.append(f"deleted {kind} {obj_name}")
        return changed
    if not role:
        raise NoClusterRole("spec.csi.enabled needs the CSI ClusterRole: install the chart with "
                            "csi.enabled=true (NASBLADE_CSI_CLUSTER_ROLE), or set csi.enabled false")
    sa = service_account(array)
    rb = role_binding(namespace, array, role=role)
    dep = deployment(namespace, array, spec, image=image, defaults=defaults, snapshotter=snapshotter)
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


async def forget(k: kube.Kube, *, array: str, namespace: str) -> None:
    """The DiskArray is going: its ClusterRoleBinding too (the rest goes with the owner)."""
    await k.delete("ClusterRoleBinding", binding_name(namespace, array), namespace="")

