"""The child objects of a ClusterGroup -- blade pods and NFS Services -- as plain dicts.

Consumed by ``clustergroup/handlers.py`` (which adopts and creates them). A blade pod has two
containers sharing an in-memory ``emptyDir`` for the Unix socket between them:

* ``block-processor`` (``nasblade block-processor``, flags in nasblade/blockproc/main.py): NBD
  server on ``/run/nasblade/nbd.sock`` for its file processor, NBD client of the controller
  Service, writer of the group's portion, fetcher of the software from the program LU, and
  the blade management API on ``BLADE_API_PORT`` (readiness probe ``/healthz``);
* ``file-processor``: ``nasblade boot`` runs the software version the block processor
  installed (verified) as ``file-processor`` (NFSv3 + MOUNT + portmapper).

Both also get the ``NASBLADE_*`` environment listed in docs/operator.md (tokens from the
array's Secret, the group's file systems and exports as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nasblade_operator import naming
from nasblade_operator.clustergroup.spec import ClusterGroupSpec
from nasblade_operator.diskarray.spec import FileSystem

SOCKET_DIR = "/run/nasblade"


def group_selector(group: str) -> dict[str, str]:
    """Selects every blade pod of a group."""
    return {naming.L_GROUP: group, naming.L_COMPONENT: "blade"}


def blade_labels(*, array: str, group: str, index: int, version: str) -> dict[str, str]:
    return {
        **naming.common_labels(component="blade", instance=group),
        naming.L_ARRAY: array,
        naming.L_GROUP: group,
        naming.L_BLADE: naming.blade_pod_name(group, index),
        naming.L_BLADE_INDEX: str(index),
        naming.L_VERSION: version,
    }


def file_systems_env(file_systems: Sequence[FileSystem]) -> str:
    """The group's file systems for the blades, as JSON (name, LU, exports)."""
    return json.dumps(
        [
            {
                "name": fs.name,
                "lu": naming.filesystem_lu(fs.name),
                "exports": [
                    {"clients": list(e.clients), "access": e.access, "squash": e.squash} for e in fs.exports
                ],
            }
            for fs in file_systems
        ],
        sort_keys=True,
    )


def blade_pod(
    *,
    group: str,
    namespace: str,
    index: int,
    spec: ClusterGroupSpec,
    portion: int,
    portion_size: int,
    version: str,
    image: str,
    file_systems: Sequence[FileSystem],
) -> dict[str, Any]:
    """Pod of blade ``index``: block processor + file processor."""
    array = spec.disk_array
    ctrl = naming.controller_name(array)
    name = naming.blade_pod_name(group, index)
    env: list[dict[str, Any]] = [
        {"name": "NASBLADE_ARRAY", "value": array},
        {"name": "NASBLADE_GROUP", "value": group},
        {"name": "NASBLADE_BLADE", "value": name},
        {"name": "NASBLADE_BLADE_INDEX", "value": str(index)},
        {"name": "NASBLADE_PORTION", "value": str(portion)},
        {"name": "NASBLADE_PORTION_SIZE", "value": str(portion_size)},
        {"name": "NASBLADE_PROCESSOR_INFO_LU", "value": naming.LU_PROCESSOR_INFO},
        {"name": "NASBLADE_BACKUP_LU", "value": naming.LU_BACKUP},
        {"name": "NASBLADE_PROGRAM_LU", "value": naming.LU_PROGRAM},
        {"name": "NASBLADE_CONTROLLER_URL", "value": f"http://{ctrl}.{namespace}.svc:{naming.CONTROL_PORT}"},
        {"name": "NASBLADE_CONTROLLER_NBD", "value": f"{ctrl}.{namespace}.svc:{naming.NBD_PORT}"},
        {"name": "NASBLADE_SOCKET_DIR", "value": SOCKET_DIR},
        {"name": "NASBLADE_SOFTWARE_VERSION", "value": version},
        {"name": "NASBLADE_HEARTBEAT_INTERVAL", "value": str(spec.heartbeat.interval)},
        {"name": "NASBLADE_FAILURE_TIMEOUT", "value": str(spec.heartbeat.failure_timeout)},
        {"name": "NASBLADE_BLADE_API_PORT", "value": str(naming.BLADE_API_PORT)},
        {"name": "NASBLADE_FILESYSTEMS", "value": file_systems_env(file_systems)},
        {"name": "NASBLADE_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": "NASBLADE_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": naming.token_secret_name(array), "key": "token"}},
        },
        {
            "name": "NASBLADE_BLADE_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": naming.token_secret_name(array), "key": "token"}},
        },
    ]
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    socket_mount = [{"name": "sockets", "mountPath": SOCKET_DIR}]
    bp_args = [
        "block-processor",
        "--blade", name,
        "--group", group,
        "--group-index", str(portion),
        "--slot", str(index),
        "--controller-nbd", f"{ctrl}.{namespace}.svc:{naming.NBD_PORT}",
        "--controller-api", f"http://{ctrl}.{namespace}.svc:{naming.CONTROL_PORT}",
        "--procinfo-lu", naming.LU_PROCESSOR_INFO,
        "--portion-size", str(portion_size),
        "--program-lu", naming.LU_PROGRAM,
        "--software-dir", f"{SOCKET_DIR}/software",
        "--software-version", version,
        "--nbd-unix", f"{SOCKET_DIR}/nbd.sock",
        "--local-unix", f"{SOCKET_DIR}/local.sock",
        "--api-listen", f"0.0.0.0:{naming.BLADE_API_PORT}",
    ]
    for fs in file_systems:
        bp_args += ["--lu", naming.filesystem_lu(fs.name)]
    block_processor: dict[str, Any] = {
        "name": "block-processor",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": bp_args,
        "env": env,
        "ports": [{"name": "blade-api", "containerPort": naming.BLADE_API_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "blade-api"}, "periodSeconds": 1},
        "volumeMounts": socket_mount,
        "securityContext": security,
    }
    file_processor: dict[str, Any] = {
        "name": "file-processor",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["boot", "--software-dir", f"{SOCKET_DIR}/software", "--", "file-processor"],
        "env": env,
        "ports": [{"name": n, "containerPort": c} for n, _, c in naming.NFS_PORTS],
        "readinessProbe": {"tcpSocket": {"port": "nfs"}, "periodSeconds": 1},
        "volumeMounts": socket_mount,
        "securityContext": security,
    }
    if spec.blades.resources:
        block_processor["resources"] = dict(spec.blades.resources)
        file_processor["resources"] = dict(spec.blades.resources)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": blade_labels(array=array, group=group, index=index, version=version),
        },
        "spec": {
            "hostname": name,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
            "containers": [block_processor, file_processor],
            "volumes": [{"name": "sockets", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
        },
    }


def nfs_service(*, array: str, group: str, fs: str, blade: str) -> dict[str, Any]:
    """The NFS Service of file system ``fs``; it selects only the owning ``blade``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.nfs_service_name(array, fs),
            "labels": {
                **naming.common_labels(component="nfs", instance=group),
                naming.L_ARRAY: array,
                naming.L_GROUP: group,
                naming.L_FILESYSTEM: fs,
            },
        },
        "spec": {
            "selector": nfs_selector(group=group, blade=blade),
            "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p, _ in naming.NFS_PORTS],
        },
    }


def nfs_selector(*, group: str, blade: str) -> dict[str, str]:
    """Selector of an NFS Service whose file system ``blade`` serves."""
    return {naming.L_GROUP: group, naming.L_BLADE: blade}
