"""The child objects of a ClusterGroup -- blade pods and NFS Services -- as plain dicts.

Consumed by ``clustergroup/actor.py`` (which adopts and creates them). A blade pod has two
containers sharing an in-memory ``emptyDir`` for the Unix socket between them:

* ``block-processor`` (``nasblade block-processor``, flags in nasblade/blockproc/main.py): NBD
  server on ``/run/nasblade/nbd.sock`` for its file processor, NBD client of the controller
  Service, writer of the group's portion, fetcher of the software from the program LU, and
  the blade management API on ``BLADE_API_PORT`` (readiness probe ``/healthz``);
* ``file-processor``: ``nasblade boot`` runs the software version the block processor
  installed (verified) as ``blade-file-processor`` (nasblade/fileproc/agent.py): NFSv3 +
  MOUNT + portmapper for the file systems its block processor hands it over the control
  socket ``/run/nasblade/fp.sock``, heartbeats into the portion through ``local.sock``.

The pod runs like a blade of the standalone array (nasblade/standalone/array.py): the block
processor gets one ``--fs-spec`` per file system of the group (so any blade of the group can
take any of them over, on the same ports with the same exports: each file system has its own
container ports, its NFS slot's, so one pod serves several), ``--fp-unix`` and
``--cluster-config``. The cluster configuration (``nasblade.cluster.config``: members, home
blade of each file system, heartbeat timing) is the pod annotation ``CLUSTER_CONFIG_ANNOTATION``,
projected into ``/etc/nasblade/cluster.json`` by a downward-API volume. No blade starts with
``--own``: the home blade takes an unowned file system at start (``nasblade.cluster.member``),
and every later move is a takeover through the blade API (``actor.py``), so a replaced pod
never fences the survivor that is serving its file systems. File systems are formatted once,
by the operator, when their LU is created (``diskarray/handlers.py``), never by a blade.

Both also get the ``NASBLADE_*`` environment listed in docs/operator.md (tokens from the
array's Secret, the group's file systems and exports as JSON).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from nasblade_operator import naming, nbdtls, podspec
from nasblade_operator.clustergroup import plan
from nasblade_operator.clustergroup.spec import ClusterGroupSpec
from nasblade_operator.diskarray.spec import Export, FileSystem

SOCKET_DIR = "/run/nasblade"
CONFIG_DIR = "/etc/nasblade"
TOKEN_DIR = "/etc/nasblade-token"  # not under CONFIG_DIR: a read-only volume
CLUSTER_CONFIG_ANNOTATION = naming.A_CLUSTER_CONFIG
#: The group's own backups are the operator's (``backups.run_if_due``, load-aware, recorded in
#: the ClusterGroup status); the block processor's timer is set beyond any pod's life.
_NO_MEMBER_BACKUPS = 10 * 365 * 86400.0
#: Failover is the operator's (``plan.py``, pod readiness and heartbeat age); the block
#: processors' own watch (``nasblade.cluster.member``) waits this many failure timeouts, a
#: backstop while the operator is down, so the two never race for one file system.
MEMBER_TIMEOUT_FACTOR = 10


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


def _service_port(name: str) -> int:
    """The Service port of NFS port ``name``: what clients reach."""
    return next(port for n, port, _ in naming.NFS_PORTS if n == name)


def _export(fs: FileSystem, e: Export) -> dict[str, Any]:
    """One export in the file processor's JSON (nasblade.fileproc.config.parse_export)."""
    return {"path": f"/{fs.name}", "subdir": "/", "clients": list(e.clients), "access": e.access,
            "rootSquash": e.squash != "none", "allSquash": e.squash == "all"}


def fs_spec(fs: FileSystem, slot: int) -> dict[str, Any]:
    """``--fs-spec`` of ``fs`` (nasblade/blockproc/main.py): the LU, and where and to whom the
    file processor serves it. Every blade of the group gets the same, so a takeover serves the
    file system on the same ports with the same exports; in a pod it listens on all addresses,
    on its NFS ``slot``'s own ports (``naming.nfs_container_ports``: a blade serving several
    file systems serves each on its own), and the NFS Service selects the owning blade and maps
    the standard ports onto them, which the portmapper answers (``advertise``)."""
    nfs, mnt, pm = naming.nfs_container_ports(slot)
    return {
        "name": fs.name,
        "lu": naming.filesystem_lu(fs.name),
        "address": "0.0.0.0",
        "nfsPort": nfs,
        "mountPort": mnt,
        "portmapPort": pm,
        "advertise": {"nfsPort": _service_port("nfs"), "mountPort": _service_port("mountd"),
                      "portmapPort": _service_port("portmapper")},
        # the file processor needs at least one export: a file system without exports is still
        # mounted (recovered) by its owner, but only the pod itself may mount it
        "exports": [_export(fs, e) for e in fs.exports] or [
            {"path": f"/{fs.name}", "subdir": "/", "clients": ["127.0.0.1/32"], "access": "ro",
             "rootSquash": True, "allSquash": False}],
    }


def cluster_config(
    *, group: str, spec: ClusterGroupSpec, portion: int, portion_size: int, file_systems: Sequence[FileSystem],
    slots: Mapping[str, int], unformatted: Collection[str] = (),
) -> dict[str, Any]:
    """The group's ``--cluster-config`` JSON (nasblade.cluster.config.parse); home blades as
    ``plan.home_of`` places them among all ``file_systems``, so the blades and the operator
    agree on them; the ``unformatted`` ones, and those without an NFS slot in ``slots``
    (``diskarray.nfsslots``), are left out (no blade may mount them yet)."""
    names = [fs.name for fs in file_systems]
    count = spec.blades.count
    return {
        "group": group,
        "groupIndex": portion,
        "members": [plan.blade_name(group, i) for i in range(count)],
        "heartbeatInterval": spec.heartbeat.interval,
        "failureTimeout": spec.heartbeat.failure_timeout * MEMBER_TIMEOUT_FACTOR,
        "procinfoLu": naming.LU_PROCESSOR_INFO,
        "backupLu": naming.LU_BACKUP,
        "portionSize": portion_size,
        "backup": {"interval": _NO_MEMBER_BACKUPS, "maxAge": _NO_MEMBER_BACKUPS,
                   "loadThreshold": spec.backup.load_threshold / 100, "crossGroup": []},
        "fileSystems": [
            {"name": fs.name, "lu": naming.filesystem_lu(fs.name), "home": plan.home_of(group, names, fs.name, count),
             "serve": {k: v for k, v in fs_spec(fs, slots[fs.name]).items() if k not in ("name", "lu")}}
            for fs in file_systems if fs.name not in unformatted and fs.name in slots
        ],
    }


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
    slots: Mapping[str, int],
    defaults: podspec.PodDefaults = podspec.DEFAULTS,
) -> dict[str, Any]:
    """Pod of blade ``index``: block processor + file processor. Placement (the group's blades
    spread over nodes), pulling and hardening: ``podspec.finish``. Every one of
    ``file_systems`` has its NFS slot in ``slots``."""
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
        {"name": "NASBLADE_CONTROLLER_NBD", "value": f"{ctrl}.{namespace}.svc:{naming.NBD_PORT}"},
        {"name": "NASBLADE_SOCKET_DIR", "value": SOCKET_DIR},
        {"name": "NASBLADE_SOFTWARE_VERSION", "value": version},
        {"name": "NASBLADE_HEARTBEAT_INTERVAL", "value": str(spec.heartbeat.interval)},
        {"name": "NASBLADE_FAILURE_TIMEOUT", "value": str(spec.heartbeat.failure_timeout)},
        {"name": "NASBLADE_BLADE_API_PORT", "value": str(naming.BLADE_API_PORT)},
        {"name": "NASBLADE_FILESYSTEMS", "value": file_systems_env(file_systems)},
        {"name": "NASBLADE_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    # tokens as files of the mounted Secrets, for the block processor only (never environment
    # variables: they show in `kubectl describe`, crash dumps and every child process): its
    # group's control-API token (``nasblade.grants``: only its group's LUs; the group's Secret),
    # the read-only metrics token (a scraper's, for its own /v1/metrics) and the SHA-256s of the
    # operator's token (what its management API checks callers against) and of the CSI
    # plugin's (its directory-volume routes); never the array's
    # control token, its admin token (fault injection, device replace) nor the operator's token
    token_volume = {"name": "token", "projected": {"defaultMode": 0o400, "sources": [
        {"secret": {"name": naming.group_token_secret_name(group), "items": [{"key": "token", "path": "token"}]}},
        {"secret": {"name": naming.token_secret_name(array),
                    "items": [{"key": "metrics-token", "path": "metrics-token"},
                              {"key": "operator-token-sha256", "path": "operator-token-sha256"},
                              {"key": "csi-token-sha256", "path": "csi-token-sha256"}]}},
    ]}}
    token_mount = {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    # the blade's own certificate, for the block processor only: its NBD client identity (its
    # group's LUs) and the server certificate of its HTTPS API
    tls_volume, tls_mount, tls_env = nbdtls.blade_volume(array, name)
    socket_mount = [{"name": "sockets", "mountPath": SOCKET_DIR}]
    config_mount = {"name": "cluster-config", "mountPath": CONFIG_DIR, "readOnly": True}
    bp_args = [
        "block-processor",
        "--blade", name,
        "--group", group,
        "--group-index", str(portion),
        "--slot", str(index),
        "--controller-nbd", f"{ctrl}.{namespace}.svc:{naming.NBD_PORT}",
        "--controller-api", f"https://{ctrl}.{namespace}.svc:{naming.CONTROL_PORT}",
        "--procinfo-lu", naming.LU_PROCESSOR_INFO,
        "--portion-size", str(portion_size),
        "--program-lu", naming.LU_PROGRAM,
        "--software-dir", f"{SOCKET_DIR}/software",
        "--software-version", version,
        "--nbd-unix", f"{SOCKET_DIR}/nbd.sock",
        "--local-unix", f"{SOCKET_DIR}/local.sock",
        "--api-listen", f"0.0.0.0:{naming.BLADE_API_PORT}",
        "--api-tls-dir", nbdtls.TLS_DIR,
        "--fp-unix", f"{SOCKET_DIR}/fp.sock",
        "--cluster-config", f"{CONFIG_DIR}/cluster.json",
        "--token-file", f"{TOKEN_DIR}/token",
        # its management API takes the operator's token, of which the blade holds only the SHA-256
        "--api-token-sha256-file", f"{TOKEN_DIR}/operator-token-sha256",
        # and the CSI plugin's token, on the directory-volume routes alone (SHA-256 only too)
        "--csi-token-sha256-file", f"{TOKEN_DIR}/csi-token-sha256",
        "--metrics-token-file", f"{TOKEN_DIR}/metrics-token",
    ]
    for fs in file_systems:
        bp_args += ["--fs-spec", json.dumps(fs_spec(fs, slots[fs.name]), sort_keys=True)]
    config = cluster_config(group=group, spec=spec, portion=portion, portion_size=portion_size,
                            file_systems=file_systems, slots=slots)
    block_processor: dict[str, Any] = {
        "name": "block-processor",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": bp_args,
        "env": [*env, tls_env],
        "ports": [{"name": "blade-api", "containerPort": naming.BLADE_API_PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "blade-api", "scheme": "HTTPS"},
                           "periodSeconds": 1},
        "volumeMounts": [*socket_mount, config_mount, tls_mount, token_mount],
        "securityContext": security,
    }
    file_processor: dict[str, Any] = {
        "name": "file-processor",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": [
            "boot", "--software-dir", f"{SOCKET_DIR}/software", "--",
            "blade-file-processor",
            "--blade", name,
            "--local-unix", f"{SOCKET_DIR}/local.sock",
            "--heartbeat-interval", str(spec.heartbeat.interval),
            "--control-unix", f"{SOCKET_DIR}/fp.sock",
            "--fence-after", str(spec.heartbeat.failure_timeout / 2),
        ],
        "env": env,
        # the NFS ports of the group's file systems when the pod is made (informational: the
        # Services name the numbers; a file system added later listens on its slot's all the same)
        "ports": [{"containerPort": port, "protocol": proto}
                  for slot in sorted({slots[fs.name] for fs in file_systems})
                  for proto in ("TCP", "UDP") for port in naming.nfs_container_ports(slot)],
        # no NFS readiness probe: only the owning blade listens on the NFS ports, and a standby
        # blade is Ready too. The file processor's liveness is its heartbeat in the portion,
        # which the operator reads through the blade API (daemon._probe).
        "volumeMounts": socket_mount,
        "securityContext": security,
    }
    if spec.blades.resources:
        block_processor["resources"] = dict(spec.blades.resources)
        file_processor["resources"] = dict(spec.blades.resources)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": blade_labels(array=array, group=group, index=index, version=version),
            "annotations": {CLUSTER_CONFIG_ANNOTATION: json.dumps(config, sort_keys=True)},
        },
        "spec": {
            "hostname": name,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [block_processor, file_processor],
            "volumes": [
                {"name": "sockets", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "cluster-config", "downwardAPI": {"items": [{
                    "path": "cluster.json",
                    "fieldRef": {"fieldPath": f"metadata.annotations['{CLUSTER_CONFIG_ANNOTATION}']"},
                }]}},
                tls_volume,
                token_volume,
            ],
        },
    }
    podspec.finish(pod["spec"], placement=spec.blades.placement, defaults=defaults, role="blades",
                   spread_selector=group_selector(group))
    return pod


def nfs_service_ports(slot: int) -> list[dict[str, Any]]:
    """The ports of the NFS Service of the file system in NFS ``slot``: the standard ones, over
    TCP and UDP, onto the slot's container ports."""
    targets = dict(zip((n for n, _, _ in naming.NFS_PORTS), naming.nfs_container_ports(slot), strict=True))
    by_udp = {udp: tcp for (udp, _, _), (tcp, _, _) in zip(naming.NFS_UDP_PORTS, naming.NFS_PORTS, strict=True)}
    return [*({"name": n, "port": p, "targetPort": targets[n], "protocol": "TCP"} for n, p, _ in naming.NFS_PORTS),
            *({"name": n, "port": p, "targetPort": targets[by_udp[n]], "protocol": "UDP"}
              for n, p, _ in naming.NFS_UDP_PORTS)]


def nfs_service(*, array: str, group: str, fs: str, blade: str, slot: int) -> dict[str, Any]:
    """The NFS Service of file system ``fs`` (in NFS ``slot``); it selects only the owning ``blade``."""
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
            "ports": nfs_service_ports(slot),
        },
    }


def nfs_selector(*, group: str, blade: str) -> dict[str, str]:
    """Selector of an NFS Service whose file system ``blade`` serves."""
    return {naming.L_GROUP: group, naming.L_BLADE: blade}
