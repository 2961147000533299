"""The CSI Node service: a volume is staged by an NFSv3 mount of its export on the node and
published by a bind mount of that into the pod's directory.

The volume context (from CreateVolume) names where the volume is served: ``server`` (the
blade's Service address, which a takeover keeps), ``export`` (the export path), and
optionally ``nfsPort``/``mountPort`` (then no portmapper is asked). The mount options are
fixed where correctness depends on them -- ``vers=3``, ``proto=tcp``, ``hard`` (a pod's I/O
waits through a blade takeover instead of failing), ``nolock`` (the blades serve no NLM yet)
-- and the StorageClass's ``mountOptions`` are added after them. Every call is idempotent: a
path already mounted is left as it is, a path not mounted is not an error to unmount.

``NodeGetInfo`` answers the node id, the volume limit (``max_volumes``; 0: none) and, when the
plugin is given ``topology_keys`` (``--topology-keys``, e.g. ``topology.kubernetes.io/zone``),
the node's topology: its values of those keys among the Node object's labels, read through
``node_labels`` (``nasblade_csi.registration.NodeLabels``) at each call. The kubelet calls it
when it registers the driver and records the keys in the node's ``CSINode`` (the values are
the node's labels already); the external-provisioner builds a volume's topology requirement
from them, and the controller answers the segments a volume is reachable from
(``nasblade.csitopology``). Keys the node has no label for are left out; with none of them,
or no keys at all, no topology is reported (and without keys the API server is never asked:
the node plugin then needs no Kubernetes client, as in the UML guest). A Node that cannot be
read (the API server, RBAC) answers ``UNAVAILABLE``, and the kubelet tries the registration
again. A label changed later is seen at the next registration only (the plugin's pod
restarted).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from nasblade_csi import proto
from nasblade_csi.errors import CsiError, capability_error, guard, require

log = logging.getLogger(__name__)
pb, pb_grpc = proto.load()
NodeServicer: Any = pb_grpc.NodeServicer

BASE_OPTIONS = ("vers=3", "proto=tcp", "mountproto=tcp", "hard", "nolock")


def mounted(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True when ``path`` is a mount point (by the kernel's mount table)."""
    real = os.path.realpath(path)
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == real:
                return True
    return False


def nfs_mount_args(context: dict[str, str], target: str, extra: list[str]) -> list[str]:
    """The ``mount`` command line for a volume context (pure; tested without a kernel)."""
    server, export = context.get("server", ""), context.get("export", "")
    if not server or not export:
        raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                       "the volume context names no server/export: the volume is not served by a blade")
    options = list(BASE_OPTIONS)
    if context.get("nfsPort"):
        options.append(f"port={int(context['nfsPort'])}")
    if context.get("mountPort"):
        options.append(f"mountport={int(context['mountPort'])}")
    options += [o for o in extra if o]
    return ["mount", "-t", "nfs", "-o", ",".join(options), f"{server}:{export}", target]


#: a mount that has not finished by then is reported DEADLINE_EXCEEDED (the kubelet retries)
MOUNT_TIMEOUT = 60.0


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise CsiError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{' '.join(argv)}: no answer in {MOUNT_TIMEOUT:.0f} s") from exc
    if done.returncode != 0:
        raise CsiError(grpc.StatusCode.INTERNAL, f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def _umount(path: str) -> None:
    if os.path.exists(path) and mounted(path):
        _run(["umount", path])


class Node(NodeServicer):  # type: ignore[misc]
    """The node service of the node ``node_id``. ``topology_keys``: the topology keys it reports
    in ``NodeGetInfo``, with the values ``node_labels()`` (the Node object's labels) gives them;
    none: no topology, and ``node_labels`` is not called."""

    def __init__(self, node_id: str, *, max_volumes: int = 0, topology_keys: Sequence[str] = (),
                 node_labels: Callable[[], Mapping[str, str]] | None = None) -> None:
        if topology_keys and node_labels is None:
            raise ValueError("topology_keys need node_labels, the reader of the node's labels")
        self.node_id = node_id
        self.max_volumes = max_volumes
        self.topology_keys = tuple(topology_keys)
        self.node_labels = node_labels

    def topology(self) -> dict[str, str]:
        """The node's values of ``topology_keys`` (those it has a label for), read now;
        ``UNAVAILABLE`` when its labels cannot be read."""
        if not self.topology_keys or self.node_labels is None:
            return {}
        try:
            labels = self.node_labels()
        except Exception as exc:  # the API server, the client's configuration, RBAC: the kubelet retries
            message = (f"cannot read the labels of node {self.node_id} (its topology, "
                       f"{', '.join(self.topology_keys)}): {type(exc).__name__}: {exc}")
            log.warning("NodeGetInfo: %s", message)
            raise CsiError(grpc.StatusCode.UNAVAILABLE, message) from exc
        return {k: labels[k] for k in self.topology_keys if k in labels}

    @staticmethod
    def _check(request: Any, *, path_field: str, capability: bool) -> None:
        require(request, "volume_id", path_field)
        if capability:
            require(request, "volume_capability")
            problem = capability_error(request.volume_capability)
            if problem:
                raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, problem)

    @guard
    def NodeStageVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(request, path_field="staging_target_path", capability=True)
        path = request.staging_target_path
        os.makedirs(path, exist_ok=True)
        if not mounted(path):
            extra = list(request.volume_capability.mount.mount_flags)
            _run(nfs_mount_args(dict(request.volume_context), path, extra))
        return pb.NodeStageVolumeResponse()

    @guard
    def NodeUnstageVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(request, path_field="staging_target_path", capability=False)
        _umount(request.staging_target_path)
        return pb.NodeUnstageVolumeResponse()

    @guard
    def NodePublishVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(request, path_field="target_path", capability=True)
        if not request.staging_target_path:
            raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, "staging_target_path is required (STAGE_UNSTAGE)")
        target = request.target_path
        os.makedirs(target, exist_ok=True)
        if not mounted(target):
            _run(["mount", "--bind", request.staging_target_path, target])
            if request.readonly:
                _run(["mount", "-o", "remount,bind,ro", target])
        return pb.NodePublishVolumeResponse()

    @guard
    def NodeUnpublishVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._check(request, path_field="target_path", capability=False)
        _umount(request.target_path)
        if os.path.isdir(request.target_path):
            os.rmdir(request.target_path)
        return pb.NodeUnpublishVolumeResponse()

    @guard
    def NodeGetVolumeStats(self, request: Any, context: grpc.ServicerContext) -> Any:
        require(request, "volume_id", "volume_path")
        if not os.path.exists(request.volume_path):
            raise CsiError(grpc.StatusCode.NOT_FOUND, f"{request.volume_path} does not exist")
        st = os.statvfs(request.volume_path)
        unit = pb.VolumeUsage.Unit
        usage = [
            pb.VolumeUsage(unit=unit.BYTES, total=st.f_blocks * st.f_frsize, available=st.f_bavail * st.f_frsize,
                           used=(st.f_blocks - st.f_bfree) * st.f_frsize),
            pb.VolumeUsage(unit=unit.INODES, total=st.f_files, available=st.f_favail,
                           used=st.f_files - st.f_ffree),
        ]
        return pb.NodeGetVolumeStatsResponse(usage=usage)

    @guard
    def NodeGetCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        rpc = pb.NodeServiceCapability.RPC
        caps = [pb.NodeServiceCapability(rpc=rpc(type=t)) for t in (rpc.STAGE_UNSTAGE_VOLUME, rpc.GET_VOLUME_STATS)]
        return pb.NodeGetCapabilitiesResponse(capabilities=caps)

    @guard
    def NodeGetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        segments = self.topology()
        topology = pb.Topology(segments=segments) if segments else None
        return pb.NodeGetInfoResponse(node_id=self.node_id, max_volumes_per_node=self.max_volumes,
                                      accessible_topology=topology)
