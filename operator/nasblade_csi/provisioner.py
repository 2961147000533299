"""The jobs of the CSI provisioner and resizer sidecars, done inside the driver's controller
plugin (``nasblade-csi --provision``), and the one job no sidecar does: exports narrowed to the
nodes that mount.

The upstream sidecars (kubernetes-csi external-provisioner, external-resizer) run beside the
plugin where the installation has their images (the chart's default, docs/csi.md); without
them the driver keeps their small, documented contract with Kubernetes itself, calling its own
controller service in the same process:

- **provision**: a PersistentVolumeClaim of a StorageClass whose ``provisioner`` is this
  driver's name (``--driver-name``: one name and one controller plugin per array; the node
  plugin is shared) and whose ``diskArray`` parameter, if any, names this driver's DiskArray
  (``--diskarray``; a class that names another array gets ``ProvisioningFailed``), Pending
  and unbound (with ``WaitForFirstConsumer``, once the scheduler has picked a node) → ``CreateVolume`` named ``pvc-<claim uid>`` with the claim's size, access modes and
  data source (another claim of this driver: a clone; a VolumeSnapshot: a restore) and the
  class's parameters (its ``allowedTopologies`` as the requisite topology) → a
  PersistentVolume of that name with the CSI source, the class's reclaim policy and mount
  options, node affinity to the segments the volume is usable from (an array with a
  topology), and a ``claimRef`` to the claim, which the kube-controller-manager's binder
  then binds;
- **export to the nodes that mount** (a class with ``exportPolicy: nodes``, the job Trident's
  automatic export policy does): each of its volumes is exported to the InternalIP of every
  node that runs a pod using it, and to nobody while none does (``_narrow_exports``);
- **delete**: a PersistentVolume this driver provisioned (annotation
  ``pv.kubernetes.io/provisioned-by``), Released or Failed, with reclaim policy ``Delete`` →
  ``DeleteVolume``, then the PersistentVolume is deleted; ``Retain`` keeps both;
- **resize**: a Bound claim that asks for more than its volume has, in a class that allows
  expansion → ``ControllerExpandVolume`` (offline: the serving blade lets the file system go
  while it grows), then the PersistentVolume's capacity and the claim's ``status.capacity``.

Where the upstream sidecars run beside the driver (the operator's plugin pod with the chart's
``csi.provisioner`` and ``csi.resizer``), they do the provision, delete and resize jobs, and the
driver keeps the one they have no counterpart for: ``--provision-jobs exports``.

Level-triggered: every ``interval`` seconds one pass lists StorageClasses, claims and volumes
and queues what is due for a pool of workers (claims side by side, each object by one worker
at a time), so a restarted driver finishes whatever a crash interrupted (each CSI call is
idempotent by name). Each outcome is an Event on the claim (``Provisioning``,
``ProvisioningSucceeded``, ``ProvisioningFailed``, ``VolumeResizeSuccessful``,
``VolumeResizeFailed``), as the sidecars post them. One replica should run it.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any

import grpc
import pykube
from nasblade.units import parse_size

from nasblade_csi import proto
from nasblade_csi.identity import DRIVER_NAME

log = logging.getLogger(__name__)
pb, _ = proto.load()

ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
#: the jobs (``--provision-jobs``): claims into volumes, released volumes deleted, claims grown,
#: exports narrowed to the nodes that mount
JOBS = ("provision", "delete", "resize", "exports")
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ACCESS_MODES = {"ReadWriteOnce": 1, "ReadOnlyMany": 3, "ReadWriteMany": 5, "ReadWriteOncePod": 6}
"""Kubernetes access mode → CSI ``VolumeCapability.AccessMode.Mode`` (SINGLE_NODE_WRITER,
MULTI_NODE_READER_ONLY, MULTI_NODE_MULTI_WRITER, SINGLE_NODE_SINGLE_WRITER)."""


class CallFailed(Exception):
    """A CSI call answered with an error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class InProcessContext:
    """What the servicers need of ``grpc.ServicerContext`` when called in process: an abort
    raises ``CallFailed``."""

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise CallFailed(code, message)


def volume_name(claim: Mapping[str, Any]) -> str:
    """The PersistentVolume (and CSI volume) name of a claim, as the external provisioner names it."""
    return f"pvc-{claim['metadata']['uid']}"


def requested(claim: Mapping[str, Any]) -> int:
    return parse_size(str(claim["spec"]["resources"]["requests"]["storage"]), kubernetes=True)


def capabilities(access_modes: list[str]) -> list[Any]:
    modes = [ACCESS_MODES[m] for m in access_modes if m in ACCESS_MODES] or [ACCESS_MODES["ReadWriteOnce"]]
    return [pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="nfs"),
                                access_mode=pb.VolumeCapability.AccessMode(mode=m)) for m in modes]


def internal_ip(node: Mapping[str, Any]) -> str | None:
    """A node's InternalIP (what its kubelet's NFS mounts come from), else None."""
    for a in node.get("status", {}).get("addresses") or []:
        if a.get("type") == "InternalIP" and a.get("address"):
            return str(a["address"])
    return None


def node_clients(pods: list[dict[str, Any]], claim_volumes: Mapping[str, str],
                 node_ips: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Volume id → the CIDRs (``/32``, ``/128``) of the nodes running pods (not finished) that
    use it through a claim (``claim_volumes``: ``namespace/claim`` → volume id). Pure."""
    out: dict[str, set[str]] = {}
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        ip = node_ips.get(node) if node else None
        if not ip or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        ns = pod["metadata"]["namespace"]
        for v in pod["spec"].get("volumes") or []:
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            vid = claim_volumes.get(f"{ns}/{claim}") if claim else None
            if vid:
                out.setdefault(vid, set()).add(f"{ip}/128" if ":" in ip else f"{ip}/32")
    return {v: sorted(c) for v, c in out.items()}


def allowed_segments(sc: Mapping[str, Any]) -> list[dict[str, str]]:
    """A StorageClass's ``allowedTopologies`` as CSI topology segments: each term's keys with
    every combination of their values (the sidecar's flattening). Pure."""
    out: list[dict[str, str]] = []
    for term in sc.get("allowedTopologies") or []:
        combos: list[dict[str, str]] = [{}]
        for expr in term.get("matchLabelExpressions") or []:
            combos = [{**c, str(expr["key"]): str(v)} for c in combos for v in expr.get("values") or []]
        out += [c for c in combos if c]
    return out


def persistent_volume(claim: Mapping[str, Any], sc: Mapping[str, Any], volume: Any, *,
                      driver: str = DRIVER_NAME) -> dict[str, Any]:
    """The PersistentVolume of a provisioned ``volume`` (a CSI ``Volume``) for ``claim``."""
    meta = claim["metadata"]
    spec: dict[str, Any] = {
        "capacity": {"storage": str(volume.capacity_bytes)},
        "accessModes": list(claim["spec"].get("accessModes") or ["ReadWriteOnce"]),
        "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
        "storageClassName": sc["metadata"]["name"],
        "volumeMode": "Filesystem",
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                     "name": meta["name"], "uid": meta["uid"]},
        "csi": {"driver": driver, "volumeHandle": volume.volume_id, "fsType": "nfs",
                "volumeAttributes": dict(volume.volume_context)},
    }
    if sc.get("mountOptions"):
        spec["mountOptions"] = list(sc["mountOptions"])
    if volume.accessible_topology:  # usable from those segments only: pods go to their nodes
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(t.segments.items())]}
            for t in volume.accessible_topology]}}
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": volume_name(claim), "annotations": {ANN_PROVISIONED_BY: driver}},
            "spec": spec}


class Provisioner:
    def __init__(self, api: pykube.HTTPClient, controller: Any, *, array: str = "", interval: float = 2.0,
                 workers: int = 8, driver_name: str = DRIVER_NAME, jobs: Collection[str] = JOBS) -> None:
        self.api = api
        self.controller = controller
        self.array = array
        """``NAMESPACE/NAME`` of the DiskArray this driver serves (``--diskarray``): the volumes it
        deletes and grows are those of its driver name whose context names this array."""
        self.driver_name = driver_name
        unknown = set(jobs) - set(JOBS)
        if unknown:
            raise ValueError(f"unknown provisioner jobs {sorted(unknown)}: of {', '.join(JOBS)}")
        self.jobs = frozenset(jobs)
        """What this provisioner does (``--provision-jobs``): all of ``JOBS`` alone; with the
        upstream external-provisioner beside it, not ``provision`` and ``delete``; with the
        external-resizer, not ``resize``."""
        self.interval = interval
        # A CreateVolume waits until the group serves the volume (tens of seconds): claims are
        # worked on side by side, each by one worker at a time (``_busy``), so ten claims cost
        # about what one does. Daemon threads: a stopping driver does not wait for them (every
        # call is idempotent; the next run finishes what was cut short).
        self._queue: queue.Queue[tuple[str, Callable[..., None], tuple[Any, ...]]] = queue.Queue()
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        for i in range(workers):
            threading.Thread(target=self._work, name=f"provisioner-{i}", daemon=True).start()

    def _submit(self, key: str, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)`` unless the object ``key`` is already queued or being worked on."""
        with self._lock:
            if key in self._busy:
                return
            self._busy.add(key)
        self._queue.put((key, fn, args))

    def _work(self) -> None:
        while True:
            key, fn, args = self._queue.get()
            try:
                fn(*args)
            except Exception:  # the API server away, a bug: logged; the next pass tries again
                log.exception("provisioner: %s failed", key)
            finally:
                with self._lock:
                    self._busy.discard(key)

    def mine(self, sc: Mapping[str, Any]) -> bool:
        return bool(sc.get("provisioner") == self.driver_name)

    def _mine_pv(self, pv: Mapping[str, Any]) -> bool:
        csi = pv["spec"].get("csi") or {}
        return csi.get("driver") == self.driver_name and (csi.get("volumeAttributes") or {}).get("diskArray", "") == self.array

    # -- the API server ------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        r = self.api.session.request(method, url=self.api.url + path,
                                     data=None if body is None else json.dumps(body),
                                     headers={"Content-Type": content_type})
        if r.status_code == 404:
            return None
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()

    def _items(self, path: str) -> list[dict[str, Any]]:
        data = self._request("GET", path)
        return list((data or {}).get("items") or [])

    def _event(self, claim: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = claim["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
                 "involvedObject": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": meta["name"],
                                    "namespace": meta["namespace"], "uid": meta["uid"]},
                 "reason": reason, "message": message[:1000], "type": kind, "firstTimestamp": now,
                 "lastTimestamp": now, "count": 1, "source": {"component": f"{self.driver_name}-provisioner"}}
        try:
            self._request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except RuntimeError as exc:
            log.warning("event %s on %s/%s not posted: %s", reason, meta["namespace"], meta["name"], exc)

    # -- one pass -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.pass_once()
            except Exception:  # the API server away, a bug: log it and try again next pass
                log.exception("provisioner pass failed")
            stop.wait(self.interval)

    def pass_once(self) -> None:
        classes = {sc["metadata"]["name"]: sc for sc in self._items("/apis/storage.k8s.io/v1/storageclasses")
                   if self.mine(sc)}
        volumes = {pv["metadata"]["name"]: pv for pv in self._items("/api/v1/persistentvolumes")}
        claims = self._items("/api/v1/persistentvolumeclaims")
        for claim in claims:
            sc = classes.get(claim["spec"].get("storageClassName") or "")
            if sc is None or claim["metadata"].get("deletionTimestamp"):
                continue
            phase = claim.get("status", {}).get("phase")
            key = f"claim/{claim['metadata'].get('uid')}"
            if phase == "Pending" and not claim["spec"].get("volumeName"):
                if "provision" in self.jobs:
                    self._submit(key, self._provision, claim, sc, volumes)
            elif phase == "Bound" and "resize" in self.jobs:
                pv = volumes.get(claim["spec"].get("volumeName") or "")
                if pv is not None and self._mine_pv(pv):
                    self._submit(key, self._resize, claim, sc, pv)
        if "delete" in self.jobs:
            for pv in volumes.values():
                self._submit(f"pv/{pv['metadata']['name']}", self._delete, pv)
        narrowed = {name for name, sc in classes.items() if (sc.get("parameters") or {}).get("exportPolicy") == "nodes"}
        if narrowed and "exports" in self.jobs:
            self._submit("exports", self._narrow_exports, narrowed, volumes, claims)

    # -- exports narrowed to the nodes that mount (exportPolicy: nodes) ------------------------

    def _narrow_exports(self, narrowed: set[str], volumes: Mapping[str, Any], claims: list[dict[str, Any]]) -> None:
        """Each volume of a class with ``exportPolicy: nodes`` exported to the nodes whose pods
        use it (their InternalIP), or to nobody (``exports.NOBODY``) while none does. Level-
        triggered like the rest: a pod scheduled to a node opens the export to that node by
        the next pass (its kubelet's mount is retried until then); a pod gone closes it."""
        handles = {}
        for pv in volumes.values():
            csi = pv["spec"].get("csi") or {}
            if pv["spec"].get("storageClassName") in narrowed and self._mine_pv(pv) and csi.get("volumeHandle") \
                    and (csi.get("volumeAttributes") or {}).get("fileSystem") is None:  # not a directory volume
                handles[pv["metadata"]["name"]] = str(csi["volumeHandle"])
        if not handles:
            return
        claim_volumes = {f"{c['metadata']['namespace']}/{c['metadata']['name']}": handles[c["spec"]["volumeName"]]
                         for c in claims if c["spec"].get("volumeName") in handles}
        nodes = {n["metadata"]["name"]: internal_ip(n) for n in self._items("/api/v1/nodes")}
        using = node_clients(self._items("/api/v1/pods"), claim_volumes, nodes)
        from nasblade_csi.exports import NOBODY

        changed = self.controller.exports.set_clients({v: using.get(v) or [NOBODY] for v in handles.values()})
        for v in changed:
            log.info("volume %s now exported to %s", v, ", ".join(using.get(v) or ["nobody"]))

    # -- provision ------------------------------------------------------------------------------

    def _source(self, claim: Mapping[str, Any]) -> Any | None:
        """The CSI content source of the claim's ``dataSource`` (None: a blank volume)."""
        ds = claim["spec"].get("dataSourceRef") or claim["spec"].get("dataSource")
        if not ds:
            return None
        ns = claim["metadata"]["namespace"]
        if ds.get("kind") == "PersistentVolumeClaim":
            src = self._request("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{ds['name']}")
            pv_name = (src or {}).get("spec", {}).get("volumeName")
            pv = self._request("GET", f"/api/v1/persistentvolumes/{pv_name}") if pv_name else None
            handle = ((pv or {}).get("spec", {}).get("csi") or {}).get("volumeHandle")
            if not handle:
                raise CallFailed(grpc.StatusCode.NOT_FOUND, f"claim {ds['name']} is not a bound volume of {self.driver_name}")
            return pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=handle))
        if ds.get("kind") == "VolumeSnapshot":
            snap = self._request("GET", f"/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{ds['name']}")
            content = (snap or {}).get("status", {}).get("boundVolumeSnapshotContentName")
            vsc = self._request("GET", f"/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/{content}") \
                if content else None
            handle = (vsc or {}).get("status", {}).get("snapshotHandle")
            if not handle:
                raise CallFailed(grpc.StatusCode.NOT_FOUND, f"snapshot {ds['name']} is not ready")
            return pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=handle))
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, f"dataSource kind {ds.get('kind')!r} is not supported")

    def _provision(self, claim: Mapping[str, Any], sc: Mapping[str, Any], volumes: Mapping[str, Any]) -> None:
        annotations = claim["metadata"].get("annotations") or {}
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and ANN_SELECTED_NODE not in annotations:
            return
        name = volume_name(claim)
        if name in volumes:
            return  # made; the binder binds it
        ns, claim_name = claim["metadata"]["namespace"], claim["metadata"]["name"]
        try:
            request = pb.CreateVolumeRequest(
                name=name, capacity_range=pb.CapacityRange(required_bytes=requested(claim)),
                volume_capabilities=capabilities(list(claim["spec"].get("accessModes") or [])),
                parameters={str(k): str(v) for k, v in (sc.get("parameters") or {}).items()})
            source = self._source(claim)
            if source is not None:
                request.volume_content_source.CopyFrom(source)
            for segment in allowed_segments(sc):
                request.accessibility_requirements.requisite.add(segments=segment)
            volume = self.controller.CreateVolume(request, InProcessContext()).volume
        except CallFailed as exc:
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                log.info("claim %s/%s: %s", ns, claim_name, exc)  # still being served: next pass
                return
            self._event(claim, "Warning", "ProvisioningFailed", f"{self.driver_name}: {exc}")
            return
        except ValueError as exc:  # an unparsable size
            self._event(claim, "Warning", "ProvisioningFailed", f"{self.driver_name}: {exc}")
            return
        self._request("POST", "/api/v1/persistentvolumes", persistent_volume(claim, sc, volume, driver=self.driver_name))
        log.info("claim %s/%s: volume %s provisioned", ns, claim_name, name)
        self._event(claim, "Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {name}")

    # -- delete ---------------------------------------------------------------------------------

    def _delete(self, pv: Mapping[str, Any]) -> None:
        meta, spec = pv["metadata"], pv["spec"]
        if (meta.get("annotations") or {}).get(ANN_PROVISIONED_BY) != self.driver_name or meta.get("deletionTimestamp") \
                or not self._mine_pv(pv):
            return
        if pv.get("status", {}).get("phase") not in ("Released", "Failed") \
                or spec.get("persistentVolumeReclaimPolicy") != "Delete":
            return
        handle = (spec.get("csi") or {}).get("volumeHandle")
        if handle:
            try:
                self.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=handle), InProcessContext())
            except CallFailed as exc:
                log.warning("volume %s not deleted yet: %s", meta["name"], exc)
                return
        self._request("DELETE", f"/api/v1/persistentvolumes/{meta['name']}")
        log.info("volume %s deleted (its claim was released)", meta["name"])

    # -- resize ---------------------------------------------------------------------------------

    def _resize(self, claim: Mapping[str, Any], sc: Mapping[str, Any], pv: Mapping[str, Any]) -> None:
        want = requested(claim)
        have = parse_size(str(pv["spec"]["capacity"]["storage"]), kubernetes=True)
        if want <= have:
            self._report_capacity(claim, have)
            return
        if not sc.get("allowVolumeExpansion"):
            return  # the API server refuses such a change already
        try:
            done = self.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
                volume_id=pv["spec"]["csi"]["volumeHandle"], capacity_range=pb.CapacityRange(required_bytes=want)),
                InProcessContext())
        except CallFailed as exc:
            if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                self._event(claim, "Warning", "VolumeResizeFailed", f"{self.driver_name}: {exc}")
            return
        size = str(done.capacity_bytes)
        self._request("PATCH", f"/api/v1/persistentvolumes/{pv['metadata']['name']}",
                      {"spec": {"capacity": {"storage": size}}}, content_type="application/merge-patch+json")
        self._report_capacity(claim, done.capacity_bytes)
        self._event(claim, "Normal", "VolumeResizeSuccessful", f"volume {pv['metadata']['name']} is now {size} bytes")

    def _report_capacity(self, claim: Mapping[str, Any], size: int) -> None:
        """The claim's ``status.capacity`` says what its volume holds (what the resizer writes)."""
        have = claim.get("status", {}).get("capacity", {}).get("storage")
        if have is not None and parse_size(str(have), kubernetes=True) == size:
            return
        meta = claim["metadata"]
        self._request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/{meta['name']}/status",
                      {"status": {"capacity": {"storage": str(size)}}}, content_type="application/merge-patch+json")
