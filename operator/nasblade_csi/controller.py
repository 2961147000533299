"""The CSI Controller service: volumes and snapshots as LUs of the array (layout
``filesystem``) or as directories of a shared file system (layout ``directory``), idempotent by
name.

Every call first checks its arguments (``INVALID_ARGUMENT``), then works from the catalog on
the array (``nasblade_csi.catalog``): a volume is recorded ``creating`` before its LU is made,
``formatted`` once it is formatted or filled, and ``ready`` once it is served (``exports``:
on Kubernetes, a file system of the DiskArray that a cluster group serves), so a call repeated
after a crash or a time-out finishes the same volume instead of making a second. Volume ids and snapshot ids are the LU
names, derived from the CSI name (``pv-``/``sn-`` + 24 hex digits of its SHA-256). Calls on
one name are serialised in this process; two replicas are kept apart by the catalog's
compare-and-write. An array reachable only from some nodes (``topology``) answers with where
each volume is usable and refuses requirements it cannot meet (``nasblade.csitopology``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from nasblade import csitopology

from nasblade_csi import proto
from nasblade_csi.array import ALIGN, MIN_SIZE, Array
from nasblade_csi.catalog import Catalog
from nasblade_csi.errors import CsiError, capability_error, guard, require
from nasblade_csi.exports import Exports, Static

pb, pb_grpc = proto.load()
ControllerServicer: Any = pb_grpc.ControllerServicer

DEFAULT_SIZE = 1 << 30
LAYOUTS = ("filesystem", "directory")
"""StorageClass parameter ``layout``: a file system (an LU) per volume, or a directory with a
quota inside a shared file system (``fileSystem``), like Trident's nas vs nas-economy."""
CAPABILITIES = ("CREATE_DELETE_VOLUME", "CREATE_DELETE_SNAPSHOT", "LIST_SNAPSHOTS", "CLONE_VOLUME",
                "EXPAND_VOLUME", "LIST_VOLUMES", "GET_CAPACITY")


def volume_id(name: str) -> str:
    return "pv-" + hashlib.sha256(name.encode()).hexdigest()[:24]


def snapshot_id(name: str) -> str:
    return "sn-" + hashlib.sha256(name.encode()).hexdigest()[:24]


def choose_size(required: int, limit: int, *, minimum: int = MIN_SIZE) -> int:
    """The size for a capacity range: the request rounded up to whole MiB, at least ``minimum``
    (the smallest file system; a directory volume's quota: 1 MiB); ``OUT_OF_RANGE`` when the
    limit leaves no such size."""
    if limit and required > limit:
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, f"required_bytes {required} > limit_bytes {limit}")
    want = required or (min(DEFAULT_SIZE, limit) if limit else DEFAULT_SIZE)
    size = max(minimum, -(-want // ALIGN) * ALIGN)
    if limit and size > limit:
        raise CsiError(grpc.StatusCode.OUT_OF_RANGE,
                       f"a volume is at least {minimum} bytes in whole MiB; limit_bytes is {limit}")
    return size


def fits(size: int, required: int, limit: int) -> bool:
    return size >= required and (not limit or size <= limit)


def _page(items: list[Any], token: str, max_entries: int) -> tuple[list[Any], str]:
    if max_entries < 0:
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, "max_entries is negative")
    start = 0
    if token:
        if not (token.isascii() and token.isdigit()) or int(token) > len(items):
            raise CsiError(grpc.StatusCode.ABORTED, f"starting_token {token!r} is not one this driver gave")
        start = int(token)
    end = len(items) if not max_entries else min(len(items), start + max_entries)
    return items[start:end], (str(end) if end < len(items) else "")


class Controller(ControllerServicer):  # type: ignore[misc]
    def __init__(self, array: Array, catalog: Catalog, *, context: dict[str, str] | None = None,
                 snapshot_wait: float = 10.0, exports: Exports | None = None,
                 topology: Sequence[csitopology.Segment] = ()) -> None:
        self.array = array
        #: the segments the array is reachable from (``--topology``); empty: every node
        self.topology = tuple(dict(s) for s in topology)
        self.snapshot_wait = snapshot_wait  # CreateSnapshot answers ready_to_use=false after this
        self.catalog = catalog
        self.context = dict(context or {})  # the volume context of volumes recorded without one
        self.exports: Exports = exports if exports is not None else Static(self.context)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        with self._locks_lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    # -- records ------------------------------------------------------------------------------

    def _volume_by_id(self, vid: str) -> dict[str, Any] | None:
        for name, rec in self.catalog.read()["volumes"].items():
            if rec["id"] == vid:
                return {"name": name, **rec}
        return None

    def _snapshot_by_id(self, sid: str) -> dict[str, Any] | None:
        for name, rec in self.catalog.read()["snapshots"].items():
            if rec["id"] == sid:
                return {"name": name, **rec}
        return None

    def _put(self, table: str, name: str, rec: dict[str, Any] | None) -> None:
        def change(doc: dict[str, Any]) -> None:
            if rec is None:
                doc[table].pop(name, None)
            else:
                doc[table][name] = rec
        self.catalog.change(change)

    def _volume_msg(self, rec: dict[str, Any]) -> Any:
        vol = pb.Volume(volume_id=rec["id"], capacity_bytes=rec["size"],
                        volume_context={**rec.get("context", self.context), "lu": rec["lu"]},
                        accessible_topology=[pb.Topology(segments=s) for s in self.topology])
        src = rec.get("source") or {}
        if "snapshot" in src:
            vol.content_source.snapshot.snapshot_id = src["snapshot"]
        elif "volume" in src:
            vol.content_source.volume.volume_id = src["volume"]
        return vol

    def _snapshot_msg(self, rec: dict[str, Any]) -> Any:
        snap = pb.Snapshot(snapshot_id=rec["id"], source_volume_id=rec["source"], size_bytes=rec["size"],
                           ready_to_use=rec["state"] == "ready")
        snap.creation_time.FromNanoseconds(rec["created"])
        return snap

    # -- volumes ------------------------------------------------------------------------------

    def _segments(self, requirements: Any) -> list[dict[str, str]]:
        """Where a volume with these accessibility requirements is usable: the array's segments
        that meet one requisite topology (all of them without a requirement), or
        ``RESOURCE_EXHAUSTED`` before anything is made when none does."""
        if not self.topology:
            return []  # reachable from every node: no constraint to report
        # (preferred topologies only order a choice; every segment of the array is served alike)
        requisite = [dict(t.segments) for t in requirements.requisite]
        usable = csitopology.accessible(self.topology, requisite)
        if not usable:
            raise CsiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"the array is reachable only from {list(self.topology)}; the volume must be usable "
                           f"from one of {requisite} (the claim's node, or the class's allowedTopologies)")
        return usable

    @guard
    def CreateVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        require(request, "name", "volume_capabilities")
        for cap in request.volume_capabilities:
            problem = capability_error(cap)
            if problem:
                raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, problem)
        segments = self._segments(request.accessibility_requirements)
        response = self._create_volume(request)
        del response.volume.accessible_topology[:]
        response.volume.accessible_topology.extend(pb.Topology(segments=s) for s in segments)
        return response

    def _create_volume(self, request: Any) -> Any:
        required, limit = request.capacity_range.required_bytes, request.capacity_range.limit_bytes
        layout = request.parameters.get("layout", "filesystem")
        if layout not in LAYOUTS:
            raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, f"layout {layout!r}: one of {', '.join(LAYOUTS)}")
        if layout == "directory":
            size = choose_size(required, limit, minimum=ALIGN)
            copy_of = self._directory_source(request) if request.HasField("volume_content_source") else {}
            return self._create_directory(request.name, size, required, limit, dict(request.parameters), copy_of)
        size = choose_size(required, limit)
        source: dict[str, str] = {}
        src_lu, src_size = "", 0
        if request.HasField("volume_content_source"):
            cs = request.volume_content_source
            if cs.HasField("snapshot"):
                snap = self._snapshot_by_id(cs.snapshot.snapshot_id)
                if snap is None or snap["state"] == "creating":
                    raise CsiError(grpc.StatusCode.NOT_FOUND, f"snapshot {cs.snapshot.snapshot_id} not found")
                if snap["state"] != "ready":
                    raise CsiError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"snapshot {cs.snapshot.snapshot_id} is not ready to use yet (its copy runs)")
                if snap.get("layout") == "directory":
                    raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"snapshot {snap['id']} is of a directory volume: it is restored into a directory "
                                   "volume of its file system (layout directory), not into a file system")
                source, src_lu, src_size = {"snapshot": snap["id"]}, snap["lu"], snap["size"]
            elif cs.HasField("volume"):
                vol = self._volume_by_id(cs.volume.volume_id)
                if vol is None or vol["state"] != "ready":
                    raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {cs.volume.volume_id} not found")
                if vol.get("layout") == "directory":
                    raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"volume {vol['id']} is a directory volume: it is cloned into a directory volume "
                                   "of its file system (layout directory), not into a file system")
                source, src_lu, src_size = {"volume": vol["id"]}, vol["lu"], vol["size"]
            if src_size > size:
                if limit and src_size > limit:
                    raise CsiError(grpc.StatusCode.OUT_OF_RANGE,
                                   f"the source holds {src_size} bytes, more than limit_bytes {limit}")
                size = src_size
        name = request.name
        with self._lock("v/" + name):
            rec = self.catalog.read()["volumes"].get(name)
            if rec is not None:
                if (not fits(rec["size"], required, limit) or (rec.get("source") or {}) != source
                        or rec.get("layout", "filesystem") != "filesystem"):
                    raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                                   f"volume {name} exists with another size or source")
                size = rec["size"]
            else:
                vid = volume_id(name)
                rec = {"id": vid, "lu": self.exports.lu(vid), "size": size, "source": source, "state": "creating",
                       "created": time.time_ns(), "parameters": dict(request.parameters)}
                self._put("volumes", name, rec)
            if rec["state"] == "creating":
                self.array.create_lu(rec["lu"], size)
                if src_lu:
                    self.array.copy(src_lu, rec["lu"], src_size)
                    if size > src_size:
                        self.array.grow(rec["lu"], size)
                else:
                    self.array.mkfs(rec["lu"])
                rec = {**rec, "state": "formatted"}
                self._put("volumes", name, rec)
            if rec["state"] == "formatted":  # made and filled: now have it served
                context = self.exports.publish(rec["id"], rec["size"], rec.get("parameters") or {})
                rec = {**rec, "state": "ready", "context": context}
                self._put("volumes", name, rec)
        return pb.CreateVolumeResponse(volume=self._volume_msg(rec))

    def _directory_source(self, request: Any) -> dict[str, str]:
        """The content source of a new directory volume: a ready snapshot of a directory volume,
        or a directory volume, of the file system the class names (a copy never crosses file
        systems: it is made inside one)."""
        cs = request.volume_content_source
        file_system = request.parameters.get("fileSystem", "")
        if cs.HasField("snapshot"):
            snap = self._snapshot_by_id(cs.snapshot.snapshot_id)
            if snap is None or snap["state"] == "creating":
                raise CsiError(grpc.StatusCode.NOT_FOUND, f"snapshot {cs.snapshot.snapshot_id} not found")
            if snap.get("layout") != "directory" or snap.get("fileSystem") != file_system:
                raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"snapshot {snap['id']} is not of a directory volume of file system {file_system!r}: "
                               "a directory volume is restored from a snapshot of a directory volume of its file system")
            return {"snapshot": snap["id"]}
        if cs.HasField("volume"):
            vol = self._volume_by_id(cs.volume.volume_id)
            if vol is None or vol["state"] != "ready":
                raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {cs.volume.volume_id} not found")
            if vol.get("layout") != "directory" or vol.get("fileSystem") != file_system:
                raise CsiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"volume {vol['id']} is not a directory volume of file system {file_system!r}: "
                               "a directory volume is cloned from a directory volume of its file system")
            return {"volume": vol["id"]}
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, "volume_content_source: a snapshot or a volume")

    def _create_directory(self, name: str, size: int, required: int, limit: int,
                          parameters: dict[str, str], source: dict[str, str]) -> Any:
        """CreateVolume of layout ``directory``: a directory with a quota of ``size`` bytes in
        the shared file system the class names (``exports.publish_directory``), filled with a
        copy of ``source`` if any; recorded ``creating`` first, so a repeated call finishes the
        same volume."""
        with self._lock("v/" + name):
            rec = self.catalog.read()["volumes"].get(name)
            if rec is not None:
                if (not fits(rec["size"], required, limit) or rec.get("layout") != "directory"
                        or (rec.get("parameters") or {}).get("fileSystem") != parameters.get("fileSystem")
                        or (rec.get("source") or {}) != source):
                    raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                                   f"volume {name} exists with another size, layout, file system or source")
            else:
                rec = {"id": volume_id(name), "layout": "directory", "lu": "", "size": size, "source": source,
                       "state": "creating", "created": time.time_ns(), "parameters": parameters}
                self._put("volumes", name, rec)
            if rec["state"] == "creating":
                copy_of = {"snapshot": source["snapshot"]} if "snapshot" in source else \
                    {"directory": source["volume"]} if "volume" in source else None
                file_system, context = self.exports.publish_directory(rec["id"], rec["size"], parameters,
                                                                      source=copy_of)
                rec = {**rec, "fileSystem": file_system, "state": "ready", "context": context}
                self._put("volumes", name, rec)
        return pb.CreateVolumeResponse(volume=self._volume_msg(rec))

    @guard
    def DeleteVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        require(request, "volume_id")
        rec = self._volume_by_id(request.volume_id)
        if rec is not None and rec.get("layout") == "directory":
            with self._lock("v/" + rec["name"]):
                file_system = rec.get("fileSystem") or (rec.get("parameters") or {}).get("fileSystem", "")
                if file_system:
                    self.exports.unpublish_directory(rec["id"], file_system)
                self._put("volumes", rec["name"], None)
        elif rec is not None:
            with self._lock("v/" + rec["name"]):
                self.exports.unpublish(rec["id"])
                self.array.wait_unreserved(rec["lu"])
                self.array.delete_lu(rec["lu"])
                self._put("volumes", rec["name"], None)
        return pb.DeleteVolumeResponse()

    @guard
    def ValidateVolumeCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        require(request, "volume_id", "volume_capabilities")
        if self._volume_by_id(request.volume_id) is None:
            raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} not found")
        problems = [p for p in map(capability_error, request.volume_capabilities) if p]
        if problems:
            return pb.ValidateVolumeCapabilitiesResponse(message="; ".join(problems))
        confirmed = pb.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context, volume_capabilities=request.volume_capabilities,
            parameters=request.parameters)
        return pb.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @guard
    def ListVolumes(self, request: Any, context: grpc.ServicerContext) -> Any:
        vols = sorted((v for v in self.catalog.read()["volumes"].values() if v["state"] == "ready"),
                      key=lambda v: (v["created"], v["id"]))
        page, token = _page(vols, request.starting_token, request.max_entries)
        entries = [pb.ListVolumesResponse.Entry(volume=self._volume_msg(v)) for v in page]
        return pb.ListVolumesResponse(entries=entries, next_token=token)

    @guard
    def GetCapacity(self, request: Any, context: grpc.ServicerContext) -> Any:
        for cap in request.volume_capabilities:
            if capability_error(cap):
                return pb.GetCapacityResponse(available_capacity=0)
        if self.topology and request.HasField("accessible_topology") and not csitopology.accessible(
                self.topology, [dict(request.accessible_topology.segments)]):
            return pb.GetCapacityResponse(available_capacity=0)  # not reachable from there
        if request.parameters.get("layout") == "directory":  # the shared file system's free space
            free = self.exports.directory_space(request.parameters)
            return pb.GetCapacityResponse(available_capacity=free, minimum_volume_size={"value": ALIGN})
        free = self.array.free()
        return pb.GetCapacityResponse(available_capacity=free, minimum_volume_size={"value": MIN_SIZE})

    @guard
    def ControllerGetCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        rpc = pb.ControllerServiceCapability.RPC
        caps = [pb.ControllerServiceCapability(rpc=rpc(type=getattr(rpc, c))) for c in CAPABILITIES]
        return pb.ControllerGetCapabilitiesResponse(capabilities=caps)

    @guard
    def ControllerExpandVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        require(request, "volume_id", "capacity_range")
        rec = self._volume_by_id(request.volume_id)
        if rec is None:
            raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} not found")
        required, limit = request.capacity_range.required_bytes, request.capacity_range.limit_bytes
        directory = rec.get("layout") == "directory"
        size = choose_size(required, limit, minimum=ALIGN if directory else MIN_SIZE)
        name = rec.pop("name")
        if directory:  # online: the quota is raised where it is served
            with self._lock("v/" + name):
                if size > rec["size"]:
                    self.exports.resize_directory(rec["id"], rec["fileSystem"], size)
                    rec["size"] = size
                    self._put("volumes", name, rec)
            return pb.ControllerExpandVolumeResponse(capacity_bytes=rec["size"], node_expansion_required=False)
        with self._lock("v/" + name):
            if size > rec["size"]:
                if self.exports.served and rec["state"] == "ready":
                    # offline expansion: the serving blade lets go of the LU first
                    self.exports.unpublish(rec["id"])
                    self.array.wait_unreserved(rec["lu"])
                    rec = {**rec, "state": "formatted"}
                    self._put("volumes", name, rec)
                self.array.grow(rec["lu"], size)
                rec["size"] = size
                self._put("volumes", name, rec)
            if rec["state"] == "formatted":
                rec = {**rec, "state": "ready", "context": self.exports.publish(rec["id"], rec["size"],
                                                                               rec.get("parameters") or {})}
                self._put("volumes", name, rec)
        return pb.ControllerExpandVolumeResponse(capacity_bytes=rec["size"], node_expansion_required=False)

    # -- snapshots ----------------------------------------------------------------------------

    @guard
    def CreateSnapshot(self, request: Any, context: grpc.ServicerContext) -> Any:
        require(request, "name", "source_volume_id")
        name = request.name
        with self._lock("s/" + name):
            rec = self.catalog.read()["snapshots"].get(name)
            if rec is not None and rec["source"] != request.source_volume_id:
                raise CsiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"snapshot {name} exists for volume {rec['source']}")
            if rec is None:
                vol = self._volume_by_id(request.source_volume_id)
                if vol is None or vol["state"] != "ready":
                    raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {request.source_volume_id} not found")
                if vol.get("layout") == "directory":
                    return pb.CreateSnapshotResponse(snapshot=self._snapshot_msg(
                        self._snapshot_directory(name, vol)))
                sid = snapshot_id(name)
                rec = {"id": sid, "lu": sid, "source": vol["id"], "sourceLu": vol["lu"], "size": vol["size"],
                       "state": "creating", "created": time.time_ns()}
                self._put("snapshots", name, rec)
            if rec["state"] == "creating" and rec.get("layout") == "directory":  # a repeated call
                rec = self._finish_directory_snapshot(name, rec)
            if rec["state"] == "creating":
                self.array.create_lu(rec["lu"], rec["size"])
                job = self.array.start_copy(rec["sourceLu"], rec["lu"], rec["size"])
                rec = {**rec, "state": "copying", "job": job, "created": time.time_ns()}
                self._put("snapshots", name, rec)
            if rec["state"] == "copying":
                rec = self._settle(name, rec, wait=self.snapshot_wait)
        return pb.CreateSnapshotResponse(snapshot=self._snapshot_msg(rec))

    def _snapshot_directory(self, name: str, vol: dict[str, Any]) -> dict[str, Any]:
        """CreateSnapshot of a directory volume: a copy of its tree at one instant, made by the
        blade that serves its file system inside that file system (``exports.snapshot_directory``),
        ready when the call returns. Recorded ``creating`` first (its creation time is the
        moment the copy was asked for), so a repeated call finishes the same snapshot."""
        rec = {"id": snapshot_id(name), "lu": "", "layout": "directory", "fileSystem": vol["fileSystem"],
               "source": vol["id"], "size": vol["size"], "state": "creating", "created": time.time_ns()}
        self._put("snapshots", name, rec)
        return self._finish_directory_snapshot(name, rec)

    def _finish_directory_snapshot(self, name: str, rec: dict[str, Any]) -> dict[str, Any]:
        self.exports.snapshot_directory(rec["source"], rec["fileSystem"], rec["id"])
        rec = {**rec, "state": "ready"}
        self._put("snapshots", name, rec)
        return rec

    def _settle(self, name: str, rec: dict[str, Any], *, wait: float) -> dict[str, Any]:
        """A copying snapshot after its job: ``ready`` (made read-only) once the copy succeeded;
        still ``copying`` while it runs; a failed copy is undone (LU and record) and reported,
        so the next CreateSnapshot starts it again."""
        job = self.array.copy_state(rec["job"], wait=wait)
        if job["state"] == "running":
            return rec
        if job["state"] == "succeeded":
            self.array.set_read_only(rec["lu"])
            rec = {**rec, "state": "ready"}
            self._put("snapshots", name, rec)
            return rec
        self.array.delete_lu(rec["lu"])
        self._put("snapshots", name, None)
        raise CsiError(grpc.StatusCode.ABORTED, f"the copy of snapshot {name} {job['state']}: {job.get('error')}")

    @guard
    def DeleteSnapshot(self, request: Any, context: grpc.ServicerContext) -> Any:
        require(request, "snapshot_id")
        rec = self._snapshot_by_id(request.snapshot_id)
        if rec is not None and rec.get("layout") == "directory":
            with self._lock("s/" + rec["name"]):
                self.exports.unsnapshot_directory(rec["fileSystem"], rec["id"])
                self._put("snapshots", rec["name"], None)
        elif rec is not None:
            with self._lock("s/" + rec["name"]):
                if rec.get("job") and rec["state"] == "copying":
                    self.array.cancel_copy(rec["job"])
                self.array.delete_lu(rec["lu"])
                self._put("snapshots", rec["name"], None)
        return pb.DeleteSnapshotResponse()

    @guard
    def ListSnapshots(self, request: Any, context: grpc.ServicerContext) -> Any:
        snaps = sorted((s for s in self.catalog.read()["snapshots"].values() if s["state"] != "creating"),
                       key=lambda s: (s["created"], s["id"]))
        if request.snapshot_id:
            snaps = [s for s in snaps if s["id"] == request.snapshot_id]
        if request.source_volume_id:
            snaps = [s for s in snaps if s["source"] == request.source_volume_id]
        page, token = _page(snaps, request.starting_token, request.max_entries)
        entries = [pb.ListSnapshotsResponse.Entry(snapshot=self._snapshot_msg(s)) for s in page]
        return pb.ListSnapshotsResponse(entries=entries, next_token=token)

