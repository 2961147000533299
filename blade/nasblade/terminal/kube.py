"""Kubernetes as a data source: DiskArray and ClusterGroup resources, their Events.

Uses pykube-ng, the library the operator chose (``nasblade_operator.kube``), synchronously:
the terminal is a short-lived command. Everything comes from the API server; blades and the
controller are inside the cluster and are read through the status the operator keeps:

- ``DiskArray.status``: controller endpoint, cache and load figures, areas, portions, file
  systems (LU, size), seeded software versions, the LUs' extents on the devices (``lus``:
  the map draws them where they are; without it, each LU as an equal share of every device);
  ``spec.devices`` for the device sizes;
- ``ClusterGroup.status``: blades (state, file systems, software version, heartbeat age in
  whole seconds as the operator last probed it), file-system owners
  with epochs and home blades, failovers, backup history, rollout, active area.

Operations are the ones the operator takes from the API: an on-demand backup is the
``nasblade.io/backup-now`` annotation on the ClusterGroup (followed in
``status.backups.inProgress`` for the bytes copied, then ``status.backups.history``); a
rollout is ``spec.software.version`` of the DiskArray (followed in the blades' versions); a
planned move (``takeover``/``giveback``) is the
``nasblade.io/move-request`` annotation ``{"fileSystem", "to", "id"}`` on the ClusterGroup,
answered in ``status.lastMoveRequest`` (same id: ``Succeeded`` or ``Refused`` with the reason)
and followed in ``status.fileSystems[].blade``.

The CSI driver's volumes (``volumes``) are its PersistentVolumes (the driver name of a DiskArray
of the namespace, ``status.csi.driver``, and the volume context naming one of them) and VolumeSnapshotContents, both
cluster-wide, with the serving group and blade from the ClusterGroup status.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

from nasblade import lunames, units
from nasblade.terminal import volumes as csivolumes
from nasblade.terminal.errors import TerminalError, Unreachable, UsageError
from nasblade.terminal.model import (
    LU,
    Area,
    ArrayView,
    Backup,
    Blade,
    BladeState,
    Device,
    Event,
    Extent,
    FileSystem,
    Group,
    Snapshot,
    Volume,
    VolumeList,
    area_word,
    fill_health,
)
from nasblade.terminal.source import BackupProgress, BackupRequest

API = "nasblade.io/v1alpha1"
BACKUP_NOW = "nasblade.io/backup-now"
MOVE_REQUEST = "nasblade.io/move-request"
SNAPSHOT_API = "snapshot.storage.k8s.io/v1"
STATES: dict[str, tuple[BladeState, str]] = {
    "Running": ("ok", ""),
    "Suspect": ("suspect", "pod not Ready"),
    "Failed": ("dead", "pod failed or gone"),
    "Pending": ("unknown", "pending"),
    "Upgrading": ("stopped", "upgrading"),
}


def quantity(value: Any) -> int | None:
    """A DiskArray / ClusterGroup quantity in bytes (``1Gi``; ``500M`` is decimal, as Kubernetes
    reads it: ``nasblade.units``), or None when absent or not a quantity."""
    if value is None:
        return None
    try:
        return units.parse_size(value, kubernetes=True)
    except units.UnitError:
        return None


def duration(value: Any, default: float) -> float:
    """A Go duration from a custom resource in seconds, ``default`` when absent or invalid."""
    if value is None:
        return default
    try:
        return units.parse_duration(value)
    except units.UnitError:
        return default


def condition(obj: dict[str, Any], kind: str) -> bool | None:
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == kind:
            return bool(c.get("status") == "True")
    return None


def device_health(devices: list[Device], status: dict[str, Any]) -> dict[str, Any] | None:
    """Each device's ``state`` and ``detail`` (why it failed, how far its rebuild is) from the
    DiskArray's ``status.devices`` and ``status.redundancy`` -- the operator's copy of the
    controller's ``GET /v1/array`` -- and the redundancy line ``nasblade status`` shows (``None``
    when the status has none: an array without protection figures yet)."""
    red = status.get("redundancy") or {}
    health = {int(d["index"]): d for d in status.get("devices") or [] if "index" in d}
    for dev in devices:
        fill_health(dev, health.get(dev["index"], {}), red.get("rebuild") or [])
    if not red:
        return None
    return {k: red.get(k) for k in ("protection", "state", "repairedBlocks", "lostBlocks")}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class KubeSource:
    """Reads and drives the nasblade resources of one namespace (see the module docstring)."""

    def __init__(self, *, kubeconfig: Path | None, context: str | None, namespace: str | None,
                 timeout: float = 5.0) -> None:
        try:
            import pykube
            import requests  # noqa: F401  (pykube's transport; _request catches its errors)
        except ModuleNotFoundError as exc:  # the terminal is installed without the operator extra
            raise UsageError(f"Kubernetes support is not installed (no module {exc.name!r}): "
                             "pip install 'nasblade[operator]'") from exc
        if kubeconfig is None:
            raise UsageError("no kubeconfig: set KUBECONFIG, pass --kubeconfig, or use --data-dir for a standalone array")
        try:
            config = pykube.KubeConfig.from_file(str(kubeconfig))
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"cannot read kubeconfig {kubeconfig}: {exc}") from exc
        if context is not None:
            if context not in config.contexts:
                raise UsageError(f"no context {context!r} in {kubeconfig} (have: {', '.join(sorted(config.contexts))})")
            config.set_current_context(context)
        self.namespace = namespace or config.namespace or "default"
        self.context = config.current_context
        self.http = pykube.HTTPClient(config, timeout=timeout)
        self.server = str(config.cluster.get("server", "?"))
        self.description = f"Kubernetes {self.server} context {self.context} namespace {self.namespace}"
        self._check_namespace()

    # -- requests ----------------------------------------------------------------------------

    def _request(self, method: str, url: str, *, version: str = "v1", namespaced: bool = True, **kwargs: Any) -> Any:
        import requests

        try:
            r = getattr(self.http, method)(url=url, version=version,
                                           namespace=self.namespace if namespaced else None, **kwargs)
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"the Kubernetes API server {self.server} does not answer: {exc}") from exc
        return r

    def _json(self, r: Any, what: str) -> dict[str, Any]:
        if r.status_code == 401 or r.status_code == 403:
            raise TerminalError(f"{what}: the API server refused the credentials of context {self.context} ({r.status_code})")
        if r.status_code >= 400:
            try:
                msg = r.json().get("message", r.text)
            except ValueError:
                msg = r.text
            raise TerminalError(f"{what}: HTTP {r.status_code}: {msg}")
        body: dict[str, Any] = r.json() if r.content else {}
        return body

    def _check_namespace(self) -> None:
        r = self._request("get", f"namespaces/{self.namespace}", namespaced=False)
        if r.status_code == 404:
            raise UsageError(f"no namespace {self.namespace!r} in {self.server}")
        self._json(r, f"namespace {self.namespace}")

    def _list(self, plural: str, *, version: str = API) -> list[dict[str, Any]]:
        r = self._request("get", plural, version=version)
        if r.status_code == 404 and version == API:
            raise UsageError(f"the nasblade CRDs ({plural}.nasblade.io) are not installed in {self.server}")
        items: list[dict[str, Any]] = self._json(r, f"list {plural}").get("items", [])
        return items

    def _get(self, plural: str, name: str, *, what: str) -> dict[str, Any]:
        r = self._request("get", f"{plural}/{name}", version=API)
        if r.status_code == 404:
            raise UsageError(f"no {what} {name!r} in namespace {self.namespace}")
        return self._json(r, f"get {what} {name}")

    def _patch(self, plural: str, name: str, *, patch: dict[str, Any], what: str) -> dict[str, Any]:
        r = self._request("patch", f"{plural}/{name}", version=API, data=json.dumps(patch),
                          headers={"Content-Type": "application/merge-patch+json"})
        if r.status_code == 404:
            raise UsageError(f"no {what} {name!r} in namespace {self.namespace}")
        return self._json(r, f"patch {what} {name}")

    # -- snapshot ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        arrays = self._list("diskarrays")
        cgroups = self._list("clustergroups")
        views = [self._array(a) for a in arrays]
        owners: dict[str, dict[str, Any]] = {}
        for cg in cgroups:
            for f in cg.get("status", {}).get("fileSystems", []) or []:
                owners[str(f.get("name"))] = {**f, "group": cg["metadata"]["name"]}
        file_systems: list[FileSystem] = []
        for a in arrays:
            st = a.get("status", {})
            declared = {f["name"]: f for f in a.get("spec", {}).get("fileSystems", []) or []}
            reported = {f["name"]: f for f in st.get("fileSystems", []) or []}
            for fs_name in [*declared, *(n for n in reported if n not in declared)]:
                d, r, o = declared.get(fs_name, {}), reported.get(fs_name, {}), owners.get(fs_name, {})
                file_systems.append({
                    "name": fs_name, "group": str(o.get("group") or d.get("clusterGroup") or r.get("clusterGroup") or ""),
                    "lu": str(r.get("lu") or fs_name), "size": int(r.get("size") or quantity(d.get("size")) or 0),
                    "blade": o.get("blade"), "homeBlade": o.get("homeBlade"), "pinnedTo": o.get("pinnedTo"),
                    "epoch": o.get("epoch"),
                    "endpoint": o.get("service"),
                })
        groups: list[Group] = []
        backups: list[Backup] = []
        for cg in cgroups:
            g, hist = self._group(cg)
            groups.append(g)
            backups.extend(hist)
        reservations = {f["lu"]: {"holder": f["blade"], "epoch": f["epoch"]} for f in file_systems if f["blade"]}
        for v in views:
            for lu in v["lus"]:
                lu["reservation"] = reservations.get(lu["name"])
        backups.sort(key=lambda b: b["started"] or "")
        return {"target": {"kind": "kubernetes", "server": self.server, "context": self.context,
                           "namespace": self.namespace},
                "time": now_iso(), "arrays": views, "groups": groups, "fileSystems": file_systems,
                "backups": backups}

    def _array(self, a: dict[str, Any]) -> ArrayView:
        spec, st = a.get("spec", {}), a.get("status", {})
        count = int(spec.get("devices", {}).get("count", 0) or 0)
        dev_size = quantity(spec.get("devices", {}).get("size")) or 0
        devices = [Device(index=i, size=dev_size, free=0, path=f"PVC dev-{i}") for i in range(count)]
        redundancy = device_health(devices, st)
        areas_status = st.get("areas", {}) or {}
        areas_spec = spec.get("areas", {}) or {}
        every = list(range(count))
        placed = {str(p["name"]): p for p in st.get("lus", []) or []}  # the operator's copy of the LU listing

        def place(name: str) -> tuple[list[int], list[Extent]]:
            """Where the LU lies, from ``status.lus``; every device and no extents (a share) when absent."""
            runs = placed.get(name, {}).get("extents") or []
            if not runs:
                return every, []
            extents = [Extent(device=int(e["device"]), offset=int(e["offset"]), length=int(e["length"]), segment=0)
                       for e in runs]
            return sorted({e["device"] for e in extents}), extents

        lus: list[LU] = []
        for kind, key, size_key in (("program", "program", "programSize"),
                                    ("processorInfo", "processorInfo", "processorInfoSize"),
                                    ("backup", "backup", "backupSize")):
            name = areas_status.get(key)
            if name:
                devs, extents = place(str(name))
                lus.append(LU(name=str(name), kind=kind, size=quantity(areas_spec.get(size_key)) or 0,  # type: ignore[typeddict-item]
                              devices=devs, extents=extents, fileSystem=None, reservation=None))
        for f in st.get("fileSystems", []) or []:
            lu_name = str(f.get("lu") or f["name"])
            devs, extents = place(lu_name)
            lus.append(LU(name=lu_name, kind="fileSystem", size=int(f.get("size") or 0),
                          devices=devs, extents=extents, fileSystem=str(f["name"]), reservation=None))
        portion_size = int(areas_status.get("portionSize") or 0)
        areas: list[Area] = []
        for p in st.get("portions", []) or []:
            i = int(p.get("index", 0))
            for lu_key, role in (("processorInfo", "portion"), ("backup", "backup")):
                areas.append({"lu": str(areas_status.get(lu_key) or lu_key), "group": str(p.get("group")), "index": i,
                              "offset": i * portion_size, "size": portion_size, "role": role})  # type: ignore[typeddict-item]
        ctl = st.get("controller", {}) or {}
        load = dict(ctl.get("load", {}) or {})
        if load:
            load["mbps"] = {"read": load.get("readMBps", 0.0), "write": load.get("writeMBps", 0.0)}
        sw = st.get("software", {}) or {}
        view: ArrayView = {
            "name": a["metadata"]["name"], "ready": condition(a, "Ready"),
            "size": count * dev_size if count else None, "free": None, "devices": devices, "lus": lus,
            "areas": areas, "cache": dict(ctl.get("cache", {}) or {}), "load": load,
            "software": {"current": spec.get("software", {}).get("version") or sw.get("version"),
                         "running": sw.get("version"), "versions": list(sw.get("seeded", []) or [])},
            "controller": ctl.get("endpoint"),
        }
        if redundancy:
            view["redundancy"] = redundancy
        if (st.get("csi") or {}).get("driver"):
            view["csiDriver"] = str(st["csi"]["driver"])
        return view

    def _group(self, cg: dict[str, Any]) -> tuple[Group, list[Backup]]:
        spec, st = cg.get("spec", {}), cg.get("status", {})
        name = cg["metadata"]["name"]
        timeout = duration((spec.get("heartbeat") or {}).get("failureTimeout"), 2.0)
        blades: list[Blade] = []
        for b in st.get("blades", []) or []:
            state, reason = STATES.get(str(b.get("state")), ("unknown", str(b.get("state"))))
            since = parse_iso(b.get("since"))
            if reason and since:
                reason = f"{reason} since {b.get('since')}"
            blades.append({"name": str(b["name"]), "group": name, "state": state, "reason": reason,
                           "fileSystems": list(b.get("fileSystems", []) or []),
                           "heartbeatAge": None if b.get("heartbeatAgeSeconds") is None else float(b["heartbeatAgeSeconds"]),
                           "softwareVersion": b.get("softwareVersion"), "activeArea": area_word(st.get("activeArea")),
                           "slot": b.get("index"), "api": None})
        history: list[Backup] = []
        for i, h in enumerate(st.get("backups", {}).get("history", []) or []):
            started = h.get("started")
            t0 = parse_iso(started)
            finished = None
            if t0 is not None and h.get("durationSeconds") is not None:
                finished = dt.datetime.fromtimestamp(t0 + float(h["durationSeconds"]), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            portions = [str(p) for p in h.get("portions", []) or []]
            history.append({"id": f"{name}/{i}", "group": name, "source": f"portions {','.join(portions)}",
                            "target": "backup areas", "state": str(h.get("result", "")), "bytesDone": 0, "bytesTotal": 0,
                            "started": started, "finished": finished, "trigger": h.get("trigger"),
                            "error": None if h.get("result") == "Succeeded" else h.get("message")})
        group: Group = {
            "name": name, "array": str((spec.get("diskArrayRef") or {}).get("name", "")), "portion": st.get("portion"),
            "activeArea": area_word(st.get("activeArea")), "failureTimeout": timeout, "blades": blades,
            "fileSystems": [str(f.get("name")) for f in st.get("fileSystems", []) or []],
            "lastBackup": history[-1] if history else None, "rollout": st.get("rollout") or None,
        }
        return group, history

    # -- operations --------------------------------------------------------------------------

    def request_backup(self, group: str, *, cross_groups: list[str]) -> BackupRequest:
        cg = self._get("clustergroups", group, what="ClusterGroup")
        targets = list((cg.get("spec", {}).get("backup") or {}).get("targets", []) or [])
        missing = [g for g in cross_groups if g not in targets]
        if missing:
            raise UsageError(f"on Kubernetes the cross-group copies of {group} are its spec.backup.targets "
                             f"(now {targets or 'empty'}); add {', '.join(missing)} there first")
        history = (cg.get("status", {}).get("backups") or {}).get("history", []) or []
        since = time.time()
        self._patch("clustergroups", group, patch={"metadata": {"annotations": {BACKUP_NOW: now_iso()}}}, what="ClusterGroup")
        return BackupRequest(group=group, groups=[group, *targets], since=since,
                             detail={"annotation": BACKUP_NOW, "historyLength": len(history)})

    def backup_progress(self, request: BackupRequest) -> BackupProgress:
        cg = self._get("clustergroups", request.group, what="ClusterGroup")
        history = (cg.get("status", {}).get("backups") or {}).get("history", []) or []
        pending = BACKUP_NOW in (cg["metadata"].get("annotations") or {})
        arrays = {a["metadata"]["name"]: a for a in self._list("diskarrays")}
        array = arrays.get(str((cg.get("spec", {}).get("diskArrayRef") or {}).get("name")), {})
        load = dict(array.get("status", {}).get("controller", {}).get("load", {}) or {})
        new = [h for h in history if h.get("trigger") == "OnDemand"
               and (parse_iso(h.get("started")) or 0) >= request.since - 2.0]
        if not new:
            running = (cg.get("status", {}).get("backups") or {}).get("inProgress") or {}
            if running and (parse_iso(running.get("started")) or 0) >= request.since - 2.0:
                return BackupProgress(done=False, succeeded=None, bytes_done=int(running.get("bytesCopied") or 0),
                                      bytes_total=int(running.get("totalBytes") or 0), load=load,
                                      message=f"copying portions {running.get('portions')} through {running.get('blade')}")
            msg = "waiting for the operator to start the backup" if pending else "waiting for the operator to record the backup"
            return BackupProgress(done=False, succeeded=None, bytes_done=0, bytes_total=0, load=load, message=msg)
        h = new[-1]
        _, copies = self._group(cg)
        ok = h.get("result") == "Succeeded"
        portion = int(array.get("status", {}).get("areas", {}).get("portionSize") or 0) * len(h.get("portions", []) or [])
        return BackupProgress(done=True, succeeded=ok, bytes_done=portion if ok else 0, bytes_total=portion, load=load,
                              message=f"{h.get('result')} through {h.get('blade')} in {h.get('durationSeconds')}s"
                                      + (f": {h.get('message')}" if h.get("message") else ""),
                              copies=copies[-1:])

    def remote_check(self, fs: str, *, to: str) -> dict[str, Any] | None:
        return None  # blades are inside the cluster; the operator's status is the whole answer

    def move(self, fs: str, *, to: str, snapshot: Snapshot) -> dict[str, Any]:
        """Ask the operator for the move: the ``move-request`` annotation on the file system's group."""
        group = next((f["group"] for f in snapshot["fileSystems"] if f["name"] == fs), "")
        if not group:
            raise UsageError(f"file system {fs} belongs to no ClusterGroup yet; nothing can take it over")
        request = {"fileSystem": fs, "to": to, "id": uuid.uuid4().hex[:12]}
        self._patch("clustergroups", group, what="ClusterGroup",
                    patch={"metadata": {"annotations": {MOVE_REQUEST: json.dumps(request)}}})
        return {**request, "group": group, "annotation": MOVE_REQUEST}

    def move_refused(self, move: dict[str, Any]) -> str | None:
        """The operator's reason when it refused ``move`` (None while it has not)."""
        cg = self._get("clustergroups", str(move["group"]), what="ClusterGroup")
        last = cg.get("status", {}).get("lastMoveRequest") or {}
        if last.get("id") == move.get("id") and last.get("result") == "Refused":
            return str(last.get("message") or "refused")
        return None

    def rollout(self, version: str, *, array: str | None, force: bool = False) -> dict[str, Any]:
        arrays = self._list("diskarrays")
        if array is None:
            if len(arrays) != 1:
                names = ", ".join(a["metadata"]["name"] for a in arrays) or "none"
                raise UsageError(f"name the DiskArray with --array (namespace {self.namespace} has: {names})")
            array = str(arrays[0]["metadata"]["name"])
        obj = next((a for a in arrays if a["metadata"]["name"] == array), None)
        if obj is None:
            raise UsageError(f"no DiskArray {array!r} in namespace {self.namespace}")
        seeded = list((obj.get("status", {}).get("software") or {}).get("seeded", []) or [])
        if seeded and version not in seeded and not force:
            raise UsageError(f"version {version} was not seeded into the program LU of {array} (seeded: "
                             f"{', '.join(seeded)}); push it first, or pass --force if it was pushed since")
        before = (obj.get("spec", {}).get("software") or {}).get("version")
        self._patch("diskarrays", array, patch={"spec": {"software": {"version": version}}}, what="DiskArray")
        return {"array": array, "from": before, "to": version}

    def volumes(self, snapshot: Snapshot) -> VolumeList:
        """The CSI driver's volumes of this namespace's DiskArrays: the PersistentVolumes of an
        array's driver (``status.csi.driver``, one name per array) whose volume context names
        one of them (``diskArray``), with
        the group and blade serving a file-system volume from the ClusterGroup status, and
        their snapshots from the VolumeSnapshotContents of the driver. Usage is not in any
        resource's status, so it is not shown here (``nasblade volumes --data-dir`` shows it)."""
        refs = {f"{self.namespace}/{a['name']}" for a in snapshot["arrays"]}
        drivers = {a["csiDriver"] for a in snapshot["arrays"] if a.get("csiDriver")}
        owners = {f["name"]: f for f in snapshot["fileSystems"]}
        problems: list[str] = []
        found: dict[str, Volume] = {}
        for pv in self._cluster_list("persistentvolumes", version="v1", problems=problems):
            csi = (pv.get("spec") or {}).get("csi") or {}
            attrs = csi.get("volumeAttributes") or {}
            vid = str(csi.get("volumeHandle") or "")
            if csi.get("driver") not in drivers or not lunames.csi_volume_id(vid) or \
                    (attrs.get("diskArray") not in refs and vid not in owners):
                continue
            directory = not attrs.get("lu")
            fs = (attrs.get("fileSystem") or str(attrs.get("export", "")).strip("/").split("/")[0] or None) \
                if directory else vid
            own = owners.get(fs or "")
            claim = (pv.get("spec") or {}).get("claimRef") or {}
            found[vid] = {"id": vid, "name": pv["metadata"]["name"],
                          "claim": f"{claim['namespace']}/{claim['name']}" if claim.get("name") else None,
                          "mode": "directory" if directory else "filesystem", "fileSystem": fs,
                          "lu": None if directory else str(attrs["lu"]), "group": own["group"] if own else None,
                          "blade": own["blade"] if own else None,
                          "size": quantity(((pv.get("spec") or {}).get("capacity") or {}).get("storage")),
                          "usedBytes": None, "files": None, "state": str((pv.get("status") or {}).get("phase") or "") or None,
                          "snapshots": []}
        for c in self._cluster_list("volumesnapshotcontents", version=SNAPSHOT_API, problems=problems):
            spec, st = c.get("spec") or {}, c.get("status") or {}
            vid = str((spec.get("source") or {}).get("volumeHandle") or "")
            if spec.get("driver") not in drivers or vid not in found:
                continue
            uid = (spec.get("volumeSnapshotRef") or {}).get("uid")
            found[vid]["snapshots"].append({
                "id": str(st.get("snapshotHandle") or c["metadata"]["name"]),
                "name": f"snapshot-{uid}" if uid else None, "size": csivolumes.int_or_none(st.get("restoreSize")),
                "ready": st.get("readyToUse") if isinstance(st.get("readyToUse"), bool) else None,
                "created": csivolumes.nanoseconds_iso(st.get("creationTime"))})
        return {"target": {"kind": "kubernetes", "server": self.server, "context": self.context,
                           "namespace": self.namespace},
                "time": snapshot["time"], "problems": problems,
                "volumes": csivolumes.ordered(list(found.values()))}

    def _cluster_list(self, plural: str, *, version: str, problems: list[str]) -> list[dict[str, Any]]:
        """A cluster-wide list; an API the cluster does not serve (no snapshot CRDs) is empty,
        one the credentials may not read is a problem to report, not a failure."""
        r = self._request("get", plural, version=version, namespaced=False)
        if r.status_code == 404:
            return []
        if r.status_code in (401, 403):
            problems.append(f"the credentials of context {self.context} may not list {plural} ({r.status_code})")
            return []
        items: list[dict[str, Any]] = self._json(r, f"list {plural}").get("items", [])
        return items

    def events(self, snapshot: Snapshot) -> list[Event]:
        names = {a["name"] for a in snapshot["arrays"]} | {g["name"] for g in snapshot["groups"]}
        blades = {b["name"] for g in snapshot["groups"] for b in g["blades"]}
        out: list[Event] = []
        for e in self._list("events", version="v1"):
            inv = e.get("involvedObject", {}) or {}
            kind, obj = str(inv.get("kind", "")), str(inv.get("name", ""))
            if not ((kind in ("DiskArray", "ClusterGroup") and obj in names) or (kind == "Pod" and obj in blades)):
                continue
            when = e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or e["metadata"].get("creationTimestamp")
            out.append({"time": str(when), "kind": str(e.get("reason", "")), "object": f"{kind}/{obj}",
                        "message": str(e.get("message", "")) + (f" (x{e['count']})" if (e.get("count") or 1) > 1 else "")})
        out.sort(key=lambda e: e["time"])
        return out
